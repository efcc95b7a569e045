//! cthulu-client
