//! Bad input gets a clear 4xx problem+json naming the field — never a 500, never an
//! order, never a queued message — and the server stays healthy.

mod common;

use common::{Backend, Settings, TestApp, cart, count_orders};
use serde_json::{Value, json};

/// One bad request and what it must get.
struct Case {
    name: &'static str,
    body: Vec<u8>,
    content_type: Option<&'static str>,
    headers: Vec<(&'static str, String)>,
    status: u16,
    /// The pointer that must appear in `errors` (422 only).
    pointer: Option<&'static str>,
}

fn json_case(
    name: &'static str,
    status: u16,
    pointer: &'static str,
    edit: impl FnOnce(&mut Value),
) -> Case {
    let mut body = cart();
    edit(&mut body);
    Case {
        name,
        body: serde_json::to_vec(&body).expect("json"),
        content_type: Some("application/json"),
        headers: Vec::new(),
        status,
        pointer: Some(pointer),
    }
}

fn raw_case(
    name: &'static str,
    status: u16,
    content_type: Option<&'static str>,
    body: Vec<u8>,
) -> Case {
    Case {
        name,
        body,
        content_type,
        headers: Vec::new(),
        status,
        pointer: None,
    }
}

fn cases() -> Vec<Case> {
    let valid = serde_json::to_vec(&cart()).expect("json");
    let mut cases = vec![
        raw_case(
            "malformed JSON",
            400,
            Some("application/json"),
            br#"{"cart_id": "#.to_vec(),
        ),
        raw_case(
            "trailing garbage",
            400,
            Some("application/json"),
            [valid.as_slice(), b"}}"].concat(),
        ),
        raw_case("empty body", 400, Some("application/json"), Vec::new()),
        raw_case("wrong content type", 415, Some("text/plain"), valid.clone()),
        raw_case(
            "form content type",
            415,
            Some("application/x-www-form-urlencoded"),
            valid.clone(),
        ),
        raw_case("no content type", 415, None, valid.clone()),
        raw_case(
            "non-UTF-8 charset",
            415,
            Some("application/json; charset=latin1"),
            valid.clone(),
        ),
        raw_case("body over 256 KiB", 413, Some("application/json"), {
            let mut big = cart();
            big["customer"]["name"] = json!("x".repeat(300 * 1024));
            serde_json::to_vec(&big).expect("json")
        }),
        raw_case("deeply nested array", 400, Some("application/json"), {
            let depth = 100_000;
            [b"[".repeat(depth), b"]".repeat(depth)].concat()
        }),
        raw_case(
            "deep nesting inside a field",
            400,
            Some("application/json"),
            {
                let depth = 5_000;
                let nested = format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
                format!(r#"{{"cart_id": {nested}}}"#).into_bytes()
            },
        ),
        raw_case(
            "invalid UTF-8 in a string",
            400,
            Some("application/json"),
            {
                let mut body = valid.clone();
                let at = body
                    .windows(3)
                    .position(|w| w == b"Ada")
                    .expect("name in body");
                body[at] = 0xff;
                body
            },
        ),
        json_case("top level is an array", 422, "", |c| {
            *c = json!([c.clone()])
        }),
        json_case("cart_id not a UUID", 422, "/cart_id", |c| {
            c["cart_id"] = json!("cart-1")
        }),
        json_case("cart_id the nil UUID", 422, "/cart_id", |c| {
            c["cart_id"] = json!("00000000-0000-0000-0000-000000000000")
        }),
        json_case("cart_id in braces", 422, "/cart_id", |c| {
            c["cart_id"] = json!(format!("{{{}}}", c["cart_id"].as_str().unwrap_or_default()))
        }),
        json_case("cart_id as a urn", 422, "/cart_id", |c| {
            c["cart_id"] = json!(format!(
                "urn:uuid:{}",
                c["cart_id"].as_str().unwrap_or_default()
            ))
        }),
        json_case("cart_id as bare hex", 422, "/cart_id", |c| {
            c["cart_id"] = json!(c["cart_id"].as_str().unwrap_or_default().replace('-', ""))
        }),
        json_case("cart_id a number", 422, "/cart_id", |c| {
            c["cart_id"] = json!(42)
        }),
        json_case("customer missing", 422, "/customer", |c| {
            c.as_object_mut().expect("object").remove("customer");
        }),
        json_case("customer not an object", 422, "/customer", |c| {
            c["customer"] = json!("Ada")
        }),
        json_case("invalid email", 422, "/customer/email", |c| {
            c["customer"]["email"] = json!("ada-at-example.com")
        }),
        json_case("blank name", 422, "/customer/name", |c| {
            c["customer"]["name"] = json!("   ")
        }),
        json_case("name too long", 422, "/customer/name", |c| {
            c["customer"]["name"] = json!("n".repeat(201))
        }),
        json_case("NUL in name", 422, "/customer/name", |c| {
            c["customer"]["name"] = json!("Ada\u{0}Lovelace")
        }),
        json_case("phone with letters", 422, "/customer/phone", |c| {
            c["customer"]["phone"] = json!("call me")
        }),
        json_case("unknown country", 422, "/shipping_address/country", |c| {
            c["shipping_address"]["country"] = json!("XX")
        }),
        json_case("alpha-3 country", 422, "/shipping_address/country", |c| {
            c["shipping_address"]["country"] = json!("GBR")
        }),
        json_case("city missing", 422, "/shipping_address/city", |c| {
            c["shipping_address"]
                .as_object_mut()
                .expect("object")
                .remove("city");
        }),
        json_case("unknown currency", 422, "/currency", |c| {
            c["currency"] = json!("ABC")
        }),
        json_case("numeric currency", 422, "/currency", |c| {
            c["currency"] = json!(826)
        }),
        json_case("no lines", 422, "/lines", |c| c["lines"] = json!([])),
        json_case("501 lines", 422, "/lines", |c| {
            let line = c["lines"][0].clone();
            c["lines"] = Value::Array(vec![line; 501]);
        }),
        json_case("lines not an array", 422, "/lines", |c| {
            c["lines"] = json!({"sku": "x"})
        }),
        json_case("sku missing", 422, "/lines/0/sku", |c| {
            c["lines"][0].as_object_mut().expect("object").remove("sku");
        }),
        json_case("quantity zero", 422, "/lines/0/quantity", |c| {
            c["lines"][0]["quantity"] = json!(0)
        }),
        json_case("quantity 10001", 422, "/lines/1/quantity", |c| {
            c["lines"][1]["quantity"] = json!(10_001)
        }),
        json_case("quantity a string", 422, "/lines/0/quantity", |c| {
            c["lines"][0]["quantity"] = json!("2")
        }),
        json_case("quantity a fraction", 422, "/lines/0/quantity", |c| {
            c["lines"][0]["quantity"] = json!(1.5)
        }),
        json_case("negative unit price", 422, "/lines/0/unit_price", |c| {
            c["lines"][0]["unit_price"] = json!(-1)
        }),
        json_case("unit price beyond i64", 422, "/lines/0/unit_price", |c| {
            c["lines"][0]["unit_price"] = json!(u64::MAX)
        }),
        json_case(
            "quantity × unit price overflows i64",
            422,
            "/lines/0/unit_price",
            |c| {
                c["lines"][0]["quantity"] = json!(10_000);
                c["lines"][0]["unit_price"] = json!(i64::MAX / 1000);
            },
        ),
        json_case("sum of lines overflows i64", 422, "/total", |c| {
            c["lines"][0]["quantity"] = json!(1);
            c["lines"][0]["unit_price"] = json!(i64::MAX);
            c["lines"][1]["quantity"] = json!(1);
            c["lines"][1]["unit_price"] = json!(1);
            c["total"] = json!(i64::MAX);
        }),
        json_case("total mismatch", 422, "/total", |c| {
            c["total"] = json!(c["total"].as_i64().expect("total") + 1)
        }),
        json_case("negative total", 422, "/total", |c| c["total"] = json!(-5)),
        json_case("unknown field", 422, "/coupon", |c| {
            c["coupon"] = json!("FREE")
        }),
    ];
    let mut mismatched = json_case(
        "Idempotency-Key differs from cart_id",
        422,
        "/cart_id",
        |_| {},
    );
    mismatched
        .headers
        .push(("idempotency-key", uuid::Uuid::new_v4().to_string()));
    cases.push(mismatched);
    cases
}

#[tokio::test]
async fn bad_input_gets_a_problem_naming_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = TestApp::spawn(&Settings::new(dir.path(), &Backend::Sqlite)).await;
    let cases = cases();
    assert!(cases.len() >= 25, "only {} cases", cases.len());

    let mut cart_ids = Vec::new();
    for case in cases {
        if let Ok(body) = serde_json::from_slice::<Value>(&case.body)
            && let Some(id) = body["cart_id"]
                .as_str()
                .and_then(|id| uuid::Uuid::parse_str(id).ok())
            && !id.is_nil()
        {
            cart_ids.push(id);
        }
        let mut request = app.client.post(app.url("/v1/checkouts")).body(case.body);
        if let Some(content_type) = case.content_type {
            request = request.header("content-type", content_type);
        }
        for (name, value) in &case.headers {
            request = request.header(*name, value);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        assert_eq!(response.status().as_u16(), case.status, "{}", case.name);
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{}",
            case.name
        );
        let problem: Value = response.json().await.expect("problem body");
        assert_eq!(problem["status"], case.status, "{}", case.name);
        assert!(
            problem["type"].is_string() && problem["title"].is_string(),
            "{}",
            case.name
        );
        assert!(problem["detail"].is_string(), "{}", case.name);
        if let Some(pointer) = case.pointer {
            let pointers: Vec<&str> = problem["errors"]
                .as_array()
                .unwrap_or_else(|| panic!("{}: no errors in {problem}", case.name))
                .iter()
                .filter_map(|e| e["pointer"].as_str())
                .collect();
            assert!(
                pointers.contains(&pointer),
                "{}: {pointer:?} not in {pointers:?}",
                case.name
            );
        }
    }

    let (status, ready) = app.get_json("/health/ready").await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(count_orders(&app.state).await, 0);
    let stats = app
        .state
        .queue
        .stats("checkout-carts")
        .await
        .expect("stats");
    assert_eq!(stats.depth, 0, "nothing may be queued");
    for id in cart_ids {
        let (status, _) = app.get_json(&format!("/v1/checkouts/{id}")).await;
        assert_eq!(status, 404, "checkout {id} must not exist");
    }
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_configured_storefront_key_is_required() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = "storefront-key-0123456789";
    let settings = Settings::new(dir.path(), &Backend::Sqlite).set("CARTBUS_STOREFRONT_KEY", key);
    let app = TestApp::spawn(&settings).await;
    let cart = cart();
    for authorization in [
        None,
        Some("Bearer wrong-key"),
        Some("Bearer storefront-key-01234567890"),
        Some("Basic c3RvcmVmcm9udA=="),
    ] {
        let mut request = app.client.post(app.url("/v1/checkouts")).json(&cart);
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let response = request.send().await.expect("POST");
        assert_eq!(response.status(), 401, "{authorization:?}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
    }
    let response = app
        .client
        .post(app.url("/v1/checkouts"))
        .bearer_auth(key)
        .json(&cart)
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 202);
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_cart_id_in_upper_case_is_the_same_id_everywhere() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = TestApp::spawn(&Settings::new(dir.path(), &Backend::Sqlite)).await;

    // Over HTTP: taken, and answered in its one spelling (lower case).
    let mut cart = cart();
    let id = cart["cart_id"].as_str().expect("id").to_string();
    cart["cart_id"] = json!(id.to_uppercase());
    let response = app
        .client
        .post(app.url("/v1/checkouts"))
        .header("idempotency-key", id.to_uppercase())
        .json(&cart)
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["checkout_id"], id.as_str());
    let order = app.wait_for_order(&id).await;
    assert_eq!(order["cart_id"], id.as_str());
    let (status, checkout) = app
        .get_json(&format!("/v1/checkouts/{}", id.to_uppercase()))
        .await;
    assert_eq!((status, &checkout["status"]), (200, &json!("ordered")));

    // On the queue: a producer that writes the message-id in upper case is not
    // dead-lettered for it; the ids are compared as UUIDs.
    let cart = common::cart();
    let id = cart["cart_id"].as_str().expect("id").to_string();
    let body = json!({ "schema": 1, "cart": cart, "accepted_at": "2026-12-05T01:00:00Z" });
    let message = cartbus::queue::Message {
        message_id: id.to_uppercase(),
        content_type: "application/json".into(),
        properties: cartbus::queue::Properties::from([(
            "schema".into(),
            cartbus::queue::Property::Int(1),
        )]),
        body: serde_json::to_vec(&body).expect("json").into(),
        ..Default::default()
    };
    app.state
        .queue
        .send("checkout-carts", message)
        .await
        .expect("send");
    app.wait_for_order(&id).await;
    assert!(common::dead_letters(dir.path()).await.is_empty());
    app.stop().await.expect("clean stop");
}
