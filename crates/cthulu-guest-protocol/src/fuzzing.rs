//! Entry points for the fuzz target (`fuzz/fuzz_targets/guest_frames.rs`) and for the test
//! that runs them over random inputs on stable Rust. They panic when an invariant breaks,
//! which is what a fuzzer looks for; they are not for production use.

use crate::frame::{Decoder, FrameBody, HEADER_LEN, MAX_CONTROL_PAYLOAD};
use crate::message::Hello;
use crate::mux::{Mux, Role};

/// Feeds arbitrary bytes, as a hostile guest would send them, to the decoder and a host
/// multiplexer. The first byte picks the chunk size the rest arrives in.
///
/// Checks that nothing panics, that the decoder's buffer stays within one frame plus one
/// chunk, that every decoded frame re-encodes and decodes to itself, and that an error
/// sticks.
pub fn decode_hostile_bytes(data: &[u8]) {
    let Some((&chunk_byte, input)) = data.split_first() else {
        return;
    };
    let chunk_size = if chunk_byte == 0 {
        input.len().max(1)
    } else {
        usize::from(chunk_byte)
    };
    let mut decoder = Decoder::new();
    let mut mux = Mux::new(Role::Host, Hello::new(vec![]));
    let mut mux_failed = false;
    for chunk in input.chunks(chunk_size) {
        decoder.push(chunk);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    if let FrameBody::Data { bytes, .. } = &frame.body {
                        assert!(bytes.len() <= frame.body.kind().max_payload());
                    }
                    let encoded = frame.to_bytes().expect("a decoded frame re-encodes");
                    let mut again = Decoder::new();
                    again.push(&encoded);
                    assert_eq!(again.next_frame(), Ok(Some(frame.clone())));
                    if !mux_failed {
                        mux_failed = mux.receive(frame).is_err();
                        while mux.poll_frame().is_some() {}
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    assert_eq!(decoder.next_frame(), Err(error.clone()), "errors stick");
                    assert_eq!(decoder.finish(), Err(error));
                    return;
                }
            }
            assert!(decoder.buffered() <= HEADER_LEN + MAX_CONTROL_PAYLOAD + chunk_size);
        }
    }
    let _ = decoder.finish();
}
