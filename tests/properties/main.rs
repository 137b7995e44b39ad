//! Property tests of the cart parser and the money arithmetic (issue 9).
//!
//! Carts are generated from the rules (docs/http-api.md#rules-for-a-cart), then mutated one field
//! at a time, and arbitrary JSON is thrown in too. For every input, `Cart::parse` must not
//! panic, must accept exactly when the oracle ([`rules`]) says the rules hold, and must
//! name every problem by a JSON pointer into the input.
//!
//! `PROPTEST_CASES=100000 cargo test --release --test properties` runs a deeper search.

mod carts;
#[path = "../common/mod.rs"]
mod common;
mod mutate;
mod rules;

use cartbus::domain::cart_message::{self as message, Decoded};
use cartbus::domain::{Cart, FieldError, Money, Quantity};
use common::{Backend, Settings, TestApp};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};
use serde_json::{Value, json};

use carts::{any_json, valid_cart};
use mutate::{any_cart, split};

/// `cases` unless `PROPTEST_CASES` says otherwise. A failing case's seed is kept in
/// `tests/properties/regressions.txt` (commit it) and replayed first from then on.
fn config(cases: u32) -> Config {
    let mut config = Config {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/properties/regressions.txt",
        ))),
        ..Config::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    config
}

/// Every error names a field by a JSON pointer that resolves into `input`, or names a
/// field left out (or `null`) of an object that is there.
fn check_errors(input: &Value, errors: &[FieldError]) -> Result<(), TestCaseError> {
    prop_assert!(!errors.is_empty(), "rejected without an error");
    for error in errors {
        let pointer = error.pointer.as_str();
        prop_assert!(
            pointer.is_empty() || pointer.starts_with('/'),
            "{pointer:?} is not a JSON pointer"
        );
        prop_assert!(!error.detail.is_empty(), "{pointer} has no detail");
        if input.pointer(pointer).is_some() {
            continue;
        }
        let (parent, key) = split(pointer).expect("a non-root pointer");
        let parent = input.pointer(parent).and_then(Value::as_object);
        prop_assert!(
            parent.is_some_and(|p| !p.contains_key(&key)) && error.detail == "is required",
            "{pointer} ({}) resolves to nothing in {input}",
            error.detail
        );
    }
    Ok(())
}

/// An accepted cart carries the input's values, normalised, and its total adds up.
fn check_accepted(input: &Value, cart: &Cart) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        Some(cart.cart_id.as_uuid()),
        uuid::Uuid::try_parse(input["cart_id"].as_str().unwrap_or_default().trim()).ok()
    );
    prop_assert_eq!(
        cart.currency.as_str(),
        input["currency"]
            .as_str()
            .unwrap_or_default()
            .trim()
            .to_uppercase()
    );
    prop_assert_eq!(
        cart.lines.len(),
        input["lines"].as_array().map_or(0, Vec::len)
    );
    let sum: i128 = cart
        .lines
        .iter()
        .map(|l| i128::from(l.quantity.get()) * i128::from(l.unit_price.minor_units()))
        .sum();
    prop_assert_eq!(sum, i128::from(cart.total.minor_units()));
    prop_assert_eq!(Some(cart.total.minor_units()), input["total"].as_i64());
    for (line, raw) in cart
        .lines
        .iter()
        .zip(input["lines"].as_array().into_iter().flatten())
    {
        prop_assert_eq!(
            line.sku.as_str(),
            raw["sku"].as_str().unwrap_or_default().trim()
        );
        prop_assert_eq!(
            Some(i64::from(line.quantity.get())),
            raw["quantity"].as_i64()
        );
    }
    prop_assert_eq!(
        cart.customer.name.as_str(),
        input["customer"]["name"]
            .as_str()
            .unwrap_or_default()
            .trim()
    );
    Ok(())
}

/// What the queue carries decodes to the same cart, with the same payload hash.
fn check_round_trip(cart: &Cart) -> Result<(), TestCaseError> {
    let encoded = message::encode(cart, chrono::Utc::now());
    prop_assert_eq!(&encoded.message_id, &cart.cart_id.to_string());
    match message::decode(&encoded) {
        Decoded::Cart(decoded) => {
            prop_assert_eq!(&*decoded, cart);
            prop_assert_eq!(decoded.payload_hash(), cart.payload_hash());
        }
        other => prop_assert!(false, "an accepted cart did not decode: {other:?}"),
    }
    Ok(())
}

fn check_cart(input: &Value) -> Result<(), TestCaseError> {
    let expected = rules::hold(input);
    match Cart::parse(input) {
        Ok(cart) => {
            prop_assert!(expected, "accepted a cart that breaks the rules: {input}");
            check_accepted(input, &cart)?;
            check_round_trip(&cart)?;
        }
        Err(errors) => {
            prop_assert!(
                !expected,
                "rejected a cart that keeps the rules: {input}\n{errors:?}"
            );
            check_errors(input, &errors)?;
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn carts_built_from_the_rules_are_accepted(cart in valid_cart()) {
        prop_assert!(rules::hold(&cart), "the generator broke a rule: {cart}");
        let parsed = Cart::parse(&cart);
        prop_assert!(parsed.is_ok(), "{cart}\n{parsed:?}");
        check_cart(&cart)?;
    }

    #[test]
    fn parse_accepts_exactly_when_the_rules_hold(cart in any_cart()) {
        check_cart(&cart)?;
    }

    #[test]
    fn arbitrary_json_never_panics_and_every_rejection_points(value in any_json()) {
        check_cart(&value)?;
    }

    /// A sum past 2^63 − 1 is rejected with a pointer, never wrapped into a small total.
    #[test]
    fn totals_past_64_bits_are_rejected_not_wrapped(
        cart in valid_cart(),
        prices in prop::collection::vec(((i64::MAX / 20_000)..=i64::MAX, 1..=10_000i64), 1..4),
        claim_wrapped in any::<bool>(),
    ) {
        let mut cart = cart;
        let lines: Vec<Value> = prices
            .iter()
            .enumerate()
            .map(|(i, (price, quantity))| {
                json!({ "sku": format!("BIG-{i}"), "name": "Big", "quantity": quantity, "unit_price": price })
            })
            .collect();
        let exact: i128 = prices.iter().map(|(p, q)| i128::from(*p) * i128::from(*q)).sum();
        let wrapped = prices
            .iter()
            .fold(0i64, |sum, (p, q)| sum.wrapping_add(p.wrapping_mul(*q)));
        cart["lines"] = json!(lines);
        cart["total"] = if claim_wrapped { json!(wrapped) } else { json!(i64::MAX) };
        let fits = exact <= i128::from(i64::MAX);
        match Cart::parse(&cart) {
            Ok(parsed) => {
                prop_assert!(fits, "accepted an overflowing sum as {}", parsed.total.minor_units());
                prop_assert_eq!(i128::from(parsed.total.minor_units()), exact);
            }
            Err(errors) => {
                check_errors(&cart, &errors)?;
                if !fits {
                    prop_assert!(
                        errors.iter().any(|e| e.pointer == "/total" || e.pointer.ends_with("/unit_price")),
                        "{errors:?}"
                    );
                }
            }
        }
        check_cart(&cart)?;
    }
}

proptest! {
    #![proptest_config(config(4096))]

    #[test]
    fn money_times_agrees_with_i128(amount in any::<i64>(), quantity in any::<i64>()) {
        let money = Money::new(amount);
        prop_assert_eq!(money.is_some(), amount >= 0);
        let quantity_ok = (1..=10_000).contains(&quantity);
        prop_assert_eq!(Quantity::new(quantity).map(|q| i64::from(q.get())), quantity_ok.then_some(quantity));
        if let (Some(money), Some(q)) = (money, Quantity::new(quantity)) {
            let exact = i128::from(amount) * i128::from(quantity);
            let expected = i64::try_from(exact).ok();
            prop_assert_eq!(money.times(q).map(Money::minor_units), expected);
        }
    }

    #[test]
    fn money_checked_add_agrees_with_i128(a in 0..=i64::MAX, b in 0..=i64::MAX) {
        let (x, y) = (Money::new(a).expect("non-negative"), Money::new(b).expect("non-negative"));
        let expected = i64::try_from(i128::from(a) + i128::from(b)).ok();
        prop_assert_eq!(x.checked_add(y).map(Money::minor_units), expected);
        prop_assert_eq!(y.checked_add(x).map(Money::minor_units), expected);
    }
}

fn cart_with_line_count(n: usize) -> Value {
    let lines: Vec<Value> = (0..n)
        .map(|i| json!({ "sku": format!("S{i}"), "name": "n", "quantity": 1, "unit_price": 1 }))
        .collect();
    json!({
        "cart_id": "6f1c0c1e-5d7b-4a53-9b1a-2f6a3d9f0c11",
        "customer": { "name": "Ada", "email": "ada@example.com" },
        "shipping_address": { "line1": "1 St", "city": "London", "country": "GB" },
        "currency": "GBP",
        "lines": lines,
        "total": n,
    })
}

/// The line count's edges, too costly to reach by chance.
#[test]
fn line_count_edges() {
    for (n, ok) in [(0, false), (1, true), (500, true), (501, false)] {
        let cart = cart_with_line_count(n);
        assert_eq!(rules::hold(&cart), ok, "oracle, {n} lines");
        match Cart::parse(&cart) {
            Ok(_) => assert!(ok, "{n} lines accepted"),
            Err(errors) => {
                assert!(!ok, "{n} lines rejected: {errors:?}");
                assert_eq!(errors.len(), 1, "{errors:?}");
                assert_eq!(errors[0].pointer, "/lines");
            }
        }
    }
}

/// Over HTTP: the answer is 201/202 exactly when the rules hold, otherwise a 422 whose
/// `errors` point into what was sent. Few cases: each is a real request.
#[test]
fn http_answers_agree_with_the_rules() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = Settings::new(dir.path(), &Backend::Sqlite).set("CARTBUS_CONSUMER", "off");
    let app = runtime.block_on(TestApp::spawn(&settings));
    let mut runner = TestRunner::new(config(48));
    runner
        .run(&any_cart(), |cart| {
            let (status, body) = runtime.block_on(async {
                let response = app.post_cart(&cart).await;
                let status = response.status().as_u16();
                (
                    status,
                    response.json::<Value>().await.unwrap_or(Value::Null),
                )
            });
            if rules::hold(&cart) {
                prop_assert!(
                    status == 202 || status == 201,
                    "{status} {body} for a valid cart {cart}"
                );
            } else {
                prop_assert_eq!(status, 422, "{} for {}", body, cart);
                let errors: Vec<FieldError> = body["errors"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|e| FieldError {
                        pointer: e["pointer"].as_str().unwrap_or("?").to_string(),
                        detail: e["detail"].as_str().unwrap_or_default().to_string(),
                    })
                    .collect();
                check_errors(&cart, &errors)?;
            }
            Ok(())
        })
        .unwrap_or_else(|failure| panic!("{failure}"));
    runtime.block_on(app.stop()).expect("clean stop");
}
