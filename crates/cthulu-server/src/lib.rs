//! cthulu-server
