//! The one description of every setting: its environment variable, its key in the
//! `--config` file, its default, the values it takes, whether it is secret, and one line on
//! what it does. The defaults come from here (`sources::Defaults`), and so do `cartbus
//! config`'s listing and the table in docs/configuration.md (tests/config.rs fails when that
//! table differs). The sections read their values through these rows, so a bad value is
//! reported under its variable's name.
//!
//! Adding a setting: one row below (the doc comment is its line in the docs), and the field
//! in its section that reads it.

use super::Config;

#[derive(Clone, Copy)]
pub struct Setting {
    /// The environment variable; `<NAME>` stands for a partner's name.
    pub env: &'static str,
    /// The dotted key in the `--config` TOML file: `consumer.batch` is `[consumer]
    /// batch = …`. The unit of a duration is part of the key, as of the variable.
    pub key: &'static str,
    pub default: DefaultValue,
    pub kind: Kind,
    /// One line of markdown; the doc comment of the row.
    pub doc: &'static str,
}

#[derive(Clone, Copy)]
pub enum DefaultValue {
    Text(&'static str),
    Number(u64),
    /// Absent until given: the feature it configures is off (the doc says what that means).
    Unset,
    /// Worked out at start-up, as `doc` says; `effective` reads the result.
    Derived {
        doc: &'static str,
        effective: fn(&Config) -> String,
    },
    /// One per partner, as `doc` says (`CARTBUS_PARTNER_<NAME>_ADDRESS`).
    PerPartner(&'static str),
}

/// The values a setting takes, and how it is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Text, parsed by the section that reads it.
    Text,
    /// A URL that may carry a password or a key: `cartbus config` shows it without them.
    Url,
    /// At least 16 characters; never shown.
    Secret,
    /// `on` or `off` (also `true`/`false`, `yes`/`no`, `1`/`0`).
    Switch,
    Count {
        min: u64,
        max: u64,
    },
    Seconds {
        min: u64,
        max: u64,
    },
    Millis {
        min: u64,
        max: u64,
    },
    /// A total in minor units of a currency, ≥ 0.
    Amount,
}

impl Setting {
    const fn new(env: &'static str, key: &'static str, default: DefaultValue, kind: Kind) -> Self {
        Setting {
            env,
            key,
            default,
            kind,
            doc: "",
        }
    }

    const fn doc(self, doc: &'static str) -> Self {
        Setting { doc, ..self }
    }

    /// The key of the flat `--config` file of earlier versions: the variable's name without
    /// `CARTBUS_`, lower-case (`consumer_batch`, `database_url`).
    pub fn flat_key(&self) -> String {
        let name = self.env.strip_prefix("CARTBUS_").unwrap_or(self.env);
        name.to_ascii_lowercase()
    }

    /// A row that stands for one setting per partner.
    pub fn per_partner(&self) -> bool {
        self.env.contains("<NAME>")
    }

    pub fn secret(&self) -> bool {
        self.kind == Kind::Secret
    }
}

const fn text(env: &'static str, key: &'static str, default: DefaultValue) -> Setting {
    Setting::new(env, key, default, Kind::Text)
}

const fn url(env: &'static str, key: &'static str, default: DefaultValue) -> Setting {
    Setting::new(env, key, default, Kind::Url)
}

const fn secret(env: &'static str, key: &'static str) -> Setting {
    Setting::new(env, key, DefaultValue::Unset, Kind::Secret)
}

const fn switch(env: &'static str, key: &'static str, default: &'static str) -> Setting {
    Setting::new(env, key, DefaultValue::Text(default), Kind::Switch)
}

const fn count(env: &'static str, key: &'static str, default: u64, min: u64, max: u64) -> Setting {
    Setting::new(
        env,
        key,
        DefaultValue::Number(default),
        Kind::Count { min, max },
    )
}

const fn seconds(
    env: &'static str,
    key: &'static str,
    default: u64,
    min: u64,
    max: u64,
) -> Setting {
    Setting::new(
        env,
        key,
        DefaultValue::Number(default),
        Kind::Seconds { min, max },
    )
}

const fn millis(env: &'static str, key: &'static str, default: u64, min: u64, max: u64) -> Setting {
    Setting::new(
        env,
        key,
        DefaultValue::Number(default),
        Kind::Millis { min, max },
    )
}

const fn amount(env: &'static str, key: &'static str, default: u64) -> Setting {
    Setting::new(env, key, DefaultValue::Number(default), Kind::Amount)
}

use DefaultValue::{PerPartner, Text as Is, Unset};

const fn derived(doc: &'static str, effective: fn(&Config) -> String) -> DefaultValue {
    DefaultValue::Derived { doc, effective }
}

/// Each row: its doc comment (one line of markdown), then `NAME = kind(variable, key, …)`.
macro_rules! settings {
    ($($(#[doc = $doc:literal])+ $name:ident = $kind:ident($($arg:expr),+ $(,)?);)+) => {
        $(
            $(#[doc = $doc])+
            pub const $name: Setting = $kind($($arg),+).doc(concat!($($doc),+));
        )+
        /// Every setting, in the order of docs/configuration.md and `cartbus config`.
        pub static SETTINGS: &[Setting] = &[$($name),+];
    };
}

settings! {
    // The process as a whole.
    /// this instance's name (unique per running instance)
    INSTANCE = text("CARTBUS_INSTANCE", "instance", derived("host name", |c| c.instance.clone()));
    /// version string of this deployment
    VERSION = text("CARTBUS_VERSION", "version", derived("crate version", |c| c.version.clone()));
    /// where the embedded defaults keep their files
    DATA_DIR = text("CARTBUS_DATA_DIR", "data_dir", Is("./data"));
    /// log filter (`tracing` `EnvFilter` syntax)
    LOG = text("CARTBUS_LOG", "log.filter", Is("info"));
    /// `text` or `json`
    LOG_FORMAT = text("CARTBUS_LOG_FORMAT", "log.format", Is("text"));

    // The HTTP front door.
    /// HTTP listen address
    LISTEN = text("CARTBUS_LISTEN", "http.listen", Is("127.0.0.1:8080"));
    /// whole-request timeout
    REQUEST_TIMEOUT = seconds(
        "CARTBUS_REQUEST_TIMEOUT_SECONDS", "http.request_timeout_seconds", 30, 1, 600,
    );
    /// `Retry-After` on `503`
    RETRY_AFTER = seconds("CARTBUS_RETRY_AFTER_SECONDS", "http.retry_after_seconds", 5, 1, 3600);
    /// checkouts handled at once; past it `POST /v1/checkouts` answers `503` + `Retry-After`
    /// (`CARTBUS_RETRY_AFTER_SECONDS`; shed before the body is read) instead of queueing
    /// unbounded work in memory
    MAX_IN_FLIGHT = count("CARTBUS_MAX_IN_FLIGHT", "http.max_in_flight", 1024, 1, 1_000_000);
    /// when set, `POST /v1/checkouts` needs `Authorization: Bearer <key>`
    STOREFRONT_KEY = secret("CARTBUS_STOREFRONT_KEY", "http.storefront_key");
    /// open HTTP connections at once; one more is closed as soon as it is accepted (see
    /// [Hostile clients](operations.md#hostile-clients))
    MAX_CONNECTIONS = count(
        "CARTBUS_MAX_CONNECTIONS", "http.limits.max_connections", 1024, 1, 1_000_000,
    );
    /// a request's line and headers must arrive whole within this, however they trickle;
    /// also how long an idle keep-alive connection is kept (keep a load balancer's idle
    /// timeout below it)
    HEADER_READ_TIMEOUT = seconds(
        "CARTBUS_HEADER_READ_TIMEOUT_SECONDS", "http.limits.header_read_timeout_seconds",
        30, 1, 600,
    );
    /// a request body must arrive whole within this, else `408`
    BODY_READ_TIMEOUT = seconds(
        "CARTBUS_BODY_READ_TIMEOUT_SECONDS", "http.limits.body_read_timeout_seconds", 10, 1, 600,
    );
    /// largest request line + headers, else `431` (below 1 KiB a browser's ordinary head no
    /// longer fits; above 256 KiB hyper's read buffer would be reached first)
    MAX_HEADER_BYTES = count(
        "CARTBUS_MAX_HEADER_BYTES", "http.limits.max_header_bytes", 16 * 1024, 1024, 256 * 1024,
    );
    /// most header fields in a request, else `431`
    MAX_HEADERS = count("CARTBUS_MAX_HEADERS", "http.limits.max_headers", 100, 8, 1000);

    // Stopping: spans the HTTP server and the background workers.
    /// after SIGTERM, keep serving this long with readiness false; behind a load balancer
    /// at least its check interval × failures to mark down (`1` with
    /// deploy/haproxy/cartbus.cfg, see the [runbook](runbook.md#behind-haproxy)), else
    /// requests fail during restarts
    SHUTDOWN_DELAY = seconds("CARTBUS_SHUTDOWN_DELAY_SECONDS", "shutdown.delay_seconds", 0, 0, 600);
    /// longest wait for in-flight requests and deliveries on shutdown
    SHUTDOWN_TIMEOUT = seconds(
        "CARTBUS_SHUTDOWN_TIMEOUT_SECONDS", "shutdown.timeout_seconds", 30, 1, 3600,
    );

    // The orders database.
    /// orders database: `sqlite:…` or `postgres://user:pass@host/db`
    DATABASE_URL = url("DATABASE_URL", "database.url",
        derived("`sqlite://$CARTBUS_DATA_DIR/cartbus.db`", |c| {
            secrecy::ExposeSecret::expose_secret(&c.database.url).to_string()
        }));
    /// database connections in all, in two pools: half for checkouts (conflict check,
    /// direct writes), half for the consumer, relay and other background work, so that a
    /// flood of checkouts cannot queue the drain behind it (at least one each)
    DATABASE_MAX_CONNECTIONS = count(
        "CARTBUS_DATABASE_MAX_CONNECTIONS", "database.max_connections", 16, 1, 1000,
    );

    // The queue between intake and the consumer.
    /// `embedded` (file `$CARTBUS_DATA_DIR/queue.db`), `embedded:/path/to/queue.db`, or a
    /// broker `amqp://user:pass@host:5672/vhost` / `amqps://…`; a cluster's nodes
    /// comma-separated, after the first URL as `host:port` (see [Brokers](brokers.md#several-nodes-a-cluster))
    QUEUE_URL = url("CARTBUS_QUEUE_URL", "queue.url", Is("embedded"));
    /// queue address of cart messages
    CART_ADDRESS = text("CARTBUS_CART_ADDRESS", "queue.cart_address",
        derived("`checkout-carts`; on a broker `/queue/checkout-carts` (`/amq/queue/…` with quorum queues)", |c| {
            c.queue.cart_address.clone()
        }));
    /// longest wait for the queue's confirmation before writing the order directly (the
    /// cap keeps a checkout under 2 s even when a broker hangs)
    SEND_TIMEOUT = millis("CARTBUS_SEND_TIMEOUT_MS", "queue.send_timeout_ms", 1000, 10, 2000);
    /// how long intake waits for the orders database to say whether the `cart_id` was
    /// already ordered with a different payload (then `409` at once); past it the cart is
    /// queued and the consumer dead-letters it `conflict`. 0 = never ask
    CONFLICT_CHECK = millis("CARTBUS_CONFLICT_CHECK_MS", "queue.conflict_check_ms", 50, 0, 1000);
    /// how long an unsettled embedded-queue delivery stays invisible
    LEASE = seconds("CARTBUS_LEASE_SECONDS", "queue.lease_seconds", 30, 1, 3600);
    /// broker: most unsettled sends in flight at once, shared by all requests
    AMQP_WINDOW = count("CARTBUS_AMQP_WINDOW", "queue.amqp.window", 256, 1, 10_000);
    /// broker: bound on TCP connect and on the AMQP open handshake
    AMQP_CONNECT_TIMEOUT = millis(
        "CARTBUS_AMQP_CONNECT_TIMEOUT_MS", "queue.amqp.connect_timeout_ms", 2000, 100, 60_000,
    );
    /// broker: PEM CA bundle trusted for `amqps://` besides the public roots
    AMQP_CA_FILE = text("CARTBUS_AMQP_CA_FILE", "queue.amqp.ca_file", Unset);
    /// broker: `classic` or `quorum` (a cluster needs quorum queues): with `quorum` the
    /// default addresses are `/amq/queue/NAME`, which declare nothing, and `cartbus broker
    /// setup` declares each queue as a quorum queue through the management API
    AMQP_QUEUE_TYPE = text("CARTBUS_AMQP_QUEUE_TYPE", "queue.amqp.queue_type", Is("classic"));
    /// broker: RabbitMQ's management API, `http://user:pass@host:15672` (a cluster's nodes
    /// comma-separated, after the first as `host:port`): the cart queue's depth and oldest
    /// message for the page, `/v1/admin/consumer` and `/metrics`, and what `cartbus broker
    /// setup` declares; unset = depth not reported on a broker
    BROKER_MANAGEMENT_URL = url("CARTBUS_BROKER_MANAGEMENT_URL", "queue.amqp.management_url", Unset);

    // The consumer: carts from the queue into orders.
    /// `off` keeps this instance from consuming
    CONSUMER = switch("CARTBUS_CONSUMER", "consumer.enabled", "on");
    /// consumer tasks per instance, each with its own receiver (one converts while the
    /// other commits)
    CONSUMERS = count("CARTBUS_CONSUMERS", "consumer.tasks", 2, 1, 64);
    /// most carts converted in one transaction (the next batch is taken while this one
    /// converts)
    CONSUMER_BATCH = count("CARTBUS_CONSUMER_BATCH", "consumer.batch", 256, 1, 10_000);
    /// broker: most deliveries a consumer holds or has on the way (link credit); keep it
    /// above `CARTBUS_CONSUMER_BATCH` (twice is the default) so the next batch arrives
    /// while one converts
    CONSUMER_PREFETCH = count("CARTBUS_CONSUMER_PREFETCH", "consumer.prefetch", 512, 1, 10_000);
    /// failed attempts before a message is dead-lettered (`max-attempts`)
    MAX_ATTEMPTS = count("CARTBUS_MAX_ATTEMPTS", "consumer.max_attempts", 5, 1, 1000);

    // The admin API.
    /// admin API token; unset = admin API off (the drain switch then only works through
    /// the database)
    ADMIN_TOKEN = secret("CARTBUS_ADMIN_TOKEN", "admin.token");
    /// resubmits allowed per dead letter, so a poison message cannot be replayed forever
    RESUBMIT_LIMIT = count("CARTBUS_RESUBMIT_LIMIT", "admin.resubmit_limit", 5, 1, 100);
    /// wrong admin tokens one client address may present in a window; past it its admin
    /// calls answer `429` + `Retry-After`, even with the right token, until the window ends
    ADMIN_AUTH_FAILURES = count(
        "CARTBUS_ADMIN_AUTH_FAILURES", "admin.auth_failures.per_client", 10, 1, 1_000_000,
    );
    /// the same over all clients together; 0 = no such limit (the default: guesses spread
    /// over many addresses would hold every operator off too)
    ADMIN_AUTH_GLOBAL_FAILURES = count(
        "CARTBUS_ADMIN_AUTH_GLOBAL_FAILURES", "admin.auth_failures.global", 0, 0, 1_000_000,
    );
    /// the window, from a client's (or, for the global count, anyone's) first wrong token
    ADMIN_AUTH_WINDOW = seconds(
        "CARTBUS_ADMIN_AUTH_WINDOW_SECONDS", "admin.auth_failures.window_seconds", 300, 1, 86_400,
    );
    /// addresses of load balancers or proxies in front (comma-separated IPs): a call from
    /// one counts against the client its `X-Forwarded-For` names (the rightmost address not
    /// itself a proxy) for the wrong-token limits; unset = the TCP peer is the client
    TRUSTED_PROXIES = text("CARTBUS_TRUSTED_PROXIES", "admin.trusted_proxies", Unset);

    // The hand-off to transport partners (DESIGN §7).
    /// fulfilment routing, first match wins: `GB:LND=contoso,GB=contoso,*=fabrikam`
    /// (`country[:region]=partner`, `*` = default). Unset = hand-off off: orders wait in
    /// the outbox until it is set (see
    /// [Fulfilment](fulfilment-and-payments.md#fulfilment-orders-to-transport-partners-and-their-replies))
    ROUTES = text("CARTBUS_ROUTES", "fulfilment.routes", Unset);
    /// where a partner's new-order messages go
    PARTNER_ADDRESS = text("CARTBUS_PARTNER_<NAME>_ADDRESS", "fulfilment.partners.<name>.address",
        PerPartner("`partner-<name>`; `/queue/partner-<name>` on a broker"));
    /// HMAC-SHA256 key of the partner's status replies; replies from a partner without one
    /// are dead-lettered
    PARTNER_SECRET = secret("CARTBUS_PARTNER_<NAME>_SECRET", "fulfilment.partners.<name>.secret");
    /// this site's name when the shop runs in several datacenters (lowercase letters,
    /// digits, `-`; up to 32): sent as `datacenter` on every new-order so the partner
    /// answers on this site's broker. Unset = one site (see
    /// [Several datacenters](fulfilment-and-payments.md#several-datacenters))
    DATACENTER = text("CARTBUS_DATACENTER", "fulfilment.datacenter", Unset);
    /// the broker partners must reply on, sent as `reply_broker` beside `datacenter`: a
    /// public identifier such as `amqps://bus-eu.shop.example:5671/shop`, never credentials
    REPLY_BROKER = text("CARTBUS_REPLY_BROKER", "fulfilment.reply_broker",
        derived("the broker's first node, `amqp://host:port/vhost`, when `CARTBUS_DATACENTER` is set; none on the embedded queue", |c| {
            c.fulfilment
                .site
                .as_ref()
                .and_then(|site| site.reply_broker.clone())
                .unwrap_or_else(|| "(unset)".into())
        }));
    /// where copies of large orders go
    AUDIT_ADDRESS = text("CARTBUS_AUDIT_ADDRESS", "fulfilment.audit_address",
        derived("`audit`; `/queue/audit` on a broker", |c| c.fulfilment.audit_address.clone()));
    /// audit copy when the total is above this, in minor units (10,000.00)
    AUDIT_THRESHOLD = amount("CARTBUS_AUDIT_THRESHOLD", "fulfilment.audit_threshold", 1_000_000);
    /// the queue partners reply on (sent as reply-to)
    STATUS_ADDRESS = text("CARTBUS_STATUS_ADDRESS", "fulfilment.status_address",
        derived("`order-status`; `/queue/order-status` on a broker", |c| {
            c.fulfilment.status_address.clone()
        }));
    /// outbox rows a relay locks at once
    RELAY_BATCH = count("CARTBUS_RELAY_BATCH", "fulfilment.relay.batch", 32, 1, 1000);
    /// how long a relay's lock holds; a relay that dies holding rows frees them after this
    RELAY_LEASE = seconds(
        "CARTBUS_RELAY_LEASE_SECONDS", "fulfilment.relay.lease_seconds", 30, 1, 3600,
    );
    /// sends the broker refused, retried (backoff from `CARTBUS_RELAY_RETRY_BASE_MS`,
    /// doubling, ≤ 5 min) before `critical_error`; tries that met a queue outage do not count
    RELAY_MAX_RETRIES = count(
        "CARTBUS_RELAY_MAX_RETRIES", "fulfilment.relay.max_retries", 10, 0, 1000,
    );
    /// first retry delay
    RELAY_RETRY_BASE = millis(
        "CARTBUS_RELAY_RETRY_BASE_MS", "fulfilment.relay.retry_base_ms", 1000, 10, 600_000,
    );
    /// relay batches one instance works on at once
    RELAY_WORKERS = count("CARTBUS_RELAY_WORKERS", "fulfilment.relay.workers", 4, 1, 64);
    /// how often an idle relay looks for orders written by other instances (its own
    /// instance's wake it at once)
    RELAY_POLL = millis("CARTBUS_RELAY_POLL_MS", "fulfilment.relay.poll_ms", 500, 10, 60_000);

    // Payment capture (DESIGN §8).
    /// payment capture endpoint (`http`/`https`); unset = no payment step (see
    /// [Payment capture](fulfilment-and-payments.md#payment-capture))
    PAYMENT_URL = url("CARTBUS_PAYMENT_URL", "payments.url", Unset);
    /// longest wait for a capture call, and below half of `CARTBUS_REQUEST_TIMEOUT_SECONDS`;
    /// past it the outcome is unknown
    PAYMENT_TIMEOUT = millis(
        "CARTBUS_PAYMENT_TIMEOUT_MS", "payments.timeout_ms", 5000, 100, 60_000,
    );
    /// sent as `Authorization: Bearer` to the payment endpoint (never logged)
    PAYMENT_TOKEN = secret("CARTBUS_PAYMENT_TOKEN", "payments.token");
    /// the payment provider's test (sandbox) capture endpoint that smoke runs call
    /// (`POST /v1/admin/smoke`, `cartbus smoke`); unset = a smoke run skips the payment
    /// step and says so. The live endpoint is never called by a smoke run
    PAYMENT_SMOKE_URL = url("CARTBUS_PAYMENT_SMOKE_URL", "payments.smoke_url", Unset);
    /// sent as `Authorization: Bearer` to the smoke endpoint (never the live token, which
    /// a smoke run never sends anywhere; never logged)
    PAYMENT_SMOKE_TOKEN = secret("CARTBUS_PAYMENT_SMOKE_TOKEN", "payments.smoke_token");

    // Webhooks: order events to the storefront (issue 20).
    /// a receiver of every order event, beside those made with `/v1/admin/webhooks`
    /// (`http`/`https`); unset = none from configuration (see
    /// [Webhooks](http-api.md#webhooks))
    WEBHOOK_URL = url("CARTBUS_WEBHOOK_URL", "webhooks.url", Unset);
    /// its signing secret(s), `whsec_…` (Standard Webhooks); during a rotation the new and
    /// the old comma-separated, each signs every call (never logged)
    WEBHOOK_SECRET = secret("CARTBUS_WEBHOOK_SECRET", "webhooks.secret");
    /// the event types it gets, comma-separated; unset = every type
    WEBHOOK_EVENTS = text("CARTBUS_WEBHOOK_EVENTS", "webhooks.events", Unset);
    /// longest wait for a receiver's answer; past it the call failed and is retried
    WEBHOOK_TIMEOUT = millis(
        "CARTBUS_WEBHOOK_TIMEOUT_MS", "webhooks.timeout_ms", 10_000, 100, 60_000,
    );
    /// first retry delay after a failed call; doubled per failure, with jitter
    WEBHOOK_RETRY_BASE = millis(
        "CARTBUS_WEBHOOK_RETRY_BASE_MS", "webhooks.retry_base_ms", 5_000, 10, 3_600_000,
    );
    /// longest delay between retries
    WEBHOOK_RETRY_CAP = seconds(
        "CARTBUS_WEBHOOK_RETRY_CAP_SECONDS", "webhooks.retry_cap_seconds", 3_600, 1, 86_400,
    );
    /// failed calls of one event after which its endpoint is marked `failing` (probed once
    /// per retry cap until it answers; with the defaults, ~6 hours of retries)
    WEBHOOK_FAILING_AFTER = count(
        "CARTBUS_WEBHOOK_FAILING_AFTER", "webhooks.failing_after", 16, 1, 1_000,
    );
    /// calls in flight to one endpoint at once, from one instance (never two of one cart)
    WEBHOOK_CONCURRENCY = count(
        "CARTBUS_WEBHOOK_CONCURRENCY", "webhooks.concurrency", 16, 1, 256,
    );
    /// how often an idle deliverer looks for new events
    WEBHOOK_POLL = millis("CARTBUS_WEBHOOK_POLL_MS", "webhooks.poll_ms", 250, 10, 60_000);
    /// networks a receiver may be in although they are inside ones (comma-separated CIDRs,
    /// e.g. `10.20.0.0/16`); unset = loopback, private, link-local and other inside
    /// addresses are refused (server-side request forgery)
    WEBHOOK_ALLOW_NETWORKS = text(
        "CARTBUS_WEBHOOK_ALLOW_NETWORKS", "webhooks.allow_networks", Unset,
    );
}
