//! Several broker nodes in `CARTBUS_QUEUE_URL` (issue 18): every connection finds a node
//! that answers, and the admin API, the metrics and the log say which. Against the test
//! broker, with nodes that are not there in front of it; tests/cluster.rs does the same
//! with a real three-node cluster and kills its nodes.

mod common;

use common::{Backend, TestApp, broker, metrics_text};

const TOKEN: &str = "broker-nodes-admin-token-0123";

/// A port on 127.0.0.1 where nothing listens (bound, read, released).
fn dead_port() -> u16 {
    common::haproxy::free_port()
}

#[tokio::test]
async fn connections_skip_dead_nodes_and_say_which_node_they_are_on() {
    let Some(url) = broker::url("connections_skip_dead_nodes_and_say_which_node_they_are_on")
    else {
        return;
    };
    let live = url::Url::parse(&url).expect("test broker URL");
    let live_node = format!(
        "amqp://{}:{}",
        live.host_str().unwrap_or("127.0.0.1"),
        live.port().unwrap_or(5672)
    );
    // Two dead nodes first (the live broker's host, ports where nothing listens): the
    // publisher tries them in order, the receivers from their own starting points; every
    // one must end up on the live node, given last and bare (host:port).
    let (dead_a, dead_b) = (dead_port(), dead_port());
    let mut first = live.clone();
    first.set_port(Some(dead_a)).expect("a port");
    let host = live.host_str().unwrap_or("127.0.0.1");
    let nodes = format!(
        "{},{host}:{dead_b},{host}:{}",
        first.as_str().trim_end_matches('/'),
        live.port().unwrap_or(5672)
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = broker::fresh_queue();
    let app = TestApp::spawn(
        &broker::settings(dir.path(), &Backend::Sqlite, &nodes, &queue)
            .set("CARTBUS_ADMIN_TOKEN", TOKEN)
            .set("CARTBUS_CONSUMERS", "2"),
    )
    .await;
    broker::wait_connected(&app.state).await;

    let status = common::eventually("publisher and both receivers connected", || async {
        let (_, status) = common::admin_call(
            &app.client,
            &app.base,
            TOKEN,
            reqwest::Method::GET,
            "/v1/admin/consumer",
            None,
        )
        .await;
        let receivers = status["broker_connections"]
            .as_array()?
            .iter()
            .filter(|c| {
                c["connection"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("receiver"))
            })
            .count();
        (receivers >= 2).then_some(status)
    })
    .await;
    let connections = status["broker_connections"].as_array().expect("a list");
    assert!(
        connections.iter().all(|c| c["node"] == live_node.as_str()),
        "every connection on {live_node}: {connections:?}"
    );
    assert!(
        connections
            .iter()
            .any(|c| c["connection"] == "publisher" && c["since"].is_string()),
        "{connections:?}"
    );
    assert!(
        !status.to_string().contains("guest"),
        "no credentials in the status: {status}"
    );

    let metrics = metrics_text(&app.client, &app.base).await;
    let sample = format!(
        "cartbus_broker_connection_info{{connection=\"publisher\",node=\"{live_node}\"}} 1"
    );
    assert!(metrics.contains(&sample), "{sample} in\n{metrics}");
    assert!(!metrics.contains(&format!(":{dead_a}\"")), "{metrics}");

    // And a cart still goes through the queue to its order.
    let cart = common::cart();
    let response = app.post_cart(&cart).await;
    assert_eq!(response.status().as_u16(), 202);
    app.wait_for_order(cart["cart_id"].as_str().unwrap_or_default())
        .await;
    app.stop().await.expect("clean stop");
    broker::delete(&queue);
}
