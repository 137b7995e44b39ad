//! The phases of `cartbus-bench run`: intake, drain, mixed, pause → drained, direct
//! write and shedding on either stack, and the memory figure on the embedded one.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cartbus::domain::Cart;
use cartbus::queue::embedded::EmbeddedOptions;
use cartbus::queue::{EmbeddedQueue, Queue};
use serde_json::json;

use crate::cli::RunArgs;
use crate::cpu::{CpuClock, CpuUse, on_service_core};
use crate::databases::{count_orders, count_sent, unsend, wait_for_dispatched, wait_for_orders};
use crate::load::{Load, cart_json, percentile};
use crate::open_loop::sustain;
use crate::raw_db::{raw_batched_insert, raw_single_inserts};
use crate::receiver::Receiver;
use crate::report::Table;
use crate::service::{Service, admin};

/// Carts of the light-load latency run.
const LIGHT_CARTS: usize = 2_000;

/// The phases both stacks share, against a cartbus configured by `env`; returns the
/// intake p99 at 4 clients.
#[allow(clippy::too_many_arguments)]
pub async fn shared_phases(
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
    let receiver = match args.webhooks {
        true => Some(Receiver::start().await?),
        false => None,
    };
    let mut with_hooks = env.to_vec();
    with_hooks.extend(receiver.iter().flat_map(Receiver::env));
    let service = Service::start(binary, &with_hooks, &[("CARTBUS_CONSUMER_BATCH", &batch)])?;
    service.wait_ready().await?;
    let idle = service.rss_kib();
    let db = service.db(env)?;
    admin(&service.base, "pause", json!({ "wait_seconds": 30 })).await?;

    // Intake: the backlog, queued with the consumer paused.
    let cpu = CpuClock::start(service.pid());
    let load = Load::count(&service.base, args.clients, args.backlog).await;
    let intake_cpu = cpu.read();
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
    let light = Load::count(&service.base, 4, LIGHT_CARTS).await;
    light.check_ok("light intake")?;
    let light_p99 = percentile(&light.latencies, 0.99);
    table.add("intake latency p99, 4 clients", light_p99, "ms", None, "");
    table.add("intake latency p50", p50, "ms", None, "");
    table.add("intake latency p99", p99, "ms", None, "");
    table.add("intake latency p99.9", p999, "ms", None, "");
    cpu_row(table, "intake", &intake_cpu);

    // Drain: resume and time the backlog into orders, and (hand-off on) until every one
    // of them has reached its partner.
    let backlog = (load.ok + light.ok) as i64;
    let before = count_orders(&db).await?;
    let sent_before = count_sent(&db).await?;
    let started = Instant::now();
    let cpu = CpuClock::start(service.pid());
    admin(&service.base, "resume", json!({})).await?;
    let target = before + backlog;
    wait_for_orders(&db, target, Duration::from_secs(600)).await?;
    let ordered = started.elapsed();
    let drain = backlog as f64 / ordered.as_secs_f64();
    let handed = if args.hand_off {
        wait_for_dispatched(&db, sent_before + backlog, Duration::from_secs(600)).await?;
        Some(started.elapsed())
    } else {
        None
    };
    let delivered = match &receiver {
        // Every order's checkout.ordered event, and its sent_to_partner with the hand-off.
        Some(receiver) => {
            let events = backlog as u64 * if args.hand_off { 2 } else { 1 };
            Some(wait_for_events(receiver, events, Duration::from_secs(600)).await?)
        }
        None => None,
    };
    let last_event = started.elapsed();
    let drain_cpu = cpu.read();
    let raw_drain = on_service_core(raw_batched_insert(
        env,
        data,
        args.backlog.min(50_000),
        args.batch,
    ))
    .await??;
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
        if args.hand_off {
            "orders written; see end-to-end"
        } else {
            "target ≥ 1.2"
        },
    );
    cpu_row(table, "drain", &drain_cpu);
    if let Some(handed) = handed {
        let end_to_end = backlog as f64 / handed.as_secs_f64();
        table.add(
            "end-to-end drain (→ sent to partner) vs intake",
            end_to_end,
            "ord/s",
            Some(rate),
            "backlog → orders → every order sent; target ≥ 1.2",
        );
        table.add(
            "hand-off vs drain",
            end_to_end,
            "ord/s",
            Some(drain),
            "same start; 1.00 = the last order sent as the last was written; target ≥ 1.0",
        );
        table.add(
            "hand-off lag after the last order",
            (handed - ordered).as_secs_f64() * 1000.0,
            "ms",
            None,
            "",
        );
        relay_alone(&service, &db, backlog as usize, drain, table).await?;
    }
    if let (Some(events), Some(receiver)) = (delivered, &receiver) {
        let (_, calls, refused) = receiver.counts();
        table.add(
            "webhooks: events delivered",
            events as f64 / last_event.as_secs_f64(),
            "evt/s",
            None,
            format!("{events} events, {calls} calls, {refused} refused; verified by the receiver"),
        );
        table.add(
            "webhooks: every event delivered vs drain",
            backlog as f64 / last_event.as_secs_f64(),
            "ord/s",
            Some(drain),
            "same start; 1.00 = the last event delivered as the last order was written; target ≥ 1.0",
        );
        table.add(
            "webhooks: lag after the last order",
            (last_event - ordered).as_secs_f64() * 1000.0,
            "ms",
            None,
            "",
        );
    }

    // Mixed: a backlog and intake at once; the backlog must shrink.
    admin(&service.base, "pause", json!({ "wait_seconds": 30 })).await?;
    let seed = Load::count(&service.base, args.clients, args.backlog / 2).await;
    seed.check_ok("mixed seed")?;
    let accepted_before = count_orders(&db).await? + seed.ok as i64;
    admin(&service.base, "resume", json!({})).await?;
    let orders_at_start = count_orders(&db).await?;
    let sent_at_start = count_sent(&db).await?;
    let mixed = Load::timed(
        &service.base,
        args.clients / 2,
        Duration::from_secs(args.seconds),
    )
    .await;
    let orders_at_end = count_orders(&db).await?;
    let sent_at_end = count_sent(&db).await?;
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
    if args.hand_off {
        let (outbox_start, outbox_end) =
            (orders_at_start - sent_at_start, orders_at_end - sent_at_end);
        table.add(
            "mixed: hand-off",
            (sent_at_end - sent_at_start) as f64 / mixed.took.as_secs_f64(),
            "ord/s",
            None,
            format!("outbox {outbox_start} → {outbox_end}"),
        );
    }

    // Sustained capacity: open loop at fixed rates, once the mixed phase is worked off.
    let accepted = accepted_before + mixed.ok as i64;
    wait_for_orders(&db, accepted, Duration::from_secs(600)).await?;
    if args.hand_off {
        wait_for_dispatched(&db, accepted, Duration::from_secs(600)).await?;
    }
    if args.sustain_seconds > 0 {
        sustained_capacity(args, &service, &db, rate, table).await?;
    }

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
    let raw_direct = on_service_core(raw_single_inserts(
        env,
        data,
        args.clients,
        Duration::from_secs(args.seconds),
    ))
    .await??;
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

/// The polling relay on its own: sent orders set pending again (as a crash or an outage
/// leaves them) while paused, then timed from resume until all are sent again.
async fn relay_alone(
    service: &Service,
    db: &cartbus::store::Db,
    count: usize,
    drain: f64,
    table: &mut Table,
) -> anyhow::Result<()> {
    admin(&service.base, "pause", json!({ "wait_seconds": 30 })).await?;
    let sent = count_sent(db).await?;
    let unsent = unsend(db, count).await?;
    let started = Instant::now();
    admin(&service.base, "resume", json!({})).await?;
    wait_for_dispatched(db, sent, Duration::from_secs(600)).await?;
    table.add(
        "relay alone: outbox backlog → sent",
        unsent as f64 / started.elapsed().as_secs_f64(),
        "ord/s",
        Some(drain),
        "what a crash or outage leaves, vs drain; target ≥ 1.0",
    );
    Ok(())
}

/// The highest fixed arrival rate at which, for `--sustain-seconds`, both the cart
/// backlog and the outbox stay bounded: a bisection between 20 % and 100 % of the intake
/// maximum, `--sustain-steps` runs, each printed.
async fn sustained_capacity(
    args: &RunArgs,
    service: &Service,
    db: &cartbus::store::Db,
    intake_max: f64,
    table: &mut Table,
) -> anyhow::Result<()> {
    let seconds = Duration::from_secs(args.sustain_seconds);
    let (mut low, mut high) = (0.2_f64, 1.0_f64);
    let mut best: Option<crate::open_loop::Sustained> = None;
    for _ in 0..args.sustain_steps {
        let fraction = (low + high) / 2.0;
        let cpu = CpuClock::start(service.pid());
        let run = sustain(&service.base, db, intake_max * fraction, seconds).await?;
        let cpu = cpu.read();
        println!(
            "    open loop {:>7.0}/s ({:>3.0} %) for {} s: {} accepted, backlog {} → {}, outbox {} → {}, p99 {:.1} ms from intended send, {} failed: {}; CPU cartbus {:.0} %, load generator {:.0} %, machine busy {:.0} of {} %",
            run.rate,
            fraction * 100.0,
            args.sustain_seconds,
            run.accepted,
            run.backlog.0,
            run.backlog.1,
            run.outbox.0,
            run.outbox.1,
            run.p99_ms,
            run.failed,
            if run.bounded() { "bounded" } else { "GROWS" },
            cpu.service,
            cpu.load,
            cpu.machine,
            crate::cpu::machine_cores() * 100
        );
        // Work off what is left before the next rate (counted from the end's sample: a
        // fresh count would include orders made since, and wait for carts never sent).
        let orders = run.orders_at_end + run.backlog.1.max(0);
        wait_for_orders(db, orders, Duration::from_secs(600)).await?;
        if args.hand_off {
            wait_for_dispatched(db, count_orders(db).await?, Duration::from_secs(600)).await?;
        }
        if run.bounded() {
            low = fraction;
            best = Some(run);
        } else {
            high = fraction;
        }
    }
    match best {
        Some(run) => table.add(
            "sustained capacity (open loop, bounded)",
            run.rate,
            "req/s",
            Some(intake_max),
            format!(
                "{} s at a fixed rate, p99 {:.1} ms; vs intake max; target ≥ 0.5",
                args.sustain_seconds, run.p99_ms
            ),
        ),
        None => table.add(
            "sustained capacity (open loop, bounded)",
            0.0,
            "req/s",
            Some(intake_max),
            format!("not bounded even at {:.0} %", high * 100.0),
        ),
    }
    Ok(())
}

/// RSS with a large backlog waiting while the consumer drains it.
pub async fn memory_with_backlog(
    args: &RunArgs,
    binary: &Path,
    table: &mut Table,
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
                            cartbus::domain::cart_message::encode(&cart, chrono::Utc::now()),
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

/// The CPU of a phase: cartbus's, the load generator's own (this process) and the whole
/// machine's, in percent of one core (200 = both of two cores).
fn cpu_row(table: &mut Table, phase: &str, cpu: &CpuUse) {
    table.add(
        &format!("CPU, {phase}: cartbus"),
        cpu.service,
        "% core",
        None,
        format!(
            "load generator {:.0} % core; machine busy {:.0} of {} %",
            cpu.load,
            cpu.machine,
            crate::cpu::machine_cores() * 100
        ),
    );
}

/// Waits until `receiver` has taken `events` distinct events; how many it has.
async fn wait_for_events(
    receiver: &Receiver,
    events: u64,
    deadline: Duration,
) -> anyhow::Result<u64> {
    let started = Instant::now();
    loop {
        let (taken, _, refused) = receiver.counts();
        if refused > 0 {
            anyhow::bail!("the webhook receiver refused {refused} calls: bad signatures");
        }
        if taken >= events {
            return Ok(taken);
        }
        if started.elapsed() > deadline {
            anyhow::bail!("only {taken} of {events} webhook events after {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
