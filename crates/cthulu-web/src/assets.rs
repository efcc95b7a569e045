//! The table of embedded files that `build.rs` generates, and lookups in it. A name is
//! only ever compared with the table, never joined to a filesystem path, so no request
//! can reach a file that was not embedded.

use crate::content_type::content_type;

include!(concat!(env!("OUT_DIR"), "/assets.rs"));

/// The names of the xterm.js files, served under `/ui/` (the node's terminal page loads
/// the same names).
pub const TERMINAL_ASSETS: [&str; 3] =
    ["vendor/xterm.js", "vendor/xterm.css", "vendor/addon-fit.js"];

/// One embedded file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asset {
    pub bytes: &'static [u8],
    pub content_type: &'static str,
}

/// The embedded file served as `name` (`index.html`, `js/app.js`; a leading `/` is
/// ignored), or `None`.
pub fn asset(name: &str) -> Option<Asset> {
    let name = name.strip_prefix('/').unwrap_or(name);
    EMBEDDED
        .binary_search_by(|(embedded, _)| (*embedded).cmp(name))
        .ok()
        .map(|index| Asset {
            bytes: EMBEDDED[index].1,
            content_type: content_type(name),
        })
}

/// Every embedded name, sorted.
pub fn asset_names() -> impl Iterator<Item = &'static str> {
    EMBEDDED.iter().map(|(name, _)| *name)
}

/// Whether this build embeds the terminal (xterm.js): `web/node_modules` was installed
/// (`scripts/web-assets`) when it was built.
pub fn terminal_assets_built() -> bool {
    TERMINAL_ASSETS_ALL
        .iter()
        .all(|name| TERMINAL_ASSETS_PRESENT.contains(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_and_its_scripts_are_embedded() {
        let index = asset("index.html").expect("index.html is embedded");
        assert_eq!(index.content_type, "text/html; charset=utf-8");
        let page = std::str::from_utf8(index.bytes).unwrap();
        assert!(page.contains("/ui/js/app.js"), "{page}");
        assert_eq!(asset("/index.html"), Some(index));
        let app = asset("js/app.js").expect("the entry module is embedded");
        assert_eq!(app.content_type, "text/javascript; charset=utf-8");
    }

    #[test]
    fn only_embedded_names_resolve() {
        for name in [
            "",
            "/",
            "js",
            "../Cargo.toml",
            "js/../index.html",
            "./index.html",
            "INDEX.HTML",
            "index.html/",
            "package.json",
            "package-lock.json",
            "node_modules/@xterm/xterm/lib/xterm.js",
            "tests/ui.test.mjs",
            ".gitignore",
        ] {
            assert_eq!(asset(name), None, "{name} must not resolve");
        }
    }

    #[test]
    fn the_table_is_sorted_and_has_no_test_or_npm_files() {
        let names: Vec<&str> = asset_names().collect();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(names, sorted);
        assert!(names
            .iter()
            .all(|name| !name.starts_with("tests/") && !name.starts_with("node_modules/")));
    }

    #[test]
    fn terminal_assets_are_all_or_reported_missing() {
        assert_eq!(TERMINAL_ASSETS_ALL, TERMINAL_ASSETS);
        let present = TERMINAL_ASSETS
            .iter()
            .filter(|name| asset(name).is_some())
            .count();
        if terminal_assets_built() {
            assert_eq!(present, 3);
            assert_eq!(
                asset("vendor/xterm.css").unwrap().content_type,
                "text/css; charset=utf-8"
            );
        } else {
            assert!(present < 3);
        }
    }
}
