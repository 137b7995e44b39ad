//! What the fulfilment tests share: instances with routes and partner secrets, carts bound
//! for a region, and reading what partners received and what the outbox holds.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cartbus::queue::{Message, Queue, Settlement};
use cartbus::service::partner_simulator::{
    self as simulator, SimulatorOptions, SimulatorSite, SimulatorStats,
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{Backend, DEADLINE, Settings, TestApp, broker, eventually};

pub const ROUTES: &str = "GB:LND=contoso,GB=acme,*=fabrikam";
pub const SECRETS: [(&str, &str); 3] = [
    ("contoso", "contoso-secret-0001"),
    ("acme", "acme-secret-0000001"),
    ("fabrikam", "fabrikam-secret-001"),
];
pub const ADMIN_TOKEN: &str = "fulfilment-test-admin-token";

/// Which queue carries carts, orders and replies.
#[derive(Clone, Debug)]
pub enum Stack {
    Embedded,
    Broker(String),
}

pub fn stacks(test: &str) -> Vec<Stack> {
    let mut stacks = vec![Stack::Embedded];
    if let Some(url) = broker::url(test) {
        stacks.push(Stack::Broker(url));
    }
    stacks
}

/// An instance with routes, partner secrets, a quick relay and (on a broker) queues no
/// other test uses.
pub fn settings(dir: &std::path::Path, backend: &Backend, stack: &Stack, tag: &str) -> Settings {
    let mut settings = Settings::new(dir, backend)
        .set("CARTBUS_ROUTES", ROUTES)
        .set("CARTBUS_RELAY_POLL_MS", "50")
        .set("CARTBUS_ADMIN_TOKEN", ADMIN_TOKEN);
    for (partner, secret) in SECRETS {
        settings = settings.set(
            &format!("CARTBUS_PARTNER_{}_SECRET", partner.to_uppercase()),
            secret,
        );
    }
    if let Stack::Broker(url) = stack {
        settings = broker::settings(dir, backend, url, &format!("cartbus-t-{tag}-carts"))
            .set("CARTBUS_ROUTES", ROUTES)
            .set("CARTBUS_RELAY_POLL_MS", "50")
            .set("CARTBUS_ADMIN_TOKEN", ADMIN_TOKEN)
            .set(
                "CARTBUS_AUDIT_ADDRESS",
                format!("/queue/cartbus-t-{tag}-audit"),
            )
            .set(
                "CARTBUS_STATUS_ADDRESS",
                format!("/queue/cartbus-t-{tag}-status"),
            );
        for (partner, secret) in SECRETS {
            let upper = partner.to_uppercase();
            settings = settings
                .set(&format!("CARTBUS_PARTNER_{upper}_SECRET"), secret)
                .set(
                    &format!("CARTBUS_PARTNER_{upper}_ADDRESS"),
                    format!("/queue/cartbus-t-{tag}-{partner}"),
                );
        }
    }
    settings
}

pub fn tag() -> String {
    Uuid::new_v4().simple().to_string()[..12].to_string()
}

pub fn secret(partner: &str) -> &'static str {
    SECRETS
        .iter()
        .find(|(p, _)| *p == partner)
        .map(|(_, s)| *s)
        .expect("a test partner")
}

/// A cart shipping to `country`/`region` whose total is `unit_price`.
pub fn cart_to(country: &str, region: Option<&str>, unit_price: i64) -> Value {
    let mut cart = super::cart_with_lines(1);
    cart["shipping_address"]["country"] = json!(country);
    cart["shipping_address"]["region"] = json!(region);
    cart["lines"][0]["unit_price"] = json!(unit_price);
    cart["lines"][0]["quantity"] = json!(1);
    cart["total"] = json!(unit_price);
    cart
}

/// Where `cart_to(country, region, _)` must go under [`ROUTES`].
pub fn partner_for(country: &str, region: Option<&str>) -> &'static str {
    match (country, region) {
        ("GB", Some("LND")) => "contoso",
        ("GB", _) => "acme",
        _ => "fabrikam",
    }
}

/// SQLite beside the embedded queue; PostgreSQL (when there is one) beside a broker, the
/// production pairing.
pub async fn orders_backend(stack: &Stack, test: &str) -> Backend {
    match stack {
        Stack::Embedded => Backend::Sqlite,
        Stack::Broker(_) => broker::orders_backend(test).await,
    }
}

pub async fn wait_ready(app: &TestApp, stack: &Stack) {
    if let Stack::Broker(_) = stack {
        broker::wait_connected(&app.state).await;
    }
}

/// Every message on `address`, accepted: waits until at least `at_least` have come (up
/// to the test deadline), then for a short quiet spell to catch any extra.
pub async fn take_all(queue: &Arc<dyn Queue>, address: &str, at_least: usize) -> Vec<Message> {
    let mut receiver = queue.receiver(address).await.expect("receiver");
    let deadline = Instant::now() + DEADLINE;
    let mut got = Vec::new();
    loop {
        let window = if got.len() >= at_least {
            Duration::from_millis(500)
        } else {
            deadline.saturating_duration_since(Instant::now())
        };
        let quiet = CancellationToken::new();
        let timer = {
            let quiet = quiet.clone();
            tokio::spawn(async move {
                tokio::time::sleep(window).await;
                quiet.cancel();
            })
        };
        let batch = receiver.receive(256, &quiet).await.expect("receive");
        timer.abort();
        if batch.is_empty() {
            assert!(
                got.len() >= at_least,
                "only {} of {at_least} messages arrived on {address}",
                got.len()
            );
            break;
        }
        receiver
            .settle(batch.iter().map(|d| (d.tag, Settlement::Accept)).collect())
            .await
            .expect("settle");
        got.extend(batch.into_iter().map(|d| d.message));
    }
    let _ = receiver.close().await;
    got
}

pub fn address_of(app: &TestApp, partner: &str) -> String {
    app.state
        .config
        .fulfilment
        .partner(partner)
        .expect("configured partner")
        .address
        .clone()
}

pub async fn dispatch_rows(app: &TestApp) -> Vec<(Uuid, String, Option<String>)> {
    cartbus::on_db!(&app.state.db, |pool| sqlx::query_as(
        "SELECT order_id, process_status, locked_by FROM order_dispatch"
    )
    .fetch_all(pool)
    .await
    .expect("read order_dispatch"))
}

pub async fn wait_all_processed(app: &TestApp, expected: usize) {
    eventually(&format!("{expected} outbox rows processed"), || async {
        let rows = dispatch_rows(app).await;
        (rows.len() == expected && rows.iter().all(|(_, status, _)| status == "processed"))
            .then_some(())
    })
    .await;
}

/// cart_id → order_id for every order.
pub async fn order_ids(app: &TestApp) -> HashMap<Uuid, Uuid> {
    let rows: Vec<(Uuid, Uuid)> = cartbus::on_db!(&app.state.db, |pool| sqlx::query_as(
        "SELECT cart_id, id FROM orders"
    )
    .fetch_all(pool)
    .await
    .expect("read orders"));
    rows.into_iter().collect()
}

pub fn cart_id(cart: &Value) -> Uuid {
    Uuid::parse_str(cart["cart_id"].as_str().expect("cart_id")).expect("uuid")
}

pub async fn admin_post(app: &TestApp, path: &str, body: Value) -> Value {
    let response = app
        .client
        .post(app.url(path))
        .bearer_auth(ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .expect("admin POST");
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
    response.json().await.expect("JSON")
}

/// The partner simulator playing `acme` against `app`, sending every reply twice:
/// `received_by_partner` at once, `shipped` after `ship_after`, `delivered` after
/// `deliver_after` when given.
pub struct Simulated {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), cartbus::queue::QueueError>>,
    pub stats: Arc<SimulatorStats>,
}

impl Simulated {
    pub fn start(
        app: &TestApp,
        ship_after: Duration,
        deliver_after: Option<Duration>,
    ) -> Simulated {
        let stop = CancellationToken::new();
        let stats = Arc::new(SimulatorStats::default());
        let task = tokio::spawn(simulator::run(
            vec![SimulatorSite {
                name: "default".into(),
                queue: app.state.queue.clone(),
                brokers: Vec::new(),
                secret: secret("acme").as_bytes().to_vec(),
            }],
            SimulatorOptions {
                partner: "acme".into(),
                inbox: address_of(app, "acme"),
                reply_to: app.state.config.fulfilment.status_address.clone(),
                receive_after: Duration::ZERO,
                ship_after,
                deliver_after,
                duplicates: true,
                bad_signature_every: 0,
                journal: None,
            },
            stats.clone(),
            stop.clone(),
        ));
        Simulated { stop, task, stats }
    }

    /// Stops it once the replies it has scheduled are sent.
    pub async fn stop(self) -> Arc<SimulatorStats> {
        self.stop.cancel();
        self.task.await.expect("joined").expect("simulator ran");
        self.stats
    }
}
