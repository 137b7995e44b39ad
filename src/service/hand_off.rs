//! Handing held outbox rows to partners (DESIGN §7), written once for both ways a row is
//! held: the polling relay's claim ([`super::relay`]) and the consumer's lease on the
//! orders it has just committed ([`super::dispatch`]). Each order goes to the partner its
//! row names (and a copy to audit above the threshold); the rows still held are then
//! marked `processed` in one transaction. A send that fails is retried with backoff and,
//! past the limit, left as `critical_error` for a person. A send that fails because the
//! queue is down is not counted against its row: it is tried again after a pause, however
//! long the outage, so that a broker restart never leaves orders for a person to push on.
//!
//! Delivery to partners is at least once: an instance that dies (or stalls past its
//! lease) between sending and marking leaves rows that a relay sends again. Partners
//! dedupe on the message-id, which is the order id.

use std::time::Duration;

use chrono::Utc;
use futures::future::join_all;
use uuid::Uuid;

use crate::config::fulfilment::FulfilmentSettings;
use crate::domain::order::OrderView;
use crate::domain::partner as message;
use crate::metrics::Metrics;
use crate::queue::{Queue, QueueError};
use crate::store::outbox::{self as store, AfterFailure};
use crate::store::{Db, StoreError};

/// Longest wait between retries of one row.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(300);
/// Back-off after sends failed because the queue was down; the rows are due again then.
pub const QUEUE_DOWN_PAUSE: Duration = Duration::from_secs(1);

/// What sending needs.
#[derive(Clone, Copy)]
pub struct HandOff<'a> {
    pub db: &'a Db,
    /// The queue orders go out on (for a broker, a connection of its own).
    pub queue: &'a dyn Queue,
    pub metrics: &'a Metrics,
    pub settings: &'a FulfilmentSettings,
}

/// One outbox row held under a lease, with its order.
pub struct Held<'o> {
    /// The claim (or lease) that holds the row: every write after it names it.
    pub batch_id: Uuid,
    pub order: &'o OrderView,
    /// `None` when no `CARTBUS_ROUTES` rule covers the order.
    pub partner: Option<&'o str>,
    /// Failed sends so far.
    pub retry_count: u32,
}

/// What [`HandOff::send`] did.
pub struct Sent {
    /// Rows marked `processed`.
    pub marked: usize,
    /// Some send failed because the queue was down: the caller pauses before it tries
    /// more.
    pub queue_down: bool,
}

/// Why an order could not be sent.
enum SendFailure {
    /// The order's own problem (no route, a partner without an address, the broker
    /// refused it): counts against the row's retries.
    Order(String),
    /// The queue was down or did not answer: the row is tried again without counting.
    QueueDown(String),
}

impl SendFailure {
    fn sending(address: &str, error: QueueError) -> SendFailure {
        let why = format!("sending to {address}: {error}");
        // Matched in full, so that a new kind of error must be placed here.
        match error {
            QueueError::Refused(_) => SendFailure::Order(why),
            QueueError::Unavailable(_) | QueueError::Storage(_) | QueueError::Closed => {
                SendFailure::QueueDown(why)
            }
        }
    }
}

impl HandOff<'_> {
    /// Sends every held row's order at once (the queue's window overlaps them), then
    /// records what became of each.
    pub async fn send(&self, held: &[Held<'_>]) -> Result<Sent, StoreError> {
        let settings = self.settings;
        let mut failures: Vec<(&Held, SendFailure)> = Vec::new();
        let mut routed: Vec<(&Held, &str)> = Vec::with_capacity(held.len());
        for row in held {
            match row.partner {
                Some(partner) => routed.push((row, partner)),
                None => {
                    let address = &row.order.shipping_address;
                    failures.push((
                        row,
                        SendFailure::Order(format!(
                            "no CARTBUS_ROUTES rule for {}{} and no `*` default",
                            address.country,
                            address
                                .region
                                .as_deref()
                                .map(|r| format!(":{r}"))
                                .unwrap_or_default()
                        )),
                    ))
                }
            }
        }
        let sends = routed
            .iter()
            .map(|(row, partner)| async move { (*row, self.send_order(row.order, partner).await) });
        let results = join_all(sends).await;
        crate::fault::freeze_if_hit("relay-after-send").await;

        let mut sent = Vec::with_capacity(results.len());
        for (row, result) in results {
            match result {
                Ok(()) => sent.push((row.order.order_id, row.batch_id)),
                Err(e) => failures.push((row, e)),
            }
        }
        let now = Utc::now();
        let marked = store::mark_sent(self.db, &sent, now).await?;
        self.metrics.outbox("sent", marked.len() as u64);
        if marked.len() < sent.len() {
            tracing::warn!(
                taken = sent.len() - marked.len(),
                lease = ?settings.relay.lease,
                "outbox lease lapsed while sending and another relay took rows: they are sent again (partners dedupe on message-id)"
            );
        }
        let queue_down = failures
            .iter()
            .any(|(_, failure)| matches!(failure, SendFailure::QueueDown(_)));
        let mut deferred = 0u64;
        let mut last_queue_error = None;
        for (row, failure) in failures {
            let order_id = row.order.order_id;
            let failed_before = row.retry_count;
            let (after, error) = match failure {
                SendFailure::QueueDown(error) => {
                    (AfterFailure::Defer(now + QUEUE_DOWN_PAUSE), error)
                }
                SendFailure::Order(error) if failed_before >= settings.relay.max_retries => {
                    (AfterFailure::GiveUp, error)
                }
                SendFailure::Order(error) => {
                    let delay = settings
                        .relay
                        .retry_base
                        .saturating_mul(2_u32.saturating_pow(failed_before))
                        .min(MAX_RETRY_DELAY);
                    (AfterFailure::Retry(now + delay), error)
                }
            };
            if !store::mark_failed(self.db, row.batch_id, order_id, &error, after, now).await? {
                continue;
            }
            match after {
                AfterFailure::Defer(_) => {
                    deferred += 1;
                    last_queue_error = Some(error);
                }
                AfterFailure::GiveUp => {
                    self.metrics.outbox("critical_error", 1);
                    tracing::error!(%order_id, attempts = failed_before + 1, %error, "order could not be handed to its partner: critical_error, needs a person (GET /v1/admin/outbox)");
                }
                AfterFailure::Retry(at) => {
                    self.metrics.outbox("send_failed", 1);
                    tracing::warn!(%order_id, attempts = failed_before + 1, %error, retry_at = %at, "sending an order to its partner failed; will retry");
                }
            }
        }
        if deferred > 0 {
            // One line per batch, not per order: an outage can hold thousands.
            self.metrics.outbox("send_deferred", deferred);
            tracing::warn!(orders = deferred, error = last_queue_error.as_deref().unwrap_or(""), retry_in = ?QUEUE_DOWN_PAUSE, "the queue is down: orders wait for it, their retries not counted");
        }
        Ok(Sent {
            marked: marked.len(),
            queue_down,
        })
    }

    /// The new-order to the partner, then the audit copy when the total is above the
    /// threshold.
    async fn send_order(&self, order: &OrderView, partner: &str) -> Result<(), SendFailure> {
        let settings = self.settings;
        let Some(address) = settings.partner(partner).map(|p| p.address.as_str()) else {
            return Err(SendFailure::Order(format!(
                "partner {partner} has no address"
            )));
        };
        if crate::fault::hit("relay-send") {
            return Err(SendFailure::Order("fail point relay-send".into()));
        }
        let message = message::new_order(
            order,
            partner,
            &settings.status_address,
            settings.site.as_ref(),
        );
        let audit = (order.total > audit_threshold(settings.audit_threshold, &order.currency))
            .then(|| message.clone());
        self.queue
            .send(address, message)
            .await
            .map_err(|e| SendFailure::sending(address, e))?;
        if let Some(copy) = audit {
            self.queue
                .send(&settings.audit_address, copy)
                .await
                .map_err(|e| SendFailure::sending(&settings.audit_address, e))?;
            self.metrics.outbox("audit_copy", 1);
        }
        Ok(())
    }
}

/// The audit threshold in `currency`'s minor units. `CARTBUS_AUDIT_THRESHOLD` is in the
/// minor units of a two-decimal currency (1000000 = 10,000.00), so it means the same
/// amount in yen (no decimals: ¥10,000) or dinars (three: 10,000.000).
pub fn audit_threshold(threshold: i64, currency: &str) -> i64 {
    let exponent = iso_currency::Currency::from_code(currency)
        .and_then(|c| c.exponent())
        .unwrap_or(2);
    match exponent {
        0 => threshold / 100,
        1 => threshold / 10,
        2 => threshold,
        e => threshold.saturating_mul(10_i64.saturating_pow(u32::from(e) - 2)),
    }
}

#[cfg(test)]
mod tests {
    use super::audit_threshold;

    #[test]
    fn the_audit_threshold_is_the_same_amount_in_every_currency() {
        assert_eq!(audit_threshold(1_000_000, "GBP"), 1_000_000);
        assert_eq!(audit_threshold(1_000_000, "JPY"), 10_000);
        assert_eq!(audit_threshold(1_000_000, "KWD"), 10_000_000);
        assert_eq!(audit_threshold(1_000_000, "XXX"), 1_000_000);
    }
}
