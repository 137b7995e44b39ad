//! A partner's status reply off the status queue: `fulfilment::replies::check` (JSON form,
//! partner, HMAC signature, status, correlation-id, tracking id) on any body, signature and
//! correlation-id. It must never panic, and it must take a reply exactly when the rules
//! (DESIGN §7) hold: this target restates them independently and compares.
//!
//! Input layout (see `Input`): signature and correlation-id first, the body is the rest.

#![no_main]

use cartbus::config::Config;
use cartbus::config::fulfilment::FulfilmentSettings;
use cartbus::domain::partner::{
    self as message, PARTNER_STATUSES, SIGNATURE_PROPERTY, StatusReply,
};
use cartbus::queue::{Message, Property};
use cartbus::service::replies;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use std::sync::LazyLock;
use uuid::Uuid;

const SECRET: &str = "contoso-secret-0001";
const MAX_TRACKING_ID: usize = 100;

/// contoso signs its replies; fabrikam is a partner without a secret.
static SETTINGS: LazyLock<FulfilmentSettings> = LazyLock::new(|| {
    Config::from_vars([
        ("CARTBUS_ROUTES", "GB=contoso,*=fabrikam"),
        ("CARTBUS_PARTNER_CONTOSO_SECRET", SECRET),
    ])
    .expect("valid fulfilment settings")
    .fulfilment
});

#[derive(Arbitrary, Debug)]
enum Signature {
    /// HMAC-SHA256 of the body under contoso's secret, as contoso signs.
    Signed,
    /// The same in upper-case hex with spaces around it.
    SignedLoosely,
    /// HMAC-SHA256 of the body under another key.
    SignedByAnother,
    Missing,
    NotAString(i64),
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum Correlation {
    Absent,
    /// The body's `order_id` as written.
    OfTheOrder,
    Other(String),
}

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    signature: Signature,
    correlation: Correlation,
    /// Raw bytes: `&[u8]` takes the rest of the input as it is (a `Vec<u8>` would not).
    body: &'a [u8],
}

fuzz_target!(|input: Input<'_>| {
    let body = input.body;
    let signature = match input.signature {
        Signature::Signed => Some(Property::String(message::sign(SECRET.as_bytes(), body))),
        Signature::SignedLoosely => Some(Property::String(format!(
            " {} ",
            message::sign(SECRET.as_bytes(), body).to_uppercase()
        ))),
        Signature::SignedByAnother => Some(Property::String(message::sign(
            b"fabrikam-secret-0001",
            body,
        ))),
        Signature::Missing => None,
        Signature::NotAString(n) => Some(Property::Long(n)),
        Signature::Other(s) => Some(Property::String(s)),
    };
    let correlation_id = match input.correlation {
        Correlation::Absent => None,
        Correlation::OfTheOrder => Some(
            serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| v.get("order_id")?.as_str().map(str::to_string))
                .unwrap_or_default(),
        ),
        Correlation::Other(s) => Some(s),
    };
    let received = Message {
        message_id: "reply".into(),
        content_type: "application/json".into(),
        correlation_id,
        properties: signature
            .map(|s| (SIGNATURE_PROPERTY.to_string(), s))
            .into_iter()
            .collect(),
        body: body.to_vec().into(),
        ..Default::default()
    };

    let should_take = follows_the_rules(&received);
    match replies::check(&SETTINGS, &received) {
        Ok(reply) => {
            let sent: StatusReply = serde_json::from_slice(&received.body).expect("took a reply");
            assert!(
                should_take.is_some(),
                "took a reply that breaks the rules: {reply:?}"
            );
            assert_eq!(reply.partner, "contoso");
            assert_eq!(reply.order_id, sent.order_id);
            assert_eq!(reply.status, sent.status);
            assert_eq!(reply.tracking_id, sent.tracking_id);
        }
        Err(refusal) => {
            assert!(
                should_take.is_none(),
                "refused a reply that follows the rules: {refusal:?}"
            );
            assert!(!refusal.detail.is_empty());
        }
    }
});

/// DESIGN §7's rules for a reply, written out again without the code under test.
fn follows_the_rules(received: &Message) -> Option<StatusReply> {
    let reply: StatusReply = serde_json::from_slice(&received.body).ok()?;
    let expected = message::sign(SECRET.as_bytes(), &received.body);
    let signed = matches!(
        received.properties.get(SIGNATURE_PROPERTY),
        Some(Property::String(s)) if s.trim().eq_ignore_ascii_case(&expected)
    );
    let correlated = received
        .correlation_id
        .as_deref()
        .is_none_or(|c| Uuid::try_parse(c).ok() == Some(reply.order_id));
    let tracking_ok = reply.tracking_id.as_deref().is_none_or(|t| {
        !t.trim().is_empty()
            && t.chars().count() <= MAX_TRACKING_ID
            && !t.chars().any(char::is_control)
    });
    (reply.partner.eq_ignore_ascii_case("contoso")
        && signed
        && PARTNER_STATUSES.contains(&reply.status.as_str())
        && correlated
        && tracking_ok)
        .then_some(reply)
}
