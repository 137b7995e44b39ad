//! The HTTP load: concurrent clients posting checkouts to a cartbus, counting what was
//! accepted, shed and failed, and the latency of each accepted request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::{Value, json};

/// What a load run saw.
#[derive(Default)]
pub struct Load {
    pub ok: u64,
    pub shed: u64,
    pub errors: u64,
    pub latencies: Vec<Duration>,
    pub took: Duration,
}

impl Load {
    pub async fn count(base: &str, clients: usize, count: usize) -> Load {
        let next = Arc::new(AtomicU64::new(0));
        Self::drive(base, clients, move || {
            next.fetch_add(1, Ordering::Relaxed) < count as u64
        })
        .await
    }

    pub async fn timed(base: &str, clients: usize, duration: Duration) -> Load {
        let end = Instant::now() + duration;
        Self::drive(base, clients, move || Instant::now() < end).await
    }

    pub async fn until(base: &str, clients: usize, stop: Arc<AtomicBool>) -> Load {
        Self::drive(base, clients, move || !stop.load(Ordering::Relaxed)).await
    }

    async fn drive(
        base: &str,
        clients: usize,
        more: impl Fn() -> bool + Send + Sync + 'static,
    ) -> Load {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(clients)
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        let more = Arc::new(more);
        let url = format!("{base}/v1/checkouts");
        let started = Instant::now();
        let tasks: Vec<_> = (0..clients.max(1))
            .map(|_| {
                let http = http.clone();
                let more = more.clone();
                let url = url.clone();
                tokio::spawn(async move {
                    let mut load = Load::default();
                    while more() {
                        let sent = Instant::now();
                        match post_cart(&http, &url).await {
                            Ok(201 | 202) => {
                                load.ok += 1;
                                load.latencies.push(sent.elapsed());
                            }
                            Ok(503) => load.shed += 1,
                            _ => load.errors += 1,
                        }
                    }
                    load
                })
            })
            .collect();
        let mut total = Load::default();
        for task in tasks {
            if let Ok(load) = task.await {
                total.ok += load.ok;
                total.shed += load.shed;
                total.errors += load.errors;
                total.latencies.extend(load.latencies);
            }
        }
        total.took = started.elapsed();
        total
    }

    pub fn check_ok(&self, what: &str) -> anyhow::Result<()> {
        if self.errors > 0 || self.shed > 0 {
            bail!("{what}: {} errors, {} shed", self.errors, self.shed);
        }
        Ok(())
    }
}

/// The `q` quantile of `samples`, in milliseconds.
pub fn percentile(samples: &[Duration], q: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted
        .get(((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1)))
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// A valid checkout body, with a fresh `cart_id` each time.
pub fn cart_json() -> Value {
    json!({
        "cart_id": uuid::Uuid::new_v4().to_string(),
        "customer": { "id": "cust-42", "name": "Ada Lovelace", "email": "ada@example.com", "phone": "+44 20 7946 0000" },
        "shipping_address": { "line1": "12 Analytical St", "line2": null, "city": "London",
                              "region": "LND", "postal_code": "EC1A 1AA", "country": "GB" },
        "currency": "GBP",
        "lines": [
            { "sku": "BOOK-001", "name": "Notes on the Engine", "quantity": 2, "unit_price": 1999 },
            { "sku": "PEN-007", "name": "Fountain pen", "quantity": 1, "unit_price": 4500 }
        ],
        "total": 8498
    })
}

/// Posts one generated cart; the response status, or the error that kept it from one.
pub async fn post_cart(http: &reqwest::Client, url: &str) -> Result<u16, reqwest::Error> {
    let body = serde_json::to_vec(&cart_json()).unwrap_or_default();
    http.post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map(|r| r.status().as_u16())
}
