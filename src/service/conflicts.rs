//! The conflict check at intake (is this cart_id already an order, placed from another
//! payload?), batched: every checkout waiting for its answer is asked in one query.
//!
//! Two reasons. Under load one query for hundreds of carts costs far less than a
//! connection, a statement and a release each. And a caller may stop waiting
//! (`CARTBUS_CONFLICT_CHECK_MS`) without cancelling a query: a query dropped half-way
//! cost the pool its SQLite connection, and under an open-loop flood intake reopened
//! about a hundred connections a second, a thread and a schema load each.

use std::collections::HashMap;

use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::domain::CartId;
use crate::store::{Db, order_reads};

/// Most carts asked about in one query.
const MOST_PER_QUERY: usize = 512;

/// The order placed for a cart and the hash of the cart it was placed from, if any.
pub type Placed = Option<(Uuid, String)>;

type Ask = (Uuid, oneshot::Sender<Result<Placed, String>>);

/// A handle on the task that answers conflict checks; cheap to clone. The task ends when
/// the last handle is dropped.
#[derive(Clone)]
pub struct ConflictChecks {
    asks: mpsc::Sender<Ask>,
}

impl ConflictChecks {
    /// Starts the answering task on the current runtime, reading from `db`.
    pub fn start(db: Db) -> ConflictChecks {
        let (asks, waiting) = mpsc::channel(4 * MOST_PER_QUERY);
        tokio::spawn(answer(db, waiting));
        ConflictChecks { asks }
    }

    /// What the database knows of `cart_id`. Dropping the future only stops waiting: the
    /// query it joined finishes and its connection goes back to the pool.
    pub async fn placed(&self, cart_id: CartId) -> Result<Placed, String> {
        let stopped = || "the conflict check has stopped".to_string();
        let (reply, answer) = oneshot::channel();
        self.asks
            .send((cart_id.as_uuid(), reply))
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn answer(db: Db, mut waiting: mpsc::Receiver<Ask>) {
    let mut asks = Vec::with_capacity(MOST_PER_QUERY);
    while waiting.recv_many(&mut asks, MOST_PER_QUERY).await > 0 {
        // Whoever stopped waiting needs no answer: under a flood, stale asks cost nothing.
        asks.retain(|(_, reply)| !reply.is_closed());
        if asks.is_empty() {
            continue;
        }
        let cart_ids: Vec<Uuid> = asks.iter().map(|(cart_id, _)| *cart_id).collect();
        let found: Result<HashMap<Uuid, (Uuid, String)>, String> =
            order_reads::placed_many(&db, &cart_ids)
                .await
                .map_err(|e| e.to_string());
        for (cart_id, reply) in asks.drain(..) {
            let placed = found
                .as_ref()
                .map(|found| found.get(&cart_id).cloned())
                .map_err(Clone::clone);
            let _ = reply.send(placed);
        }
    }
}
