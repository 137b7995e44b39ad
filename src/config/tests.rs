use std::path::Path;
use std::time::Duration;

use secrecy::ExposeSecret;

use super::settings::Kind;
use super::*;

#[test]
fn defaults_work_on_one_machine() {
    let config = Config::from_vars([]).expect("defaults are valid");
    assert_eq!(config.http.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.database.kind, DatabaseKind::Sqlite);
    assert_eq!(
        config.database.url.expose_secret(),
        "sqlite://./data/cartbus.db"
    );
    assert!(
        matches!(config.queue.backend, QueueConfig::Embedded { ref path } if path == Path::new("./data/queue.db"))
    );
    assert!(config.consumer.enabled);
    assert!(config.admin.token.is_none());
}

#[test]
fn a_numeric_looking_version_is_a_string() {
    let config = Config::from_vars([("CARTBUS_VERSION", "2")]).expect("valid");
    assert_eq!(config.version, "2");
}

#[test]
fn bad_values_name_their_setting() {
    for (key, value) in [
        ("CARTBUS_LISTEN", "nowhere"),
        ("CARTBUS_CONSUMER", "maybe"),
        ("CARTBUS_CONSUMER_BATCH", "0"),
        ("CARTBUS_CONSUMER_BATCH", "many"),
        ("DATABASE_URL", "mysql://x"),
        ("CARTBUS_QUEUE_URL", "kafka://x"),
        ("CARTBUS_QUEUE_URL", "amqp://"),
        ("CARTBUS_AMQP_WINDOW", "0"),
        ("CARTBUS_QUEUE_URL", "amqp://:secret@broker"),
        ("CARTBUS_AMQP_CA_FILE", "/nonexistent/ca.pem"),
        ("CARTBUS_SEND_TIMEOUT_MS", "5000"),
        ("CARTBUS_ADMIN_TOKEN", "short"),
        ("CARTBUS_LOG_FORMAT", "xml"),
        ("CARTBUS_PAYMENT_URL", "ftp://pay.example/capture"),
        ("CARTBUS_PAYMENT_URL", "not a url"),
        ("CARTBUS_PAYMENT_TIMEOUT_MS", "50"),
        ("CARTBUS_PAYMENT_TIMEOUT_MS", "60001"),
        ("CARTBUS_MAX_CONNECTIONS", "0"),
        ("CARTBUS_HEADER_READ_TIMEOUT_SECONDS", "0"),
        ("CARTBUS_BODY_READ_TIMEOUT_SECONDS", "601"),
        ("CARTBUS_MAX_HEADER_BYTES", "512"),
        ("CARTBUS_MAX_HEADERS", "2"),
        ("CARTBUS_ADMIN_AUTH_FAILURES", "0"),
        ("CARTBUS_ADMIN_AUTH_GLOBAL_FAILURES", "-1"),
        ("CARTBUS_ADMIN_AUTH_WINDOW_SECONDS", "0"),
        ("CARTBUS_DATACENTER", "EU West"),
        (
            "CARTBUS_DATACENTER",
            "a-datacenter-name-longer-than-32-chars",
        ),
        ("CARTBUS_REPLY_BROKER", "amqp://bus.example:5672"),
    ] {
        let err = Config::from_vars([(key, value)])
            .expect_err(key)
            .to_string();
        assert!(err.contains(key), "{err:?} should name {key}");
    }
}

#[test]
fn a_payment_timeout_must_end_inside_half_the_request_timeout() {
    let with = |payment_ms: &str, request_s: &str| {
        Config::from_vars([
            ("CARTBUS_PAYMENT_URL", "https://pay.example/capture"),
            ("CARTBUS_PAYMENT_TIMEOUT_MS", payment_ms),
            ("CARTBUS_REQUEST_TIMEOUT_SECONDS", request_s),
        ])
    };
    assert!(with("4999", "10").is_ok());
    for (payment_ms, request_s) in [("5000", "10"), ("5000", "9"), ("60000", "30")] {
        let err = with(payment_ms, request_s)
            .expect_err("too long")
            .to_string();
        assert!(err.contains("CARTBUS_PAYMENT_TIMEOUT_MS"), "{err}");
    }
    // No payment endpoint: the timeout is unused, so not held against the request's.
    assert!(
        Config::from_vars([
            ("CARTBUS_PAYMENT_TIMEOUT_MS", "5000"),
            ("CARTBUS_REQUEST_TIMEOUT_SECONDS", "5")
        ])
        .is_ok()
    );
}

#[test]
fn an_amqp_url_gives_endpoint_credentials_and_vhost() {
    let config = Config::from_vars([(
        "CARTBUS_QUEUE_URL",
        "amqps://RootManageSharedAccessKey:a%2Fb%2Bc%3D@shop.servicebus.windows.net/prod",
    )])
    .expect("valid");
    let QueueConfig::Amqp(amqp) = &config.queue.backend else {
        panic!("not amqp")
    };
    let [node] = amqp.nodes.as_slice() else {
        panic!("one node: {:?}", amqp.nodes)
    };
    assert!(node.tls);
    assert_eq!(node.port, 5671);
    assert_eq!(node.username.as_deref(), Some("RootManageSharedAccessKey"));
    assert_eq!(
        node.password.as_ref().map(|p| p.expose_secret()),
        Some("a/b+c=")
    );
    assert_eq!(node.vhost.as_deref(), Some("prod"));
    assert_eq!(config.queue.cart_address, "/queue/checkout-carts");
    assert!(!format!("{config:?}").contains("a/b+c="));

    let config =
        Config::from_vars([("CARTBUS_QUEUE_URL", "amqp://guest:guest@127.0.0.1")]).expect("valid");
    let QueueConfig::Amqp(amqp) = &config.queue.backend else {
        panic!("not amqp")
    };
    let node = &amqp.nodes[0];
    assert_eq!(
        (node.tls, node.port, node.vhost.as_deref()),
        (false, 5672, None)
    );
}

#[test]
fn a_cluster_is_several_comma_separated_nodes() {
    let config = Config::from_vars([(
        "CARTBUS_QUEUE_URL",
        "amqp://shop:s%40cret@rabbit-a:5681/prod, rabbit-b:5682 ,rabbit-c, amqps://other:pw@rabbit-d",
    )])
    .expect("valid");
    let QueueConfig::Amqp(amqp) = &config.queue.backend else {
        panic!("not amqp")
    };
    assert_eq!(
        amqp.endpoints(),
        "amqp://rabbit-a:5681, amqp://rabbit-b:5682, amqp://rabbit-c:5681, amqps://rabbit-d:5671"
    );
    // A bare host:port logs in like the first node, to the same virtual host.
    for node in &amqp.nodes[..3] {
        assert_eq!(node.username.as_deref(), Some("shop"));
        assert_eq!(
            node.password.as_ref().map(|p| p.expose_secret()),
            Some("s@cret")
        );
        assert_eq!(node.vhost.as_deref(), Some("prod"));
    }
    assert_eq!(amqp.nodes[3].username.as_deref(), Some("other"));
    assert_eq!(amqp.nodes[3].vhost, None);
    assert!(!format!("{config:?}").contains("s@cret"));

    for (url, says) in [
        ("amqp://a:1,a:1", "names amqp://a:1 twice"),
        ("amqp://a:1,b:2/vhost", "node 2 is not host:port"),
        ("amqp://a:1,,b:2", "node 2 is not host:port"),
        ("amqp://a:1,http://b", "node 2 is neither"),
        (
            "amqp://a:1,amqp://:pw@b",
            "node 2 has a password but no user name",
        ),
    ] {
        let error = Config::from_vars([("CARTBUS_QUEUE_URL", url)])
            .expect_err(url)
            .to_string();
        assert!(error.contains(says), "{url}: {error}");
        assert!(!error.contains("pw"), "{url}: {error}");
    }
}

#[test]
fn a_site_tells_partners_its_broker_and_never_its_credentials() {
    let one =
        Config::from_vars([("CARTBUS_QUEUE_URL", "amqp://u:p@bus-eu:5672/shop")]).expect("valid");
    assert_eq!(one.fulfilment.site, None, "unset: one site, as before");
    let site = Config::from_vars([
        (
            "CARTBUS_QUEUE_URL",
            "amqp://u:p@bus-eu:5672/shop,bus-eu-2:5672",
        ),
        ("CARTBUS_DATACENTER", "eu-west"),
    ])
    .expect("valid")
    .fulfilment
    .site
    .expect("a site");
    assert_eq!(site.datacenter, "eu-west");
    assert_eq!(
        site.reply_broker.as_deref(),
        Some("amqp://bus-eu:5672/shop")
    );
    let given = Config::from_vars([
        ("CARTBUS_DATACENTER", "eu"),
        (
            "CARTBUS_REPLY_BROKER",
            "amqps://bus-eu.shop.example:5671/shop",
        ),
    ])
    .expect("valid");
    assert_eq!(
        given
            .fulfilment
            .site
            .and_then(|s| s.reply_broker)
            .as_deref(),
        Some("amqps://bus-eu.shop.example:5671/shop")
    );
    let err = Config::from_vars([
        ("CARTBUS_DATACENTER", "eu"),
        (
            "CARTBUS_REPLY_BROKER",
            "amqps://user:hunter2-password@bus-eu:5671",
        ),
    ])
    .expect_err("credentials")
    .to_string();
    assert!(
        err.contains("CARTBUS_REPLY_BROKER") && err.contains("credentials"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
    let err = Config::from_vars([
        ("CARTBUS_DATACENTER", "eu"),
        (
            "CARTBUS_REPLY_BROKER",
            "amqps://bus-eu:5671/shop?password=hunter2",
        ),
    ])
    .expect_err("a query")
    .to_string();
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn an_all_digit_partner_secret_keeps_its_leading_zeros() {
    let config = Config::from_vars([
        ("CARTBUS_ROUTES", "*=acme"),
        ("CARTBUS_PARTNER_ACME_SECRET", "0012345678901234567890"),
    ])
    .expect("valid");
    let acme = config.fulfilment.partner("acme").expect("acme");
    assert_eq!(
        acme.secret.as_ref().map(|s| s.expose_secret()),
        Some("0012345678901234567890")
    );
    assert_eq!(acme.address, "partner-acme");
    let err = Config::from_vars([("CARTBUS_PARTNER_ACME_KEY", "x")])
        .expect_err("unknown partner setting")
        .to_string();
    assert!(err.contains("CARTBUS_PARTNER_ACME_KEY"), "{err}");
}

#[test]
fn a_list_of_urls_prints_without_any_of_its_credentials() {
    let shown = super::without_credentials(
        "amqp://u:p4ss@a:5681/vh,b:5682, amqp://v:s3cret@c:1,amqp://w:x@bad:port",
    );
    assert_eq!(
        shown,
        "amqp://[redacted]@a:5681/vh,b:5682,amqp://[redacted]@c:1,[redacted]@bad:port"
    );
}

#[test]
fn secrets_never_print() {
    let config = Config::from_vars([
        ("CARTBUS_ADMIN_TOKEN", "super-secret-admin-token"),
        ("DATABASE_URL", "postgres://u:hunter2hunter2@db/x"),
    ])
    .expect("valid");
    let printed = format!("{config:?}");
    assert!(!printed.contains("super-secret-admin-token"));
    assert!(!printed.contains("hunter2hunter2"));
    let err = Config::from_vars([("DATABASE_URL", "mysql://u:hunter2hunter2@db/x")])
        .expect_err("bad scheme")
        .to_string();
    assert!(!err.contains("hunter2hunter2"));
}

#[test]
fn the_payment_endpoint_never_prints_its_key() {
    let config = Config::from_vars([
        (
            "CARTBUS_PAYMENT_URL",
            "https://pay.example:8443/capture?key=k3y-in-query",
        ),
        ("CARTBUS_PAYMENT_TOKEN", "payment-bearer-token-0123"),
    ])
    .expect("valid");
    let url = config.payments.url.as_ref().expect("configured");
    assert_eq!(url.to_string(), "https://pay.example:8443/capture");
    assert_eq!(url.as_url().query(), Some("key=k3y-in-query"));
    assert_eq!(config.payments.timeout, Duration::from_secs(5));
    let printed = format!("{config:?}");
    assert!(!printed.contains("k3y-in-query"));
    assert!(!printed.contains("payment-bearer-token-0123"));
    let err = Config::from_vars([("CARTBUS_PAYMENT_URL", "ftp://pay.example/?key=k3y-in-query")])
        .expect_err("bad scheme")
        .to_string();
    assert!(!err.contains("k3y-in-query"));
}

/// Every number in the table is read through its row: one past either end of its range
/// stops start-up naming its variable.
#[test]
fn every_number_is_checked_against_its_range() {
    for setting in settings::SETTINGS {
        let (min, max) = match setting.kind {
            Kind::Count { min, max } | Kind::Seconds { min, max } | Kind::Millis { min, max } => {
                (min, max)
            }
            Kind::Amount => (0, i64::MAX as u64),
            _ => continue,
        };
        let below = min
            .checked_sub(1)
            .map_or("-1".to_string(), |n| n.to_string());
        for bad in [below, (max + 1).to_string(), "many".to_string()] {
            let err = Config::from_vars([(setting.env, bad.as_str())])
                .expect_err(setting.env)
                .to_string();
            assert!(err.contains(setting.env), "{bad}: {err}");
        }
    }
}

#[test]
fn every_secret_refuses_a_short_value_without_showing_it() {
    let mut secrets = 0;
    for setting in settings::SETTINGS.iter().filter(|s| s.secret()) {
        let env = setting.env.replace("<NAME>", "ACME");
        let err = Config::from_vars([(env.as_str(), "short-s3cret")])
            .expect_err(setting.env)
            .to_string();
        assert!(err.contains(&env), "{err}");
        assert!(!err.contains("short-s3cret"), "{err}");
        secrets += 1;
    }
    assert_eq!(
        secrets, 6,
        "admin, storefront, payment, payment smoke, partner, webhook"
    );
}

/// The flat TOML keys of earlier versions are the variables' names without `CARTBUS_`:
/// no two settings may share one, nor a dotted key.
#[test]
fn keys_and_variables_are_unique() {
    let mut seen = std::collections::BTreeSet::new();
    for setting in settings::SETTINGS {
        assert!(seen.insert(setting.env.to_string()), "{}", setting.env);
        assert!(seen.insert(setting.key.to_string()), "{}", setting.key);
        if setting.flat_key() != setting.key {
            assert!(seen.insert(setting.flat_key()), "{}", setting.flat_key());
        }
    }
}

#[test]
fn the_configured_webhook_needs_a_standard_webhooks_secret_and_shows_neither() {
    const KEY: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let url = ("CARTBUS_WEBHOOK_URL", "https://shop.example/hooks?key=k3y");
    let err = |vars: &[(&str, &str)]| {
        Config::from_vars(vars.iter().copied())
            .expect_err("refused")
            .to_string()
    };
    assert!(err(&[url]).contains("CARTBUS_WEBHOOK_SECRET"));
    assert!(err(&[("CARTBUS_WEBHOOK_SECRET", KEY)]).contains("without CARTBUS_WEBHOOK_URL"));
    let not_whsec = err(&[url, ("CARTBUS_WEBHOOK_SECRET", "plain-s3cret-value-1234")]);
    assert!(
        not_whsec.contains("whsec_") && !not_whsec.contains("s3cret"),
        "{not_whsec}"
    );
    let with_user = err(&[
        ("CARTBUS_WEBHOOK_URL", "https://u:pa55@shop.example/"),
        ("CARTBUS_WEBHOOK_SECRET", KEY),
    ]);
    assert!(!with_user.contains("pa55"), "{with_user}");
    let events = err(&[
        url,
        ("CARTBUS_WEBHOOK_SECRET", KEY),
        ("CARTBUS_WEBHOOK_EVENTS", "order.shipped"),
    ]);
    assert!(events.contains("order.shipped"), "{events}");
    let networks = err(&[("CARTBUS_WEBHOOK_ALLOW_NETWORKS", "10.0.0.0/8,intranet")]);
    assert!(networks.contains("`intranet`"), "{networks}");

    let rotating = format!(
        "{},{KEY}",
        crate::domain::webhook::Secret::generate().expose()
    );
    let config = Config::from_vars([
        url,
        ("CARTBUS_WEBHOOK_SECRET", rotating.as_str()),
        ("CARTBUS_WEBHOOK_EVENTS", "checkout.ordered"),
        ("CARTBUS_WEBHOOK_ALLOW_NETWORKS", "10.20.0.0/16, 127.0.0.1"),
    ])
    .expect("valid");
    let configured = config.webhooks.configured.expect("an endpoint");
    assert_eq!(configured.secrets.len(), 2);
    assert!(configured.events.wants("checkout.ordered"));
    assert!(!configured.events.wants("checkout.rejected"));
    assert_eq!(config.webhooks.allow_networks.len(), 2);
}
