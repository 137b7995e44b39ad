//! Mutations of a valid cart, one field at a time, and the cart strategy that mixes
//! valid, mutated and arbitrary carts.

use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{Value, json};

use crate::carts::{any_json, edge_value, key, valid_cart};
use crate::rules;

#[derive(Clone, Debug)]
pub enum Mutation {
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

pub fn mutation() -> impl Strategy<Value = Mutation> {
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
pub fn pointers(value: &Value, at: String, out: &mut Vec<String>) {
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

pub fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

pub fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// `pointer`'s parent pointer and last reference token.
pub fn split(pointer: &str) -> Option<(&str, String)> {
    pointer
        .rsplit_once('/')
        .map(|(parent, token)| (parent, unescape(token)))
}

pub fn mutate(mut cart: Value, at: Index, mutation: Mutation) -> Value {
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
pub fn tricky_texts(key: &str) -> Vec<&'static str> {
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
pub fn text_fields(cart: &Value) -> Vec<String> {
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

pub fn number_fields(cart: &Value) -> Vec<String> {
    let mut fields = vec!["/total".to_string()];
    for line in line_pointers(cart) {
        fields.extend([format!("{line}/quantity"), format!("{line}/unit_price")]);
    }
    fields
}

pub fn line_pointers(cart: &Value) -> Vec<String> {
    let count = cart["lines"].as_array().map_or(0, Vec::len);
    let mut lines = vec!["/lines/0".to_string()];
    if count > 1 {
        lines.push(format!("/lines/{}", count - 1));
    }
    lines
}

/// Sets the field at `pointer`, adding it when its object is there but it is not.
pub fn set(cart: &mut Value, pointer: &str, value: Value) {
    let (parent, key) = split(pointer).expect("a field");
    if let Some(Value::Object(object)) = cart.pointer_mut(parent) {
        object.insert(key, value);
    }
}

/// A valid e-mail address of `n` characters (n ≥ 7): `a@`, labels of 60, then `…d.com`.
pub fn email_of_length(n: usize) -> String {
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
pub fn any_cart() -> impl Strategy<Value = Value> {
    prop_oneof![
        2 => valid_cart(),
        6 => (valid_cart(), any::<Index>(), mutation())
            .prop_map(|(cart, at, m)| mutate(cart, at, m)),
        2 => (valid_cart(), any::<Index>(), mutation(), any::<Index>(), mutation())
            .prop_map(|(cart, a, m, b, n)| mutate(mutate(cart, a, m), b, n)),
        1 => any_json(),
    ]
}
