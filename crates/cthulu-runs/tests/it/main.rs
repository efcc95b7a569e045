//! Integration tests of `cthulu-runs`: recorded transcripts and the stand-in agent.

mod fake_agent;
mod transcripts;

use std::path::PathBuf;

pub fn transcript_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/transcripts")
        .join(name)
}

pub fn transcript(name: &str) -> Vec<u8> {
    let path = transcript_path(name);
    std::fs::read(&path).unwrap_or_else(|error| panic!("read {}: {error}", path.display()))
}

/// The fake API key found in `api_key.jsonl`.
pub const API_KEY: &str = "sk-ant-api03-FAKEKEY0123456789abcdefXYZ";
