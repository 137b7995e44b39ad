//! HAProxy in front of test instances, started from the shipped
//! `deploy/haproxy/cartbus.cfg` (its `${…}` settings given through the environment), and
//! its runtime API over the stats socket.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{DEADLINE, services_required, skipped};

/// The shipped configuration: the file the tests run is the file operators copy.
pub const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/haproxy/cartbus.cfg");

/// The `haproxy` binary: `CARTBUS_TEST_HAPROXY`, else on `PATH` or in `/usr/sbin`; `None`
/// (skipped, said loudly) when there is none, a failure when services are required.
pub fn binary(test: &str) -> Option<PathBuf> {
    let configured = std::env::var_os("CARTBUS_TEST_HAPROXY").map(PathBuf::from);
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("haproxy"));
    match configured.into_iter().chain(on_path).find(|p| p.is_file()) {
        Some(found) => Some(found),
        None if services_required() => {
            panic!(
                "CARTBUS_REQUIRE_SERVICES=1 but haproxy is not installed (apt-get install haproxy)"
            )
        }
        None => {
            skipped(
                test,
                "needs HAProxy 2.6+; apt-get install haproxy, or set CARTBUS_TEST_HAPROXY",
            );
            None
        }
    }
}

/// A free TCP port on 127.0.0.1 (bound, read and released: a fixed address HAProxy's
/// configuration can name before the instance behind it starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One HAProxy process; killed when dropped.
pub struct Haproxy {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
    /// The storefront's URL: HAProxy's frontend.
    pub base: String,
}

impl Haproxy {
    /// Starts `binary` on the shipped configuration with `servers` (`CARTBUS_BLUE1` …
    /// `CARTBUS_GREEN2` → address) and `retries`; waits until its runtime API answers.
    pub async fn start(
        binary: &Path,
        dir: &Path,
        servers: &[(&str, String)],
        retries: u32,
    ) -> Haproxy {
        let socket = dir.join("haproxy.sock");
        let log = dir.join("haproxy.log");
        let port = free_port();
        let mut command = Command::new(binary);
        command
            .args(["-db", "-f", CONFIG])
            .env("CARTBUS_HAPROXY_SOCKET", &socket)
            .env("CARTBUS_HAPROXY_BIND", format!("127.0.0.1:{port}"))
            .env("CARTBUS_HAPROXY_RETRIES", retries.to_string())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("haproxy log file"))
            .stderr(std::fs::File::create(dir.join("haproxy.err")).expect("haproxy err file"));
        for (key, value) in servers {
            command.env(key, value);
        }
        let child = command.spawn().expect("start haproxy");
        let haproxy = Haproxy {
            child,
            socket,
            log,
            base: format!("http://127.0.0.1:{port}"),
        };
        let started = Instant::now();
        while haproxy.try_command("show info").await.is_err() {
            assert!(
                started.elapsed() < DEADLINE,
                "haproxy did not start: {}",
                std::fs::read_to_string(dir.join("haproxy.err")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        haproxy
    }

    async fn try_command(&self, command: &str) -> std::io::Result<String> {
        let mut stream = tokio::net::UnixStream::connect(&self.socket).await?;
        stream.write_all(format!("{command}\n").as_bytes()).await?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await?;
        Ok(answer)
    }

    /// One runtime-API command (`show stat`, `show servers state`…): its answer.
    pub async fn command(&self, command: &str) -> String {
        self.try_command(command)
            .await
            .unwrap_or_else(|e| panic!("haproxy runtime API, {command:?}: {e}"))
    }

    /// `set server cartbus/<server> state <state>` (ready, drain or maint); HAProxy
    /// answers nothing when it took the change, else why not.
    pub async fn set_state(&self, server: &str, state: &str) {
        let command = format!("set server cartbus/{server} state {state}");
        let answer = self.command(&command).await;
        assert_eq!(answer.trim(), "", "haproxy refused {command:?}");
    }

    /// A field of `show stat` for one server of the `cartbus` backend (or `BACKEND`),
    /// by its CSV header name (`status`, `stot`, `wretr`, `wredis`…).
    pub async fn stat(&self, server: &str, field: &str) -> String {
        let csv = self.command("show stat").await;
        let mut lines = csv.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or_default()
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let column = header
            .iter()
            .position(|h| *h == field)
            .unwrap_or_else(|| panic!("no {field} in show stat: {header:?}"));
        lines
            .map(|line| line.split(',').collect::<Vec<_>>())
            .find(|row| row.first() == Some(&"cartbus") && row.get(1) == Some(&server))
            .and_then(|row| row.get(column).map(|v| v.to_string()))
            .unwrap_or_else(|| panic!("no server {server} in show stat"))
    }

    /// Waits until HAProxy's own health checks say `server` is `status` (`UP`, `DOWN`,
    /// `MAINT`, `DRAIN`), transitions ("UP 1/2") not counted.
    pub async fn wait_status(&self, server: &str, status: &str) {
        let started = Instant::now();
        loop {
            let now = self.stat(server, "status").await;
            if now == status {
                return;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "haproxy never saw {server} {status} (last: {now})"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// HAProxy's access log (one line per request), for a failed assertion's message.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
