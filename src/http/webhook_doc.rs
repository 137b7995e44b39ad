//! The `webhooks` section of the OpenAPI document (issue 20): what cartbus POSTs to a
//! receiver for each event type — the Standard Webhooks headers and the envelope, whose
//! `data` is the type's payload schema (in `components`).

use serde_json::json;
use utoipa::Modify;
use utoipa::openapi::path::Paths;

use crate::domain::event::EventType;

pub struct Webhooks;

/// The payload schema of each type, as named in `components`.
fn payload(kind: EventType) -> &'static str {
    match kind {
        EventType::CheckoutOrdered => "CheckoutOrderedEvent",
        EventType::CheckoutRejected => "CheckoutRejectedEvent",
        EventType::CheckoutPaymentUnknown => "CheckoutPaymentUnknownEvent",
        EventType::OrderStatusChanged => "OrderStatusChangedEvent",
    }
}

fn header(name: &str, description: &str, example: &str) -> serde_json::Value {
    json!({
        "name": name, "in": "header", "required": true, "description": description,
        "schema": {"type": "string"}, "example": example
    })
}

impl Modify for Webhooks {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let mut hooks = serde_json::Map::new();
        for kind in EventType::ALL {
            let operation = json!({
                "post": {
                    "tags": ["webhooks"],
                    "summary": format!("{kind}: what a receiver gets"),
                    "description": "Signed as Standard Webhooks: verify `webhook-signature` over `webhook-id.webhook-timestamp.body` with the endpoint's `whsec_` secret (any one `v1,` signature may match: during a rotation there are two), refuse a timestamp more than 5 minutes off, and dedupe on `webhook-id`: an event can arrive more than once. One cart's events arrive in the order they happened.",
                    "operationId": format!("webhook_{}", kind.as_str().replace('.', "_")),
                    "parameters": [
                        header("webhook-id", "The event's id: the same on every delivery of it (the dedupe key).", "evt_4f1c2b7e9a3d5c6b8e0f1a2b3c4d5e6f"),
                        header("webhook-timestamp", "Seconds since the Unix epoch, when this call was made.", "1796612400"),
                        header("webhook-signature", "`v1,` + base64 HMAC-SHA256 of `id.timestamp.body`, one per signing secret, space-separated.", "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="),
                    ],
                    "requestBody": {
                        "required": true,
                        "content": {"application/json": {"schema": {
                            "type": "object",
                            "required": ["type", "timestamp", "data"],
                            "properties": {
                                "type": {"type": "string", "enum": [kind.as_str()]},
                                "timestamp": {"type": "string", "format": "date-time", "description": "When the change was recorded."},
                                "data": {"$ref": format!("#/components/schemas/{}", payload(kind))}
                            }
                        }}}
                    },
                    "responses": {
                        "2XX": {"description": "Delivered: not sent again."},
                        "410": {"description": "Gone: the endpoint is disabled and sent nothing more until an operator enables it."},
                        "default": {"description": "Not delivered: sent again later, with doubling waits, the cart's later events held back."}
                    }
                }
            });
            hooks.insert(kind.as_str().to_string(), operation);
        }
        match serde_json::from_value::<Paths>(serde_json::Value::Object(hooks)) {
            Ok(paths) => openapi.webhooks = Some(paths),
            Err(e) => {
                tracing::error!(error = %e, "the OpenAPI webhooks section does not build: a bug")
            }
        }
    }
}
