//! Integration tests of the remote backend beyond the conformance suite
//! (`tests/conformance.rs`), against real servers as nodes.

mod silent_node;
