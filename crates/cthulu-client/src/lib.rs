//! Typed async client of the Cthulu HTTP and WebSocket API (docs/api.md, docs/streaming.md).
//!
//! - [`CthuluClient`]: one method per route, built on `reqwest`; its methods are spread
//!   over one module per resource (`sandboxes`, `exec`, `files`, `ports`, `checkpoints`,
//!   `runs`, `nodes`).
//! - [`RunEvents`]: an agent run's Server-Sent Events, stored then live, then its end.
//! - [`ExecSession`]: a streaming exec or an attach over WebSocket. It yields
//!   [`ExecEvent`]s (stdout, stderr, exit); its cloneable [`ExecSender`] sends stdin,
//!   EOF, signals and terminal resizes.
//! - [`ClientError`]: every failure, with the server's [`ApiError`](cthulu_types::ApiError)
//!   parsed from the error body and a clear message when the server is not reachable.

mod checkpoints;
mod client;
mod error;
mod exec;
mod files;
mod nodes;
mod ports;
mod runs;
mod sandboxes;
mod stream;

pub use client::{CthuluClient, DEFAULT_URL};
pub use error::ClientError;
pub use files::{FileDownload, ProgressCallback, PutFileOptions};
pub use ports::PortTunnel;
pub use runs::{RunEvents, RunStreamItem};
pub use sandboxes::SandboxFilter;
pub use stream::{ExecEvent, ExecExit, ExecSender, ExecSession};
/// The WebSocket library's error, as carried by [`ClientError::WebSocket`].
pub use tokio_tungstenite::tungstenite::Error as WebSocketError;
