//! Examples for the admin operations' OpenAPI document. Responses are built from the very
//! types (and, for problems, the very errors) the handlers answer with, so an example
//! cannot drift from its schema; tests/openapi.rs sends each request example to a server.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use uuid::{Uuid, uuid};

use super::outbox::OutboxPage;
use super::payments::PaymentList;
use super::problem::ApiError;
use crate::checkout::FieldError;
use crate::control::store::{HistoryEntry, InstanceRow, Switch};
use crate::control::{Backlog, Status};
use crate::fulfilment::store::DispatchRow;
use crate::payments::{PaymentState, PaymentView};

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

pub fn unauthorized() -> Value {
    problem(ApiError::Unauthorized)
}

pub fn admin_off() -> Value {
    problem(ApiError::NotFound(
        "the admin API is off: CARTBUS_ADMIN_TOKEN is not set".into(),
    ))
}

pub fn unavailable() -> Value {
    problem(ApiError::Unavailable {
        detail: "the orders database is unavailable".into(),
        retry_after: std::time::Duration::from_secs(5),
    })
}

pub fn switch_unavailable() -> Value {
    problem(ApiError::Unavailable {
        detail: "the database holding the drain switch is unavailable".into(),
        retry_after: std::time::Duration::from_secs(5),
    })
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
fn paused_backlog() -> Backlog {
    Backlog {
        depth: Some(1_830),
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
            oldest_age_seconds: Some(38.9),
            intake_per_s: 57.5,
            drain_per_s: 412.0,
            catch_up_eta_seconds: Some(3.4),
        },
        instances: vec![
            instance("cartbus-a", "1.9.0", "passive", 0, 8),
            instance("cartbus-b", "2.0.0", "running", 256, 8),
        ],
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

pub fn order_id_invalid() -> Value {
    problem(field("/order_id", "must be a UUID"))
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
    problem(ApiError::bad_request("cart_id must be a UUID"))
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
    problem(ApiError::Unavailable {
        detail: "this instance cannot write orders now (database down, or its schema is newer \
                 than this version); try another instance or later"
            .into(),
        retry_after: std::time::Duration::from_secs(5),
    })
}
