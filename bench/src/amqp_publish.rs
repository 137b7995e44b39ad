//! `cartbus-bench amqp-publish` compares, on one fresh durable queue of a real broker:
//! - a plain fe2o3-amqp client sending durable ~1 KB messages one at a time,
//! - the same client with a window of unsettled sends (`send_batchable`),
//! - cartbus's own publisher (`AmqpQueue::send`) driven by concurrent callers, the way
//!   HTTP requests use it.
//!
//! It empties the queue afterwards.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cartbus::config::{Config, QueueConfig};
use cartbus::queue::{AmqpOptions, AmqpQueue, BrokerCounters, Message, Properties, Queue};

use crate::cli::AmqpPublishArgs;
use crate::raw_amqp::{drain, raw_publish};
use crate::report::{Row, print_rows, write_json};

pub async fn run(args: AmqpPublishArgs) -> anyhow::Result<()> {
    let AmqpPublishArgs {
        url,
        count,
        serial_count,
        window,
        callers,
        json,
    } = args;
    let queue = format!("cartbus-bench-{}", uuid::Uuid::new_v4().simple());
    let address = format!("/queue/{queue}");
    let body = Bytes::from(vec![b'x'; 1024]);
    let mut rows = Vec::new();

    let took = raw_publish(&url, &address, &body, serial_count, 1).await?;
    rows.push(Row::new("raw fe2o3, one at a time", serial_count, took));
    let took = raw_publish(&url, &address, &body, count, window).await?;
    rows.push(Row::new(format!("raw fe2o3, window {window}"), count, took));
    let took = cartbus_publish(&url, &address, &body, count, window, callers).await?;
    rows.push(Row::new(
        format!("cartbus publisher, window {window}, {callers} callers"),
        count,
        took,
    ));
    let total = serial_count + count * 2;
    let took = drain(&url, &address, total).await?;
    rows.push(Row::new(
        "raw fe2o3 consume + accept, credit 256",
        total,
        took,
    ));

    print_rows(&rows);
    write_json(&json, &rows)?;
    println!("\nwritten to {}", json.display());
    println!("(queue {queue} was emptied; delete it with `rabbitmqctl delete_queue {queue}`)");
    Ok(())
}

/// cartbus's own publisher, `count` messages from `callers` concurrent tasks.
async fn cartbus_publish(
    url: &str,
    address: &str,
    body: &Bytes,
    count: usize,
    window: usize,
    callers: usize,
) -> anyhow::Result<Duration> {
    let config = Config::from_vars([
        ("CARTBUS_QUEUE_URL", url),
        ("CARTBUS_CART_ADDRESS", address),
        ("CARTBUS_AMQP_WINDOW", &window.to_string()),
        (
            "CARTBUS_DATA_DIR",
            &std::env::temp_dir()
                .join("cartbus-bench")
                .display()
                .to_string(),
        ),
    ])?;
    let QueueConfig::Amqp(broker) = config.queue.backend.clone() else {
        anyhow::bail!("not a broker URL");
    };
    let db = cartbus::store::Db::connect_lazy(&config)?;
    let queue = Arc::new(AmqpQueue::start(
        AmqpOptions {
            broker,
            instance: "bench".into(),
            cart_address: address.to_string(),
            publisher: "publisher",
            nodes: Default::default(),
            send_timeout: Duration::from_secs(5),
            counters: BrokerCounters::default(),
        },
        Arc::new(db),
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !queue.is_healthy() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "cartbus publisher did not connect"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for caller in 0..callers {
        let queue = queue.clone();
        let body = body.clone();
        let address = address.to_string();
        tasks.push(tokio::spawn(async move {
            let mut n = caller;
            while n < count {
                let message = Message {
                    message_id: format!("cartbus-{n}"),
                    content_type: "application/json".into(),
                    properties: Properties::new(),
                    body: body.clone(),
                    ..Default::default()
                };
                queue.send(&address, message).await?;
                n += callers;
            }
            Ok::<_, cartbus::queue::QueueError>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let took = started.elapsed();
    queue.shutdown().await;
    Ok(took)
}
