//! `cthulu serve`: the control plane.
//!
//! [`Server::start`] opens the SQLite database under `$CTHULU_HOME` ([`db`]), builds the
//! backends, re-attaches to every sandbox it knew ([`state::AppState::reattach_all`]) and
//! binds; [`Server::run_until`] serves the REST and WebSocket API ([`routes`]) until
//! shutdown, while a reaper destroys sandboxes past their lifetime. Agent runs (a CLI
//! agent working in a sandbox, its events streamed) are in [`runs`]. Registered nodes of
//! the remote backend are in [`nodes`]; terminal tokens in [`terminal`].

pub mod access_token;
pub mod db;
pub mod error;
pub mod metrics;
pub mod nodes;
pub mod routes;
pub mod runs;
pub mod server;
pub mod state;
pub mod terminal;

pub use access_token::AccessToken;
pub use routes::ApiDoc;
pub use runs::RunsConfig;
pub use server::{
    create_api_key, Server, ServerConfig, ServerError, DEFAULT_WARM_SANDBOXES, DEFAULT_WARM_VMS,
};
