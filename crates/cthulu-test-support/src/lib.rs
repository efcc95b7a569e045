//! cthulu-test-support
