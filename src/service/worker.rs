//! The one loop every background worker runs: the consumer, the partner reply reader and
//! the outbox relay are instances of it.
//!
//! [`run`] waits until the drain switch lets this instance work, then runs a session of the
//! worker until the switch says stop (or shutdown), and backs off when a session failed.
//! For a queue, [`Receiving`] is that session: receive a batch → [`Step::step`] → settle
//! after the step's commit, backing off while the database is down; the next batch is
//! taken while the current one is worked on, and anything not started goes back when
//! the session ends.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::drain::{Control, Mode, Session, pause, until_working};
use super::readiness::Health;
use crate::backoff::Backoff;
use crate::queue::{Delivery, Queue, QueueError, Receiver, Settlement};

/// Waits between failed sessions, and while a step finds the database down. Capped low
/// enough that a worker is back within seconds of its broker or database.
pub const MIN_BACKOFF: Duration = Duration::from_millis(200);
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A worker that runs in sessions.
pub trait Worker: Send {
    /// For the logs: `consumer`, `partner replies`, `fulfilment relay`.
    fn name(&self) -> &'static str;

    /// One stretch of work: returns `Ok` once `stop` is cancelled (shutdown, or the switch
    /// says stop), `Err` when it cannot go on (the loop backs off, then starts another).
    /// `reconnect` is the loop's backoff: reset it once work has gone through.
    fn session(
        &mut self,
        stop: &CancellationToken,
        reconnect: &mut Backoff,
    ) -> impl Future<Output = Result<(), String>> + Send;
}

/// What a worker needs to know whether it may work now.
#[derive(Clone, Copy)]
pub struct Gate<'a> {
    pub control: &'a Control,
    pub health: &'a Health,
}

/// Runs `worker` until `stop`.
pub async fn run<W: Worker>(gate: Gate<'_>, stop: &CancellationToken, mut worker: W) {
    let name = worker.name();
    let mut modes = gate.control.subscribe();
    let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
    while !stop.is_cancelled() {
        // Only while the drain switch lets this instance work, and orders can be written.
        if !until_working(gate.control, gate.health, &mut modes, stop).await {
            break;
        }
        // Counted as consuming from before the session opens (a broker connect takes a
        // while): until it is over, this instance must not report `paused`.
        gate.control.set_consuming(true);
        // The session ends on shutdown or as soon as the switch says stop consuming.
        let session = Session::start(gate.control, stop);
        let result = worker.session(session.token(), &mut backoff).await;
        gate.control.set_consuming(false);
        // Report the new state now rather than at the next heartbeat: `drained` waits on it.
        gate.control.nudge();
        drop(session);
        match result {
            Ok(()) if !stop.is_cancelled() => {
                tracing::info!(worker = name, mode = ?gate.control.mode(), "paused: in-flight work settled, held deliveries given back");
                if gate.control.mode() == Mode::Consume {
                    // Stopped by the in-transaction check before this instance's watcher
                    // saw the switch change: give it a moment rather than spin.
                    pause(stop, Duration::from_millis(250)).await;
                }
            }
            Ok(()) => {}
            Err(e) => {
                let wait = backoff.next_wait();
                tracing::warn!(worker = name, error = %e, retry_in = ?wait, "worker session failed");
                pause(stop, wait).await;
            }
        }
    }
    tracing::info!(worker = name, "stopped");
}

/// What one step did with a batch, to settle after its commit.
#[derive(Debug, Default)]
pub struct Report {
    /// By delivery tag.
    pub settlements: Vec<(u64, Settlement)>,
    /// The database could not be reached: back off before the next batch.
    pub database_down: bool,
    /// The drain switch, read in the transaction, forbade committing: everything went
    /// back and the session ends.
    pub gated: bool,
}

/// One unit of work on a batch of deliveries.
pub trait Step: Send + Sync {
    fn step(&self, deliveries: &[Delivery]) -> impl Future<Output = Report> + Send;

    /// Called once the batch of `deliveries` was settled (`ok`), of which `left` leave the
    /// queue for good (accepted or dead-lettered, not released or failed).
    fn settled(&self, _deliveries: usize, _left: usize, _ok: bool) {}
}

/// A session on one queue address: receive → step → settle.
pub struct Receiving<'a, S> {
    pub name: &'static str,
    pub queue: &'a dyn Queue,
    pub address: String,
    pub batch: usize,
    pub step: S,
}

impl<S: Step> Worker for Receiving<'_, S> {
    fn name(&self) -> &'static str {
        self.name
    }

    async fn session(
        &mut self,
        stop: &CancellationToken,
        reconnect: &mut Backoff,
    ) -> Result<(), String> {
        let receiver = self
            .queue
            .receiver(&self.address)
            .await
            .map_err(|e| format!("cannot open the receiver on {}: {e}", self.address))?;
        tracing::info!(worker = self.name, address = %self.address, queue = self.queue.kind(), "started");
        self.receive(receiver, stop, reconnect)
            .await
            .map_err(|e| format!("receiver on {} lost: {e}", self.address))
    }
}

impl<S: Step> Receiving<'_, S> {
    async fn receive(
        &self,
        mut receiver: Box<dyn Receiver>,
        stop: &CancellationToken,
        reconnect: &mut Backoff,
    ) -> Result<(), QueueError> {
        let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
        // The next batch, taken while the current one is worked on (it is not started, so
        // a pause gives it back untouched through `close`).
        let mut next: Vec<Delivery> = Vec::new();
        let result = loop {
            let deliveries = if next.is_empty() {
                match receiver.receive(self.batch, stop).await {
                    Ok(deliveries) if deliveries.is_empty() => break Ok(()),
                    Ok(deliveries) => deliveries,
                    Err(e) => break Err(e),
                }
            } else {
                std::mem::take(&mut next)
            };
            // Work this batch while the queue hands out the next: the two touch different
            // stores, so the lease no longer waits behind the step's commit.
            let (report, prefetched) = if stop.is_cancelled() {
                (self.step.step(&deliveries).await, Ok(Vec::new()))
            } else {
                tokio::join!(
                    self.step.step(&deliveries),
                    receiver.receive_now(self.batch)
                )
            };
            let left = report
                .settlements
                .iter()
                .filter(|(_, s)| matches!(s, Settlement::Accept | Settlement::Reject { .. }))
                .count();
            let settled = receiver.settle(report.settlements).await;
            self.step.settled(deliveries.len(), left, settled.is_ok());
            if let Err(e) = settled {
                break Err(e);
            }
            match prefetched {
                Ok(prefetched) => next = prefetched,
                Err(e) => break Err(e),
            }
            reconnect.reset();
            if report.gated {
                break Ok(());
            }
            if report.database_down {
                let wait = backoff.next_wait();
                tracing::warn!(worker = self.name, retry_in = ?wait, "database unavailable; backing off");
                pause(stop, wait).await;
            } else {
                backoff.reset();
            }
            if stop.is_cancelled() {
                break Ok(());
            }
        };
        if let Err(e) = receiver.close().await {
            tracing::warn!(worker = self.name, error = %e, "could not give back unsettled deliveries; their leases will expire");
        }
        result
    }
}
