//! A smoke checkout (issue 21): carts run through *this instance's* version of the whole
//! path — validate, encode, a round trip through a scratch address on the same queue,
//! decode, the conversion in an orders transaction that is rolled back, and the
//! new-order message it would send — each step timed and reported, and nothing left
//! behind: no order, no event, no outbox row, no message, no payment call, no switch
//! change. For the staging slot before a swap: it runs on a passive instance too, and a
//! fenced one reports the fence.

use std::time::{Duration, Instant};

use chrono::Utc;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::hand_off::audit_threshold;
use super::payment::{Gateway, Verdict};
use super::place::{self, Outcome};
use crate::config::fulfilment::FulfilmentSettings;
use crate::domain::cart_message::{self, Decoded};
use crate::domain::message::Message;
use crate::domain::order::{OrderView, Source};
use crate::domain::partner;
use crate::domain::payment::CallOutcome;
use crate::domain::{Cart, Reason};
use crate::queue::{Queue, Settlement};
use crate::store::{Db, StoreError};

/// Most carts one smoke run takes.
pub const MAX_CARTS: usize = 20;
/// Longest wait for the scratch round trip.
const ROUND_TRIP: Duration = Duration::from_secs(5);

/// What a smoke run needs.
pub struct Smoke<'a> {
    pub db: &'a Db,
    pub queue: &'a dyn Queue,
    pub fulfilment: &'a FulfilmentSettings,
    /// The scratch address: this instance's own, never the live cart address.
    pub scratch: String,
    /// The newest migration this binary knows, and the version it runs.
    pub known_schema: i64,
    pub version: &'a str,
    pub instance: &'a str,
    /// `CARTBUS_PAYMENT_SMOKE_URL`'s gateway, where it is set: the provider's sandbox.
    pub payments: Option<&'a Gateway>,
}

/// One step of one cart.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct StepReport {
    /// `fence`, `validate`, `encode`, `queue round trip`, `decode`, `payment`, `convert`,
    /// `render`.
    pub step: &'static str,
    pub ok: bool,
    /// How long it took.
    pub ms: f64,
    pub detail: String,
}

/// What became of one cart.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct CartReport {
    pub cart_id: Option<Uuid>,
    /// `would-create-order`, `duplicate` (of an order made live, or earlier in this run),
    /// `conflict`, `invalid`, `unknown-schema`, or `failed` (a step could not run).
    pub outcome: String,
    pub detail: String,
    /// The order it would create, or the one it duplicates or conflicts with.
    pub order_id: Option<Uuid>,
    pub steps: Vec<StepReport>,
    /// The order as it would be written.
    pub order: Option<OrderView>,
    /// The message the fulfilment hand-off would send, and where.
    pub hand_off: Option<String>,
}

/// A smoke run.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct SmokeReport {
    pub version: String,
    pub instance: String,
    /// Every step of every cart ran (an `invalid` cart's refusal is a result, not a
    /// failure): what a deploy pipeline checks, beside each cart's expected outcome.
    pub ok: bool,
    /// Before any cart: whether this instance may write orders at all.
    pub fence: StepReport,
    pub carts: Vec<CartReport>,
    pub ms: f64,
}

impl SmokeReport {
    /// One line for the page: the outcomes by count, or what failed.
    pub fn summary(&self) -> String {
        if !self.fence.ok {
            return format!("fence: {}", self.fence.detail);
        }
        let mut counts: Vec<(&str, usize)> = Vec::new();
        for cart in &self.carts {
            match counts.iter_mut().find(|(o, _)| *o == cart.outcome) {
                Some((_, n)) => *n += 1,
                None => counts.push((&cart.outcome, 1)),
            }
        }
        let mut line = counts
            .iter()
            .map(|(outcome, n)| match n {
                1 => outcome.to_string(),
                n => format!("{outcome} ×{n}"),
            })
            .collect::<Vec<_>>()
            .join(", ");
        if let Some(failed) = self.carts.iter().find(|c| c.outcome == "failed") {
            line.push_str(&format!("; first failure: {}", failed.detail));
        }
        line
    }
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

fn step(name: &'static str, started: Instant, ok: bool, detail: impl Into<String>) -> StepReport {
    StepReport {
        step: name,
        ok,
        ms: ms(started),
        detail: detail.into(),
    }
}

impl Smoke<'_> {
    pub async fn run(&self, carts: &[serde_json::Value]) -> SmokeReport {
        let started = Instant::now();
        let fence = self.fence().await;
        let mut reports = Vec::with_capacity(carts.len());
        if fence.ok {
            reports = self.carts(carts).await;
        }
        SmokeReport {
            version: self.version.to_string(),
            instance: self.instance.to_string(),
            ok: fence.ok && reports.iter().all(|r| r.outcome != "failed"),
            fence,
            carts: reports,
            ms: ms(started),
        }
    }

    async fn fence(&self) -> StepReport {
        let started = Instant::now();
        match self.db.applied_schema_version().await {
            Ok(applied) if applied > self.known_schema => step(
                "fence",
                started,
                false,
                format!(
                    "fenced: the database is at schema {applied}, newer than this version ({}) knows ({}); it writes no orders — smoke the version that migrated it",
                    self.version, self.known_schema
                ),
            ),
            Ok(applied) => step(
                "fence",
                started,
                true,
                format!(
                    "schema {applied}; this version knows up to {}",
                    self.known_schema
                ),
            ),
            Err(e) => step(
                "fence",
                started,
                false,
                format!("the orders database did not answer: {e}"),
            ),
        }
    }

    async fn carts(&self, carts: &[serde_json::Value]) -> Vec<CartReport> {
        // Validate and encode each.
        let mut reports = Vec::with_capacity(carts.len());
        let mut sent: Vec<(usize, Message)> = Vec::new();
        for (i, value) in carts.iter().enumerate() {
            let started = Instant::now();
            let cart_id = value["cart_id"]
                .as_str()
                .and_then(|id| Uuid::parse_str(id).ok());
            let mut report = CartReport {
                cart_id,
                outcome: String::new(),
                detail: String::new(),
                order_id: None,
                steps: Vec::new(),
                order: None,
                hand_off: None,
            };
            match Cart::parse(value) {
                Err(errors) => {
                    let detail = errors
                        .iter()
                        .map(|e| format!("{}: {}", e.pointer, e.detail))
                        .collect::<Vec<_>>()
                        .join("; ");
                    report
                        .steps
                        .push(step("validate", started, false, detail.clone()));
                    report.outcome = "invalid".into();
                    report.detail = detail;
                }
                Ok(cart) => {
                    report
                        .steps
                        .push(step("validate", started, true, "the cart keeps the rules"));
                    let started = Instant::now();
                    let mut message = cart_message::encode(&cart, Utc::now());
                    // Unique in the run (the same cart may come twice, and a queue may
                    // keep one message per id); the cart's own id again before decoding.
                    message.message_id = format!("smoke-{}-{i}", Uuid::now_v7().simple());
                    report.steps.push(step(
                        "encode",
                        started,
                        true,
                        format!("{} bytes", message.body.len()),
                    ));
                    sent.push((i, message));
                }
            }
            reports.push(report);
        }
        if sent.is_empty() {
            return reports;
        }

        // The round trip, all of them at once, through the scratch address.
        let started = Instant::now();
        let (returned, left) = match self.round_trip(&sent).await {
            Ok(returned) => returned,
            Err(why) => {
                for (i, _) in &sent {
                    let report = &mut reports[*i];
                    report
                        .steps
                        .push(step("queue round trip", started, false, why.clone()));
                    report.outcome = "failed".into();
                    report.detail = why.clone();
                }
                return reports;
            }
        };
        let trip = ms(started);

        // Decode and pay each first, outside any transaction: a payment call never holds
        // the orders database (nor, on SQLite, its write lock). A cart sent twice in the
        // run is paid for once, as the consumer would.
        let mut ready: Vec<(usize, Box<Cart>, Verdict)> = Vec::new();
        let mut paid: Vec<(Uuid, Verdict)> = Vec::new();
        for ((i, _), message) in sent.iter().zip(returned) {
            let report = &mut reports[*i];
            report.steps.push(StepReport {
                step: "queue round trip",
                ok: true,
                ms: trip,
                detail: format!("through {} and back, body unchanged; {left}", self.scratch),
            });
            let started = Instant::now();
            let message = Message {
                message_id: report.cart_id.map(|id| id.to_string()).unwrap_or_default(),
                ..message
            };
            let cart = match cart_message::decode(&message) {
                Decoded::Cart(cart) => cart,
                Decoded::UnknownSchema(why) | Decoded::Invalid(why) => {
                    report
                        .steps
                        .push(step("decode", started, false, why.clone()));
                    report.outcome = "failed".into();
                    report.detail = why;
                    continue;
                }
            };
            report
                .steps
                .push(step("decode", started, true, "schema known"));
            let cart_id = cart.cart_id.as_uuid();
            let verdict = match paid.iter().find(|(id, _)| *id == cart_id) {
                Some((_, verdict)) => {
                    report.steps.push(step(
                        "payment",
                        Instant::now(),
                        true,
                        "as for this cart earlier in the run",
                    ));
                    verdict.clone()
                }
                None => {
                    let Some(verdict) = self.pay(&cart, report).await else {
                        continue;
                    };
                    paid.push((cart_id, verdict.clone()));
                    verdict
                }
            };
            ready.push((*i, cart, verdict));
        }
        if ready.is_empty() {
            return reports;
        }

        // Convert each in one short transaction that is rolled back: a cart sent twice in
        // the run finds the first one's order.
        let mut tx = match self.db.begin().await {
            Ok(tx) => tx,
            Err(e) => {
                for (i, ..) in &ready {
                    let report = &mut reports[*i];
                    report.outcome = "failed".into();
                    report.detail = format!("the orders database did not answer: {e}");
                }
                return reports;
            }
        };
        let mut made_here: Vec<Uuid> = Vec::new();
        for (i, cart, verdict) in ready {
            let report = &mut reports[i];
            let started = Instant::now();
            let at = place::timestamp_now();
            let placed = place::place(&mut tx, &[(&cart, &verdict)], Source::Queue, at, None).await;
            // Test-only: die with the conversion written and not yet rolled back.
            crate::fault::freeze_if_hit("smoke-in-tx").await;
            let outcome = match placed.map(|mut o| o.pop()) {
                Ok(Some(outcome)) => outcome,
                Ok(None) => {
                    report.outcome = "failed".into();
                    report.detail = "the conversion returned no outcome".into();
                    continue;
                }
                Err(e) => {
                    let why = describe(&e);
                    report
                        .steps
                        .push(step("convert", started, false, why.clone()));
                    report.outcome = "failed".into();
                    report.detail = why;
                    continue;
                }
            };
            let (outcome, detail, order_id) = match outcome {
                Outcome::Created(id) => {
                    made_here.push(id);
                    (
                        "would-create-order",
                        format!("would create order {id}"),
                        Some(id),
                    )
                }
                Outcome::Duplicate(id) if made_here.contains(&id) => (
                    "duplicate",
                    format!("duplicate of order {id}, made earlier in this run"),
                    Some(id),
                ),
                Outcome::Duplicate(id) => (
                    "duplicate",
                    format!("duplicate of order {id}, which exists live: nothing about it changes"),
                    Some(id),
                ),
                Outcome::Rejected {
                    reason: Reason::Conflict,
                    detail,
                    order_id,
                } => ("conflict", detail, order_id),
                Outcome::Rejected {
                    reason,
                    detail,
                    order_id,
                } => (reason.as_str(), detail, order_id),
                Outcome::PaymentUnknown(detail) => ("payment-unknown", detail, None),
            };
            report.steps.push(step(
                "convert",
                started,
                true,
                format!("{detail} (rolled back)"),
            ));
            report.outcome = outcome.to_string();
            report.detail = detail;
            report.order_id = order_id;
            if outcome == "would-create-order" {
                let started = Instant::now();
                let order =
                    OrderView::placed(&cart, order_id.unwrap_or_default(), Source::Queue, at);
                report.hand_off = Some(self.render(&order));
                report
                    .steps
                    .push(step("render", started, true, "the order and its hand-off"));
                report.order = Some(order);
            }
        }
        if let Err(e) = tx.rollback().await {
            // Dropped unfinished, it rolls back anyway when the connection is reused.
            tracing::warn!(error = %e, "smoke run: rollback failed; the transaction is dropped");
        }
        reports
    }

    /// The payment step against the smoke endpoint, where there is one: `None` when it
    /// failed (the report says why).
    async fn pay(&self, cart: &Cart, report: &mut CartReport) -> Option<Verdict> {
        let started = Instant::now();
        let Some(gateway) = self.payments else {
            report.steps.push(step(
                "payment",
                started,
                true,
                "skipped: CARTBUS_PAYMENT_SMOKE_URL is not set (a smoke run never calls the live endpoint)",
            ));
            return Some(Verdict::Proceed);
        };
        let at = gateway.endpoint().to_string();
        match gateway.capture(cart).await {
            CallOutcome::Captured { payment_id } => {
                let id = payment_id.map(|id| format!(" as {id}")).unwrap_or_default();
                report.steps.push(step(
                    "payment",
                    started,
                    true,
                    format!("captured by {at}{id}"),
                ));
                Some(Verdict::Proceed)
            }
            CallOutcome::Declined { detail } => {
                report.steps.push(step(
                    "payment",
                    started,
                    true,
                    format!("declined by {at}: {detail}"),
                ));
                Some(Verdict::Refused {
                    reason: Reason::PaymentDeclined,
                    detail,
                })
            }
            CallOutcome::NotSent { detail } | CallOutcome::Unknown { detail } => {
                let why = format!("{at}: {detail}");
                report
                    .steps
                    .push(step("payment", started, false, why.clone()));
                report.outcome = "failed".into();
                report.detail = why;
                None
            }
        }
    }

    /// Sends each message to the scratch address and takes them back (and anything an
    /// earlier run left there), in the order sent.
    async fn round_trip(
        &self,
        sent: &[(usize, Message)],
    ) -> Result<(Vec<Message>, &'static str), String> {
        let mut receiver = self
            .queue
            .receiver(&self.scratch)
            .await
            .map_err(|e| format!("cannot open {}: {e}", self.scratch))?;
        let result = async {
            for (_, message) in sent {
                self.queue
                    .send(&self.scratch, message.clone())
                    .await
                    .map_err(|e| format!("send to {} failed: {e}", self.scratch))?;
            }
            let mut back: Vec<Option<Message>> = vec![None; sent.len()];
            let deadline = Instant::now() + ROUND_TRIP;
            while back.iter().any(Option::is_none) {
                let stop = CancellationToken::new();
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(format!(
                        "{} of {} messages came back from {} within {} s",
                        back.iter().filter(|m| m.is_some()).count(),
                        sent.len(),
                        self.scratch,
                        ROUND_TRIP.as_secs()
                    ));
                }
                let timer = stop.clone();
                let guard = tokio::spawn(async move {
                    tokio::time::sleep(left).await;
                    timer.cancel();
                });
                let received = receiver.receive(sent.len(), &stop).await;
                guard.abort();
                let received =
                    received.map_err(|e| format!("receive from {} failed: {e}", self.scratch))?;
                let tags: Vec<(u64, Settlement)> = received
                    .iter()
                    .map(|d| (d.tag, Settlement::Accept))
                    .collect();
                for delivery in received {
                    if let Some(k) = sent
                        .iter()
                        .position(|(_, m)| m.message_id == delivery.message.message_id)
                    {
                        if delivery.message.body != sent[k].1.body {
                            return Err(format!(
                                "message {} came back changed",
                                delivery.message.message_id
                            ));
                        }
                        back[k] = Some(delivery.message);
                    }
                }
                receiver
                    .settle(tags)
                    .await
                    .map_err(|e| format!("accepting on {} failed: {e}", self.scratch))?;
            }
            Ok(back.into_iter().flatten().collect())
        }
        .await;
        if let Err(e) = receiver.close().await {
            tracing::warn!(error = %e, "smoke run: closing the scratch receiver failed");
        }
        let left = match self.queue.remove(&self.scratch).await {
            Ok(true) => "deleted after",
            Ok(false) => "emptied after",
            Err(e) => {
                tracing::warn!(error = %e, address = %self.scratch, "smoke run: the scratch queue could not be deleted; it is empty");
                "emptied after (deleting it failed)"
            }
        };
        result.map(|messages| (messages, left))
    }

    /// The hand-off the order would get: its partner and the new-order message, or why
    /// none.
    fn render(&self, order: &OrderView) -> String {
        let settings = self.fulfilment;
        let address = &order.shipping_address;
        let Some(routes) = settings.routes.as_ref() else {
            return "none: the hand-off is off (CARTBUS_ROUTES unset)".into();
        };
        let Some(partner) = routes.partner_for(&address.country, address.region.as_deref()) else {
            return format!("none: no route for {}", address.country);
        };
        let message = partner::new_order(
            order,
            partner,
            &settings.status_address,
            settings.site.as_ref(),
        );
        // The hand-off's own rule (its threshold scaled to the currency).
        let audit = if order.total > audit_threshold(settings.audit_threshold, &order.currency) {
            format!("; and an audit copy to {}", settings.audit_address)
        } else {
            String::new()
        };
        format!(
            "a {} message of {} bytes to partner {partner}{audit}",
            message.subject.as_deref().unwrap_or("new-order"),
            message.body.len()
        )
    }
}

fn describe(e: &StoreError) -> String {
    match e {
        StoreError::Transient(_) => format!("the orders database is unavailable: {e}"),
        _ => e.to_string(),
    }
}
