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

use std::time::{Duration, Instant};

use common::cluster::{self, Cluster, NODE_DEADLINE, all_members_online, node_of_port};
use common::load::{Load, assert_ledger};
use common::{Backend, Process, broker, client, eventually};
use serde_json::Value;

const TOKEN: &str = "cluster-drill-admin-token-0123";
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
    let settings = cluster::settings(dir.path(), &backend, &tag).set("CARTBUS_ADMIN_TOKEN", TOKEN);
    cluster::declare_queues(&settings, &tag).await;

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
