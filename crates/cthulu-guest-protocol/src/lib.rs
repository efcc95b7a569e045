//! The protocol between the host and `cthulu-agent`, the guest agent of a microVM, over one
//! byte stream (virtio-serial under QEMU, vsock under Firecracker, a Unix socket in tests).
//!
//! Three layers, all free of I/O:
//! - [`frame`]: the framing — [`frame::Frame`] and its typed [`frame::FrameBody`],
//!   [`frame::Frame::encode`], and the incremental [`frame::Decoder`] that treats every byte
//!   from the guest as hostile.
//! - [`message`]: what JSON frames carry — the [`message::Hello`] handshake and
//!   [`message::negotiate`], stream [`message::Request`]s (exec, file put/get, dir list,
//!   port tunnel), [`message::Control`] messages and [`message::ErrorReply`].
//! - [`mux`]: the sans-I/O [`mux::Mux`] — per-stream state, credit-based flow control and
//!   round-robin scheduling. The caller moves bytes: decoded frames go into
//!   [`mux::Mux::receive`], which yields [`mux::Event`]s; frames from
//!   [`mux::Mux::poll_frame`] are encoded and written.
//!
//! [`fuzzing`] holds the entry point shared by the fuzz target and its stable test.
//!
//! # Wire format (version 1)
//!
//! The byte stream is a sequence of frames, each a 10-byte header then its payload:
//!
//! | offset | size | field | |
//! |---|---|---|---|
//! | 0 | 4 | `stream_id` | u32 little-endian; 0 is the connection |
//! | 4 | 1 | `kind` | see below |
//! | 5 | 1 | `flags` | bit 0 `STDERR` on `DATA`; every other bit must be 0 |
//! | 6 | 4 | `length` | u32 little-endian, payload bytes that follow |
//!
//! | kind | name | stream | payload | max payload |
//! |---|---|---|---|---|
//! | 1 | `HELLO` | 0 only | JSON [`message::Hello`] | 128 KiB |
//! | 2 | `OPEN` | ≠ 0 | JSON [`message::Request`] | 128 KiB |
//! | 3 | `DATA` | ≠ 0 | raw bytes (flag `STDERR`: stderr channel, else main) | 64 KiB |
//! | 4 | `WINDOW_UPDATE` | ≠ 0 | u32 little-endian increment, ≥ 1 | exactly 4 |
//! | 5 | `CONTROL` | ≠ 0 | JSON [`message::Control`] | 128 KiB |
//! | 6 | `CLOSE` | ≠ 0 | none: the sender sends nothing more on the stream | 0 |
//! | 7 | `RESET` | ≠ 0 | JSON [`message::ErrorReply`]: the stream is abandoned both ways | 128 KiB |
//!
//! JSON payloads are UTF-8; requests and control messages are externally tagged in
//! `snake_case` (`{"port_tunnel":{"port":8080}}`, `"done"` for a message without fields),
//! which lets them decode in one pass without buffering; unknown fields are rejected; unknown error codes
//! read as `unknown`. Fields added after version 1 first shipped are optional both ways:
//! absent, they read as their default, and at their default they are left out of the JSON,
//! so a host and an agent of different builds still understand each other as long as the
//! newer one does not use them: `limits` of [`message::GuestConfig`] (resource limits, see
//! [`message::GuestLimits`]) and `oom_killed` of [`message::ExitStatus`]. Lists and maps inside them are capped (64 hello versions or features,
//! 4096 argv items or directory entries per message, 1024 env variables), so decoding one
//! payload costs a small constant multiple of its size. The decoder rejects an unknown kind, unknown flags, a frame on the
//! wrong stream, a length above its kind's maximum (from the header alone, before buffering
//! the payload), a bad window update and an invalid JSON payload, each as a typed
//! [`frame::DecodeError`]; after one the byte stream is out of sync and the connection must
//! be dropped.
//!
//! # Handshake
//!
//! Each side's first frame is `HELLO` with the versions it speaks, `max_frame` (the largest
//! `DATA` payload it accepts, 1 KiB to 64 KiB) and its optional features. Each side picks
//! the highest version both list (none in common is [`message::HandshakeError`]), sends no
//! `DATA` larger than the peer's `max_frame`, and uses the features both list. Any other
//! frame before the peer's hello, or a second hello, is a violation.
//!
//! # Streams
//!
//! Either side opens a stream with `OPEN` on a fresh id: the host uses odd ids, the guest
//! even ids, each side's ids strictly increasing and never reused. What flows on a stream
//! depends on its request (see [`message::Request`]); `CONTROL` messages are ordered with
//! the stream's data. `CLOSE` half-closes one direction; the stream is gone once both sides
//! have sent `CLOSE`, or either has sent `RESET`. A `RESET` is also how a request fails:
//! the agent answers an `OPEN` it cannot serve with `RESET` and an error code. Frames for a
//! stream that is unknown or gone, `DATA`/`CONTROL`/`CLOSE` after the peer's `CLOSE`, and an
//! `OPEN` reusing an id or using the other side's parity are violations; frames that
//! arrive for a stream that ended recently on this side (reset by it, or closed both ways
//! by its own last `CLOSE`) are dropped: they crossed the end, like a `WINDOW_UPDATE` the
//! peer granted before it saw that close.
//!
//! # Flow control
//!
//! Every stream has a window in each direction, and both start at **zero**: a side may send
//! `DATA` bytes on a stream only up to the credit its peer granted with `WINDOW_UPDATE`
//! (the payload length counts, headers do not; stdout and stderr share the window). A
//! receiver grants credit as it consumes data, so a stream whose reader stops exhausts its
//! own window and nothing else: other streams keep flowing. `DATA` beyond the granted
//! window, and a window pushed above 2^31 − 1, are violations. Only `DATA` is
//! flow-controlled; the other frames are small and always sendable. A sender interleaves
//! streams round robin, one frame per stream per turn.
#![forbid(unsafe_code)]

mod bounded;
pub mod frame;
pub mod fuzzing;
pub mod message;
pub mod mux;
