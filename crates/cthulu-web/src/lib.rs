//! The web UI of `cthulu serve`, embedded into the binary at build time (`build.rs`
//! reads the repository's `web/` folder and the xterm.js files npm put in
//! `web/node_modules`; docs/web-ui.md).
//!
//! [`asset`] looks an embedded file up by the name it is served under (`index.html`,
//! `js/app.js`, `vendor/xterm.js` …) and gives its bytes and [`Asset::content_type`].
//! [`TERMINAL_ASSETS`] are the three xterm.js files, present only when
//! `scripts/web-assets` ran before the build ([`terminal_assets_built`]).

mod assets;
mod content_type;

pub use assets::{asset, asset_names, terminal_assets_built, Asset, TERMINAL_ASSETS};
pub use content_type::content_type;
