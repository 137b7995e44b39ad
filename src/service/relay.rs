//! The outbox relay (DESIGN §7): on every instance, safe side by side. It locks a batch of
//! due `order_dispatch` rows under a lease, sends each order to the partner its shipping
//! address routes to (and a copy to audit above the threshold), then marks the rows it
//! still holds `processed`. A send that fails is retried with backoff and, past the
//! limit, left as `critical_error` for a person. A send that fails because the queue is
//! down is not counted against its row: the relay pauses and tries again, however long
//! the outage, so that a broker restart never leaves orders for a person to push on.
//!
//! Delivery to partners is at least once: a relay that dies (or stalls past its lease)
//! between sending and marking leaves rows that another relay sends again. Partners
//! dedupe on the message-id, which is the order id.

use std::time::Duration;

use chrono::Utc;
use futures::future::join_all;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::backoff::Backoff;
use crate::config::fulfilment::FulfilmentSettings;
use crate::domain::order::OrderView;
use crate::domain::partner as message;
use crate::metrics::Metrics;
use crate::queue::{Queue, QueueError};
use crate::service::worker::{self, Gate};
use crate::store::outbox::{self as store, AfterFailure};
use crate::store::{Db, StoreError, order_reads};

/// Longest wait between retries of one row.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(300);
/// Back-off after sends failed because the queue was down; the rows are due again then.
const QUEUE_DOWN_PAUSE: Duration = Duration::from_secs(1);

/// What one batch did.
struct Batch {
    /// Rows claimed.
    claimed: usize,
    /// Some send failed because the queue was down (not because it refused the message).
    queue_down: bool,
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

/// What handing orders to partners needs.
pub struct Relay<'a> {
    pub db: &'a Db,
    /// The queue the relay sends on (a broker connection of its own).
    pub queue: &'a dyn Queue,
    pub metrics: &'a Metrics,
    pub settings: &'a FulfilmentSettings,
    /// `CARTBUS_INSTANCE`: the name on the leases it takes.
    pub instance: &'a str,
    /// Woken when orders were just written.
    pub wake: &'a Notify,
}

/// Runs `CARTBUS_RELAY_WORKERS` relay loops until `stop`, where the drain switch lets this
/// instance work.
pub async fn run(
    relay: Relay<'_>,
    consumer_enabled: bool,
    gate: Gate<'_>,
    stop: CancellationToken,
) {
    let settings = relay.settings;
    if !settings.enabled() {
        tracing::warn!(
            "fulfilment hand-off off: set CARTBUS_ROUTES (e.g. `*=acme`) to send orders to transport partners; until then they wait in the outbox"
        );
        return;
    }
    if !consumer_enabled {
        tracing::info!("fulfilment relay off on this instance (CARTBUS_CONSUMER=off)");
        return;
    }
    // Each loop claims its own batches, so one batch's sends overlap another's commits.
    let loops =
        (0..settings.relay.workers).map(|_| worker::run(gate, &stop, Worker { relay: &relay }));
    join_all(loops).await;
    tracing::info!("fulfilment relay stopped");
}

/// One relay loop, as a worker session: batch after batch until the session ends.
struct Worker<'a, 'b> {
    relay: &'b Relay<'a>,
}

impl worker::Worker for Worker<'_, '_> {
    fn name(&self) -> &'static str {
        "fulfilment relay"
    }

    async fn session(
        &mut self,
        stop: &CancellationToken,
        reconnect: &mut Backoff,
    ) -> Result<(), String> {
        let relay = self.relay;
        while !stop.is_cancelled() {
            match relay.batch().await {
                Ok(Batch {
                    queue_down: true, ..
                }) => {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(QUEUE_DOWN_PAUSE) => {}
                    }
                }
                Ok(Batch { claimed, .. }) if claimed >= relay.settings.relay.batch => {
                    reconnect.reset();
                }
                Ok(_) => {
                    reconnect.reset();
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = relay.wake.notified() => {}
                        _ = tokio::time::sleep(relay.settings.relay.poll) => {}
                    }
                }
                Err(e) => return Err(format!("fulfilment relay failed: {e}")),
            }
        }
        Ok(())
    }
}

impl Relay<'_> {
    /// One batch: claim, load, route, send, mark.
    async fn batch(&self) -> Result<Batch, StoreError> {
        let settings = self.settings;
        let batch_id = Uuid::now_v7();
        let now = Utc::now();
        let until = now + settings.relay.lease;
        let routes = settings.routes.as_ref();
        let route = |country: &str, region: Option<&str>| {
            routes
                .and_then(|routes| routes.partner_for(country, region))
                .map(str::to_string)
        };
        let claimed = store::claim(
            self.db,
            self.instance,
            batch_id,
            now,
            until,
            // While the queue is down, one row probes it, instead of a whole batch failing.
            if self.queue.is_healthy() {
                settings.relay.batch
            } else {
                1
            },
            &route,
        )
        .await?;
        if claimed.is_empty() {
            return Ok(Batch {
                claimed: 0,
                queue_down: false,
            });
        }
        let ids: Vec<Uuid> = claimed.iter().map(|row| row.order_id).collect();
        let orders = order_reads::find_many(self.db, &ids).await?;

        // An order no rule covers fails like a send would. An order routed by an earlier
        // attempt stays with that partner (its send may have reached the partner though it
        // counted as failed, and the partner's replies are checked against it).
        let mut routed: Vec<(&OrderView, &str)> = Vec::with_capacity(orders.len());
        let mut failures: Vec<(Uuid, SendFailure)> = Vec::new();
        for order in &orders {
            let address = &order.shipping_address;
            let partner = claimed
                .iter()
                .find(|row| row.order_id == order.order_id)
                .and_then(|row| row.partner.as_deref());
            match partner {
                Some(partner) => routed.push((order, partner)),
                None => failures.push((
                    order.order_id,
                    SendFailure::Order(format!(
                        "no CARTBUS_ROUTES rule for {}{} and no `*` default",
                        address.country,
                        address
                            .region
                            .as_deref()
                            .map(|r| format!(":{r}"))
                            .unwrap_or_default()
                    )),
                )),
            }
        }
        if Utc::now() >= until {
            // Too slow to be sure we still hold the rows: another relay may have them.
            tracing::warn!(
                batch = claimed.len(),
                "outbox lease lapsed before sending; leaving the batch to the next relay"
            );
            return Ok(Batch {
                claimed: claimed.len(),
                queue_down: false,
            });
        }

        let sends = routed.iter().map(|(order, partner)| async move {
            (order.order_id, self.send_order(order, partner).await)
        });
        let results = join_all(sends).await;
        crate::fault::freeze_if_hit("relay-after-send").await;

        let mut sent = Vec::with_capacity(results.len());
        for (order_id, result) in results {
            match result {
                Ok(()) => sent.push(order_id),
                Err(e) => failures.push((order_id, e)),
            }
        }
        let now = Utc::now();
        let marked = store::mark_sent(self.db, batch_id, &sent, now).await?;
        self.metrics.outbox("sent", marked.len() as u64);
        if marked.len() < sent.len() {
            tracing::warn!(
                taken = sent.len() - marked.len(),
                lease = ?settings.relay.lease,
                "outbox lease lapsed while sending and another relay took rows: they are sent again (partners dedupe on message-id)"
            );
        }
        let retry_count = |order_id: Uuid| {
            claimed
                .iter()
                .find(|row| row.order_id == order_id)
                .map(|row| u32::try_from(row.retry_count).unwrap_or(0))
                .unwrap_or(0)
        };
        let queue_down = failures
            .iter()
            .any(|(_, failure)| matches!(failure, SendFailure::QueueDown(_)));
        let mut deferred = 0u64;
        let mut last_queue_error = None;
        for (order_id, failure) in failures {
            let failed_before = retry_count(order_id);
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
            if !store::mark_failed(self.db, batch_id, order_id, &error, after, now).await? {
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
        Ok(Batch {
            claimed: claimed.len(),
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
        let message = message::new_order(order, partner, &settings.status_address);
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
fn audit_threshold(threshold: i64, currency: &str) -> i64 {
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
