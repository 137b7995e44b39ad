//! A three-node RabbitMQ cluster beside the system node, run by
//! `tests/cluster/rabbitmq-cluster.sh` (nodes ra, rb, rc on AMQP 5681-5683, management
//! 15681-15683), for tests/cluster.rs and the fault campaign's cluster stack; and
//! standalone nodes (eu on 5691, us on 5692), one broker per site for tests/datacenters.rs.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Backend, Settings, client, services_required, skipped};

/// The nodes' settings as cartbus takes them.
pub const QUEUE_URL: &str = "amqp://guest:guest@127.0.0.1:5681,127.0.0.1:5682,127.0.0.1:5683";
pub const MANAGEMENT_URL: &str =
    "http://guest:guest@127.0.0.1:15681,127.0.0.1:15682,127.0.0.1:15683";

pub const NODES: [(&str, u16); 3] = [("ra", 5681), ("rb", 5682), ("rc", 5683)];
/// Stopping or starting a node and its quorum members catching up take longer than the
/// usual "soon".
pub const NODE_DEADLINE: Duration = Duration::from_secs(90);

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/cluster/rabbitmq-cluster.sh")
}

/// The cluster, removed (nodes stopped, data deleted) when dropped.
pub struct Cluster;

/// Whether this machine can start RabbitMQ nodes of its own; if not, says so (skipped)
/// or, where services are required, fails.
fn can_start_nodes(test: &str) -> bool {
    let can = Command::new("sh")
        .args(["-c", "command -v rabbitmq-server && [ \"$(id -u)\" = 0 ]"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !can {
        assert!(
            !services_required(),
            "CARTBUS_REQUIRE_SERVICES=1 but {test} cannot start RabbitMQ nodes (needs rabbitmq-server and root)"
        );
        skipped(
            test,
            "needs rabbitmq-server and root to run RabbitMQ nodes of its own",
        );
    }
    can
}

impl Cluster {
    /// Starts the cluster, or `None` (skipped, said loudly) where it cannot run: it needs
    /// `rabbitmq-server` and root (the nodes run as the `rabbitmq` user).
    pub fn start(test: &str) -> Option<Cluster> {
        if !can_start_nodes(test) {
            return None;
        }
        run_script(None, &["start"]);
        Some(Cluster)
    }

    pub fn kill(&self, node: &str) {
        run_script(None, &["kill", node]);
    }

    pub fn stop(&self, node: &str) {
        run_script(None, &["stop", node]);
    }

    pub fn up(&self, node: &str) {
        run_script(None, &["up", node]);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("remove").output();
    }
}

/// Separate RabbitMQ nodes, never clustered, each with its data under a directory of
/// their own; stopped and deleted when dropped.
pub struct Standalone {
    dir: tempfile::TempDir,
}

impl Standalone {
    /// Starts `nodes` (`eu`, `us`), or `None` (skipped, said loudly) as [`Cluster::start`].
    pub fn start(test: &str, nodes: &[&str]) -> Option<Standalone> {
        if !can_start_nodes(test) {
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        // The nodes run as the `rabbitmq` user: it must reach its data under this.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("open the nodes' directory to rabbitmq");
        let standalone = Standalone { dir };
        // Side by side: each node has its own directory, and a start takes ~10 s.
        std::thread::scope(|scope| {
            for node in nodes {
                scope.spawn(|| standalone.up(node));
            }
        });
        Some(standalone)
    }

    pub fn stop(&self, node: &str) {
        run_script(Some(self.dir.path()), &["stop", node]);
    }

    pub fn up(&self, node: &str) {
        run_script(Some(self.dir.path()), &["up", node]);
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .arg("remove")
            .env("CARTBUS_CLUSTER_DIR", self.dir.path())
            .output();
    }
}

/// Runs the script, on the nodes under `dir` (default: the cluster's).
fn run_script(dir: Option<&std::path::Path>, args: &[&str]) {
    let mut command = Command::new(script());
    if let Some(dir) = dir {
        command.env("CARTBUS_CLUSTER_DIR", dir);
    }
    let output = command
        .args(args)
        .output()
        .expect("run rabbitmq-cluster.sh");
    assert!(
        output.status.success(),
        "rabbitmq-cluster.sh {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

pub fn node_of_port(port: u16) -> &'static str {
    NODES
        .iter()
        .find(|(_, p)| *p == port)
        .map(|(n, _)| *n)
        .unwrap_or("?")
}

/// The management API of every node, tried in turn.
pub async fn management(path: &str) -> Option<Value> {
    for (_, port) in NODES {
        let answer = client()
            .get(format!("http://127.0.0.1:{}/api/{path}", port + 10_000))
            .basic_auth("guest", Some("guest"))
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        if let Ok(response) = answer
            && response.status().is_success()
            && let Ok(value) = response.json().await
        {
            return Some(value);
        }
    }
    None
}

/// Waits until every member of `queue` is online again (a kill before that could take
/// the majority).
pub async fn all_members_online(queue: &str) {
    let started = Instant::now();
    loop {
        if let Some(info) = management(&format!("queues/%2F/{queue}")).await
            && info["online"].as_array().map(Vec::len) == Some(3)
        {
            return;
        }
        assert!(
            started.elapsed() < NODE_DEADLINE,
            "{queue}'s members never all came back online"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Settings for an instance on the cluster: every node, quorum queues named by `tag` on
/// non-declaring addresses, the hand-off to partner `acme` on.
pub fn settings(dir: &std::path::Path, backend: &Backend, tag: &str) -> Settings {
    Settings::new(dir, backend)
        .set("CARTBUS_QUEUE_URL", QUEUE_URL)
        .set("CARTBUS_BROKER_MANAGEMENT_URL", MANAGEMENT_URL)
        .set("CARTBUS_AMQP_QUEUE_TYPE", "quorum")
        .set("CARTBUS_CART_ADDRESS", format!("/amq/queue/{tag}-carts"))
        .set("CARTBUS_ROUTES", "*=acme")
        .set(
            "CARTBUS_PARTNER_ACME_ADDRESS",
            format!("/amq/queue/{tag}-acme"),
        )
        .set("CARTBUS_STATUS_ADDRESS", format!("/amq/queue/{tag}-status"))
        .set("CARTBUS_AUDIT_ADDRESS", format!("/amq/queue/{tag}-audit"))
}

/// `cartbus broker setup` with `settings`: the quorum queues, then every member online.
pub async fn declare_queues(settings: &Settings, tag: &str) {
    let setup = Command::new(&settings.binary)
        .args(["broker", "setup"])
        .env_clear()
        .envs(settings.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("run cartbus broker setup");
    assert!(
        setup.status.success(),
        "{}{}",
        String::from_utf8_lossy(&setup.stdout),
        String::from_utf8_lossy(&setup.stderr)
    );
    all_members_online(&format!("{tag}-carts")).await;
}
