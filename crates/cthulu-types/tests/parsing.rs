//! Property tests of what the server parses from the network: request bodies and
//! WebSocket control frames must never panic, and what parses must survive a round trip.

use cthulu_types::stream::ClientMessage;
use cthulu_types::{CreateSandboxRequest, ExecRequest, SandboxId, Signal};
use proptest::prelude::*;

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = serde_json::from_slice::<ExecRequest>(&raw);
        let _ = serde_json::from_slice::<CreateSandboxRequest>(&raw);
        let _ = serde_json::from_slice::<ClientMessage>(&raw);
        if let Ok(text) = std::str::from_utf8(&raw) {
            let _ = SandboxId::parse(text);
            let _ = Signal::parse(text);
        }
    }

    #[test]
    fn exec_requests_round_trip(
        argv in proptest::collection::vec(".*", 1..5),
        env in proptest::collection::btree_map("[A-Z_]{1,8}", ".*", 0..4),
        cwd in proptest::option::of(".*"),
        timeout_ms in proptest::option::of(1u64..10_000_000),
        detach in any::<bool>(),
    ) {
        let request = ExecRequest { argv: Some(argv), env, cwd, timeout_ms, detach, ..ExecRequest::default() };
        let json = serde_json::to_string(&request).unwrap();
        let parsed: ExecRequest = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(&parsed, &request);
        // Validation is total: it answers, never panics.
        let _ = parsed.command();
    }

    #[test]
    fn ids_that_parse_are_safe_in_paths_and_host_names(raw in "[ -~]{0,30}") {
        if let Ok(id) = SandboxId::parse(&raw) {
            prop_assert!(id.as_str().len() <= 24);
            prop_assert!(id.as_str().bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
        }
    }
}
