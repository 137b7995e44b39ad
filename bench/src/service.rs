//! The cartbus under test: the release binary as a child process on an ephemeral port,
//! its readiness, its memory, its orders database, and its admin API.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cartbus::config::Config;
use cartbus::store::Db;
use serde_json::Value;

const TOKEN: &str = "cartbus-bench-admin-token";

/// A cartbus child process on an ephemeral port.
pub struct Service {
    child: Child,
    pub base: String,
}

impl Service {
    pub fn start(
        binary: &Path,
        env: &[(String, String)],
        extra: &[(&str, &str)],
    ) -> anyhow::Result<Service> {
        use std::io::{BufRead, BufReader};
        let mut command = match crate::cpu::service_core() {
            Some(core) => {
                let mut taskset = Command::new("taskset");
                taskset.arg("-c").arg(core.to_string()).arg(binary);
                taskset
            }
            None => Command::new(binary),
        };
        command
            .env("CARTBUS_LISTEN", "127.0.0.1:0")
            .env("CARTBUS_LOG_FORMAT", "json")
            .env("CARTBUS_LOG", "warn,cartbus=info")
            .env("CARTBUS_ADMIN_TOKEN", TOKEN)
            .env("CARTBUS_INSTANCE", "bench")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        for (k, v) in extra {
            command.env(k, v);
        }
        // A statement-timing profile: every statement cartbus runs, with its time,
        // appended to this file as JSON lines (sqlx's own `sqlx::query` events).
        let statements = std::env::var_os("CARTBUS_BENCH_STATEMENTS");
        if statements.is_some() {
            command.env("CARTBUS_LOG", "warn,cartbus=info,sqlx::query=debug");
        }
        let mut statements = match statements {
            Some(path) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
            None => None,
        };
        let mut child = command.spawn()?;
        let stderr = child.stderr.take().context("stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(file) = statements.as_mut() {
                    use std::io::Write;
                    let _ = writeln!(file, "{line}");
                }
                if let Ok(event) = serde_json::from_str::<Value>(&line)
                    && event["message"] == "cartbus listening"
                    && let Some(address) = event["address"].as_str()
                {
                    let _ = tx.send(address.to_string());
                }
            }
        });
        let address = rx
            .recv_timeout(Duration::from_secs(30))
            .context("cartbus did not start")?;
        Ok(Service {
            child,
            base: format!("http://{address}"),
        })
    }

    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = http.get(format!("{}/health/ready", self.base)).send().await;
            let queue_up = match ready {
                Ok(r) => r.json::<Value>().await.ok().map(|v| v["queue_up"] == true),
                Err(_) => None,
            };
            if queue_up.is_some() {
                // Give a broker connection a moment; direct-write runs have no queue.
                let status = admin(&self.base, "status", Value::Null).await;
                if queue_up == Some(true) || Instant::now() > deadline - Duration::from_secs(25) {
                    return status.map(drop);
                }
            }
            if Instant::now() > deadline {
                bail!("cartbus at {} not ready", self.base);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn status_field(&self, field: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with(field))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|n| n.parse().ok())
            })
            .unwrap_or(0)
    }

    /// The process id (under `--pin`, `taskset` has exec'd into cartbus: the same id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn rss_kib(&self) -> u64 {
        self.status_field("VmRSS:")
    }

    pub fn peak_rss_kib(&self) -> u64 {
        self.status_field("VmHWM:")
    }

    pub fn db(&self, env: &[(String, String)]) -> anyhow::Result<Db> {
        let config = Config::from_vars(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
        Ok(Db::connect_lazy(&config)?)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

/// The consumer's admin API: `status`, or a POST of `pause`/`resume` with `body`.
pub async fn admin(base: &str, action: &str, body: Value) -> anyhow::Result<(u16, Value)> {
    let http = reqwest::Client::new();
    let request = match action {
        "status" => http.get(format!("{base}/v1/admin/consumer")),
        _ => http
            .post(format!("{base}/v1/admin/consumer/{action}"))
            .json(&body),
    };
    let response = request.bearer_auth(TOKEN).send().await?;
    let code = response.status().as_u16();
    let value = response.json().await.unwrap_or(Value::Null);
    if code >= 300 {
        bail!("admin {action}: HTTP {code}: {value}");
    }
    Ok((code, value))
}
