//! The outbox relay (DESIGN §7): on every instance, safe side by side. It locks a batch of
//! due `order_dispatch` rows under a lease, sends each order to the partner its shipping
//! address routes to (and a copy to audit above the threshold), then marks the rows it
//! still holds `processed`. A send that fails is retried with backoff and, past the
//! limit, left as `critical_error` for a person.
//!
//! Delivery to partners is at least once: a relay that dies (or stalls past its lease)
//! between sending and marking leaves rows that another relay sends again. Partners
//! dedupe on the message-id, which is the order id.

use std::time::Duration;

use chrono::Utc;
use futures::future::join_all;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::message;
use super::store::{self, AfterFailure};
use crate::app::AppState;
use crate::control;
use crate::orders::{self, OrderView};

/// Longest wait between retries of one row.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(300);
/// Back-off after the database or the relay itself failed.
const ERROR_PAUSE: Duration = Duration::from_secs(2);

pub async fn run(app: AppState, stop: CancellationToken) {
    let settings = &app.config.fulfilment;
    if !settings.enabled() {
        tracing::warn!(
            "fulfilment hand-off off: set CARTBUS_ROUTES (e.g. `*=acme`) to send orders to transport partners; until then they wait in the outbox"
        );
        return;
    }
    if !app.config.consumer_enabled {
        tracing::info!("fulfilment relay off on this instance (CARTBUS_CONSUMER=off)");
        return;
    }
    let workers: Vec<_> = (0..settings.relay.workers)
        .map(|_| tokio::spawn(work(app.clone(), stop.clone())))
        .collect();
    for worker in workers {
        let _ = worker.await;
    }
    tracing::info!("fulfilment relay stopped");
}

/// One relay loop; an instance runs `CARTBUS_RELAY_WORKERS` of them, each claiming its own
/// batches, so one batch's sends overlap another's commits.
async fn work(app: AppState, stop: CancellationToken) {
    let settings = &app.config.fulfilment;
    let mut modes = app.control.subscribe();
    while !stop.is_cancelled() {
        // Like the consumer: only where the drain switch lets this instance work, so a
        // passive or fenced instance sends nothing.
        if !control::until_working(&app, &mut modes, &stop).await {
            break;
        }
        // Counted as consuming while a batch is out, so `drained` waits for it.
        app.control.set_consuming(true);
        let batch = relay_batch(&app).await;
        app.control.set_consuming(false);
        match batch {
            Ok(claimed) if claimed >= settings.relay.batch => continue,
            Ok(_) => {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = app.outbox_wake.notified() => {}
                    _ = tokio::time::sleep(settings.relay.poll) => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?ERROR_PAUSE, "fulfilment relay failed");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(ERROR_PAUSE) => {}
                }
            }
        }
    }
}

/// One batch: claim, load, route, send, mark. Returns how many rows it claimed.
async fn relay_batch(app: &AppState) -> Result<usize, sqlx::Error> {
    let settings = &app.config.fulfilment;
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
        &app.db,
        &app.config.instance,
        batch_id,
        now,
        until,
        settings.relay.batch,
        &route,
    )
    .await?;
    if claimed.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = claimed.iter().map(|row| row.order_id).collect();
    let orders = orders::find_many(&app.db, &ids).await?;

    // An order no rule covers fails like a send would. An order routed by an earlier
    // attempt stays with that partner (its send may have reached the partner though it
    // counted as failed, and the partner's replies are checked against it).
    let mut routed: Vec<(&OrderView, &str)> = Vec::with_capacity(orders.len());
    let mut failures: Vec<(Uuid, String)> = Vec::new();
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
                format!(
                    "no CARTBUS_ROUTES rule for {}{} and no `*` default",
                    address.country,
                    address
                        .region
                        .as_deref()
                        .map(|r| format!(":{r}"))
                        .unwrap_or_default()
                ),
            )),
        }
    }
    if Utc::now() >= until {
        // Too slow to be sure we still hold the rows: another relay may have them.
        tracing::warn!(
            batch = claimed.len(),
            "outbox lease lapsed before sending; leaving the batch to the next relay"
        );
        return Ok(claimed.len());
    }

    let sends = routed.iter().map(|(order, partner)| async move {
        (order.order_id, send_order(app, order, partner).await)
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
    let marked = store::mark_sent(&app.db, batch_id, &sent, now).await?;
    app.metrics.outbox("sent", marked.len() as u64);
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
    for (order_id, error) in failures {
        let failed_before = retry_count(order_id);
        let after = if failed_before >= settings.relay.max_retries {
            AfterFailure::GiveUp
        } else {
            let delay = settings
                .relay
                .retry_base
                .saturating_mul(2_u32.saturating_pow(failed_before))
                .min(MAX_RETRY_DELAY);
            AfterFailure::Retry(now + delay)
        };
        if !store::mark_failed(&app.db, batch_id, order_id, &error, after, now).await? {
            continue;
        }
        match after {
            AfterFailure::GiveUp => {
                app.metrics.outbox("critical_error", 1);
                tracing::error!(%order_id, attempts = failed_before + 1, %error, "order could not be handed to its partner: critical_error, needs a person (GET /v1/admin/outbox)");
            }
            AfterFailure::Retry(at) => {
                app.metrics.outbox("send_failed", 1);
                tracing::warn!(%order_id, attempts = failed_before + 1, %error, retry_at = %at, "sending an order to its partner failed; will retry");
            }
        }
    }
    Ok(claimed.len())
}

/// The new-order to the partner, then the audit copy when the total is above the
/// threshold.
async fn send_order(app: &AppState, order: &OrderView, partner: &str) -> Result<(), String> {
    let settings = &app.config.fulfilment;
    let Some(address) = settings.partner(partner).map(|p| p.address.as_str()) else {
        return Err(format!("partner {partner} has no address"));
    };
    if crate::fault::hit("relay-send") {
        return Err("fail point relay-send".into());
    }
    let message = message::new_order(order, partner, &settings.status_address);
    let audit = (order.total > audit_threshold(settings.audit_threshold, &order.currency))
        .then(|| message.clone());
    app.outbox_queue
        .send(address, message)
        .await
        .map_err(|e| format!("sending to {address}: {e}"))?;
    if let Some(copy) = audit {
        app.outbox_queue
            .send(&settings.audit_address, copy)
            .await
            .map_err(|e| format!("sending the audit copy to {}: {e}", settings.audit_address))?;
        app.metrics.outbox("audit_copy", 1);
    }
    Ok(())
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
