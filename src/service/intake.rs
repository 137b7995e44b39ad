//! Taking a checkout in: onto the queue when it takes the cart, otherwise straight into
//! the database as an order (DESIGN §1). Either way, at most one order per cart_id.

use std::sync::Arc;

use chrono::Utc;
use uuid::Uuid;

use crate::domain::Cart;
use crate::domain::Reason;
use crate::domain::cart_message as message;
use crate::domain::order::{Placement, Source};
use crate::runtime::app::{App, AppState};
use crate::service::payment::{self, Verdict};
use crate::store::dead_letters;
use crate::store::orders;
use crate::store::payments;

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

pub async fn submit(app: &AppState, cart: &Cart) -> Result<Accepted, IntakeError> {
    let message = message::encode(cart, Utc::now());
    let address = &app.config.cart_address;
    // Test-only: a slow intake, to fill the in-flight limit with real checkouts.
    crate::fault::delay_if_hit("intake-slow").await;
    match tokio::time::timeout(app.config.send_timeout, app.queue.send(address, message)).await {
        Ok(Ok(())) => {
            // Test-only: die after the queue took the cart, before the storefront hears.
            crate::fault::freeze_if_hit("intake-after-send").await;
            app.metrics.checkout("queued");
            app.control.count_accepted();
            return Ok(Accepted::Queued);
        }
        Ok(Err(e)) => {
            tracing::warn!(cart_id = %cart.cart_id, error = %e, "queue refused the cart; writing the order directly");
        }
        Err(_) => {
            tracing::warn!(cart_id = %cart.cart_id, timeout = ?app.config.send_timeout, "queue did not confirm in time; writing the order directly");
        }
    }
    let result = write_directly(app, cart).await;
    app.metrics.checkout(match &result {
        Ok(_) => "direct",
        Err(IntakeError::Conflict { .. }) => "conflict",
        Err(IntakeError::Unavailable) => "unavailable",
    });
    result
}

/// Writes the order (after its payment) in a task of its own: the request future may be
/// dropped (its timeout, or the client gone), and a capture must not then be left
/// without its result or its order. The request waits for the task at most half its
/// timeout; past that the task still finishes, and a retry finds what it did.
async fn write_directly(app: &AppState, cart: &Cart) -> Result<Accepted, IntakeError> {
    if !app.can_write_orders() {
        tracing::error!(cart_id = %cart.cart_id, "database down or its schema not ready; cannot write the order directly");
        return Err(IntakeError::Unavailable);
    }
    let task = tokio::spawn({
        let app = Arc::clone(app);
        let cart = cart.clone();
        async move { pay_and_place(&app, &cart).await }
    });
    match tokio::time::timeout(app.config.request_timeout / 2, task).await {
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

/// The payment step, then the order. Not to be cancelled once started: no timeout wraps
/// it (the capture call has its own, `CARTBUS_PAYMENT_TIMEOUT_MS`).
async fn pay_and_place(app: &App, cart: &Cart) -> Result<Accepted, IntakeError> {
    if let Some(gateway) = &app.payments {
        // The same at-most-once capture as the consumer's: no order without a payment.
        if let Some(decided) = pay(app, gateway, cart).await? {
            return Ok(decided);
        }
        // Test-only: die between the capture and its order.
        crate::fault::freeze_if_hit("direct-after-payment").await;
    }
    let write = async {
        let mut tx = app.db.begin().await?;
        let placement = orders::place(&mut tx, cart, &cart.payload_hash(), Source::Direct).await?;
        if let Placement::Conflict(order_id) = placement {
            let detail =
                format!("order {order_id} exists for this cart_id with a different payload");
            orders::record_rejection(&mut tx, cart.cart_id.as_uuid(), "conflict", &detail).await?;
        }
        tx.commit().await?;
        Ok::<_, sqlx::Error>(placement)
    };
    match write.await {
        Ok(Placement::Created(order_id) | Placement::Duplicate(order_id)) => {
            Ok(Accepted::Ordered(order_id))
        }
        Ok(Placement::Conflict(order_id)) => Err(IntakeError::Conflict {
            cart_id: cart.cart_id.as_uuid(),
            order_id,
        }),
        Err(e) => {
            tracing::error!(cart_id = %cart.cart_id, error = %e, "direct order write failed");
            Err(IntakeError::Unavailable)
        }
    }
}

/// The payment step for a cart written directly. `None`: captured (or ordered before), go
/// on and write the order. `Some(Queued)`: no order now; the checkout's status says why
/// (`rejected` for a declined payment, `pending` with `payment-unknown` for a person to
/// resolve). A call that never left, or a first call that may still be in flight, answers
/// 503 so that the storefront tries again.
async fn pay(
    app: &App,
    gateway: &crate::service::payment::Gateway,
    cart: &Cart,
) -> Result<Option<Accepted>, IntakeError> {
    let message = message::encode(cart, Utc::now());
    let cart_id = cart.cart_id.as_uuid();
    let db_failed = |e: sqlx::Error| {
        tracing::error!(%cart_id, error = %e, "payment step of a direct write failed");
        IntakeError::Unavailable
    };
    let verdict = payment::decide(app, gateway, &[(cart, &message)])
        .await
        .map_err(db_failed)?
        .remove(&cart_id)
        .unwrap_or(Verdict::Proceed);
    let write = async {
        let mut tx = app.db.begin().await?;
        match &verdict {
            Verdict::Refused { reason, detail } => {
                orders::record_rejection(&mut tx, cart_id, reason, detail).await?
            }
            Verdict::Unknown(detail) => {
                dead_letters::record(
                    &mut tx,
                    DIRECT_SOURCE,
                    &message,
                    Reason::PaymentUnknown,
                    detail,
                    0,
                )
                .await?;
                payments::mark_unknown(&mut tx, cart_id, detail).await?
            }
            Verdict::Proceed | Verdict::Retry(_) => {}
        }
        tx.commit().await
    };
    match verdict {
        Verdict::Proceed => Ok(None),
        Verdict::Retry(ref why) => {
            tracing::warn!(%cart_id, why, "payment not attempted; the storefront should retry");
            Err(IntakeError::Unavailable)
        }
        Verdict::Refused { .. } | Verdict::Unknown(_) => {
            write.await.map_err(db_failed)?;
            Ok(Some(Accepted::Queued))
        }
    }
}
