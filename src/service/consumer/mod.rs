//! The cart → order consumer: receive a batch, convert it in one transaction, settle each
//! delivery after the commit. On shutdown the batch in hand finishes and the receiver
//! gives back anything it still holds.

pub mod convert;

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::queue::{Delivery, QueueError, Receiver, Settlement};
use crate::runtime::app::AppState;
use crate::service::drain::{self, Mode, pause};

const MIN_BACKOFF: Duration = Duration::from_millis(200);
/// Capped low enough that a consumer is back within seconds of its broker or database.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

pub async fn run(app: AppState, stop: CancellationToken) {
    if !app.config.consumer_enabled {
        tracing::info!("consumer off on this instance (CARTBUS_CONSUMER=off): passive");
        return;
    }
    let mut modes = app.control.subscribe();
    let mut backoff = MIN_BACKOFF;
    while !stop.is_cancelled() {
        // Consume only while the drain switch lets this instance, and orders can be written.
        if !drain::until_working(&app, &mut modes, &stop).await {
            break;
        }
        // Counted as consuming from before the receiver opens (a broker connect takes a
        // while): until the session is over, this instance must not report `paused`.
        app.control.set_consuming(true);
        let receiver = match app.queue.receiver(&app.config.cart_address).await {
            Ok(receiver) => receiver,
            Err(e) => {
                app.control.set_consuming(false);
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot open the cart queue receiver");
                pause(&stop, backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        tracing::info!(address = %app.config.cart_address, queue = app.queue.kind(), "consumer started");
        // This session ends on shutdown or as soon as the switch says stop consuming.
        let session = drain::Session::start(&app, &stop);
        let result = consume(&app, receiver, session.token(), &mut backoff).await;
        app.control.set_consuming(false);
        // Report the new state now rather than at the next heartbeat: `drained` waits on it.
        app.control.nudge();
        drop(session);
        match result {
            Ok(()) if !stop.is_cancelled() => {
                tracing::info!(mode = ?app.control.mode(), "consumer paused: in-flight work settled, held deliveries given back");
                if app.control.mode() == Mode::Consume {
                    // Stopped by the in-transaction check before this instance's watcher
                    // saw the switch change: give it a moment rather than spin.
                    pause(&stop, Duration::from_millis(250)).await;
                }
            }
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "consumer lost its receiver");
                pause(&stop, backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    tracing::info!("consumer stopped");
}

/// `reconnect_backoff` is reset once a batch has been settled: a receiver that worked
/// for a while and then broke is not a reason to wait long before the next one.
async fn consume(
    app: &AppState,
    mut receiver: Box<dyn Receiver>,
    stop: &CancellationToken,
    reconnect_backoff: &mut Duration,
) -> Result<(), QueueError> {
    let mut backoff = MIN_BACKOFF;
    let batch = app.config.consumer_batch;
    // The next batch, taken while the current one converts (it is not started, so a
    // pause gives it back untouched through `close`).
    let mut next: Vec<Delivery> = Vec::new();
    let result = loop {
        let deliveries = if next.is_empty() {
            match receiver.receive(batch, stop).await {
                Ok(deliveries) if deliveries.is_empty() => break Ok(()),
                Ok(deliveries) => deliveries,
                Err(e) => break Err(e),
            }
        } else {
            std::mem::take(&mut next)
        };
        // Test-only: die holding deliveries that nothing has touched yet.
        crate::fault::freeze_if_hit("consumer-after-receive").await;
        app.control.begin_batch(deliveries.len());
        // Convert this batch while the queue hands out the next: the two touch different
        // stores, so the lease no longer waits behind the orders commit.
        let (report, prefetched) = if stop.is_cancelled() {
            (convert::step(app, &deliveries).await, Ok(Vec::new()))
        } else {
            tokio::join!(convert::step(app, &deliveries), receiver.receive_now(batch))
        };
        crate::fault::freeze_if_hit("consumer-before-settle").await;
        // Only what leaves the queue drains it: a release (the database blinked, the
        // switch said stop) would otherwise pass for progress in the catch-up estimate.
        // A failed attempt may end as a dead letter, but mostly comes back.
        let drained = report
            .settlements
            .iter()
            .filter(|(_, s)| matches!(s, Settlement::Accept | Settlement::Reject { .. }))
            .count();
        let settled = receiver.settle(report.settlements).await;
        app.control
            .end_batch(deliveries.len(), if settled.is_ok() { drained } else { 0 });
        if let Err(e) = settled {
            break Err(e);
        }
        match prefetched {
            Ok(prefetched) => next = prefetched,
            Err(e) => break Err(e),
        }
        *reconnect_backoff = MIN_BACKOFF;
        if report.gated {
            // The switch, read inside the transaction, says this instance must not
            // commit orders now: the batch went back; end the session.
            break Ok(());
        }
        if report.database_down {
            tracing::warn!(retry_in = ?backoff, "database unavailable; consumer backing off");
            pause(stop, backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        } else {
            backoff = MIN_BACKOFF;
        }
        if stop.is_cancelled() {
            break Ok(());
        }
    };
    if let Err(e) = receiver.close().await {
        tracing::warn!(error = %e, "could not give back unsettled deliveries; their leases will expire");
    }
    result
}
