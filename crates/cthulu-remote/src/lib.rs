//! The remote backend: sandboxes that live on a registered `cthulu node` (or any Cthulu
//! server), driven over its HTTP and WebSocket API with the node's token.
//!
//! - [`NodeDirectory`] holds the registered [`Node`]s (name, URL, token) the server loads
//!   from its database, and what each last said about itself; [`probe`] asks a node.
//! - [`choose_node`] is placement: among the nodes that answered, the one with the most
//!   free capacity whose default backend can run here, or why none can.
//! - [`RemoteProvider`] makes a sandbox on a node and keeps the mapping from our id to the
//!   node's in `<root>/<id>/state.json`, so a restarted server re-attaches; a node that is
//!   down then leaves its sandboxes listed with their last known status.
//! - [`RemoteSandbox`] is the handle: every operation is a call to the node; streams are
//!   the node's WebSocket sessions; exposed ports are forwarders on our loopback that
//!   tunnel each connection over the node's port WebSocket.
//!
//! Errors: a node that does not answer is `node_unreachable` naming it (within about two
//! seconds); a node's own error is passed through with its code; garbage is a clear error
//! naming the node ([`errors`]).

pub mod errors;
mod nodes;
mod placement;
mod provider;
mod sandbox;
mod state;
mod stream;
mod tunnel;

pub use nodes::{probe, validate_node_name, Node, NodeDirectory, CONNECT_TIMEOUT};
pub use placement::{choose_node, free_capacity, Placement};
pub use provider::{RemoteConfig, RemoteProvider};
pub use sandbox::RemoteSandbox;
