//! The polling outbox relay (DESIGN §7): on every instance, safe side by side. It locks a
//! batch of due `order_dispatch` rows under a lease and hands them on
//! ([`super::hand_off`]). Most orders never reach it: the consumer leases and sends the
//! orders it has just committed ([`super::dispatch`]). The relay is for the rest: what a
//! crash, an outage, a retry, another path (a direct write, a resubmit) or another
//! instance left behind.

use chrono::Utc;
use futures::future::join_all;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::backoff::Backoff;
use crate::service::hand_off::{HandOff, Held, QUEUE_DOWN_PAUSE};
use crate::service::worker::{self, Gate};
use crate::store::outbox as store;
use crate::store::{StoreError, order_reads};

/// What one batch did.
struct Batch {
    /// Rows claimed.
    claimed: usize,
    /// Some send failed because the queue was down (not because it refused the message).
    queue_down: bool,
}

/// What handing orders to partners needs.
pub struct Relay<'a> {
    pub hand_off: HandOff<'a>,
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
    let settings = relay.hand_off.settings;
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
                Ok(Batch { claimed, .. }) if claimed >= relay.hand_off.settings.relay.batch => {
                    reconnect.reset();
                }
                Ok(_) => {
                    reconnect.reset();
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = relay.wake.notified() => {}
                        _ = tokio::time::sleep(relay.hand_off.settings.relay.poll) => {}
                    }
                }
                Err(e) => return Err(format!("fulfilment relay failed: {e}")),
            }
        }
        Ok(())
    }
}

impl Relay<'_> {
    /// One batch: claim, load, hand on.
    async fn batch(&self) -> Result<Batch, StoreError> {
        let HandOff {
            db,
            queue,
            settings,
            ..
        } = self.hand_off;
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
            db,
            self.instance,
            batch_id,
            now,
            until,
            // While the queue is down, one row probes it, instead of a whole batch failing.
            if queue.is_healthy() {
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
        let orders = order_reads::find_many(db, &ids).await?;
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
        // An order routed by an earlier attempt stays with that partner (its send may have
        // reached the partner though it counted as failed, and the partner's replies are
        // checked against it).
        let held: Vec<Held> = orders
            .iter()
            .filter_map(|order| {
                let row = claimed.iter().find(|row| row.order_id == order.order_id)?;
                Some(Held {
                    batch_id,
                    order,
                    partner: row.partner.as_deref(),
                    retry_count: u32::try_from(row.retry_count).unwrap_or(0),
                })
            })
            .collect();
        let sent = self.hand_off.send(&held).await?;
        Ok(Batch {
            claimed: claimed.len(),
            queue_down: sent.queue_down,
        })
    }
}
