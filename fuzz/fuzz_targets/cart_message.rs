//! A cart message off the queue, as the consumer reads it: `checkout::message::decode` on
//! any body, message-id and application properties. It must never panic; a cart comes out
//! only under its own message-id and a known schema, and what cartbus itself encodes
//! decodes to the same cart.
//!
//! Input layout (see `Input`): the message-id and properties first, the body is the rest,
//! so a seed is a few header bytes followed by a readable JSON body.

#![no_main]

use cartbus::domain::cart_message::{self as message, Decoded, KNOWN_SCHEMAS};
use cartbus::queue::{Message, Properties, Property};
use chrono::{TimeZone, Utc};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

#[derive(Arbitrary, Debug)]
enum MessageId {
    /// The body's `cart.cart_id` as written, as an honest producer sets it.
    OfTheCart,
    /// The body's `cart.cart_id` in upper case: the same UUID, spelled differently.
    OfTheCartUpperCase,
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum AnyProperty {
    Bool(bool),
    Int(i32),
    Long(i64),
    String(String),
}

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    message_id: MessageId,
    properties: Vec<(String, AnyProperty)>,
    /// Raw bytes: `&[u8]` takes the rest of the input as it is (a `Vec<u8>` would not).
    body: &'a [u8],
}

fuzz_target!(|input: Input<'_>| {
    let json: Option<Value> = serde_json::from_slice(input.body).ok();
    let cart_id = json
        .as_ref()
        .and_then(|v| v.pointer("/cart/cart_id"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let message_id = match input.message_id {
        MessageId::OfTheCart => cart_id.to_string(),
        MessageId::OfTheCartUpperCase => cart_id.to_uppercase(),
        MessageId::Other(id) => id,
    };
    let properties: Properties = input
        .properties
        .into_iter()
        .map(|(name, value)| {
            let value = match value {
                AnyProperty::Bool(b) => Property::Bool(b),
                AnyProperty::Int(n) => Property::Int(n),
                AnyProperty::Long(n) => Property::Long(n),
                AnyProperty::String(s) => Property::String(s),
            };
            (name, value)
        })
        .collect();
    let received = Message {
        message_id,
        content_type: message::CONTENT_TYPE.into(),
        properties,
        body: input.body.to_vec().into(),
        ..Default::default()
    };

    let schema = json.as_ref().and_then(|v| v.get("schema"));
    match message::decode(&received) {
        Decoded::Cart(cart) => {
            // The same UUID, whatever the letter case (ids are compared as UUIDs).
            assert!(
                received
                    .message_id
                    .trim()
                    .eq_ignore_ascii_case(&cart.cart_id.to_string()),
                "a cart decoded under another message-id: {:?}",
                received.message_id
            );
            let schema = schema.and_then(Value::as_i64);
            assert!(
                schema.is_some_and(|s| KNOWN_SCHEMAS.contains(&s)),
                "a cart decoded from schema {schema:?}"
            );
            // What this build writes, it reads back as the same cart.
            let accepted_at = Utc.timestamp_opt(1_764_000_000, 0).unwrap();
            let sent = message::encode(&cart, accepted_at);
            assert_eq!(sent.message_id, cart.cart_id.to_string());
            match message::decode(&sent) {
                Decoded::Cart(again) => assert_eq!(again, cart, "encode ∘ decode changed the cart"),
                other => panic!("cartbus cannot read its own message: {other:?}"),
            }
        }
        Decoded::UnknownSchema(why) => {
            assert!(!why.is_empty());
            let schema = schema.expect("unknown schema without a schema field");
            assert!(
                !schema.as_i64().is_some_and(|s| KNOWN_SCHEMAS.contains(&s)),
                "schema {schema} is known, yet refused as unknown"
            );
        }
        Decoded::Invalid(why) => assert!(!why.is_empty(), "an invalid message says why"),
    }
});
