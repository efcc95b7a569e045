//! cthulu-host
