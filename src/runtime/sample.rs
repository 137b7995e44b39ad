//! The gauges read from the queue and the database when `/metrics` is scraped. Every
//! figure is read at the same time, each with [`TIMEOUT`], so a slow database delays a
//! scrape by at most that long; a figure not had in time (or whose read failed) keeps its
//! last value, and `cartbus_sample_stale{figure}` says so until a read of it works again.

use std::future::Future;
use std::time::Duration;

use crate::metrics::{Figure, StateLabel, StatusLabel};
use crate::runtime::app::App;
use crate::service::drain::State;

/// Longest wait for any one sampled figure.
const TIMEOUT: Duration = Duration::from_secs(1);

/// Outbox statuses with a gauge; `processed` rows only grow (count them with
/// `cartbus_outbox_events_total{outcome="sent"}`), and counting them would make a scrape
/// scan the whole table.
const OUTBOX_STATUSES: [&str; 3] = ["pending", "error", "critical_error"];

/// Refreshes every sampled gauge.
pub async fn at_scrape(app: &App) {
    tokio::join!(
        backlog(app),
        drain_switch(app),
        outbox(app),
        dead_letters(app),
        payments(app),
        webhooks(app),
    );
    let metrics = &app.metrics;
    metrics.ready.set(i64::from(app.is_ready()));
    metrics.queue_up.set(i64::from(app.queue.is_healthy()));
    metrics
        .consumer_running
        .set(i64::from(app.control.state() == State::Running));
    metrics
        .consumer_in_flight
        .set(i64::try_from(app.control.in_flight()).unwrap_or(i64::MAX));
}

/// `figure` as `read` gives it within [`TIMEOUT`]; `None` when it failed or took longer,
/// which `cartbus_sample_stale` then shows.
async fn within<T, E>(
    app: &App,
    figure: Figure,
    read: impl Future<Output = Result<T, E>>,
) -> Option<T> {
    let read = async {
        // Test-only: a read slower than the timeout, as from a slow database
        // (`FAILPOINTS=sample-slow-dead_letters=return(2000)`).
        crate::fault::delay_if_hit(&format!("sample-slow-{}", figure.as_str())).await;
        read.await
    };
    let got = tokio::time::timeout(TIMEOUT, read)
        .await
        .ok()
        .and_then(Result::ok);
    app.metrics.sampled(figure, got.is_some());
    got
}

async fn backlog(app: &App) {
    let backlog = app.backlog().await;
    let metrics = &app.metrics;
    // The depth is read with the same timeout; the rates are this instance's own. A
    // figure nobody reports is left out of /metrics, never shown as 0.
    metrics.sampled(
        Figure::QueueDepth,
        backlog.depth.is_some() && !backlog.depth_stale,
    );
    if let Some(depth) = backlog.depth {
        metrics
            .queue_depth
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
        match (depth, backlog.oldest_age_seconds) {
            (0, _) => metrics.queue_oldest_age.set(0.0),
            (_, Some(age)) => metrics.queue_oldest_age.set(age),
            (_, None) => metrics.queue_oldest_age.forget(),
        }
    }
    metrics.intake_per_second.set(backlog.intake_per_s);
    metrics.drain_per_second.set(backlog.drain_per_s);
    metrics
        .catch_up_eta_seconds
        .set(backlog.catch_up_eta_seconds.unwrap_or(f64::NAN));
}

async fn drain_switch(app: &App) {
    let Some((switch, instances, drained)) =
        within(app, Figure::DrainSwitch, app.drain_state()).await
    else {
        return;
    };
    let metrics = &app.metrics;
    metrics
        .drain_switch_paused
        .set(i64::from(switch.is_paused()));
    metrics.drain_switch_drained.set(i64::from(drained));
    // Every known state is always there (0 rather than absent). Counted first and then set,
    // never cleared, so a scrape running alongside never sees the family half filled; the
    // price is that a state only another version knows keeps its last count until restart.
    let mut counts: std::collections::BTreeMap<String, i64> = State::ALL
        .iter()
        .map(|state| (state.as_str().to_string(), 0))
        .collect();
    for instance in instances {
        *counts.entry(instance.state).or_default() += 1;
    }
    for (state, n) in counts {
        metrics
            .instances
            .get_or_create(&StateLabel { state })
            .set(n);
    }
}

async fn outbox(app: &App) {
    let Some(counts) = within(
        app,
        Figure::OutboxRows,
        crate::store::outbox::counts(&app.db),
    )
    .await
    else {
        return;
    };
    for status in OUTBOX_STATUSES {
        let n = counts
            .iter()
            .find(|(s, _)| s == status)
            .map_or(0, |(_, n)| *n);
        app.metrics
            .outbox_rows
            .get_or_create(&StatusLabel {
                status: status.to_string(),
            })
            .set(n);
    }
}

async fn dead_letters(app: &App) {
    let Some(counts) = within(
        app,
        Figure::DeadLetters,
        crate::store::dead_letters::counts_by_reason(&app.db),
    )
    .await
    else {
        return;
    };
    app.metrics.set_dead_letters(&counts);
}

async fn payments(app: &App) {
    use crate::store::payments;
    let abandoned_before = crate::domain::payment::abandoned_before(app.config.payments.timeout);
    let (unknown, stuck) = tokio::join!(
        within(
            app,
            Figure::PaymentsUnknown,
            payments::count_unknown(&app.db, abandoned_before)
        ),
        within(
            app,
            Figure::PaymentsCapturedWithoutOrder,
            payments::count_captured_without_order(&app.db, abandoned_before)
        ),
    );
    if let Some(unknown) = unknown {
        app.metrics.payments_unknown.set(unknown);
    }
    if let Some(stuck) = stuck {
        app.metrics.payments_captured_without_order.set(stuck);
    }
}

async fn webhooks(app: &App) {
    use crate::store::webhooks;
    let now = chrono::Utc::now();
    let read = async {
        tokio::try_join!(
            webhooks::list(&app.db),
            webhooks::pending(&app.db),
            crate::store::deliveries::fan_out_lag(&app.db, now)
        )
    };
    let Some((endpoints, pending, lag)) = within(app, Figure::Webhooks, read).await else {
        return;
    };
    app.metrics.webhooks.fan_out_lag.set(lag);
    let figures: Vec<(String, &str, i64, f64)> = endpoints
        .iter()
        .map(|e| {
            let waiting = pending.iter().find(|p| p.endpoint_id == e.id);
            let age = waiting.and_then(|p| p.oldest).map_or(0.0, |oldest| {
                (now - oldest).num_milliseconds().max(0) as f64 / 1000.0
            });
            (
                e.id.clone(),
                e.state().as_str(),
                waiting.map_or(0, |p| p.pending),
                age,
            )
        })
        .collect();
    app.metrics.webhooks.set_endpoints(&figures);
}
