//! cartbus-bench: measures cartbus against the raw speed of its parts, side by side in one
//! run, and prints a table (and writes it as JSON).
//!
//! `cartbus-bench amqp-publish` compares, on one fresh durable queue of a real broker:
//! - a plain fe2o3-amqp client sending durable ~1 KB messages one at a time,
//! - the same client with a window of unsettled sends (`send_batchable`),
//! - cartbus's own publisher (`AmqpQueue::send`) driven by concurrent callers, the way
//!   HTTP requests use it.
//!
//! It empties the queue afterwards.

mod run;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use cartbus::config::{Config, QueueConfig};
use cartbus::queue::amqp::{durable_source, durable_target, to_amqp};
use cartbus::queue::{AmqpOptions, AmqpQueue, BrokerCounters, Message, Properties, Queue};
use clap::{Parser, Subcommand};
use fe2o3_amqp::link::receiver::CreditMode;
use fe2o3_amqp::types::messaging::{Body, Data, Message as AmqpMessage, Outcome};
use fe2o3_amqp::types::primitives::Value;
use fe2o3_amqp::{Connection, Receiver, Sender, Session};
use futures::stream::{FuturesUnordered, StreamExt};
use serde::Serialize;

#[derive(Parser)]
#[command(
    name = "cartbus-bench",
    about = "cartbus against the raw speed of its parts"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The whole table: raw parts vs cartbus, embedded and PostgreSQL + RabbitMQ.
    Run(run::RunArgs),
    /// Raw fe2o3-amqp publishing (one at a time and windowed) vs cartbus's publisher.
    AmqpPublish {
        /// Broker URL (amqp://user:pass@host:port).
        #[arg(
            long,
            env = "CARTBUS_QUEUE_URL",
            default_value = "amqp://guest:guest@127.0.0.1:5672"
        )]
        url: String,
        /// Messages per windowed run.
        #[arg(long, default_value_t = 20_000)]
        count: usize,
        /// Messages for the one-at-a-time run (it is slow).
        #[arg(long, default_value_t = 2_000)]
        serial_count: usize,
        /// Unsettled sends in flight for the windowed runs.
        #[arg(long, default_value_t = 256)]
        window: usize,
        /// Concurrent callers of cartbus's publisher (like HTTP requests).
        #[arg(long, default_value_t = 64)]
        callers: usize,
        /// Where to write the table as JSON.
        #[arg(long, default_value = "bench-results/amqp-publish.json")]
        json: PathBuf,
    },
}

#[derive(Serialize)]
struct Row {
    what: String,
    messages: usize,
    seconds: f64,
    per_second: f64,
}

impl Row {
    fn new(what: impl Into<String>, messages: usize, took: Duration) -> Row {
        let seconds = took.as_secs_f64();
        Row {
            what: what.into(),
            messages,
            seconds,
            per_second: messages as f64 / seconds.max(1e-9),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run(args) => run::run(args).await?,
        Command::AmqpPublish {
            url,
            count,
            serial_count,
            window,
            callers,
            json,
        } => {
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

            print_table(&rows);
            if let Some(dir) = json.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&json, serde_json::to_vec_pretty(&rows)?)?;
            println!("\nwritten to {}", json.display());
            println!(
                "(queue {queue} was emptied; delete it with `rabbitmqctl delete_queue {queue}`)"
            );
        }
    }
    Ok(())
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<52} {:>9} {:>9} {:>11}",
        "", "messages", "seconds", "msg/s"
    );
    for row in rows {
        println!(
            "{:<52} {:>9} {:>9.2} {:>11.0}",
            row.what, row.messages, row.seconds, row.per_second
        );
    }
    if let (Some(serial), Some(windowed)) = (rows.first(), rows.get(1)) {
        println!(
            "\nwindowed / one-at-a-time: {:.1}x",
            windowed.per_second / serial.per_second.max(1e-9)
        );
    }
    if let (Some(raw), Some(ours)) = (rows.get(1), rows.get(2)) {
        println!(
            "cartbus publisher / raw windowed: {:.2}",
            ours.per_second / raw.per_second.max(1e-9)
        );
    }
}

async fn open(
    url: &str,
    name: &str,
) -> anyhow::Result<(
    fe2o3_amqp::connection::ConnectionHandle<()>,
    fe2o3_amqp::session::SessionHandle<()>,
)> {
    // TCP_NODELAY matters (AMQP-NOTES.md): connect the socket ourselves.
    let parsed = url::Url::parse(url).context("broker URL")?;
    let host = parsed.host_str().unwrap_or("127.0.0.1").to_string();
    let port = parsed.port().unwrap_or(5672);
    let stream = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
    stream.set_nodelay(true)?;
    let mut connection = Connection::builder()
        .container_id(name)
        .hostname(host.as_str())
        .sasl_profile(fe2o3_amqp::sasl_profile::SaslProfile::Plain {
            username: parsed.username().to_string(),
            password: parsed.password().unwrap_or_default().to_string(),
        })
        .open_with_stream(stream)
        .await?;
    let session = Session::begin(&mut connection).await?;
    Ok((connection, session))
}

/// A durable ~1 KB cart-like message, in cartbus's own wire format.
fn message(n: usize, body: &Bytes) -> AmqpMessage<Data> {
    to_amqp(Message {
        message_id: format!("bench-{n}"),
        content_type: "application/json".into(),
        properties: Properties::new(),
        body: body.clone(),
        ..Default::default()
    })
}

async fn raw_publish(
    url: &str,
    address: &str,
    body: &Bytes,
    count: usize,
    window: usize,
) -> anyhow::Result<Duration> {
    let (mut connection, mut session) = open(url, "cartbus-bench-raw").await?;
    let mut sender = Sender::builder()
        .name("cartbus-bench-raw")
        .target(durable_target(address))
        .attach(&mut session)
        .await?;
    let started = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    for n in 0..count {
        if in_flight.len() >= window
            && let Some(outcome) = in_flight.next().await
        {
            accepted(outcome)?;
        }
        in_flight.push(sender.send_batchable(message(n, body)).await?);
    }
    while let Some(outcome) = in_flight.next().await {
        accepted(outcome)?;
    }
    let took = started.elapsed();
    let _ = sender.detach().await;
    let _ = session.end().await;
    let _ = connection.close().await;
    Ok(took)
}

fn accepted(outcome: Result<Outcome, fe2o3_amqp::link::SendError>) -> anyhow::Result<()> {
    match outcome? {
        Outcome::Accepted(_) => Ok(()),
        other => anyhow::bail!("broker did not accept: {other:?}"),
    }
}

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
    let QueueConfig::Amqp(broker) = config.queue.clone() else {
        anyhow::bail!("not a broker URL");
    };
    let db = cartbus::db::Db::connect_lazy(&config)?;
    let queue = Arc::new(AmqpQueue::start(
        AmqpOptions {
            broker,
            instance: "bench".into(),
            cart_address: address.to_string(),
            send_timeout: Duration::from_secs(5),
            counters: BrokerCounters::default(),
        },
        db,
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

/// Consumes and accepts `count` messages, which also leaves the queue empty.
async fn drain(url: &str, address: &str, count: usize) -> anyhow::Result<Duration> {
    let (mut connection, mut session) = open(url, "cartbus-bench-drain").await?;
    let mut receiver = Receiver::builder()
        .name("cartbus-bench-drain")
        .source(durable_source(address))
        .credit_mode(CreditMode::Auto(256))
        .attach(&mut session)
        .await?;
    let started = Instant::now();
    for _ in 0..count {
        let delivery =
            tokio::time::timeout(Duration::from_secs(10), receiver.recv::<Body<Value>>())
                .await
                .context("queue ran dry early")??;
        receiver.accept(&delivery).await?;
    }
    let took = started.elapsed();
    let _ = receiver.detach().await;
    let _ = session.end().await;
    let _ = connection.close().await;
    Ok(took)
}
