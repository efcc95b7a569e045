use cthulu_client::{ClientError, CthuluClient, SandboxFilter};
use cthulu_types::ErrorCode;

use crate::fake::http_responder;

#[tokio::test]
async fn error_bodies_become_api_errors_and_the_token_is_sent() {
    let (address, mut heads) = http_responder(
        "404 Not Found",
        r#"{"error":{"code":"sandbox_not_found","message":"no sandbox abc","hint":"list them"}}"#,
    )
    .await;
    let client = CthuluClient::new(&format!("http://{address}"), Some("secret".into())).unwrap();
    let error = client.get_sandbox("abc").await.unwrap_err();
    match &error {
        ClientError::Api { status, error } => {
            assert_eq!(*status, 404);
            assert_eq!(error.code, ErrorCode::SandboxNotFound);
        }
        other => panic!("{other:?}"),
    }
    assert!(error.is_not_found());
    assert_eq!(error.hint().as_deref(), Some("list them"));
    let head = heads.recv().await.unwrap();
    assert!(
        head.starts_with("GET /api/v1/sandboxes/abc HTTP/1.1"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("authorization: bearer secret"),
        "{head}"
    );
}

#[tokio::test]
async fn list_filters_reach_the_query_string() {
    let (address, mut heads) = http_responder("200 OK", r#"{"sandboxes":[]}"#).await;
    let client = CthuluClient::new(&format!("http://{address}"), None).unwrap();
    let filter = SandboxFilter {
        labels: vec![("team".into(), "a".into())],
        ..SandboxFilter::default()
    };
    let list = client.list_sandboxes(&filter).await.unwrap();
    assert!(list.sandboxes.is_empty());
    let head = heads.recv().await.unwrap();
    assert!(
        head.starts_with("GET /api/v1/sandboxes?label=team%3Da HTTP/1.1"),
        "{head}"
    );
    assert!(
        !head.to_ascii_lowercase().contains("authorization"),
        "{head}"
    );
}

#[tokio::test]
async fn a_closed_port_is_unreachable() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let client = CthuluClient::new(&format!("http://127.0.0.1:{port}"), None).unwrap();
    let error = client.info().await.unwrap_err();
    assert!(error.is_unreachable(), "{error:?}");
    assert!(error.hint().unwrap().contains("cthulu serve"));
    let streaming = client
        .exec_stream("abc", &cthulu_types::ExecRequest::argv(["true"]))
        .await
        .unwrap_err();
    assert!(streaming.is_unreachable(), "{streaming:?}");
}
