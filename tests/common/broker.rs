//! A real RabbitMQ for the AMQP tests: its URL from `CARTBUS_TEST_AMQP_URL`, a fresh
//! queue per test, a plain fe2o3-amqp client to put raw messages on it, `rabbitmqctl` to
//! look at it, and python-qpid-proton (`CARTBUS_TEST_PYTHON`) as an independent client.

use std::process::Command;

use cartbus::queue::amqp::durable_target;
use cartbus::runtime::app::AppState;
use fe2o3_amqp::types::messaging::{
    ApplicationProperties, Header, Message, MessageId, Outcome, Properties,
};
use fe2o3_amqp::types::primitives::{Binary, SimpleValue};
use fe2o3_amqp::{Connection, Sender, Session};
use uuid::Uuid;

use super::{Backend, Settings, services_required, skipped};

/// Settings for an instance on `queue` of the test broker, orders on `backend`.
pub fn settings(dir: &std::path::Path, backend: &Backend, url: &str, queue: &str) -> Settings {
    Settings::new(dir, backend)
        .set("CARTBUS_QUEUE_URL", url)
        .set("CARTBUS_CART_ADDRESS", format!("/queue/{queue}"))
}

/// [`settings`] with fresh cart, status and partner `acme` queues, all named by `tag`.
pub fn fulfilment_settings(
    dir: &std::path::Path,
    backend: &Backend,
    url: &str,
    tag: &str,
) -> Settings {
    settings(dir, backend, url, &format!("cartbus-t-{tag}-carts"))
        .set(
            "CARTBUS_STATUS_ADDRESS",
            format!("/queue/cartbus-t-{tag}-status"),
        )
        .set(
            "CARTBUS_PARTNER_ACME_ADDRESS",
            format!("/queue/cartbus-t-{tag}-acme"),
        )
}

/// PostgreSQL when the test machine has it (the production pairing), else SQLite.
pub async fn orders_backend(test: &str) -> Backend {
    match super::postgres_admin_url(test) {
        Some(admin) => Backend::Postgres(super::fresh_postgres(&admin).await),
        None => Backend::Sqlite,
    }
}

/// The broker URL, or `None` (test skipped, said loudly) when it is not configured.
pub fn url(test: &str) -> Option<String> {
    match std::env::var("CARTBUS_TEST_AMQP_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if services_required() => {
            panic!("CARTBUS_REQUIRE_SERVICES=1 but CARTBUS_TEST_AMQP_URL is not set")
        }
        _ => {
            skipped(
                test,
                "needs RabbitMQ with AMQP 1.0; set CARTBUS_TEST_AMQP_URL (e.g. amqp://guest:guest@127.0.0.1:5672)",
            );
            None
        }
    }
}

/// The broker's management API (`http://user:pass@host:15672`), or `None` (skipped, said
/// loudly) when `CARTBUS_TEST_AMQP_MANAGEMENT_URL` is not set.
pub fn management_url(test: &str) -> Option<String> {
    match std::env::var("CARTBUS_TEST_AMQP_MANAGEMENT_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if services_required() => {
            panic!("CARTBUS_REQUIRE_SERVICES=1 but CARTBUS_TEST_AMQP_MANAGEMENT_URL is not set")
        }
        _ => {
            skipped(
                test,
                "needs RabbitMQ's management API; rabbitmq-plugins enable rabbitmq_management and set CARTBUS_TEST_AMQP_MANAGEMENT_URL (e.g. http://guest:guest@127.0.0.1:15672)",
            );
            None
        }
    }
}

/// The python with python-qpid-proton, or `None` (skipped, said loudly).
pub fn python(test: &str) -> Option<String> {
    match std::env::var("CARTBUS_TEST_PYTHON") {
        Ok(python) if !python.is_empty() => Some(python),
        _ if services_required() => {
            panic!("CARTBUS_REQUIRE_SERVICES=1 but CARTBUS_TEST_PYTHON is not set")
        }
        _ => {
            skipped(
                test,
                "needs python-qpid-proton; set CARTBUS_TEST_PYTHON to a python that has it (.ci/run makes one)",
            );
            None
        }
    }
}

/// A queue name no other test uses.
pub fn fresh_queue() -> String {
    format!("cartbus-t-{}", Uuid::new_v4().simple())
}

/// Runs `rabbitmqctl` and returns its stdout; panics with its stderr on failure.
pub fn rabbitmqctl(args: &[&str]) -> String {
    let output = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("run rabbitmqctl");
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Messages in `queue` (ready + unacknowledged); `None` when the queue does not exist.
pub fn depth(queue: &str) -> Option<u64> {
    rabbitmqctl(&[
        "list_queues",
        "-q",
        "--no-table-headers",
        "name",
        "messages",
    ])
    .lines()
    .filter_map(|line| line.split_once('\t'))
    .find(|(name, _)| name.trim() == queue)
    .and_then(|(_, n)| n.trim().parse().ok())
}

/// Messages of `queue` delivered to a consumer and not yet settled.
pub fn unacknowledged(queue: &str) -> Option<u64> {
    rabbitmqctl(&[
        "list_queues",
        "-q",
        "--no-table-headers",
        "name",
        "messages_unacknowledged",
    ])
    .lines()
    .filter_map(|line| line.split_once('\t'))
    .find(|(name, _)| name.trim() == queue)
    .and_then(|(_, n)| n.trim().parse().ok())
}

/// Declares a durable classic queue, as an operator who pre-declares would.
pub fn declare(queue: &str) {
    let expr = format!(
        "rabbit_amqqueue:declare(rabbit_misc:r(<<\"/\">>, queue, <<\"{queue}\">>), true, false, [], none, <<\"cartbus-tests\">>)."
    );
    rabbitmqctl(&["eval", &expr]);
}

/// Dead-letters `queue`'s rejected messages into `<queue>.dlq`, which it declares.
pub fn dead_letter_policy(queue: &str) -> String {
    let dlq = format!("{queue}.dlq");
    declare(&dlq);
    let definition = format!(r#"{{"dead-letter-exchange":"","dead-letter-routing-key":"{dlq}"}}"#);
    rabbitmqctl(&[
        "set_policy",
        &format!("{queue}-dlx"),
        &format!("^{queue}$"),
        &definition,
        "--apply-to",
        "queues",
    ]);
    dlq
}

/// Removes what a test declared (best effort: a leftover queue harms nobody).
pub fn delete(queue: &str) {
    let _ = Command::new("rabbitmqctl")
        .args(["delete_queue", queue])
        .output();
    let _ = Command::new("rabbitmqctl")
        .args(["clear_policy", &format!("{queue}-dlx")])
        .output();
}

/// A raw message as another producer might send it.
pub struct Raw<'a> {
    pub message_id: &'a str,
    pub body: &'a [u8],
    pub schema: i32,
}

/// Sends raw messages to `address` with a plain fe2o3-amqp client, durably, and checks
/// the broker accepted each.
pub async fn publish(url: &str, address: &str, messages: &[Raw<'_>]) {
    let mut connection = Connection::open("cartbus-tests-producer", url)
        .await
        .expect("connect to the broker");
    let mut session = Session::begin(&mut connection).await.expect("session");
    let mut sender = Sender::builder()
        .name(format!("tests-{}", Uuid::new_v4().simple()))
        .target(durable_target(address))
        .attach(&mut session)
        .await
        .expect("attach sender");
    for raw in messages {
        let message = Message::builder()
            .header(Header {
                durable: true,
                ..Default::default()
            })
            .properties(
                Properties::builder()
                    .message_id(MessageId::String(raw.message_id.to_string()))
                    .content_type("application/json")
                    .build(),
            )
            .application_properties(
                ApplicationProperties::builder()
                    .insert("schema", SimpleValue::Int(raw.schema))
                    .build(),
            )
            .data(Binary::from(raw.body.to_vec()))
            .build();
        let outcome = sender.send(message).await.expect("send");
        assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
    }
    let _ = sender.detach().await;
    let _ = session.end().await;
    let _ = connection.close().await;
}

/// `(message_id, reason)` of cartbus's own dead-letter record, oldest first.
pub async fn recorded_dead_letters(state: &AppState) -> Vec<(String, String)> {
    cartbus::on_db!(&state.db, |pool| sqlx::query_as(
        "SELECT message_id, reason FROM dead_letters ORDER BY id"
    )
    .fetch_all(pool)
    .await
    .expect("read dead letters"))
}

/// Waits until the service's publisher is connected (until then checkouts go direct).
pub async fn wait_connected(state: &AppState) {
    super::eventually("the broker connection", || async {
        state.queue.is_healthy().then_some(())
    })
    .await;
}

/// Runs one of the python-qpid-proton scripts in `tests/interop`, feeding `stdin`; returns
/// its stdout and fails the test with its stderr if it fails.
pub async fn interop(python: &str, script: &str, args: &[&str], stdin: &[u8]) -> Vec<u8> {
    use tokio::io::AsyncWriteExt;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/interop")
        .join(script);
    let mut child = tokio::process::Command::new(python)
        .arg(path)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run python");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin).await.expect("write stdin");
    drop(input);
    let output = child.wait_with_output().await.expect("python ran");
    assert!(
        output.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}
