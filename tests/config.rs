//! `cartbus config` and the configuration's sources: the real binary's listing for a
//! given environment, redaction of every secret, the layering of file and environment,
//! and the table in docs/configuration.md, which must say what `config::settings` says.

use std::path::Path;
use std::process::{Command, Output};

use cartbus::config::settings::{DefaultValue, Kind, SETTINGS, Setting};
use cartbus::config::{Config, Loaded};

/// `cartbus config` with exactly `vars` for environment, in an empty directory.
fn cartbus_config(args: &[&str], vars: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().expect("a temporary directory");
    Command::new(env!("CARGO_BIN_EXE_cartbus"))
        .args(args)
        .arg("config")
        .env_clear()
        .envs(vars.iter().copied())
        .current_dir(dir.path())
        .output()
        .expect("cartbus runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn the_defaults_as_cartbus_config_lists_them() {
    let output = cartbus_config(
        &[],
        &[("CARTBUS_INSTANCE", "test-1"), ("CARTBUS_VERSION", "9.9.9")],
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), DEFAULTS_LISTED);
}

const DEFAULTS_LISTED: &str = "\
SETTING                              VALUE                       SOURCE       KEY
CARTBUS_INSTANCE                     test-1                      environment  instance
CARTBUS_VERSION                      9.9.9                       environment  version
CARTBUS_DATA_DIR                     ./data                      default      data_dir
CARTBUS_LOG                          info                        default      log.filter
CARTBUS_LOG_FORMAT                   text                        default      log.format
CARTBUS_LISTEN                       127.0.0.1:8080              default      http.listen
CARTBUS_REQUEST_TIMEOUT_SECONDS      30                          default      http.request_timeout_seconds
CARTBUS_RETRY_AFTER_SECONDS          5                           default      http.retry_after_seconds
CARTBUS_MAX_IN_FLIGHT                1024                        default      http.max_in_flight
CARTBUS_STOREFRONT_KEY               (unset)                     default      http.storefront_key
CARTBUS_MAX_CONNECTIONS              1024                        default      http.limits.max_connections
CARTBUS_HEADER_READ_TIMEOUT_SECONDS  30                          default      http.limits.header_read_timeout_seconds
CARTBUS_BODY_READ_TIMEOUT_SECONDS    10                          default      http.limits.body_read_timeout_seconds
CARTBUS_MAX_HEADER_BYTES             16384                       default      http.limits.max_header_bytes
CARTBUS_MAX_HEADERS                  100                         default      http.limits.max_headers
CARTBUS_SHUTDOWN_DELAY_SECONDS       0                           default      shutdown.delay_seconds
CARTBUS_SHUTDOWN_TIMEOUT_SECONDS     30                          default      shutdown.timeout_seconds
DATABASE_URL                         sqlite://./data/cartbus.db  default      database.url
CARTBUS_DATABASE_MAX_CONNECTIONS     16                          default      database.max_connections
CARTBUS_QUEUE_URL                    embedded                    default      queue.url
CARTBUS_CART_ADDRESS                 checkout-carts              default      queue.cart_address
CARTBUS_SEND_TIMEOUT_MS              1000                        default      queue.send_timeout_ms
CARTBUS_CONFLICT_CHECK_MS            50                          default      queue.conflict_check_ms
CARTBUS_LEASE_SECONDS                30                          default      queue.lease_seconds
CARTBUS_AMQP_WINDOW                  256                         default      queue.amqp.window
CARTBUS_AMQP_CONNECT_TIMEOUT_MS      2000                        default      queue.amqp.connect_timeout_ms
CARTBUS_AMQP_CA_FILE                 (unset)                     default      queue.amqp.ca_file
CARTBUS_AMQP_QUEUE_TYPE              classic                     default      queue.amqp.queue_type
CARTBUS_BROKER_MANAGEMENT_URL        (unset)                     default      queue.amqp.management_url
CARTBUS_CONSUMER                     on                          default      consumer.enabled
CARTBUS_CONSUMERS                    2                           default      consumer.tasks
CARTBUS_CONSUMER_BATCH               256                         default      consumer.batch
CARTBUS_CONSUMER_PREFETCH            512                         default      consumer.prefetch
CARTBUS_MAX_ATTEMPTS                 5                           default      consumer.max_attempts
CARTBUS_ADMIN_TOKEN                  (unset)                     default      admin.token
CARTBUS_RESUBMIT_LIMIT               5                           default      admin.resubmit_limit
CARTBUS_ADMIN_AUTH_FAILURES          10                          default      admin.auth_failures.per_client
CARTBUS_ADMIN_AUTH_GLOBAL_FAILURES   0                           default      admin.auth_failures.global
CARTBUS_ADMIN_AUTH_WINDOW_SECONDS    300                         default      admin.auth_failures.window_seconds
CARTBUS_TRUSTED_PROXIES              (unset)                     default      admin.trusted_proxies
CARTBUS_ROUTES                       (unset)                     default      fulfilment.routes
CARTBUS_DATACENTER                   (unset)                     default      fulfilment.datacenter
CARTBUS_REPLY_BROKER                 (unset)                     default      fulfilment.reply_broker
CARTBUS_AUDIT_ADDRESS                audit                       default      fulfilment.audit_address
CARTBUS_AUDIT_THRESHOLD              1000000                     default      fulfilment.audit_threshold
CARTBUS_STATUS_ADDRESS               order-status                default      fulfilment.status_address
CARTBUS_RELAY_BATCH                  32                          default      fulfilment.relay.batch
CARTBUS_RELAY_LEASE_SECONDS          30                          default      fulfilment.relay.lease_seconds
CARTBUS_RELAY_MAX_RETRIES            10                          default      fulfilment.relay.max_retries
CARTBUS_RELAY_RETRY_BASE_MS          1000                        default      fulfilment.relay.retry_base_ms
CARTBUS_RELAY_WORKERS                4                           default      fulfilment.relay.workers
CARTBUS_RELAY_POLL_MS                500                         default      fulfilment.relay.poll_ms
CARTBUS_PAYMENT_URL                  (unset)                     default      payments.url
CARTBUS_PAYMENT_TIMEOUT_MS           5000                        default      payments.timeout_ms
CARTBUS_PAYMENT_TOKEN                (unset)                     default      payments.token
CARTBUS_PAYMENT_SMOKE_URL            (unset)                     default      payments.smoke_url
CARTBUS_PAYMENT_SMOKE_TOKEN          (unset)                     default      payments.smoke_token
CARTBUS_WEBHOOK_URL                  (unset)                     default      webhooks.url
CARTBUS_WEBHOOK_SECRET               (unset)                     default      webhooks.secret
CARTBUS_WEBHOOK_EVENTS               (unset)                     default      webhooks.events
CARTBUS_WEBHOOK_TIMEOUT_MS           10000                       default      webhooks.timeout_ms
CARTBUS_WEBHOOK_RETRY_BASE_MS        5000                        default      webhooks.retry_base_ms
CARTBUS_WEBHOOK_RETRY_CAP_SECONDS    3600                        default      webhooks.retry_cap_seconds
CARTBUS_WEBHOOK_FAILING_AFTER        16                          default      webhooks.failing_after
CARTBUS_WEBHOOK_CONCURRENCY          16                          default      webhooks.concurrency
CARTBUS_WEBHOOK_POLL_MS              250                         default      webhooks.poll_ms
CARTBUS_WEBHOOK_ALLOW_NETWORKS       (unset)                     default      webhooks.allow_networks
";

/// The key of the webhook secret below: base64 of 24 bytes.
const WEBHOOK_KEY: &str = "czNjcmV0LXdlYmhvb2sta2V5LTEyMzQ1";

/// Every secret of the table, and every URL that can carry a password or a key, set to
/// a value that must not appear anywhere in what `cartbus config` prints.
#[test]
fn cartbus_config_redacts_every_secret() {
    let mut vars: Vec<(String, String)> = SETTINGS
        .iter()
        .filter(|s| s.secret())
        .map(|s| {
            let env = s.env.replace("<NAME>", "ACME");
            let secret = match env.as_str() {
                // A Standard Webhooks secret (`whsec_` + base64) or it is refused.
                "CARTBUS_WEBHOOK_SECRET" => format!("whsec_{WEBHOOK_KEY}"),
                _ => format!("s3cret-{}", env.to_ascii_lowercase()),
            };
            (env, secret)
        })
        .collect();
    assert_eq!(
        vars.len(),
        6,
        "admin, storefront, payment, payment smoke, partner, webhook: {vars:?}"
    );
    vars.extend(
        [
            (
                "DATABASE_URL",
                "postgres://cartbus:db-pa55word@db:5432/orders",
            ),
            (
                "CARTBUS_QUEUE_URL",
                "amqps://shop:broker-pa55word@broker/prod",
            ),
            (
                "CARTBUS_PAYMENT_URL",
                "https://pay.example/capture?key=pay-k3y",
            ),
            (
                "CARTBUS_WEBHOOK_URL",
                "https://shop.example/hooks?key=hook-k3y",
            ),
            (
                "CARTBUS_PAYMENT_SMOKE_URL",
                "https://sandbox.example/capture?key=sandbox-k3y",
            ),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let env: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let output = cartbus_config(&[], &env);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let printed = text(&output.stdout) + &text(&output.stderr);
    for leaked in [
        "s3cret",
        "pa55word",
        "pay-k3y",
        WEBHOOK_KEY,
        "hook-k3y",
        "sandbox-k3y",
    ] {
        assert!(!printed.contains(leaked), "{leaked} in:\n{printed}");
    }
    let value_of = |env: &str| {
        printed
            .lines()
            .find(|line| line.split_whitespace().next() == Some(env))
            .and_then(|line| line.split_whitespace().nth(1))
            .map(str::to_string)
    };
    for (env, _) in &vars[..6] {
        assert_eq!(value_of(env).as_deref(), Some("[redacted]"), "{env}");
    }
    assert_eq!(
        value_of("DATABASE_URL").as_deref(),
        Some("postgres://[redacted]@db:5432/orders")
    );
    assert_eq!(
        value_of("CARTBUS_QUEUE_URL").as_deref(),
        Some("amqps://[redacted]@broker/prod")
    );
    assert_eq!(
        value_of("CARTBUS_PAYMENT_URL").as_deref(),
        Some("https://pay.example/capture?[redacted]")
    );
    assert_eq!(
        value_of("CARTBUS_WEBHOOK_URL").as_deref(),
        Some("https://shop.example/hooks?[redacted]")
    );
    // The partner named by its secret alone still gets its default address.
    assert_eq!(
        value_of("CARTBUS_PARTNER_ACME_ADDRESS").as_deref(),
        Some("/queue/partner-acme")
    );
}

#[test]
fn cartbus_config_stops_on_an_invalid_setting_as_serve_does() {
    let output = cartbus_config(&[], &[("CARTBUS_CONSUMER_BATCH", "0")]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        text(&output.stderr).trim(),
        "cartbus: invalid setting CARTBUS_CONSUMER_BATCH: 0 is out of range 1..=10000"
    );
    assert!(output.stdout.is_empty());
    let output = cartbus_config(&["--config", "/nonexistent/cartbus.toml"], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("/nonexistent/cartbus.toml"));
}

/// Defaults ← file ← environment, through `Config::load` and the process environment as
/// `serve` reads them; the file in sections or in the flat keys of earlier versions.
#[test]
// figment::Jail's closure returns figment's own Result, whose error is large.
#[allow(clippy::result_large_err)]
fn the_environment_wins_over_the_file_and_the_file_over_the_defaults() {
    figment::Jail::expect_with(|jail| {
        jail.clear_env();
        jail.create_file(
            "cartbus.toml",
            r#"
                consumer_batch = 50          # a flat key of earlier versions
                partner_acme_secret = "0012345678901234567890"

                [consumer]
                tasks = 3
                batch = 60                   # the section wins over the flat key

                [http]
                listen = "0.0.0.0:9000"

                [fulfilment]
                routes = "GB=acme"
            "#,
        )?;
        jail.set_env("CARTBUS_CONSUMERS", "4");
        jail.set_env("CARTBUS_RELAY_WORKERS", "8");

        let file = Path::new("cartbus.toml");
        let config = Config::load(Some(file)).map_err(|e| e.to_string())?;
        assert_eq!(config.consumer.tasks, 4);
        assert_eq!(config.consumer.batch, 60);
        assert_eq!(config.http.listen.to_string(), "0.0.0.0:9000");
        assert_eq!(config.fulfilment.relay.workers, 8);
        assert_eq!(config.consumer.max_attempts, 5);
        let acme = config.fulfilment.partner("acme").expect("acme");
        assert_eq!(
            acme.secret
                .as_ref()
                .map(|s| secrecy::ExposeSecret::expose_secret(s).len()),
            Some(22)
        );

        let loaded = Loaded::load(Some(file)).map_err(|e| e.to_string())?;
        let source = |env: &str| {
            loaded
                .settings()
                .into_iter()
                .find(|shown| shown.env == env)
                .map(|shown| (shown.value, shown.source))
        };
        let from_file = "file cartbus.toml".to_string();
        assert_eq!(
            source("CARTBUS_CONSUMERS"),
            Some(("4".into(), "environment".into()))
        );
        assert_eq!(
            source("CARTBUS_CONSUMER_BATCH"),
            Some(("60".into(), from_file.clone()))
        );
        assert_eq!(
            source("CARTBUS_PARTNER_ACME_SECRET"),
            Some(("[redacted]".into(), from_file))
        );
        assert_eq!(
            source("CARTBUS_MAX_ATTEMPTS"),
            Some(("5".into(), "default".into()))
        );
        Ok(())
    });
}

/// docs/configuration.md's table is this rendering of `SETTINGS`. After changing a
/// setting, `UPDATE_DOCS=1 cargo test --test config` writes it.
#[test]
fn the_docs_table_is_the_settings_table() {
    const BEGIN: &str =
        "<!-- settings: generated from src/config/settings.rs by tests/config.rs -->\n";
    const END: &str = "<!-- end of settings -->";
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md");
    let docs = std::fs::read_to_string(path).expect("docs/configuration.md");
    let (Some(start), Some(end)) = (docs.find(BEGIN), docs.find(END)) else {
        panic!("docs/configuration.md lacks the {BEGIN:?} … {END:?} markers");
    };
    let start = start + BEGIN.len();
    let table = docs_table();
    if docs[start..end] == table {
        return;
    }
    if std::env::var_os("UPDATE_DOCS").is_some() {
        let updated = format!("{}{table}{}", &docs[..start], &docs[end..]);
        std::fs::write(path, updated).expect("docs/configuration.md written");
        return;
    }
    panic!(
        "docs/configuration.md's settings table differs from src/config/settings.rs; \
         run `UPDATE_DOCS=1 cargo test --test config` and commit the result. Expected:\n{table}"
    );
}

fn docs_table() -> String {
    let mut table = String::from(
        "| variable | `--config` key | default | values | meaning |\n|---|---|---|---|---|\n",
    );
    for setting in SETTINGS {
        table.push_str(&format!(
            "| `{}` | `{}` | {} | {} | {} |\n",
            setting.env,
            setting.key,
            default(setting),
            values(setting.kind),
            setting.doc.trim()
        ));
    }
    table
}

fn default(setting: &Setting) -> String {
    match setting.default {
        DefaultValue::Text(text) => format!("`{text}`"),
        DefaultValue::Number(n) => format!("`{n}`"),
        DefaultValue::Unset => "unset".into(),
        DefaultValue::Derived { doc, .. } | DefaultValue::PerPartner(doc) => doc.into(),
    }
}

fn values(kind: Kind) -> String {
    match kind {
        Kind::Text => "text".into(),
        Kind::Url => "URL".into(),
        Kind::Secret => "secret, ≥ 16 characters".into(),
        Kind::Switch => "`on` / `off`".into(),
        Kind::Count { min, max } => format!("{min}–{max}"),
        Kind::Seconds { min, max } => format!("{min}–{max} s"),
        Kind::Millis { min, max } => format!("{min}–{max} ms"),
        Kind::Amount => "≥ 0".into(),
    }
}
