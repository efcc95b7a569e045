//! `cthulu sandbox exec --detach | ps | attach | kill`.

use std::time::{Duration, Instant};

use cthulu_types::{ProcessList, ProcessState};

use crate::support::TestServer;

#[test]
fn detached_processes_are_listed_attached_and_killed() {
    let server = TestServer::start();
    let sandbox_id = server.create_sandbox(&[]);
    let process_id = server
        .ok(&[
            "sandbox",
            "exec",
            &sandbox_id,
            "--detach",
            "--shell",
            "echo started; sleep 60",
        ])
        .trim()
        .to_owned();
    assert!(!process_id.is_empty());

    let processes: ProcessList =
        serde_json::from_str(&server.ok(&["sandbox", "ps", &sandbox_id, "--json"])).unwrap();
    let process = processes
        .processes
        .iter()
        .find(|process| process.id == process_id)
        .expect("the detached process is listed");
    assert_eq!(process.state, ProcessState::Running);
    assert!(process.detached);

    server.ok(&[
        "sandbox",
        "kill",
        &sandbox_id,
        &process_id,
        "--signal",
        "KILL",
    ]);
    // Wait until the server has seen it die, then attach: replay and exit.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let processes: ProcessList =
            serde_json::from_str(&server.ok(&["sandbox", "ps", &sandbox_id, "--json"])).unwrap();
        let state = processes
            .processes
            .iter()
            .find(|process| process.id == process_id)
            .map(|process| process.state);
        if state != Some(ProcessState::Running) || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let attached = server.run(&["sandbox", "attach", &sandbox_id, &process_id]);
    assert_eq!(attached.stdout, "started\n", "{attached:?}");
    assert_eq!(attached.code, 137, "{attached:?}");

    let unknown = server.run(&["sandbox", "kill", &sandbox_id, "pnosuchprocess"]);
    assert_eq!(unknown.code, 3, "{unknown:?}");
}
