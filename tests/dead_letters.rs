//! Dead letters for operators over HTTP (issue 8, first part): a conflicting cart, an
//! unknown-schema message and a badly signed partner reply each appear with their reason;
//! filters and cursor pages; a delete is kept with who and why. On the embedded queue
//! and, when `CARTBUS_TEST_AMQP_URL` is set, on RabbitMQ.

mod common;

use std::collections::HashSet;

use bytes::Bytes;
use cartbus::fulfilment::message::{self, StatusReply};
use cartbus::queue::{Message, Properties, Property};
use common::broker;
use common::{Backend, Settings, TestApp, eventually, metric, metrics_text};
use serde_json::{Value, json};
use uuid::Uuid;

const TOKEN: &str = "dead-letter-test-admin-token";
const SECRET: &str = "acme-secret-0000001";

async fn admin(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = app
        .client
        .request(method, app.url(path))
        .bearer_auth(TOKEN)
        .header("x-cartbus-actor", "night-operator");
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("admin request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn get(app: &TestApp, path: &str) -> (u16, Value) {
    admin(app, reqwest::Method::GET, path, None).await
}

#[tokio::test]
async fn dead_letters_can_be_listed_filtered_paged_inspected_and_deleted_with_a_reason() {
    const TEST: &str =
        "dead_letters_can_be_listed_filtered_paged_inspected_and_deleted_with_a_reason";
    let mut stacks: Vec<Option<String>> = vec![None];
    if let Some(url) = broker::url(TEST) {
        stacks.push(Some(url));
    }
    for broker_url in stacks {
        let dir = tempfile::tempdir().expect("tempdir");
        let tag = Uuid::new_v4().simple().to_string();
        let mut settings = match &broker_url {
            None => Settings::new(dir.path(), &Backend::Sqlite),
            Some(url) => broker::settings(
                dir.path(),
                &broker::orders_backend(TEST).await,
                url,
                &format!("cartbus-t-{tag}-carts"),
            )
            .set(
                "CARTBUS_STATUS_ADDRESS",
                format!("/queue/cartbus-t-{tag}-status"),
            )
            .set(
                "CARTBUS_PARTNER_ACME_ADDRESS",
                format!("/queue/cartbus-t-{tag}-acme"),
            ),
        };
        settings = settings
            .set("CARTBUS_ADMIN_TOKEN", TOKEN)
            .set("CARTBUS_ROUTES", "*=acme")
            .set("CARTBUS_PARTNER_ACME_SECRET", SECRET);
        let app = TestApp::spawn(&settings).await;
        if broker_url.is_some() {
            broker::wait_connected(&app.state).await;
        }
        let config = &app.state.config;

        // A conflict: the same cart_id again with another payload.
        let cart = common::cart();
        let cart_id = cart["cart_id"].as_str().expect("cart_id").to_string();
        assert!(app.post_cart(&cart).await.status().is_success());
        let order = app.wait_for_order(&cart_id).await;
        let mut changed = cart.clone();
        changed["lines"][0]["name"] = json!("Something else");
        assert_eq!(app.post_cart(&changed).await.status(), 202);
        // A message of a schema this version does not know.
        let unknown_id = Uuid::new_v4().to_string();
        app.state
            .queue
            .send(
                &config.cart_address,
                Message {
                    message_id: unknown_id.clone(),
                    content_type: "application/json".into(),
                    properties: Properties::from([("schema".into(), Property::Int(99))]),
                    body: Bytes::from(
                        serde_json::to_vec(&json!({ "schema": 99, "cart": {} })).expect("json"),
                    ),
                    ..Default::default()
                },
            )
            .await
            .expect("send");
        // A partner reply signed with the wrong key.
        let order_id = Uuid::parse_str(order["order_id"].as_str().expect("id")).expect("uuid");
        let forged = message::reply(
            &StatusReply {
                order_id,
                status: "delivered".into(),
                tracking_id: None,
                partner: "acme".into(),
            },
            b"not-the-acme-secret",
        );
        app.state
            .queue
            .send(&config.fulfilment.status_address, forged)
            .await
            .expect("send");

        let page = eventually("three dead letters listed", || async {
            let (status, page) = get(&app, "/v1/admin/dead-letters").await;
            (status == 200 && page["items"].as_array().map(Vec::len) == Some(3)).then_some(page)
        })
        .await;
        let items = page["items"].as_array().expect("items");
        let reasons: HashSet<&str> = items.iter().filter_map(|i| i["reason"].as_str()).collect();
        assert_eq!(
            reasons,
            HashSet::from(["conflict", "unknown-schema", "bad-signature"]),
            "{broker_url:?}"
        );
        assert!(page["next"].is_null());

        // Filters.
        let (_, conflicts) = get(&app, "/v1/admin/dead-letters?reason=conflict").await;
        let conflict = &conflicts["items"][0];
        assert_eq!(conflicts["items"].as_array().map(Vec::len), Some(1));
        assert_eq!(conflict["message_id"], cart_id.as_str());
        assert_eq!(conflict["source"], config.cart_address.as_str());
        assert_eq!(
            conflict["body"]["cart"]["lines"][0]["name"],
            "Something else"
        );
        assert!(
            conflict["detail"]
                .as_str()
                .is_some_and(|d| d.contains("different payload"))
        );
        let (_, replies) = get(
            &app,
            &format!(
                "/v1/admin/dead-letters?source={}",
                urlencode(&config.fulfilment.status_address)
            ),
        )
        .await;
        assert_eq!(replies["items"].as_array().map(Vec::len), Some(1));
        assert_eq!(replies["items"][0]["reason"], "bad-signature");
        assert!(replies["items"][0]["properties"]["signature"].is_object());
        let (_, none) = get(&app, "/v1/admin/dead-letters?since=2999-01-01T00:00:00Z").await;
        assert_eq!(none["items"].as_array().map(Vec::len), Some(0));
        let (status, bad) = get(&app, "/v1/admin/dead-letters?since=yesterday&limit=0").await;
        assert_eq!(status, 422);
        let pointers: HashSet<&str> = bad["errors"]
            .as_array()
            .expect("errors")
            .iter()
            .filter_map(|e| e["pointer"].as_str())
            .collect();
        assert_eq!(pointers, HashSet::from(["/since", "/limit"]));

        // Cursor pages of one.
        let mut seen = Vec::new();
        let mut path = "/v1/admin/dead-letters?limit=1".to_string();
        loop {
            let (status, page) = get(&app, &path).await;
            assert_eq!(status, 200);
            seen.extend(
                page["items"]
                    .as_array()
                    .expect("items")
                    .iter()
                    .map(|i| i["id"].clone()),
            );
            match page["next"].as_str() {
                Some(next) => path = format!("/v1/admin/dead-letters?limit=1&after={next}"),
                None => break,
            }
        }
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 3);

        // One in detail; delete needs a reason and is kept with who and why.
        let id = conflict["id"].as_i64().expect("id");
        let (status, detail) = get(&app, &format!("/v1/admin/dead-letters/{id}")).await;
        assert_eq!(status, 200);
        assert_eq!(detail["reason"], "conflict");
        assert_eq!(detail["audit"], json!([]));
        assert_eq!(get(&app, "/v1/admin/dead-letters/999999").await.0, 404);
        assert_eq!(get(&app, "/v1/admin/dead-letters/abc").await.0, 422);
        let path = format!("/v1/admin/dead-letters/{id}");
        let (status, problem) = admin(
            &app,
            reqwest::Method::DELETE,
            &path,
            Some(json!({ "why": "x" })),
        )
        .await;
        assert_eq!(status, 422);
        let pointers: HashSet<&str> = problem["errors"]
            .as_array()
            .expect("errors")
            .iter()
            .filter_map(|e| e["pointer"].as_str())
            .collect();
        assert_eq!(pointers, HashSet::from(["/why", "/reason"]));
        let reason = json!({ "reason": "the storefront sent a test cart twice" });
        let (status, deleted) =
            admin(&app, reqwest::Method::DELETE, &path, Some(reason.clone())).await;
        assert_eq!(status, 200, "{deleted}");
        assert!(deleted["deleted_at"].is_string());
        assert!(
            deleted["deleted_by"]
                .as_str()
                .is_some_and(|by| by.starts_with("night-operator"))
        );
        assert_eq!(deleted["audit"][0]["action"], "delete");
        assert_eq!(
            deleted["audit"][0]["reason"],
            "the storefront sent a test cart twice"
        );
        let (status, again) = admin(&app, reqwest::Method::DELETE, &path, Some(reason)).await;
        assert_eq!(status, 200);
        assert_eq!(
            again["audit"].as_array().map(Vec::len),
            Some(1),
            "deleted once"
        );
        let (_, page) = get(&app, "/v1/admin/dead-letters").await;
        assert_eq!(page["items"].as_array().map(Vec::len), Some(2));
        let text = metrics_text(&app.client, &app.base).await;
        assert_eq!(
            metric(&text, "cartbus_dead_letters{reason=\"conflict\"}"),
            0.0
        );
        assert_eq!(
            metric(&text, "cartbus_dead_letters{reason=\"bad-signature\"}"),
            1.0
        );

        // Every route wants the token.
        for (method, path) in [
            (reqwest::Method::GET, "/v1/admin/dead-letters".to_string()),
            (reqwest::Method::GET, format!("/v1/admin/dead-letters/{id}")),
            (
                reqwest::Method::DELETE,
                format!("/v1/admin/dead-letters/{id}"),
            ),
        ] {
            let response = app
                .client
                .request(method, app.url(&path))
                .bearer_auth("wrong-token-wrong-token")
                .send()
                .await
                .expect("request");
            assert_eq!(response.status(), 401, "{path}");
        }
        app.stop().await.expect("stops");
    }
}

fn urlencode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}
