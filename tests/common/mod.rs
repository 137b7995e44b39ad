//! Test harness: real cartbus instances on ephemeral ports (in-process, or as a child
//! process where a test needs to kill it), fresh databases and queue files per test, and
//! polling helpers with deadlines.
#![allow(dead_code)]

pub mod broker;
pub mod cluster;
pub mod haproxy;
pub mod load;
pub mod partners;
pub mod proxy;
pub mod webhooks;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cartbus::Application;
use cartbus::config::Config;
use cartbus::runtime::app::AppState;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How long a test waits for something that should happen "soon".
pub const DEADLINE: Duration = Duration::from_secs(30);

/// CI sets this so that a missing service fails the run instead of skipping tests.
pub fn services_required() -> bool {
    std::env::var("CARTBUS_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// An admin URL of a PostgreSQL server on which tests may create databases, from
/// `CARTBUS_TEST_DATABASE_URL`; `None` (test skipped, said loudly) when unset.
pub fn postgres_admin_url(test: &str) -> Option<String> {
    match std::env::var("CARTBUS_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if services_required() => {
            panic!("CARTBUS_REQUIRE_SERVICES=1 but CARTBUS_TEST_DATABASE_URL is not set")
        }
        _ => {
            skipped(
                test,
                "needs PostgreSQL; set CARTBUS_TEST_DATABASE_URL (e.g. postgres://postgres@127.0.0.1:5432/postgres)",
            );
            None
        }
    }
}

/// Says so on the terminal even though libtest captures `eprintln!` of passing tests, and
/// records it in `target/tmp/skipped.tsv` (test binary, test, why), which `.ci/test`
/// sums up after the whole run.
pub fn skipped(test: &str, why: &str) {
    use std::io::Write;
    let binary = env!("CARGO_CRATE_NAME");
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED (part of) {binary}::{test}: {why}"
    );
    let record = Path::new(env!("CARGO_TARGET_TMPDIR")).join("skipped.tsv");
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(record)
    {
        // One write per line: appends from tests running at once do not interleave.
        let _ = file.write_all(format!("{binary}\t{test}\t{why}\n").as_bytes());
    }
}

/// A measurement worth seeing in the test output (not captured by libtest).
pub fn note(what: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "NOTE: {what}");
}

/// Creates an empty database for one test and returns its URL.
pub async fn fresh_postgres(admin_url: &str) -> String {
    use sqlx::Connection;
    let name = format!("cartbus_t_{}", Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(admin_url)
        .await
        .expect("connect to CARTBUS_TEST_DATABASE_URL");
    // The name is a UUID we generated.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .expect("create test database");
    let _ = admin.close().await;
    let (base, _) = admin_url.rsplit_once('/').expect("database URL has a path");
    let query = admin_url
        .split_once('?')
        .map(|(_, q)| format!("?{q}"))
        .unwrap_or_default();
    format!("{base}/{name}{query}")
}

/// Which orders database a test runs against.
#[derive(Clone, Debug)]
pub enum Backend {
    Sqlite,
    Postgres(String),
}

impl Backend {
    /// SQLite, plus PostgreSQL when available: the backends a test should cover.
    pub async fn all(test: &str) -> Vec<Backend> {
        let mut backends = vec![Backend::Sqlite];
        if let Some(admin) = postgres_admin_url(test) {
            backends.push(Backend::Postgres(fresh_postgres(&admin).await));
        }
        backends
    }
}

/// Settings for one test instance; `data_dir` holds its SQLite files.
pub struct Settings {
    pub data_dir: PathBuf,
    pub vars: Vec<(String, String)>,
    /// The cartbus binary that [`Process::start`] runs: this test build's, unless a test
    /// runs a copy of its own.
    pub binary: PathBuf,
}

impl Settings {
    pub fn new(data_dir: &Path, backend: &Backend) -> Settings {
        let mut vars = vec![
            ("CARTBUS_LISTEN".to_string(), "127.0.0.1:0".to_string()),
            (
                "CARTBUS_DATA_DIR".to_string(),
                data_dir.display().to_string(),
            ),
            ("CARTBUS_INSTANCE".to_string(), "test".to_string()),
        ];
        if let Backend::Postgres(url) = backend {
            vars.push(("DATABASE_URL".to_string(), url.clone()));
        }
        Settings {
            data_dir: data_dir.to_path_buf(),
            vars,
            binary: PathBuf::from(env!("CARGO_BIN_EXE_cartbus")),
        }
    }

    pub fn set(mut self, key: &str, value: impl Into<String>) -> Settings {
        self.vars.retain(|(k, _)| k != key);
        self.vars.push((key.to_string(), value.into()));
        self
    }

    /// A copy with one more (or a changed) setting.
    pub fn with(&self, key: &str, value: impl Into<String>) -> Settings {
        Settings {
            data_dir: self.data_dir.clone(),
            vars: self.vars.clone(),
            binary: self.binary.clone(),
        }
        .set(key, value)
    }

    pub fn config(&self) -> Config {
        Config::from_vars(self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .expect("test configuration is valid")
    }
}

/// A cartbus running inside the test process.
pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub state: AppState,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

fn init_logs() {
    if let Ok(filter) = std::env::var("CARTBUS_TEST_LOG") {
        cartbus::telemetry::init(&filter, false);
    }
}

impl TestApp {
    pub async fn spawn(settings: &Settings) -> TestApp {
        init_logs();
        let application = Application::build(settings.config())
            .await
            .expect("cartbus builds");
        let base = format!("http://{}", application.local_addr());
        let state = application.state();
        let shutdown = application.shutdown_token();
        let task = tokio::spawn(application.run_until_stopped());
        TestApp {
            base,
            client: client(),
            state,
            shutdown,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post_cart(&self, cart: &Value) -> reqwest::Response {
        post_cart(&self.client, &self.base, cart).await
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        get_json(&self.client, &self.base, path).await
    }

    /// Polls the checkout until it is `ordered`; returns the order.
    pub async fn wait_for_order(&self, cart_id: &str) -> Value {
        wait_for_order(&self.client, &self.base, cart_id).await
    }

    /// Graceful stop, as on SIGTERM; returns what `run_until_stopped` returned.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("cartbus stops in time")
            .expect("cartbus task did not panic")
    }
}

/// Runs `cartbus consumer ARGS` against `base` with a cleared environment (no $USER,
/// no $LOGNAME) and `token`, if any, in CARTBUS_ADMIN_TOKEN; returns exit code, stdout,
/// stderr.
pub async fn consumer_cli(base: &str, token: Option<&str>, args: &[&str]) -> (i32, String, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_cartbus"));
    command
        .arg("consumer")
        .args(args)
        .env_clear()
        .env("CARTBUS_ADMIN_URL", base);
    if let Some(token) = token {
        command.env("CARTBUS_ADMIN_TOKEN", token);
    }
    let output = command.output().await.expect("run cartbus consumer");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client")
}

pub async fn post_cart(client: &reqwest::Client, base: &str, cart: &Value) -> reqwest::Response {
    client
        .post(format!("{base}/v1/checkouts"))
        .json(cart)
        .send()
        .await
        .expect("POST /v1/checkouts")
}

pub async fn get_json(client: &reqwest::Client, base: &str, path: &str) -> (u16, Value) {
    let response = client
        .get(format!("{base}{path}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

pub async fn wait_for_order(client: &reqwest::Client, base: &str, cart_id: &str) -> Value {
    let checkout = eventually(&format!("checkout {cart_id} ordered"), || async {
        let (status, body) = get_json(client, base, &format!("/v1/checkouts/{cart_id}")).await;
        (status == 200 && body["status"] == "ordered").then_some(body)
    })
    .await;
    let order_url = checkout["order_url"].as_str().expect("order_url");
    let (status, order) = get_json(client, base, order_url).await;
    assert_eq!(status, 200, "{order}");
    order
}

/// An admin API call with bearer `token` and, when given, a JSON body; status and body.
pub async fn admin_call(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = client
        .request(method.clone(), format!("{base}{path}"))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// `template` (an OpenAPI path) with its path parameters filled with plausible values of
/// their documented type: 1 for an integer, a fresh UUID otherwise.
pub fn fill_path(template: &str, operation: &Value) -> String {
    let mut path = template.to_string();
    for parameter in operation["parameters"].as_array().into_iter().flatten() {
        if parameter["in"] != "path" {
            continue;
        }
        let name = parameter["name"].as_str().unwrap_or_default();
        let value = match parameter["schema"]["type"].as_str() {
            Some("integer") => "1".to_string(),
            _ => Uuid::new_v4().to_string(),
        };
        path = path.replace(&format!("{{{name}}}"), &value);
    }
    assert!(!path.contains('{'), "unfilled path parameter in {path}");
    path
}

/// The service's Prometheus text.
pub async fn metrics_text(client: &reqwest::Client, base: &str) -> String {
    client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text")
}

/// The value of one sample (`name{labels}` exactly) of Prometheus text, `None` when the
/// series is absent.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        (series == name).then(|| value.parse().ok())?
    })
}

/// The value of one sample line (`name{labels}`) of Prometheus text, 0 when absent.
pub fn metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(sample))
        .and_then(|rest| rest.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Polls `probe` until it returns `Some` or [`DEADLINE`] passes.
pub async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    let mut wait = Duration::from_millis(5);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(started.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_millis(200));
    }
}

/// A valid cart with a fresh id; `lines` lines of increasing price.
pub fn cart_with_lines(lines: usize) -> Value {
    let lines: Vec<Value> = (0..lines)
        .map(|i| json!({ "sku": format!("SKU-{i:03}"), "name": format!("Item {i}"), "quantity": 1 + i % 3, "unit_price": 100 + i as i64 }))
        .collect();
    let total: i64 = lines
        .iter()
        .map(|l| l["quantity"].as_i64().unwrap_or(0) * l["unit_price"].as_i64().unwrap_or(0))
        .sum();
    json!({
        "cart_id": Uuid::new_v4().to_string(),
        "customer": { "id": "cust-42", "name": "Ada Lovelace", "email": "ada@example.com", "phone": "+44 20 7946 0000" },
        "shipping_address": { "line1": "12 Analytical St", "line2": null, "city": "London",
                              "region": "LND", "postal_code": "EC1A 1AA", "country": "GB" },
        "currency": "GBP",
        "lines": lines,
        "total": total
    })
}

pub fn cart() -> Value {
    cart_with_lines(2)
}

/// A cart message in schema 99, which this version does not read: it is dead-lettered
/// `unknown-schema`, with a valid cart inside for an operator to resubmit.
pub fn unknown_schema_message(cart: &Value) -> cartbus::queue::Message {
    use cartbus::queue::{Message, Properties, Property};
    let body = json!({ "schema": 99, "cart": cart, "accepted_at": "2026-11-26T01:00:00Z" });
    Message {
        message_id: cart["cart_id"].as_str().expect("cart_id").to_string(),
        content_type: "application/json".into(),
        properties: Properties::from([("schema".into(), Property::Int(99))]),
        body: serde_json::to_vec(&body).expect("json").into(),
        ..Default::default()
    }
}

/// Counts orders straight from the database (the API has no list endpoint).
pub async fn count_orders(state: &AppState) -> i64 {
    cartbus::on_db!(&state.db, |pool| sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM orders"
    )
    .fetch_one(pool)
    .await
    .expect("count orders"))
}

pub async fn count_orders_for(state: &AppState, cart_id: &str) -> i64 {
    let cart_id = Uuid::parse_str(cart_id).expect("cart id");
    cartbus::on_db!(&state.db, |pool| sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM orders WHERE cart_id = $1"
    )
    .bind(cart_id)
    .fetch_one(pool)
    .await
    .expect("count orders"))
}

/// `(message_id, reason)` of every dead letter in the embedded queue file under `data_dir`,
/// oldest first, read straight from the file.
pub async fn dead_letters(data_dir: &Path) -> Vec<(String, String)> {
    use sqlx::Connection;
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(data_dir.join("queue.db"))
        .read_only(true);
    let mut conn = sqlx::SqliteConnection::connect_with(&options)
        .await
        .expect("open queue file");
    sqlx::query_as("SELECT message_id, reason FROM dead_letters ORDER BY id")
        .fetch_all(&mut conn)
        .await
        .expect("read dead letters")
}

/// Every row `sql` selects, straight from the orders database of a test whose instances
/// run as child processes (SQLite read-only, so that the test never holds the writer).
pub async fn orders_db_rows<T>(backend: &Backend, data_dir: &Path, sql: &'static str) -> Vec<T>
where
    T: Send + Unpin,
    T: for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>,
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
{
    use sqlx::Connection;
    match backend {
        Backend::Sqlite => {
            let options = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(data_dir.join("cartbus.db"))
                .read_only(true);
            let mut conn = sqlx::SqliteConnection::connect_with(&options)
                .await
                .expect("open orders file");
            sqlx::query_as(sql).fetch_all(&mut conn).await
        }
        Backend::Postgres(url) => {
            let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
            sqlx::query_as(sql).fetch_all(&mut conn).await
        }
    }
    .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Counts orders (and distinct carts among them) straight from the database of a test
/// whose instances run as child processes.
pub async fn order_counts(backend: &Backend, data_dir: &Path) -> (i64, i64) {
    const SQL: &str = "SELECT count(*), count(DISTINCT cart_id) FROM orders";
    orders_db_rows(backend, data_dir, SQL)
        .await
        .pop()
        .expect("one row of counts")
}

/// Messages waiting in the embedded queue file under `data_dir`.
pub async fn queued_messages(data_dir: &Path) -> i64 {
    use sqlx::Connection;
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(data_dir.join("queue.db"))
        .read_only(true);
    let mut conn = sqlx::SqliteConnection::connect_with(&options)
        .await
        .expect("open queue file");
    sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(&mut conn)
        .await
        .expect("count")
}

/// A cartbus child process, for tests that kill it.
/// Pids of the children [`Process::start`] started and has not killed yet, so that a
/// runner stopped by a signal (`tests/faults`) can kill them on its way out: no destructor
/// runs then, and an orphaned instance would go on holding its port and its database.
pub static CHILDREN: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

pub struct Process {
    pub child: Child,
    pub base: String,
    pub logs: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Process {
    /// Starts the binary with `settings` (JSON logs) and waits until it is listening.
    pub fn start(settings: &Settings, extra_env: &[(&str, &str)]) -> Process {
        let mut command = Command::new(&settings.binary);
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CARTBUS_LOG_FORMAT", "json")
            .env("CARTBUS_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, value) in &settings.vars {
            command.env(key, value);
        }
        for (key, value) in extra_env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("start cartbus");
        if let Ok(mut children) = CHILDREN.lock() {
            children.push(child.id());
        }
        let stderr = child.stderr.take().expect("stderr piped");
        let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (address_tx, address_rx) = std::sync::mpsc::channel();
        {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Ok(event) = serde_json::from_str::<Value>(&line)
                        && event["message"] == "cartbus listening"
                        && let Some(address) = event["address"].as_str()
                    {
                        let _ = address_tx.send(address.to_string());
                    }
                    logs.lock().expect("log lock").push(line);
                }
            });
        }
        let address = address_rx.recv_timeout(DEADLINE).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!(
                "cartbus did not start listening: {:?}",
                logs.lock().map(|l| l.clone()).unwrap_or_default()
            )
        });
        Process {
            child,
            base: format!("http://{address}"),
            logs,
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let pid = self.child.id();
        if let Ok(mut children) = CHILDREN.lock() {
            children.retain(|&child| child != pid);
        }
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits")
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().map(|l| l.clone()).unwrap_or_default()
    }

    pub fn logs_contain(&self, needle: &str) -> bool {
        self.logs().iter().any(|l| l.contains(needle))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}
