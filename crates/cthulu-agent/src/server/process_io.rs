//! The I/O of processes: reaping them, their timeouts and drain graces, reading their
//! outputs (under the output cap), writing their stdin, feeding the followers of detached
//! ones from their rings, their exits, and what a stream that ends leaves behind.

use std::collections::BTreeMap;
use std::time::Instant;

use cthulu_guest_protocol::frame::StreamId;
use cthulu_guest_protocol::message::Control;
use rustix::io::Errno;

use super::process::Process;
use super::session::{room, send, Stream};
use super::{Server, DRAIN_GRACE, MAX_RETAINED, READ_CHUNK};
use crate::log::log;
use crate::sys::{self, Ended};

impl Server {
    pub(super) fn reap(&mut self) {
        sys::drain_signalfd(&self.sigchld);
        let now = Instant::now();
        while let Some((pid, ended)) = sys::reap_any(false) {
            if let Some(process) = self
                .processes
                .values_mut()
                .find(|process| process.pid == pid && process.ended.is_none())
            {
                process.ended = Some(ended);
                process.ended_at = Some(now);
                // An OOM kill during its run that it did not survive is its cause: the
                // kernel counts it before the victim dies, and the victim may be a child of
                // the command (a shell then exits 137), as the namespace backend reports it.
                if let (Some(before), Ok(cgroup)) =
                    (process.oom_kills_at_start, &self.settings.cgroup)
                {
                    process.oom_killed = ended != Ended::Code(0)
                        && cgroup.oom_kills().is_some_and(|after| after > before);
                }
                process.stdin = None;
            }
        }
    }

    pub(super) fn timers(&mut self, now: Instant) {
        for process in self.processes.values_mut() {
            if process.ended.is_none()
                && !process.timed_out
                && process.deadline.is_some_and(|deadline| now >= deadline)
            {
                process.timed_out = true;
                process.signal(libc::SIGKILL);
            }
            if process
                .ended_at
                .is_some_and(|ended_at| now >= ended_at + DRAIN_GRACE)
            {
                for output in &mut process.outputs {
                    output.until_empty = true;
                }
            }
        }
    }

    pub(super) fn read_output(&mut self, key: u64, index: usize) {
        let link_room = self.link_has_room();
        let Some(process) = self.processes.get_mut(&key) else {
            return;
        };
        let limit = if process.detached || process.discarding(index) {
            READ_CHUNK
        } else {
            match (&self.session, process.stream) {
                (Some(session), Some(stream_id)) => room(&session.mux, stream_id, link_room),
                _ => 0,
            }
        };
        let output = &mut process.outputs[index];
        let Some(fd) = &output.fd else {
            return;
        };
        if limit == 0 {
            return;
        }
        let buffer = &mut self.buffer[..limit.min(READ_CHUNK)];
        match rustix::io::read(fd, &mut *buffer) {
            // EIO: the terminal's other end is closed everywhere.
            Ok(0) | Err(Errno::IO) => output.fd = None,
            Ok(read) => {
                let channel = output.channel;
                let kept = process.keep(index, read);
                if kept > 0 {
                    if let Some(ring) = &mut process.outputs[index].ring {
                        ring.push(&buffer[..kept]);
                    } else if let (Some(session), Some(stream_id)) =
                        (&mut self.session, process.stream)
                    {
                        send(&mut session.mux, stream_id, channel, &buffer[..kept]);
                    }
                }
            }
            Err(Errno::AGAIN) => {
                if output.until_empty {
                    output.fd = None;
                }
            }
            Err(Errno::INTR) => {}
            Err(errno) => {
                log!("reading the output of {}: {errno}", process.process_id);
                output.fd = None;
            }
        }
    }

    pub(super) fn write_stdin(&mut self, key: u64) {
        let Some(process) = self.processes.get_mut(&key) else {
            return;
        };
        let Some(stdin) = &mut process.stdin else {
            return;
        };
        let mut broken = false;
        while let Some((stream_id, chunk)) = stdin.pending.front() {
            match rustix::io::write(&stdin.fd, &chunk[stdin.written_front..]) {
                Ok(written) => {
                    if let Some(session) = &mut self.session {
                        session.consumed(*stream_id, written);
                    }
                    stdin.written_front += written;
                    if stdin.written_front == chunk.len() {
                        stdin.pending.pop_front();
                        stdin.written_front = 0;
                    }
                }
                Err(Errno::AGAIN) => break,
                Err(Errno::INTR) => {}
                // EPIPE, or EIO on a hung-up terminal: nobody reads stdin any more.
                Err(_) => {
                    broken = true;
                    break;
                }
            }
        }
        if broken {
            process.stdin = None;
            return;
        }
        if stdin.pending.is_empty() && stdin.close_when_flushed {
            if stdin.pty {
                // A terminal's EOF is its EOF character (at the start of a line).
                const TERMINAL_EOF: u8 = 0x04;
                let _ = rustix::io::write(&stdin.fd, &[TERMINAL_EOF]);
                stdin.close_when_flushed = false;
            } else {
                process.stdin = None;
            }
        }
    }

    /// Makes room for one more detached process: the oldest ended one nobody follows goes.
    pub(super) fn make_room_for_detached(&mut self) -> bool {
        let detached = self
            .processes
            .values()
            .filter(|process| process.detached)
            .count();
        if detached < MAX_RETAINED {
            return true;
        }
        let oldest = self
            .processes
            .iter()
            .filter(|(_, process)| {
                process.detached && process.finished() && process.followers.is_empty()
            })
            .min_by_key(|(_, process)| process.ended_at)
            .map(|(key, _)| *key);
        match oldest {
            Some(key) => {
                self.processes.remove(&key);
                true
            }
            None => false,
        }
    }

    /// Retained output to the followers of detached processes, and the exits of
    /// non-detached processes whose output is all out.
    pub(super) fn produce_processes(&mut self) {
        let link_room = self.link_has_room();
        let Some(session) = &mut self.session else {
            return;
        };
        // Followers of detached processes, from the rings.
        for process in self.processes.values_mut() {
            if process.followers.is_empty() {
                continue;
            }
            let finished = process.finished();
            let status = process.exit_status();
            let Process {
                followers, outputs, ..
            } = process;
            followers.retain_mut(|follower| {
                let mut caught_up = true;
                for (output, cursor) in outputs.iter().zip(follower.cursors.iter_mut()) {
                    let Some(ring) = &output.ring else { continue };
                    loop {
                        let space = room(&session.mux, follower.stream, link_room);
                        if *cursor >= ring.end() || space == 0 {
                            break;
                        }
                        let (from, bytes) = ring.read(*cursor, space.min(READ_CHUNK));
                        send(&mut session.mux, follower.stream, output.channel, &bytes);
                        *cursor = from + bytes.len() as u64;
                    }
                    caught_up &= *cursor >= ring.end();
                }
                if finished && caught_up {
                    session.finish(follower.stream, status.map(Control::Exit));
                    false
                } else {
                    true
                }
            });
        }
        // Non-detached processes: sources past their grace, and exits.
        let keys: Vec<u64> = self
            .processes
            .iter()
            .filter(|(_, process)| !process.detached)
            .map(|(key, _)| *key)
            .collect();
        for key in keys {
            let until_empty: Vec<usize> = self.processes[&key]
                .outputs
                .iter()
                .enumerate()
                .filter(|(_, output)| output.until_empty && output.fd.is_some())
                .map(|(index, _)| index)
                .collect();
            for index in until_empty {
                self.read_output(key, index);
            }
            let process = &self.processes[&key];
            if process.finished() {
                let status = process.exit_status();
                if let (Some(session), Some(stream_id)) = (&mut self.session, process.stream) {
                    session.finish(stream_id, status.map(Control::Exit));
                }
                self.processes.remove(&key);
            }
        }
    }
}

/// What a stream that ends leaves behind: a non-detached process it started is killed
/// (its whole group), a follower of a detached one is forgotten, an upload is abandoned;
/// descriptors close as the stream is dropped.
pub(super) fn release(processes: &mut BTreeMap<u64, Process>, stream_id: StreamId, stream: Stream) {
    match stream {
        Stream::Process { key, .. } => {
            let Some(process) = processes.get_mut(&key) else {
                return;
            };
            if process.detached {
                process
                    .followers
                    .retain(|follower| follower.stream != stream_id);
            } else if process.stream == Some(stream_id) {
                if process.ended.is_none() || process.outputs.iter().any(|o| o.fd.is_some()) {
                    process.signal(libc::SIGKILL);
                }
                processes.remove(&key);
            }
        }
        Stream::Put(put) => put.abandon(),
        Stream::Get(_) | Stream::List(_) | Stream::Tunnel(_) | Stream::Finished => {}
    }
}
