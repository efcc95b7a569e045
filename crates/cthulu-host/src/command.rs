//! What a command runs with (its environment) and how its output pipes are read; shared
//! by one-shot exec and the shim, and by other backends (the namespace backend's
//! commands see the same layered environment, with `HOME` its `/workspace`).

use std::collections::BTreeMap;
use std::path::Path;

use cthulu_core::ExecSpec;

/// Host variables a sandboxed command may see, when the host has them. Nothing else of
/// the server's environment (tokens, keys) reaches a sandbox.
pub const HOST_ALLOWLIST: [&str; 3] = ["PATH", "LANG", "TERM"];
/// PATH when the host has none: commands always have a PATH.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// TERM of a PTY session when nothing else sets one: shells and editors need one.
pub const DEFAULT_TERM: &str = "xterm-256color";

/// The complete environment of a command: the host allowlist, then `HOME` (the
/// workspace), then the sandbox's env, then the request's (each layer wins over the one
/// before). `host` looks up host variables.
pub fn compose_env(
    host: impl Fn(&str) -> Option<String>,
    workspace: &Path,
    sandbox_env: &BTreeMap<String, String>,
    spec: &ExecSpec,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for name in HOST_ALLOWLIST {
        if let Some(value) = host(name) {
            env.insert(name.to_owned(), value);
        }
    }
    env.entry("PATH".to_owned())
        .or_insert_with(|| DEFAULT_PATH.to_owned());
    env.insert("HOME".to_owned(), workspace.display().to_string());
    env.extend(sandbox_env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    if spec.tty.is_some() {
        env.entry("TERM".to_owned())
            .or_insert_with(|| DEFAULT_TERM.to_owned());
    }
    env
}

/// The host's value of `name`, if it is valid UTF-8.
pub fn host_var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Reads from `pipe`; never completes once the pipe is closed (`None`), so a `select!`
/// over two pipes keeps reading the other one.
pub async fn read_some(
    pipe: &mut Option<impl tokio::io::AsyncRead + Unpin>,
    buffer: &mut [u8],
) -> std::io::Result<usize> {
    use tokio::io::AsyncReadExt;
    match pipe {
        Some(pipe) => pipe.read(buffer).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cthulu_types::PtySize;

    #[test]
    fn layers_win_in_order_and_nothing_else_leaks() {
        let host = |name: &str| match name {
            "PATH" => Some("/host/bin".to_owned()),
            "SECRET" => Some("x".to_owned()),
            _ => None,
        };
        let sandbox = BTreeMap::from([
            ("A".to_owned(), "sandbox".to_owned()),
            ("B".to_owned(), "sandbox".to_owned()),
        ]);
        let mut spec = ExecSpec::argv(["true"]);
        spec.env.insert("B".into(), "request".into());
        spec.env.insert("HOME".into(), "/elsewhere".into());
        let env = compose_env(host, Path::new("/ws"), &sandbox, &spec);
        assert_eq!(
            env,
            BTreeMap::from([
                ("A".to_owned(), "sandbox".to_owned()),
                ("B".to_owned(), "request".to_owned()),
                ("HOME".to_owned(), "/elsewhere".to_owned()),
                ("PATH".to_owned(), "/host/bin".to_owned()),
            ])
        );
    }

    #[test]
    fn path_and_term_have_defaults() {
        let mut spec = ExecSpec::argv(["true"]);
        let env = compose_env(|_| None, Path::new("/ws"), &BTreeMap::new(), &spec);
        assert_eq!(env["PATH"], DEFAULT_PATH);
        assert_eq!(env["HOME"], "/ws");
        assert!(!env.contains_key("TERM"));
        spec.tty = Some(PtySize { cols: 80, rows: 24 });
        let env = compose_env(|_| None, Path::new("/ws"), &BTreeMap::new(), &spec);
        assert_eq!(env["TERM"], DEFAULT_TERM);
    }
}
