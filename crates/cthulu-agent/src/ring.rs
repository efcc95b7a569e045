//! The output a detached process keeps for later attaches: the last bytes of one channel,
//! addressed by absolute offsets so each follower keeps its own cursor.

use std::collections::VecDeque;

#[derive(Debug)]
pub struct Ring {
    bytes: VecDeque<u8>,
    /// Absolute offset of the first byte kept.
    start: u64,
    capacity: usize,
}

impl Ring {
    pub fn new(capacity: usize) -> Self {
        Self {
            bytes: VecDeque::new(),
            start: 0,
            capacity,
        }
    }

    /// Appends, dropping the oldest bytes beyond the capacity.
    pub fn push(&mut self, data: &[u8]) {
        let skipped = data.len().saturating_sub(self.capacity);
        let data = &data[skipped..];
        let overflow = (self.bytes.len() + data.len()).saturating_sub(self.capacity);
        self.bytes.drain(..overflow);
        self.start += (overflow + skipped) as u64;
        self.bytes.extend(data);
    }

    /// Absolute offset just past the last byte.
    pub fn end(&self) -> u64 {
        self.start + self.bytes.len() as u64
    }

    /// Up to `max` bytes from `from` (moved up to the oldest byte kept, when older), and
    /// the offset they start at.
    pub fn read(&self, from: u64, max: usize) -> (u64, Vec<u8>) {
        let from = from.max(self.start);
        let skip = (from - self.start) as usize;
        let take = self.bytes.len().saturating_sub(skip).min(max);
        let (front, back) = self.bytes.as_slices();
        let mut out = Vec::with_capacity(take);
        if skip < front.len() {
            let end = (skip + take).min(front.len());
            out.extend_from_slice(&front[skip..end]);
            out.extend_from_slice(&back[..take - (end - skip)]);
        } else {
            let at = skip - front.len();
            out.extend_from_slice(&back[at..at + take]);
        }
        (from, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_bytes_at_absolute_offsets() {
        let mut ring = Ring::new(8);
        ring.push(b"hello");
        assert_eq!(ring.read(0, 100), (0, b"hello".to_vec()));
        ring.push(b" world");
        assert_eq!(ring.end(), 11);
        assert_eq!(ring.read(0, 100), (3, b"lo world".to_vec()));
        assert_eq!(ring.read(5, 3), (5, b" wo".to_vec()));
        assert_eq!(ring.read(11, 3), (11, Vec::new()));
        ring.push(b"0123456789abc");
        assert_eq!(ring.read(0, 100), (16, b"56789abc".to_vec()));
        assert_eq!(ring.end(), 24);
    }

    #[test]
    fn reads_across_the_wrap() {
        let mut ring = Ring::new(4);
        for byte in 0u8..10 {
            ring.push(&[byte]);
        }
        assert_eq!(ring.read(0, 10), (6, vec![6, 7, 8, 9]));
        assert_eq!(ring.read(7, 2), (7, vec![7, 8]));
    }
}
