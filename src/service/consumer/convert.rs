//! One consumer step: a batch of cart messages → orders in one transaction, and for each
//! delivery the settlement to apply once that transaction has committed.
//!
//! Every message that is to be dead-lettered is first recorded in `dead_letters` (and, when
//! it names a cart, in `rejected_checkouts`) inside the same transaction, so nothing is
//! rejected on the queue without a committed record.
//!
//! With a payment endpoint configured, the batch's payments are settled first
//! ([`super::payment`]); only captured carts go on to become orders.

use std::time::Duration;

use crate::domain::Cart;
use crate::domain::Reason;
use crate::domain::cart_message::{self, Decoded};
use crate::domain::order::{Placement, Source};
use crate::queue::{Delivery, Message, Settlement};
use crate::runtime::app::App;
use crate::service::payment::{self, Verdict};
use crate::store;
use crate::store::dead_letters;
use crate::store::orders;
use crate::store::payments;

/// How long a message stays back when the database could not take it.
const RETRY_DELAY: Duration = Duration::from_secs(1);
/// How long a cart stays back when its payment call could not be sent.
const PAYMENT_RETRY_DELAY: Duration = Duration::from_secs(5);

/// What a step did, to settle after the commit.
#[derive(Debug, Default)]
pub struct Report {
    pub settlements: Vec<(u64, Settlement)>,
    /// The database could not be reached: the caller should back off.
    pub database_down: bool,
    /// The drain switch, read in the transaction, forbade committing: everything was
    /// released and the consumer session should end.
    pub gated: bool,
}

/// The fate of one message inside a committed transaction.
#[derive(Debug)]
enum Outcome {
    Created,
    Duplicate,
    /// The payment was refused: the checkout is rejected with this reason, no order; the
    /// message is done with (a business outcome, not a poison message).
    PaymentRefused(&'static str, String),
    Rejected(Reason, String),
}

impl Outcome {
    fn label(&self) -> &'static str {
        match self {
            Outcome::Created => "created",
            Outcome::Duplicate => "duplicate",
            Outcome::PaymentRefused("payment-failed", _) => "payment_failed",
            Outcome::PaymentRefused(..) => "payment_declined",
            Outcome::Rejected(Reason::Conflict, _) => "conflict",
            Outcome::Rejected(Reason::UnknownSchema, _) => "unknown_schema",
            Outcome::Rejected(Reason::MaxAttempts, _) => "max_attempts",
            Outcome::Rejected(Reason::Invalid, _) => "invalid",
            Outcome::Rejected(Reason::PaymentUnknown, _) => "payment_unknown",
            Outcome::Rejected(reason, _) => reason.as_str(),
        }
    }

    fn settlement(self) -> Settlement {
        match self {
            Outcome::Created | Outcome::Duplicate | Outcome::PaymentRefused(..) => {
                Settlement::Accept
            }
            Outcome::Rejected(reason, detail) => Settlement::Reject { reason, detail },
        }
    }
}

/// Why a conversion transaction failed.
#[derive(Debug)]
enum Failure {
    /// No connection or transaction could be had: the database is away, whatever the
    /// error code says (a refusing server reports e.g. SQLSTATE 55000 while connecting).
    Unreachable(sqlx::Error),
    Statement(sqlx::Error),
    /// The switch says this instance must not commit orders (paused, another version,
    /// or a newer schema), seen inside the transaction.
    Gated(String),
}

impl Failure {
    fn is_transient(&self) -> bool {
        match self {
            Failure::Unreachable(_) => true,
            Failure::Statement(e) => store::is_transient(e),
            Failure::Gated(_) => false,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Unreachable(e) | Failure::Statement(e) => e.fmt(f),
            Failure::Gated(why) => f.write_str(why),
        }
    }
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        Failure::Statement(e)
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

pub async fn step(app: &App, deliveries: &[Delivery]) -> Report {
    let mut items: Vec<Item> = deliveries
        .iter()
        .map(|delivery| Item {
            delivery,
            decoded: cart_message::decode(&delivery.message),
            payment: Verdict::Proceed,
        })
        .collect();

    let mut report = Report::default();
    if let Some(gateway) = &app.payments {
        let carts: Vec<(&Cart, &Message)> = items
            .iter()
            .filter_map(|item| match &item.decoded {
                Decoded::Cart(cart) => Some((cart.as_ref(), &item.delivery.message)),
                _ => None,
            })
            .collect();
        match payment::decide(app, gateway, &carts).await {
            Ok(verdicts) => {
                for item in &mut items {
                    if let Decoded::Cart(cart) = &item.decoded
                        && let Some(verdict) = verdicts.get(&cart.cart_id.as_uuid())
                    {
                        item.payment = verdict.clone();
                    }
                }
            }
            Err(e) => {
                let e = Failure::Statement(e);
                for item in &items {
                    failed(app, &mut report, item, &e).await;
                }
                return report;
            }
        }
        let (retry, rest): (Vec<Item>, Vec<Item>) = items
            .into_iter()
            .partition(|item| matches!(item.payment, Verdict::Retry(_)));
        for item in retry {
            app.metrics.consumed("released", 1);
            report.settlements.push((
                item.delivery.tag,
                Settlement::Release {
                    delay: PAYMENT_RETRY_DELAY,
                },
            ));
        }
        items = rest;
        if items.is_empty() {
            return report;
        }
    }

    match convert(app, &items).await {
        Ok(outcomes) => {
            for (item, outcome) in items.iter().zip(outcomes) {
                settle_with(app, &mut report, item, outcome);
            }
        }
        Err(Failure::Gated(why)) => {
            tracing::info!(reason = %why, batch = items.len(), "batch given back unconverted: the drain switch says stop");
            report.gated = true;
            for item in &items {
                app.metrics.consumed("released", 1);
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
                failed(app, &mut report, item, &e).await;
            }
        }
        Err(e) => {
            // Something in the batch is wrong for the database; find it by going one by one
            // so that the good carts still become orders.
            tracing::warn!(error = %e, batch = items.len(), "batch failed; retrying its messages one by one");
            for item in &items {
                match convert(app, std::slice::from_ref(item)).await {
                    Ok(mut outcomes) => settle_with(app, &mut report, item, outcomes.remove(0)),
                    Err(e) => failed(app, &mut report, item, &e).await,
                }
            }
        }
    }
    report
}

fn settle_with(app: &App, report: &mut Report, item: &Item<'_>, outcome: Outcome) {
    if let Outcome::Rejected(reason, detail) = &outcome {
        tracing::warn!(message_id = item.message_id(), %reason, detail, "cart message dead-lettered");
    }
    app.metrics.consumed(outcome.label(), 1);
    report
        .settlements
        .push((item.delivery.tag, outcome.settlement()));
}

/// A message whose transaction failed: back to the queue, without counting an attempt when
/// the database is down; counted otherwise, and dead-lettered on its last attempt.
async fn failed(app: &App, report: &mut Report, item: &Item<'_>, e: &Failure) {
    if e.is_transient() {
        report.database_down = true;
        app.metrics.consumed("released", 1);
        report.settlements.push((
            item.delivery.tag,
            Settlement::Release { delay: RETRY_DELAY },
        ));
        return;
    }
    tracing::error!(message_id = item.message_id(), error = %e, "cart message failed");
    let detail = format!("database refused the order: {e}");
    let attempts = item.delivery.attempts + 1;
    if attempts >= app.config.max_attempts {
        let detail = format!("failed {attempts} times; last: {detail}");
        let outcome = Outcome::Rejected(Reason::MaxAttempts, detail);
        match record_rejections(
            app,
            std::slice::from_ref(item),
            std::slice::from_ref(&outcome),
        )
        .await
        {
            Ok(()) => return settle_with(app, report, item, outcome),
            Err(e) => {
                tracing::error!(message_id = item.message_id(), error = %e, "cannot record the dead letter; keeping the message")
            }
        }
    }
    app.metrics.consumed("failed", 1);
    report.settlements.push((
        item.delivery.tag,
        Settlement::Fail {
            delay: RETRY_DELAY,
            detail,
        },
    ));
}

/// Converts the items in one transaction (their orders in a few multi-row statements),
/// recording rejections in it.
async fn convert(app: &App, items: &[Item<'_>]) -> Result<Vec<Outcome>, Failure> {
    let hashes: Vec<Option<String>> = items
        .iter()
        .map(|item| match &item.decoded {
            Decoded::Cart(cart) => Some(cart.payload_hash()),
            _ => None,
        })
        .collect();
    let carts: Vec<(&Cart, &str)> = items
        .iter()
        .zip(&hashes)
        .filter_map(|(item, hash)| match (&item.decoded, hash, &item.payment) {
            (Decoded::Cart(cart), Some(hash), Verdict::Proceed) => {
                Some((cart.as_ref(), hash.as_str()))
            }
            _ => None,
        })
        .collect();
    let mut tx = app.db.begin().await.map_err(Failure::Unreachable)?;
    // The database, not timing, guarantees that nothing commits after `drained`: the
    // switch row is read (and on PostgreSQL share-locked, so a pause waits for this
    // commit) inside the very transaction that writes the orders.
    if let Some(why) = crate::store::switch::forbids_consuming(&mut tx, app).await? {
        return Err(Failure::Gated(why));
    }
    // Test-only: a database that refuses every order (a broken constraint, say), so that
    // carts end as `max-attempts` dead letters.
    if crate::fault::hit("consumer-orders-refused") {
        return Err(Failure::Statement(sqlx::Error::Configuration(
            "fail point consumer-orders-refused: the database refuses orders".into(),
        )));
    }
    let mut placements = orders::place_many(&mut tx, &carts, Source::Queue)
        .await?
        .into_iter();
    let mut outcomes = Vec::with_capacity(items.len());
    for item in items {
        let outcome = match (&item.decoded, &item.payment) {
            (Decoded::Cart(_), Verdict::Refused { reason, detail }) => {
                Outcome::PaymentRefused(reason, detail.clone())
            }
            (Decoded::Cart(_), Verdict::Unknown(detail)) => {
                Outcome::Rejected(Reason::PaymentUnknown, detail.clone())
            }
            (Decoded::Cart(_), Verdict::Retry(_)) => {
                return Err(Failure::Statement(sqlx::Error::Protocol(
                    "a cart to be retried reached the orders transaction".into(),
                )));
            }
            (Decoded::Cart(_), Verdict::Proceed) => match placements.next() {
                Some(Placement::Created(_)) => Outcome::Created,
                Some(Placement::Duplicate(_)) => Outcome::Duplicate,
                Some(Placement::Conflict(order_id)) => Outcome::Rejected(
                    Reason::Conflict,
                    format!("order {order_id} exists for this cart_id with a different payload"),
                ),
                None => {
                    return Err(Failure::Statement(sqlx::Error::Protocol(
                        "fewer placements than carts".into(),
                    )));
                }
            },
            (Decoded::UnknownSchema(detail), _) => {
                Outcome::Rejected(Reason::UnknownSchema, detail.clone())
            }
            (Decoded::Invalid(detail), _) => Outcome::Rejected(Reason::Invalid, detail.clone()),
        };
        match &outcome {
            Outcome::Rejected(reason, detail) => {
                record_rejection(app, &mut tx, item, *reason, detail).await?;
            }
            Outcome::PaymentRefused(reason, detail) => {
                if let Decoded::Cart(cart) = &item.decoded {
                    orders::record_rejection(&mut tx, cart.cart_id.as_uuid(), reason, detail)
                        .await?;
                }
            }
            Outcome::Created | Outcome::Duplicate => {}
        }
        outcomes.push(outcome);
    }
    // Test-only: die with the orders written but not committed.
    crate::fault::freeze_if_hit("consumer-in-order-tx").await;
    // A failed commit may or may not have landed; either way redelivery is safe.
    tx.commit().await.map_err(Failure::Unreachable)?;
    if outcomes.iter().any(|o| matches!(o, Outcome::Created)) {
        app.outbox_wake.notify_one();
    }
    Ok(outcomes)
}

async fn record_rejections(
    app: &App,
    items: &[Item<'_>],
    outcomes: &[Outcome],
) -> Result<(), sqlx::Error> {
    let mut tx = app.db.begin().await?;
    for (item, outcome) in items.iter().zip(outcomes) {
        if let Outcome::Rejected(reason, detail) = outcome {
            record_rejection(app, &mut tx, item, *reason, detail).await?;
        }
    }
    tx.commit().await
}

async fn record_rejection(
    app: &App,
    tx: &mut store::Tx,
    item: &Item<'_>,
    reason: Reason,
    detail: &str,
) -> Result<(), sqlx::Error> {
    let delivery = item.delivery;
    dead_letters::record(
        tx,
        &app.config.cart_address,
        &delivery.message,
        reason,
        detail,
        delivery.attempts,
    )
    .await?;
    let Ok(cart_id) = uuid::Uuid::try_parse(item.message_id()) else {
        return Ok(());
    };
    if reason == Reason::PaymentUnknown {
        // Not a rejection: the checkout stays pending until a person resolves the payment.
        payments::mark_unknown(tx, cart_id, detail).await
    } else {
        orders::record_rejection(tx, cart_id, reason.as_str(), detail).await
    }
}
