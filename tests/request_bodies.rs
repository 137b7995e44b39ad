//! The admin request bodies are refused the same way whatever reads them: every bad field
//! at once, each by its JSON pointer, in a fixed order, with a detail that says what it
//! must be. These answers are part of the API (operators' scripts read them), so they are
//! pinned here in full, not just by pointer.

mod common;

use common::{Backend, Settings, TestApp};
use serde_json::{Value, json};

const TOKEN: &str = "request-bodies-test-token-0001";
const CART: &str = "6f1c0c1e-5d7b-4a53-9b1a-2f6a3d9f0c11";
const MAX_I64: &str = "9223372036854775807";

/// `(pointer, detail)` pairs, in order.
fn errors(pairs: &[(&str, &str)]) -> Value {
    Value::Array(
        pairs
            .iter()
            .map(|(pointer, detail)| json!({"pointer": pointer, "detail": detail}))
            .collect(),
    )
}

#[tokio::test]
async fn every_bad_field_of_an_admin_body_is_named_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = TestApp::spawn(
        &Settings::new(dir.path(), &Backend::Sqlite).set("CARTBUS_ADMIN_TOKEN", TOKEN),
    )
    .await;
    let long = |n: usize| "x".repeat(n);
    let pause = "/v1/admin/consumer/pause";
    let resume = "/v1/admin/consumer/resume";
    let dead_letter = "/v1/admin/dead-letters/1";
    let resubmit = "/v1/admin/dead-letters/1/resubmit";
    let bulk = "/v1/admin/dead-letters/resubmit";
    let resolve = format!("/v1/admin/payments/{CART}/resolve");
    let wait = "must be a whole number of seconds from 0 to 300";
    let at_least_one = "must name at least one of reason, source, since (a bulk resubmit of \
                        everything is too easy to start by mistake)";
    let filter_text = "must be a string of 1 to 500 characters";
    let cases: Vec<(reqwest::Method, &str, Value, Value)> = vec![
        (
            reqwest::Method::POST,
            pause,
            json!({"reason": 5, "wait_seconds": -1, "until": 7, "zz": 1, "a/b": 2}),
            errors(&[
                ("/reason", "must be a string"),
                ("/wait_seconds", wait),
                ("/until", "must be an RFC 3339 time string"),
                ("/a~1b", "is not a known field"),
                ("/zz", "is not a known field"),
            ]),
        ),
        (
            reqwest::Method::POST,
            pause,
            json!({"reason": long(501), "wait_seconds": 301, "until": "2000-01-01T00:00:00Z"}),
            errors(&[
                ("/reason", "must be at most 500 characters"),
                ("/wait_seconds", wait),
                ("/until", "must be in the future"),
            ]),
        ),
        (
            reqwest::Method::POST,
            pause,
            json!({"until": "tomorrow", "wait_seconds": "5"}),
            errors(&[
                ("/wait_seconds", wait),
                (
                    "/until",
                    "must be an RFC 3339 time, e.g. 2026-11-26T03:00:00Z",
                ),
            ]),
        ),
        (
            reqwest::Method::POST,
            pause,
            json!([]),
            errors(&[("", "must be a JSON object")]),
        ),
        (
            reqwest::Method::POST,
            resume,
            json!({"version": "  ", "reason": [], "x": 1}),
            errors(&[
                ("/version", "must not be empty"),
                ("/reason", "must be a string"),
                ("/x", "is not a known field"),
            ]),
        ),
        (
            reqwest::Method::POST,
            resume,
            json!({"version": long(101)}),
            errors(&[("/version", "must be at most 100 characters")]),
        ),
        (
            reqwest::Method::DELETE,
            dead_letter,
            json!({"why": "x"}),
            errors(&[
                ("/why", "is not a known field"),
                ("/reason", "is required: say why it can go"),
            ]),
        ),
        (
            reqwest::Method::DELETE,
            dead_letter,
            json!({"reason": "   "}),
            errors(&[("/reason", "must not be empty")]),
        ),
        (
            reqwest::Method::DELETE,
            dead_letter,
            json!({"reason": 3}),
            errors(&[("/reason", "must be a string")]),
        ),
        (
            reqwest::Method::DELETE,
            dead_letter,
            json!("text"),
            errors(&[("", "must be a JSON object")]),
        ),
        (
            reqwest::Method::POST,
            resubmit,
            json!({"reason": 1, "cart": {"total": -1}, "x": 0}),
            errors(&[
                ("/x", "is not a known field"),
                ("/reason", "must be a string"),
                ("/cart/cart_id", "is required"),
                ("/cart/customer", "is required"),
                ("/cart/shipping_address", "is required"),
                ("/cart/currency", "is required"),
                ("/cart/lines", "is required"),
                (
                    "/cart/total",
                    &format!("must be an integer between 0 and {MAX_I64}"),
                ),
            ]),
        ),
        (
            reqwest::Method::POST,
            resubmit,
            json!({"cart": 5}),
            errors(&[("/cart", "must be an object")]),
        ),
        (
            reqwest::Method::POST,
            bulk,
            json!({"job_id": "nope", "filter": {"reason": "", "source": 5, "since": "x", "bad": 1},
                   "dry_run": "yes", "max": 0, "reason": 7, "extra": true}),
            errors(&[
                ("/extra", "is not a known field"),
                ("/job_id", "must be a UUID"),
                ("/filter/bad", "is not a known field"),
                ("/filter/reason", filter_text),
                ("/filter/source", filter_text),
                (
                    "/filter/since",
                    "must be an RFC 3339 time, e.g. 2026-11-26T02:00:00Z",
                ),
                ("/dry_run", "must be true or false"),
                ("/max", "must be an integer from 1 to 10000"),
                ("/reason", "must be a string"),
            ]),
        ),
        (
            reqwest::Method::POST,
            bulk,
            json!({"filter": {"since": ""}, "reason": "  "}),
            errors(&[
                ("/filter", at_least_one),
                ("/reason", "is required: say why these can go again"),
            ]),
        ),
        (
            reqwest::Method::POST,
            bulk,
            json!({"filter": {"since": 5}, "dry_run": true}),
            errors(&[("/filter/since", "must be an RFC 3339 time")]),
        ),
        (
            reqwest::Method::POST,
            bulk,
            json!({"job_id": 5}),
            errors(&[
                ("/job_id", "must be a UUID"),
                (
                    "/filter",
                    "is required: an object with at least one of reason, source, since",
                ),
                ("/reason", "is required: say why these can go again"),
            ]),
        ),
        (
            reqwest::Method::POST,
            &resolve,
            json!({"outcome": "maybe", "payment_id": 5, "q": 1}),
            errors(&[
                ("/outcome", "must be captured or failed"),
                ("/reason", "is required: say what the check found"),
                ("/payment_id", "must be a string"),
                ("/q", "is not a known field"),
            ]),
        ),
        (
            reqwest::Method::POST,
            &resolve,
            json!({"outcome": "failed", "reason": " ", "payment_id": "p"}),
            errors(&[
                ("/reason", "must not be empty"),
                ("/payment_id", "only goes with outcome captured"),
            ]),
        ),
        (
            reqwest::Method::POST,
            &resolve,
            json!({"reason": long(501), "payment_id": long(201)}),
            errors(&[
                ("/outcome", "is required: captured or failed"),
                ("/reason", "must be at most 500 characters"),
                ("/payment_id", "must be at most 200 characters"),
            ]),
        ),
    ];
    for (method, path, body, expected) in cases {
        let (status, problem) = common::admin_call(
            &app.client,
            &app.base,
            TOKEN,
            method.clone(),
            path,
            Some(body.clone()),
        )
        .await;
        let call = format!("{method} {path} {body}");
        assert_eq!(status, 422, "{call}: {problem}");
        assert_eq!(problem["errors"], expected, "{call}");
        let detail = match expected.as_array().map(Vec::as_slice) {
            Some([one]) => format!(
                "{}: {}",
                one["pointer"].as_str().unwrap_or_default(),
                one["detail"].as_str().unwrap_or_default()
            ),
            _ => format!(
                "the request breaks {} rule(s)",
                expected.as_array().map_or(0, Vec::len)
            ),
        };
        assert_eq!(problem["detail"], detail.as_str(), "{call}");
        assert_eq!(problem["type"], "/problems/invalid-request", "{call}");
    }
    app.stop().await.expect("clean stop");
}
