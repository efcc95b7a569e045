//! One session: the multiplexer of a host's connection (from its hello until the host goes,
//! says hello again, or breaks the protocol) and what each of its streams is doing.

use std::collections::BTreeMap;

use cthulu_guest_protocol::frame::{Channel, StreamId};
use cthulu_guest_protocol::message::{Control, ErrorReply};
use cthulu_guest_protocol::mux::{Mux, StreamStatus};

use super::files::{Get, Listing, Put};
use super::tunnel::Tunnel;
use crate::log::log;

/// Streams open at once (the mux's own limit is higher, so a host that opens too many
/// gets resets instead of losing its session).
pub const MAX_STREAMS: usize = 256;
/// Credit granted on a stream that takes data (stdin, uploads, tunnels): at most this many
/// bytes from the host wait in the agent per stream.
pub const WINDOW: u32 = 256 * 1024;
/// Consumed bytes are granted back in steps of at least this many (fewer window updates).
pub const GRANT_STEP: u64 = 64 * 1024;
/// Most data bytes queued in the mux per stream: a source is read only while its stream
/// has fewer queued, and only as much as the host's window still allows.
pub const QUEUE_CAP: usize = 64 * 1024;

/// What a stream is for.
#[derive(Debug)]
pub enum Stream {
    /// An exec, or an attach: follows process `key`; `stdin` when the host's data is the
    /// process's stdin.
    Process {
        key: u64,
        stdin: bool,
    },
    Put(Put),
    Get(Get),
    List(Listing),
    Tunnel(Tunnel),
    /// Answered and closed on our side: kept until the mux forgets it (the host's close).
    Finished,
}

#[derive(Debug)]
pub struct Session {
    pub mux: Mux,
    pub streams: BTreeMap<StreamId, Stream>,
    /// Bytes consumed per stream and not yet granted back.
    credit: BTreeMap<StreamId, u64>,
}

impl Session {
    pub fn new(mux: Mux) -> Self {
        Self {
            mux,
            streams: BTreeMap::new(),
            credit: BTreeMap::new(),
        }
    }

    /// `bytes` the host sent on the stream were consumed: grant them back in steps.
    pub fn consumed(&mut self, stream_id: StreamId, bytes: usize) {
        let owed = self.credit.entry(stream_id).or_default();
        *owed += bytes as u64;
        if *owed >= GRANT_STEP {
            let increment = *owed as u32;
            self.credit.remove(&stream_id);
            if self.mux.stream_status(stream_id).is_some() {
                if let Err(error) = self.mux.grant(stream_id, increment) {
                    log!("granting credit on stream {stream_id}: {error}");
                }
            }
        }
    }

    pub fn grant(&mut self, stream_id: StreamId, increment: u32) {
        if let Err(error) = self.mux.grant(stream_id, increment) {
            log!("granting credit on stream {stream_id}: {error}");
        }
    }

    pub fn control(&mut self, stream_id: StreamId, control: Control) {
        if let Err(error) = self.mux.send_control(stream_id, control) {
            log!("sending on stream {stream_id}: {error}");
        }
    }

    /// Sends `control` (if any) and closes our direction; the stream is finished.
    pub fn finish(&mut self, stream_id: StreamId, control: Option<Control>) {
        if let Some(control) = control {
            self.control(stream_id, control);
        }
        if let Err(error) = self.mux.close(stream_id) {
            log!("closing stream {stream_id}: {error}");
        }
        self.streams.insert(stream_id, Stream::Finished);
    }

    /// Resets the stream; returns what it was doing, for the caller to release.
    pub fn reset(&mut self, stream_id: StreamId, error: ErrorReply) -> Option<Stream> {
        if self.mux.stream_status(stream_id).is_some() {
            if let Err(error) = self.mux.reset(stream_id, error) {
                log!("resetting stream {stream_id}: {error}");
            }
        }
        self.credit.remove(&stream_id);
        self.streams.remove(&stream_id)
    }

    /// Streams the mux has forgotten (closed both ways): removed, for the caller to release.
    pub fn take_gone(&mut self) -> Vec<(StreamId, Stream)> {
        let gone: Vec<StreamId> = self
            .streams
            .keys()
            .filter(|stream_id| self.mux.stream_status(**stream_id).is_none())
            .copied()
            .collect();
        gone.into_iter()
            .filter_map(|stream_id| {
                self.credit.remove(&stream_id);
                self.streams
                    .remove(&stream_id)
                    .map(|stream| (stream_id, stream))
            })
            .collect()
    }
}

/// How many bytes may be read now for the stream: what the host's window still allows
/// beyond what is queued, within [`QUEUE_CAP`]; nothing when the link to the host is full.
pub fn room(mux: &Mux, stream_id: StreamId, link_has_room: bool) -> usize {
    if !link_has_room {
        return 0;
    }
    match mux.stream_status(stream_id) {
        Some(StreamStatus::Open | StreamStatus::HalfClosedRemote) => {}
        _ => return 0,
    }
    let window = usize::try_from(mux.send_window(stream_id).unwrap_or(0)).unwrap_or(usize::MAX);
    let queued = mux.queued_data(stream_id);
    window
        .saturating_sub(queued)
        .min(QUEUE_CAP.saturating_sub(queued))
}

pub fn send(mux: &mut Mux, stream_id: StreamId, channel: Channel, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    if let Err(error) = mux.send_data(stream_id, channel, bytes) {
        log!("sending data on stream {stream_id}: {error}");
    }
}
