//! The broker's raw speed: a plain fe2o3-amqp client, no cartbus code between it and the
//! broker, publishing and consuming cartbus's own durable ~1 KB messages.

use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use cartbus::queue::amqp::{durable_source, durable_target, to_amqp};
use cartbus::queue::{Message, Properties};
use fe2o3_amqp::link::receiver::CreditMode;
use fe2o3_amqp::types::messaging::{Body, Data, Message as AmqpMessage, Outcome};
use fe2o3_amqp::types::primitives::Value;
use fe2o3_amqp::{Connection, Receiver, Sender, Session};
use futures::stream::{FuturesUnordered, StreamExt};

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

/// Publishes `count` messages with up to `window` unsettled at a time (1: one at a time).
pub async fn raw_publish(
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

/// Each durable publish's round trip, one at a time: what the broker costs a request.
pub async fn raw_round_trips(
    url: &str,
    address: &str,
    body: &Bytes,
    count: usize,
) -> anyhow::Result<Vec<Duration>> {
    let (mut connection, mut session) = open(url, "cartbus-bench-rtt").await?;
    let mut sender = Sender::builder()
        .name("cartbus-bench-rtt")
        .target(durable_target(address))
        .attach(&mut session)
        .await?;
    let mut samples = Vec::with_capacity(count);
    for n in 0..count {
        let sent = Instant::now();
        let outcome = sender.send(message(n, body)).await?;
        if !matches!(outcome, Outcome::Accepted(_)) {
            anyhow::bail!("broker did not accept: {outcome:?}");
        }
        samples.push(sent.elapsed());
    }
    let _ = sender.detach().await;
    let _ = session.end().await;
    let _ = connection.close().await;
    Ok(samples)
}

/// Consumes and accepts `count` messages, which also leaves the queue empty.
pub async fn drain(url: &str, address: &str, count: usize) -> anyhow::Result<Duration> {
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
