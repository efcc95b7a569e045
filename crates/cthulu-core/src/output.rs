//! [`CappedBuffer`]: collects a stream's output up to a byte cap and remembers whether
//! anything was dropped, so a flood never grows memory and the writer is never blocked.

#[derive(Debug, Default)]
pub struct CappedBuffer {
    data: Vec<u8>,
    cap: usize,
    truncated: bool,
}

impl CappedBuffer {
    pub fn new(cap: usize) -> Self {
        CappedBuffer {
            data: Vec::new(),
            cap,
            truncated: false,
        }
    }

    /// Appends what fits under the cap; the rest is dropped and marks the buffer truncated.
    pub fn push(&mut self, chunk: &[u8]) {
        let room = self.cap.saturating_sub(self.data.len());
        if chunk.len() > room {
            self.truncated = true;
        }
        self.data.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }

    pub fn is_truncated(&self) -> bool {
        self.truncated
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn into_inner(self) -> (Vec<u8>, bool) {
        (self.data, self.truncated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_at_exactly_the_cap() {
        let mut buffer = CappedBuffer::new(5);
        buffer.push(b"abc");
        assert!(!buffer.is_truncated());
        buffer.push(b"defg");
        buffer.push(b"h");
        assert_eq!(buffer.into_inner(), (b"abcde".to_vec(), true));
        let mut exact = CappedBuffer::new(3);
        exact.push(b"abc");
        assert_eq!(exact.into_inner(), (b"abc".to_vec(), false));
    }
}
