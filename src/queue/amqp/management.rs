//! RabbitMQ's management HTTP API, for what AMQP 1.0 cannot say or do: how many messages
//! a queue holds and how old the first is (the backlog on the deploy-window page, in
//! `/v1/admin/consumer` and `/metrics`), and declaring quorum queues and policies for
//! `cartbus broker setup`. With a cluster every call tries the nodes in turn.

use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::{Method, StatusCode};
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use crate::config::{ManagementConfig, QueueType};
use crate::queue::{QueueError, QueueStats};

/// Bound on one read of a queue's figures (the backlog is read with 1 s in all).
const READ_TIMEOUT: Duration = Duration::from_millis(900);
/// Bound on one declaration or policy (`cartbus broker setup`).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Management {
    config: ManagementConfig,
    /// The virtual host of the broker's first node (`/` when none is given).
    vhost: String,
    http: reqwest::Client,
    /// The last figures read for each queue, served marked stale when a read fails.
    last: Mutex<Vec<(String, QueueStats)>>,
}

/// What a declaration did.
#[derive(Debug, PartialEq, Eq)]
pub enum Declared {
    Created,
    /// It was there already, with the same type and arguments.
    Existed,
}

/// The queue an address names: `/queue/NAME` or `/amq/queue/NAME`; `None` for an exchange
/// or anything else (its depth is not a queue's).
pub fn queue_name(address: &str) -> Option<&str> {
    address
        .strip_prefix("/amq/queue/")
        .or_else(|| address.strip_prefix("/queue/"))
        .filter(|name| !name.is_empty() && !name.contains('/'))
}

impl Management {
    pub fn new(config: ManagementConfig, vhost: Option<&str>) -> Result<Management, QueueError> {
        let http = reqwest::Client::builder()
            .connect_timeout(READ_TIMEOUT)
            .build()
            .map_err(|e| QueueError::Unavailable(format!("management API client: {e}")))?;
        Ok(Management {
            config,
            vhost: vhost.unwrap_or("/").to_string(),
            http,
            last: Mutex::new(Vec::new()),
        })
    }

    /// The nodes' base URLs, for logs (no credentials).
    pub fn endpoints(&self) -> String {
        let all: Vec<&str> = self.config.nodes.iter().map(|n| n.base.as_str()).collect();
        all.join(", ")
    }

    /// `path` (under `/api/`) on the first node that answers; a node that cannot be
    /// reached or answers 5xx passes the call to the next.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<(StatusCode, String), QueueError> {
        let mut failures = Vec::new();
        for node in &self.config.nodes {
            let Ok(url) = node.base.join(&format!("api/{path}")) else {
                failures.push(format!("{}: bad path", node.base));
                continue;
            };
            let mut request = self
                .http
                .request(method.clone(), url)
                .basic_auth(&node.username, Some(node.password.expose_secret()))
                .timeout(timeout);
            if let Some(body) = body {
                request = request.json(body);
            }
            match request.send().await {
                Ok(response) if !response.status().is_server_error() => {
                    let status = response.status();
                    let text = response.text().await.unwrap_or_default();
                    return Ok((status, text));
                }
                Ok(response) => failures.push(format!("{}: HTTP {}", node.base, response.status())),
                // reqwest's error names the URL, which holds no credentials.
                Err(e) => failures.push(format!("{}: {e}", node.base)),
            }
        }
        Err(QueueError::Unavailable(format!(
            "management API: {}",
            failures.join("; ")
        )))
    }

    fn queue_path(&self, queue: &str) -> String {
        format!(
            "queues/{}/{}",
            utf8_percent_encode(&self.vhost, NON_ALPHANUMERIC),
            utf8_percent_encode(queue, NON_ALPHANUMERIC)
        )
    }

    /// The queue's depth (ready + unacknowledged) and the enqueue time of its first
    /// message where the broker reports it. A failed read serves the last good figures
    /// marked stale; with none, it fails.
    pub async fn stats(&self, queue: &str) -> Result<QueueStats, QueueError> {
        match self.read_stats(queue).await {
            Ok(stats) => {
                let mut last = self.lock();
                last.retain(|(q, _)| q != queue);
                last.push((queue.to_string(), stats.clone()));
                Ok(stats)
            }
            Err(e) => self
                .lock()
                .iter()
                .find(|(q, _)| q == queue)
                .map(|(_, stats)| QueueStats {
                    stale: true,
                    ..stats.clone()
                })
                .ok_or(e),
        }
    }

    async fn read_stats(&self, queue: &str) -> Result<QueueStats, QueueError> {
        let (status, body) = self
            .call(Method::GET, &self.queue_path(queue), None, READ_TIMEOUT)
            .await?;
        if !status.is_success() {
            return Err(QueueError::Unavailable(format!(
                "management API: queue {queue}: HTTP {status}"
            )));
        }
        let figures: Value = serde_json::from_str(&body)
            .map_err(|e| QueueError::Unavailable(format!("management API: queue {queue}: {e}")))?;
        // Null until the broker's first statistics interval after a declaration.
        let (Some(ready), Some(unacked)) = (
            figures["messages_ready"].as_u64(),
            figures["messages_unacknowledged"].as_u64(),
        ) else {
            return Err(QueueError::Unavailable(format!(
                "management API: queue {queue}: no message counts yet"
            )));
        };
        let oldest_enqueued_at = figures["head_message_timestamp"]
            .as_i64()
            .and_then(head_timestamp);
        Ok(QueueStats {
            depth: ready + unacked,
            oldest_enqueued_at,
            stale: false,
        })
    }

    /// Declares `queue` durable, of `queue_type`; an existing queue of another type or
    /// with other arguments is an error that says so (RabbitMQ never changes a queue's type).
    pub async fn declare(
        &self,
        queue: &str,
        queue_type: QueueType,
    ) -> Result<Declared, QueueError> {
        let kind = match queue_type {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        };
        let body =
            json!({ "durable": true, "auto_delete": false, "arguments": { "x-queue-type": kind } });
        let (status, text) = self
            .call(
                Method::PUT,
                &self.queue_path(queue),
                Some(&body),
                WRITE_TIMEOUT,
            )
            .await?;
        match status {
            StatusCode::CREATED => Ok(Declared::Created),
            StatusCode::NO_CONTENT => Ok(Declared::Existed),
            _ => Err(QueueError::Refused(format!(
                "declaring {queue} as a {kind} queue: HTTP {status}: {}",
                reason(&text)
            ))),
        }
    }

    /// Deletes `queue` (gone already is fine).
    pub async fn delete(&self, queue: &str) -> Result<(), QueueError> {
        let (status, text) = self
            .call(Method::DELETE, &self.queue_path(queue), None, WRITE_TIMEOUT)
            .await?;
        if status.is_success() || status == StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(QueueError::Refused(format!(
                "deleting {queue}: HTTP {status}: {}",
                reason(&text)
            )))
        }
    }

    /// Sets (or replaces) policy `name` on the queues matching `pattern`.
    pub async fn set_policy(
        &self,
        name: &str,
        pattern: &str,
        definition: Value,
    ) -> Result<(), QueueError> {
        let path = format!(
            "policies/{}/{}",
            utf8_percent_encode(&self.vhost, NON_ALPHANUMERIC),
            utf8_percent_encode(name, NON_ALPHANUMERIC)
        );
        let body = json!({ "pattern": pattern, "definition": definition, "apply-to": "queues" });
        let (status, text) = self
            .call(Method::PUT, &path, Some(&body), WRITE_TIMEOUT)
            .await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(QueueError::Refused(format!(
                "policy {name}: HTTP {status}: {}",
                reason(&text)
            )))
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(String, QueueStats)>> {
        self.last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The first message's timestamp property as RabbitMQ reports it: AMQP 0-9-1 publishers
/// set seconds, while the AMQP 1.0 plugin passes a message's creation-time through in
/// milliseconds (seen with 3.10). A value past the year 5000 in seconds is milliseconds.
fn head_timestamp(value: i64) -> Option<DateTime<Utc>> {
    const MILLIS_FROM: i64 = 100_000_000_000;
    if value >= MILLIS_FROM {
        DateTime::<Utc>::from_timestamp_millis(value)
    } else {
        DateTime::<Utc>::from_timestamp(value, 0)
    }
}

/// The `reason` of a management API error body, else the body itself (short).
fn reason(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["reason"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.chars().take(200).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_names_its_queue() {
        assert_eq!(queue_name("/queue/checkout-carts"), Some("checkout-carts"));
        assert_eq!(
            queue_name("/amq/queue/checkout-carts"),
            Some("checkout-carts")
        );
        assert_eq!(queue_name("/exchange/orders/new"), None);
        assert_eq!(queue_name("checkout-carts"), None);
        assert_eq!(queue_name("/queue/"), None);
    }

    #[test]
    fn a_head_timestamp_in_seconds_or_milliseconds_is_the_same_moment() {
        let at = DateTime::<Utc>::from_timestamp(1_796_588_333, 0);
        assert_eq!(head_timestamp(1_796_588_333), at);
        assert_eq!(head_timestamp(1_796_588_333_000), at);
    }
}
