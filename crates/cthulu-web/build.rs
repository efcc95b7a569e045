//! Embeds the web UI into the crate: every page, script, style and image under the
//! repository's `web/` (not its `node_modules/` or `tests/`), and the three terminal files
//! from `web/node_modules/@xterm` under the names `vendor/xterm.js`, `vendor/xterm.css`
//! and `vendor/addon-fit.js` (the node's ttyd terminal page uses the same names).
//!
//! Writes `$OUT_DIR/assets.rs`: a sorted table of `(name, include_bytes!(path))` and the
//! list of terminal assets that are present. When `web/node_modules` has not been
//! installed the build still succeeds: it warns, and the UI says how to get a terminal
//! (`scripts/web-assets`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Name served under `/ui/` ← path below `web/node_modules`.
const TERMINAL_ASSETS: [(&str, &str); 3] = [
    ("vendor/xterm.js", "@xterm/xterm/lib/xterm.js"),
    ("vendor/xterm.css", "@xterm/xterm/css/xterm.css"),
    ("vendor/addon-fit.js", "@xterm/addon-fit/lib/addon-fit.js"),
];

/// What a browser loads; anything else in `web/` (package.json, notes) stays out.
const EMBEDDED_EXTENSIONS: [&str; 8] = ["html", "css", "js", "mjs", "svg", "png", "ico", "woff2"];

/// Directories of `web/` that are not served: npm's packages and the browser test.
const SKIPPED_DIRECTORIES: [&str; 2] = ["node_modules", "tests"];

fn main() {
    let manifest_dir = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let web = manifest_dir.join("../../web");
    // A directory makes cargo rerun this script when anything below it changes
    // (node_modules included, so `scripts/web-assets` is picked up by the next build).
    println!("cargo:rerun-if-changed={}", web.display());

    let mut assets: Vec<(String, PathBuf)> = Vec::new();
    if web.is_dir() {
        collect(&web, "", &mut assets);
    } else {
        println!("cargo:warning=the web UI's sources are missing ({} is not a directory): the UI will not be served", web.display());
    }
    let mut present = Vec::new();
    let mut missing = Vec::new();
    for (name, relative) in TERMINAL_ASSETS {
        let path = web.join("node_modules").join(relative);
        if path.is_file() {
            assets.push((name.to_owned(), path));
            present.push(name);
        } else {
            missing.push(relative);
        }
    }
    if !missing.is_empty() {
        println!(
            "cargo:warning=terminal assets were not built (web/node_modules/{} missing): run scripts/web-assets, then build again",
            missing.join(", web/node_modules/")
        );
    }
    assets.sort();

    let mut source = String::from("/// Every embedded asset, sorted by name.\npub(crate) static EMBEDDED: &[(&str, &[u8])] = &[\n");
    for (name, path) in &assets {
        let path = path
            .canonicalize()
            .unwrap_or_else(|error| panic!("cannot resolve {}: {error}", path.display()));
        writeln!(
            source,
            "    ({name:?}, include_bytes!({:?})),",
            path.display().to_string()
        )
        .expect("writing to a String");
    }
    source.push_str("];\n\n/// The terminal assets this build embeds.\npub(crate) static TERMINAL_ASSETS_PRESENT: &[&str] = &[");
    for name in &present {
        write!(source, "{name:?}, ").expect("writing to a String");
    }
    source.push_str("];\n\n/// Every terminal asset's name, present or not.\npub(crate) static TERMINAL_ASSETS_ALL: &[&str] = &[");
    for (name, _) in TERMINAL_ASSETS {
        write!(source, "{name:?}, ").expect("writing to a String");
    }
    source.push_str("];\n");
    let out =
        PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("assets.rs");
    std::fs::write(&out, source)
        .unwrap_or_else(|error| panic!("cannot write {}: {error}", out.display()));
}

/// Adds the servable files below `directory` (named `prefix` + their relative path).
fn collect(directory: &Path, prefix: &str, assets: &mut Vec<(String, PathBuf)>) {
    let entries = std::fs::read_dir(directory)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", directory.display()));
    for entry in entries {
        let entry =
            entry.unwrap_or_else(|error| panic!("cannot read {}: {error}", directory.display()));
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            println!(
                "cargo:warning=skipping {}: not a UTF-8 name",
                entry.path().display()
            );
            continue;
        };
        if file_name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        let name = format!("{prefix}{file_name}");
        if path.is_dir() {
            if prefix.is_empty() && SKIPPED_DIRECTORIES.contains(&file_name) {
                continue;
            }
            collect(&path, &format!("{name}/"), assets);
        } else if path
            .extension()
            .and_then(|extension| extension.to_str())
            .is_some_and(|extension| EMBEDDED_EXTENSIONS.contains(&extension))
        {
            assets.push((name, path));
        }
    }
}
