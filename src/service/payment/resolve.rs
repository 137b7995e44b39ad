//! Resolving an unknown payment (DESIGN §8): an operator's finding places the order or
//! rejects the checkout, in one transaction with the audit record.

use std::time::Duration;

use bytes::Bytes;
use uuid::Uuid;

use crate::domain::Reason;
use crate::domain::cart_message::{self, Decoded};
use crate::domain::order::Source;
use crate::domain::payment::{Finding, PaymentState, PaymentView, abandoned_at, abandoned_before};
use crate::queue::Message;
use crate::service::payment::{PAYMENT_FAILED, Verdict};
use crate::service::place::{self, Outcome};
use crate::store::{Db, StoreError, payments};

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("no payment step for cart {0}")]
    NotFound(Uuid),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Database(#[from] StoreError),
}

impl From<sqlx::Error> for ResolveError {
    fn from(e: sqlx::Error) -> Self {
        ResolveError::Database(e.into())
    }
}

/// Resolves an unknown payment: `Captured` places the order from the stored cart
/// message, `Failed` rejects the checkout, each in one transaction with the audit record.
/// A capture left without its order (abandoned) may be resolved `Captured` too: its order
/// is placed the same way. The same finding again answers as the first did; a different
/// one, or a call that may still be in flight, is a conflict.
pub async fn resolve(
    db: &Db,
    cart_id: Uuid,
    finding: Finding,
    payment_id: Option<&str>,
    by: &str,
    reason: &str,
    payment_timeout: Duration,
) -> Result<PaymentView, ResolveError> {
    let mut tx = db.begin().await?;
    let captured = finding == Finding::Captured;
    let cutoff = abandoned_before(payment_timeout);
    let resolution = payments::Resolution {
        captured,
        payment_id,
        by,
        reason,
        abandoned_before: cutoff,
    };
    let Some(body) = payments::resolve(&mut tx, cart_id, &resolution).await? else {
        let view = payments::find(&mut tx, cart_id, cutoff)
            .await?
            .ok_or(ResolveError::NotFound(cart_id))?;
        return match view.state {
            state if state == finding.state() => Ok(view),
            PaymentState::InFlight => Err(ResolveError::Conflict(format!(
                "payment call in flight; try again after {} (the call of cart {cart_id} \
                 started at {} and may still capture)",
                abandoned_at(view.called_at, payment_timeout).to_rfc3339(),
                view.called_at.to_rfc3339()
            ))),
            PaymentState::Captured if view.order_id.is_none() => {
                let since = view.result_at.unwrap_or(view.called_at);
                Err(ResolveError::Conflict(match finding {
                    Finding::Failed => format!(
                        "the payment of cart {cart_id} was captured; it cannot be resolved as failed"
                    ),
                    Finding::Captured => format!(
                        "the payment of cart {cart_id} was captured and its order may still be \
                         being written; try again after {}",
                        abandoned_at(since, payment_timeout).to_rfc3339()
                    ),
                }))
            }
            state => Err(ResolveError::Conflict(format!(
                "the payment of cart {cart_id} is {}, not unknown",
                state.as_str()
            ))),
        };
    };
    match finding {
        Finding::Captured => {
            let message = Message {
                message_id: cart_id.to_string(),
                content_type: cart_message::CONTENT_TYPE.into(),
                body: Bytes::from(body),
                ..Default::default()
            };
            let cart = match cart_message::decode(&message) {
                Decoded::Cart(cart) => cart,
                Decoded::UnknownSchema(detail) | Decoded::Invalid(detail) => {
                    return Err(ResolveError::Conflict(format!(
                        "the stored cart message cannot be ordered: {detail}"
                    )));
                }
            };
            let placed = place::place(
                &mut tx,
                &[(&cart, &Verdict::Proceed)],
                Source::Queue,
                place::timestamp_now(),
                None,
            )
            .await?;
            if let Some(Outcome::Rejected { detail, .. }) = placed.into_iter().next() {
                return Err(ResolveError::Conflict(detail));
            }
        }
        Finding::Failed => {
            // The shopper sees this detail; the operator's reason stays in the audit record.
            place::reject(
                &mut tx,
                cart_id,
                Reason::PaymentFailed,
                PAYMENT_FAILED,
                None,
            )
            .await?;
        }
    }
    let view = payments::find(&mut tx, cart_id, cutoff)
        .await?
        .ok_or(ResolveError::NotFound(cart_id))?;
    tx.commit().await?;
    tracing::warn!(%cart_id, ?finding, by, "payment resolved by an operator");
    Ok(view)
}
