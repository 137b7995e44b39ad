//! Examples for the admin operations' OpenAPI document. Responses are built from the very
//! types (and, for problems, the very errors) the handlers answer with, so an example
//! cannot drift from its schema; tests/openapi.rs sends each request example to a server.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use uuid::{Uuid, uuid};

use super::admin::SWITCH_UNAVAILABLE;
use super::deadletters::{DeadLetterDetail, DeadLetterPage};
use super::events::{EventView, EventsPage};
use super::outbox::OutboxPage;
use super::payments::CANNOT_WRITE_ORDERS;
use super::payments::PaymentList;
use super::problem::{ApiError, DATABASE_UNAVAILABLE};
use crate::domain::FieldError;
use crate::domain::payment::{PaymentState, PaymentView};
use crate::queue::QueueConnection;
use crate::service::drain::{Backlog, Status};
use crate::store::dead_letters::{AuditEntry, DeadLetterView};
use crate::store::outbox::DispatchRow;
use crate::store::switch::{HistoryEntry, InstanceRow, Switch};

const CART: Uuid = uuid!("6f1c0c1e-5d7b-4a53-9b1a-2f6a3d9f0c11");
const ORDER: Uuid = uuid!("01936f0e-8a6c-7d2e-9b41-5c3f2a1d0e77");

fn value(example: impl Serialize) -> Value {
    serde_json::to_value(example).expect("an example serialises")
}

fn at(time: &str) -> DateTime<Utc> {
    time.parse().expect("an example time is RFC 3339")
}

fn problem(error: ApiError) -> Value {
    value(error.problem())
}

fn field(pointer: &str, detail: &str) -> ApiError {
    ApiError::field(pointer, detail)
}

pub fn admin_off() -> Value {
    problem(ApiError::NotFound(
        "the admin API is off: CARTBUS_ADMIN_TOKEN is not set".into(),
    ))
}

pub fn unavailable() -> Value {
    problem(ApiError::unavailable(DATABASE_UNAVAILABLE))
}

pub fn switch_unavailable() -> Value {
    problem(ApiError::unavailable(SWITCH_UNAVAILABLE))
}

fn instance(name: &str, version: &str, state: &str, in_flight: i64, seen: i64) -> InstanceRow {
    InstanceRow {
        instance: name.into(),
        version: version.into(),
        schema_version: 14,
        state: state.into(),
        in_flight,
        processed: 48_210,
        accepted: 0,
        seen_revision: seen,
        started_at: at("2026-11-25T22:10:04Z"),
        last_seen: at("2026-11-26T02:14:31.250Z"),
    }
}

fn paused_switch() -> Switch {
    Switch {
        desired: "paused".into(),
        active_version: Some("1.9.0".into()),
        reason: Some("deploy 2.0.0".into()),
        changed_at: at("2026-11-26T02:14:00Z"),
        changed_by: "ada via cartbus-a".into(),
        until: Some(at("2026-11-26T03:00:00Z")),
        revision: 7,
    }
}

/// Paused with carts waiting: the backlog grows and has no catch-up estimate.
/// A cluster of three nodes: the answering instance's connections spread over them.
fn connections() -> Vec<QueueConnection> {
    [
        ("hand-off publisher", "amqp://rabbit-c:5672"),
        ("publisher", "amqp://rabbit-a:5672"),
        (
            "receiver 0 (/amq/queue/checkout-carts)",
            "amqp://rabbit-a:5672",
        ),
        (
            "receiver 1 (/amq/queue/checkout-carts)",
            "amqp://rabbit-b:5672",
        ),
    ]
    .into_iter()
    .map(|(connection, node)| QueueConnection {
        connection: connection.into(),
        node: node.into(),
        since: at("2026-11-26T01:02:03Z"),
    })
    .collect()
}

fn paused_backlog() -> Backlog {
    Backlog {
        depth: Some(1_830),
        depth_stale: false,
        oldest_age_seconds: Some(31.4),
        intake_per_s: 58.2,
        drain_per_s: 0.0,
        catch_up_eta_seconds: None,
    }
}

pub fn status_running() -> Value {
    value(Status {
        switch: Switch {
            desired: "running".into(),
            active_version: Some("2.0.0".into()),
            reason: Some("deploy 2.0.0 done".into()),
            changed_at: at("2026-11-26T02:21:40Z"),
            changed_by: "ada via cartbus-b".into(),
            until: None,
            revision: 8,
        },
        drained: false,
        backlog: Backlog {
            depth: Some(1_204),
            depth_stale: false,
            oldest_age_seconds: Some(38.9),
            intake_per_s: 57.5,
            drain_per_s: 412.0,
            catch_up_eta_seconds: Some(3.4),
        },
        instances: vec![
            instance("cartbus-a", "1.9.0", "passive", 0, 8),
            instance("cartbus-b", "2.0.0", "running", 256, 8),
        ],
        broker_connections: connections(),
        datacenter: Some("eu".into()),
    })
}

pub fn status_drained() -> Value {
    value(Status {
        switch: paused_switch(),
        drained: true,
        backlog: paused_backlog(),
        instances: vec![
            instance("cartbus-a", "1.9.0", "paused", 0, 7),
            instance("cartbus-b", "2.0.0", "passive", 0, 7),
        ],
        broker_connections: connections(),
        datacenter: Some("eu".into()),
    })
}

pub fn status_pausing() -> Value {
    value(Status {
        switch: paused_switch(),
        drained: false,
        backlog: paused_backlog(),
        instances: vec![
            instance("cartbus-a", "1.9.0", "pausing", 12, 7),
            instance("cartbus-b", "2.0.0", "passive", 0, 7),
        ],
        broker_connections: connections(),
        datacenter: Some("eu".into()),
    })
}

pub fn pause_request() -> Value {
    json!({ "reason": "deploy 2.0.0", "wait_seconds": 60 })
}

pub fn pause_invalid() -> Value {
    problem(field(
        "/wait_seconds",
        "must be a whole number of seconds from 0 to 300",
    ))
}

pub fn resume_request() -> Value {
    json!({ "version": "2.0.0", "reason": "deploy 2.0.0 done" })
}

pub fn no_live_instance() -> Value {
    problem(ApiError::NoLiveInstance {
        version: "2.0.1".into(),
        live: vec!["1.9.0".into(), "2.0.0".into()],
    })
}

pub fn resume_invalid() -> Value {
    problem(field("/version", "must not be empty"))
}

pub fn history() -> Value {
    value(vec![
        HistoryEntry {
            revision: 8,
            action: "resume".into(),
            desired: "running".into(),
            active_version: Some("2.0.0".into()),
            reason: None,
            until: None,
            changed_at: at("2026-11-26T02:21:40Z"),
            changed_by: "ada via cartbus-b".into(),
        },
        HistoryEntry {
            revision: 7,
            action: "pause".into(),
            desired: "paused".into(),
            active_version: Some("1.9.0".into()),
            reason: Some("deploy 2.0.0".into()),
            until: Some(at("2026-11-26T03:00:00Z")),
            changed_at: at("2026-11-26T02:14:00Z"),
            changed_by: "ada via cartbus-a".into(),
        },
    ])
}

pub fn limit_invalid() -> Value {
    problem(field("/limit", "must be from 1 to 1000"))
}

pub fn outbox_page() -> Value {
    value(OutboxPage {
        items: vec![DispatchRow {
            order_id: ORDER,
            process_status: "critical_error".into(),
            retry_count: 10,
            last_error: Some("queue refused the message: amqp:not-found".into()),
            partner: Some("contoso".into()),
            locked_by: None,
            locked_until: None,
            next_attempt_at: at("2026-11-26T01:58:12Z"),
            created_at: at("2026-11-26T01:40:03Z"),
            processed_at: None,
        }],
        next: None,
        counts: [("pending", 3), ("error", 1), ("critical_error", 1)]
            .into_iter()
            .map(|(status, n)| (status.to_string(), n))
            .collect(),
    })
}

pub fn outbox_invalid() -> Value {
    problem(field(
        "/status",
        "must be one of critical_error, error, pending, processed",
    ))
}

/// A cart's events: ordered, then shipped; ids and payloads as the domain makes them.
pub fn events_page() -> Value {
    use crate::domain::event::{CheckoutOrdered, NewEvent, OrderStatusChanged};
    let ordered = NewEvent::ordered(
        &CheckoutOrdered {
            order_id: ORDER,
            cart_id: CART,
            total: 3998,
            currency: "GBP".into(),
            source: crate::domain::order::Source::Queue,
        },
        at("2026-11-26T01:40:03Z"),
    );
    let shipped = NewEvent::status_changed(
        &OrderStatusChanged {
            order_id: ORDER,
            cart_id: CART,
            status: "shipped".into(),
            partner: Some("contoso".into()),
            tracking_id: Some("TRK-01a2b3c4d5e6".into()),
        },
        at("2026-11-26T01:52:40Z"),
    );
    let view = |event: NewEvent, seq| EventView {
        id: event.id,
        kind: event.kind.as_str().into(),
        timestamp: event.at,
        seq,
        data: serde_json::from_str(&event.data).unwrap_or_default(),
    };
    value(EventsPage {
        items: vec![view(ordered, 1041), view(shipped, 1187)],
        next: None,
    })
}

pub fn events_invalid() -> Value {
    problem(field("/cart_id", crate::domain::UUID_FORM))
}

pub fn order_id_invalid() -> Value {
    problem(field("/order_id", crate::domain::UUID_FORM))
}

pub fn outbox_not_stuck() -> Value {
    problem(ApiError::Conflict(format!(
        "order {ORDER} has no outbox row in critical_error or error"
    )))
}

fn unknown_payment() -> PaymentView {
    PaymentView {
        cart_id: CART,
        amount: 3998,
        currency: "GBP".into(),
        state: PaymentState::Unknown,
        payment_id: None,
        detail: Some("no answer within 5000 ms".into()),
        called_at: at("2026-11-26T01:12:09Z"),
        result_at: Some(at("2026-11-26T01:12:14Z")),
        resolved_by: None,
        resolved_reason: None,
        resolved_at: None,
        order_id: None,
    }
}

pub fn payment_list() -> Value {
    value(PaymentList {
        items: vec![unknown_payment()],
    })
}

pub fn payments_invalid() -> Value {
    problem(field(
        "/state",
        "must be unknown, captured-without-order or all",
    ))
}

pub fn resolve_request() -> Value {
    json!({
        "outcome": "captured",
        "reason": "charge ch_3NxQ2L succeeded per the payment dashboard",
        "payment_id": "ch_3NxQ2L"
    })
}

pub fn payment_resolved() -> Value {
    value(PaymentView {
        state: PaymentState::ResolvedCaptured,
        payment_id: Some("ch_3NxQ2L".into()),
        resolved_by: Some("ada via cartbus-a".into()),
        resolved_reason: Some("charge ch_3NxQ2L succeeded per the payment dashboard".into()),
        resolved_at: Some(at("2026-11-26T02:30:00Z")),
        order_id: Some(ORDER),
        ..unknown_payment()
    })
}

pub fn resolve_bad_cart_id() -> Value {
    problem(ApiError::bad_request(format!(
        "cart_id {}",
        crate::domain::UUID_FORM
    )))
}

pub fn resolve_not_found() -> Value {
    problem(ApiError::NotFound(format!(
        "no payment step for cart {CART}"
    )))
}

pub fn resolve_conflict() -> Value {
    problem(ApiError::Conflict(format!(
        "the payment of cart {CART} is captured, not unknown"
    )))
}

pub fn resolve_invalid() -> Value {
    problem(ApiError::Validation(vec![
        FieldError {
            pointer: "/outcome".into(),
            detail: "must be captured or failed".into(),
        },
        FieldError {
            pointer: "/reason".into(),
            detail: "is required: say what the check found".into(),
        },
    ]))
}

pub fn cannot_write_orders() -> Value {
    problem(ApiError::unavailable(CANNOT_WRITE_ORDERS))
}

// Dead letters.

const DEAD_LETTER: i64 = 17;
const JOB: Uuid = uuid!("8d6f2b9e-0c1a-4f3e-9d2b-7a5c4e3f2a10");

fn dead_letter() -> DeadLetterView {
    DeadLetterView {
        id: DEAD_LETTER,
        message_id: CART.to_string(),
        source: "/queues/carts".into(),
        reason: "max-attempts".into(),
        detail: "failed 5 times; last: database refused the order: null value in column \
                 \"ship_region\" violates not-null constraint"
            .into(),
        attempts: 5,
        times_seen: 1,
        first_seen: at("2026-11-26T01:58:12Z"),
        last_seen: at("2026-11-26T01:58:12Z"),
        content_type: "application/json".into(),
        body: json!({
            "schema": 1,
            "accepted_at": "2026-11-26T01:58:07Z",
            "cart": {"cart_id": CART, "currency": "GBP", "total": 3998, "lines": [
                {"sku": "MUG-01", "name": "Mug", "quantity": 2, "unit_price": 1999}]}
        }),
        properties: json!({"schema": {"int": 1}, "total": {"long": 3998},
                           "currency": {"string": "GBP"}, "country": {"string": "GB"}}),
        deleted_at: None,
        deleted_by: None,
        deleted_why: None,
        resubmits: 0,
        resolved_at: None,
        resolution: None,
        order_id: None,
    }
}

pub fn dead_letter_page() -> Value {
    value(DeadLetterPage {
        items: vec![dead_letter()],
        next: None,
        counts: [
            ("max-attempts".to_string(), 40),
            ("conflict".to_string(), 1),
        ]
        .into(),
    })
}

pub fn dead_letters_invalid() -> Value {
    problem(field(
        "/since",
        "must be an RFC 3339 time, e.g. 2026-11-26T02:00:00Z",
    ))
}

pub fn dead_letter_not_found() -> Value {
    problem(ApiError::NotFound(format!("no dead letter {DEAD_LETTER}")))
}

pub fn dead_letter_id_invalid() -> Value {
    problem(field(
        "/id",
        "must be a dead letter id (a positive integer)",
    ))
}

fn audit_entry(action: &str, outcome: Option<&str>, reason: &str) -> AuditEntry {
    AuditEntry {
        action: action.into(),
        outcome: outcome.map(Into::into),
        order_id: outcome.map(|_| ORDER),
        actor: "ada via cartbus-a".into(),
        reason: Some(reason.into()),
        detail: outcome.map(|_| format!("order {ORDER} created for cart {CART}")),
        job_id: None,
        at: at("2026-11-26T02:31:00Z"),
    }
}

pub fn dead_letter_resolved() -> Value {
    value(DeadLetterDetail {
        dead_letter: DeadLetterView {
            resubmits: 1,
            resolved_at: Some(at("2026-11-26T02:31:00Z")),
            resolution: Some("created-order".into()),
            order_id: Some(ORDER),
            ..dead_letter()
        },
        audit: vec![audit_entry(
            "resubmit",
            Some("created-order"),
            "constraint fixed in 1.4.2",
        )],
    })
}

pub fn delete_request() -> Value {
    json!({"reason": "test order from the storefront team"})
}

pub fn dead_letter_deleted() -> Value {
    value(DeadLetterDetail {
        dead_letter: DeadLetterView {
            deleted_at: Some(at("2026-11-26T02:31:00Z")),
            deleted_by: Some("ada via cartbus-a".into()),
            deleted_why: Some("test order from the storefront team".into()),
            ..dead_letter()
        },
        audit: vec![audit_entry(
            "delete",
            None,
            "test order from the storefront team",
        )],
    })
}

pub fn delete_invalid() -> Value {
    problem(field("/reason", "is required: say why it can go"))
}

pub fn resubmit_invalid() -> Value {
    problem(field(
        "/cart/lines/0/quantity",
        "must be an integer between 1 and 10000",
    ))
}

pub fn bulk_request() -> Value {
    json!({
        "job_id": JOB,
        "filter": {"reason": "max-attempts"},
        "reason": "constraint fixed in 1.4.2"
    })
}

pub fn bulk_invalid() -> Value {
    problem(field(
        "/filter",
        "must name at least one of reason, source, since (a bulk resubmit of everything is too easy to start by mistake)",
    ))
}

pub fn job_mismatch() -> Value {
    problem(ApiError::Conflict(format!(
        "job {JOB} exists with another filter; use a new job_id for a new set"
    )))
}

pub fn job_not_found() -> Value {
    problem(ApiError::NotFound(format!("no resubmit job {JOB}")))
}

pub fn job_id_invalid() -> Value {
    problem(field("/job_id", "must be a UUID"))
}

pub fn resubmit_request() -> Value {
    json!({
        "reason": "the storefront sent quantity 0; the customer confirmed 2",
        "cart": {
            "cart_id": CART,
            "customer": {"name": "Ada Lovelace", "email": "ada@example.com"},
            "shipping_address": {"line1": "12 Analytical St", "city": "London",
                                 "postal_code": "EC1A 1AA", "country": "GB"},
            "currency": "GBP",
            "lines": [{"sku": "MUG-01", "name": "Mug", "quantity": 2, "unit_price": 1999}],
            "total": 3998
        }
    })
}
