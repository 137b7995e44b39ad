//! Storefront load for drills: clients posting fresh carts back to back, round-robin over
//! one or more base URLs, and what they saw, from their side.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::Backend;

/// What the storefront saw.
#[derive(Default)]
pub struct Tally {
    pub requests: u64,
    /// Cart ids answered 2xx.
    pub accepted: Vec<String>,
    /// `202`: queued. `201`: written directly as an order (the queue was not taking carts).
    pub queued: u64,
    pub direct: u64,
    pub non_2xx: Vec<String>,
    pub connection_errors: Vec<String>,
    pub slowest: Duration,
}

impl Tally {
    pub fn figures(&self) -> String {
        format!(
            "requests {}, 2xx {} (queued {}, direct {}), non-2xx {}, connection errors {}, slowest {} ms",
            self.requests,
            self.accepted.len(),
            self.queued,
            self.direct,
            self.non_2xx.len(),
            self.connection_errors.len(),
            self.slowest.as_millis()
        )
    }

    /// No request failed, from the storefront's side.
    pub fn nothing_failed(&self) -> bool {
        self.non_2xx.is_empty() && self.connection_errors.is_empty()
    }

    /// The first few failures, for an assertion's message.
    pub fn failures(&self) -> String {
        format!(
            "{:?} {:?}",
            self.non_2xx.iter().take(5).collect::<Vec<_>>(),
            self.connection_errors.iter().take(5).collect::<Vec<_>>()
        )
    }
}

pub struct Load {
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `clients` clients, client `i` posting to `bases[i % bases.len()]`.
    pub fn start(bases: &[String], clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let clients = (0..clients)
            .map(|i| {
                let (stop, tally, http) = (stop.clone(), tally.clone(), super::client());
                let url = format!("{}/v1/checkouts", bases[i % bases.len()]);
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let cart = super::cart();
                        let sent = Instant::now();
                        let outcome = http.post(&url).json(&cart).send().await;
                        let took = sent.elapsed();
                        let mut tally = tally.lock().expect("tally");
                        tally.requests += 1;
                        tally.slowest = tally.slowest.max(took);
                        match outcome {
                            Ok(r) if r.status().is_success() => {
                                match r.status().as_u16() {
                                    201 => tally.direct += 1,
                                    _ => tally.queued += 1,
                                }
                                tally
                                    .accepted
                                    .push(cart["cart_id"].as_str().unwrap_or("").to_string());
                            }
                            Ok(r) => tally.non_2xx.push(format!("HTTP {}", r.status())),
                            Err(e) => tally.connection_errors.push(e.to_string()),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            tally,
            clients,
        }
    }

    pub fn figures(&self) -> String {
        self.tally.lock().expect("tally").figures()
    }

    /// `(queued, direct)` so far.
    pub fn outcomes(&self) -> (u64, u64) {
        let tally = self.tally.lock().expect("tally");
        (tally.queued, tally.direct)
    }

    pub async fn finish(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        for client in self.clients {
            client.await.expect("load client");
        }
        std::mem::take(&mut *self.tally.lock().expect("tally"))
    }
}

/// Orders per cart id, straight from the orders database.
pub async fn orders_per_cart(backend: &Backend, dir: &Path) -> HashMap<Uuid, i64> {
    const SQL: &str = "SELECT cart_id, count(*) FROM orders GROUP BY cart_id";
    let rows: Vec<(Uuid, i64)> = super::orders_db_rows(backend, dir, SQL).await;
    rows.into_iter().collect()
}

/// The ledger: every cart the storefront saw accepted is exactly one order. With `all`,
/// also no order for a cart it did not see accepted (nothing failed on its side).
pub async fn assert_ledger(
    backend: &Backend,
    dir: &Path,
    accepted: &[String],
    all: bool,
) -> String {
    let accepted: Vec<Uuid> = accepted
        .iter()
        .map(|cart| Uuid::parse_str(cart).expect("cart ids are UUIDs"))
        .collect();
    let orders = super::eventually("every accepted cart ordered", || async {
        let orders = orders_per_cart(backend, dir).await;
        accepted
            .iter()
            .all(|cart| orders.contains_key(cart))
            .then_some(orders)
    })
    .await;
    let twice: Vec<_> = orders.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        twice.is_empty(),
        "carts with more than one order: {twice:?}"
    );
    if all {
        assert_eq!(orders.len(), accepted.len(), "an order nobody saw accepted");
    }
    format!(
        "ledger: {} carts accepted, {} orders, none twice",
        accepted.len(),
        orders.len()
    )
}
