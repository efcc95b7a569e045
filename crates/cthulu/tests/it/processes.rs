//! `cthulu sandbox exec --detach | ps | attach | kill`.

use std::io::{BufRead as _, BufReader};
use std::process::Stdio;

use cthulu_types::{ProcessList, ProcessState};

use crate::support::{Outcome, TestServer};

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
    let table = server.ok(&["sandbox", "ps", &sandbox_id]);
    assert!(
        table.contains(&process_id) && table.contains("running"),
        "{table}"
    );

    // Attach: the kept output comes first, then the exit once the process is killed.
    let mut attached = server
        .command(&["sandbox", "attach", &sandbox_id, &process_id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(attached.stdout.take().unwrap());
    let mut first_line = String::new();
    stdout.read_line(&mut first_line).unwrap();
    assert_eq!(first_line, "started\n");

    server.ok(&[
        "sandbox",
        "kill",
        &sandbox_id,
        &process_id,
        "--signal",
        "KILL",
    ]);
    let output = attached.wait_with_output().unwrap();
    let outcome = Outcome::of(output);
    assert_eq!(outcome.code, 137, "{outcome:?}\n{}", server.log());

    let unknown = server.run(&["sandbox", "kill", &sandbox_id, "pnosuchprocess"]);
    assert_eq!(unknown.code, 3, "{unknown:?}");
}
