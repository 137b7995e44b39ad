//! The rules for a cart, as docs/http-api.md states them: the oracle the parser is checked
//! against. It shares the standards' crates (uuid, email_address, isocountry,
//! iso_currency) with the parser, none of its code.

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

/// The hyphenated form only (8-4-4-4-12 hex digits, either case), not the nil UUID;
/// braces, `urn:uuid:` and bare hex are refused.
fn is_cart_id(text: &str) -> bool {
    let text = text.trim();
    let hyphenated = text.len() == 36
        && text.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        });
    hyphenated && text.chars().any(|c| c != '0' && c != '-')
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
    max_chars("email").is_some_and(|max| text.chars().count() <= max)
        && text.contains('@')
        && email_address::EmailAddress::is_valid(text)
}

fn is_phone(phone: &str) -> bool {
    phone.chars().any(|c| c.is_ascii_digit())
        && phone
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, ' ' | '+' | '-' | '(' | ')' | '.'))
}
