//! The drain switch (DESIGN §6). The desired state lives in the database, so a call to any
//! instance governs all of them. Each instance runs [`watch`]: it reads the switch (every
//! [`POLL`], at once on a local change, and on PostgreSQL on NOTIFY), lifts an expired
//! pause, works out what *this* instance may do ([`Mode`]) and heartbeats what it actually
//! does ([`State`]) into `consumer_instances`.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use prometheus_client::metrics::counter::Counter;
use serde::Serialize;
use tokio::sync::{Notify, watch as channel};
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

pub use crate::domain::drain::Mode;
use crate::domain::drain::{Identity, SwitchReading};
use crate::queue::{Queue, QueueConnection};
use crate::service::readiness::{Health, can_write_orders};
use crate::store::switch::{self, Change, InstanceRow, Switch};
use crate::store::{Db, StoreError};

/// How often the switch is read and the heartbeat written (DESIGN: poll ≤ 1 s).
pub const POLL: Duration = Duration::from_millis(500);
/// An instance not heard from for this long no longer counts (it died or was stopped).
pub const LIVE_WINDOW: Duration = Duration::from_secs(5);
/// How far back intake and drain rates look.
const RATE_WINDOW: Duration = Duration::from_secs(15);

/// What the consumer actually does, as reported in heartbeats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Running,
    Pausing,
    Paused,
    Passive,
    Fenced,
    Stopped,
}

impl State {
    pub const ALL: [State; 6] = [
        State::Running,
        State::Pausing,
        State::Paused,
        State::Passive,
        State::Fenced,
        State::Stopped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Pausing => "pausing",
            State::Paused => "paused",
            State::Passive => "passive",
            State::Fenced => "fenced",
            State::Stopped => "stopped",
        }
    }
}

/// This instance's side of the switch, shared by the watcher, the consumer and the API.
pub struct Control {
    mode: channel::Sender<Mode>,
    revision: AtomicI64,
    /// Deliveries received and not yet settled.
    in_flight: AtomicUsize,
    /// Consumer tasks holding an open receiver.
    consuming: AtomicUsize,
    /// Batches of new orders committed and not yet handed to their partners
    /// ([`super::dispatch`]).
    hand_offs: AtomicUsize,
    /// Cart messages taken off the queue for good, and carts put on it, by this instance:
    /// the `cartbus_drain_messages_total` and `cartbus_intake_messages_total` counters
    /// themselves, so heartbeats and metrics cannot disagree.
    processed: Counter,
    accepted: Counter,
    nudge: Notify,
    identity: Identity,
    started_at: chrono::DateTime<Utc>,
    rates: Mutex<VecDeque<(Instant, i64, i64)>>,
    clock: Clock,
}

/// The database's clock as this instance reads it: its own clock plus the offset measured
/// at each switch read (DESIGN §6). Liveness and a pause's `until` are judged by it, so an
/// instance whose own clock is seconds behind still counts as live, and one that runs
/// ahead does not lift a timed pause early. Until the first reading the offset is zero.
struct Clock {
    /// The database's clock minus this instance's, in milliseconds.
    offset_ms: AtomicI64,
    /// Test-only: how far this instance's own clock is off (fail point `clock-skew-ms`).
    skew: chrono::Duration,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            offset_ms: AtomicI64::new(0),
            skew: chrono::Duration::milliseconds(
                crate::fault::configured_number("clock-skew-ms").unwrap_or(0),
            ),
        }
    }

    /// This instance's own clock.
    fn local(&self) -> chrono::DateTime<Utc> {
        Utc::now() + self.skew
    }

    fn now(&self) -> chrono::DateTime<Utc> {
        self.local() + chrono::Duration::milliseconds(self.offset_ms.load(Ordering::Acquire))
    }

    /// Measures the offset against the database: its clock read halfway through the call.
    async fn synchronise(&self, db: &Db) -> Result<(), StoreError> {
        let before = self.local();
        let database = switch::database_now(db).await?;
        let after = self.local();
        let local = before + (after - before) / 2;
        self.offset_ms
            .store((database - local).num_milliseconds(), Ordering::Release);
        Ok(())
    }
}

impl Control {
    pub fn new(identity: Identity, accepted: Counter, processed: Counter) -> Control {
        Control {
            mode: channel::Sender::new(Mode::Unknown),
            revision: AtomicI64::new(-1),
            in_flight: AtomicUsize::new(0),
            consuming: AtomicUsize::new(0),
            hand_offs: AtomicUsize::new(0),
            processed,
            accepted,
            nudge: Notify::new(),
            identity,
            started_at: Utc::now(),
            rates: Mutex::new(VecDeque::new()),
            clock: Clock::new(),
        }
    }

    /// Now, on the database's clock (as last measured): what `last_seen`, liveness and a
    /// pause's `until` are judged by.
    pub fn now(&self) -> chrono::DateTime<Utc> {
        self.clock.now()
    }

    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }

    pub fn subscribe(&self) -> channel::Receiver<Mode> {
        self.mode.subscribe()
    }

    pub fn is_fenced(&self) -> bool {
        self.mode() == Mode::Fenced
    }

    /// This instance as the drain switch sees it.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Re-read the switch now (after this instance changed it).
    pub fn nudge(&self) {
        self.nudge.notify_one();
    }

    pub fn count_accepted(&self) {
        self.accepted.inc();
    }

    pub fn set_consuming(&self, consuming: bool) {
        if consuming {
            self.consuming.fetch_add(1, Ordering::AcqRel);
        } else {
            self.consuming.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// A batch of committed orders went to the dispatcher: until it is done, this
    /// instance is not paused.
    pub fn begin_hand_off(&self) {
        self.hand_offs.fetch_add(1, Ordering::AcqRel);
    }

    /// The dispatcher is done with `n` batches; when nothing is left and the switch says
    /// stop, the new state is reported now rather than at the next heartbeat.
    pub fn end_hand_off(&self, n: usize) {
        let before = self.hand_offs.fetch_sub(n, Ordering::AcqRel);
        if before == n && self.mode() != Mode::Consume {
            self.nudge();
        }
    }

    pub fn begin_batch(&self, n: usize) {
        self.in_flight.fetch_add(n, Ordering::AcqRel);
    }

    /// `started` is what `begin_batch` was given; `drained` how many of them left the
    /// queue for good (accepted or dead-lettered, not released).
    pub fn end_batch(&self, started: usize, drained: usize) {
        self.in_flight.fetch_sub(started, Ordering::AcqRel);
        self.processed.inc_by(drained as u64);
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// The state to report: what the mode asks, and whether the consumer has got there.
    pub fn state(&self) -> State {
        let busy = self.consuming.load(Ordering::Acquire) > 0
            || self.in_flight() > 0
            || self.hand_offs.load(Ordering::Acquire) > 0;
        match self.mode() {
            Mode::Consume => State::Running,
            Mode::Pause | Mode::Unknown if busy => State::Pausing,
            Mode::Pause | Mode::Unknown => State::Paused,
            Mode::Passive if busy => State::Pausing,
            Mode::Passive => State::Passive,
            Mode::Fenced if busy => State::Pausing,
            Mode::Fenced => State::Fenced,
        }
    }

    /// Intake and drain rates (per second, all instances) over the recent window.
    pub fn rates(&self) -> (f64, f64) {
        let samples = self.rates.lock().unwrap_or_else(|e| e.into_inner());
        match (samples.front(), samples.back()) {
            (Some(first), Some(last)) if last.0 > first.0 => {
                let seconds = (last.0 - first.0).as_secs_f64();
                (
                    ((last.1 - first.1).max(0) as f64) / seconds,
                    ((last.2 - first.2).max(0) as f64) / seconds,
                )
            }
            _ => (0.0, 0.0),
        }
    }

    fn record_rates(&self, instances: &[InstanceRow]) {
        let accepted = instances.iter().map(|i| i.accepted).sum();
        let processed = instances.iter().map(|i| i.processed).sum();
        let now = Instant::now();
        let mut samples = self.rates.lock().unwrap_or_else(|e| e.into_inner());
        // A restarted instance resets its counters: start the window again.
        if samples
            .back()
            .is_some_and(|(_, a, p)| accepted < *a || processed < *p)
        {
            samples.clear();
        }
        samples.push_back((now, accepted, processed));
        while samples
            .front()
            .is_some_and(|(at, _, _)| now.duration_since(*at) > RATE_WINDOW)
        {
            samples.pop_front();
        }
    }

    fn row(&self, state: State) -> InstanceRow {
        InstanceRow {
            instance: self.identity.instance.clone(),
            version: self.identity.version.clone(),
            schema_version: self.identity.known_schema,
            state: state.as_str().to_string(),
            in_flight: self.in_flight() as i64,
            processed: i64::try_from(self.processed.get()).unwrap_or(i64::MAX),
            accepted: i64::try_from(self.accepted.get()).unwrap_or(i64::MAX),
            seen_revision: self.revision.load(Ordering::Acquire),
            started_at: self.started_at,
            last_seen: self.now(),
        }
    }
}

/// What this instance may do under `switch`.
pub fn mode_for(control: &Control, switch: &Switch, applied_schema: i64) -> Mode {
    control.identity.mode(&SwitchReading {
        paused: switch.is_paused(),
        active_version: switch.active_version.as_deref(),
        applied_schema,
    })
}

/// Runs until `stop`: keeps this instance's mode in step with the switch and heartbeats.
/// Waits until this instance may work its queues (the switch says consume and orders can
/// be written); false once `stop` is cancelled. The consumer, the fulfilment relay and the
/// partner replies all pause with the switch this way.
pub async fn until_working(
    control: &Control,
    health: &Health,
    modes: &mut channel::Receiver<Mode>,
    stop: &CancellationToken,
) -> bool {
    loop {
        if stop.is_cancelled() {
            return false;
        }
        if *modes.borrow_and_update() == Mode::Consume && can_write_orders(health, control) {
            return true;
        }
        tokio::select! {
            _ = stop.cancelled() => return false,
            _ = modes.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// A stretch of work on a queue (the consumer's, the reply reader's) that ends on shutdown
/// or as soon as the drain switch says this instance must stop consuming.
pub struct Session {
    token: CancellationToken,
    watch: tokio::task::JoinHandle<()>,
}

impl Session {
    pub fn start(control: &Control, stop: &CancellationToken) -> Session {
        let token = stop.child_token();
        let mut modes = control.subscribe();
        if *modes.borrow_and_update() != Mode::Consume {
            token.cancel();
        }
        let watch = {
            let token = token.clone();
            tokio::spawn(async move {
                let _ = modes.wait_for(|m| *m != Mode::Consume).await;
                token.cancel();
            })
        };
        Session { token, watch }
    }

    /// Cancelled when the session is to end.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.watch.abort();
    }
}

/// Sleeps for `duration` unless `stop` comes first.
pub async fn pause(stop: &CancellationToken, duration: Duration) {
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = tokio::time::sleep(duration) => {}
    }
}

pub async fn watch(db: &Db, control: &Control, health: &Health, stop: CancellationToken) {
    let mut notifications = listen(db).await;
    let mut last_mode = Mode::Unknown;
    loop {
        if health.migrated() {
            match tick(db, control).await {
                Ok(mode) if mode != last_mode => {
                    tracing::info!(from = ?last_mode, to = ?mode, "consumer mode changed");
                    last_mode = mode;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the drain switch; keeping the last mode")
                }
            }
            // Test-only: a watcher that stops reading the switch once consuming, to prove
            // the in-transaction check alone keeps a paused switch from being overrun.
            if last_mode == Mode::Consume {
                crate::fault::freeze_if_hit("control-watch-after-consume").await;
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(POLL) => {}
            _ = control.nudge.notified() => {}
            notified = next_notification(&mut notifications) => {
                if !notified {
                    notifications = None;
                }
            }
        }
    }
    // Leave the table saying this instance is gone, so `drained` need not wait it out.
    let row = control.row(State::Stopped);
    if let Err(e) = switch::heartbeat(db, &row).await {
        tracing::debug!(error = %e, "last heartbeat not written");
    }
}

async fn tick(db: &Db, control: &Control) -> Result<Mode, StoreError> {
    control.clock.synchronise(db).await?;
    let mut switch = switch::read(db).await?;
    if switch.is_paused() && switch.until.is_some_and(|until| until <= control.now()) {
        let (lifted, changed) = switch::change(
            db,
            Change {
                action: "expire",
                desired: "running",
                active_version: None,
                reason: Some("the pause reached its `until`"),
                until: None,
                by: &format!("cartbus@{}", control.identity.instance),
                at: control.now(),
                if_revision: Some(switch.revision),
            },
        )
        .await?;
        if changed {
            tracing::info!("pause expired; consumers resume");
        }
        switch = if changed {
            lifted
        } else {
            switch::read(db).await?
        };
    }
    let applied = db.applied_schema_version().await?;
    let mode = mode_for(control, &switch, applied);
    control.revision.store(switch.revision, Ordering::Release);
    control.mode.send_if_modified(|current| {
        let changed = *current != mode;
        *current = mode;
        changed
    });
    let row = control.row(control.state());
    switch::heartbeat(db, &row).await?;
    let since = control.now() - LIVE_WINDOW;
    let instances = switch::instances(db, since).await?;
    control.record_rates(&instances);
    Ok(mode)
}

/// A LISTEN connection on PostgreSQL (sub-second reaction); `None` on SQLite or when it
/// cannot be had (polling still works).
async fn listen(db: &Db) -> Option<sqlx::postgres::PgListener> {
    let Db::Postgres(pool) = db else {
        return None;
    };
    match sqlx::postgres::PgListener::connect_with(pool).await {
        Ok(mut listener) => match listener.listen(switch::CHANNEL).await {
            Ok(()) => Some(listener),
            Err(e) => {
                tracing::warn!(error = %e, "LISTEN failed; polling the drain switch only");
                None
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "no LISTEN connection; polling the drain switch only");
            None
        }
    }
}

/// Waits for a NOTIFY; false when the listener broke (then polling carries on alone).
async fn next_notification(listener: &mut Option<sqlx::postgres::PgListener>) -> bool {
    match listener {
        Some(listener) => listener.recv().await.is_ok(),
        None => std::future::pending().await,
    }
}

/// The switch and what every live instance reports: `GET /v1/admin/consumer`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Status {
    #[serde(flatten)]
    pub switch: Switch,
    /// Every live instance has seen the current switch and none consumes or holds work.
    pub drained: bool,
    pub backlog: Backlog,
    pub instances: Vec<InstanceRow>,
    /// The broker connections of the instance that answered and the node each is on
    /// (several with a cluster); empty on the embedded queue. Every instance shows its
    /// own here and in `cartbus_broker_connection_info`.
    pub broker_connections: Vec<QueueConnection>,
    /// This site (`CARTBUS_DATACENTER`) when the shop runs in several datacenters: each
    /// site has its own switch, and this one governs only this site's instances.
    pub datacenter: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Backlog {
    /// Messages waiting, ready or delivered and not yet settled (`null` when the queue
    /// does not report it: a broker without `CARTBUS_BROKER_MANAGEMENT_URL`).
    pub depth: Option<u64>,
    /// Age of the first message waiting (`null` when unknown: nothing waits, or the broker
    /// does not say).
    pub oldest_age_seconds: Option<f64>,
    /// The last read of `depth` failed: it and `oldest_age_seconds` come from the last
    /// read that worked.
    pub depth_stale: bool,
    /// Carts queued per second, all instances, last 15 s.
    pub intake_per_s: f64,
    /// Cart messages taken off the queue for good (accepted or dead-lettered) per second,
    /// all instances, last 15 s.
    pub drain_per_s: f64,
    /// At the current rates, seconds until the queue is empty; `null` when it is not
    /// shrinking.
    pub catch_up_eta_seconds: Option<f64>,
}

/// The switch, the live instances and whether they are drained, without the backlog
/// figures (cheap enough to poll while a pause waits).
pub async fn drain_state(
    db: &Db,
    control: &Control,
) -> Result<(Switch, Vec<InstanceRow>, bool), StoreError> {
    let switch = switch::read(db).await?;
    let mut instances = switch::instances(db, control.now() - LIVE_WINDOW).await?;
    // This instance speaks for itself from memory: fresher than its last heartbeat, and
    // present even before its first one (an empty list would read as drained).
    let me = control.row(control.state());
    instances.retain(|i| i.instance != me.instance);
    instances.push(me);
    instances.sort_by(|a, b| a.instance.cmp(&b.instance));
    let drained = is_drained(&switch, &instances);
    Ok((switch, instances, drained))
}

pub async fn status(
    db: &Db,
    control: &Control,
    queue: &dyn Queue,
    cart_address: &str,
) -> Result<Status, StoreError> {
    let (switch, instances, drained) = drain_state(db, control).await?;
    Ok(Status {
        backlog: backlog(control, queue, cart_address).await,
        switch,
        drained,
        instances,
        broker_connections: Vec::new(),
        datacenter: None,
    })
}

/// The cart queue's depth and age (where the queue reports them, within 1 s), and the
/// rates and catch-up estimate from the instances' heartbeats.
pub async fn backlog(control: &Control, queue: &dyn Queue, cart_address: &str) -> Backlog {
    let stats = tokio::time::timeout(Duration::from_secs(1), queue.stats(cart_address))
        .await
        .ok()
        .and_then(Result::ok);
    let (intake, drain) = control.rates();
    let depth = stats.as_ref().map(|s| s.depth);
    let catch_up_eta_seconds = match depth {
        Some(0) => Some(0.0),
        Some(depth) if drain > intake => Some(depth as f64 / (drain - intake)),
        _ => None,
    };
    Backlog {
        depth,
        depth_stale: stats.as_ref().is_some_and(|s| s.stale),
        oldest_age_seconds: stats
            .and_then(|s| s.oldest_enqueued_at)
            .map(|at| (Utc::now() - at).num_milliseconds().max(0) as f64 / 1000.0),
        intake_per_s: intake,
        drain_per_s: drain,
        catch_up_eta_seconds,
    }
}

/// Drained: paused, and every live instance has seen this pause and neither consumes nor
/// holds a delivery.
pub fn is_drained(switch: &Switch, instances: &[InstanceRow]) -> bool {
    switch.is_paused()
        && instances.iter().all(|i| {
            i.in_flight == 0
                && match i.state.as_str() {
                    // A stale passive or fenced row could hide an instance that has just
                    // started consuming: it too must have seen this revision.
                    "paused" | "passive" | "fenced" => i.seen_revision >= switch.revision,
                    "stopped" => true,
                    _ => false,
                }
        })
}
