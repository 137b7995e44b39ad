//! Taking a checkout in: onto the queue when it takes the cart, otherwise straight into
//! the database as an order (DESIGN §1). Either way, at most one order per cart_id.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use uuid::Uuid;

use crate::domain::Cart;
use crate::domain::Reason;
use crate::domain::cart_message as message;
use crate::domain::order::Source;
use crate::metrics::Metrics;
use crate::queue::Queue;
use crate::service::conflicts::ConflictChecks;
use crate::service::drain::Control;
use crate::service::payment::Gateway;
use crate::service::payment::Verdict;
use crate::service::place::{self, Outcome};
use crate::service::readiness::{Health, can_write_orders};
use crate::store::Db;
use crate::store::{StoreError, dead_letters};

/// Where a direct write's dead letters say they came from (no queue was involved).
pub const DIRECT_SOURCE: &str = "direct-write";

/// Where an accepted cart went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accepted {
    Queued,
    /// The queue could not take it, so the order was written directly.
    Ordered(Uuid),
}

#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("cart {cart_id} was already ordered with a different payload (order {order_id})")]
    Conflict { cart_id: Uuid, order_id: Uuid },
    #[error("neither the queue nor the database can take the cart")]
    Unavailable,
}

/// What taking checkouts in needs; cheap to clone into the task that writes an order
/// directly.
#[derive(Clone)]
pub struct Intake {
    pub queue: Arc<dyn Queue>,
    pub db: Db,
    /// The batched conflict check (reads `db`).
    pub conflicts: ConflictChecks,
    pub metrics: Arc<Metrics>,
    pub control: Arc<Control>,
    pub health: Arc<Health>,
    /// The payment capture endpoint, when one is configured.
    pub payments: Option<Arc<Gateway>>,
    pub settings: Arc<IntakeSettings>,
    /// Whether the queue is taking carts, for logging its loss and return once each.
    pub outage: Arc<QueueOutage>,
}

/// The queue's state as intake sees it. During an outage every checkout is written
/// directly; the log says when the queue was lost and when it came back, with the count
/// in between, instead of a line per checkout (each is at debug, and counted in
/// `cartbus_checkouts_total{outcome="direct"}`).
#[derive(Default)]
pub struct QueueOutage {
    /// Checkouts the queue failed since it was lost; 0: the queue is taking carts.
    failed: AtomicU64,
    started: Mutex<Option<Instant>>,
}

impl QueueOutage {
    fn queue_failed(&self, why: &str) {
        if self.failed.fetch_add(1, Ordering::AcqRel) == 0 {
            *self.started.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            tracing::warn!(
                error = why,
                "queue lost: checkouts are written directly to the orders database until it takes carts again"
            );
        }
    }

    fn queue_took_a_cart(&self) {
        let failed = self.failed.swap(0, Ordering::AcqRel);
        if failed > 0 {
            let lasted = self
                .started
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .map(|at| at.elapsed());
            tracing::warn!(checkouts_not_queued = failed, lasted = ?lasted, "queue back: checkouts are queued again");
        }
    }
}

/// Intake's settings.
#[derive(Clone, Debug)]
pub struct IntakeSettings {
    /// `CARTBUS_CART_ADDRESS`.
    pub cart_address: String,
    /// `CARTBUS_SEND_TIMEOUT_MS`: how long the queue may take to confirm a cart.
    pub send_timeout: Duration,
    /// `CARTBUS_CONFLICT_CHECK_MS`: how long to wait for the database's word on a reused
    /// cart_id before queueing; zero: do not ask.
    pub conflict_check: Duration,
    /// `CARTBUS_REQUEST_TIMEOUT_MS`: a direct write waits at most half of it.
    pub request_timeout: Duration,
}

impl Intake {
    pub async fn submit(&self, cart: &Cart) -> Result<Accepted, IntakeError> {
        if let Some(order_id) = self.ordered_with_another_payload(cart).await {
            self.metrics.checkout(Reason::Conflict.label());
            return Err(IntakeError::Conflict {
                cart_id: cart.cart_id.as_uuid(),
                order_id,
            });
        }
        let message = message::encode(cart, Utc::now());
        let address = &self.settings.cart_address;
        // Test-only: a slow intake, to fill the in-flight limit with real checkouts.
        crate::fault::delay_if_hit("intake-slow").await;
        match tokio::time::timeout(
            self.settings.send_timeout,
            self.queue.send(address, message),
        )
        .await
        {
            Ok(Ok(())) => {
                // Test-only: die after the queue took the cart, before the storefront hears.
                crate::fault::freeze_if_hit("intake-after-send").await;
                self.metrics.checkout("queued");
                self.control.count_accepted();
                self.outage.queue_took_a_cart();
                return Ok(Accepted::Queued);
            }
            Ok(Err(e)) => {
                tracing::debug!(cart_id = %cart.cart_id, error = %e, "queue refused the cart; writing the order directly");
                self.outage.queue_failed(&e.to_string());
            }
            Err(_) => {
                tracing::debug!(cart_id = %cart.cart_id, timeout = ?self.settings.send_timeout, "queue did not confirm in time; writing the order directly");
                self.outage.queue_failed(&format!(
                    "no confirmation within {} ms",
                    self.settings.send_timeout.as_millis()
                ));
            }
        }
        let result = self.write_directly(cart).await;
        self.metrics.checkout(match &result {
            Ok(_) => "direct",
            Err(IntakeError::Conflict { .. }) => Reason::Conflict.label(),
            Err(IntakeError::Unavailable) => "unavailable",
        });
        result
    }

    /// The order already placed for this cart_id from a different cart, when the database
    /// says so within `conflict_check`; `None` when it does not (or is known to be down):
    /// the cart is then queued and the consumer dead-letters a conflict as before.
    async fn ordered_with_another_payload(&self, cart: &Cart) -> Option<Uuid> {
        let bound = self.settings.conflict_check;
        if bound.is_zero() || !can_write_orders(&self.health, &self.control) {
            return None;
        }
        match tokio::time::timeout(bound, self.conflicts.placed(cart.cart_id)).await {
            Ok(Ok(Some((order_id, hash)))) if hash != cart.payload_hash() => Some(order_id),
            Ok(Ok(_)) => None,
            Ok(Err(e)) => {
                tracing::debug!(cart_id = %cart.cart_id, error = %e, "no conflict check; queueing the cart");
                None
            }
            Err(_) => {
                tracing::debug!(cart_id = %cart.cart_id, "conflict check took too long; queueing the cart");
                None
            }
        }
    }

    /// Writes the order (after its payment) in a task of its own: the request future may be
    /// dropped (its timeout, or the client gone), and a capture must not then be left
    /// without its result or its order. The request waits for the task at most half its
    /// timeout; past that the task still finishes, and a retry finds what it did.
    async fn write_directly(&self, cart: &Cart) -> Result<Accepted, IntakeError> {
        if !can_write_orders(&self.health, &self.control) {
            tracing::error!(cart_id = %cart.cart_id, "database down or its schema not ready; cannot write the order directly");
            return Err(IntakeError::Unavailable);
        }
        let task = tokio::spawn({
            let intake = self.clone();
            let cart = cart.clone();
            async move { intake.pay_and_place(&cart).await }
        });
        match tokio::time::timeout(self.settings.request_timeout / 2, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => {
                tracing::error!(cart_id = %cart.cart_id, error = %e, "direct write task failed");
                Err(IntakeError::Unavailable)
            }
            Err(_) => {
                tracing::error!(cart_id = %cart.cart_id, "direct write still running at half the request timeout; it goes on in the background and a retry finds its result");
                Err(IntakeError::Unavailable)
            }
        }
    }

    /// The payment step, then the order, through the place service. Not to be cancelled once
    /// started: no timeout wraps it (the capture call has its own, `CARTBUS_PAYMENT_TIMEOUT_MS`).
    ///
    /// A declined payment or one whose outcome is unknown makes no order now and answers as
    /// queued: the checkout's status says why (`rejected`, or `pending` with
    /// `payment-unknown` for a person to resolve). A call that never left, or a first call
    /// that may still be in flight, answers 503 so that the storefront tries again.
    async fn pay_and_place(&self, cart: &Cart) -> Result<Accepted, IntakeError> {
        let cart_id = cart.cart_id.as_uuid();
        let message = message::encode(cart, Utc::now());
        let unavailable = |e: StoreError| {
            tracing::error!(%cart_id, error = %e, "direct order write failed");
            IntakeError::Unavailable
        };
        let verdicts = place::pay(
            &self.db,
            &self.metrics,
            self.payments.as_deref(),
            &[(cart, &message)],
        )
        .await
        .map_err(unavailable)?;
        let verdict = place::verdict_for(&verdicts, cart);
        if let Verdict::Retry(why) = &verdict {
            tracing::warn!(%cart_id, why, "payment not attempted; the storefront should retry");
            return Err(IntakeError::Unavailable);
        }
        if self.payments.is_some() && verdict == Verdict::Proceed {
            // Test-only: die between the capture and its order.
            crate::fault::freeze_if_hit("direct-after-payment").await;
        }
        let write = async {
            let mut tx = self.db.begin().await?;
            let outcome = place::place(
                &mut tx,
                &[(cart, &verdict)],
                Source::Direct,
                place::timestamp_now(),
                None,
            )
            .await?
            .pop()
            .ok_or_else(|| StoreError::invariant("no outcome for the cart"))?;
            if let Outcome::PaymentUnknown(detail) = &outcome {
                dead_letters::record(
                    &mut tx,
                    DIRECT_SOURCE,
                    &message,
                    Reason::PaymentUnknown,
                    detail,
                    0,
                )
                .await?;
            }
            tx.commit().await?;
            Ok::<_, StoreError>(outcome)
        };
        match write.await.map_err(unavailable)? {
            Outcome::Created(order_id) | Outcome::Duplicate(order_id) => {
                Ok(Accepted::Ordered(order_id))
            }
            Outcome::Rejected {
                reason: Reason::Conflict,
                order_id: Some(order_id),
                ..
            } => Err(IntakeError::Conflict { cart_id, order_id }),
            Outcome::Rejected { .. } | Outcome::PaymentUnknown(_) => Ok(Accepted::Queued),
        }
    }
}
