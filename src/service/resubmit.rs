//! Resubmitting a dead letter (issue 8): the message is processed again, here and now, by
//! the rules its reader applies (the consumer's for a cart, the reply reader's for a
//! partner reply), and the operator sees the outcome at once.
//!
//! It does not go back through the queue: a poison message cannot then loop, and the
//! outcome is known when the call answers. The same guarantees hold as for the queue:
//! - one order per cart_id ([`orders::place`]);
//! - the payment step at most once;
//! - nothing committed while the drain switch forbids consuming.
//!
//! The dead letter is locked, checked again, and marked in the same transaction as the
//! order. Two resubmits of one dead letter therefore run one after the other, and a
//! resolved one is never resubmitted again. Each resubmit counts against
//! `CARTBUS_RESUBMIT_LIMIT`.
//!
//! A dry run does all of this in a transaction that is rolled back. It makes no payment
//! call: it reads what the payment step would decide from what is recorded.

use std::sync::Arc;

use chrono::Utc;
use serde::Serialize;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::config::fulfilment::FulfilmentSettings;
use crate::domain::Cart;
use crate::domain::Reason;
use crate::domain::cart_message::{self, Decoded};
use crate::domain::order::Source;
use crate::domain::partner::StatusReply;
use crate::metrics::Metrics;
use crate::on_tx;
use crate::service::drain::Control;
use crate::service::payment::Gateway;
use crate::service::payment::Verdict;
use crate::service::place::{self, Outcome as Placed};
use crate::service::replies::{self, Recorded, Refusal};
use crate::store::Db;
use crate::store::dead_letters::{self, Row};
use crate::store::{StoreError, Tx};

pub use crate::domain::resubmit::Outcome;

/// How to resubmit.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options<'a> {
    pub dry_run: bool,
    /// A corrected cart to process instead of the message's own (carts only).
    pub corrected: Option<&'a Cart>,
    /// Who, for the audit trail.
    pub actor: &'a str,
    /// Why, for the audit trail.
    pub reason: Option<&'a str>,
    /// The bulk job this resubmit belongs to: its progress moves in the same transaction.
    pub job: Option<Uuid>,
}

/// What a resubmit did.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Report {
    pub dead_letter_id: i64,
    pub dry_run: bool,
    pub outcome: Outcome,
    /// The dead letter is now resolved (never in a dry run).
    pub resolved: bool,
    /// What happened, in words.
    #[schema(
        example = "order 0193a5c2-7d1e-7b3a-9f00-5a1d2c3b4e5f created for cart 5f0c8a52-2a4c-4c1e-9b7e-3f1d2a6b8c90"
    )]
    pub detail: String,
    /// The order made, found or in the way.
    pub order_id: Option<Uuid>,
    /// The cart processed (the corrected one's, when one was given).
    pub cart_id: Option<Uuid>,
    /// Resubmits of this dead letter so far, this one included.
    pub resubmits: i32,
    /// `CARTBUS_RESUBMIT_LIMIT`.
    pub resubmit_limit: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no dead letter {0}")]
    NotFound(i64),
    #[error("dead letter {0} was deleted; it cannot be resubmitted")]
    Deleted(i64),
    #[error("dead letter {id} is resolved already ({resolution}); nothing to do")]
    Resolved { id: i64, resolution: String },
    #[error(
        "dead letter {id} was resubmitted {resubmits} times, the limit \
         (CARTBUS_RESUBMIT_LIMIT); fix the cause, or delete it"
    )]
    LimitReached { id: i64, resubmits: i32 },
    #[error("a partner reply is signed over its body, so it can only be resubmitted as it came")]
    CannotCorrectReply,
    /// The drain switch forbids writing orders (paused, fenced, another version).
    #[error("the drain switch forbids it now: {0}; resume first (a dry run works meanwhile)")]
    Gated(String),
    /// The cart's payment step cannot be decided yet (a first call may be in flight, or
    /// the call could not be sent); try again shortly.
    #[error("{0}")]
    Retry(String),
    #[error(transparent)]
    Database(#[from] StoreError),
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Error::Database(e.into())
    }
}

/// What to do with the message, decided before the transaction (decoding, and the
/// payment step, whose call must not hold a transaction open).
enum Plan {
    /// A cart for the place service, with its payment verdict.
    Cart {
        cart: Box<Cart>,
        source: Source,
        verdict: Verdict,
    },
    /// Not processable as it is: nothing is written but the audit.
    Unprocessable(Outcome, String),
    /// A partner reply, checked, and the other datacenter it names, if any.
    Reply(Result<StatusReply, Refusal>, Option<String>),
}

/// What resubmitting dead letters needs; cheap to clone into a bulk job's task.
#[derive(Clone)]
pub struct Resubmitter {
    pub db: Db,
    pub metrics: Arc<Metrics>,
    /// The payment capture endpoint, when one is configured.
    pub payments: Option<Arc<Gateway>>,
    pub control: Arc<Control>,
    /// Woken when an order was created, so that the relay hands it on at once.
    pub outbox_wake: Arc<Notify>,
    /// The partners (a reply is checked against their secrets) and the status address.
    pub fulfilment: Arc<FulfilmentSettings>,
    /// `CARTBUS_RESUBMIT_LIMIT`.
    pub resubmit_limit: u32,
    /// `CARTBUS_INSTANCE`: the owner of the bulk jobs this instance runs.
    pub instance: String,
    /// Bulk jobs running in this process.
    pub jobs: Arc<super::resubmit_jobs::Running>,
}

impl Resubmitter {
    /// Resubmits dead letter `id` (see the module doc).
    pub async fn resubmit(&self, id: i64, options: &Options<'_>) -> Result<Report, Error> {
        let letter = dead_letters::load(&self.db, id)
            .await?
            .ok_or(Error::NotFound(id))?;
        self.check(&letter, options.dry_run)?;
        let plan = if letter.source == self.fulfilment.status_address {
            if options.corrected.is_some() {
                return Err(Error::CannotCorrectReply);
            }
            let message = letter.message();
            Plan::Reply(
                replies::check(&self.fulfilment, &message),
                replies::elsewhere(&self.fulfilment, &message),
            )
        } else {
            self.plan_cart(&letter, options).await?
        };

        let mut tx = self.db.begin().await?;
        if !options.dry_run
            && let Some(why) =
                crate::store::switch::forbids_consuming(&mut tx, self.control.identity()).await?
        {
            return Err(Error::Gated(why.to_string()));
        }
        // Checked again under the lock: another resubmit may have got there first.
        let letter = dead_letters::lock(&mut tx, id)
            .await?
            .ok_or(Error::NotFound(id))?;
        self.check(&letter, options.dry_run)?;
        let done = carry_out(&mut tx, plan, options.dry_run).await?;
        let resolved = !options.dry_run && done.outcome.resolves();
        let resubmits = letter.resubmits + i32::from(!options.dry_run);
        if options.dry_run {
            tx.rollback().await?;
        } else {
            mark(&mut tx, &letter, &done, resolved, options).await?;
            tx.commit().await?;
            self.metrics.dead_letter_resubmit(done.outcome.as_str());
            if done.outcome == Outcome::CreatedOrder {
                self.outbox_wake.notify_one();
            }
            tracing::info!(
                dead_letter = id,
                outcome = done.outcome.as_str(),
                order_id = ?done.order_id,
                by = options.actor,
                "dead letter resubmitted"
            );
        }
        Ok(Report {
            dead_letter_id: id,
            dry_run: options.dry_run,
            outcome: done.outcome,
            resolved,
            detail: done.detail,
            order_id: done.order_id,
            cart_id: done.cart_id,
            resubmits,
            resubmit_limit: self.resubmit_limit,
        })
    }

    /// Refuses a dead letter that is deleted, resolved or (for real) at its replay limit.
    fn check(&self, letter: &Row, dry_run: bool) -> Result<(), Error> {
        if letter.deleted_at.is_some() {
            return Err(Error::Deleted(letter.id));
        }
        if letter.resolved_at.is_some() {
            let resolution = match (&letter.resolution, letter.order_id) {
                (Some(how), Some(order_id)) => format!("{how}, order {order_id}"),
                (Some(how), None) => how.clone(),
                (None, _) => "resolved".into(),
            };
            return Err(Error::Resolved {
                id: letter.id,
                resolution,
            });
        }
        if !dry_run && letter.resubmits >= i32::try_from(self.resubmit_limit).unwrap_or(i32::MAX) {
            return Err(Error::LimitReached {
                id: letter.id,
                resubmits: letter.resubmits,
            });
        }
        Ok(())
    }

    async fn plan_cart(&self, letter: &Row, options: &Options<'_>) -> Result<Plan, Error> {
        let original = letter.message();
        let cart = match options.corrected {
            Some(cart) => Box::new(cart.clone()),
            None => match cart_message::decode(&original) {
                Decoded::Cart(cart) => cart,
                Decoded::UnknownSchema(detail) => {
                    return Ok(Plan::Unprocessable(Outcome::UnknownSchema, detail));
                }
                Decoded::Invalid(detail) => {
                    return Ok(Plan::Unprocessable(Outcome::Invalid, detail));
                }
            },
        };
        let source = if letter.source == crate::service::intake::DIRECT_SOURCE {
            Source::Direct
        } else {
            Source::Queue
        };
        let verdict = if options.dry_run {
            place::predict_payment(&self.db, self.payments.as_deref(), &cart).await?
        } else {
            // The payment step sees the cart being placed (the corrected one, if any).
            let message = match options.corrected {
                Some(cart) => cart_message::encode(cart, Utc::now()),
                None => original,
            };
            let verdicts = place::pay(
                &self.db,
                &self.metrics,
                self.payments.as_deref(),
                &[(&cart, &message)],
            )
            .await?;
            place::verdict_for(&verdicts, &cart)
        };
        if let Verdict::Retry(why) = verdict {
            return Err(Error::Retry(why));
        }
        Ok(Plan::Cart {
            cart,
            source,
            verdict,
        })
    }
}

/// What the transaction did.
struct Done {
    outcome: Outcome,
    detail: String,
    order_id: Option<Uuid>,
    cart_id: Option<Uuid>,
}

async fn carry_out(tx: &mut Tx, plan: Plan, dry_run: bool) -> Result<Done, StoreError> {
    let done = |outcome, detail: String, order_id, cart_id| Done {
        outcome,
        detail,
        order_id,
        cart_id,
    };
    Ok(match plan {
        Plan::Unprocessable(outcome, detail) => done(outcome, detail, None, None),
        Plan::Cart {
            cart,
            source,
            verdict,
        } => {
            let cart_id = cart.cart_id.as_uuid();
            let placed = place::place(
                tx,
                &[(&cart, &verdict)],
                source,
                place::timestamp_now(),
                None,
            )
            .await?
            .pop()
            .ok_or_else(|| StoreError::invariant("no outcome for the cart"))?;
            match placed {
                Placed::Created(_) if dry_run => done(
                    Outcome::WouldCreateOrder,
                    format!("cart {cart_id} would become a new order"),
                    None,
                    Some(cart_id),
                ),
                Placed::Created(order_id) => done(
                    Outcome::CreatedOrder,
                    format!("order {order_id} created for cart {cart_id}"),
                    Some(order_id),
                    Some(cart_id),
                ),
                Placed::Duplicate(order_id) => done(
                    Outcome::Duplicate,
                    format!(
                        "cart {cart_id} is order {order_id} already (same payload): \
                         nothing new is created"
                    ),
                    Some(order_id),
                    Some(cart_id),
                ),
                Placed::Rejected {
                    reason: Reason::Conflict,
                    order_id,
                    ..
                } => done(
                    Outcome::Conflict,
                    format!(
                        "order {} holds cart_id {cart_id} with a different payload; \
                         resubmit a corrected cart with a new cart_id, or delete this",
                        order_id.map(|id| id.to_string()).unwrap_or_default()
                    ),
                    order_id,
                    Some(cart_id),
                ),
                Placed::Rejected { detail, .. } => {
                    done(Outcome::PaymentDeclined, detail, None, Some(cart_id))
                }
                Placed::PaymentUnknown(detail) => {
                    let detail = format!(
                        "{detail}; resolve it first: POST /v1/admin/payments/{cart_id}/resolve"
                    );
                    done(Outcome::PaymentUnknown, detail, None, Some(cart_id))
                }
            }
        }
        Plan::Reply(Err(Refusal { reason, detail }), _) => {
            done(Outcome::refused(reason), detail, None, None)
        }
        Plan::Reply(Ok(reply), elsewhere) => {
            match replies::record(tx, &reply, elsewhere.as_deref()).await? {
                Err(Refusal { reason, detail }) => {
                    done(Outcome::refused(reason), detail, None, None)
                }
                Ok(Recorded::Applied) => done(
                    if dry_run {
                        Outcome::WouldApplyReply
                    } else {
                        Outcome::ReplyApplied
                    },
                    format!(
                        "{} from {} for order {}",
                        reply.status, reply.partner, reply.order_id
                    ),
                    Some(reply.order_id),
                    None,
                ),
                Ok(Recorded::Duplicate) => done(
                    Outcome::Duplicate,
                    format!(
                        "order {} has {} already: nothing changes",
                        reply.order_id, reply.status
                    ),
                    Some(reply.order_id),
                    None,
                ),
            }
        }
    })
}

/// Counts the resubmit, resolves the dead letter when the outcome says so, writes the
/// audit entry and moves the bulk job on: all in the caller's transaction.
async fn mark(
    tx: &mut Tx,
    letter: &Row,
    done: &Done,
    resolved: bool,
    options: &Options<'_>,
) -> Result<(), sqlx::Error> {
    let now = Utc::now();
    on_tx!(tx, |c| sqlx::query(
        "UPDATE dead_letters SET resubmits = resubmits + 1, resubmitted_at = $2,
             resolved_at = $3, resolution = $4, order_id = $5
         WHERE id = $1"
    )
    .bind(letter.id)
    .bind(now)
    .bind(resolved.then_some(now))
    .bind(resolved.then_some(done.outcome.as_str()))
    .bind(if resolved { done.order_id } else { None })
    .execute(&mut *c)
    .await
    .map(drop))?;
    on_tx!(tx, |c| sqlx::query(
        "INSERT INTO dead_letter_audit
             (dead_letter_id, action, outcome, order_id, actor, reason, detail, job_id, at)
         VALUES ($1, 'resubmit', $2, $3, $4, $5, $6, $7, $8)"
    )
    .bind(letter.id)
    .bind(done.outcome.as_str())
    .bind(done.order_id)
    .bind(options.actor)
    .bind(options.reason)
    .bind(&done.detail)
    .bind(options.job)
    .bind(now)
    .execute(&mut *c)
    .await
    .map(drop))?;
    if let Some(job) = options.job {
        super::resubmit_jobs::advance(tx, job, letter.id).await?;
    }
    Ok(())
}

#[cfg(test)]
mod outcome_tests {
    use super::Outcome;

    #[test]
    fn every_outcome_has_its_own_word() {
        let words: std::collections::HashSet<&str> =
            Outcome::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(words.len(), Outcome::ALL.len());
        assert_eq!(Outcome::ALL.iter().filter(|o| o.is_dry_run()).count(), 2);
    }
}
