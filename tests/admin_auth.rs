//! Every admin operation — and so every data call of the `/admin` page, which uses the
//! same API — refuses a missing or wrong token, changes nothing when it does, and never
//! writes the presented token to the logs; with no token configured the admin API is off.
//! The operations come from the served OpenAPI document, so a new admin route is covered
//! as soon as it is documented.

mod common;

use common::{Backend, Process, Settings, client};
use serde_json::{Value, json};

const TOKEN: &str = "admin-auth-test-token-0123456789";

/// Admin operations that must exist, so the test cannot pass on an empty list.
const KNOWN: [(&str, &str); 16] = [
    ("get", "/v1/admin/consumer"),
    ("post", "/v1/admin/consumer/pause"),
    ("post", "/v1/admin/consumer/resume"),
    ("get", "/v1/admin/consumer/history"),
    ("get", "/v1/admin/dead-letters"),
    ("get", "/v1/admin/dead-letters/{id}"),
    ("delete", "/v1/admin/dead-letters/{id}"),
    ("get", "/v1/admin/outbox"),
    ("post", "/v1/admin/outbox/{order_id}/retry"),
    ("get", "/v1/admin/payments"),
    ("post", "/v1/admin/payments/{cart_id}/resolve"),
    ("post", "/v1/admin/webhooks"),
    ("patch", "/v1/admin/webhooks/{id}"),
    ("post", "/v1/admin/webhooks/{id}/disable"),
    ("post", "/v1/admin/webhooks/{id}/rotate-secret"),
    ("post", "/v1/admin/webhooks/{id}/replay"),
];

/// One documented admin operation, ready to call.
struct Operation {
    method: reqwest::Method,
    template: String,
    path: String,
    /// The documented example body, so that a call let through would really act.
    body: Option<Value>,
}

/// Every operation under `/v1/admin` in `doc`, path parameters filled with plausible
/// values of their documented type.
fn admin_operations(doc: &Value) -> Vec<Operation> {
    let paths = doc["paths"].as_object().expect("paths");
    let mut operations = Vec::new();
    for (template, item) in paths.iter().filter(|(p, _)| p.starts_with("/v1/admin")) {
        for (method, operation) in item.as_object().expect("path item") {
            let path = common::fill_path(template, operation);
            let body = operation["requestBody"]["content"]["application/json"]["example"]
                .as_object()
                .map(|o| Value::Object(o.clone()))
                .or_else(|| operation.get("requestBody").map(|_| json!({})));
            operations.push(Operation {
                method: method.to_uppercase().parse().expect("HTTP method"),
                template: template.clone(),
                path,
                body,
            });
        }
    }
    operations
}

/// How a caller can get the token wrong.
fn bad_credentials() -> Vec<(&'static str, Option<String>)> {
    let same_length_wrong = TOKEN.replace('0', "1");
    assert_ne!(same_length_wrong, TOKEN);
    vec![
        ("no Authorization header", None),
        ("a wrong token", Some(format!("Bearer {same_length_wrong}"))),
        (
            "a prefix of the token",
            Some(format!("Bearer {}", &TOKEN[..TOKEN.len() - 1])),
        ),
        ("the token and more", Some(format!("Bearer {TOKEN}0"))),
        ("an empty bearer token", Some("Bearer ".to_string())),
        (
            "the token under another scheme",
            Some(format!("Token {TOKEN}")),
        ),
        ("the token with no scheme", Some(TOKEN.to_string())),
        ("basic auth", Some("Basic YWRtaW46aHVudGVyMg==".to_string())),
    ]
}

async fn send(
    http: &reqwest::Client,
    base: &str,
    operation: &Operation,
    authorization: Option<&str>,
) -> reqwest::Response {
    let mut request = http.request(
        operation.method.clone(),
        format!("{base}{}", operation.path),
    );
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    if let Some(body) = &operation.body {
        request = request.json(body);
    }
    request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{} {}: {e}", operation.method, operation.path))
}

async fn assert_problem(response: reqwest::Response, status: u16, what: &str) {
    assert_eq!(response.status().as_u16(), status, "{what}");
    assert_eq!(
        response.headers().get("content-type").map(|v| v.as_bytes()),
        Some(&b"application/problem+json"[..]),
        "{what}"
    );
    if status == 401 {
        assert_eq!(
            response
                .headers()
                .get("www-authenticate")
                .map(|v| v.as_bytes()),
            Some(&b"Bearer"[..]),
            "{what}"
        );
    }
    let problem: Value = response.json().await.expect("problem body");
    assert_eq!(problem["status"], status, "{what}: {problem}");
}

/// What a let-through admin call could have changed: the switch and its history.
async fn admin_state(http: &reqwest::Client, base: &str) -> (Value, Value) {
    let call = |path: &'static str| {
        common::admin_call(http, base, TOKEN, reqwest::Method::GET, path, None)
    };
    let (status, mut consumer) = call("/v1/admin/consumer").await;
    assert_eq!(status, 200, "{consumer}");
    let (status, history) = call("/v1/admin/consumer/history").await;
    assert_eq!(status, 200, "{history}");
    // Only the switch: heartbeats and the backlog move on their own.
    for moving in ["instances", "backlog", "drained"] {
        consumer.as_object_mut().map(|c| c.remove(moving));
    }
    (consumer, history)
}

#[tokio::test]
async fn every_admin_operation_refuses_a_missing_or_wrong_token_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = Settings::new(dir.path(), &Backend::Sqlite)
        .set("CARTBUS_ADMIN_TOKEN", TOKEN)
        // Every wrong credential on every operation, all from one address: past the
        // guessing limits, which tests/hostile.rs covers.
        .set("CARTBUS_ADMIN_AUTH_FAILURES", "100000")
        .set("CARTBUS_ADMIN_AUTH_GLOBAL_FAILURES", "100000")
        .set("CARTBUS_LOG", "debug");
    let process = Process::start(&settings, &[]);
    let http = client();

    let (status, doc) = common::get_json(&http, &process.base, "/openapi.json").await;
    assert_eq!(status, 200);
    let operations = admin_operations(&doc);
    for (method, template) in KNOWN {
        assert!(
            operations
                .iter()
                .any(|o| o.method.as_str().eq_ignore_ascii_case(method) && o.template == template),
            "{method} {template} is not in the served OpenAPI document"
        );
    }
    for operation in &operations {
        let documented =
            &doc["paths"][&operation.template][operation.method.as_str().to_lowercase()];
        assert_eq!(
            documented["security"],
            json!([{ "admin_token": [] }]),
            "{} {} does not declare the admin token",
            operation.method,
            operation.template
        );
        assert!(
            documented["responses"].get("401").is_some(),
            "{} {} does not document its 401",
            operation.method,
            operation.template
        );
    }

    let before = admin_state(&http, &process.base).await;
    assert_eq!(before.0["desired"], "running", "{}", before.0);
    let mut refused = 0;
    for operation in &operations {
        for (how, authorization) in bad_credentials() {
            let what = format!("{} {} with {how}", operation.method, operation.path);
            let response = send(&http, &process.base, operation, authorization.as_deref()).await;
            assert_problem(response, 401, &what).await;
            refused += 1;
        }
    }
    assert_eq!(refused, operations.len() * bad_credentials().len());
    assert_eq!(
        admin_state(&http, &process.base).await,
        before,
        "a refused call changed the drain switch or its history"
    );

    // The right token gets past the check on every operation (whatever the operation
    // then says of its made-up ids), so the 401s above were about the token.
    for operation in operations
        .iter()
        .filter(|o| o.method == reqwest::Method::GET)
    {
        let response = send(
            &http,
            &process.base,
            operation,
            Some(&format!("Bearer {TOKEN}")),
        )
        .await;
        assert_ne!(
            response.status().as_u16(),
            401,
            "{} {}",
            operation.method,
            operation.path
        );
    }

    let logs = process.logs();
    assert!(!logs.is_empty(), "the logs were captured");
    for secret in [TOKEN, &TOKEN.replace('0', "1"), &TOKEN[..TOKEN.len() - 1]] {
        assert!(
            logs.iter().all(|line| !line.contains(secret)),
            "a presented token reached the logs"
        );
    }
}

#[tokio::test]
async fn with_no_admin_token_configured_every_admin_operation_is_404() {
    let dir = tempfile::tempdir().expect("tempdir");
    let process = Process::start(&Settings::new(dir.path(), &Backend::Sqlite), &[]);
    let http = client();
    let (status, doc) = common::get_json(&http, &process.base, "/openapi.json").await;
    assert_eq!(status, 200);
    let operations = admin_operations(&doc);
    assert!(
        operations.len() >= KNOWN.len(),
        "{} operations",
        operations.len()
    );
    for operation in &operations {
        for authorization in [None, Some(format!("Bearer {TOKEN}"))] {
            let what = format!(
                "{} {} with {authorization:?} and the admin API off",
                operation.method, operation.path
            );
            let response = send(&http, &process.base, operation, authorization.as_deref()).await;
            assert_problem(response, 404, &what).await;
        }
    }
    assert!(process.logs_contain("admin API off"));
}
