//! A storefront's webhook receiver on this machine, for the drain's webhook figures: it
//! checks each call's signature as a receiver must (HMAC-SHA256 over `id.timestamp.body`),
//! counts each event id once, and answers 204.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use cartbus::domain::webhook::Secret;

#[derive(Default)]
struct Seen {
    ids: HashSet<String>,
    calls: u64,
    refused: u64,
}

pub struct Receiver {
    pub url: String,
    pub secret: Secret,
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub async fn start() -> anyhow::Result<Receiver> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/hooks", listener.local_addr()?);
        let secret = Secret::generate();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let app = Router::new()
            .route("/hooks", post(take))
            .with_state((secret.clone(), seen.clone()));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Receiver {
            url,
            secret,
            seen,
            task,
        })
    }

    /// What cartbus needs to call it.
    pub fn env(&self) -> [(String, String); 3] {
        [
            ("CARTBUS_WEBHOOK_URL".into(), self.url.clone()),
            (
                "CARTBUS_WEBHOOK_SECRET".into(),
                self.secret.expose().to_string(),
            ),
            (
                "CARTBUS_WEBHOOK_ALLOW_NETWORKS".into(),
                "127.0.0.0/8".into(),
            ),
        ]
    }

    /// Distinct events taken, calls, and calls refused for a bad signature.
    pub fn counts(&self) -> (u64, u64, u64) {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        (seen.ids.len() as u64, seen.calls, seen.refused)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn take(
    State((secret, seen)): State<(Secret, Arc<Mutex<Seen>>)>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let (id, timestamp) = (header("webhook-id"), header("webhook-timestamp"));
    let expected = secret.sign(&id, timestamp.parse().unwrap_or_default(), &body);
    let signed = header("webhook-signature")
        .split(' ')
        .any(|s| s == expected);
    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    seen.calls += 1;
    if !signed {
        seen.refused += 1;
        return StatusCode::UNAUTHORIZED;
    }
    seen.ids.insert(id);
    StatusCode::NO_CONTENT
}
