//! Feeds arbitrary bytes, as a hostile guest would send them, to the host's frame decoder
//! and multiplexer. The same function runs on stable in the crate's property tests
//! (`frames::the_fuzz_target_holds_on_random_inputs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cthulu_guest_protocol::fuzzing::decode_hostile_bytes(data);
});
