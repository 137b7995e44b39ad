//! The fault campaign (issue 9). Storefront clients keep posting carts to a real cartbus
//! (a child process on a fixed port, as a load balancer would see it). Each phase injects
//! one fault, `--cycles` times, then lets a clean instance finish. A ledger keeps what
//! every client was told, and is checked against the orders:
//! - every cart answered 201/202 has exactly one order, with its lines and its total;
//! - no order exists for a cart that was never accepted, unless a client saw an error
//!   for it (the request may have landed), which is counted apart.
//!
//! Stacks: the embedded defaults (SQLite, embedded queue), PostgreSQL + RabbitMQ when
//! `CARTBUS_TEST_DATABASE_URL` and `CARTBUS_TEST_AMQP_URL` are set (required with
//! `CARTBUS_REQUIRE_SERVICES=1`), and PostgreSQL + a three-node RabbitMQ cluster with
//! quorum queues (`tests/common/cluster.rs`; needs root and rabbitmq-server).
//!
//! ```sh
//! cargo test --test faults                           # CI: 3 cycles per fault
//! cargo test --release --test faults -- --cycles 200 # the full run in docs/guarantees.md
//! cargo test --test faults -- --only consumer-in-order-tx --stack embedded
//! ```
//! `CARTBUS_FAULT_CYCLES` sets the default. It exits non-zero if anything was lost,
//! duplicated or wrong, or if a fault could not be injected.

#[path = "../common/mod.rs"]
mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::proxy::Proxy;
use common::{Backend, Process, Settings, broker};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const TEST: &str = "fault_campaign";
/// Storefront clients posting at once.
const CLIENTS: usize = 8;
/// How long a client waits for an answer, and how often it tries a cart.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
const CLIENT_ATTEMPTS: u32 = 10;
/// How long a fault may take to be hit, and a clean instance to finish a phase.
const HIT_DEADLINE: Duration = Duration::from_secs(30);
/// A phase's backlog is worked off when this long passes without a new order or hand-off.
const STALL_DEADLINE: Duration = Duration::from_secs(30);

struct Args {
    cycles: usize,
    only: Option<HashSet<String>>,
    stack: Option<String>,
}

impl Args {
    fn parse() -> Result<Args, String> {
        let mut args = Args {
            cycles: std::env::var("CARTBUS_FAULT_CYCLES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(3),
            only: None,
            stack: None,
        };
        let mut given = std::env::args().skip(1);
        while let Some(arg) = given.next() {
            match arg.as_str() {
                "--cycles" => {
                    args.cycles = given
                        .next()
                        .and_then(|n| n.parse().ok())
                        .filter(|n| *n > 0)
                        .ok_or("--cycles takes a positive number")?;
                }
                "--only" => {
                    let names = given
                        .next()
                        .ok_or("--only takes fault names, comma-separated")?;
                    args.only = Some(names.split(',').map(str::to_string).collect());
                }
                "--stack" => {
                    args.stack = Some(given.next().ok_or("--stack takes embedded or broker")?);
                }
                // What cargo's test runner may pass along; this harness has no use for it.
                "--nocapture" | "--quiet" | "-q" | "--test-threads" | "--color" => {}
                other if other.starts_with("--") => return Err(format!("unknown option {other}")),
                _ => {}
            }
        }
        Ok(args)
    }

    fn wants(&self, fault: &str, stack: &str) -> bool {
        self.only.as_ref().is_none_or(|only| only.contains(fault))
            && self.stack.as_deref().is_none_or(|s| s == stack)
    }
}

/// What one client was told about one cart.
#[derive(Clone, Debug)]
struct Entry {
    cart_id: Uuid,
    total: i64,
    lines: i64,
    /// Answered 201 or 202 on some attempt.
    accepted: bool,
    /// Attempts that ended in an error (no answer, a reset, a 5xx).
    errors: u32,
}

type Ledger = Arc<Mutex<Vec<Entry>>>;

/// What the clients have seen so far, live.
#[derive(Default)]
struct Counters {
    accepted: AtomicUsize,
    errors: AtomicUsize,
}

/// Storefront clients posting carts until stopped; a failed post is retried with the
/// same cart, as a storefront does.
struct Load {
    stop: CancellationToken,
    ledger: Ledger,
    counters: Arc<Counters>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(base: &str) -> Load {
        let stop = CancellationToken::new();
        let ledger = Ledger::default();
        let counters = Arc::new(Counters::default());
        let clients = (0..CLIENTS)
            .map(|n| {
                let (ledger, counters, stop) = (ledger.clone(), counters.clone(), stop.clone());
                tokio::spawn(client(n, base.to_string(), ledger, counters, stop))
            })
            .collect();
        Load {
            stop,
            ledger,
            counters,
            clients,
        }
    }

    /// Carts accepted so far.
    fn accepted(&self) -> usize {
        self.counters.accepted.load(Ordering::Relaxed)
    }

    /// Waits until clients have seen `more` errors beyond those seen now: the fault bites.
    async fn refused(&self, more: usize, what: &str) -> Result<(), String> {
        let target = self.counters.errors.load(Ordering::Relaxed) + more;
        let deadline = Instant::now() + HIT_DEADLINE;
        while self.counters.errors.load(Ordering::Relaxed) < target {
            if Instant::now() > deadline {
                return Err(format!("the fault never showed: {what}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    async fn finish(self) -> Vec<Entry> {
        self.stop.cancel();
        for client in self.clients {
            let _ = client.await;
        }
        self.ledger.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Waits until `more` carts beyond those accepted now are accepted too.
    async fn progress(&self, more: usize, what: &str) -> Result<(), String> {
        let target = self.accepted() + more;
        let deadline = Instant::now() + HIT_DEADLINE;
        while self.accepted() < target {
            if Instant::now() > deadline {
                return Err(format!("no progress: {what}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

async fn client(
    n: usize,
    base: String,
    ledger: Ledger,
    counters: Arc<Counters>,
    stop: CancellationToken,
) {
    let Ok(http) = reqwest::Client::builder().timeout(CLIENT_TIMEOUT).build() else {
        return;
    };
    let mut count = 0usize;
    while !stop.is_cancelled() {
        count += 1;
        let cart = common::cart_with_lines(1 + (n + count) % 3);
        let Some(cart_id) = cart["cart_id"]
            .as_str()
            .and_then(|s| Uuid::parse_str(s).ok())
        else {
            return;
        };
        let mut entry = Entry {
            cart_id,
            total: cart["total"].as_i64().unwrap_or_default(),
            lines: cart["lines"]
                .as_array()
                .map(|l| l.len() as i64)
                .unwrap_or_default(),
            accepted: false,
            errors: 0,
        };
        for _ in 0..CLIENT_ATTEMPTS {
            match http
                .post(format!("{base}/v1/checkouts"))
                .json(&cart)
                .send()
                .await
            {
                Ok(r) if matches!(r.status().as_u16(), 201 | 202) => {
                    entry.accepted = true;
                    counters.accepted.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Ok(r) if r.status().is_client_error() => {
                    // A storefront bug, not a fault: never expected here.
                    eprintln!("FAULTS: cart {cart_id} refused with {}", r.status());
                    entry.errors += 1;
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Ok(_) | Err(_) => {
                    entry.errors += 1;
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            if stop.is_cancelled() {
                break;
            }
            // The storefront's back-off between tries (its behaviour, not a wait for us).
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Between carts: eight clients at most ~100 carts/s each, so a phase's backlog
        // stays within what a debug build drains in reasonable time.
        tokio::time::sleep(Duration::from_millis(10)).await;
        if let Ok(mut ledger) = ledger.lock() {
            ledger.push(entry);
        }
    }
}

/// One stack to run phases on: its settings (a fixed port, so that clients keep their
/// address across restarts) and its orders database.
struct Rig {
    name: &'static str,
    settings: Settings,
    backend: Backend,
    base: String,
    /// Between cartbus and the broker, on the broker stack.
    proxy: Option<Arc<Proxy>>,
    /// The three-node cluster, on the cluster stack (removed with the rig), its queues
    /// named by `tag`, and how many node faults it has had (the next hits the next node).
    cluster: Option<(Cluster, String)>,
    node_faults: AtomicUsize,
    _dir: Dir,
}

/// Where a rig keeps its files.
enum Dir {
    Temp(tempfile::TempDir),
    Tmpfs(Tmpfs),
}

impl Dir {
    fn path(&self) -> &std::path::Path {
        match self {
            Dir::Temp(dir) => dir.path(),
            Dir::Tmpfs(Tmpfs(dir)) => dir.path(),
        }
    }
}

async fn rig(name: &'static str, broker_url: Option<&str>, dir: Dir, binary: &Path) -> Rig {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let tag = Uuid::new_v4().simple().to_string();
    let (backend, settings, proxy) = match broker_url {
        None => (
            Backend::Sqlite,
            Settings::new(dir.path(), &Backend::Sqlite),
            None,
        ),
        Some(url) => {
            // cartbus reaches the broker through the proxy, on the broker's own port.
            let mut parsed = url::Url::parse(url).expect("CARTBUS_TEST_AMQP_URL is a URL");
            let upstream = parsed
                .socket_addrs(|| Some(5672))
                .ok()
                .and_then(|a| a.into_iter().next())
                .expect("the broker's address");
            let proxy = Proxy::start(upstream).await;
            let _ = parsed.set_port(Some(proxy.port));
            let backend = broker::orders_backend(TEST).await;
            let settings = broker::fulfilment_settings(dir.path(), &backend, parsed.as_str(), &tag)
                .set("CARTBUS_DATABASE_MAX_CONNECTIONS", "4");
            (backend, settings, Some(proxy))
        }
    };
    let mut settings = settings
        .set("CARTBUS_LISTEN", format!("127.0.0.1:{port}"))
        .set("CARTBUS_INSTANCE", "faults-1")
        .set("CARTBUS_ROUTES", "*=acme")
        .set("CARTBUS_RELAY_LEASE_SECONDS", "2");
    settings.binary = binary.to_path_buf();
    Rig {
        name,
        settings,
        backend,
        base: format!("http://127.0.0.1:{port}"),
        proxy,
        cluster: None,
        node_faults: AtomicUsize::new(0),
        _dir: dir,
    }
}

/// The cluster stack: PostgreSQL and a three-node RabbitMQ cluster with quorum queues;
/// `None` (skipped, or failed when services are required) where no cluster can run.
async fn cluster_rig(dir: Dir, binary: &Path) -> Option<Rig> {
    let cluster = Cluster::start(TEST)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let tag = format!("cartbus-t-{}", Uuid::new_v4().simple());
    let backend = broker::orders_backend(TEST).await;
    let mut settings = common::cluster::settings(dir.path(), &backend, &tag)
        .set("CARTBUS_DATABASE_MAX_CONNECTIONS", "4")
        .set("CARTBUS_LISTEN", format!("127.0.0.1:{port}"))
        .set("CARTBUS_INSTANCE", "faults-1")
        .set("CARTBUS_RELAY_LEASE_SECONDS", "2");
    settings.binary = binary.to_path_buf();
    common::cluster::declare_queues(&settings, &tag).await;
    Some(Rig {
        name: "cluster",
        settings,
        backend,
        base: format!("http://127.0.0.1:{port}"),
        proxy: None,
        cluster: Some((cluster, tag)),
        node_faults: AtomicUsize::new(0),
        _dir: dir,
    })
}

/// One line of the table.
#[derive(Debug, Default)]
struct Row {
    fault: String,
    stack: &'static str,
    cycles: usize,
    accepted: usize,
    lost: usize,
    duplicated: usize,
    wrong: usize,
    /// Attempts that ended in an error, as the storefront saw them.
    errors: u64,
    /// Carts never confirmed (every try failed) that became orders anyway: their request
    /// landed before the client lost it.
    ordered_unconfirmed: usize,
    /// Orders for carts no client ever posted: must be 0.
    phantom: usize,
    /// Orders never handed off to their partner: must be 0.
    not_handed_off: usize,
    /// Orders without their one `checkout.ordered` event, or handed off without an
    /// `order.status_changed` one (issue 20): must be 0.
    events_missing: usize,
    /// Why the phase could not run as planned.
    failure: Option<String>,
    /// How long the phase ran, faults and the clean finish.
    took: Duration,
}

impl Row {
    fn ok(&self) -> bool {
        self.failure.is_none()
            && self.lost == 0
            && self.duplicated == 0
            && self.wrong == 0
            && self.phantom == 0
            && self.not_handed_off == 0
            && self.events_missing == 0
    }
}

/// A fault: how to inject it once, against a running rig.
#[derive(Clone, Copy)]
enum Fault {
    /// SIGKILL the instance when it reaches this fail point.
    KillAt(&'static str),
    /// Terminate every PostgreSQL connection of the instance (`pg_terminate_backend`).
    TerminatePostgres,
    /// `rabbitmqctl stop_app`, then `start_app`.
    RestartBroker,
    /// SIGKILL the broker's Erlang VM, then start it again.
    KillBroker,
    /// Restart the PostgreSQL server.
    RestartPostgres,
    /// Hold the orders database's write lock (PostgreSQL: `LOCK TABLE orders`), so that
    /// every pooled connection waits and the pool runs dry.
    HoldDatabase,
    /// Fill the filesystem under the data directory (a small tmpfs) until writes fail.
    DiskFull,
    /// Reset every connection through the proxy between cartbus and the broker.
    ProxyReset,
    /// 300 ms each way on every chunk through the proxy.
    ProxyDelay,
    /// The proxy refuses connections and drops the ones it has: the broker is unreachable.
    ProxyUnreachable,
    /// Cluster: SIGKILL one node (each in turn), then start it again.
    NodeKill,
    /// Cluster: stop one node cleanly (each in turn), then start it again.
    NodeStopStart,
    /// Cluster: stop two of the three nodes (no majority), then start them again.
    MajorityLoss,
}

impl Fault {
    fn name(self) -> String {
        match self {
            Fault::KillAt(point) => format!("kill at {point}"),
            Fault::TerminatePostgres => "postgres connections terminated".into(),
            Fault::RestartBroker => "broker stop/start".into(),
            Fault::KillBroker => "broker killed (SIGKILL) and restarted".into(),
            Fault::RestartPostgres => "postgres restarted".into(),
            Fault::HoldDatabase => "database locked, pool exhausted".into(),
            Fault::DiskFull => "disk full under the queue file".into(),
            Fault::ProxyReset => "network: connections reset".into(),
            Fault::ProxyDelay => "network: 300 ms delay".into(),
            Fault::ProxyUnreachable => "network: broker unreachable".into(),
            Fault::NodeKill => "cluster: a node killed (SIGKILL) and restarted".into(),
            Fault::NodeStopStart => "cluster: a node stopped and started".into(),
            Fault::MajorityLoss => "cluster: two of three nodes stopped".into(),
        }
    }

    fn key(self) -> &'static str {
        match self {
            Fault::KillAt(point) => point,
            Fault::TerminatePostgres => "pg-terminate",
            Fault::RestartBroker => "broker-restart",
            Fault::KillBroker => "broker-kill",
            Fault::RestartPostgres => "pg-restart",
            Fault::HoldDatabase => "db-held",
            Fault::DiskFull => "disk-full",
            Fault::ProxyReset => "net-reset",
            Fault::ProxyDelay => "net-delay",
            Fault::ProxyUnreachable => "net-unreachable",
            Fault::NodeKill => "node-kill",
            Fault::NodeStopStart => "node-restart",
            Fault::MajorityLoss => "majority-loss",
        }
    }
}

/// The kill points, in the order a cart meets them.
const KILL_POINTS: [&str; 5] = [
    "intake-after-send",
    "consumer-after-receive",
    "consumer-in-order-tx",
    "consumer-before-settle",
    "relay-after-send",
];

async fn run_phase(rig: &Rig, fault: Fault, cycles: usize, earlier: &mut HashSet<Uuid>) -> Row {
    let started = Instant::now();
    let mut row = Row {
        fault: fault.name(),
        stack: rig.name,
        cycles,
        ..Row::default()
    };
    let base = progress_counts(rig)
        .await
        .map(|(orders, _)| orders)
        .unwrap_or(0);
    let load = Load::start(&rig.base);
    let injected = inject(rig, fault, cycles, &load).await;
    // A clean instance finishes what the faults left: the orders, and the hand-offs.
    let clean = Process::start(&rig.settings, &[]);
    if let Err(why) = load
        .progress(CLIENTS, "after the faults, on a clean instance")
        .await
    {
        row.failure = Some(why);
    }
    let entries = load.finish().await;
    if let Err(why) = injected {
        row.failure = Some(why);
    }
    check(rig, &entries, earlier, base, &mut row).await;
    earlier.extend(entries.iter().map(|e| e.cart_id));
    drop(clean);
    row.took = started.elapsed();
    row
}

/// Injects the fault `cycles` times while the load runs, and returns with no instance
/// running.
async fn inject(rig: &Rig, fault: Fault, cycles: usize, load: &Load) -> Result<(), String> {
    if let Fault::KillAt(point) = fault {
        for cycle in 0..cycles {
            // At the first cart the intake point would kill every instance before it
            // answered anyone; a quarter of the sends keeps checkouts flowing between kills.
            let armed = if point == "intake-after-send" {
                format!("{point}=25%return")
            } else {
                format!("{point}=return")
            };
            let mut doomed = Process::start(&rig.settings, &[("FAILPOINTS", &armed)]);
            let deadline = Instant::now() + HIT_DEADLINE;
            while !doomed.logs_contain("fail point hit") {
                if Instant::now() > deadline {
                    print_last_logs(&doomed);
                    return Err(format!("{point} not reached in cycle {cycle}"));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            doomed.kill();
        }
        return Ok(());
    }
    let instance = Process::start(&rig.settings, &[]);
    let mut injected = Ok(());
    for cycle in 0..cycles {
        injected = match load.progress(CLIENTS, "before the fault").await {
            Ok(()) => once(rig, fault, load).await,
            Err(e) => Err(e),
        }
        .map_err(|e| format!("cycle {cycle}: {e}"));
        if injected.is_err() {
            break;
        }
    }
    if injected.is_ok() {
        injected = load.progress(CLIENTS, "after the last fault").await;
    }
    if injected.is_err() {
        print_last_logs(&instance);
    }
    drop(instance);
    injected
}

/// One node fault on the cluster stack: the node (or two) after the last one hit, down
/// while the load goes on, then back with every quorum member online.
async fn node_fault(rig: &Rig, fault: Fault, load: &Load) -> Result<(), String> {
    let (cluster, tag) = rig.cluster.as_ref().ok_or("not the cluster stack")?;
    let nodes = common::cluster::NODES;
    let first = rig.node_faults.fetch_add(1, Ordering::Relaxed);
    let hit: Vec<&str> = match fault {
        Fault::MajorityLoss => vec![nodes[first % 3].0, nodes[(first + 1) % 3].0],
        _ => vec![nodes[first % 3].0],
    };
    for node in &hit {
        match fault {
            Fault::NodeKill => cluster.kill(node),
            _ => cluster.stop(node),
        }
    }
    // With one node down checkouts keep queuing; with two, they are written directly.
    let seen = load.progress(CLIENTS, "while nodes are down").await;
    for node in &hit {
        cluster.up(node);
    }
    common::cluster::all_members_online(&format!("{tag}-carts")).await;
    seen
}

/// What the instance was saying when the phase went wrong.
fn print_last_logs(instance: &Process) {
    for line in instance.logs().iter().rev().take(15).rev() {
        eprintln!(
            "FAULTS: instance log: {}",
            line.chars().take(400).collect::<String>()
        );
    }
}

/// One injection of a fault against the running instance, undone before it returns.
async fn once(rig: &Rig, fault: Fault, load: &Load) -> Result<(), String> {
    match fault {
        Fault::KillAt(_) => Ok(()),
        Fault::TerminatePostgres => terminate_connections(postgres(rig)?)
            .await
            .map_err(|e| e.to_string()),
        Fault::RestartBroker => {
            rabbitmqctl(&["stop_app"])?;
            // Checkouts now go to the database directly (201).
            let seen = load.progress(CLIENTS, "while the broker is down").await;
            rabbitmqctl(&["start_app"])?;
            rabbitmqctl(&["await_startup"])?;
            seen
        }
        Fault::KillBroker => {
            run("pkill", &["-9", "-f", "beam.smp"])?;
            let seen = load.progress(CLIENTS, "while the broker is dead").await;
            run("rabbitmq-server", &["-detached"])?;
            broker_up().await?;
            seen
        }
        Fault::RestartPostgres => {
            let cluster = std::fs::read_dir("/etc/postgresql")
                .ok()
                .and_then(|mut d| d.next())
                .and_then(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .ok_or("no PostgreSQL cluster under /etc/postgresql")?;
            run(
                "pg_ctlcluster",
                &["--skip-systemctl-redirect", &cluster, "main", "restart"],
            )?;
            run("pg_isready", &["-q", "-t", "60", "-h", "127.0.0.1"])
        }
        Fault::NodeKill | Fault::NodeStopStart | Fault::MajorityLoss => {
            node_fault(rig, fault, load).await
        }
        Fault::HoldDatabase => hold_database(rig, load).await,
        Fault::DiskFull => {
            let filler = rig.settings.data_dir.join("filler");
            fill(&filler)?;
            let seen = load.refused(CLIENTS, "checkouts on a full disk").await;
            std::fs::remove_file(&filler).map_err(|e| format!("remove the filler: {e}"))?;
            seen
        }
        Fault::ProxyReset => {
            proxy(rig)?.reset();
            Ok(())
        }
        Fault::ProxyDelay => {
            let proxy = proxy(rig)?;
            proxy.delay_ms.store(300, Ordering::Relaxed);
            let seen = load.progress(CLIENTS, "under a 300 ms delay").await;
            proxy.delay_ms.store(0, Ordering::Relaxed);
            seen
        }
        Fault::ProxyUnreachable => {
            let proxy = proxy(rig)?;
            proxy.refuse.store(true, Ordering::Relaxed);
            proxy.reset();
            let seen = load.progress(CLIENTS, "with the broker unreachable").await;
            proxy.refuse.store(false, Ordering::Relaxed);
            seen
        }
    }
}

fn postgres(rig: &Rig) -> Result<&str, String> {
    match &rig.backend {
        Backend::Postgres(url) => Ok(url),
        Backend::Sqlite => Err("needs PostgreSQL".into()),
    }
}

fn proxy(rig: &Rig) -> Result<&Proxy, String> {
    rig.proxy
        .as_deref()
        .ok_or_else(|| "needs the broker proxy".to_string())
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let status = Command::new(program)
        .args(args)
        .status()
        .map_err(|e| format!("{program}: {e}"))?;
    status
        .success()
        .then_some(())
        .ok_or_else(|| format!("{program} {args:?} failed: {status}"))
}

/// Holds the orders database's write lock while the clients post, at least a second.
async fn hold_database(rig: &Rig, load: &Load) -> Result<(), String> {
    use sqlx::Connection;
    const HOLD: Duration = Duration::from_secs(1);
    let started = Instant::now();
    let holding = async {
        if started.elapsed() < HOLD {
            // The fault's own length: the lock must outlast a consumer batch or two.
            tokio::time::sleep(HOLD - started.elapsed()).await;
        }
        load.progress(CLIENTS, "with the database locked").await
    };
    match &rig.backend {
        Backend::Sqlite => {
            // The lock goes to whoever asks when it is free, not in turn: under load
            // cartbus's own writers can keep it for longer than SQLite's default 5 s wait,
            // and the fault must not fail to start because the database is busy.
            let options = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(rig.settings.data_dir.join("cartbus.db"))
                .busy_timeout(HIT_DEADLINE);
            let mut conn = sqlx::SqliteConnection::connect_with(&options)
                .await
                .map_err(|e| e.to_string())?;
            sqlx::query("BEGIN IMMEDIATE")
                .execute(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            let seen = holding.await;
            sqlx::query("ROLLBACK")
                .execute(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            seen
        }
        Backend::Postgres(url) => {
            let mut conn = sqlx::PgConnection::connect(url)
                .await
                .map_err(|e| e.to_string())?;
            let mut tx = conn.begin().await.map_err(|e| e.to_string())?;
            sqlx::query("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
                .execute(&mut *tx)
                .await
                .map_err(|e| e.to_string())?;
            let seen = holding.await;
            tx.rollback().await.map_err(|e| e.to_string())?;
            seen
        }
    }
}

/// Writes `filler` until the filesystem is full.
fn fill(filler: &std::path::Path) -> Result<(), String> {
    use std::io::Write;
    let mut file = std::fs::File::create(filler).map_err(|e| format!("create the filler: {e}"))?;
    let chunk = vec![0u8; 64 * 1024];
    loop {
        match file.write_all(&chunk).and_then(|()| file.sync_data()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(28) => return Ok(()), // ENOSPC
            Err(e) => return Err(format!("fill the disk: {e}")),
        }
    }
}

/// A small tmpfs for the data directory of the disk-full phase, unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(megabytes: u32) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().to_string_lossy().into_owned();
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={megabytes}M"),
                "tmpfs",
                &path,
            ],
        )
        .map_err(|e| format!("{e} (mounting a tmpfs needs root)"))?;
        Ok(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = run("umount", &[&self.0.path().to_string_lossy()]);
    }
}

/// Waits until a broker started with `-detached` answers (`await_startup` fails at once
/// while the node is not yet running at all).
async fn broker_up() -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match rabbitmqctl(&["await_startup", "--timeout", "10"]) {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

fn rabbitmqctl(args: &[&str]) -> Result<(), String> {
    let status = Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .status()
        .map_err(|e| format!("rabbitmqctl: {e}"))?;
    status
        .success()
        .then_some(())
        .ok_or_else(|| format!("rabbitmqctl {args:?} failed: {status}"))
}

async fn terminate_connections(url: &str) -> Result<(), sqlx::Error> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await?;
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .execute(&mut conn)
    .await?;
    Ok(())
}

/// Per order: cart, total, lines, Σ quantity × unit_price, its hand-off status, and its
/// cart's `checkout.ordered` and `order.status_changed` events.
type OrderRow = (Uuid, i64, i64, i64, Option<String>, i64, i64);

const ORDERS_SQL: &str = "SELECT o.cart_id, o.total, COUNT(l.line_no),
        CAST(COALESCE(SUM(l.quantity * l.unit_price), 0) AS BIGINT),
        (SELECT d.process_status FROM order_dispatch d WHERE d.order_id = o.id),
        (SELECT COUNT(*) FROM events e WHERE e.cart_id = o.cart_id AND e.type = 'checkout.ordered'),
        (SELECT COUNT(*) FROM events e WHERE e.cart_id = o.cart_id AND e.type = 'order.status_changed')
     FROM orders o LEFT JOIN order_lines l ON l.order_id = o.id
     GROUP BY o.id, o.cart_id, o.total";

const COUNTS_SQL: &str = "SELECT (SELECT COUNT(*) FROM orders),
        (SELECT COUNT(*) FROM order_dispatch WHERE process_status = 'processed')";

/// Orders, and orders handed off, in the rig's database (0 before it exists).
async fn progress_counts(rig: &Rig) -> Result<(i64, i64), sqlx::Error> {
    use sqlx::Connection;
    match &rig.backend {
        Backend::Sqlite => {
            let file = rig.settings.data_dir.join("cartbus.db");
            if !file.exists() {
                return Ok((0, 0));
            }
            let options = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(file)
                .read_only(true);
            let mut conn = sqlx::SqliteConnection::connect_with(&options).await?;
            sqlx::query_as(COUNTS_SQL).fetch_one(&mut conn).await
        }
        Backend::Postgres(url) => {
            let mut conn = sqlx::PgConnection::connect(url).await?;
            sqlx::query_as(COUNTS_SQL).fetch_one(&mut conn).await
        }
    }
}

async fn orders(rig: &Rig) -> Result<Vec<OrderRow>, sqlx::Error> {
    use sqlx::Connection;
    match &rig.backend {
        Backend::Sqlite => {
            let options = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(rig.settings.data_dir.join("cartbus.db"))
                .read_only(true);
            let mut conn = sqlx::SqliteConnection::connect_with(&options).await?;
            sqlx::query_as(ORDERS_SQL).fetch_all(&mut conn).await
        }
        Backend::Postgres(url) => {
            let mut conn = sqlx::PgConnection::connect(url).await?;
            sqlx::query_as(ORDERS_SQL).fetch_all(&mut conn).await
        }
    }
}

/// Waits until every accepted cart has its order and every order was handed off (or
/// nothing moves any more), then compares the orders with the ledger. `earlier` holds
/// the carts of the rig's earlier phases, whose orders are theirs, and `base` how many
/// orders there were when this phase began.
async fn check(rig: &Rig, entries: &[Entry], earlier: &HashSet<Uuid>, base: i64, row: &mut Row) {
    let accepted: HashSet<Uuid> = entries
        .iter()
        .filter(|e| e.accepted)
        .map(|e| e.cart_id)
        .collect();
    let posted: HashMap<Uuid, &Entry> = entries.iter().map(|e| (e.cart_id, e)).collect();
    row.accepted = accepted.len();
    row.errors = entries.iter().map(|e| u64::from(e.errors)).sum();
    // Cheap counts while the backlog drains; the full comparison once they say done, or
    // once nothing has moved for STALL_DEADLINE (then what is missing is lost).
    let mut last = (0, 0);
    let mut moved = Instant::now();
    loop {
        match progress_counts(rig).await {
            Ok((orders, handed_off)) => {
                if orders >= base + accepted.len() as i64 && handed_off == orders {
                    break;
                }
                if (orders, handed_off) != last {
                    last = (orders, handed_off);
                    moved = Instant::now();
                }
            }
            Err(e) if moved.elapsed() > STALL_DEADLINE => {
                row.failure = Some(format!("cannot read the orders: {e}"));
                return;
            }
            Err(_) => {}
        }
        if moved.elapsed() > STALL_DEADLINE {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let found = match orders(rig).await {
        Ok(found) => found,
        Err(e) => {
            row.failure = Some(format!("cannot read the orders: {e}"));
            return;
        }
    };
    let mut per_cart: HashMap<Uuid, usize> = HashMap::new();
    for (cart_id, total, lines, sum, handoff, ordered_events, status_events) in &found {
        if earlier.contains(cart_id) {
            continue;
        }
        // Each order's event was written in its own transaction: one, never none; and a
        // hand-off marked processed wrote its `sent_to_partner` with the mark.
        let handed_off = handoff.as_deref() == Some("processed");
        if *ordered_events != 1 || (handed_off && *status_events == 0) {
            row.events_missing += 1;
            eprintln!(
                "FAULTS: cart {cart_id}: {ordered_events} checkout.ordered and \
                 {status_events} order.status_changed events (hand-off {handoff:?})"
            );
        }
        *per_cart.entry(*cart_id).or_default() += 1;
        if posted.contains_key(cart_id) && handoff.as_deref() != Some("processed") {
            row.not_handed_off += 1;
        }
        if let Some(entry) = posted.get(cart_id)
            && (*total != entry.total || *lines != entry.lines || *sum != entry.total)
        {
            row.wrong += 1;
            eprintln!(
                "FAULTS: order for cart {cart_id}: total {total}, {lines} lines, sum {sum}; \
                 posted total {}, {} lines",
                entry.total, entry.lines
            );
        }
    }
    for (cart_id, n) in &per_cart {
        match posted.get(cart_id) {
            None => row.phantom += 1,
            Some(entry) if !entry.accepted => row.ordered_unconfirmed += 1,
            Some(_) => {}
        }
        if *n > 1 {
            row.duplicated += 1;
        }
    }
    row.lost = accepted
        .iter()
        .filter(|c| !per_cart.contains_key(c))
        .count();
}

/// The disk-full phase, on a rig of its own whose data directory is a 1 GiB tmpfs (room
/// for a full run's carts; the filler takes what is left).
async fn disk_full(cycles: usize, binary: &Path) -> Row {
    match Tmpfs::mount(1024) {
        Ok(tmpfs) => {
            let rig = rig("embedded", None, Dir::Tmpfs(tmpfs), binary).await;
            run_phase(&rig, Fault::DiskFull, cycles, &mut HashSet::new()).await
        }
        Err(why) => Row {
            fault: Fault::DiskFull.name(),
            stack: "embedded",
            cycles,
            failure: Some(why),
            ..Row::default()
        },
    }
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "| fault | stack | cycles | time | accepted | lost | duplicated | wrong | not handed off | events missing | errors seen by clients | ordered, unconfirmed |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {}{} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.fault,
            r.failure
                .as_deref()
                .map(|f| format!(" (FAILED: {f})"))
                .unwrap_or_default(),
            r.stack,
            r.cycles,
            minutes_and_seconds(r.took),
            r.accepted,
            r.lost,
            r.duplicated,
            r.wrong + r.phantom,
            r.not_handed_off,
            r.events_missing,
            r.errors,
            r.ordered_unconfirmed,
        );
    }
}

/// A long run is often stopped by hand (Ctrl-C, or `kill` of the runner): its cartbus
/// instances go with it instead of living on as orphans.
async fn kill_children_when_stopped() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    use tokio::signal::unix::{SignalKind, signal};

    let Ok(mut terminate) = signal(SignalKind::terminate()) else {
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    let children = common::CHILDREN
        .lock()
        .map(|c| c.clone())
        .unwrap_or_default();
    for &pid in &children {
        if let Ok(pid) = i32::try_from(pid) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    eprintln!(
        "faults: stopped by a signal; killed {} cartbus instance(s)",
        children.len()
    );
    std::process::exit(130);
}

/// `7 min 5 s`, `42 s`.
fn minutes_and_seconds(took: Duration) -> String {
    let seconds = took.as_secs();
    if seconds < 60 {
        format!("{seconds} s")
    } else {
        format!("{} min {} s", seconds / 60, seconds % 60)
    }
}

fn main() -> ExitCode {
    let args = match Args::parse() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("faults: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.spawn(kill_children_when_stopped());
    let rows = runtime.block_on(campaign(&args));
    print_table(&rows);
    if rows.iter().all(Row::ok) {
        ExitCode::SUCCESS
    } else {
        eprintln!("faults: something was lost, duplicated or wrong, or a fault was not injected");
        ExitCode::FAILURE
    }
}

async fn campaign(args: &Args) -> Vec<Row> {
    let started = Instant::now();
    let mut rows = Vec::new();
    // A private copy of the binary: a `cargo build` during a long run replaces
    // target/debug/cartbus with one built without fail points, and every kill phase after
    // it would wait in vain for a fail point.
    let private = tempfile::tempdir().expect("tempdir");
    let binary = private.path().join("cartbus");
    std::fs::copy(env!("CARGO_BIN_EXE_cartbus"), &binary).expect("copy the cartbus binary");
    let mut stacks: Vec<(&'static str, Option<String>)> = vec![("embedded", None)];
    if args.stack.as_deref() != Some("embedded")
        && let Some(url) = broker::url(TEST)
    {
        stacks.push(("broker", Some(url)));
    }
    for (name, url) in stacks {
        if args.stack.as_deref().is_some_and(|s| s != name) {
            continue;
        }
        let dir = Dir::Temp(tempfile::tempdir().expect("tempdir"));
        let rig = rig(name, url.as_deref(), dir, &binary).await;
        let mut earlier = HashSet::new();
        let mut faults: Vec<Fault> = KILL_POINTS.iter().map(|p| Fault::KillAt(p)).collect();
        faults.push(Fault::HoldDatabase);
        if url.is_some() {
            faults.extend([
                Fault::TerminatePostgres,
                Fault::RestartPostgres,
                Fault::ProxyReset,
                Fault::ProxyDelay,
                Fault::ProxyUnreachable,
                Fault::RestartBroker,
                Fault::KillBroker,
            ]);
        } else if args.wants(Fault::DiskFull.key(), name) {
            rows.push(disk_full(args.cycles, &binary).await);
        }
        for fault in faults {
            if !args.wants(fault.key(), name) {
                continue;
            }
            let row = run_phase(&rig, fault, args.cycles, &mut earlier).await;
            eprintln!("FAULTS: {row:?}");
            rows.push(row);
        }
    }
    // The cluster stack last: its nodes are removed when its rig goes, and the broker
    // stack's SIGKILL of the system node (`pkill beam.smp`) would hit them too.
    if broker::url(TEST).is_some()
        && args.stack.as_deref().is_none_or(|s| s == "cluster")
        && [Fault::NodeKill, Fault::NodeStopStart, Fault::MajorityLoss]
            .iter()
            .any(|f| args.wants(f.key(), "cluster"))
        && let Some(rig) =
            cluster_rig(Dir::Temp(tempfile::tempdir().expect("tempdir")), &binary).await
    {
        let mut earlier = HashSet::new();
        // A node's restart and its quorum members catching up take ~10 s a cycle, so CI
        // sets fewer cycles here (CARTBUS_CLUSTER_FAULT_CYCLES) than for the other stacks.
        let cycles = std::env::var("CARTBUS_CLUSTER_FAULT_CYCLES")
            .ok()
            .and_then(|n| n.parse().ok())
            .filter(|n| *n > 0)
            .unwrap_or(args.cycles);
        for fault in [Fault::NodeKill, Fault::NodeStopStart, Fault::MajorityLoss] {
            if !args.wants(fault.key(), "cluster") {
                continue;
            }
            let row = run_phase(&rig, fault, cycles, &mut earlier).await;
            eprintln!("FAULTS: {row:?}");
            rows.push(row);
        }
    }
    eprintln!("FAULTS: campaign took {:.0?}", started.elapsed());
    rows
}
