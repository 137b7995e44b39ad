//! Partner status replies (DESIGN §7): read from the status queue, signature checked,
//! appended to the order's history, settled after the commit.
//!
//! - bad or missing signature, unknown partner, unknown order, an order assigned to
//!   another partner, or an unreadable reply → recorded in `dead_letters`, rejected,
//!   nothing else changed; an unknown order whose reply names another datacenter is
//!   `wrong-datacenter` (the partner answered on the wrong site's broker), not
//!   `unknown-order`;
//! - the same (order, status) again → accepted, nothing changed;
//! - otherwise → `order_status` gets the status, the order its tracking id.

use std::time::Duration;

use chrono::Utc;
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::fulfilment::FulfilmentSettings;
use crate::domain::Reason;
use crate::domain::event::{NewEvent, OrderStatusChanged};
use crate::domain::partner::{
    self as message, DATACENTER_PROPERTY, PARTNER_STATUSES, SIGNATURE_PROPERTY, StatusReply,
};
use crate::metrics::Metrics;
use crate::on_tx;
use crate::queue::{Delivery, Message, Property, Queue, Settlement};
use crate::service::worker::{self, Gate, Receiving, Report, Step};
use crate::store::{Db, StoreError, Tx};
use crate::store::{dead_letters, events};

const BATCH: usize = 64;
/// How long a reply stays back when the database could not take it.
const RETRY_DELAY: Duration = Duration::from_secs(1);
const MAX_TRACKING_ID: usize = 100;
const SENT_TO_PARTNER: &str = "sent_to_partner";

/// What applying partner replies needs.
pub struct ReplyStep<'a> {
    pub db: &'a Db,
    pub metrics: &'a Metrics,
    /// The partners (their secrets) and the status address.
    pub settings: &'a FulfilmentSettings,
}

impl Step for ReplyStep<'_> {
    /// The whole batch in one transaction (a reply costs a few statements, a commit costs
    /// more: one per reply held the reader to a few hundred a second). Should the database
    /// refuse the batch for a reason other than being down, each reply is tried alone, so
    /// that one bad reply fails by itself.
    async fn step(&self, deliveries: &[Delivery]) -> Report {
        let mut report = Report::default();
        let batch: Vec<&Delivery> = deliveries.iter().collect();
        match self.apply(&batch).await {
            Ok(settlements) => report.settlements = settlements,
            Err(e) if batch.len() > 1 && !e.is_transient() => {
                tracing::warn!(replies = batch.len(), error = %e, "a batch of partner replies was refused; applying each alone");
                for delivery in batch {
                    match self.apply(&[delivery]).await {
                        Ok(settlements) => report.settlements.extend(settlements),
                        Err(e) => self.not_applied(&mut report, delivery, &e),
                    }
                }
            }
            Err(e) => {
                for delivery in batch {
                    self.not_applied(&mut report, delivery, &e);
                }
            }
        }
        report
    }
}

impl ReplyStep<'_> {
    /// A reply the database did not take: back to the queue when it is down, else failed
    /// (retried, up to the attempt limit).
    fn not_applied(&self, report: &mut Report, delivery: &Delivery, e: &StoreError) {
        let settlement = if e.is_transient() {
            report.database_down = true;
            self.metrics.partner_reply("released");
            Settlement::Release { delay: RETRY_DELAY }
        } else {
            tracing::error!(message_id = %delivery.message.message_id, error = %e, "partner reply failed");
            self.metrics.partner_reply("failed");
            Settlement::Fail {
                delay: RETRY_DELAY,
                detail: format!("database refused the reply: {e}"),
            }
        };
        report.settlements.push((delivery.tag, settlement));
    }
}

/// Reads partner replies until `stop`, where the drain switch lets this instance consume
/// (`CARTBUS_CONSUMER=off` or no partner secret: not at all).
pub async fn run(
    step: ReplyStep<'_>,
    queue: &dyn Queue,
    consumer_enabled: bool,
    gate: Gate<'_>,
    stop: CancellationToken,
) {
    let settings = step.settings;
    if !settings.replies_enabled() || !consumer_enabled {
        if settings.enabled() {
            tracing::warn!(
                "partner status replies not read on this instance: no partner has a CARTBUS_PARTNER_<NAME>_SECRET (or CARTBUS_CONSUMER=off)"
            );
        }
        return;
    }
    let receiving = Receiving {
        name: "partner replies",
        queue,
        address: settings.status_address.clone(),
        batch: BATCH,
        step,
    };
    worker::run(gate, &stop, receiving).await;
}

/// Why a reply is turned away, before anything is written.
#[derive(Debug)]
pub struct Refusal {
    pub reason: Reason,
    pub detail: String,
}

fn refuse(reason: Reason, detail: impl Into<String>) -> Refusal {
    Refusal {
        reason,
        detail: detail.into(),
    }
}

/// Checks the reply's form and signature against the partners in `settings`; the order is
/// checked in the transaction. Public (and free of the app and the database) so that the
/// `status_reply` fuzz target can drive it with hostile messages.
pub fn check(settings: &FulfilmentSettings, message: &Message) -> Result<StatusReply, Refusal> {
    let reply: StatusReply = serde_json::from_slice(&message.body).map_err(|e| {
        refuse(
            Reason::Invalid,
            format!("not a status reply {{order_id, status, tracking_id?, partner}}: {e}"),
        )
    })?;
    let partner = reply.partner.to_ascii_lowercase();
    let Some(secret) = settings.partner(&partner).and_then(|p| p.secret.as_ref()) else {
        return Err(refuse(
            Reason::BadSignature,
            format!("no secret is configured for partner {partner:?}"),
        ));
    };
    let Some(Property::String(signature)) = message.properties.get(SIGNATURE_PROPERTY) else {
        return Err(refuse(
            Reason::BadSignature,
            "no `signature` application property",
        ));
    };
    if !message::verify(secret.expose_secret().as_bytes(), &message.body, signature) {
        return Err(refuse(
            Reason::BadSignature,
            format!("signature does not match the body under {partner}'s secret"),
        ));
    }
    // Signed by the partner from here on; still, check what it says.
    if !PARTNER_STATUSES.contains(&reply.status.as_str()) {
        return Err(refuse(
            Reason::Invalid,
            format!(
                "unknown status {:?}; expected one of {}",
                reply.status,
                PARTNER_STATUSES.join(", ")
            ),
        ));
    }
    if let Some(correlation) = &message.correlation_id
        && Uuid::try_parse(correlation).ok() != Some(reply.order_id)
    {
        return Err(refuse(
            Reason::Invalid,
            format!("correlation-id {correlation:?} is not the reply's order_id"),
        ));
    }
    if let Some(tracking) = &reply.tracking_id
        && (tracking.trim().is_empty()
            || tracking.chars().count() > MAX_TRACKING_ID
            || tracking.chars().any(char::is_control))
    {
        return Err(refuse(
            Reason::Invalid,
            format!(
                "tracking_id must be 1 to {MAX_TRACKING_ID} characters, none of them control characters"
            ),
        ));
    }
    Ok(StatusReply { partner, ..reply })
}

impl ReplyStep<'_> {
    /// Applies `deliveries` in one transaction, in order-id order (two instances' batches
    /// then lock the same orders in the same order, never waiting on each other in a
    /// cycle), and says how to settle each. Counted and logged only once committed.
    async fn apply(&self, deliveries: &[&Delivery]) -> Result<Vec<(u64, Settlement)>, StoreError> {
        let mut checked: Vec<(&Delivery, Result<StatusReply, Refusal>)> = deliveries
            .iter()
            .map(|delivery| (*delivery, check(self.settings, &delivery.message)))
            .collect();
        checked.sort_by_key(|(_, reply)| reply.as_ref().ok().map(|reply| reply.order_id));
        let mut tx = self.db.begin().await?;
        let mut outcomes = Vec::with_capacity(checked.len());
        for (delivery, reply) in checked {
            let outcome = match reply {
                Err(refusal) => Err(refusal),
                Ok(reply) => {
                    let elsewhere = elsewhere(self.settings, &delivery.message);
                    record(&mut tx, &reply, elsewhere.as_deref()).await?
                }
            };
            if let Err(Refusal { reason, detail }) = &outcome {
                dead_letters::record(
                    &mut tx,
                    &self.settings.status_address,
                    &delivery.message,
                    *reason,
                    detail,
                    delivery.attempts,
                )
                .await?;
            }
            outcomes.push((delivery, outcome));
        }
        tx.commit().await?;
        Ok(outcomes
            .into_iter()
            .map(|(delivery, outcome)| {
                let settlement = match outcome {
                    Ok(Recorded::Applied) => {
                        self.metrics.partner_reply("applied");
                        Settlement::Accept
                    }
                    Ok(Recorded::Duplicate) => {
                        self.metrics.partner_reply("duplicate");
                        Settlement::Accept
                    }
                    Err(Refusal { reason, detail }) => {
                        tracing::warn!(message_id = %delivery.message.message_id, %reason, detail, "partner reply dead-lettered");
                        self.metrics.partner_reply(reason.as_str());
                        Settlement::Reject { reason, detail }
                    }
                };
                (delivery.tag, settlement)
            })
            .collect())
    }
}

/// The datacenter a reply names, when it is not this site's: where its order would be if
/// it is not here. With one site (`CARTBUS_DATACENTER` unset) there is no elsewhere, as
/// before; nor for a reply that names none (a partner that does not copy the property).
pub(crate) fn elsewhere(settings: &FulfilmentSettings, message: &Message) -> Option<String> {
    let here = settings.datacenter()?;
    let Some(Property::String(named)) = message.properties.get(DATACENTER_PROPERTY) else {
        return None;
    };
    (here != named.as_str()).then(|| named.clone())
}

pub(crate) enum Recorded {
    Applied,
    Duplicate,
}

/// Records a checked reply against its order, in the caller's transaction. `elsewhere`:
/// the other datacenter the reply names ([`elsewhere`]), which makes an unknown order
/// `wrong-datacenter`.
pub(crate) async fn record(
    tx: &mut Tx,
    reply: &StatusReply,
    elsewhere: Option<&str>,
) -> Result<Result<Recorded, Refusal>, sqlx::Error> {
    let order: Option<(Option<String>, Uuid)> = on_tx!(tx, |c| sqlx::query_as(
        "SELECT transport_partner, cart_id FROM orders WHERE id = $1"
    )
    .bind(reply.order_id)
    .fetch_optional(&mut *c)
    .await)?;
    let (partner, cart_id) = order.unzip();
    let assigned = match (partner, elsewhere) {
        (None, Some(datacenter)) => {
            return Ok(Err(refuse(
                Reason::WrongDatacenter,
                format!(
                    "no order {} here: the reply names datacenter {datacenter:?}; the partner should answer on that site's broker (its new-order's reply_broker)",
                    reply.order_id,
                ),
            )));
        }
        (None, None) => {
            return Ok(Err(refuse(
                Reason::UnknownOrder,
                format!("no order {}", reply.order_id),
            )));
        }
        (Some(assigned), _) => assigned,
    };
    if assigned.as_deref() != Some(reply.partner.as_str()) {
        return Ok(Err(refuse(
            Reason::WrongPartner,
            format!(
                "order {} is assigned to {}, not {}",
                reply.order_id,
                assigned.as_deref().unwrap_or("no partner yet"),
                reply.partner
            ),
        )));
    }
    let now = Utc::now();
    if !add_status(tx, reply.order_id, &reply.status, now).await? {
        return Ok(Ok(Recorded::Duplicate));
    }
    // A partner may answer before the relay has marked its order sent (the mark follows
    // the broker's confirmation): the reply proves it was, so `sent_to_partner` is recorded
    // now, and its event goes first. The relay's mark then finds both there.
    let sent_now = add_status(tx, reply.order_id, SENT_TO_PARTNER, now).await?;
    if let Some(tracking) = &reply.tracking_id {
        // A late reply (received_by_partner after shipped) keeps the newer tracking id.
        let recorded: Vec<String> = on_tx!(tx, |c| sqlx::query_scalar(
            "SELECT status FROM order_status WHERE order_id = $1"
        )
        .bind(reply.order_id)
        .fetch_all(&mut *c)
        .await)?;
        let step = |status: &str| PARTNER_STATUSES.iter().position(|s| *s == status);
        let furthest = recorded.iter().filter_map(|s| step(s)).max();
        if furthest <= step(&reply.status) {
            on_tx!(tx, |c| sqlx::query(
                "UPDATE orders SET tracking_id = $1 WHERE id = $2"
            )
            .bind(tracking.trim())
            .bind(reply.order_id)
            .execute(&mut *c)
            .await
            .map(drop))?;
        }
    }
    if let Some(cart_id) = cart_id {
        let changed = |status: &str, tracking_id: Option<String>| {
            let changed = OrderStatusChanged {
                order_id: reply.order_id,
                cart_id,
                status: status.to_string(),
                partner: Some(reply.partner.clone()),
                tracking_id,
            };
            NewEvent::status_changed(&changed, now)
        };
        let mut news = Vec::with_capacity(2);
        if sent_now {
            news.push(changed(SENT_TO_PARTNER, None));
        }
        let tracking = reply.tracking_id.as_deref().map(|t| t.trim().to_string());
        news.push(changed(&reply.status, tracking));
        events::append(tx, &news).await?;
    }
    Ok(Ok(Recorded::Applied))
}

/// Adds `status` to the order's history unless it is there; whether it was added.
async fn add_status(
    tx: &mut Tx,
    order_id: Uuid,
    status: &str,
    at: chrono::DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let inserted: u64 = on_tx!(tx, |c| sqlx::query(
        "INSERT INTO order_status (order_id, status, at) VALUES ($1, $2, $3)
         ON CONFLICT (order_id, status) DO NOTHING"
    )
    .bind(order_id)
    .bind(status)
    .bind(at)
    .execute(&mut *c)
    .await
    .map(|done| done.rows_affected()))?;
    Ok(inserted > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const SECRET: &str = "contoso-secret-0001";

    fn reply_with_tracking(tracking_id: &str) -> Result<StatusReply, Refusal> {
        let settings = Config::from_vars([
            ("CARTBUS_ROUTES", "*=contoso"),
            ("CARTBUS_PARTNER_CONTOSO_SECRET", SECRET),
        ])
        .expect("valid settings")
        .fulfilment;
        let body = serde_json::to_vec(&StatusReply {
            order_id: Uuid::new_v4(),
            status: "shipped".into(),
            tracking_id: Some(tracking_id.into()),
            partner: "contoso".into(),
        })
        .expect("json");
        let signature = message::sign(SECRET.as_bytes(), &body);
        let received = Message {
            message_id: "reply".into(),
            content_type: "application/json".into(),
            properties: [(SIGNATURE_PROPERTY.to_string(), Property::String(signature))]
                .into_iter()
                .collect(),
            body: body.into(),
            ..Default::default()
        };
        check(&settings, &received)
    }

    #[test]
    fn a_tracking_id_is_measured_in_characters_and_holds_no_control_characters() {
        // 100 characters of two bytes each: within the limit the message states.
        assert!(reply_with_tracking(&"é".repeat(100)).is_ok());
        let too_long = reply_with_tracking(&"é".repeat(101)).expect_err("101 characters");
        assert!(too_long.detail.contains("100 characters"), "{too_long:?}");
        for control in ["TRK\u{7}1", "TRK\n1", "TRK\u{1b}[31m"] {
            let refused = reply_with_tracking(control).expect_err(control);
            assert!(refused.detail.contains("control"), "{refused:?}");
        }
    }
}
