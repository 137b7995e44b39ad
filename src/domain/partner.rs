//! The messages exchanged with transport partners (DESIGN §7): the `new-order` cartbus
//! sends, the status reply a partner sends back, and the HMAC-SHA256 that signs a reply.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;

use super::message::{Message, Property};
use super::order::{AddressView, CustomerView, LineView, OrderView};

pub const NEW_ORDER_SCHEMA: i32 = 1;
pub const NEW_ORDER_SUBJECT: &str = "new-order";
const CONTENT_TYPE: &str = "application/json";

/// The body of a `new-order` message. Customer, address and lines go as
/// `GET /v1/orders/{order_id}` shows them; the test below pins that shape, which partners
/// read under `schema` 1.
#[derive(Debug, Serialize, Deserialize)]
pub struct NewOrder {
    pub schema: i32,
    pub order_id: Uuid,
    pub cart_id: Uuid,
    pub partner: String,
    pub customer: CustomerView,
    pub shipping_address: AddressView,
    pub currency: String,
    pub lines: Vec<LineView>,
    pub total: i64,
    pub created_at: DateTime<Utc>,
}

/// The application property naming the datacenter an order belongs to: on every
/// `new-order` (and its audit copy) when `CARTBUS_DATACENTER` is set, and copied by the
/// partner onto each reply, so that a reply posted to the wrong site is told apart.
pub const DATACENTER_PROPERTY: &str = "datacenter";
/// The application property naming the broker a partner must reply on (a public
/// identifier, `amqp://host:port/vhost`, never credentials).
pub const REPLY_BROKER_PROPERTY: &str = "reply_broker";

/// Which site this deployment is, as its new-order messages tell partners (DESIGN §7,
/// several datacenters).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    /// `CARTBUS_DATACENTER`.
    pub datacenter: String,
    /// `CARTBUS_REPLY_BROKER`, or the broker's own `amqp://host:port/vhost`; `None` on the
    /// embedded queue unless configured.
    pub reply_broker: Option<String>,
}

/// The `new-order` message for `partner`: message-id and correlation-id are the order id
/// (partners dedupe on it), reply-to is the status address; with several sites, `site`
/// adds where the reply must go (`datacenter`, `reply_broker`).
pub fn new_order(order: &OrderView, partner: &str, reply_to: &str, site: Option<&Site>) -> Message {
    let body = NewOrder {
        schema: NEW_ORDER_SCHEMA,
        order_id: order.order_id,
        cart_id: order.cart_id,
        partner: partner.to_string(),
        customer: order.customer.clone(),
        shipping_address: order.shipping_address.clone(),
        currency: order.currency.clone(),
        lines: order.lines.clone(),
        total: order.total,
        created_at: order.created_at,
    };
    let body = serde_json::to_vec(&body).expect("a new-order always serialises");
    let order_id = order.order_id.to_string();
    let mut properties: super::message::Properties = [
        ("schema".to_string(), Property::Int(NEW_ORDER_SCHEMA)),
        ("partner".to_string(), Property::String(partner.to_string())),
        ("order_amount".to_string(), Property::Long(order.total)),
        (
            "currency".to_string(),
            Property::String(order.currency.clone()),
        ),
    ]
    .into();
    if let Some(site) = site {
        properties.insert(
            DATACENTER_PROPERTY.to_string(),
            Property::String(site.datacenter.clone()),
        );
        if let Some(broker) = &site.reply_broker {
            properties.insert(
                REPLY_BROKER_PROPERTY.to_string(),
                Property::String(broker.clone()),
            );
        }
    }
    Message {
        message_id: order_id.clone(),
        content_type: CONTENT_TYPE.to_string(),
        correlation_id: Some(order_id),
        reply_to: Some(reply_to.to_string()),
        subject: Some(NEW_ORDER_SUBJECT.to_string()),
        properties,
        body: Bytes::from(body),
    }
}

/// Fulfilment statuses a partner may report, in the order they happen.
pub const PARTNER_STATUSES: [&str; 3] = ["received_by_partner", "shipped", "delivered"];

/// A partner's status reply.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusReply {
    pub order_id: Uuid,
    pub status: String,
    #[serde(default)]
    pub tracking_id: Option<String>,
    pub partner: String,
}

/// The application property that carries the signature.
pub const SIGNATURE_PROPERTY: &str = "signature";

/// HMAC-SHA256 of `body` under `secret`, lowercase hex: what a partner puts in
/// `signature`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Whether `signature` (hex) is the HMAC of `body` under `secret`, compared in constant
/// time.
pub fn verify(secret: &[u8], body: &[u8], signature: &str) -> bool {
    let Ok(presented) = hex::decode(signature.trim()) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    mac.verify_slice(&presented).is_ok()
}

/// A signed reply message, as a partner (or the simulator) sends it; `datacenter` is the
/// one its new-order named, copied back.
pub fn reply(reply: &StatusReply, secret: &[u8], datacenter: Option<&str>) -> Message {
    let body = serde_json::to_vec(reply).expect("a reply always serialises");
    let signature = sign(secret, &body);
    let mut properties: super::message::Properties =
        [(SIGNATURE_PROPERTY.to_string(), Property::String(signature))].into();
    if let Some(datacenter) = datacenter {
        properties.insert(
            DATACENTER_PROPERTY.to_string(),
            Property::String(datacenter.to_string()),
        );
    }
    Message {
        message_id: format!("{}:{}", reply.order_id, reply.status),
        content_type: CONTENT_TYPE.to_string(),
        correlation_id: Some(reply.order_id.to_string()),
        properties,
        body: Bytes::from(body),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::order::Source;

    #[test]
    fn a_signature_verifies_only_for_its_body_and_key() {
        let body = br#"{"order_id":"x","status":"shipped"}"#;
        let signature = sign(b"contoso-secret-0001", body);
        assert_eq!(signature.len(), 64);
        assert!(verify(b"contoso-secret-0001", body, &signature));
        assert!(verify(
            b"contoso-secret-0001",
            body,
            &signature.to_uppercase()
        ));
        assert!(!verify(b"contoso-secret-0002", body, &signature));
        assert!(!verify(b"contoso-secret-0001", b"{}", &signature));
        assert!(!verify(b"contoso-secret-0001", body, "not hex"));
        assert!(!verify(b"contoso-secret-0001", body, &signature[..62]));
    }

    /// The `new-order` body is a contract with partners (`schema` 1): it reuses the order's
    /// views, so a field added to `GET /v1/orders` for the API must not reach partners
    /// unnoticed. Changing this test means a new `schema`, or types of its own.
    #[test]
    fn a_new_order_body_has_the_schema_1_shape() {
        let at: DateTime<Utc> = "2026-11-26T02:00:00Z".parse().expect("a time");
        let order = OrderView {
            order_id: Uuid::nil(),
            cart_id: Uuid::nil(),
            customer: CustomerView {
                id: Some("cust-42".into()),
                name: "Ada Lovelace".into(),
                email: "ada@example.com".into(),
                phone: None,
            },
            shipping_address: AddressView {
                line1: "12 Analytical St".into(),
                line2: None,
                city: "London".into(),
                region: Some("LND".into()),
                postal_code: Some("EC1A 1AA".into()),
                country: "GB".into(),
            },
            currency: "GBP".into(),
            lines: vec![LineView {
                sku: "BOOK-001".into(),
                name: "Notes on the Engine".into(),
                quantity: 2,
                unit_price: 1999,
            }],
            total: 3998,
            source: Source::Queue,
            created_at: at,
            transport_partner: Some("contoso".into()),
            tracking_id: None,
            status: Some("placed".into()),
            status_history: Vec::new(),
        };
        let message = new_order(&order, "contoso", "order-status", None);
        assert!(!message.properties.contains_key(DATACENTER_PROPERTY));
        let site = Site {
            datacenter: "eu".into(),
            reply_broker: Some("amqp://rabbit-eu.example:5672/shop".into()),
        };
        let sited = new_order(&order, "contoso", "order-status", Some(&site));
        assert_eq!(
            sited.properties.get(DATACENTER_PROPERTY),
            Some(&Property::String("eu".into()))
        );
        assert_eq!(
            sited.properties.get(REPLY_BROKER_PROPERTY),
            Some(&Property::String(
                "amqp://rabbit-eu.example:5672/shop".into()
            ))
        );
        assert_eq!(
            sited.body, message.body,
            "the site is a header, not the schema-1 body"
        );
        let body: serde_json::Value = serde_json::from_slice(&message.body).expect("JSON");
        let nil = Uuid::nil().to_string();
        assert_eq!(
            body,
            serde_json::json!({
                "schema": 1, "order_id": nil, "cart_id": nil, "partner": "contoso",
                "customer": {"id": "cust-42", "name": "Ada Lovelace", "email": "ada@example.com", "phone": null},
                "shipping_address": {"line1": "12 Analytical St", "line2": null, "city": "London",
                                     "region": "LND", "postal_code": "EC1A 1AA", "country": "GB"},
                "currency": "GBP",
                "lines": [{"sku": "BOOK-001", "name": "Notes on the Engine", "quantity": 2, "unit_price": 1999}],
                "total": 3998,
                "created_at": "2026-11-26T02:00:00Z"
            })
        );
        let read: NewOrder = serde_json::from_slice(&message.body).expect("a partner reads it");
        assert_eq!(read.shipping_address.country, "GB");
    }

    #[test]
    fn known_answer() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
