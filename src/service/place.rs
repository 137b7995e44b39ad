//! The one way a cart becomes an order. Every path that turns carts into orders calls it:
//! the consumer's batch, the direct write at intake when the queue is down, a dead-letter
//! resubmit, and an operator resolving an unknown payment.
//!
//! Two steps, because a payment capture cannot share the orders transaction:
//! 1. [`pay`], outside any transaction: the payment step (DESIGN §8). Each capture call is
//!    flagged in its own commit before it is made, so it is never made twice. Without a
//!    payment endpoint every cart proceeds.
//! 2. [`place`], inside the caller's transaction: each cart's order (created, or found from
//!    before), or why there is none, recorded so that the checkout's status says so.
//!
//! Dead letters stay with the caller: the consumer and the direct write record one for a
//! cart a person must look at; a resubmit has one already.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::dispatch::Reserved;
use super::payment::{self, Gateway, Verdict};
use crate::domain::event::{CheckoutOrdered, NewEvent};
pub use crate::domain::order::timestamp_now;
use crate::domain::order::{Placement, Source};
use crate::domain::{Cart, Reason};
use crate::metrics::Metrics;
use crate::queue::Message;
use crate::store::{Db, StoreError, Tx, events, orders, payments};

/// What became of one cart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Created(Uuid),
    /// The same cart was ordered before: nothing changed.
    Duplicate(Uuid),
    /// No order, for `reason`; the checkout is recorded as rejected. `order_id` is the
    /// order in the way of a conflicting cart.
    Rejected {
        reason: Reason,
        detail: String,
        order_id: Option<Uuid>,
    },
    /// The payment call's outcome is unknown: marked on its payment step, and the checkout
    /// stays pending until a person resolves it.
    PaymentUnknown(String),
}

impl Outcome {
    /// The `outcome` label of `cartbus_consumer_messages_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Created(_) => "created",
            Outcome::Duplicate(_) => "duplicate",
            Outcome::Rejected { reason, .. } => reason.label(),
            Outcome::PaymentUnknown(_) => Reason::PaymentUnknown.label(),
        }
    }
}

/// The payment step for `carts` (each with the message it came in, which is kept with the
/// flag for an operator): one verdict per distinct cart_id. With no payment endpoint
/// configured, every cart proceeds.
pub async fn pay(
    db: &Db,
    metrics: &Metrics,
    gateway: Option<&Gateway>,
    carts: &[(&Cart, &Message)],
) -> Result<HashMap<Uuid, Verdict>, StoreError> {
    let Some(gateway) = gateway else {
        return Ok(HashMap::new());
    };
    payment::decide(db, metrics, gateway, carts).await
}

/// What [`pay`] would decide for `cart` from what is recorded, calling nobody (a dry run).
pub async fn predict_payment(
    db: &Db,
    gateway: Option<&Gateway>,
    cart: &Cart,
) -> Result<Verdict, StoreError> {
    let Some(gateway) = gateway else {
        return Ok(Verdict::Proceed);
    };
    Ok(payment::predict(db, gateway, cart)
        .await?
        .unwrap_or(Verdict::Proceed))
}

/// The verdict [`pay`] gave `cart` (`Proceed` when it gave none).
pub fn verdict_for(verdicts: &HashMap<Uuid, Verdict>, cart: &Cart) -> Verdict {
    verdicts
        .get(&cart.cart_id.as_uuid())
        .cloned()
        .unwrap_or(Verdict::Proceed)
}

/// Turns a checkout away, so that its status says why, and tells the storefront
/// (`checkout.rejected`): what [`place`] records for a cart without an order, for a caller
/// with only the cart_id in hand (an operator who found that a payment did not go
/// through). `order_id`: the order in the way of a conflicting cart.
pub async fn reject(
    tx: &mut Tx,
    cart_id: Uuid,
    reason: Reason,
    detail: &str,
    order_id: Option<Uuid>,
) -> Result<(), StoreError> {
    orders::record_rejection(tx, cart_id, reason, detail).await?;
    let event = NewEvent::rejected(cart_id, reason, detail, order_id, Utc::now());
    Ok(events::append(tx, &[event]).await?)
}

/// Each cart's fate, in the caller's transaction and in the order of `carts`: carts whose
/// payment lets them proceed become orders (in a few multi-row statements, idempotent on
/// cart_id), created `at` ([`timestamp_now`]); the rest are recorded as rejected or as an
/// unknown payment. A cart whose payment is to be retried must not reach here.
///
/// With `hand_off` (the consumer's place in the dispatcher's line), each new order with a
/// partner is written already leased to this instance, to be handed on right after the
/// commit ([`Reserved::leased`]).
///
/// Each outcome's event for the storefront goes in the same transaction: `checkout.ordered`
/// for a new order, `checkout.rejected`, `checkout.payment_unknown`; none for a duplicate,
/// whose event was written with its order.
pub async fn place(
    tx: &mut Tx,
    carts: &[(&Cart, &Verdict)],
    source: Source,
    at: DateTime<Utc>,
    hand_off: Option<&Reserved<'_>>,
) -> Result<Vec<Outcome>, StoreError> {
    let hashes: Vec<String> = carts.iter().map(|(cart, _)| cart.payload_hash()).collect();
    let to_order: Vec<(&Cart, &str)> = carts
        .iter()
        .zip(&hashes)
        .filter(|((_, verdict), _)| **verdict == Verdict::Proceed)
        .map(|((cart, _), hash)| (*cart, hash.as_str()))
        .collect();
    let partners: Option<Vec<Option<String>>> = hand_off.map(|reserved| {
        to_order
            .iter()
            .map(|(cart, _)| reserved.partner_for(cart))
            .collect()
    });
    let leasing = hand_off
        .zip(partners.as_deref())
        .map(|(r, p)| (r.lease(), p));
    let mut placements = orders::place_many(tx, &to_order, source, at, leasing)
        .await?
        .into_iter();
    let mut outcomes = Vec::with_capacity(carts.len());
    let mut news = Vec::new();
    for (cart, verdict) in carts {
        let cart_id = cart.cart_id.as_uuid();
        let outcome = match verdict {
            Verdict::Proceed => match placements.next() {
                Some(Placement::Created(order_id)) => Outcome::Created(order_id),
                Some(Placement::Duplicate(order_id)) => Outcome::Duplicate(order_id),
                Some(Placement::Conflict(order_id)) => Outcome::Rejected {
                    reason: Reason::Conflict,
                    detail: format!(
                        "order {order_id} exists for this cart_id with a different payload"
                    ),
                    order_id: Some(order_id),
                },
                None => return Err(StoreError::invariant("fewer placements than carts")),
            },
            Verdict::Refused { reason, detail } => Outcome::Rejected {
                reason: *reason,
                detail: detail.clone(),
                order_id: None,
            },
            Verdict::Unknown(detail) => Outcome::PaymentUnknown(detail.clone()),
            Verdict::Retry(why) => {
                return Err(StoreError::invariant(format!(
                    "cart {cart_id} reached the orders transaction with its payment to retry ({why})"
                )));
            }
        };
        match &outcome {
            Outcome::Rejected {
                reason,
                detail,
                order_id,
            } => reject(tx, cart_id, *reason, detail, *order_id).await?,
            Outcome::PaymentUnknown(detail) => {
                payments::mark_unknown(tx, cart_id, detail).await?;
                news.push(NewEvent::payment_unknown(cart_id, detail, at));
            }
            Outcome::Created(order_id) => {
                let ordered = CheckoutOrdered {
                    order_id: *order_id,
                    cart_id,
                    total: cart.total.minor_units(),
                    currency: cart.currency.as_str().to_string(),
                    source,
                };
                news.push(NewEvent::ordered(&ordered, at));
            }
            Outcome::Duplicate(_) => {}
        }
        outcomes.push(outcome);
    }
    events::append(tx, &news).await?;
    Ok(outcomes)
}
