//! The agent's side of the incoming byte stream: the protocol's [`Decoder`], and the
//! resynchronisation after a decode error: bytes are discarded until a decodable `HELLO`
//! frame appears (a new host announcing itself), or until the host goes away.

use cthulu_guest_protocol::frame::{
    DecodeError, Decoder, Frame, FrameBody, FrameKind, HEADER_LEN, MAX_CONTROL_PAYLOAD,
};

/// The header prefix of a hello: stream 0, kind `HELLO`, no flags.
const HELLO_PREFIX: [u8; 6] = [0, 0, 0, 0, FrameKind::Hello as u8, 0];

#[derive(Debug, Default)]
pub struct Inbound {
    decoder: Decoder,
    /// The bytes of the last push, to rescan after a decode error (the decoder drops what
    /// it buffered when it fails).
    last_push: Vec<u8>,
    /// Some while discarding bytes in search of a hello.
    scan: Option<Vec<u8>>,
}

/// What the incoming bytes held next.
#[derive(Debug)]
pub enum Next {
    Frame(Frame),
    /// The byte stream is out of sync; the caller ends the session. Until a hello is found,
    /// bytes are discarded.
    Violation(DecodeError),
    /// More bytes are needed.
    Pending,
}

impl Inbound {
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets everything: the host went away.
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// Whether bytes are being discarded in search of a hello.
    #[cfg(test)]
    pub fn resyncing(&self) -> bool {
        self.scan.is_some()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        match &mut self.scan {
            Some(scan) => scan.extend_from_slice(bytes),
            None => {
                self.last_push.clear();
                self.last_push.extend_from_slice(bytes);
                self.decoder.push(bytes);
            }
        }
    }

    pub fn next(&mut self) -> Next {
        if self.scan.is_some() && !self.find_hello() {
            return Next::Pending;
        }
        let undecoded = self.decoder.buffered();
        match self.decoder.next_frame() {
            Ok(Some(frame)) => Next::Frame(frame),
            Ok(None) => Next::Pending,
            Err(error) => {
                // The bad frame started `undecoded` bytes before the end of what was
                // pushed; rescan from the byte after its start.
                let from = if undecoded <= self.last_push.len() {
                    self.last_push.len() - undecoded + 1
                } else {
                    0
                };
                let scan = self.last_push.get(from..).unwrap_or_default().to_vec();
                self.scan = Some(scan);
                self.decoder = Decoder::new();
                Next::Violation(error)
            }
        }
    }

    /// Looks for a decodable hello in the scanned bytes; when found, decoding resumes from
    /// it with a fresh decoder. A hello header whose payload has not all arrived is kept
    /// (with what follows it) until it has, but a complete hello after it wins: the
    /// garbage may hold a fake header announcing a long payload, and the real hello that
    /// follows must not wait for it. So the scan never holds more than one hello frame.
    fn find_hello(&mut self) -> bool {
        let Some(scan) = &mut self.scan else {
            return true;
        };
        let mut at = 0;
        let mut incomplete = None;
        while let Some(offset) = find(&scan[at..], &HELLO_PREFIX) {
            let start = at + offset;
            at = start + 1;
            let Some(header) = scan.get(start..start + HEADER_LEN) else {
                // The header itself is cut: it is in the tail kept below.
                break;
            };
            let length = u32::from_le_bytes([header[6], header[7], header[8], header[9]]) as usize;
            if length > MAX_CONTROL_PAYLOAD {
                continue;
            }
            let Some(candidate) = scan.get(start..start + HEADER_LEN + length) else {
                // Maybe a hello whose payload has not arrived yet.
                incomplete.get_or_insert(start);
                continue;
            };
            let mut probe = Decoder::new();
            probe.push(candidate);
            if let Ok(Some(Frame {
                body: FrameBody::Hello(_),
                ..
            })) = probe.next_frame()
            {
                let rest = scan.split_off(start);
                self.scan = None;
                self.decoder = Decoder::new();
                self.last_push = rest.clone();
                self.decoder.push(&rest);
                return true;
            }
        }
        // Keep the first incomplete candidate on, or only a tail that could still begin a
        // hello header.
        let cut = incomplete.unwrap_or(scan.len().saturating_sub(HEADER_LEN - 1));
        scan.drain(..cut);
        false
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cthulu_guest_protocol::frame::StreamId;
    use cthulu_guest_protocol::message::{Hello, Request};
    use proptest::collection::vec;
    use proptest::prelude::*;

    fn hello() -> Vec<u8> {
        Frame::new(StreamId::CONNECTION, FrameBody::Hello(Hello::new(vec![])))
            .to_bytes()
            .unwrap()
    }

    fn open() -> Vec<u8> {
        Frame::new(StreamId(1), FrameBody::Open(Request::Sync))
            .to_bytes()
            .unwrap()
    }

    fn kinds(inbound: &mut Inbound) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            match inbound.next() {
                Next::Frame(frame) => seen.push(frame.body.kind().to_string()),
                Next::Violation(_) => seen.push("violation".into()),
                Next::Pending => return seen,
            }
        }
    }

    #[test]
    fn garbage_then_a_hello_in_the_same_push_resyncs() {
        let mut inbound = Inbound::new();
        let mut bytes = hello();
        bytes.extend_from_slice(&[0xff; 37]);
        bytes.extend_from_slice(&hello());
        bytes.extend_from_slice(&open());
        inbound.push(&bytes);
        assert_eq!(kinds(&mut inbound), ["hello", "violation", "hello", "open"]);
    }

    #[test]
    fn a_hello_split_across_pushes_is_found() {
        let mut inbound = Inbound::new();
        inbound.push(&[9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9]);
        assert_eq!(kinds(&mut inbound), ["violation"]);
        assert!(inbound.resyncing());
        let hello = hello();
        for byte in &hello {
            inbound.push(&[*byte]);
            if inbound.resyncing() {
                assert!(kinds(&mut inbound).is_empty() || !inbound.resyncing());
            }
        }
        inbound.push(&open());
        let seen = kinds(&mut inbound);
        assert_eq!(seen.last().map(String::as_str), Some("open"));
        assert!(!inbound.resyncing());
    }

    #[test]
    fn a_fake_hello_header_with_a_bad_payload_is_skipped() {
        let mut inbound = Inbound::new();
        inbound.push(&[0xff; 10]);
        assert_eq!(kinds(&mut inbound), ["violation"]);
        let mut fake = vec![0, 0, 0, 0, 1, 0, 3, 0, 0, 0];
        fake.extend_from_slice(b"{x}");
        inbound.push(&fake);
        assert!(kinds(&mut inbound).is_empty());
        inbound.push(&hello());
        assert_eq!(kinds(&mut inbound), ["hello"]);
    }

    #[test]
    fn scanning_keeps_memory_bounded() {
        let mut inbound = Inbound::new();
        inbound.push(&[0xff; 10]);
        kinds(&mut inbound);
        for _ in 0..100 {
            inbound.push(&[0x42; 65536]);
            assert!(kinds(&mut inbound).is_empty());
        }
        assert!(inbound.scan.as_ref().unwrap().len() < HEADER_LEN);
    }

    #[test]
    fn a_fake_hello_header_announcing_a_long_payload_does_not_hold_up_the_real_one() {
        let mut inbound = Inbound::new();
        inbound.push(&[0xff; 10]);
        assert_eq!(kinds(&mut inbound), ["violation"]);
        let mut fake = HELLO_PREFIX.to_vec();
        fake.extend_from_slice(&(MAX_CONTROL_PAYLOAD as u32).to_le_bytes());
        inbound.push(&fake);
        assert!(kinds(&mut inbound).is_empty());
        inbound.push(&hello());
        inbound.push(&open());
        assert_eq!(kinds(&mut inbound), ["hello", "open"]);
    }

    /// Garbage for the scanner: arbitrary bytes, with now and then what looks like the
    /// start of a hello (its header prefix, with any length after it).
    fn garbage() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            4 => vec(any::<u8>(), 0..300),
            1 => any::<u32>().prop_map(|length| {
                let mut bytes = HELLO_PREFIX.to_vec();
                bytes.extend_from_slice(&(length % (2 * MAX_CONTROL_PAYLOAD as u32)).to_le_bytes());
                bytes
            }),
            1 => Just(HELLO_PREFIX[..3].to_vec()),
        ];
        vec(piece, 0..40).prop_map(|pieces| pieces.concat())
    }

    proptest! {
        /// After a decode error, whatever bytes come, a valid hello that follows them is
        /// found (and the frames after it decoded), and what is held while scanning stays
        /// below one hello frame.
        #[test]
        fn garbage_then_a_hello_is_found_with_bounded_memory(
            garbage in garbage(),
            chunk in 1usize..5000,
        ) {
            let mut inbound = Inbound::new();
            inbound.push(&[0xff; 10]);
            prop_assert_eq!(kinds(&mut inbound), ["violation"]);
            let mut bytes = garbage;
            bytes.extend_from_slice(&hello());
            bytes.extend_from_slice(&open());
            let mut seen = Vec::new();
            for piece in bytes.chunks(chunk) {
                inbound.push(piece);
                seen.extend(kinds(&mut inbound));
                if let Some(scan) = &inbound.scan {
                    prop_assert!(scan.len() < HEADER_LEN + MAX_CONTROL_PAYLOAD);
                }
            }
            prop_assert_eq!(
                &seen[seen.len().saturating_sub(2)..],
                ["hello", "open"],
                "{:?}",
                seen
            );
            prop_assert!(!inbound.resyncing());
        }
    }
}
