//! A host that is not gentle: it stops reading, floods, says hello again, sends garbage,
//! opens too many streams. The agent stays bounded and keeps serving.

use std::time::{Duration, Instant};

use cthulu_guest_protocol::message::{Control, ErrorCode, Request};
use cthulu_guest_protocol::mux::{Event, MAX_WINDOW};

use crate::host::{argv, shell, Agent};

const RSS_LIMIT_KIB: u64 = 64 * 1024;

fn watch_rss(agent: &Agent, duration: Duration) -> u64 {
    let deadline = Instant::now() + duration;
    let mut highest = 0;
    while Instant::now() < deadline {
        highest = highest.max(agent.rss_kib());
        std::thread::sleep(Duration::from_millis(100));
    }
    highest
}

#[test]
fn a_flood_the_host_does_not_read_stalls_only_its_process() {
    let agent = Agent::start();
    let host = agent.connect();
    // No credit on the flood: `yes` fills its pipe and waits.
    let flood = host.start(argv("yes", &["yes", "flood"])).unwrap();
    let highest = watch_rss(&agent, Duration::from_secs(2));
    assert!(highest < RSS_LIMIT_KIB, "the agent grew to {highest} KiB");
    assert_eq!(host.sh("echo still here").stdout(), "still here\n");
    // Plenty of credit, but the host stops reading the connection altogether.
    host.grant(flood, MAX_WINDOW as u32);
    host.pause_reading(true);
    let highest = watch_rss(&agent, Duration::from_secs(3));
    assert!(highest < RSS_LIMIT_KIB, "the agent grew to {highest} KiB");
    host.pause_reading(false);
    host.reset(flood);
    assert_eq!(host.sh("echo and still").stdout(), "and still\n");
}

#[test]
fn a_hello_mid_session_starts_a_new_one() {
    let agent = Agent::start();
    let host = agent.connect();
    let _old = host
        .start(shell("old", "echo $$ > old.pid; sleep 30"))
        .unwrap();
    host.rehello();
    let output = host.exec(argv("new", &["echo", "new session"])).unwrap();
    assert_eq!(output.stdout(), "new session\n");
    // The old session's process went with it, and its id is free.
    assert!(host
        .processes()
        .iter()
        .all(|entry| entry.process_id != "old"));
    assert_eq!(
        host.exec(argv("old", &["true"])).unwrap().exit().code,
        Some(0)
    );
}

#[test]
fn garbage_ends_the_session_and_the_next_hello_is_served() {
    let agent = Agent::start();
    let host = agent.connect();
    assert_eq!(host.sh("echo before").stdout(), "before\n");
    host.write_raw(&[
        0xde, 0xad, 0xbe, 0xef, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x13,
    ]);
    std::thread::sleep(Duration::from_millis(100));
    host.rehello();
    assert_eq!(host.sh("echo after").stdout(), "after\n");
    // A frame the mux refuses (data on a stream never opened) ends the session too.
    host.write_raw(&[99, 0, 0, 0, 3, 0, 1, 0, 0, 0, b'x']);
    std::thread::sleep(Duration::from_millis(100));
    host.rehello();
    assert_eq!(host.sh("echo again").stdout(), "again\n");
}

#[test]
fn opens_beyond_the_stream_cap_are_refused_without_harm() {
    let agent = Agent::start();
    let host = agent.connect();
    let streams: Vec<_> = (0..300)
        .map(|index| {
            host.open(Request::FilePut {
                path: format!("upload-{index}"),
                mode: 0o644,
                size: 1,
                create_parents: false,
            })
        })
        .collect();
    let mut accepted = Vec::new();
    let mut refused = 0;
    for stream in streams {
        match host.next(stream) {
            Event::Credit { .. } => accepted.push(stream),
            Event::Reset { error, .. } => {
                assert_eq!(error.code, ErrorCode::TooLarge);
                refused += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(accepted.len(), 256);
    assert_eq!(refused, 44);
    for stream in &accepted {
        host.reset(*stream);
    }
    assert_eq!(
        host.sh("ls -A | wc -l").stdout().trim(),
        "0",
        "no upload left a file"
    );
    let stream = host.open(Request::Sync);
    assert_eq!(host.answer(stream).unwrap(), Control::Done);
}
