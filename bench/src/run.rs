//! `cartbus-bench run`: the whole table of issue 6, for the embedded defaults and for
//! PostgreSQL + RabbitMQ. cartbus runs as a child process (the release binary next to
//! this one), driven over real HTTP from this process; every figure sits next to the raw
//! speed of the part underneath it, measured in the same run.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use cartbus::checkout::Cart;
use cartbus::config::Config;
use cartbus::db::Db;
use cartbus::orders::{self, Source};
use cartbus::queue::embedded::EmbeddedOptions;
use cartbus::queue::{EmbeddedQueue, Queue};
use serde::Serialize;
use serde_json::{Value, json};

const TOKEN: &str = "cartbus-bench-admin-token";

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Which stacks: embedded, broker (PostgreSQL + RabbitMQ) or both.
    #[arg(long, default_value = "both")]
    pub stack: String,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Carts queued (with the consumer paused) and then drained.
    #[arg(long, default_value_t = 100_000)]
    pub backlog: usize,
    /// Seconds of load for the time-bounded phases (direct write, mixed, shedding).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Carts per consumer transaction (CARTBUS_CONSUMER_BATCH) and per raw batch.
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Run with the fulfilment hand-off on (`CARTBUS_ROUTES`, a relay sending every order
    /// to a partner queue alongside the drain), as production does; `--no-hand-off` to
    /// see what it costs.
    #[arg(long = "no-hand-off", action = clap::ArgAction::SetFalse)]
    pub hand_off: bool,
    /// Backlog for the memory figure (embedded queue).
    #[arg(long, default_value_t = 1_000_000)]
    pub memory_backlog: usize,
    /// PostgreSQL URL on which the bench may create databases (broker stack).
    #[arg(
        long,
        env = "CARTBUS_TEST_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub postgres: String,
    /// RabbitMQ with AMQP 1.0 (broker stack).
    #[arg(
        long,
        env = "CARTBUS_TEST_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672"
    )]
    pub amqp: String,
    /// Where to write the table as JSON.
    #[arg(long, default_value = "bench-results/run.json")]
    pub json: PathBuf,
}

#[derive(Serialize, Clone)]
pub struct Figure {
    stack: String,
    what: String,
    value: f64,
    unit: String,
    /// The raw counterpart and the ratio to it, where there is one.
    raw: Option<f64>,
    ratio: Option<f64>,
    note: String,
}

struct Table {
    figures: Vec<Figure>,
    stack: String,
}

impl Table {
    fn add(
        &mut self,
        what: &str,
        value: f64,
        unit: &str,
        raw: Option<f64>,
        note: impl Into<String>,
    ) {
        let figure = Figure {
            stack: self.stack.clone(),
            what: what.into(),
            value,
            unit: unit.into(),
            raw,
            ratio: raw.filter(|r| *r > 0.0).map(|r| value / r),
            note: note.into(),
        };
        println!(
            "  {:<44} {:>12.1} {:<6} {:>12} {:>7}  {}",
            figure.what,
            figure.value,
            figure.unit,
            figure.raw.map(|r| format!("{r:.1}")).unwrap_or_default(),
            figure.ratio.map(|r| format!("{r:.2}")).unwrap_or_default(),
            figure.note
        );
        self.figures.push(figure);
    }
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let binary = std::env::current_exe()?
        .parent()
        .map(|d| d.join("cartbus"))
        .context("no directory for the cartbus binary")?;
    if !binary.is_file() {
        bail!(
            "{} not found: build it first (cargo build --release)",
            binary.display()
        );
    }
    println!(
        "cartbus-bench run: {} clients, backlog {}, {} s phases, hand-off {}, on {} ({} cores)",
        args.clients,
        args.backlog,
        args.seconds,
        if args.hand_off { "on" } else { "off" },
        hostname::get()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!(
        "  {:<44} {:>12} {:<6} {:>12} {:>7}  note",
        "figure", "value", "unit", "raw", "ratio"
    );
    let mut all = Vec::new();
    if args.stack == "embedded" || args.stack == "both" {
        println!("embedded (SQLite orders + embedded queue):");
        let mut table = Table {
            figures: Vec::new(),
            stack: "embedded".into(),
        };
        embedded(&args, &binary, &mut table).await?;
        all.extend(table.figures);
    }
    if args.stack == "broker" || args.stack == "both" {
        println!("broker (PostgreSQL + RabbitMQ over AMQP 1.0):");
        let mut table = Table {
            figures: Vec::new(),
            stack: "broker".into(),
        };
        broker(&args, &binary, &mut table).await?;
        all.extend(table.figures);
    }
    if let Some(dir) = args.json.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.json, serde_json::to_vec_pretty(&all)?)?;
    println!("written to {}", args.json.display());
    Ok(())
}

async fn embedded(args: &RunArgs, binary: &Path, table: &mut Table) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().to_path_buf();
    let raw_append = raw_sqlite_append(&dir.path().join("raw.db"), args.backlog).await?;
    let mut env = vec![("CARTBUS_DATA_DIR".to_string(), data.display().to_string())];
    if args.hand_off {
        env.extend(hand_off("partner-bench"));
    }
    stack(
        args,
        binary,
        table,
        &env,
        &data,
        None,
        raw_append,
        "raw SQLite append (WAL, FULL, 256/tx)",
    )
    .await?;
    memory_with_backlog(args, binary, table, &data).await
}

async fn broker(args: &RunArgs, binary: &Path, table: &mut Table) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().to_path_buf();
    let database = fresh_postgres(&args.postgres).await?;
    let queue = format!("cartbus-bench-{}", uuid::Uuid::new_v4().simple());
    let address = format!("/queue/{queue}");
    let body = Bytes::from(vec![b'x'; 1024]);
    let serial = super::raw_publish(&args.amqp, &address, &body, 2_000, 1).await?;
    let windowed = super::raw_publish(&args.amqp, &address, &body, 20_000, 256).await?;
    super::drain(&args.amqp, &address, 22_000).await?;
    let rtt = raw_round_trips(&args.amqp, &address, &body, 2_000).await?;
    super::drain(&args.amqp, &address, 2_000).await?;
    let serial_rate = 2_000.0 / serial.as_secs_f64();
    let windowed_rate = 20_000.0 / windowed.as_secs_f64();
    table.add(
        "raw publish, one in flight",
        serial_rate,
        "msg/s",
        None,
        "plain fe2o3-amqp, durable 1 KB",
    );
    table.add(
        "raw publish, window 256",
        windowed_rate,
        "msg/s",
        None,
        "plain fe2o3-amqp, durable 1 KB",
    );
    let mut env = vec![
        ("CARTBUS_DATA_DIR".to_string(), data.display().to_string()),
        ("DATABASE_URL".to_string(), database.clone()),
        ("CARTBUS_QUEUE_URL".to_string(), args.amqp.clone()),
        ("CARTBUS_CART_ADDRESS".to_string(), address.clone()),
    ];
    let partner_queue = format!("{queue}-partner");
    if args.hand_off {
        env.extend(hand_off(&format!("/queue/{partner_queue}")));
    }
    let rtt_p99 = percentile(&rtt, 0.99);
    table.add(
        "raw publish round trip p99",
        rtt_p99,
        "ms",
        None,
        "one in flight",
    );
    let intake_p99 = stack(
        args,
        binary,
        table,
        &env,
        &data,
        Some(serial_rate),
        windowed_rate,
        "raw windowed publish",
    )
    .await?;
    table.add(
        "intake p99 (4 clients) − broker round trip p99",
        intake_p99 - rtt_p99,
        "ms",
        None,
        "target ≤ 2",
    );
    for queue in [&queue, &partner_queue] {
        let _ = Command::new("rabbitmqctl")
            .args(["delete_queue", queue])
            .output();
    }
    Ok(())
}

/// The fulfilment hand-off switched on, as in production: every order is also relayed
/// to one partner at `address` while the phases run.
fn hand_off(address: &str) -> [(String, String); 3] {
    [
        ("CARTBUS_ROUTES".into(), "*=bench".into()),
        ("CARTBUS_PARTNER_BENCH_ADDRESS".into(), address.into()),
        (
            "CARTBUS_PARTNER_BENCH_SECRET".into(),
            "bench-partner-secret-0001".into(),
        ),
    ]
}

/// The phases both stacks share.
#[allow(clippy::too_many_arguments)]
async fn stack(
    args: &RunArgs,
    binary: &Path,
    table: &mut Table,
    env: &[(String, String)],
    data: &Path,
    one_in_flight: Option<f64>,
    raw_intake: f64,
    raw_intake_what: &str,
) -> anyhow::Result<f64> {
    let batch = args.batch.to_string();
    let service = Service::start(binary, env, &[("CARTBUS_CONSUMER_BATCH", &batch)])?;
    service.wait_ready().await?;
    let idle = service.rss_kib();
    let db = service.db(env)?;
    admin(&service.base, "pause", json!({ "wait_seconds": 30 })).await?;

    // Intake: the backlog, queued with the consumer paused.
    let load = Load::count(&service.base, args.clients, args.backlog).await;
    load.check_ok("intake")?;
    let rate = load.ok as f64 / load.took.as_secs_f64();
    table.add(
        "intake (consumer paused)",
        rate,
        "req/s",
        Some(raw_intake),
        format!("vs {raw_intake_what}"),
    );
    if let Some(serial) = one_in_flight {
        table.add(
            "intake vs one-in-flight publish",
            rate,
            "req/s",
            Some(serial),
            "target ≥ 5×",
        );
    }
    let (p50, p99, p999) = (
        percentile(&load.latencies, 0.50),
        percentile(&load.latencies, 0.99),
        percentile(&load.latencies, 0.999),
    );
    // Latency at a moderate load, where it says what cartbus adds (at saturation every
    // request also waits for a CPU shared with the load generator and the broker).
    let light = Load::count(&service.base, 4, 2_000).await;
    light.check_ok("light intake")?;
    let light_p99 = percentile(&light.latencies, 0.99);
    table.add("intake latency p99, 4 clients", light_p99, "ms", None, "");
    table.add("intake latency p50", p50, "ms", None, "");
    table.add("intake latency p99", p99, "ms", None, "");
    table.add("intake latency p99.9", p999, "ms", None, "");

    // Drain: resume and time the backlog into orders.
    let before = count_orders(&db).await?;
    let started = Instant::now();
    admin(&service.base, "resume", json!({})).await?;
    let target = before + load.ok as i64;
    wait_for_orders(&db, target, Duration::from_secs(600)).await?;
    let drain = load.ok as f64 / started.elapsed().as_secs_f64();
    let raw_drain = raw_batched_insert(env, data, args.backlog.min(50_000), args.batch).await?;
    table.add(
        "drain (backlog → orders)",
        drain,
        "ord/s",
        Some(raw_drain),
        format!("vs raw batched INSERT ({}/tx); target ≥ 0.6", args.batch),
    );
    table.add(
        "drain vs intake",
        drain,
        "ord/s",
        Some(rate),
        "target ≥ 1.2",
    );
    if args.hand_off {
        // The relay ran alongside the drain; when had every order reached its partner?
        wait_for_dispatched(&db, target, Duration::from_secs(600)).await?;
        table.add(
            "hand-off to partner (outbox relay)",
            load.ok as f64 / started.elapsed().as_secs_f64(),
            "ord/s",
            Some(drain),
            "from resume until every order is sent; vs drain",
        );
    }

    // Mixed: a backlog and intake at once; the backlog must shrink.
    admin(&service.base, "pause", json!({ "wait_seconds": 30 })).await?;
    let seed = Load::count(&service.base, args.clients, args.backlog / 2).await;
    seed.check_ok("mixed seed")?;
    let accepted_before = count_orders(&db).await? + seed.ok as i64;
    admin(&service.base, "resume", json!({})).await?;
    let orders_at_start = count_orders(&db).await?;
    let mixed = Load::timed(
        &service.base,
        args.clients / 2,
        Duration::from_secs(args.seconds),
    )
    .await;
    let orders_at_end = count_orders(&db).await?;
    let waiting_start = accepted_before - orders_at_start;
    let waiting_end = accepted_before + mixed.ok as i64 - orders_at_end;
    table.add(
        "mixed: intake",
        mixed.ok as f64 / mixed.took.as_secs_f64(),
        "req/s",
        None,
        format!("{} clients", args.clients / 2),
    );
    table.add(
        "mixed: drain",
        (orders_at_end - orders_at_start) as f64 / mixed.took.as_secs_f64(),
        "ord/s",
        None,
        format!(
            "backlog {waiting_start} → {waiting_end} ({})",
            if waiting_end < waiting_start {
                "shrinks"
            } else {
                "GROWS"
            }
        ),
    );

    // Pause → drained, under load.
    let stop = Arc::new(AtomicBool::new(false));
    let background = {
        let base = service.base.clone();
        let stop = stop.clone();
        let clients = args.clients / 2;
        tokio::spawn(async move { Load::until(&base, clients, stop).await })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let asked = Instant::now();
    let (code, _) = admin(&service.base, "pause", json!({ "wait_seconds": 30 })).await?;
    let pause_ms = asked.elapsed().as_secs_f64() * 1000.0;
    stop.store(true, Ordering::Relaxed);
    let _ = background.await;
    table.add(
        "pause → drained under load",
        pause_ms,
        "ms",
        None,
        if code == 200 {
            "target ≤ 1000"
        } else {
            "NOT drained"
        },
    );
    admin(&service.base, "resume", json!({})).await?;
    table.add("RSS idle", idle as f64 / 1024.0, "MiB", None, "");
    table.add(
        "RSS peak after the phases",
        service.peak_rss_kib() as f64 / 1024.0,
        "MiB",
        None,
        "",
    );
    drop(service);

    // Direct-write intake: the queue unusable, against raw INSERTs of the same rows.
    let blocker = data.join("not-a-directory");
    std::fs::write(&blocker, b"x")?;
    let mut direct_env = env.to_vec();
    direct_env.retain(|(k, _)| k != "CARTBUS_QUEUE_URL");
    direct_env.push((
        "CARTBUS_QUEUE_URL".into(),
        format!("embedded:{}", blocker.join("q.db").display()),
    ));
    let service = Service::start(binary, &direct_env, &[])?;
    service.wait_ready().await?;
    let direct = Load::timed(
        &service.base,
        args.clients,
        Duration::from_secs(args.seconds),
    )
    .await;
    direct.check_ok("direct-write intake")?;
    drop(service);
    let direct_rate = direct.ok as f64 / direct.took.as_secs_f64();
    let raw_direct =
        raw_single_inserts(env, data, args.clients, Duration::from_secs(args.seconds)).await?;
    table.add(
        "direct-write intake (queue down)",
        direct_rate,
        "req/s",
        Some(raw_direct),
        "vs raw INSERT, one cart per tx; target ≥ 0.8",
    );

    // Shedding: far more clients than the in-flight limit.
    let mut shed_env = env.to_vec();
    shed_env.push(("CARTBUS_MAX_IN_FLIGHT".into(), "16".into()));
    let service = Service::start(binary, &shed_env, &[])?;
    service.wait_ready().await?;
    let flood = Load::timed(&service.base, 256, Duration::from_secs(3)).await;
    drop(service);
    table.add(
        "shed at in-flight limit 16, 256 clients",
        flood.shed as f64,
        "503s",
        None,
        format!("{} accepted, {} other errors", flood.ok, flood.errors),
    );
    Ok(light_p99)
}

/// RSS with a large backlog waiting while the consumer drains it.
async fn memory_with_backlog(
    args: &RunArgs,
    binary: &Path,
    table: &mut Table,
    _data: &Path,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let queue_file = dir.path().join("queue.db");
    {
        let queue = Arc::new(
            EmbeddedQueue::open(
                &queue_file,
                EmbeddedOptions {
                    owner: "bench-filler".into(),
                    lease: Duration::from_secs(30),
                    max_attempts: 5,
                    poll_interval: Duration::from_millis(100),
                },
            )
            .await?,
        );
        let started = Instant::now();
        let next = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..256 {
            let queue = queue.clone();
            let next = next.clone();
            let total = args.memory_backlog as u64;
            tasks.push(tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= total {
                        return Ok::<_, anyhow::Error>(());
                    }
                    let cart = Cart::parse(&cart_json()).map_err(|e| anyhow::anyhow!("{e:?}"))?;
                    queue
                        .send(
                            "checkout-carts",
                            cartbus::checkout::message::encode(&cart, chrono::Utc::now()),
                        )
                        .await?;
                }
            }));
        }
        for task in tasks {
            task.await??;
        }
        table.add(
            "embedded queue append (its API, 256 senders)",
            args.memory_backlog as f64 / started.elapsed().as_secs_f64(),
            "msg/s",
            None,
            "filling the memory backlog",
        );
    }
    let env = vec![
        (
            "CARTBUS_DATA_DIR".to_string(),
            dir.path().display().to_string(),
        ),
        ("CARTBUS_CONSUMER".to_string(), "off".to_string()),
    ];
    let service = Service::start(binary, &env, &[])?;
    service.wait_ready().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let waiting = service.rss_kib();
    drop(service);
    let env = vec![(
        "CARTBUS_DATA_DIR".to_string(),
        dir.path().display().to_string(),
    )];
    let service = Service::start(binary, &env, &[])?;
    service.wait_ready().await?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let draining = service.peak_rss_kib();
    drop(service);
    table.add(
        &format!("RSS with {} waiting, consumer off", args.memory_backlog),
        waiting as f64 / 1024.0,
        "MiB",
        None,
        "",
    );
    table.add(
        &format!("RSS peak, 10 s draining {}", args.memory_backlog),
        draining as f64 / 1024.0,
        "MiB",
        None,
        "target ≤ idle + 64 MiB",
    );
    Ok(())
}

/// A cartbus child process on an ephemeral port.
struct Service {
    child: Child,
    base: String,
}

impl Service {
    fn start(
        binary: &Path,
        env: &[(String, String)],
        extra: &[(&str, &str)],
    ) -> anyhow::Result<Service> {
        use std::io::{BufRead, BufReader};
        let mut command = Command::new(binary);
        command
            .env("CARTBUS_LISTEN", "127.0.0.1:0")
            .env("CARTBUS_LOG_FORMAT", "json")
            .env("CARTBUS_LOG", "warn,cartbus=info")
            .env("CARTBUS_ADMIN_TOKEN", TOKEN)
            .env("CARTBUS_INSTANCE", "bench")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        for (k, v) in extra {
            command.env(k, v);
        }
        let mut child = command.spawn()?;
        let stderr = child.stderr.take().context("stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(event) = serde_json::from_str::<Value>(&line)
                    && event["message"] == "cartbus listening"
                    && let Some(address) = event["address"].as_str()
                {
                    let _ = tx.send(address.to_string());
                }
            }
        });
        let address = rx
            .recv_timeout(Duration::from_secs(30))
            .context("cartbus did not start")?;
        Ok(Service {
            child,
            base: format!("http://{address}"),
        })
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = http.get(format!("{}/health/ready", self.base)).send().await;
            let queue_up = match ready {
                Ok(r) => r.json::<Value>().await.ok().map(|v| v["queue_up"] == true),
                Err(_) => None,
            };
            if queue_up.is_some() {
                // Give a broker connection a moment; direct-write runs have no queue.
                let status = admin(&self.base, "status", Value::Null).await;
                if queue_up == Some(true) || Instant::now() > deadline - Duration::from_secs(25) {
                    return status.map(drop);
                }
            }
            if Instant::now() > deadline {
                bail!("cartbus at {} not ready", self.base);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn status_field(&self, field: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with(field))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|n| n.parse().ok())
            })
            .unwrap_or(0)
    }

    fn rss_kib(&self) -> u64 {
        self.status_field("VmRSS:")
    }

    fn peak_rss_kib(&self) -> u64 {
        self.status_field("VmHWM:")
    }

    fn db(&self, env: &[(String, String)]) -> anyhow::Result<Db> {
        let config = Config::from_vars(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
        Ok(Db::connect_lazy(&config)?)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

async fn admin(base: &str, action: &str, body: Value) -> anyhow::Result<(u16, Value)> {
    let http = reqwest::Client::new();
    let request = match action {
        "status" => http.get(format!("{base}/v1/admin/consumer")),
        _ => http
            .post(format!("{base}/v1/admin/consumer/{action}"))
            .json(&body),
    };
    let response = request.bearer_auth(TOKEN).send().await?;
    let code = response.status().as_u16();
    let value = response.json().await.unwrap_or(Value::Null);
    if code >= 300 {
        bail!("admin {action}: HTTP {code}: {value}");
    }
    Ok((code, value))
}

/// What a load run saw.
#[derive(Default)]
struct Load {
    ok: u64,
    shed: u64,
    errors: u64,
    latencies: Vec<Duration>,
    took: Duration,
}

impl Load {
    async fn count(base: &str, clients: usize, count: usize) -> Load {
        let next = Arc::new(AtomicU64::new(0));
        Self::drive(base, clients, move || {
            next.fetch_add(1, Ordering::Relaxed) < count as u64
        })
        .await
    }

    async fn timed(base: &str, clients: usize, duration: Duration) -> Load {
        let end = Instant::now() + duration;
        Self::drive(base, clients, move || Instant::now() < end).await
    }

    async fn until(base: &str, clients: usize, stop: Arc<AtomicBool>) -> Load {
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
                        let body = serde_json::to_vec(&cart_json()).unwrap_or_default();
                        let sent = Instant::now();
                        let response = http
                            .post(&url)
                            .header("content-type", "application/json")
                            .body(body)
                            .send()
                            .await;
                        match response.map(|r| r.status().as_u16()) {
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

    fn check_ok(&self, what: &str) -> anyhow::Result<()> {
        if self.errors > 0 || self.shed > 0 {
            bail!("{what}: {} errors, {} shed", self.errors, self.shed);
        }
        Ok(())
    }
}

/// The `q` quantile of `samples`, in milliseconds.
fn percentile(samples: &[Duration], q: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted
        .get(((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1)))
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// Each durable publish's round trip, one at a time: what the broker costs a request.
async fn raw_round_trips(
    url: &str,
    address: &str,
    body: &Bytes,
    count: usize,
) -> anyhow::Result<Vec<Duration>> {
    let (mut connection, mut session) = super::open(url, "cartbus-bench-rtt").await?;
    let mut sender = fe2o3_amqp::Sender::builder()
        .name("cartbus-bench-rtt")
        .target(cartbus::queue::amqp::durable_target(address))
        .attach(&mut session)
        .await?;
    let mut samples = Vec::with_capacity(count);
    for n in 0..count {
        let sent = Instant::now();
        let outcome = sender.send(super::message(n, body)).await?;
        if !matches!(outcome, fe2o3_amqp::types::messaging::Outcome::Accepted(_)) {
            bail!("broker did not accept: {outcome:?}");
        }
        samples.push(sent.elapsed());
    }
    let _ = sender.detach().await;
    let _ = session.end().await;
    let _ = connection.close().await;
    Ok(samples)
}

fn cart_json() -> Value {
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

async fn count_orders(db: &Db) -> anyhow::Result<i64> {
    Ok(cartbus::on_db!(db, |pool| sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM orders"
    )
    .fetch_one(pool)
    .await)?)
}

async fn wait_for_dispatched(db: &Db, target: i64, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let sent: i64 = cartbus::on_db!(db, |pool| sqlx::query_scalar(
            "SELECT count(*) FROM order_dispatch WHERE process_status = 'processed'"
        )
        .fetch_one(pool)
        .await)?;
        if sent >= target {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the relay had sent {sent} of {target} orders after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_for_orders(db: &Db, target: i64, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while count_orders(db).await? < target {
        if Instant::now() > deadline {
            bail!("orders did not reach {target} in {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Raw durable append rate of the embedded queue's store: SQLite, WAL, synchronous FULL,
/// 256 rows of ~1 KB per transaction, no cartbus code.
async fn raw_sqlite_append(path: &Path, count: usize) -> anyhow::Result<f64> {
    use sqlx::ConnectOptions;
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
    let mut conn = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .connect()
        .await?;
    sqlx::query("CREATE TABLE m (id INTEGER PRIMARY KEY, message_id TEXT, body BLOB)")
        .execute(&mut conn)
        .await?;
    let body = vec![b'x'; 1024];
    let started = Instant::now();
    for chunk in (0..count).collect::<Vec<_>>().chunks(256) {
        let mut insert = sqlx::QueryBuilder::new("INSERT INTO m (message_id, body) ");
        insert.push_values(chunk, |mut row, n| {
            row.push_bind(n.to_string()).push_bind(&body);
        });
        insert.build().execute(&mut conn).await?;
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

/// The same order rows the consumer writes, `batch` per transaction, straight into a
/// fresh database of the same kind: the raw speed the drain is compared with.
async fn raw_batched_insert(
    env: &[(String, String)],
    data: &Path,
    count: usize,
    batch: usize,
) -> anyhow::Result<f64> {
    let db = scratch_db(env, data).await?;
    let carts: Vec<Cart> = (0..count)
        .map(|_| Cart::parse(&cart_json()).map_err(|e| anyhow::anyhow!("{e:?}")))
        .collect::<anyhow::Result<_>>()?;
    let hashes: Vec<String> = carts.iter().map(Cart::payload_hash).collect();
    let started = Instant::now();
    for (chunk, hashes) in carts.chunks(batch).zip(hashes.chunks(batch)) {
        let batch: Vec<(&Cart, &str)> = chunk
            .iter()
            .zip(hashes.iter().map(String::as_str))
            .collect();
        let mut tx = db.begin().await?;
        orders::place_many(&mut tx, &batch, Source::Queue).await?;
        tx.commit().await?;
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

/// One cart per transaction from `clients` tasks: the raw counterpart of direct writes.
async fn raw_single_inserts(
    env: &[(String, String)],
    data: &Path,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    let db = Arc::new(scratch_db(env, data).await?);
    let end = Instant::now() + duration;
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let db = db.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < end {
                    let cart = Cart::parse(&cart_json()).map_err(|e| anyhow::anyhow!("{e:?}"))?;
                    let mut tx = db.begin().await?;
                    orders::place(&mut tx, &cart, &cart.payload_hash(), Source::Direct).await?;
                    tx.commit().await?;
                    n += 1;
                }
                Ok::<_, anyhow::Error>(n)
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// An empty, migrated orders database of the same kind as `env` names.
async fn scratch_db(env: &[(String, String)], data: &Path) -> anyhow::Result<Db> {
    let postgres = env
        .iter()
        .find(|(k, _)| k == "DATABASE_URL")
        .map(|(_, v)| v.clone());
    let url = match postgres {
        Some(url) => {
            let (admin, _) = url.rsplit_once('/').context("database URL")?;
            fresh_postgres(&format!("{admin}/postgres")).await?
        }
        None => format!(
            "sqlite://{}",
            data.join(format!("scratch-{}.db", uuid::Uuid::new_v4().simple()))
                .display()
        ),
    };
    let config = Config::from_vars([
        ("DATABASE_URL", url.as_str()),
        ("CARTBUS_DATA_DIR", &data.display().to_string()),
    ])?;
    let db = Db::connect_lazy(&config)?;
    db.migrate().await?;
    Ok(db)
}

async fn fresh_postgres(admin_url: &str) -> anyhow::Result<String> {
    use sqlx::Connection;
    let name = format!("cartbus_bench_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(admin_url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await?;
    let (base, _) = admin_url.rsplit_once('/').context("database URL")?;
    Ok(format!("{base}/{name}"))
}
