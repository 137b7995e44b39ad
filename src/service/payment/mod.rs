//! The payment step of a consumer batch (DESIGN §8), before the orders transaction: what
//! the database knows already decides most carts; the rest are flagged (committed), then
//! called, then their results recorded. A cart found flagged without a result while its
//! first call may still be running is retried later, not called unknown.

pub mod gateway;
pub mod resolve;

use std::collections::{HashMap, HashSet};

use futures::StreamExt;
use uuid::Uuid;

use crate::domain::payment::CallOutcome;
use crate::domain::payment::in_flight_since;
use crate::domain::{Cart, Reason};
use crate::metrics::Metrics;
use crate::queue::Message;
use crate::store::payments::{self as store, Known};
use crate::store::{Db, StoreError};
pub use gateway::Gateway;

/// What the shopper is told when an operator found that a payment did not go through.
pub const PAYMENT_FAILED: &str = "the payment did not go through";

/// Capture calls in flight at once per batch.
const CONCURRENT_CALLS: usize = 16;

/// What the payment step decided for a cart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// On to the order: captured now or before, or the cart has its order already.
    Proceed,
    /// No order: the checkout is rejected with `reason` (`payment-declined`, or
    /// `payment-failed` as an operator found), and the message accepted.
    Refused { reason: Reason, detail: String },
    /// Called before, or just now, without a result: never call again; dead-letter it.
    Unknown(String),
    /// Not called (the request never left, another consumer holds the flag, or the first
    /// call may still be in flight): give the message back for later.
    Retry(String),
}

/// Decides each cart's payment; one verdict per distinct cart_id. An error means the
/// database failed; calls already made then stay flagged without a result (unknown).
pub async fn decide(
    db: &Db,
    metrics: &Metrics,
    gateway: &Gateway,
    carts: &[(&Cart, &Message)],
) -> Result<HashMap<Uuid, Verdict>, StoreError> {
    let mut seen = HashSet::new();
    let carts: Vec<(&Cart, &Message)> = carts
        .iter()
        .filter(|(cart, _)| seen.insert(cart.cart_id.as_uuid()))
        .copied()
        .collect();
    let ids: Vec<Uuid> = carts.iter().map(|(c, _)| c.cart_id.as_uuid()).collect();
    let in_flight_since = in_flight_since(gateway.timeout());
    let known = store::known(db, &ids, in_flight_since).await?;

    let mut verdicts = HashMap::with_capacity(carts.len());
    let mut to_call: Vec<(&Cart, &[u8])> = Vec::new();
    for (cart, message) in carts {
        let cart_id = cart.cart_id.as_uuid();
        match known.get(&cart_id).map(recorded) {
            Some(Some(verdict)) => {
                verdicts.insert(cart_id, verdict);
            }
            _ => to_call.push((cart, message.body.as_ref())),
        }
    }
    if to_call.is_empty() {
        return Ok(verdicts);
    }

    // Committed before any call: from here a crash leaves the flag without a result.
    let flagged: HashSet<Uuid> = store::flag(db, &to_call).await?.into_iter().collect();
    let mut calls = Vec::with_capacity(flagged.len());
    for (cart, _) in to_call {
        let cart_id = cart.cart_id.as_uuid();
        if flagged.contains(&cart_id) {
            calls.push(cart);
        } else {
            verdicts.insert(
                cart_id,
                Verdict::Retry("another consumer is capturing this cart's payment".into()),
            );
        }
    }
    // Futures collected first: a closure inside the stream would keep the consumer
    // future from being `Send` for every lifetime (a compiler limitation).
    let pending: Vec<_> = calls.into_iter().map(|cart| call(gateway, cart)).collect();
    let results: Vec<(Uuid, CallOutcome)> = futures::stream::iter(pending)
        .buffer_unordered(CONCURRENT_CALLS)
        .collect()
        .await;
    for (cart_id, outcome) in &results {
        metrics.payment_call(outcome.label());
        match outcome {
            CallOutcome::Captured { payment_id } => {
                tracing::info!(%cart_id, ?payment_id, "payment captured")
            }
            CallOutcome::Declined { detail } => {
                tracing::info!(%cart_id, detail, "payment declined")
            }
            CallOutcome::NotSent { detail } => {
                tracing::warn!(%cart_id, endpoint = %gateway.endpoint(), detail, "payment call not sent; the cart will be tried again")
            }
            CallOutcome::Unknown { detail } => {
                tracing::error!(%cart_id, endpoint = %gateway.endpoint(), detail, "payment outcome unknown; the cart is dead-lettered for a person to resolve")
            }
        }
    }
    // Test-only: die between a call's answer and its record.
    crate::fault::freeze_if_hit("payment-after-call").await;
    let taken: HashSet<Uuid> = store::record(db, &results)
        .await
        .inspect_err(|e| tracing::error!(error = %e, calls = results.len(), "cannot record payment results; these carts will be dead-lettered as payment-unknown when they come back"))?
        .into_iter()
        .collect();
    for (cart_id, outcome) in results {
        let verdict = if taken.contains(&cart_id) {
            // Resolved by an operator while the call was (still, unexpectedly) in flight:
            // the resolution stands and the redelivery follows it; what the call came to
            // is kept in the step's detail for a person to reconcile.
            metrics.payment_call("late_after_resolution");
            tracing::error!(%cart_id, call = outcome.label(), ?outcome, "payment call answered after an operator resolved it; keeping the resolution — reconcile with the payment service");
            Verdict::Retry("resolved by an operator during the call".into())
        } else {
            match outcome {
                CallOutcome::Captured { .. } => Verdict::Proceed,
                CallOutcome::Declined { detail } => Verdict::Refused {
                    reason: Reason::PaymentDeclined,
                    detail,
                },
                CallOutcome::NotSent { detail } => Verdict::Retry(detail),
                CallOutcome::Unknown { detail } => Verdict::Unknown(detail),
            }
        };
        verdicts.insert(cart_id, verdict);
    }
    Ok(verdicts)
}

async fn call(gateway: &Gateway, cart: &Cart) -> (Uuid, CallOutcome) {
    (cart.cart_id.as_uuid(), gateway.capture(cart).await)
}

/// The verdict that what is recorded already gives, if any (`None`: call).
/// What the payment step would decide for `cart` from what is recorded, without calling
/// anyone: `None` means it would call the payment endpoint.
pub async fn predict(
    db: &Db,
    gateway: &Gateway,
    cart: &Cart,
) -> Result<Option<Verdict>, StoreError> {
    let cart_id = cart.cart_id.as_uuid();
    let in_flight_since = in_flight_since(gateway.timeout());
    let known = store::known(db, &[cart_id], in_flight_since).await?;
    Ok(known.get(&cart_id).and_then(recorded))
}

fn recorded(known: &Known) -> Option<Verdict> {
    if known.ordered {
        return Some(Verdict::Proceed);
    }
    match known.step {
        None => None,
        Some(Some(true)) => Some(Verdict::Proceed),
        Some(Some(false)) if known.resolved => Some(Verdict::Refused {
            reason: Reason::PaymentFailed,
            detail: PAYMENT_FAILED.into(),
        }),
        Some(Some(false)) => Some(Verdict::Refused {
            reason: Reason::PaymentDeclined,
            detail: known
                .detail
                .clone()
                .unwrap_or_else(|| "the payment was declined".into()),
        }),
        Some(None) if known.in_flight => Some(Verdict::Retry(
            "the first payment call for this cart may still be in flight; trying again later"
                .into(),
        )),
        Some(None) => Some(Verdict::Unknown(
            "the payment endpoint was called for this cart before and no result was recorded: \
             it may or may not have captured, so it is not called again"
                .into(),
        )),
    }
}
