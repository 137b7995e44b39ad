//! A three-node RabbitMQ cluster under cartbus (issue 18), started beside the system node
//! by `tests/cluster/rabbitmq-cluster.sh` and removed at the end: quorum queues declared
//! by `cartbus broker setup`, two instances under storefront load, then
//! - kill -9 of the node a connection is on, `CARTBUS_CLUSTER_KILLS` times (default 20),
//!   each node in turn: every connection moves to a live node;
//! - one node stopped: nothing fails, checkouts keep queuing;
//! - two nodes stopped (no majority): checkouts are written directly, then queue again
//!   once the nodes are back.
//!
//! Through it all no request fails, none takes 2 s, every accepted cart is exactly one
//! order and every order is handed off to its partner.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::load::{Load, assert_ledger};
use common::{Backend, Process, Settings, broker, client, eventually, services_required, skipped};
use serde_json::Value;

const TOKEN: &str = "cluster-drill-admin-token-0123";
const NODES: [(&str, u16); 3] = [("ra", 5681), ("rb", 5682), ("rc", 5683)];
/// Stopping or starting a node and its quorum members catching up take longer than the
/// usual "soon".
const NODE_DEADLINE: Duration = Duration::from_secs(90);

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/cluster/rabbitmq-cluster.sh")
}

/// The cluster, removed (nodes stopped, data deleted) when dropped.
struct Cluster;

impl Cluster {
    /// Starts the cluster, or `None` (skipped, said loudly) where it cannot run: it needs
    /// `rabbitmq-server` and root (the nodes run as the `rabbitmq` user).
    fn start(test: &str) -> Option<Cluster> {
        let can = Command::new("sh")
            .args(["-c", "command -v rabbitmq-server && [ \"$(id -u)\" = 0 ]"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !can {
            assert!(
                !services_required(),
                "CARTBUS_REQUIRE_SERVICES=1 but the cluster test cannot start RabbitMQ nodes (needs rabbitmq-server and root)"
            );
            skipped(
                test,
                "needs rabbitmq-server and root to run a three-node cluster",
            );
            return None;
        }
        run_script(&["start"]);
        Some(Cluster)
    }

    fn kill(&self, node: &str) {
        run_script(&["kill", node]);
    }

    fn stop(&self, node: &str) {
        run_script(&["stop", node]);
    }

    fn up(&self, node: &str) {
        run_script(&["up", node]);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("remove").output();
    }
}

fn run_script(args: &[&str]) {
    let output = Command::new(script())
        .args(args)
        .output()
        .expect("run rabbitmq-cluster.sh");
    assert!(
        output.status.success(),
        "rabbitmq-cluster.sh {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn node_of_port(port: u16) -> &'static str {
    NODES
        .iter()
        .find(|(_, p)| *p == port)
        .map(|(n, _)| *n)
        .unwrap_or("?")
}

/// The management API of every node, tried in turn.
async fn management(path: &str) -> Option<Value> {
    for (_, port) in NODES {
        let answer = client()
            .get(format!("http://127.0.0.1:{}/api/{path}", port + 10_000))
            .basic_auth("guest", Some("guest"))
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        if let Ok(response) = answer
            && response.status().is_success()
            && let Ok(value) = response.json().await
        {
            return Some(value);
        }
    }
    None
}

/// Waits until every member of `queue` is online again (a kill before that could take
/// the majority).
async fn all_members_online(queue: &str) {
    let started = Instant::now();
    loop {
        if let Some(info) = management(&format!("queues/%2F/{queue}")).await
            && info["online"].as_array().map(Vec::len) == Some(3)
        {
            return;
        }
        assert!(
            started.elapsed() < NODE_DEADLINE,
            "{queue}'s members never all came back online"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Every broker connection of the instance at `base`, `(name, port)`.
async fn connections(base: &str) -> Vec<(String, u16)> {
    let Ok(response) = client()
        .get(format!("{base}/v1/admin/consumer"))
        .bearer_auth(TOKEN)
        .send()
        .await
    else {
        return Vec::new();
    };
    let status: Value = response.json().await.unwrap_or(Value::Null);
    status["broker_connections"]
        .as_array()
        .map(|all| {
            all.iter()
                .filter_map(|c| {
                    let port = c["node"].as_str()?.rsplit(':').next()?.parse().ok()?;
                    Some((c["connection"].as_str()?.to_string(), port))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until both instances have all `expected` connections and none on `port`;
/// returns how long that took.
async fn moved_off(bases: &[String], port: u16, expected: usize) -> Duration {
    let started = Instant::now();
    loop {
        let mut all = Vec::new();
        for base in bases {
            all.push(connections(base).await);
        }
        if all
            .iter()
            .all(|c| c.len() == expected && c.iter().all(|(_, p)| *p != port))
        {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < NODE_DEADLINE,
            "connections never left {}: {all:?}",
            node_of_port(port)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_loses_nodes_under_load_and_the_storefront_never_notices() {
    const TEST: &str = "a_cluster_loses_nodes_under_load_and_the_storefront_never_notices";
    let Some(cluster) = Cluster::start(TEST) else {
        return;
    };
    let kills: usize = std::env::var("CARTBUS_CLUSTER_KILLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20);
    let backend = broker::orders_backend(TEST).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let tag = broker::fresh_queue();
    let carts = format!("{tag}-carts");
    let settings = Settings::new(dir.path(), &backend)
        .set(
            "CARTBUS_QUEUE_URL",
            "amqp://guest:guest@127.0.0.1:5681,127.0.0.1:5682,127.0.0.1:5683",
        )
        .set(
            "CARTBUS_BROKER_MANAGEMENT_URL",
            "http://guest:guest@127.0.0.1:15681,127.0.0.1:15682,127.0.0.1:15683",
        )
        .set("CARTBUS_AMQP_QUEUE_TYPE", "quorum")
        .set("CARTBUS_CART_ADDRESS", format!("/amq/queue/{carts}"))
        .set("CARTBUS_ROUTES", "*=acme")
        .set(
            "CARTBUS_PARTNER_ACME_ADDRESS",
            format!("/amq/queue/{tag}-acme"),
        )
        .set("CARTBUS_STATUS_ADDRESS", format!("/amq/queue/{tag}-status"))
        .set("CARTBUS_AUDIT_ADDRESS", format!("/amq/queue/{tag}-audit"))
        .set("CARTBUS_ADMIN_TOKEN", TOKEN);
    let setup = Command::new(env!("CARGO_BIN_EXE_cartbus"))
        .args(["broker", "setup"])
        .env_clear()
        .envs(settings.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("run cartbus broker setup");
    assert!(
        setup.status.success(),
        "{}{}",
        String::from_utf8_lossy(&setup.stdout),
        String::from_utf8_lossy(&setup.stderr)
    );
    all_members_online(&carts).await;

    let instances: Vec<Process> = ["a", "b"]
        .iter()
        .map(|name| Process::start(&settings.with("CARTBUS_INSTANCE", *name), &[]))
        .collect();
    let bases: Vec<String> = instances.iter().map(|p| p.base.clone()).collect();
    // Per instance: the publisher, the hand-off's publisher and the two consumers'
    // receivers (no partner secret is set, so no reader of status replies).
    const CONNECTIONS: usize = 4;
    // Every connection up (port 0: none is on a lost node yet).
    moved_off(&bases, 0, CONNECTIONS).await;
    let load = Load::start(&bases, 4);

    // 1. kill -9 the node one connection is on, each connection and instance in turn.
    let mut slowest_move = Duration::ZERO;
    for i in 0..kills {
        let on = connections(&bases[i % 2]).await;
        let (connection, port) = on[(i / 2) % on.len()].clone();
        let node = node_of_port(port);
        cluster.kill(node);
        let moved = moved_off(&bases, port, CONNECTIONS).await;
        slowest_move = slowest_move.max(moved);
        common::note(&format!(
            "cluster kill {}/{kills}: {node} (under {connection}); every connection off it in {} ms; {}",
            i + 1,
            moved.as_millis(),
            load.figures()
        ));
        cluster.up(node);
        all_members_online(&carts).await;
    }

    // 2. One node stopped cleanly: checkouts keep queuing.
    let (queued_before, _) = load.outcomes();
    cluster.stop("rc");
    moved_off(&bases, 5683, CONNECTIONS).await;
    eventually("checkouts queued with rc stopped", || async {
        (load.outcomes().0 > queued_before + 50).then_some(())
    })
    .await;
    cluster.up("rc");
    all_members_online(&carts).await;
    common::note(&format!("cluster, one node stopped: {}", load.figures()));

    // 3. Two nodes stopped: no majority, so checkouts are written directly; then back.
    let (_, direct_before) = load.outcomes();
    cluster.stop("rb");
    cluster.stop("rc");
    eventually("direct writes without a majority", || async {
        (load.outcomes().1 > direct_before + 50).then_some(())
    })
    .await;
    let lost = Instant::now();
    cluster.up("rb");
    cluster.up("rc");
    all_members_online(&carts).await;
    let (queued_back, _) = load.outcomes();
    let started = Instant::now();
    while load.outcomes().0 < queued_back + 50 {
        assert!(
            started.elapsed() < NODE_DEADLINE,
            "checkouts never queued again: {}",
            load.figures()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    common::note(&format!(
        "cluster, majority lost for {} ms and back: {}",
        lost.elapsed().as_millis(),
        load.figures()
    ));

    let tally = load.finish().await;
    common::note(&format!(
        "cluster drill, whole: {kills} kills (slowest move off a killed node {} ms); {}",
        slowest_move.as_millis(),
        tally.figures()
    ));
    assert!(
        tally.nothing_failed(),
        "{}: {}",
        tally.figures(),
        tally.failures()
    );
    assert!(
        tally.slowest < Duration::from_secs(2),
        "no checkout over 2 s: {}",
        tally.figures()
    );
    let ledger = assert_ledger(&backend, dir.path(), &tally.accepted, true).await;
    let handed_off = handed_off(&backend, dir.path(), tally.accepted.len()).await;
    common::note(&format!("cluster drill, {ledger}; {handed_off}"));
    drop(instances);
    drop(cluster);
}

/// Waits until every order's hand-off is `processed` (sent to the partner).
async fn handed_off(backend: &Backend, dir: &std::path::Path, orders: usize) -> String {
    const SQL: &str = "SELECT (SELECT COUNT(*) FROM orders),
            (SELECT COUNT(*) FROM order_dispatch WHERE process_status = 'processed')";
    let started = Instant::now();
    loop {
        let rows: Vec<(i64, i64)> = common::orders_db_rows(backend, dir, SQL).await;
        let (all, sent) = rows.first().copied().unwrap_or_default();
        if all == orders as i64 && sent == all {
            return format!("{sent} of {all} orders handed off to the partner");
        }
        assert!(
            started.elapsed() < NODE_DEADLINE,
            "{sent} of {all} orders handed off"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
