//! Property tests of the cart parser and the money arithmetic (issue 9).
//!
//! Carts are generated from the rules (README "Rules for a cart"), then mutated one field
//! at a time, and arbitrary JSON is thrown in too. For every input, `Cart::parse` must not
//! panic, must accept exactly when the oracle below says the rules hold, and must name
//! every problem by a JSON pointer into the input. The oracle is written separately from
//! `src/checkout/parse.rs`: it shares the standards' crates (uuid, email_address,
//! isocountry, iso_currency), none of cartbus's code.
//!
//! `PROPTEST_CASES=100000 cargo test --release --test properties` runs a deeper search.

mod common;

use cartbus::checkout::message::{self, Decoded};
use cartbus::checkout::{Cart, FieldError, Money, Quantity};
use common::{Backend, Settings, TestApp};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Map, Value, json};

/// `cases` unless `PROPTEST_CASES` says otherwise.
fn config(cases: u32) -> Config {
    let mut config = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    config
}

/// The rules for a cart, as the README states them.
mod rules {
    use serde_json::{Map, Value};

    const CART: &[&str] = &[
        "cart_id",
        "customer",
        "shipping_address",
        "currency",
        "lines",
        "total",
    ];
    const CUSTOMER: &[&str] = &["id", "name", "email", "phone"];
    const ADDRESS: &[&str] = &["line1", "line2", "city", "region", "postal_code", "country"];
    const LINE: &[&str] = &["sku", "name", "quantity", "unit_price"];

    /// The most characters a text field may have once trimmed (`name` is the customer's
    /// and a line's alike).
    pub fn max_chars(key: &str) -> Option<usize> {
        Some(match key {
            "id" | "city" | "region" => 100,
            "name" | "line1" | "line2" => 200,
            "phone" => 32,
            "postal_code" => 20,
            "sku" => 64,
            "email" => 254,
            _ => return None,
        })
    }

    /// Whether `cart` satisfies every rule.
    pub fn hold(cart: &Value) -> bool {
        let Some(cart) = object_of(Some(cart), CART) else {
            return false;
        };
        let lines = match present(cart, "lines").and_then(Value::as_array) {
            Some(lines) if (1..=500).contains(&lines.len()) => lines,
            _ => return false,
        };
        let mut sum: i128 = 0;
        for line in lines {
            let Some(line) = object_of(Some(line), LINE) else {
                return false;
            };
            let (Some(quantity), Some(price)) = (
                whole(present(line, "quantity"), 1, 10_000),
                whole(present(line, "unit_price"), 0, i64::MAX),
            ) else {
                return false;
            };
            if !(required_text(line, "sku") && required_text(line, "name")) {
                return false;
            }
            sum += i128::from(quantity) * i128::from(price);
        }
        let total = whole(present(cart, "total"), 0, i64::MAX);
        sum <= i128::from(i64::MAX)
            && total.map(i128::from) == Some(sum)
            && present(cart, "cart_id")
                .and_then(Value::as_str)
                .is_some_and(is_cart_id)
            && present(cart, "currency")
                .and_then(Value::as_str)
                .is_some_and(is_currency)
            && customer_ok(present(cart, "customer"))
            && address_ok(present(cart, "shipping_address"))
    }

    fn customer_ok(customer: Option<&Value>) -> bool {
        let Some(customer) = object_of(customer, CUSTOMER) else {
            return false;
        };
        optional_text(customer, "id")
            && required_text(customer, "name")
            && present(customer, "email")
                .and_then(Value::as_str)
                .is_some_and(is_email)
            && optional_text(customer, "phone")
            && present(customer, "phone")
                .and_then(Value::as_str)
                .map(str::trim)
                .is_none_or(|phone| phone.is_empty() || is_phone(phone))
    }

    fn address_ok(address: Option<&Value>) -> bool {
        let Some(address) = object_of(address, ADDRESS) else {
            return false;
        };
        required_text(address, "line1")
            && optional_text(address, "line2")
            && required_text(address, "city")
            && optional_text(address, "region")
            && optional_text(address, "postal_code")
            && present(address, "country")
                .and_then(Value::as_str)
                .is_some_and(is_country)
    }

    /// An object that has no keys but `known`.
    fn object_of<'a>(value: Option<&'a Value>, known: &[&str]) -> Option<&'a Map<String, Value>> {
        let object = value?.as_object()?;
        object
            .keys()
            .all(|key| known.contains(&key.as_str()))
            .then_some(object)
    }

    /// A field that is there and not `null` (a `null` counts as left out).
    fn present<'a>(object: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
        object.get(key).filter(|value| !value.is_null())
    }

    fn whole(value: Option<&Value>, min: i64, max: i64) -> Option<i64> {
        value?.as_i64().filter(|n| (min..=max).contains(n))
    }

    /// Trimmed: at most the field's characters and none of them a control character.
    fn text_ok(key: &str, text: &str) -> bool {
        let text = text.trim();
        max_chars(key).is_some_and(|max| text.chars().count() <= max)
            && !text.chars().any(char::is_control)
    }

    fn required_text(object: &Map<String, Value>, key: &str) -> bool {
        present(object, key)
            .and_then(Value::as_str)
            .is_some_and(|text| !text.trim().is_empty() && text_ok(key, text))
    }

    fn optional_text(object: &Map<String, Value>, key: &str) -> bool {
        match present(object, key) {
            None => true,
            Some(value) => value.as_str().is_some_and(|text| text_ok(key, text)),
        }
    }

    fn is_cart_id(text: &str) -> bool {
        uuid::Uuid::try_parse(text.trim()).is_ok_and(|id| !id.is_nil())
    }

    /// ISO codes are ASCII letters; "either case" is ASCII case.
    fn letters(text: &str, n: usize) -> Option<String> {
        let text = text.trim();
        (text.len() == n && text.chars().all(|c| c.is_ascii_alphabetic()))
            .then(|| text.to_ascii_uppercase())
    }

    fn is_currency(text: &str) -> bool {
        letters(text, 3).is_some_and(|code| iso_currency::Currency::from_code(&code).is_some())
    }

    fn is_country(text: &str) -> bool {
        letters(text, 2).is_some_and(|code| isocountry::CountryCode::for_alpha2(&code).is_ok())
    }

    fn is_email(text: &str) -> bool {
        let text = text.trim();
        max_chars("email").is_some_and(|max| text.len() <= max)
            && text.contains('@')
            && email_address::EmailAddress::is_valid(text)
    }

    fn is_phone(phone: &str) -> bool {
        phone.chars().any(|c| c.is_ascii_digit())
            && phone
                .chars()
                .all(|c| c.is_ascii_digit() || matches!(c, ' ' | '+' | '-' | '(' | ')' | '.'))
    }
}

// ---- generators ----

/// Text of 1..=`max` characters (some of them not ASCII) with no blank at either end,
/// then padded with white space that the parser trims.
fn text(max: usize) -> impl Strategy<Value = String> {
    let inner = prop_oneof![
        4 => prop::string::string_regex("[A-Za-z0-9][A-Za-z0-9 .,'éøß漢-]{0,30}[A-Za-z0-9]")
            .expect("regex")
            .prop_map(move |s| s.chars().take(max).collect::<String>()),
        1 => Just("ẞ".repeat(max)),
    ];
    (inner, padding(), padding()).prop_map(|(s, before, after)| format!("{before}{s}{after}"))
}

fn padding() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["", "", "", " ", "\t", "\n ", "\u{a0}", "\u{2003}"])
}

/// An optional text field: left out, `null`, blank or text.
fn optional_text(max: usize) -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        Just(None),
        Just(Some(Value::Null)),
        Just(Some(json!("  "))),
        text(max).prop_map(|s| Some(json!(s))),
    ]
}

fn cart_id() -> impl Strategy<Value = String> {
    (any::<u128>(), any::<bool>(), padding()).prop_map(|(bits, upper, pad)| {
        let id = uuid::Uuid::from_u128(bits.max(1)).to_string();
        let id = if upper { id.to_uppercase() } else { id };
        format!("{pad}{id}{pad}")
    })
}

fn code(codes: &'static [&'static str]) -> impl Strategy<Value = String> {
    (prop::sample::select(codes), any::<bool>(), padding()).prop_map(|(code, lower, pad)| {
        let code = if lower {
            code.to_lowercase()
        } else {
            code.to_string()
        };
        format!("{pad}{code}")
    })
}

fn email() -> impl Strategy<Value = String> {
    prop::string::string_regex("[a-z0-9]{1,20}(\\.[a-z0-9]{1,10})?@[a-z0-9]{1,20}\\.[a-z]{2,6}")
        .expect("regex")
}

fn phone() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        Just(None),
        Just(Some(Value::Null)),
        prop::string::string_regex("\\+?[0-9]{1,4}( ?[0-9().-]{1,6}){0,3}")
            .expect("regex")
            .prop_map(|s| Some(json!(s))),
    ]
}

/// Inserts the optional fields that are not left out.
fn with_optional(mut object: Value, fields: Vec<(&str, Option<Value>)>) -> Value {
    for (key, value) in fields {
        if let Some(value) = value {
            object[key] = value;
        }
    }
    object
}

fn customer() -> impl Strategy<Value = Value> {
    (optional_text(100), text(200), email(), phone()).prop_map(|(id, name, email, phone)| {
        with_optional(
            json!({ "name": name, "email": email }),
            vec![("id", id), ("phone", phone)],
        )
    })
}

fn address() -> impl Strategy<Value = Value> {
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
fn unit_price() -> impl Strategy<Value = i64> {
    prop_oneof![
        8 => 0..100_000i64,
        1 => Just(0i64),
        1 => 0..=(i64::MAX / 10_000 / 8),
    ]
}

fn lines() -> impl Strategy<Value = Vec<(String, String, i64, i64)>> {
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
fn valid_cart() -> impl Strategy<Value = Value> {
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
fn edge_value() -> impl Strategy<Value = Value> {
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
fn key() -> impl Strategy<Value = String> {
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
fn any_json() -> impl Strategy<Value = Value> {
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

#[derive(Clone, Debug)]
enum Mutation {
    Remove,
    Replace(Value),
    AddKey(String, Value),
    /// `total` off by this much (wrapping, as a careless implementation would add).
    NudgeTotal(i64),
    /// A text field set to its limit plus `delta` characters.
    Stretch {
        delta: i64,
        wide: bool,
        pad: bool,
    },
    /// A number set to a value on or past an edge.
    Number(Value),
    /// A text set to one that is tricky for its field.
    Text(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        2 => Just(Mutation::Remove),
        2 => Just(Mutation::Replace(Value::Null)),
        6 => edge_value().prop_map(Mutation::Replace),
        3 => any_json().prop_map(Mutation::Replace),
        2 => (key(), any_json()).prop_map(|(k, v)| Mutation::AddKey(k, v)),
        1 => prop_oneof![Just(1i64), Just(-1), Just(i64::MIN), any::<i64>()].prop_map(Mutation::NudgeTotal),
        4 => (-1..=1i64, any::<bool>(), any::<bool>())
            .prop_map(|(delta, wide, pad)| Mutation::Stretch { delta, wide, pad }),
        3 => prop::sample::select(vec![
            json!(-1), json!(0), json!(1), json!(9_999), json!(10_000), json!(10_001),
            json!(i64::MAX), json!(u64::MAX), json!(1.0), json!(0.5), json!("1"),
        ])
        .prop_map(Mutation::Number),
        4 => any::<Index>().prop_map(Mutation::Text),
    ]
}

/// Every pointer into `value`, the root included.
fn pointers(value: &Value, at: String, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                pointers(child, format!("{at}/{}", escape(key)), out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                pointers(child, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
    out.push(at);
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// `pointer`'s parent pointer and last reference token.
fn split(pointer: &str) -> Option<(&str, String)> {
    pointer
        .rsplit_once('/')
        .map(|(parent, token)| (parent, unescape(token)))
}

fn mutate(mut cart: Value, at: Index, mutation: Mutation) -> Value {
    let mut all = Vec::new();
    pointers(&cart, String::new(), &mut all);
    let target = all[at.index(all.len())].clone();
    match mutation {
        Mutation::Remove => {
            if let Some((parent, token)) = split(&target) {
                match cart.pointer_mut(parent) {
                    Some(Value::Object(map)) => {
                        map.remove(&token);
                    }
                    Some(Value::Array(items)) => {
                        if let Ok(i) = token.parse::<usize>() {
                            items.remove(i);
                        }
                    }
                    _ => {}
                }
            }
        }
        Mutation::Replace(value) => {
            if let Some(slot) = cart.pointer_mut(&target) {
                *slot = value;
            }
        }
        Mutation::AddKey(key, value) => {
            if let Some(Value::Object(map)) = cart.pointer_mut(&target) {
                map.insert(key, value);
            } else if let Some((parent, _)) = split(&target)
                && let Some(Value::Object(map)) = cart.pointer_mut(parent)
            {
                map.insert(key, value);
            }
        }
        Mutation::Stretch { delta, wide, pad } => {
            let fields = text_fields(&cart);
            let pointer = &fields[at.index(fields.len())];
            let (_, key) = split(pointer).expect("a field");
            let max = rules::max_chars(&key).unwrap_or(3);
            let n = usize::try_from(max as i64 + delta).expect("a small length");
            let text = match key.as_str() {
                "email" => email_of_length(n),
                "phone" => "1".repeat(n),
                _ if wide => "é".repeat(n),
                _ => "x".repeat(n),
            };
            let text = if pad { format!("  {text}\t") } else { text };
            set(&mut cart, pointer, json!(text));
        }
        Mutation::Number(value) => {
            let fields = number_fields(&cart);
            set(&mut cart, &fields[at.index(fields.len())], value);
        }
        Mutation::Text(which) => {
            let fields = text_fields(&cart);
            let pointer = &fields[at.index(fields.len())];
            let choices = tricky_texts(&split(pointer).expect("a field").1);
            set(
                &mut cart,
                pointer,
                json!(choices[which.index(choices.len())]),
            );
        }
        Mutation::NudgeTotal(by) => {
            if let Some(total) = cart["total"].as_i64() {
                cart["total"] = json!(total.wrapping_add(by));
            }
        }
    }
    cart
}

/// Texts on or past the edge of the rules for the field `key`, and some for any field.
fn tricky_texts(key: &str) -> Vec<&'static str> {
    let mut texts = match key {
        "phone" => vec![
            "+-()",
            "1a",
            "(0) 1",
            "+44 (0) 20-7946.0000",
            "١٢٣",
            "1/2",
            "+",
            "1_000",
        ],
        "country" => vec!["gb", "Gb", "GBR", "XX", "G", "ＧＢ", "g\u{0}", "uk", " de "],
        "currency" => vec![
            "gbp",
            "GBp",
            "XYZ",
            "EURO",
            "EU",
            "ＥＵＲ",
            "eur\n",
            "XXX",
            "xau",
        ],
        "cart_id" => vec![
            "6F1C0C1E-5D7B-4A53-9B1A-2F6A3D9F0C11",
            "00000000-0000-0000-0000-000000000000",
            "6f1c0c1e5d7b4a539b1a2f6a3d9f0c11",
            "{6f1c0c1e-5d7b-4a53-9b1a-2f6a3d9f0c11}",
            "6f1c0c1e-5d7b-4a53-9b1a-2f6a3d9f0c1g",
        ],
        "email" => vec![
            "a@b",
            "a@b.c",
            "a.@b.com",
            "a b@c.com",
            "@b.com",
            "a@",
            "\"a b\"@c.com",
            "a@[127.0.0.1]",
        ],
        _ => vec![],
    };
    texts.extend([
        "", " ", "\u{a0}", "\u{85}", "a\u{0}b", "a\u{1b}", " a\u{7f}", "~/", "ẞ",
    ]);
    texts
}

/// The pointer of every text field of a cart, whether the cart has it or not (the lines'
/// fields of the first and the last line).
fn text_fields(cart: &Value) -> Vec<String> {
    let mut fields: Vec<String> = [
        "/cart_id",
        "/currency",
        "/customer/id",
        "/customer/name",
        "/customer/email",
        "/customer/phone",
        "/shipping_address/line1",
        "/shipping_address/line2",
        "/shipping_address/city",
        "/shipping_address/region",
        "/shipping_address/postal_code",
        "/shipping_address/country",
    ]
    .map(String::from)
    .into();
    for line in line_pointers(cart) {
        fields.extend([format!("{line}/sku"), format!("{line}/name")]);
    }
    fields
}

fn number_fields(cart: &Value) -> Vec<String> {
    let mut fields = vec!["/total".to_string()];
    for line in line_pointers(cart) {
        fields.extend([format!("{line}/quantity"), format!("{line}/unit_price")]);
    }
    fields
}

fn line_pointers(cart: &Value) -> Vec<String> {
    let count = cart["lines"].as_array().map_or(0, Vec::len);
    let mut lines = vec!["/lines/0".to_string()];
    if count > 1 {
        lines.push(format!("/lines/{}", count - 1));
    }
    lines
}

/// Sets the field at `pointer`, adding it when its object is there but it is not.
fn set(cart: &mut Value, pointer: &str, value: Value) {
    let (parent, key) = split(pointer).expect("a field");
    if let Some(Value::Object(object)) = cart.pointer_mut(parent) {
        object.insert(key, value);
    }
}

/// A valid e-mail address of `n` characters (n ≥ 7): `a@`, labels of 60, then `…d.com`.
fn email_of_length(n: usize) -> String {
    let mut rest = n - 2;
    let mut domain = String::new();
    while rest > 64 {
        domain.push_str(&"d".repeat(60));
        domain.push('.');
        rest -= 61;
    }
    domain.push_str(&"d".repeat(rest - 4));
    format!("a@{domain}.com")
}

/// Carts of every kind: valid ones, valid ones with one or two things changed, and
/// arbitrary JSON.
fn any_cart() -> impl Strategy<Value = Value> {
    prop_oneof![
        2 => valid_cart(),
        6 => (valid_cart(), any::<Index>(), mutation())
            .prop_map(|(cart, at, m)| mutate(cart, at, m)),
        2 => (valid_cart(), any::<Index>(), mutation(), any::<Index>(), mutation())
            .prop_map(|(cart, a, m, b, n)| mutate(mutate(cart, a, m), b, n)),
        1 => any_json(),
    ]
}

// ---- checks ----

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
