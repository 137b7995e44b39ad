//! Open-loop load: checkouts at a fixed arrival rate, whatever cartbus's answers do, and
//! the sustained capacity search built on it.
//!
//! A closed loop (each client waits for its answer before sending the next) slows down
//! with the server and so never shows a queue building. Here request `i` is due at
//! `start + i / rate`; its latency is measured from that intended time, so a request
//! that had to wait for a free connection counts its wait (no coordinated omission).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cartbus::store::Db;
use tokio::sync::{Mutex, Semaphore};

use crate::databases::{count_orders, count_sent};
use crate::load::percentile;

/// Most requests in flight at once (connections the generator may open).
const MOST_IN_FLIGHT: usize = 512;

/// What a sustained run saw.
pub struct Sustained {
    pub rate: f64,
    pub accepted: u64,
    pub failed: u64,
    /// Carts accepted and not yet orders, at the middle and at the end of the run.
    pub backlog: (i64, i64),
    /// Orders not yet sent to their partner, at the middle and at the end.
    pub outbox: (i64, i64),
    /// Orders in the database when the end was sampled: with `backlog.1`, every
    /// accepted cart's order.
    pub orders_at_end: i64,
    pub p99_ms: f64,
}

impl Sustained {
    /// Both the cart backlog and the outbox stayed bounded: neither grew by more than one
    /// second of arrivals over the second half, and every request was answered.
    pub fn bounded(&self) -> bool {
        let slack = self.rate.max(100.0) as i64;
        self.failed == 0
            && self.backlog.1 - self.backlog.0 <= slack
            && self.outbox.1 - self.outbox.0 <= slack
    }
}

/// Posts checkouts to `base` at `rate` per second for `duration`, sampling the cart
/// backlog and the outbox in `db` at the middle and at the end.
pub async fn sustain(
    base: &str,
    db: &Db,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<Sustained> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(MOST_IN_FLIGHT)
        .timeout(Duration::from_secs(30))
        .build()?;
    let url = format!("{base}/v1/checkouts");
    let permits = Arc::new(Semaphore::new(MOST_IN_FLIGHT));
    let accepted = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let orders_before = count_orders(db).await?;
    let sent_before = count_sent(db).await?;
    let backlog_now = |accepted: u64, orders: i64| accepted as i64 - (orders - orders_before);
    let start = tokio::time::Instant::now();
    let total = (rate * duration.as_secs_f64()) as u64;
    let mut middle = None;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        let intended = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(intended).await;
        if middle.is_none() && i >= total / 2 {
            let orders = count_orders(db).await?;
            let sent = count_sent(db).await?;
            middle = Some((
                backlog_now(accepted.load(Ordering::Relaxed), orders),
                (orders - orders_before) - (sent - sent_before),
            ));
        }
        let permit = permits.clone().acquire_owned().await?;
        let (http, url) = (http.clone(), url.clone());
        let (accepted, failed, latencies) = (accepted.clone(), failed.clone(), latencies.clone());
        tasks.spawn(async move {
            match crate::load::post_cart(&http, &url).await {
                Ok(201 | 202) => {
                    accepted.fetch_add(1, Ordering::Relaxed);
                    latencies.lock().await.push(intended.elapsed());
                }
                _ => {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            drop(permit);
        });
        // Reap finished requests as we go, so the set stays small.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let orders = count_orders(db).await?;
    let sent = count_sent(db).await?;
    let accepted = accepted.load(Ordering::Relaxed);
    let end = (
        backlog_now(accepted, orders),
        (orders - orders_before) - (sent - sent_before),
    );
    let middle = middle.unwrap_or((0, 0));
    let p99_ms = percentile(&latencies.lock().await, 0.99);
    Ok(Sustained {
        rate,
        accepted,
        failed: failed.load(Ordering::Relaxed),
        backlog: (middle.0, end.0),
        outbox: (middle.1, end.1),
        orders_at_end: orders,
        p99_ms,
    })
}
