//! The conformance scenarios of `CONFORMANCE.md`, run by every backend's tests.
