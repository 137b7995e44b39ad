//! A storefront's webhook receiver for the tests: tests/webhooks/receiver.py, which
//! verifies every call with Python's `standardwebhooks` (an implementation independent of
//! cartbus's) and writes each call to a journal the test reads.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

use super::{services_required, skipped};

/// The python that has `standardwebhooks`, or `None` (skipped, said loudly).
pub fn python(test: &str) -> Option<String> {
    match std::env::var("CARTBUS_TEST_WEBHOOK_PYTHON") {
        Ok(python) if !python.is_empty() => Some(python),
        _ if services_required() => {
            panic!("CARTBUS_REQUIRE_SERVICES=1 but CARTBUS_TEST_WEBHOOK_PYTHON is not set")
        }
        _ => {
            skipped(
                test,
                "needs Python's standardwebhooks; set CARTBUS_TEST_WEBHOOK_PYTHON to a python that has it (.ci/run makes one from tests/webhooks/requirements.txt)",
            );
            None
        }
    }
}

pub struct Receiver {
    child: Child,
    pub base: String,
    journal: PathBuf,
    http: reqwest::Client,
}

impl Receiver {
    pub fn start(python: &str, dir: &Path) -> Receiver {
        let journal = dir.join("webhook-journal.jsonl");
        let mut child = Command::new(python)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/webhooks/receiver.py"
            ))
            .arg(&journal)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the webhook receiver");
        let stdout = child.stdout.take().expect("stdout piped");
        let mut first = String::new();
        BufReader::new(stdout)
            .read_line(&mut first)
            .expect("the receiver says its port");
        let port = serde_json::from_str::<Value>(&first).expect("port line")["port"]
            .as_u64()
            .expect("a port");
        Receiver {
            child,
            base: format!("http://127.0.0.1:{port}"),
            journal,
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn put(&self, what: &str, path: &str, body: Value) {
        let response = self
            .http
            .put(format!("{}/_{what}{path}", self.base))
            .json(&body)
            .send()
            .await
            .expect("receiver answers");
        assert_eq!(response.status(), 204);
    }

    /// The secrets `path` accepts from now on.
    pub async fn accept(&self, path: &str, secrets: &[&str]) {
        self.put("secrets", path, json!(secrets)).await;
    }

    /// How `path` answers from now on: `{"fail": N, "hang": N, "hang_seconds": S, "gone": b}`.
    pub async fn behave(&self, path: &str, behaviour: Value) {
        self.put("behave", path, behaviour).await;
    }

    /// Every call so far, in the order they came.
    pub fn journal(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.journal)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// The calls to `path`.
    pub fn calls(&self, path: &str) -> Vec<Value> {
        self.journal()
            .into_iter()
            .filter(|c| c["path"] == path)
            .collect()
    }

    /// Sends a call of the test's own making (a forgery, say); the status it got.
    pub async fn post(&self, path: &str, headers: &[(&str, String)], body: &str) -> u16 {
        let mut request = self.http.post(self.url(path)).body(body.to_string());
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        request
            .send()
            .await
            .expect("receiver answers")
            .status()
            .as_u16()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
