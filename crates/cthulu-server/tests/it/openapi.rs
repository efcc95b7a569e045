//! The OpenAPI document: generated from the code, kept in docs/openapi.json, served.

use std::path::PathBuf;

use cthulu_test_support::TestServer;
use utoipa::OpenApi;

use crate::support::Api;

fn snapshot_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json")
}

/// Fails when the API changed without docs/openapi.json; rerun with
/// `UPDATE_SNAPSHOTS=1` to accept the change.
#[test]
fn openapi_document_matches_the_snapshot() {
    let generated = cthulu_server::ApiDoc::openapi()
        .to_pretty_json()
        .expect("the document serializes")
        + "\n";
    let path = snapshot_path();
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, &generated).expect("write the snapshot");
        return;
    }
    let stored = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        stored == generated,
        "docs/openapi.json is out of date: run `UPDATE_SNAPSHOTS=1 cargo nextest run -p cthulu-server openapi` and review the diff"
    );
    let document: serde_json::Value = serde_json::from_str(&generated).unwrap();
    for path in [
        "/api/v1/sandboxes",
        "/api/v1/sandboxes/{id}/exec",
        "/api/v1/sandboxes/{id}/files",
        "/api/v1/sandboxes/{id}/ports/{port}/ws",
        "/api/v1/sandboxes/{id}/terminal",
        "/api/v1/nodes",
        "/api/v1/nodes/{name}",
    ] {
        assert!(
            document["paths"].get(path).is_some(),
            "{path} missing from the document"
        );
    }
}

#[tokio::test]
async fn the_server_serves_the_document() {
    let server = TestServer::start().await;
    let (status, served) = Api::new(&server).get("/api/v1/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(
        served,
        serde_json::to_value(cthulu_server::ApiDoc::openapi()).unwrap()
    );
}
