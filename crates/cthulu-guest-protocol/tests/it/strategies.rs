//! Proptest strategies for every frame the protocol carries.

use cthulu_guest_protocol::frame::{Channel, Frame, FrameBody, StreamId, MAX_DATA_PAYLOAD};
use cthulu_guest_protocol::message::{
    Command, Control, DirEntry, EntryKind, ErrorCode, ErrorReply, ExecRequest, ExitStatus,
    GuestConfig, GuestLimits, Hello, ProcessEntry, Request, Signal, TtySize,
};
use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;

fn text() -> impl Strategy<Value = String> {
    prop_oneof![".{0,12}", "[a-zA-Z0-9_/.-]{0,24}"]
}

fn tty() -> impl Strategy<Value = TtySize> {
    (any::<u16>(), any::<u16>()).prop_map(|(rows, cols)| TtySize { rows, cols })
}

fn request() -> impl Strategy<Value = Request> {
    let command = prop_oneof![
        vec(text(), 0..4).prop_map(Command::Argv),
        text().prop_map(Command::Shell),
    ];
    let exec = (
        text(),
        command,
        btree_map(text(), text(), 0..3),
        option::of(text()),
        any::<bool>(),
        option::of(any::<u64>()),
        option::of(any::<u64>()),
        option::of(tty()),
        any::<bool>(),
    )
        .prop_map(
            |(process_id, command, env, cwd, stdin, timeout_ms, output_cap, tty, detached)| {
                Request::Exec(ExecRequest {
                    process_id,
                    command,
                    env,
                    cwd,
                    stdin,
                    timeout_ms,
                    output_cap,
                    tty,
                    detached,
                })
            },
        );
    let configure = (
        option::of(text()),
        option::of(any::<u64>()),
        option::of("[0-9a-f]{0,16}"),
        option::of(text()),
        option::of(btree_map(text(), text(), 0..3)),
        option::of(limits()),
    )
        .prop_map(
            |(hostname, clock_unix_ms, entropy_hex, workspace, env, limits)| {
                Request::Configure(GuestConfig {
                    hostname,
                    clock_unix_ms,
                    entropy_hex,
                    machine_id: None,
                    workspace,
                    env,
                    limits,
                })
            },
        );
    prop_oneof![
        exec,
        (text(), any::<u32>(), any::<u64>(), any::<bool>()).prop_map(
            |(path, mode, size, create_parents)| Request::FilePut {
                path,
                mode,
                size,
                create_parents,
            }
        ),
        text().prop_map(|path| Request::FileGet { path }),
        text().prop_map(|path| Request::DirList { path }),
        any::<u16>().prop_map(|port| Request::PortTunnel { port }),
        text().prop_map(|process_id| Request::Attach { process_id }),
        Just(Request::ProcessList),
        (text(), signal())
            .prop_map(|(process_id, signal)| Request::SignalProcess { process_id, signal }),
        (text(), any::<bool>()).prop_map(|(path, recursive)| Request::Remove { path, recursive }),
        configure,
        Just(Request::Sync),
    ]
}

fn limits() -> impl Strategy<Value = GuestLimits> {
    (
        option::of(any::<u64>()),
        option::of(any::<u64>()),
        option::of(any::<u32>()),
    )
        .prop_map(|(memory_bytes, pids, cpu_millis)| GuestLimits {
            memory_bytes,
            pids,
            cpu_millis,
        })
}

fn signal() -> impl Strategy<Value = Signal> {
    prop_oneof![
        Just(Signal::Hup),
        Just(Signal::Int),
        Just(Signal::Kill),
        Just(Signal::Term),
        Just(Signal::Winch),
    ]
}

fn exit_status() -> impl Strategy<Value = ExitStatus> {
    (
        option::of(any::<i32>()),
        option::of(any::<i32>()),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(code, signal, timed_out, truncated, oom_killed)| ExitStatus {
                code,
                signal,
                timed_out,
                truncated,
                oom_killed,
            },
        )
}

fn control() -> impl Strategy<Value = Control> {
    let entry = (
        text(),
        prop_oneof![
            Just(EntryKind::File),
            Just(EntryKind::Dir),
            Just(EntryKind::Symlink),
            Just(EntryKind::Other)
        ],
        any::<u64>(),
        any::<u32>(),
        any::<u64>(),
        option::of(text()),
    )
        .prop_map(
            |(name, kind, size, mode, modified_ms, link_target)| DirEntry {
                name,
                kind,
                size,
                mode,
                modified_ms,
                link_target,
            },
        );
    let process = (
        text(),
        text(),
        any::<bool>(),
        any::<bool>(),
        option::of(exit_status()),
        any::<u64>(),
    )
        .prop_map(
            |(process_id, command, detached, tty, exit, started_unix_ms)| ProcessEntry {
                process_id,
                command,
                detached,
                tty,
                exit,
                started_unix_ms,
            },
        );
    prop_oneof![
        exit_status().prop_map(Control::Exit),
        signal().prop_map(|signal| Control::Signal { signal }),
        tty().prop_map(Control::Resize),
        (any::<u32>(), any::<u64>()).prop_map(|(mode, size)| Control::FileInfo { mode, size }),
        vec(entry, 0..4).prop_map(|entries| Control::DirEntries { entries }),
        vec(process, 0..3).prop_map(|processes| Control::Processes { processes }),
        Just(Control::Done),
        Just(Control::Started),
    ]
}

fn error_reply() -> impl Strategy<Value = ErrorReply> {
    let code = prop_oneof![
        Just(ErrorCode::NotFound),
        Just(ErrorCode::PermissionDenied),
        Just(ErrorCode::InvalidRequest),
        Just(ErrorCode::OutsideWorkspace),
        Just(ErrorCode::DirectoryNotEmpty),
        Just(ErrorCode::TooLarge),
        Just(ErrorCode::Internal),
        Just(ErrorCode::Unknown),
    ];
    (code, text()).prop_map(|(code, message)| ErrorReply { code, message })
}

fn hello() -> impl Strategy<Value = Hello> {
    (vec(any::<u16>(), 0..4), any::<u32>(), vec(text(), 0..3)).prop_map(
        |(versions, max_frame, features)| Hello {
            versions,
            max_frame,
            features,
        },
    )
}

/// Any valid frame, data payloads up to the maximum.
pub fn frame() -> impl Strategy<Value = Frame> {
    let stream = (1..=u32::MAX).prop_map(StreamId);
    let data_bytes = prop_oneof![
        8 => vec(any::<u8>(), 0..64),
        1 => vec(any::<u8>(), MAX_DATA_PAYLOAD - 2..=MAX_DATA_PAYLOAD),
    ];
    prop_oneof![
        hello().prop_map(|hello| Frame::new(StreamId::CONNECTION, FrameBody::Hello(hello))),
        (stream.clone(), request())
            .prop_map(|(stream_id, request)| Frame::new(stream_id, FrameBody::Open(request))),
        (stream.clone(), any::<bool>(), data_bytes).prop_map(|(stream_id, stderr, bytes)| {
            let channel = if stderr {
                Channel::Stderr
            } else {
                Channel::Main
            };
            Frame::new(stream_id, FrameBody::Data { channel, bytes })
        }),
        (stream.clone(), 1..=u32::MAX).prop_map(|(stream_id, increment)| Frame::new(
            stream_id,
            FrameBody::WindowUpdate { increment }
        )),
        (stream.clone(), control())
            .prop_map(|(stream_id, control)| Frame::new(stream_id, FrameBody::Control(control))),
        stream
            .clone()
            .prop_map(|stream_id| Frame::new(stream_id, FrameBody::Close)),
        (stream, error_reply())
            .prop_map(|(stream_id, error)| Frame::new(stream_id, FrameBody::Reset(error))),
    ]
}
