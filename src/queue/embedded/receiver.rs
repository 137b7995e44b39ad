//! A consumer's receiver on the embedded queue. It leases messages through the writer
//! task and remembers the lease token of every delivery it holds, so that a settlement
//! (by tag) reaches the writer with its token; a tag it does not hold is ignored. Closing
//! releases whatever is still unsettled.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::{Done, EmbeddedQueue, Op};
use crate::queue::{Delivery, QueueError, Receiver, Settlement};

pub struct EmbeddedReceiver {
    queue: EmbeddedQueue,
    address: String,
    /// Tag (row id) → lease token of every delivery handed out and not yet settled.
    leased: HashMap<u64, i64>,
}

impl EmbeddedReceiver {
    pub(super) fn new(queue: EmbeddedQueue, address: &str) -> EmbeddedReceiver {
        EmbeddedReceiver {
            queue,
            address: address.to_string(),
            leased: HashMap::new(),
        }
    }
}

#[async_trait]
impl Receiver for EmbeddedReceiver {
    async fn receive(
        &mut self,
        max: usize,
        stop: &CancellationToken,
    ) -> Result<Vec<Delivery>, QueueError> {
        let poll = self.queue.inner.options.poll_interval;
        loop {
            // A stopped receiver takes nothing more (the trait's contract).
            if stop.is_cancelled() {
                return Ok(Vec::new());
            }
            // Listen before looking, so a send that commits in between is not missed.
            let arrival = self.queue.inner.shared.arrivals.notified();
            tokio::pin!(arrival);
            arrival.as_mut().enable();
            let op = Op::Lease {
                address: self.address.clone(),
                max,
            };
            if let Done::Leased(deliveries, token) = self.queue.call(op).await?
                && !deliveries.is_empty()
            {
                self.leased
                    .extend(deliveries.iter().map(|d| (d.tag, token)));
                return Ok(deliveries);
            }
            tokio::select! {
                biased;
                _ = stop.cancelled() => return Ok(Vec::new()),
                _ = &mut arrival => {}
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }

    async fn receive_now(&mut self, max: usize) -> Result<Vec<Delivery>, QueueError> {
        let op = Op::Lease {
            address: self.address.clone(),
            max,
        };
        match self.queue.call(op).await? {
            Done::Leased(deliveries, token) => {
                self.leased
                    .extend(deliveries.iter().map(|d| (d.tag, token)));
                Ok(deliveries)
            }
            _ => Ok(Vec::new()),
        }
    }

    async fn settle(&mut self, settlements: Vec<(u64, Settlement)>) -> Result<(), QueueError> {
        let items = settlements
            .into_iter()
            .filter_map(|(tag, settlement)| {
                let token = self.leased.remove(&tag)?;
                Some((i64::try_from(tag).ok()?, token, settlement))
            })
            .collect::<Vec<_>>();
        if items.is_empty() {
            return Ok(());
        }
        self.queue.call(Op::Settle(items)).await.map(drop)
    }

    async fn close(mut self: Box<Self>) -> Result<(), QueueError> {
        let unsettled = self
            .leased
            .keys()
            .map(|&tag| {
                (
                    tag,
                    Settlement::Release {
                        delay: Duration::ZERO,
                    },
                )
            })
            .collect();
        self.settle(unsettled).await
    }
}
