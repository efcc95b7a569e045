//! `cthulu cp` both ways and `sandbox ls-files`.

use cthulu_types::{DirListing, FileKind};

use crate::support::{temp_path, TestServer};

#[test]
fn cp_round_trip_is_byte_exact() {
    let server = TestServer::start();
    let sandbox_id = server.create_sandbox(&[]);
    let local = tempfile::tempdir().unwrap();
    let original = temp_path(&local, "data.bin");
    // 3 MiB plus a bit, not a multiple of any chunk size, every byte value.
    let mut state: u32 = 12345;
    let contents: Vec<u8> = (0..3 * 1024 * 1024 + 4097)
        .map(|_| {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (state >> 16) as u8
        })
        .collect();
    std::fs::write(&original, &contents).unwrap();

    let remote = format!("{sandbox_id}:/workspace/in/data.bin");
    server.ok(&["cp", original.to_str().unwrap(), &remote]);

    let listing: DirListing = serde_json::from_str(&server.ok(&[
        "sandbox",
        "ls-files",
        &sandbox_id,
        "/workspace/in",
        "--json",
    ]))
    .unwrap();
    let entry = listing
        .entries
        .iter()
        .find(|entry| entry.name == "data.bin")
        .expect("the uploaded file is listed");
    assert_eq!(entry.kind, FileKind::File);
    assert_eq!(entry.size, contents.len() as u64);

    let copied_back = temp_path(&local, "back.bin");
    server.ok(&["cp", &remote, copied_back.to_str().unwrap()]);
    assert!(std::fs::read(&copied_back).unwrap() == contents);

    // A directory as destination keeps the name.
    let directory = temp_path(&local, "dir");
    std::fs::create_dir(&directory).unwrap();
    server.ok(&["cp", &remote, directory.to_str().unwrap()]);
    assert!(std::fs::read(directory.join("data.bin")).unwrap() == contents);

    let missing = server.run(&[
        "cp",
        &format!("{sandbox_id}:/workspace/nothing-here"),
        copied_back.to_str().unwrap(),
    ]);
    assert_eq!(missing.code, 3, "{missing:?}");
}
