//! One consumer step: a batch of cart messages → orders in one transaction, and for each
//! delivery the settlement to apply once that transaction has committed.
//!
//! Every message that is to be dead-lettered is first recorded in `dead_letters` (and, when
//! it names a cart, in `rejected_checkouts`) inside the same transaction, so nothing is
//! rejected on the queue without a committed record.
//!
//! The carts go through the place service ([`crate::service::place`]): the batch's
//! payments first, then its orders in one transaction.

use std::time::Duration;

use uuid::Uuid;

use super::CartStep;
use crate::domain::cart_message::{self, Decoded};
use crate::domain::event::NewEvent;
use crate::domain::order::Source;
use crate::domain::{Cart, Reason};
use crate::queue::{Delivery, Settlement};
use crate::service::payment::Verdict;
use crate::service::place::{self, Outcome as Placed};
use crate::service::worker::Report;
use crate::store::{StoreError, Tx, dead_letters, events, orders};

/// How long a message stays back when the database could not take it.
const RETRY_DELAY: Duration = Duration::from_secs(1);
/// How long a cart stays back when its payment call could not be sent.
const PAYMENT_RETRY_DELAY: Duration = Duration::from_secs(5);

/// The fate of one message inside a committed transaction.
#[derive(Debug)]
enum Outcome {
    /// A cart, through the place service.
    Placed(Placed),
    /// Not a cart this build can place (or out of attempts): dead-lettered.
    Rejected(Reason, String),
}

impl Outcome {
    fn label(&self) -> &'static str {
        match self {
            Outcome::Placed(placed) => placed.label(),
            Outcome::Rejected(reason, _) => reason.label(),
        }
    }

    /// Why the message is dead-lettered, if it is: a checkout turned away for a business
    /// reason (a declined payment) is done with, not dead-lettered.
    fn dead_letter(&self) -> Option<(Reason, &str)> {
        match self {
            Outcome::Placed(Placed::Created(_) | Placed::Duplicate(_)) => None,
            Outcome::Placed(Placed::Rejected { reason, .. }) if reason.is_business_outcome() => {
                None
            }
            Outcome::Placed(Placed::Rejected { reason, detail, .. }) => Some((*reason, detail)),
            Outcome::Placed(Placed::PaymentUnknown(detail)) => {
                Some((Reason::PaymentUnknown, detail))
            }
            Outcome::Rejected(reason, detail) => Some((*reason, detail)),
        }
    }

    fn settlement(&self) -> Settlement {
        match self.dead_letter() {
            None => Settlement::Accept,
            Some((reason, detail)) => Settlement::Reject {
                reason,
                detail: detail.to_string(),
            },
        }
    }
}

/// Why a conversion transaction failed.
#[derive(Debug)]
enum Failure {
    Store(StoreError),
    /// The switch says this instance must not commit orders (paused, another version,
    /// or a newer schema), seen inside the transaction.
    Gated(String),
}

impl Failure {
    fn is_transient(&self) -> bool {
        match self {
            Failure::Store(e) => e.is_transient(),
            Failure::Gated(_) => false,
        }
    }

    /// No connection or transaction could be had, or its commit failed: the database is
    /// away, whatever the error code says (a refusing server reports e.g. SQLSTATE 55000
    /// while connecting).
    fn unreachable(e: sqlx::Error) -> Failure {
        Failure::Store(StoreError::Transient(e))
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Store(e) => e.fmt(f),
            Failure::Gated(why) => f.write_str(why),
        }
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Store(e)
    }
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        Failure::Store(e.into())
    }
}

struct Item<'a> {
    delivery: &'a Delivery,
    decoded: Decoded,
    /// `Proceed` unless the payment step said otherwise.
    payment: Verdict,
}

impl Item<'_> {
    fn message_id(&self) -> &str {
        &self.delivery.message.message_id
    }
}

pub(super) async fn step(parts: &CartStep<'_>, deliveries: &[Delivery]) -> Report {
    let mut items: Vec<Item> = deliveries
        .iter()
        .map(|delivery| Item {
            delivery,
            decoded: cart_message::decode(&delivery.message),
            payment: Verdict::Proceed,
        })
        .collect();

    let mut report = Report::default();
    let carts: Vec<_> = items
        .iter()
        .filter_map(|item| match &item.decoded {
            Decoded::Cart(cart) => Some((cart.as_ref(), &item.delivery.message)),
            _ => None,
        })
        .collect();
    match place::pay(parts.db, parts.metrics, parts.payments, &carts).await {
        Ok(verdicts) => {
            for item in &mut items {
                if let Decoded::Cart(cart) = &item.decoded {
                    item.payment = place::verdict_for(&verdicts, cart);
                }
            }
        }
        Err(e) => {
            let e = Failure::Store(e);
            for item in &items {
                failed(parts, &mut report, item, &e).await;
            }
            return report;
        }
    }
    let (retry, rest): (Vec<Item>, Vec<Item>) = items
        .into_iter()
        .partition(|item| matches!(item.payment, Verdict::Retry(_)));
    for item in retry {
        parts.metrics.consumed("released", 1);
        report.settlements.push((
            item.delivery.tag,
            Settlement::Release {
                delay: PAYMENT_RETRY_DELAY,
            },
        ));
    }
    let items = rest;
    if items.is_empty() {
        return report;
    }

    match convert(parts, &items).await {
        Ok(outcomes) => {
            for (item, outcome) in items.iter().zip(outcomes) {
                settle_with(parts, &mut report, item, outcome);
            }
        }
        Err(Failure::Gated(why)) => {
            tracing::info!(reason = %why, batch = items.len(), "batch given back unconverted: the drain switch says stop");
            report.gated = true;
            for item in &items {
                parts.metrics.consumed("released", 1);
                report.settlements.push((
                    item.delivery.tag,
                    Settlement::Release {
                        delay: Duration::ZERO,
                    },
                ));
            }
        }
        Err(e) if e.is_transient() || items.len() == 1 => {
            for item in &items {
                failed(parts, &mut report, item, &e).await;
            }
        }
        Err(e) => {
            // Something in the batch is wrong for the database; find it by going one by one
            // so that the good carts still become orders.
            tracing::warn!(error = %e, batch = items.len(), "batch failed; retrying its messages one by one");
            for item in &items {
                match convert(parts, std::slice::from_ref(item)).await {
                    Ok(mut outcomes) => settle_with(parts, &mut report, item, outcomes.remove(0)),
                    Err(e) => failed(parts, &mut report, item, &e).await,
                }
            }
        }
    }
    report
}

fn settle_with(parts: &CartStep<'_>, report: &mut Report, item: &Item<'_>, outcome: Outcome) {
    if let Some((reason, detail)) = outcome.dead_letter() {
        tracing::warn!(message_id = item.message_id(), %reason, detail, "cart message dead-lettered");
    }
    parts.metrics.consumed(outcome.label(), 1);
    report
        .settlements
        .push((item.delivery.tag, outcome.settlement()));
}

/// A message whose transaction failed: back to the queue, without counting an attempt when
/// the database is down; counted otherwise (a refused statement, a broken invariant), and
/// dead-lettered on its last attempt.
async fn failed(parts: &CartStep<'_>, report: &mut Report, item: &Item<'_>, e: &Failure) {
    if e.is_transient() {
        report.database_down = true;
        parts.metrics.consumed("released", 1);
        report.settlements.push((
            item.delivery.tag,
            Settlement::Release { delay: RETRY_DELAY },
        ));
        return;
    }
    tracing::error!(message_id = item.message_id(), error = %e, "cart message failed");
    let detail = format!("database refused the order: {e}");
    let attempts = item.delivery.attempts + 1;
    if attempts >= parts.max_attempts {
        let detail = format!("failed {attempts} times; last: {detail}");
        let outcome = Outcome::Rejected(Reason::MaxAttempts, detail);
        match record_last_attempt(parts, item, &outcome).await {
            Ok(()) => return settle_with(parts, report, item, outcome),
            Err(e) => {
                tracing::error!(message_id = item.message_id(), error = %e, "cannot record the dead letter; keeping the message")
            }
        }
    }
    parts.metrics.consumed("failed", 1);
    report.settlements.push((
        item.delivery.tag,
        Settlement::Fail {
            delay: RETRY_DELAY,
            detail,
        },
    ));
}

/// Converts the items in one transaction: the carts through the place service, the rest
/// dead-lettered, every dead letter recorded in it.
async fn convert(parts: &CartStep<'_>, items: &[Item<'_>]) -> Result<Vec<Outcome>, Failure> {
    let carts: Vec<_> = items
        .iter()
        .filter_map(|item| match &item.decoded {
            Decoded::Cart(cart) => Some((cart.as_ref(), &item.payment)),
            _ => None,
        })
        .collect();
    // A place in the dispatcher's line first, so that orders are written leased to it
    // only when they will be handed on right after the commit.
    let reserved = match &parts.dispatch {
        Some(dispatch) => dispatch.reserve().await,
        None => None,
    };
    let mut tx = parts.db.begin().await.map_err(Failure::unreachable)?;
    // The database, not timing, guarantees that nothing commits after `drained`: the
    // switch row is read (and on PostgreSQL share-locked, so a pause waits for this
    // commit) inside the very transaction that writes the orders.
    if let Some(why) =
        crate::store::switch::forbids_consuming(&mut tx, parts.control.identity()).await?
    {
        return Err(Failure::Gated(why.to_string()));
    }
    // Test-only: a database that refuses every order (a broken constraint, say), so that
    // carts end as `max-attempts` dead letters.
    if crate::fault::hit("consumer-orders-refused") {
        return Err(Failure::Store(StoreError::Permanent(
            sqlx::Error::Configuration(
                "fail point consumer-orders-refused: the database refuses orders".into(),
            ),
        )));
    }
    let at = place::timestamp_now();
    let placed = place::place(&mut tx, &carts, Source::Queue, at, reserved.as_ref()).await?;
    let created: Vec<(&Cart, Uuid)> = carts
        .iter()
        .zip(&placed)
        .filter_map(|((cart, _), outcome)| match outcome {
            Placed::Created(order_id) => Some((*cart, *order_id)),
            _ => None,
        })
        .collect();
    let leased = match reserved {
        Some(reserved) if !created.is_empty() => Some(reserved.leased(&created, Source::Queue, at)),
        _ => None,
    };
    let mut placed = placed.into_iter();
    let mut outcomes = Vec::with_capacity(items.len());
    for item in items {
        let outcome = match &item.decoded {
            Decoded::Cart(_) => Outcome::Placed(
                placed
                    .next()
                    .ok_or_else(|| StoreError::invariant("fewer outcomes than carts"))?,
            ),
            Decoded::UnknownSchema(detail) => {
                Outcome::Rejected(Reason::UnknownSchema, detail.clone())
            }
            Decoded::Invalid(detail) => Outcome::Rejected(Reason::Invalid, detail.clone()),
        };
        record_dead_letter(parts, &mut tx, item, &outcome).await?;
        outcomes.push(outcome);
    }
    // Test-only: die with the orders written but not committed.
    crate::fault::freeze_if_hit("consumer-in-order-tx").await;
    // A failed commit may or may not have landed; either way redelivery is safe.
    tx.commit().await.map_err(Failure::unreachable)?;
    // What the dispatcher does not take, the relay does.
    let for_relay = match leased {
        Some(leased) => leased.send(),
        None => created.len(),
    };
    if for_relay > 0 {
        parts.outbox_wake.notify_one();
    }
    Ok(outcomes)
}

/// The max-attempts dead letter, in a transaction of its own.
async fn record_last_attempt(
    parts: &CartStep<'_>,
    item: &Item<'_>,
    outcome: &Outcome,
) -> Result<(), StoreError> {
    let mut tx = parts.db.begin().await?;
    record_dead_letter(parts, &mut tx, item, outcome).await?;
    Ok(tx.commit().await?)
}

/// Records the dead letter an outcome calls for, with (for a message that never reached
/// the place service) the checkout's rejection, so that its status says why.
async fn record_dead_letter(
    parts: &CartStep<'_>,
    tx: &mut Tx,
    item: &Item<'_>,
    outcome: &Outcome,
) -> Result<(), StoreError> {
    let Some((reason, detail)) = outcome.dead_letter() else {
        return Ok(());
    };
    let delivery = item.delivery;
    dead_letters::record(
        tx,
        parts.cart_address,
        &delivery.message,
        reason,
        detail,
        delivery.attempts,
    )
    .await?;
    if let Outcome::Rejected(..) = outcome
        && let Ok(cart_id) = crate::domain::parse_uuid(item.message_id())
    {
        orders::record_rejection(tx, cart_id, reason, detail).await?;
        let event = NewEvent::rejected(cart_id, reason, detail, None, chrono::Utc::now());
        events::append(tx, &[event]).await?;
    }
    Ok(())
}
