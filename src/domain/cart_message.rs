//! The cart message on the queue (DESIGN §4): `{ "schema": 1, "cart": {…}, "accepted_at" }`,
//! message-id = cart_id, typed application properties for routing and inspection.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use super::message::{Message, Properties, Property};
use super::{Cart, CartId};

/// The schema version this build writes. It reads every version in [`KNOWN_SCHEMAS`].
pub const SCHEMA: i32 = 1;
pub const KNOWN_SCHEMAS: &[i64] = &[1];
pub const CONTENT_TYPE: &str = "application/json";

#[derive(Serialize)]
struct Envelope<'a> {
    schema: i32,
    cart: &'a Cart,
    accepted_at: DateTime<Utc>,
}

pub fn encode(cart: &Cart, accepted_at: DateTime<Utc>) -> Message {
    let body = serde_json::to_vec(&Envelope {
        schema: SCHEMA,
        cart,
        accepted_at,
    })
    .expect("a cart always serialises");
    let properties = Properties::from([
        ("schema".to_string(), Property::Int(SCHEMA)),
        (
            "total".to_string(),
            Property::Long(cart.total.minor_units()),
        ),
        (
            "currency".to_string(),
            Property::String(cart.currency.as_str().into()),
        ),
        (
            "country".to_string(),
            Property::String(cart.shipping_address.country.as_str().into()),
        ),
    ]);
    Message {
        message_id: cart.cart_id.to_string(),
        content_type: CONTENT_TYPE.to_string(),
        properties,
        body: Bytes::from(body),
        ..Default::default()
    }
}

/// A cart message as the consumer understands it.
#[derive(Debug)]
pub enum Decoded {
    Cart(Box<Cart>),
    /// A schema version this build does not know (a newer producer, say).
    UnknownSchema(String),
    /// Not a cart message, or a cart that breaks the rules.
    Invalid(String),
}

pub fn decode(message: &Message) -> Decoded {
    let value: Value = match serde_json::from_slice(&message.body) {
        Ok(value) => value,
        Err(e) => return Decoded::Invalid(format!("body is not JSON: {e}")),
    };
    let Some(envelope) = value.as_object() else {
        return Decoded::Invalid("body is not a JSON object".into());
    };
    match envelope.get("schema") {
        Some(schema) if schema.as_i64().is_some_and(|s| KNOWN_SCHEMAS.contains(&s)) => {}
        Some(schema) => {
            return Decoded::UnknownSchema(format!(
                "schema {schema} is not known to this consumer"
            ));
        }
        None => return Decoded::Invalid("envelope has no schema".into()),
    }
    let Some(cart) = envelope.get("cart") else {
        return Decoded::Invalid("envelope has no cart".into());
    };
    match Cart::parse(cart) {
        // Compared as UUIDs: a producer may write the message-id in upper case.
        Ok(cart) if CartId::parse(&message.message_id).ok() == Some(cart.cart_id) => {
            Decoded::Cart(Box::new(cart))
        }
        Ok(cart) => Decoded::Invalid(format!(
            "message-id {:?} is not the cart_id {}",
            message.message_id, cart.cart_id
        )),
        Err(errors) => Decoded::Invalid(
            errors
                .iter()
                .map(|e| format!("/cart{}: {}", e.pointer, e.detail))
                .collect::<Vec<_>>()
                .join("; "),
        ),
    }
}
