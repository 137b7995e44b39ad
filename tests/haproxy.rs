//! The production front (issue 18): HAProxy from the shipped `deploy/haproxy/cartbus.cfg`
//! in front of a blue and a green slot of two instances each, on PostgreSQL and RabbitMQ
//! where the machine has them. Under continuous storefront load through HAProxy: a
//! rollback rehearsal, the slot swap of docs/runbook.md driven through HAProxy's runtime
//! API and the CLI, then rolling restarts — no request may fail and every accepted cart
//! becomes exactly one order. A negative control (no shutdown delay, no retries) shows
//! that the drill can fail.
//!
//! `CARTBUS_DRILL_RESTARTS` sets the rolling restarts (default 5, CI's figure).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::haproxy::{self, Haproxy, free_port};
use common::load::{Load, assert_ledger, orders_per_cart};
use common::{Backend, Process, Settings, broker, client, consumer_cli, eventually};
use serde_json::Value;

const TOKEN: &str = "haproxy-drill-admin-token-0123";
const BLUE: [&str; 2] = ["blue1", "blue2"];
const GREEN: [&str; 2] = ["green1", "green2"];

/// One instance behind HAProxy: its server name, fixed port and settings, so that it can
/// be stopped and started again at the same address.
struct Slot {
    server: &'static str,
    settings: Settings,
    failpoints: &'static str,
    process: Option<Process>,
}

impl Slot {
    fn new(server: &'static str, base: &Settings, version: &str, delay_seconds: u32) -> Slot {
        let settings = base
            .with("CARTBUS_INSTANCE", server)
            .set("CARTBUS_VERSION", version)
            .set("CARTBUS_LISTEN", format!("127.0.0.1:{}", free_port()))
            .set("CARTBUS_SHUTDOWN_DELAY_SECONDS", delay_seconds.to_string());
        Slot {
            server,
            settings,
            failpoints: "",
            process: None,
        }
    }

    fn address(&self) -> String {
        self.settings
            .vars
            .iter()
            .find(|(k, _)| k == "CARTBUS_LISTEN")
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }

    fn start(&mut self) {
        let env: Vec<(&str, &str)> = if self.failpoints.is_empty() {
            vec![]
        } else {
            vec![("FAILPOINTS", self.failpoints)]
        };
        self.process = Some(Process::start(&self.settings, &env));
    }

    /// SIGTERM, as systemd's stop does; asserts a clean exit (0).
    async fn stop(&mut self) {
        let Some(mut process) = self.process.take() else {
            return;
        };
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(process.pid()),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM");
        let exit = eventually(&format!("{} exits", self.server), || {
            let exited = process.child.try_wait().ok().flatten();
            async move { exited }
        })
        .await;
        assert_eq!(
            exit.code(),
            Some(0),
            "{} exit: {:?}",
            self.server,
            process.logs()
        );
    }
}

/// Orders on PostgreSQL and the queue on RabbitMQ where the machine has them (CI does),
/// else SQLite and the embedded queue; the admin token on every instance.
async fn topology(test: &str, dir: &Path) -> (Backend, Settings) {
    let backend = broker::orders_backend(test).await;
    let settings = match broker::url(test) {
        Some(url) => broker::settings(dir, &backend, &url, &broker::fresh_queue()),
        None => Settings::new(dir, &backend),
    };
    (backend, settings.set("CARTBUS_ADMIN_TOKEN", TOKEN))
}

fn servers(slots: &[&Slot]) -> Vec<(&'static str, String)> {
    slots
        .iter()
        .map(|slot| {
            let key = match slot.server {
                "blue1" => "CARTBUS_BLUE1",
                "blue2" => "CARTBUS_BLUE2",
                "green1" => "CARTBUS_GREEN1",
                _ => "CARTBUS_GREEN2",
            };
            (key, slot.address())
        })
        .collect()
}

/// `cartbus consumer ARGS` through HAProxy, as the runbook has operators do; asserts exit 0.
async fn cli(lb: &Haproxy, args: &[&str]) -> String {
    let (code, out, err) = consumer_cli(&lb.base, Some(TOKEN), args).await;
    assert_eq!(code, 0, "cartbus consumer {args:?}: {out}{err}");
    out
}

/// Starts the blue slot behind `lb`, waits until HAProxy sees it UP, and puts four
/// storefront clients on it; returns once orders are being made.
async fn serve_blue(lb: &Haproxy, blue: &mut [Slot], backend: &Backend, dir: &Path) -> Load {
    for slot in blue.iter_mut() {
        slot.start();
        lb.wait_status(slot.server, "UP").await;
    }
    let load = Load::start(std::slice::from_ref(&lb.base), 4);
    eventually("blue taking orders", || async {
        (orders_per_cart(backend, dir).await.len() > 20).then_some(())
    })
    .await;
    load
}

/// `cartbus consumer pause --wait 60` through HAProxy; how long until it answered drained.
async fn pause(lb: &Haproxy, reason: &str) -> Duration {
    let asked = Instant::now();
    cli(lb, &["pause", "--reason", reason, "--wait", "60"]).await;
    asked.elapsed()
}

/// Waits until `/v1/admin/consumer`, asked through HAProxy, shows every one of
/// `instances` in `state`.
async fn wait_states(lb: &Haproxy, instances: &[&str], state: &str) {
    eventually(&format!("{instances:?} {state}"), || async {
        let status: Value = client()
            .get(format!("{}/v1/admin/consumer", lb.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let all = status["instances"].as_array()?;
        instances
            .iter()
            .all(|name| {
                all.iter()
                    .any(|i| i["instance"] == *name && i["state"] == state)
            })
            .then_some(())
    })
    .await;
}

/// Moves traffic from `from` to `to` through the runtime API: `to` ready and seen UP by
/// HAProxy's own health checks first, then `from` drained (no new requests).
async fn move_traffic(lb: &Haproxy, from: &[&str], to: &[&str]) {
    for server in to {
        lb.set_state(server, "ready").await;
    }
    for server in to {
        lb.wait_status(server, "UP").await;
    }
    for server in from {
        lb.set_state(server, "drain").await;
    }
    let served: u64 = stot(lb, to).await;
    eventually("the new slot serving", || async {
        (stot(lb, to).await > served + 20).then_some(())
    })
    .await;
}

/// Requests HAProxy has sent to `servers` in all.
async fn stot(lb: &Haproxy, servers: &[&str]) -> u64 {
    let mut total = 0;
    for server in servers {
        total += lb.stat(server, "stot").await.parse::<u64>().unwrap_or(0);
    }
    total
}

/// Restarts `slot` as systemd would (SIGTERM, start) and waits until HAProxy sees it UP.
async fn restart(lb: &Haproxy, slot: &mut Slot) {
    slot.stop().await;
    slot.start();
    lb.wait_status(slot.server, "UP").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swap_rollback_and_rolling_restarts_through_haproxy_fail_no_request() {
    const TEST: &str = "swap_rollback_and_rolling_restarts_through_haproxy_fail_no_request";
    let Some(binary) = haproxy::binary(TEST) else {
        return;
    };
    let restarts: usize = std::env::var("CARTBUS_DRILL_RESTARTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(5);
    let dir = tempfile::tempdir().expect("tempdir");
    let (backend, base) = topology(TEST, dir.path()).await;
    let mut blue = BLUE.map(|server| Slot::new(server, &base, "1.0.0", 1));
    let mut green = GREEN.map(|server| Slot::new(server, &base, "2.0.0", 1));
    let all: Vec<&Slot> = blue.iter().chain(green.iter()).collect();
    let lb = Haproxy::start(&binary, dir.path(), &servers(&all), 3).await;
    let load = serve_blue(&lb, &mut blue, &backend, dir.path()).await;

    // Rollback rehearsal, before the resume: 2.0.0 (no migration) on green takes the
    // traffic, then it all goes back to blue and 1.0.0 resumes.
    let paused_in = pause(&lb, "rehearse 2.0.0").await;
    for slot in &mut green {
        slot.start();
    }
    move_traffic(&lb, &BLUE, &GREEN).await;
    move_traffic(&lb, &GREEN, &BLUE).await;
    for server in GREEN {
        lb.set_state(server, "maint").await;
    }
    cli(
        &lb,
        &["resume", "--version", "1.0.0", "--reason", "rolled back"],
    )
    .await;
    for slot in &mut green {
        slot.stop().await;
    }
    common::note(&format!(
        "haproxy drill, rollback (pause→drained {} ms): {}",
        paused_in.as_millis(),
        load.figures()
    ));

    // The swap: pause, 2.0.0 with a migration on green (blue fenced), traffic to green,
    // resume 2.0.0, blue stopped.
    let paused_in = pause(&lb, "deploy 2.0.0").await;
    for slot in &mut green {
        slot.failpoints = "newer-schema=return";
        slot.start();
    }
    wait_states(&lb, &BLUE, "fenced").await;
    move_traffic(&lb, &BLUE, &GREEN).await;
    cli(
        &lb,
        &["resume", "--version", "2.0.0", "--reason", "deploy 2.0.0"],
    )
    .await;
    wait_states(&lb, &GREEN, "running").await;
    for slot in &mut blue {
        lb.set_state(slot.server, "maint").await;
        slot.stop().await;
    }
    common::note(&format!(
        "haproxy drill, swap (pause→drained {} ms): {}",
        paused_in.as_millis(),
        load.figures()
    ));

    // Rolling restarts of the live slot, one instance at a time.
    let started = Instant::now();
    for i in 0..restarts {
        restart(&lb, &mut green[i % GREEN.len()]).await;
    }
    common::note(&format!(
        "haproxy drill, {restarts} rolling restarts in {} ms",
        started.elapsed().as_millis()
    ));

    let retried = lb.stat("BACKEND", "wretr").await;
    let tally = load.finish().await;
    common::note(&format!(
        "haproxy drill, whole: {} (HAProxy retried {retried})",
        tally.figures()
    ));
    assert!(
        tally.nothing_failed(),
        "every request answered 2xx: {}; {}\n{}",
        tally.figures(),
        tally.failures(),
        lb.log_tail(20)
    );
    assert!(
        tally.slowest < Duration::from_secs(5),
        "{}",
        tally.figures()
    );
    let ledger = assert_ledger(&backend, dir.path(), &tally.accepted, true).await;
    common::note(&format!("haproxy drill, {ledger}"));
}

/// The same restarts without what makes them safe — no shutdown delay, no retries — fail
/// requests: the drill above can fail, and the two settings are what it proves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_shutdown_delay_or_retries_restarts_fail_requests() {
    const TEST: &str = "without_shutdown_delay_or_retries_restarts_fail_requests";
    let Some(binary) = haproxy::binary(TEST) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (backend, base) = topology(TEST, dir.path()).await;
    let mut blue = BLUE.map(|server| Slot::new(server, &base, "1.0.0", 0));
    let all: Vec<&Slot> = blue.iter().collect();
    let lb = Haproxy::start(&binary, dir.path(), &servers(&all), 0).await;
    let load = serve_blue(&lb, &mut blue, &backend, dir.path()).await;
    for i in 0..4 {
        restart(&lb, &mut blue[i % BLUE.len()]).await;
    }
    let tally = load.finish().await;
    common::note(&format!(
        "haproxy negative control (delay 0, retries 0), 4 restarts: {}",
        tally.figures()
    ));
    assert!(
        !tally.nothing_failed(),
        "without delay and retries some request should fail: {}",
        tally.figures()
    );
    // Whatever failed, nothing accepted is lost or doubled.
    assert_ledger(&backend, dir.path(), &tally.accepted, false).await;
}
