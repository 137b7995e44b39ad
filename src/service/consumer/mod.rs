//! The cart → order consumer: an instance of the worker loop ([`super::worker`]) whose
//! step converts a batch of cart messages in one transaction ([`convert`]); each delivery
//! is settled after the commit. On shutdown the batch in hand finishes and the receiver
//! gives back anything it still holds.

pub mod convert;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::dispatch::Dispatch;
use super::drain::Control;
use super::payment::Gateway;
use super::worker::{self, Gate, Receiving, Report, Step};
use crate::metrics::Metrics;
use crate::queue::{Delivery, Queue};
use crate::store::Db;

/// What turning cart messages into orders needs.
pub struct CartStep<'a> {
    pub db: &'a Db,
    pub metrics: &'a Metrics,
    /// The payment capture endpoint, when one is configured.
    pub payments: Option<&'a Gateway>,
    pub control: &'a Control,
    /// Hands the orders just written to their partners right after the commit, where the
    /// fulfilment hand-off is on.
    pub dispatch: Option<Dispatch<'a>>,
    /// Woken when orders were written that the dispatcher did not take, so that the
    /// relay hands them on at once.
    pub outbox_wake: &'a Notify,
    /// `CARTBUS_CART_ADDRESS`: where the carts come from (and their dead letters say so).
    pub cart_address: &'a str,
    /// `CARTBUS_MAX_ATTEMPTS`: failed attempts before a cart is dead-lettered.
    pub max_attempts: u32,
}

impl Step for CartStep<'_> {
    async fn step(&self, deliveries: &[Delivery]) -> Report {
        // Test-only: die holding deliveries that nothing has touched yet.
        crate::fault::freeze_if_hit("consumer-after-receive").await;
        self.control.begin_batch(deliveries.len());
        let report = convert::step(self, deliveries).await;
        crate::fault::freeze_if_hit("consumer-before-settle").await;
        report
    }

    /// Only what leaves the queue drains it: a release (the database blinked, the switch
    /// said stop) would otherwise pass for progress in the catch-up estimate.
    fn settled(&self, deliveries: usize, left: usize, ok: bool) {
        self.control
            .end_batch(deliveries, if ok { left } else { 0 });
    }
}

/// The consumer's settings beside its step.
pub struct Consumer<'a> {
    pub step: CartStep<'a>,
    pub queue: &'a dyn Queue,
    /// `CARTBUS_CONSUMER_BATCH`.
    pub batch: usize,
    /// `CARTBUS_CONSUMER`: off keeps this instance passive.
    pub enabled: bool,
}

pub async fn run(consumer: Consumer<'_>, gate: Gate<'_>, stop: CancellationToken) {
    if !consumer.enabled {
        tracing::info!("consumer off on this instance (CARTBUS_CONSUMER=off): passive");
        return;
    }
    let receiving = Receiving {
        name: "consumer",
        queue: consumer.queue,
        address: consumer.step.cart_address.to_string(),
        batch: consumer.batch,
        step: consumer.step,
    };
    worker::run(gate, &stop, receiving).await;
}
