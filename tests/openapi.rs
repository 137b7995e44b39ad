//! `openapi/openapi.json` is the committed copy of what the server serves at
//! `/openapi.json`; this test fails when the two drift apart.
//! Refresh it with `cargo run -- openapi > openapi/openapi.json`.

mod common;

use common::{Backend, Settings, TestApp};
use serde_json::Value;

#[tokio::test]
async fn committed_openapi_document_is_current() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = TestApp::spawn(&Settings::new(dir.path(), &Backend::Sqlite)).await;
    let (status, served) = app.get_json("/openapi.json").await;
    assert_eq!(status, 200);

    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json");
    let committed: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("openapi/openapi.json exists"))
            .expect("openapi/openapi.json is JSON");
    assert!(
        served == committed,
        "openapi/openapi.json is stale: run `cargo run -- openapi > openapi/openapi.json`"
    );

    // Every operation documents its error responses as problem+json.
    for (path, item) in served["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("operations") {
            for (status, response) in operation["responses"].as_object().expect("responses") {
                if status.starts_with('4') || (status.starts_with('5') && path != "/health/ready") {
                    assert!(
                        response["content"]
                            .get("application/problem+json")
                            .is_some(),
                        "{method} {path} {status} is not documented as problem+json"
                    );
                }
            }
        }
    }
    app.stop().await.expect("clean stop");
}
