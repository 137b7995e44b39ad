//! `openapi/openapi.json` is the committed copy of what the server serves at
//! `/openapi.json`; this test fails when the two drift apart.
//! Refresh it with `cargo run -- openapi > openapi/openapi.json`.

mod common;

use common::{Backend, Settings, TestApp};
use serde_json::{Value, json};

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

const ADMIN_TOKEN: &str = "openapi-test-admin-token-0001";

/// Follows a `$ref` to `#/components/schemas/…`.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(reference) => {
            let name = reference
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("unexpected $ref {reference}"));
            resolve(doc, &doc["components"]["schemas"][name])
        }
        None => schema,
    }
}

/// A media type shows an example: its own, its schema's, or one on every property.
fn has_example(doc: &Value, media: &Value) -> bool {
    if media.get("example").is_some() || media.get("examples").is_some() {
        return true;
    }
    let schema = resolve(doc, &media["schema"]);
    if schema.get("example").is_some() || schema.get("examples").is_some() {
        return true;
    }
    schema["properties"].as_object().is_some_and(|properties| {
        !properties.is_empty()
            && properties.values().all(|p| {
                let p = resolve(doc, p);
                p.get("example").is_some() || p.get("examples").is_some()
            })
    })
}

/// The examples a media type shows directly.
fn examples_of(media: &Value) -> Vec<&Value> {
    let mut examples: Vec<&Value> = media.get("example").into_iter().collect();
    if let Some(named) = media["examples"].as_object() {
        examples.extend(named.values().filter_map(|e| e.get("value")));
    }
    examples
}

/// The properties `schema` documents, its `allOf` parts' included.
fn documented<'a>(doc: &'a Value, schema: &'a Value, names: &mut Vec<&'a str>) {
    let schema = resolve(doc, schema);
    names.extend(
        schema["properties"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(n, _)| n.as_str()),
    );
    for part in schema["allOf"].as_array().into_iter().flatten() {
        documented(doc, part, names);
    }
}

/// The places where `value` breaks `schema` (a JSON Schema subset: the keywords utoipa
/// writes), as JSON pointers with what is wrong. Stricter than JSON Schema in one way: a
/// property no part of the schema documents is reported (an example with a typo).
fn violations(doc: &Value, schema: &Value, value: &Value, at: &str, out: &mut Vec<String>) {
    check(doc, schema, value, at, out, true);
}

fn check(doc: &Value, schema: &Value, value: &Value, at: &str, out: &mut Vec<String>, whole: bool) {
    let schema = resolve(doc, schema);
    for keyword in ["oneOf", "anyOf"] {
        if let Some(options) = schema[keyword].as_array() {
            let matching = options
                .iter()
                .filter(|option| {
                    let mut found = Vec::new();
                    violations(doc, option, value, at, &mut found);
                    found.is_empty()
                })
                .count();
            if matching == 0 || (keyword == "oneOf" && matching > 1) {
                out.push(format!("{at}: {matching} of the {keyword} options match"));
            }
        }
    }
    for part in schema["allOf"].as_array().into_iter().flatten() {
        check(doc, part, value, at, out, false);
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        out.push(format!("{at}: {value} is not one of {allowed:?}"));
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let is = |t: &str| match t {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "string" => value.is_string(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        _ => true,
    };
    if !types.is_empty() && !types.iter().any(|t| is(t)) {
        out.push(format!("{at}: {value} is not {types:?}"));
        return;
    }
    if let Some(object) = value.as_object() {
        for name in schema["required"].as_array().into_iter().flatten() {
            let name = name.as_str().unwrap_or_default();
            if !object.contains_key(name) {
                out.push(format!("{at}/{name}: required and missing"));
            }
        }
        let properties = schema["properties"].as_object();
        let mut known = Vec::new();
        documented(doc, schema, &mut known);
        for (name, field) in object {
            let here = format!("{at}/{name}");
            match (
                properties.and_then(|p| p.get(name)),
                &schema["additionalProperties"],
            ) {
                (Some(property), _) => violations(doc, property, field, &here, out),
                (None, Value::Bool(false)) => out.push(format!("{here}: not in the schema")),
                (None, extra @ Value::Object(_)) => violations(doc, extra, field, &here, out),
                (None, _) if whole && !known.is_empty() && !known.contains(&name.as_str()) => {
                    out.push(format!("{here}: not a documented property"))
                }
                (None, _) => {}
            }
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for (i, item) in array.iter().enumerate() {
            violations(doc, items, item, &format!("{at}/{i}"), out);
        }
    }
}

/// Every JSON request body and 2xx response of an admin operation shows an example, and
/// every 4xx a problem+json one; each example it shows matches its own schema.
#[tokio::test]
async fn every_admin_operation_has_valid_examples() {
    let doc: Value = serde_json::to_value(cartbus::http::openapi()).expect("document as JSON");
    let mut missing = Vec::new();
    let mut invalid = Vec::new();
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        if !path.starts_with("/v1/admin") {
            continue;
        }
        for (method, operation) in item.as_object().expect("operations") {
            operations += 1;
            let mut shown = Vec::new();
            if let Some(body) = operation["requestBody"]["content"].get("application/json") {
                shown.push(("request body".to_string(), body));
            }
            for (status, response) in operation["responses"].as_object().expect("responses") {
                for (content_type, media) in response["content"].as_object().into_iter().flatten() {
                    let json = content_type.ends_with("json");
                    if (status.starts_with('2') && json)
                        || (status.starts_with('4') && content_type == "application/problem+json")
                    {
                        shown.push((format!("{status} {content_type}"), media));
                    }
                }
            }
            for (what, media) in shown {
                if !has_example(&doc, media) {
                    missing.push(format!("{} {path}: {what}", method.to_uppercase()));
                }
                for example in examples_of(media) {
                    let mut found = Vec::new();
                    violations(&doc, &media["schema"], example, "", &mut found);
                    if !found.is_empty() {
                        invalid.push(format!(
                            "{} {path}: {what}: {}",
                            method.to_uppercase(),
                            found.join("; ")
                        ));
                    }
                }
            }
        }
    }
    assert!(operations >= 11, "only {operations} admin operations");
    assert!(
        missing.is_empty() && invalid.is_empty(),
        "admin operations without an example:\n  {}\nexamples that break their schema:\n  {}",
        missing.join("\n  "),
        invalid.join("\n  ")
    );
}

/// An example request body is one the server takes: sent with the token, it is never
/// refused as malformed (400) or breaking a rule (422), whatever the made-up ids then find.
#[tokio::test]
async fn admin_request_examples_are_accepted_by_the_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = TestApp::spawn(
        &Settings::new(dir.path(), &Backend::Sqlite).set("CARTBUS_ADMIN_TOKEN", ADMIN_TOKEN),
    )
    .await;
    let (_, doc) = app.get_json("/openapi.json").await;
    let mut sent = 0;
    for (template, item) in doc["paths"].as_object().expect("paths") {
        if !template.starts_with("/v1/admin") {
            continue;
        }
        for (method, operation) in item.as_object().expect("operations") {
            let media = &operation["requestBody"]["content"]["application/json"];
            for example in examples_of(media) {
                let path = common::fill_path(template, operation);
                let (status, body) = common::admin_call(
                    &app.client,
                    &app.base,
                    ADMIN_TOKEN,
                    method.to_uppercase().parse().expect("method"),
                    &path,
                    Some(example.clone()),
                )
                .await;
                assert!(
                    ![400, 401, 422].contains(&status) && status < 500,
                    "{method} {template} refused its own example {example}: {status} {body}"
                );
                sent += 1;
            }
        }
    }
    assert!(sent >= 3, "only {sent} request examples sent");
    app.stop().await.expect("clean stop");
}

/// The checkout body's schema is written on the domain's cart types, apart from the
/// parser's rules: each text limit it documents is the parser's (a value at `maxLength`
/// is taken, one character more is refused by pointer), and so is the quantity's range.
#[test]
fn the_documented_cart_limits_are_the_parsers() {
    use cartbus::domain::Cart;

    let doc: Value = serde_json::to_value(cartbus::http::openapi()).expect("document as JSON");
    let schemas = &doc["components"]["schemas"];
    let refused = |cart: &Value, pointer: &str| {
        Cart::parse(cart)
            .err()
            .is_some_and(|errors| errors.iter().any(|e| e.pointer == pointer))
    };
    let mut checked = 0;
    for (schema, at) in [
        ("CustomerRequest", "/customer"),
        ("AddressRequest", "/shipping_address"),
        ("LineRequest", "/lines/0"),
    ] {
        let properties = schemas[schema]["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("{schema} has properties"));
        for (name, property) in properties {
            // An e-mail address has a grammar of its own, beyond a length.
            let Some(max) = property["maxLength"].as_u64().filter(|_| name != "email") else {
                continue;
            };
            let fill = if name == "phone" { "1" } else { "x" };
            let pointer = format!("{at}/{name}");
            let mut cart = common::cart();
            *cart.pointer_mut(&pointer).expect("a field of the cart") =
                json!(fill.repeat(max as usize));
            assert!(
                Cart::parse(&cart).is_ok(),
                "{pointer} at its maxLength {max}"
            );
            *cart.pointer_mut(&pointer).expect("a field of the cart") =
                json!(fill.repeat(max as usize + 1));
            assert!(
                refused(&cart, &pointer),
                "{pointer} past its maxLength {max}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 9, "only {checked} text limits checked");

    let quantity = &schemas["LineRequest"]["properties"]["quantity"];
    for (n, taken) in [
        (quantity["minimum"].as_i64().expect("minimum"), true),
        (quantity["maximum"].as_i64().expect("maximum"), true),
        (quantity["minimum"].as_i64().expect("minimum") - 1, false),
        (quantity["maximum"].as_i64().expect("maximum") + 1, false),
    ] {
        let mut cart = common::cart_with_lines(1);
        cart["lines"][0]["quantity"] = json!(n);
        cart["total"] = json!(n * cart["lines"][0]["unit_price"].as_i64().expect("price"));
        assert_eq!(Cart::parse(&cart).is_ok(), taken, "quantity {n}");
        assert_eq!(refused(&cart, "/lines/0/quantity"), !taken, "quantity {n}");
    }
}
