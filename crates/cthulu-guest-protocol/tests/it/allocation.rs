//! The decoder's largest single allocation, measured with a counting allocator, stays
//! within a frame's bounds whatever a hostile peer announces.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use cthulu_guest_protocol::frame::{Decoder, HEADER_LEN, MAX_CONTROL_PAYLOAD};
use proptest::collection::vec;
use proptest::prelude::*;

struct Counting;

thread_local! {
    static MEASURING: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    static TOTAL: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: the allocator may run while thread locals are being torn down.
    let _ = MEASURING.try_with(|measuring| {
        if measuring.get() {
            let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
            let _ = TOTAL.try_with(|total| total.set(total.get() + size));
        }
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator; the bookkeeping uses
// const-initialised thread locals without destructors, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(pointer, layout) }
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(pointer, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The largest allocation `work` makes on this thread.
fn largest_allocation(work: impl FnOnce()) -> usize {
    LARGEST.with(|largest| largest.set(0));
    MEASURING.with(|measuring| measuring.set(true));
    work();
    MEASURING.with(|measuring| measuring.set(false));
    LARGEST.with(Cell::get)
}

/// The sum of every allocation `work` makes on this thread (frees not subtracted).
fn total_allocated(work: impl FnOnce()) -> usize {
    TOTAL.with(|total| total.set(0));
    MEASURING.with(|measuring| measuring.set(true));
    work();
    MEASURING.with(|measuring| measuring.set(false));
    TOTAL.with(Cell::get)
}

/// A header claiming a control frame of `length` bytes, then `length` bytes of garbage.
fn hostile(length: u32) -> Vec<u8> {
    let mut bytes = 1u32.to_le_bytes().to_vec();
    bytes.extend_from_slice(&[5, 0]);
    bytes.extend_from_slice(&length.to_le_bytes());
    bytes.resize(HEADER_LEN + length as usize, b'[');
    bytes
}

const CHUNK: usize = 4096;

fn feed(bytes: &[u8]) {
    let mut decoder = Decoder::new();
    for chunk in bytes.chunks(CHUNK) {
        decoder.push(chunk);
        while let Ok(Some(_)) = decoder.next_frame() {}
    }
}

#[test]
fn a_huge_announced_length_allocates_nothing_like_it() {
    let mut header = 1u32.to_le_bytes().to_vec();
    header.extend_from_slice(&[3, 0]);
    header.extend_from_slice(&u32::MAX.to_le_bytes());
    let largest = largest_allocation(|| {
        let mut decoder = Decoder::new();
        decoder.push(&header);
        assert!(decoder.next_frame().is_err());
    });
    assert!(largest < 4096, "largest allocation {largest} bytes");
}

#[test]
fn a_maximal_control_frame_of_garbage_is_buffered_exactly() {
    let bytes = hostile(MAX_CONTROL_PAYLOAD as u32);
    let largest = largest_allocation(|| feed(&bytes));
    assert!(
        largest <= HEADER_LEN + MAX_CONTROL_PAYLOAD + CHUNK,
        "largest allocation {largest} bytes"
    );
    assert!(
        largest >= MAX_CONTROL_PAYLOAD,
        "the frame was buffered whole"
    );
}

#[test]
fn a_frame_of_many_tiny_json_items_costs_a_small_multiple_of_its_size() {
    let mut json = br#"{"exec":{"command":{"argv":["#.to_vec();
    while json.len() < MAX_CONTROL_PAYLOAD - 100 {
        json.extend_from_slice(br#""a","#);
    }
    json.extend_from_slice(
        br#""a"]},"env":{},"cwd":null,"stdin":false,"timeout_ms":null,"output_cap":null,"tty":null}}"#,
    );
    let mut bytes = 1u32.to_le_bytes().to_vec();
    bytes.extend_from_slice(&[2, 0]);
    bytes.extend_from_slice(&(json.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&json);
    let total = total_allocated(|| {
        let mut decoder = Decoder::new();
        decoder.push(&bytes);
        let error = decoder.next_frame().unwrap_err();
        assert!(
            error.to_string().contains("more than 4096 items"),
            "{error}"
        );
    });
    assert!(
        total <= 4 * (HEADER_LEN + MAX_CONTROL_PAYLOAD),
        "decoding allocated {total} bytes in all"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_bytes_allocate_within_one_frame_and_one_chunk(
        kind in 1u8..=7,
        length in 0u32..=MAX_CONTROL_PAYLOAD as u32 + 16,
        tail in vec(any::<u8>(), 0..300_000),
    ) {
        // A plausible header first, so the decoder gets past it more often than not.
        let stream: u32 = if kind == 1 { 0 } else { 1 };
        let mut bytes = stream.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[kind, 0]);
        bytes.extend_from_slice(&length.to_le_bytes());
        bytes.extend_from_slice(&tail);
        let largest = largest_allocation(|| feed(&bytes));
        // JSON payloads may expand into their typed form by a small constant factor.
        prop_assert!(largest <= 2 * (HEADER_LEN + MAX_CONTROL_PAYLOAD + CHUNK), "{}", largest);
    }
}
