//! Two datacenters (issue 19): sites `eu` and `us`, each a whole deployment — two cartbus
//! instances, its own RabbitMQ node (standalone, not clustered) and its own PostgreSQL
//! database — and one `cartbus-partner` attached to both brokers, with a key of its own
//! for `us`. Then:
//! 1. 500 carts per site: every order reaches the partner exactly once from its own site,
//!    every reply is applied in its own site's database, none crosses;
//! 2. a reply posted to the wrong site is dead-lettered `wrong-datacenter` there (counted,
//!    listed by reason), and one for an order no site has stays `unknown-order`;
//! 3. `us`'s broker stopped for 30 s under load on both: `eu`'s orders and replies flow
//!    on, `us` writes its checkouts directly and catches up once its broker is back;
//! 4. `us` paused for a swap: `eu` keeps converting; `us` drains on resume.
//!
//! At the end each site's ledger holds: every cart its storefront saw accepted is exactly
//! one order there, and no order it did not accept.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cartbus::domain::partner::{self as message, StatusReply};
use common::cluster::Standalone;
use common::load::{Load, assert_ledger};
use common::{Backend, Process, Settings, client, consumer_cli, metrics_text, sample};
use futures::StreamExt;
use serde_json::Value;
use uuid::Uuid;

const TEST: &str = "two_sites_each_reply_comes_home";
const TOKEN: &str = "datacenters-admin-token-0123";
/// The partner's key: `eu` checks it; `us` has one of its own (`CARTBUS_SITE_US_SECRET`).
const EU_SECRET: &str = "acme-key-for-every-site-0001";
const US_SECRET: &str = "acme-key-for-site-us-0002";
const CARTS_PER_SITE: usize = 500;
const OUTAGE: Duration = Duration::from_secs(30);
/// Catching up after the outage (hundreds of orders, each with two replies) and the
/// brokers starting take longer than the usual "soon".
const SLOW: Duration = Duration::from_secs(120);

struct Site {
    name: &'static str,
    url: String,
    backend: Backend,
    dir: tempfile::TempDir,
    settings: Settings,
    instances: Vec<Process>,
}

impl Site {
    async fn start(name: &'static str, port: u16, admin: &str, secret: &str) -> Site {
        let backend = Backend::Postgres(common::fresh_postgres(admin).await);
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("amqp://guest:guest@127.0.0.1:{port}");
        // The same queue names on both sites, as a real deployment would have them.
        let settings = Settings::new(dir.path(), &backend)
            .set("CARTBUS_QUEUE_URL", &url)
            .set("CARTBUS_DATACENTER", name)
            .set("CARTBUS_ROUTES", "*=acme")
            .set("CARTBUS_PARTNER_ACME_SECRET", secret)
            .set("CARTBUS_ADMIN_TOKEN", TOKEN);
        let instances = (1..=2)
            .map(|n| {
                Process::start(
                    &settings.with("CARTBUS_INSTANCE", format!("{name}-{n}")),
                    &[],
                )
            })
            .collect();
        Site {
            name,
            url,
            backend,
            dir,
            settings,
            instances,
        }
    }

    fn bases(&self) -> Vec<String> {
        self.instances.iter().map(|p| p.base.clone()).collect()
    }

    async fn count(&self, sql: &'static str) -> i64 {
        let rows: Vec<(i64,)> = common::orders_db_rows(&self.backend, self.dir.path(), sql).await;
        rows.first().map_or(0, |row| row.0)
    }

    async fn orders(&self) -> i64 {
        self.count("SELECT count(*) FROM orders").await
    }

    async fn shipped(&self) -> i64 {
        self.count("SELECT count(*) FROM order_status WHERE status = 'shipped'")
            .await
    }

    async fn order_ids(&self) -> HashSet<Uuid> {
        let rows: Vec<(Uuid,)> =
            common::orders_db_rows(&self.backend, self.dir.path(), "SELECT id FROM orders").await;
        rows.into_iter().map(|row| row.0).collect()
    }

    /// Open dead letters by reason.
    async fn dead_letters(&self) -> HashMap<String, i64> {
        let rows: Vec<(String, i64)> = common::orders_db_rows(
            &self.backend,
            self.dir.path(),
            "SELECT reason, count(*) FROM dead_letters GROUP BY reason",
        )
        .await;
        rows.into_iter().collect()
    }

    /// Waits until every order here has its `shipped` reply applied; how long it took.
    async fn all_shipped(&self, expected: usize) -> Duration {
        let started = Instant::now();
        loop {
            let (orders, shipped) = (self.orders().await, self.shipped().await);
            if orders == expected as i64 && shipped == orders {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < SLOW,
                "{}: {shipped} of {orders} orders shipped (expected {expected} orders)",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A partner reply sent straight onto this site's status queue, with cartbus's own
    /// AMQP client.
    async fn post_reply(&self, reply: &StatusReply, key: &str, datacenter: &str) {
        let config = self.settings.config();
        let db = cartbus::store::Db::connect_lazy(&config).expect("database settings");
        let queue = cartbus::open_queue(&config, &db, &cartbus::metrics::Metrics::new()).await;
        let message = message::reply(reply, key.as_bytes(), Some(datacenter));
        // The connection opens in the background: sent once it is up.
        common::eventually("the reply posted", || async {
            let sent = queue.send(&config.fulfilment.status_address, message.clone());
            sent.await.ok()
        })
        .await;
        queue.shutdown().await;
    }

    /// The sum over this site's instances of one metric sample.
    async fn metric(&self, name: &str) -> f64 {
        let mut total = 0.0;
        for base in self.bases() {
            total += sample(&metrics_text(&client(), &base).await, name).unwrap_or(0.0);
        }
        total
    }
}

/// `cartbus-partner` serving both sites (its log in `partner.log` beside the journal);
/// stopped by SIGINT when dropped.
struct Partner {
    child: Child,
    journal: PathBuf,
}

impl Partner {
    fn start(sites: &[&Site], dir: &std::path::Path) -> Partner {
        let journal = dir.join("partner.jsonl");
        let mut command = Command::new(env!("CARGO_BIN_EXE_cartbus-partner"));
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CARTBUS_DATA_DIR", dir)
            .env("CARTBUS_PARTNER_ACME_SECRET", EU_SECRET)
            .env("CARTBUS_SITE_US_SECRET", US_SECRET)
            .args(["--partner", "acme", "--receive-after-ms", "20"])
            .args(["--ship-after-ms", "100", "--journal"])
            .arg(&journal)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("partner.log")).expect("partner log"));
        for site in sites {
            command
                .arg("--site")
                .arg(format!("{}={}", site.name, site.url));
        }
        Partner {
            child: command.spawn().expect("start cartbus-partner"),
            journal,
        }
    }

    /// Every line of the journal so far.
    fn journal(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.journal)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).expect("a journal line is JSON"))
            .collect()
    }
}

impl Drop for Partner {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// Posts `n` fresh carts to the site's instances, 16 at a time; their cart ids (every
/// one must be accepted).
async fn post_carts(site: &Site, n: usize) -> Vec<String> {
    let http = client();
    let bases = site.bases();
    let answers: Vec<(String, u16)> = futures::stream::iter(0..n)
        .map(|i| {
            let (http, base) = (http.clone(), bases[i % bases.len()].clone());
            async move {
                let cart = common::cart();
                let status = common::post_cart(&http, &base, &cart)
                    .await
                    .status()
                    .as_u16();
                (
                    cart["cart_id"].as_str().unwrap_or_default().to_string(),
                    status,
                )
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let refused: Vec<_> = answers.iter().filter(|(_, s)| *s != 202).collect();
    assert!(refused.is_empty(), "{}: not queued: {refused:?}", site.name);
    answers.into_iter().map(|(cart, _)| cart).collect()
}

/// The journal against the sites' databases: every order arrived on, named and was
/// answered on the site that holds it, and every reply went back there. Returns the
/// distinct orders taken per site and how many were taken more than once (at least once:
/// a send in flight when its broker stopped may be sent again).
fn no_crossing(
    journal: &[Value],
    owner: &HashMap<Uuid, &'static str>,
) -> (HashMap<&'static str, usize>, usize) {
    let mut taken: HashMap<Uuid, usize> = HashMap::new();
    let mut per_site: HashMap<&'static str, usize> = HashMap::new();
    for line in journal {
        let order_id: Uuid = serde_json::from_value(line["order_id"].clone()).expect("order id");
        let home = *owner
            .get(&order_id)
            .unwrap_or_else(|| panic!("the partner saw an order no site holds: {line}"));
        match line["event"].as_str() {
            Some("order") => {
                for field in ["arrived_on", "datacenter", "answer_on"] {
                    assert_eq!(line[field], home, "crossed: {line}");
                }
                assert!(
                    line["reply_broker"]
                        .as_str()
                        .is_some_and(|b| !b.contains('@')),
                    "reply_broker without credentials: {line}"
                );
                let times = taken.entry(order_id).or_default();
                *times += 1;
                if *times == 1 {
                    *per_site.entry(home).or_default() += 1;
                }
            }
            Some("reply") => {
                assert_eq!(line["sent_on"], home, "crossed: {line}");
                assert_eq!(line["datacenter"], home, "crossed: {line}");
            }
            _ => panic!("unexpected journal line {line}"),
        }
    }
    let again = taken.values().filter(|n| **n > 1).count();
    (per_site, again)
}

async fn owners(sites: &[&Site]) -> HashMap<Uuid, &'static str> {
    let mut owner = HashMap::new();
    for site in sites {
        for id in site.order_ids().await {
            assert!(
                owner.insert(id, site.name).is_none(),
                "order {id} in two sites"
            );
        }
    }
    owner
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sites_each_reply_comes_home() {
    let Some(admin) = common::postgres_admin_url(TEST) else {
        return;
    };
    let Some(nodes) = Standalone::start(TEST, &["eu", "us"]) else {
        return;
    };
    let eu = Site::start("eu", 5691, &admin, EU_SECRET).await;
    let us = Site::start("us", 5692, &admin, US_SECRET).await;
    let partner_dir = tempfile::tempdir().expect("tempdir");
    let partner = Partner::start(&[&eu, &us], partner_dir.path());

    // 1. 500 carts per site, both at once.
    let started = Instant::now();
    let (eu_carts, us_carts) = tokio::join!(
        post_carts(&eu, CARTS_PER_SITE),
        post_carts(&us, CARTS_PER_SITE)
    );
    let (eu_took, us_took) = tokio::join!(
        eu.all_shipped(CARTS_PER_SITE),
        us.all_shipped(CARTS_PER_SITE)
    );
    let owner = owners(&[&eu, &us]).await;
    let (taken, again) = no_crossing(&partner.journal(), &owner);
    assert_eq!(again, 0, "an order reached the partner twice");
    for site in [&eu, &us] {
        assert_eq!(taken.get(site.name), Some(&CARTS_PER_SITE), "{}", site.name);
        let applied = site
            .count("SELECT count(*) FROM order_status WHERE status IN ('received_by_partner', 'shipped')")
            .await;
        assert_eq!(
            applied,
            2 * CARTS_PER_SITE as i64,
            "{}: replies applied",
            site.name
        );
        assert!(
            site.dead_letters().await.is_empty(),
            "{}: a reply crossed",
            site.name
        );
    }
    assert_ledger(&eu.backend, eu.dir.path(), &eu_carts, true).await;
    assert_ledger(&us.backend, us.dir.path(), &us_carts, true).await;
    common::note(&format!(
        "datacenters, {CARTS_PER_SITE} carts per site: eu {} orders, {} replies applied ({} ms), us {} orders, {} replies applied ({} ms), crossed 0; all in {} ms",
        taken["eu"],
        2 * CARTS_PER_SITE,
        eu_took.as_millis(),
        taken["us"],
        2 * CARTS_PER_SITE,
        us_took.as_millis(),
        started.elapsed().as_millis()
    ));

    // 2. A reply on the wrong site: signed with the key `us` checks (the partner took the
    // wrong connection), about an `eu` order, naming `eu`.
    let eu_order = *owner
        .iter()
        .find(|(_, site)| **site == "eu")
        .map(|(id, _)| id)
        .expect("an eu order");
    let reply = |order_id| StatusReply {
        order_id,
        status: "delivered".into(),
        tracking_id: Some("TRK-FORGED".into()),
        partner: "acme".into(),
    };
    us.post_reply(&reply(eu_order), US_SECRET, "eu").await;
    // One about an order no site has, naming `us` itself: unknown, not wrong-datacenter.
    us.post_reply(&reply(Uuid::new_v4()), US_SECRET, "us").await;
    let letters = common::eventually("both replies dead-lettered in us", || async {
        let letters = us.dead_letters().await;
        (letters.values().sum::<i64>() == 2).then_some(letters)
    })
    .await;
    assert_eq!(letters.get("wrong-datacenter"), Some(&1), "{letters:?}");
    assert_eq!(letters.get("unknown-order"), Some(&1), "{letters:?}");
    assert!(eu.dead_letters().await.is_empty());
    assert_eq!(
        us.metric("cartbus_partner_replies_total{outcome=\"wrong-datacenter\"}")
            .await,
        1.0
    );
    let gauge = common::eventually("cartbus_dead_letters shows it", || async {
        let n = us
            .metric("cartbus_dead_letters{reason=\"wrong-datacenter\"}")
            .await;
        (n >= 1.0).then_some(n)
    })
    .await;
    assert!(gauge >= 1.0);
    let (status, listed) = common::admin_call(
        &client(),
        &us.bases()[0],
        TOKEN,
        reqwest::Method::GET,
        "/v1/admin/dead-letters?reason=wrong-datacenter",
        None,
    )
    .await;
    assert_eq!(status, 200, "{listed}");
    let detail = listed["items"][0]["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("\"eu\""),
        "the detail names the site: {detail}"
    );
    let eu_history = eu
        .count("SELECT count(*) FROM order_status WHERE status = 'delivered'")
        .await;
    assert_eq!(
        eu_history, 0,
        "a reply on the wrong site changed nothing at home"
    );
    common::note(&format!("datacenters, wrong site: {detail}"));

    // 3. `us`'s broker stopped for 30 s under load on both sites.
    let (eu_load, us_load) = (Load::start(&eu.bases(), 2), Load::start(&us.bases(), 2));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let eu_shipped_before = eu.shipped().await;
    nodes.stop("us");
    let stopped = Instant::now();
    let us_orders_at_stop = us.orders().await;
    // Watch `eu` through the outage: its orders and replies flow on.
    let mut eu_shipped_during = eu_shipped_before;
    while stopped.elapsed() < OUTAGE {
        tokio::time::sleep(Duration::from_millis(500)).await;
        eu_shipped_during = eu.shipped().await;
    }
    let us_direct_during = us.orders().await - us_orders_at_stop;
    nodes.up("us");
    let back = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (eu_tally, us_tally) = (eu_load.finish().await, us_load.finish().await);
    assert!(eu_tally.nothing_failed(), "eu: {}", eu_tally.failures());
    assert!(us_tally.nothing_failed(), "us: {}", us_tally.failures());
    assert!(
        us_tally.direct > 0,
        "us wrote nothing directly: {}",
        us_tally.figures()
    );
    let eu_flowed = eu_shipped_during - eu_shipped_before;
    assert!(
        eu_flowed > 50,
        "eu shipped only {eu_flowed} during us's outage"
    );
    let eu_total = CARTS_PER_SITE + eu_tally.accepted.len();
    let us_total = CARTS_PER_SITE + us_tally.accepted.len();
    let (_, catch_up) = tokio::join!(eu.all_shipped(eu_total), us.all_shipped(us_total));
    let catch_up = back.elapsed().max(catch_up);
    common::note(&format!(
        "datacenters, us broker stopped {} s: eu shipped {eu_flowed} meanwhile ({}); us wrote {us_direct_during} orders directly ({}); us caught up {} ms after its broker was back",
        OUTAGE.as_secs(),
        eu_tally.figures(),
        us_tally.figures(),
        catch_up.as_millis()
    ));

    // 4. `us` paused for a swap: `eu` converts on, `us` holds its carts until resumed.
    let (code, out, err) = consumer_cli(
        &us.bases()[0],
        Some(TOKEN),
        &["pause", "--reason", "swap us", "--wait", "60"],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = consumer_cli(&us.bases()[0], Some(TOKEN), &["status"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("datacenter: us"),
        "the operator sees which site: {out}"
    );
    let (code, out, _) = consumer_cli(&eu.bases()[0], Some(TOKEN), &["status"]).await;
    assert!(
        code == 0 && out.contains("switch: running"),
        "eu untouched: {out}"
    );
    let (eu_orders_before, us_orders_paused) = (eu.orders().await, us.orders().await);
    let (eu_load, us_load) = (Load::start(&eu.bases(), 2), Load::start(&us.bases(), 2));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (eu_swap, us_swap) = (eu_load.finish().await, us_load.finish().await);
    assert!(eu_swap.nothing_failed() && us_swap.nothing_failed());
    let eu_orders_during = eu.orders().await - eu_orders_before;
    assert!(
        eu_orders_during > 0,
        "eu converted nothing while us was paused"
    );
    assert_eq!(
        us.orders().await,
        us_orders_paused,
        "us converted while paused"
    );
    let (code, out, err) = consumer_cli(&us.bases()[0], Some(TOKEN), &["resume"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let eu_carts: Vec<String> = [eu_carts, eu_tally.accepted, eu_swap.accepted].concat();
    let us_carts: Vec<String> = [us_carts, us_tally.accepted, us_swap.accepted].concat();
    let drained = us.all_shipped(us_carts.len()).await;
    eu.all_shipped(eu_carts.len()).await;
    common::note(&format!(
        "datacenters, us paused: eu converted {eu_orders_during} orders meanwhile, us 0; us drained {} queued carts in {} ms after resume",
        us_swap.queued,
        drained.as_millis()
    ));

    // The whole run: each site's ledger, and no order or reply crossed.
    let eu_ledger = assert_ledger(&eu.backend, eu.dir.path(), &eu_carts, true).await;
    let us_ledger = assert_ledger(&us.backend, us.dir.path(), &us_carts, true).await;
    let owner = owners(&[&eu, &us]).await;
    let (taken, again) = no_crossing(&partner.journal(), &owner);
    assert_eq!(
        taken.get("eu"),
        Some(&eu_carts.len()),
        "eu: orders the partner took"
    );
    assert_eq!(
        taken.get("us"),
        Some(&us_carts.len()),
        "us: orders the partner took"
    );
    common::note(&format!(
        "datacenters, whole run: eu {eu_ledger}; us {us_ledger}; partner took eu {}, us {} (again after the outage: {again}); crossed 0",
        taken["eu"], taken["us"]
    ));
}
