//! Encoding and decoding, whatever the chunking, and the decoder against hostile bytes.

use cthulu_guest_protocol::frame::{
    DecodeError, Decoder, Frame, FrameKind, HEADER_LEN, MAX_CONTROL_PAYLOAD, MAX_DATA_PAYLOAD,
};
use cthulu_guest_protocol::fuzzing::decode_hostile_bytes;
use proptest::collection::vec;
use proptest::prelude::*;

use crate::strategies::frame;

/// Splits `bytes` at the given cut points (taken modulo the length).
fn chunks<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|cut| cut % (bytes.len() + 1))
        .chain([0, bytes.len()])
        .collect();
    points.sort_unstable();
    points.dedup();
    points
        .windows(2)
        .map(|pair| &bytes[pair[0]..pair[1]])
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn any_frames_round_trip_whatever_the_chunking(
        frames in vec(frame(), 0..12),
        cuts in vec(any::<usize>(), 0..40),
    ) {
        let mut bytes = Vec::new();
        for frame in &frames {
            frame.encode(&mut bytes).unwrap();
        }
        let mut decoder = Decoder::new();
        let mut decoded = Vec::new();
        for chunk in chunks(&bytes, &cuts) {
            decoder.push(chunk);
            while let Some(frame) = decoder.next_frame().unwrap() {
                decoded.push(frame);
            }
        }
        decoder.finish().unwrap();
        prop_assert_eq!(decoded, frames);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_garbage_is_a_typed_error(
        bytes in vec(any::<u8>(), 0..2048),
        chunk in 1usize..64,
    ) {
        let mut decoder = Decoder::new();
        let mut outcome: Result<(), DecodeError> = Ok(());
        'feed: for piece in bytes.chunks(chunk) {
            decoder.push(piece);
            loop {
                match decoder.next_frame() {
                    Ok(Some(frame)) => prop_assert!(payload_len(&frame) <= MAX_CONTROL_PAYLOAD),
                    Ok(None) => break,
                    Err(error) => {
                        outcome = Err(error);
                        break 'feed;
                    }
                }
                prop_assert!(decoder.buffered() <= HEADER_LEN + MAX_CONTROL_PAYLOAD + chunk);
            }
        }
        if let Err(error) = outcome {
            // Whatever went wrong, the decoder holds nothing more and repeats itself.
            prop_assert_eq!(decoder.buffered(), 0);
            prop_assert_eq!(decoder.next_frame(), Err(error));
        }
    }

    #[test]
    fn a_header_announcing_too_much_fails_before_its_payload(
        stream in 1u32..,
        kind in prop_oneof![Just(FrameKind::Data), Just(FrameKind::Control), Just(FrameKind::Open)],
        excess in 1u32..=(u32::MAX - MAX_CONTROL_PAYLOAD as u32),
    ) {
        let length = kind.max_payload() as u32 + excess;
        let mut header = stream.to_le_bytes().to_vec();
        header.extend_from_slice(&[kind as u8, 0]);
        header.extend_from_slice(&length.to_le_bytes());
        let mut decoder = Decoder::new();
        decoder.push(&header);
        let is_too_large = matches!(
            decoder.next_frame(),
            Err(DecodeError::PayloadTooLarge { length: reported, .. }) if reported == length
        );
        prop_assert!(is_too_large);
    }

    /// The same function as the `guest_frames` fuzz target, over random inputs.
    #[test]
    fn the_fuzz_target_holds_on_random_inputs(bytes in vec(any::<u8>(), 0..4096)) {
        decode_hostile_bytes(&bytes);
    }

    /// Random inputs that start as valid frames, so the fuzz function reaches the mux.
    #[test]
    fn the_fuzz_target_holds_on_mutated_valid_streams(
        chunk in any::<u8>(),
        frames in vec(frame(), 1..6),
        flips in vec((any::<usize>(), any::<u8>()), 0..3),
    ) {
        let mut bytes = vec![chunk];
        for frame in &frames {
            frame.encode(&mut bytes).unwrap();
        }
        for (at, value) in flips {
            let at = 1 + at % (bytes.len() - 1);
            bytes[at] = value;
        }
        decode_hostile_bytes(&bytes);
    }
}

fn payload_len(frame: &Frame) -> usize {
    match &frame.body {
        cthulu_guest_protocol::frame::FrameBody::Data { bytes, .. } => {
            assert!(bytes.len() <= MAX_DATA_PAYLOAD);
            bytes.len()
        }
        _ => 0,
    }
}
