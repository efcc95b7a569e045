//! Feeds arbitrary bytes to every parser the server runs on network input.
#![no_main]

use cthulu_types::stream::ClientMessage;
use cthulu_types::{CreateSandboxRequest, ExecRequest, SandboxId, Signal};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = serde_json::from_slice::<ExecRequest>(data) {
        let _ = request.command();
        let _ = request.stdin_bytes();
        let _ = request.check_env();
    }
    let _ = serde_json::from_slice::<CreateSandboxRequest>(data);
    let _ = serde_json::from_slice::<cthulu_types::vms::CreateVmRequest>(data);
    let _ = serde_json::from_slice::<ClientMessage>(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = SandboxId::parse(text);
        let _ = Signal::parse(text);
    }
});
