//! Examples for the webhook operations' OpenAPI document, built from the very types and
//! errors the handlers answer with.

use serde_json::{Value, json};

use super::super::problem::ApiError;
use super::{Created, DeliveriesPage, DeliveryView, EndpointList, EndpointView, Replayed, Rotated};

const ENDPOINT: &str = "ep_01936f0e8a6c7d2e9b415c3f2a1d0e77";

fn value(example: impl serde::Serialize) -> Value {
    serde_json::to_value(example).expect("an example serialises")
}

fn at(time: &str) -> chrono::DateTime<chrono::Utc> {
    time.parse().expect("an example time is RFC 3339")
}

fn endpoint_view() -> EndpointView {
    EndpointView {
        id: ENDPOINT.into(),
        url: "https://shop.example/hooks/cartbus".into(),
        description: "storefront order emails".into(),
        event_types: vec!["checkout.ordered", "checkout.rejected"],
        state: "failing",
        state_reason: Some(
            "event evt_4f1c2b7e9a3d5c6b8e0f1a2b3c4d5e6f failed 16 times; last: the receiver answered 503".into(),
        ),
        state_since: at("2026-12-07T02:10:00Z"),
        next_probe_at: Some(at("2026-12-07T03:10:00Z")),
        pending: 412,
        oldest_pending_at: Some(at("2026-12-06T20:02:11Z")),
        old_secret_until: None,
        from_configuration: false,
        created_at: at("2026-12-01T09:00:00Z"),
    }
}

pub fn endpoint() -> Value {
    value(endpoint_view())
}

pub fn created() -> Value {
    let mut endpoint = endpoint_view();
    endpoint.state = "enabled";
    endpoint.state_reason = None;
    endpoint.next_probe_at = None;
    endpoint.pending = 0;
    endpoint.oldest_pending_at = None;
    value(Created {
        endpoint,
        secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
    })
}

pub fn list() -> Value {
    value(EndpointList {
        items: vec![endpoint_view()],
    })
}

pub fn deliveries() -> Value {
    value(DeliveriesPage {
        items: vec![DeliveryView {
            id: 90_211,
            event_id: "evt_4f1c2b7e9a3d5c6b8e0f1a2b3c4d5e6f".into(),
            kind: "checkout.ordered".into(),
            cart_id: uuid::uuid!("6f1c0c1e-5d7b-4a53-9b1a-2f6a3d9f0c11"),
            state: "pending".into(),
            attempts: 16,
            next_attempt_at: Some(at("2026-12-07T03:10:00Z")),
            last_status: Some(503),
            last_error: Some("the receiver answered 503".into()),
            last_attempt_at: Some(at("2026-12-07T02:10:00Z")),
            delivered_at: None,
        }],
        next: None,
    })
}

pub fn rotated() -> Value {
    value(Rotated {
        secret: "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD".into(),
        old_secret_until: at("2026-12-08T02:00:00Z"),
    })
}

pub fn replayed() -> Value {
    value(Replayed {
        queued: 240,
        truncated: false,
    })
}

pub fn update_request() -> Value {
    json!({"event_types": ["checkout.ordered", "order.status_changed"]})
}

pub fn rotate_request() -> Value {
    json!({"old_secret_seconds": 3600})
}

pub fn replay_request() -> Value {
    json!({"since": "2026-12-07T01:00:00Z", "until": "2026-12-07T02:00:00Z"})
}

pub fn not_found() -> Value {
    value(ApiError::NotFound(format!("no webhook endpoint {ENDPOINT}")).problem())
}

pub fn from_configuration() -> Value {
    value(
        ApiError::Conflict(
            "the `config` endpoint's secret is set by configuration (CARTBUS_WEBHOOK_URL, CARTBUS_WEBHOOK_SECRET, CARTBUS_WEBHOOK_EVENTS)".into(),
        )
        .problem(),
    )
}

pub fn url_refused() -> Value {
    value(
        ApiError::field(
            "/url",
            "127.0.0.1 is a loopback address; refused (CARTBUS_WEBHOOK_ALLOW_NETWORKS lets a network through)",
        )
        .problem(),
    )
}

pub fn types_invalid() -> Value {
    value(
        ApiError::field(
            "/event_types",
            "unknown event type `order.shipped`: one of checkout.ordered, checkout.rejected, checkout.payment_unknown, order.status_changed",
        )
        .problem(),
    )
}

pub fn replay_invalid() -> Value {
    value(ApiError::field("", "give event_ids, or since (and until) for a time range").problem())
}

pub fn rotate_invalid() -> Value {
    value(ApiError::field("/old_secret_seconds", "must be an integer from 0 to 604800").problem())
}

pub fn state_invalid() -> Value {
    value(ApiError::field("/state", "must be pending or delivered").problem())
}
