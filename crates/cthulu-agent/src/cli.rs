//! The command line. Without arguments, as PID 1, the agent is the init of a microVM; in
//! test mode it serves on a Unix socket with a workspace directory of its own.

use std::ffi::OsString;
use std::path::PathBuf;

pub const USAGE: &str = "usage: cthulu-agent                      (as PID 1 of a microVM)
       cthulu-agent --listen-unix PATH --workspace DIR
       cthulu-agent --connect-unix PATH --workspace DIR";

/// What the agent was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// PID 1 of a microVM: set the machine up, then reap and serve.
    Init,
    /// Test mode: accept connections on a Unix socket, one at a time.
    ListenUnix { path: PathBuf, workspace: PathBuf },
    /// Test mode: connect to a Unix socket (and again whenever the host goes away).
    ConnectUnix { path: PathBuf, workspace: PathBuf },
}

/// Parses the arguments after the program name.
pub fn parse(args: impl IntoIterator<Item = OsString>, is_pid1: bool) -> Result<Mode, String> {
    let mut listen = None;
    let mut connect = None;
    let mut workspace = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .map(PathBuf::from)
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match arg.to_str() {
            Some("--listen-unix") => listen = Some(value("--listen-unix")?),
            Some("--connect-unix") => connect = Some(value("--connect-unix")?),
            Some("--workspace") => workspace = Some(value("--workspace")?),
            Some("--help" | "-h") => return Err(USAGE.to_owned()),
            _ => return Err(format!("unknown argument {arg:?}\n{USAGE}")),
        }
    }
    match (listen, connect, workspace) {
        (None, None, None) if is_pid1 => Ok(Mode::Init),
        (None, None, None) => Err(format!(
            "not PID 1: test mode needs --listen-unix or --connect-unix\n{USAGE}"
        )),
        (Some(path), None, Some(workspace)) => Ok(Mode::ListenUnix { path, workspace }),
        (None, Some(path), Some(workspace)) => Ok(Mode::ConnectUnix { path, workspace }),
        (Some(_), Some(_), _) => Err("--listen-unix and --connect-unix exclude each other".into()),
        (_, _, None) => Err(format!("test mode needs --workspace DIR\n{USAGE}")),
        (None, None, Some(_)) => Err(format!(
            "--workspace needs --listen-unix or --connect-unix\n{USAGE}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_strs(args: &[&str], is_pid1: bool) -> Result<Mode, String> {
        parse(args.iter().map(OsString::from), is_pid1)
    }

    #[test]
    fn pid1_without_arguments_is_init() {
        assert_eq!(parse_strs(&[], true), Ok(Mode::Init));
        assert!(parse_strs(&[], false).unwrap_err().contains("not PID 1"));
    }

    #[test]
    fn test_modes_need_a_workspace() {
        assert_eq!(
            parse_strs(&["--listen-unix", "/s", "--workspace", "/w"], false),
            Ok(Mode::ListenUnix {
                path: "/s".into(),
                workspace: "/w".into()
            })
        );
        assert_eq!(
            parse_strs(&["--workspace", "/w", "--connect-unix", "/s"], true),
            Ok(Mode::ConnectUnix {
                path: "/s".into(),
                workspace: "/w".into()
            })
        );
        assert!(parse_strs(&["--listen-unix", "/s"], false)
            .unwrap_err()
            .contains("--workspace"));
        assert!(parse_strs(&["--listen-unix"], false)
            .unwrap_err()
            .contains("needs a value"));
        assert!(parse_strs(&["--bogus"], false)
            .unwrap_err()
            .contains("unknown argument"));
    }
}
