//! Generators: carts built from the rules, values on the rules' edges, and arbitrary
//! JSON.

use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// Text of 1..=`max` characters (some of them not ASCII) with no blank at either end,
/// then padded with white space that the parser trims.
pub fn text(max: usize) -> impl Strategy<Value = String> {
    let inner = prop_oneof![
        4 => prop::string::string_regex("[A-Za-z0-9][A-Za-z0-9 .,'éøß漢-]{0,30}[A-Za-z0-9]")
            .expect("regex")
            .prop_map(move |s| s.chars().take(max).collect::<String>()),
        1 => Just("ẞ".repeat(max)),
    ];
    (inner, padding(), padding()).prop_map(|(s, before, after)| format!("{before}{s}{after}"))
}

pub fn padding() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["", "", "", " ", "\t", "\n ", "\u{a0}", "\u{2003}"])
}

/// An optional text field: left out, `null`, blank or text.
pub fn optional_text(max: usize) -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        Just(None),
        Just(Some(Value::Null)),
        Just(Some(json!("  "))),
        text(max).prop_map(|s| Some(json!(s))),
    ]
}

pub fn cart_id() -> impl Strategy<Value = String> {
    (any::<u128>(), any::<bool>(), padding()).prop_map(|(bits, upper, pad)| {
        let id = uuid::Uuid::from_u128(bits.max(1)).to_string();
        let id = if upper { id.to_uppercase() } else { id };
        format!("{pad}{id}{pad}")
    })
}

pub fn code(codes: &'static [&'static str]) -> impl Strategy<Value = String> {
    (prop::sample::select(codes), any::<bool>(), padding()).prop_map(|(code, lower, pad)| {
        let code = if lower {
            code.to_lowercase()
        } else {
            code.to_string()
        };
        format!("{pad}{code}")
    })
}

pub fn email() -> impl Strategy<Value = String> {
    prop::string::string_regex("[a-z0-9]{1,20}(\\.[a-z0-9]{1,10})?@[a-z0-9]{1,20}\\.[a-z]{2,6}")
        .expect("regex")
}

pub fn phone() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        Just(None),
        Just(Some(Value::Null)),
        prop::string::string_regex("\\+?[0-9]{1,4}( ?[0-9().-]{1,6}){0,3}")
            .expect("regex")
            .prop_map(|s| Some(json!(s))),
    ]
}

/// Inserts the optional fields that are not left out.
pub fn with_optional(mut object: Value, fields: Vec<(&str, Option<Value>)>) -> Value {
    for (key, value) in fields {
        if let Some(value) = value {
            object[key] = value;
        }
    }
    object
}

pub fn customer() -> impl Strategy<Value = Value> {
    (optional_text(100), text(200), email(), phone()).prop_map(|(id, name, email, phone)| {
        with_optional(
            json!({ "name": name, "email": email }),
            vec![("id", id), ("phone", phone)],
        )
    })
}

pub fn address() -> impl Strategy<Value = Value> {
    (
        text(200),
        optional_text(200),
        text(100),
        optional_text(100),
        optional_text(20),
        code(&["GB", "US", "DE", "FR", "JP", "NZ", "BR", "ZA"]),
    )
        .prop_map(|(line1, line2, city, region, postal_code, country)| {
            with_optional(
                json!({ "line1": line1, "city": city, "country": country }),
                vec![
                    ("line2", line2),
                    ("region", region),
                    ("postal_code", postal_code),
                ],
            )
        })
}

/// A unit price: mostly everyday, sometimes large enough that the lines' sum nears the
/// 64-bit limit.
pub fn unit_price() -> impl Strategy<Value = i64> {
    prop_oneof![
        8 => 0..100_000i64,
        1 => Just(0i64),
        1 => 0..=(i64::MAX / 10_000 / 8),
    ]
}

pub fn lines() -> impl Strategy<Value = Vec<(String, String, i64, i64)>> {
    prop::collection::vec(
        (
            text(64),
            text(200),
            prop_oneof![1..=10i64, Just(10_000i64), 1..=10_000i64],
            unit_price(),
        ),
        1..=8,
    )
}

/// A cart that keeps every rule, built from the rules.
pub fn valid_cart() -> impl Strategy<Value = Value> {
    (
        cart_id(),
        customer(),
        address(),
        code(&["GBP", "EUR", "USD", "JPY", "CHF", "BHD"]),
        lines(),
    )
        .prop_map(|(cart_id, customer, address, currency, lines)| {
            let total: i64 = lines.iter().map(|(_, _, q, p)| q * p).sum();
            let lines: Vec<Value> = lines
                .into_iter()
                .map(|(sku, name, quantity, unit_price)| {
                    json!({ "sku": sku, "name": name, "quantity": quantity, "unit_price": unit_price })
                })
                .collect();
            json!({
                "cart_id": cart_id,
                "customer": customer,
                "shipping_address": address,
                "currency": currency,
                "lines": lines,
                "total": total,
            })
        })
}

/// Values that sit on or just past a rule's edge, or are of a wrong kind.
pub fn edge_value() -> impl Strategy<Value = Value> {
    let numbers = [
        json!(0),
        json!(-1),
        json!(1),
        json!(10_000),
        json!(10_001),
        json!(i64::MAX),
        json!(i64::MIN),
        json!(u64::MAX),
        json!(1.5),
        json!(2.0),
        json!(-0.0),
        json!(1e300),
    ];
    let strings = [
        "",
        " ",
        "\u{0}",
        "a\u{7f}b",
        "a\u{85}",
        "\u{85}a",
        "GB",
        "gb",
        "XX",
        "GBR",
        "GBP",
        "gbp",
        "XYZ",
        "00000000-0000-0000-0000-000000000000",
        "6f1c0c1e5d7b4a539b1a2f6a3d9f0c11",
        "{6f1c0c1e-5d7b-4a53-9b1a-2f6a3d9f0c11}",
        "urn:uuid:6f1c0c1e-5d7b-4a53-9b1a-2f6a3d9f0c11",
        "6f1c0c1e-5d7b-4a53-9b1a-2f6a3d9f0c1",
        "ada@example.com",
        "ada@",
        "@example.com",
        "a b@example.com",
        "+44 (0) 20-7946.0000",
        "+44 x 20",
        "+-()",
        "~/",
    ];
    let lengths = [
        19usize, 20, 21, 31, 32, 33, 63, 64, 65, 99, 100, 101, 199, 200, 201, 255,
    ];
    prop_oneof![
        prop::sample::select(numbers.to_vec()),
        prop::sample::select(strings.to_vec()).prop_map(Value::from),
        (prop::sample::select(lengths.to_vec()), any::<bool>()).prop_map(|(n, wide)| {
            Value::from(if wide { "é".repeat(n) } else { "x".repeat(n) })
        }),
        (prop::sample::select(lengths.to_vec()))
            .prop_map(|n| Value::from(format!("{}@example.com", "a".repeat(n + 40)))),
        Just(json!([])),
        Just(json!({})),
        Just(Value::Null),
        Just(json!(true)),
    ]
}

/// Keys: the cart's own, and odd ones that need escaping in a pointer.
pub fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "cart_id",
            "customer",
            "lines",
            "total",
            "name",
            "email",
            "quantity",
            "unit_price",
            "country",
            "Total",
            "",
            "a/b",
            "~",
            "~1",
            "é",
        ])
        .prop_map(String::from),
        "[a-z_~/]{0,8}",
    ]
}

/// Any JSON value, nested a few levels.
pub fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        any::<String>().prop_map(Value::from),
        edge_value(),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|entries| Value::Object(entries.into_iter().collect::<Map<_, _>>())),
        ]
    })
}
