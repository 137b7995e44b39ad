//! `cartbus consumer status|pause|resume`: the drain switch from a terminal or a deploy
//! script, through a running instance's admin API. Exit codes a script can use:
//! 0 done (for `pause --wait`: drained), 3 not drained when the wait ended, 4 wrong or
//! missing token, 5 admin API off on that instance, 6 refused (a bad request, or a resume
//! for a version no live instance runs), 7 held off after too many wrong tokens, 1
//! anything else (unreachable, server error).
//!
//! `cartbus config`: the settings this instance would run with. `cartbus broker setup`:
//! [`broker`].

pub mod broker;
pub mod smoke;

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde_json::{Value, json};

/// Where the CLI's two settings come from, and what the history records: shown by
/// `cartbus consumer --help`.
const CONSUMER_HELP: &str = "\
Settings: --url, else CARTBUS_ADMIN_URL, else http://127.0.0.1:8080;
          --token, else CARTBUS_ADMIN_TOKEN (the service's admin token; never printed).
The history records each change as \"<login> (cli) via <instance>\": <login> is $USER,
else $LOGNAME, else the login name of this process's user.
This CLI is the cartbus binary itself: `cargo install --path . --locked` puts it on
PATH, or run target/release/cartbus after `cargo build --release`.
Exit codes: 0 done, 3 not drained in time, 4 token missing or refused, 5 admin API off,
6 refused (bad request, or no live instance of the version), 7 held off, 1 other.";

#[derive(Args, Debug)]
#[command(after_help = CONSUMER_HELP)]
pub struct ConsumerArgs {
    /// Base URL of any cartbus instance (the load balancer will do).
    #[arg(
        long,
        env = "CARTBUS_ADMIN_URL",
        default_value = "http://127.0.0.1:8080",
        hide_env_values = true
    )]
    pub url: String,
    /// The admin token (CARTBUS_ADMIN_TOKEN of the service).
    #[arg(long, env = "CARTBUS_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print the service's JSON instead of a summary.
    #[arg(long)]
    pub json: bool,
    #[command(subcommand)]
    pub command: ConsumerCommand,
}

#[derive(Subcommand, Debug)]
pub enum ConsumerCommand {
    /// The switch, every live instance and the backlog.
    Status,
    /// Pause consuming on every instance.
    Pause {
        /// Why (kept in the history).
        #[arg(long)]
        reason: Option<String>,
        /// Lift the pause by itself at this RFC 3339 time.
        #[arg(long)]
        until: Option<String>,
        /// Wait up to this many seconds for every instance to report drained, showing
        /// progress; exit 3 if it does not.
        #[arg(long, value_name = "SECONDS")]
        wait: Option<u64>,
    },
    /// Resume consuming; only VERSION consumes (default: the answering instance's).
    /// A version no live instance runs is refused (exit 6, listing the live versions).
    Resume {
        #[arg(long)]
        version: Option<String>,
        /// Why (kept in the history).
        #[arg(long)]
        reason: Option<String>,
        /// Resume VERSION even though no live instance runs it: every instance stays
        /// passive until one does. Recorded in the history as `force-resume`.
        #[arg(long)]
        force: bool,
    },
}

const NOT_DRAINED: u8 = 3;
const UNAUTHORIZED: u8 = 4;
const ADMIN_OFF: u8 = 5;
const BAD_REQUEST: u8 = 6;
const HELD_OFF: u8 = 7;

pub async fn consumer(args: ConsumerArgs) -> ExitCode {
    match run(&args).await {
        Ok(code) => code,
        Err(Failure(code, message)) => {
            eprintln!("cartbus consumer: {message}");
            ExitCode::from(code)
        }
    }
}

struct Failure(u8, String);

async fn run(args: &ConsumerArgs) -> Result<ExitCode, Failure> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| Failure(1, format!("cannot build an HTTP client: {e}")))?;
    let token = args.token.as_deref().ok_or_else(|| {
        Failure(
            UNAUTHORIZED,
            "no admin token: set CARTBUS_ADMIN_TOKEN (the service's admin token) or pass --token"
                .into(),
        )
    })?;
    let admin = Admin {
        client,
        args,
        token,
        actor: actor(),
    };
    match &args.command {
        ConsumerCommand::Status => {
            let status = admin.get("/v1/admin/consumer").await?;
            admin.show(&status);
            Ok(ExitCode::SUCCESS)
        }
        ConsumerCommand::Resume {
            version,
            reason,
            force,
        } => {
            let mut body = json!({});
            if let Some(version) = version {
                body["version"] = json!(version);
            }
            if let Some(reason) = reason {
                body["reason"] = json!(reason);
            }
            if *force {
                body["force"] = json!(true);
            }
            let status = admin.post("/v1/admin/consumer/resume", body).await?;
            admin.show(&status);
            Ok(ExitCode::SUCCESS)
        }
        ConsumerCommand::Pause {
            reason,
            until,
            wait,
        } => {
            let mut body = json!({});
            if let Some(reason) = reason {
                body["reason"] = json!(reason);
            }
            if let Some(until) = until {
                body["until"] = json!(until);
            }
            let mut status = admin.post("/v1/admin/consumer/pause", body).await?;
            if let Some(wait) = wait {
                let deadline = Instant::now() + Duration::from_secs(*wait);
                let mut last = String::new();
                while status["drained"] != true && Instant::now() < deadline {
                    let line = progress(&status);
                    if line != last && !args.json {
                        eprintln!("{line}");
                        last = line;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    status = admin.get("/v1/admin/consumer").await?;
                }
            }
            admin.show(&status);
            if wait.is_some() && status["drained"] != true {
                return Err(Failure(
                    NOT_DRAINED,
                    format!(
                        "paused, but not drained after {}s: {}",
                        wait.unwrap_or_default(),
                        progress(&status)
                    ),
                ));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

struct Admin<'a> {
    client: reqwest::Client,
    args: &'a ConsumerArgs,
    token: &'a str,
    /// Who is at the keyboard, for the switch's history.
    actor: String,
}

/// `$USER`, else `$LOGNAME`, else the login name of this process's user (a container or
/// a cron job often sets neither variable), else its numeric uid.
fn actor() -> String {
    ["USER", "LOGNAME"]
        .into_iter()
        .filter_map(|name| std::env::var(name).ok())
        .map(|name| name.trim().to_string())
        .find(|name| !name.is_empty())
        .or_else(|| whoami::username().ok())
        .unwrap_or_else(|| "unknown user".into())
}

impl Admin<'_> {
    async fn get(&self, path: &str) -> Result<Value, Failure> {
        let request = self.client.get(self.url(path));
        self.send(request).await
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value, Failure> {
        let request = self.client.post(self.url(path)).json(&body);
        self.send(request).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.args.url.trim_end_matches('/'))
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Value, Failure> {
        let response = request
            .bearer_auth(self.token)
            .header("x-cartbus-actor", format!("{} (cli)", self.actor))
            .send()
            .await
            .map_err(|e| Failure(1, format!("cannot reach {}: {e}", self.args.url)))?;
        let code = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let detail = || {
            let errors: Vec<String> = body["errors"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| {
                    format!(
                        "{}: {}",
                        e["pointer"].as_str().unwrap_or(""),
                        e["detail"].as_str().unwrap_or("")
                    )
                })
                .collect();
            if errors.is_empty() {
                body["detail"].as_str().unwrap_or("").to_string()
            } else {
                errors.join("; ")
            }
        };
        match code.as_u16() {
            200 | 202 => Ok(body),
            401 => Err(Failure(
                UNAUTHORIZED,
                "the admin token was refused (check CARTBUS_ADMIN_TOKEN)".into(),
            )),
            404 => Err(Failure(ADMIN_OFF, format!("not found: {}", detail()))),
            400 | 409 | 415 | 422 => Err(Failure(BAD_REQUEST, format!("refused: {}", detail()))),
            429 => Err(Failure(
                HELD_OFF,
                match retry_after {
                    Some(seconds) => format!(
                        "held off for {seconds} s after too many wrong admin tokens; try again then"
                    ),
                    None => "held off after too many wrong admin tokens; try again later".into(),
                },
            )),
            other => Err(Failure(1, format!("HTTP {other}: {}", detail()))),
        }
    }

    fn show(&self, status: &Value) {
        if self.args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(status).unwrap_or_default()
            );
            return;
        }
        let text = |v: &Value| match v {
            Value::Null => "-".to_string(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if let Some(site) = status["datacenter"].as_str() {
            println!("datacenter: {site} (this switch governs this site only)");
        }
        println!(
            "switch: {}  active version: {}  drained: {}",
            text(&status["desired"]),
            text(&status["active_version"]),
            status["drained"]
        );
        println!(
            "changed {} by {}{}{}",
            text(&status["changed_at"]),
            text(&status["changed_by"]),
            status["reason"]
                .as_str()
                .map(|r| format!(" — {r}"))
                .unwrap_or_default(),
            status["until"]
                .as_str()
                .map(|u| format!(" (lifts at {u})"))
                .unwrap_or_default()
        );
        let backlog = &status["backlog"];
        println!(
            "backlog: {} waiting, oldest {}, intake {:.1}/s, drain {:.1}/s, catch-up {}",
            text(&backlog["depth"]),
            backlog["oldest_age_seconds"]
                .as_f64()
                .map(|s| format!("{s:.1}s"))
                .unwrap_or_else(|| "-".into()),
            backlog["intake_per_s"].as_f64().unwrap_or(0.0),
            backlog["drain_per_s"].as_f64().unwrap_or(0.0),
            backlog["catch_up_eta_seconds"]
                .as_f64()
                .map(|s| format!("{s:.0}s"))
                .unwrap_or_else(|| "-".into())
        );
        println!(
            "{:<24} {:<12} {:>6} {:<8} {:>9} {:>10}  last seen",
            "instance", "version", "schema", "state", "in flight", "processed"
        );
        for i in status["instances"].as_array().into_iter().flatten() {
            println!(
                "{:<24} {:<12} {:>6} {:<8} {:>9} {:>10}  {}",
                text(&i["instance"]),
                text(&i["version"]),
                text(&i["schema_version"]),
                text(&i["state"]),
                text(&i["in_flight"]),
                text(&i["processed"]),
                text(&i["last_seen"])
            );
        }
    }
}

/// One line on what a pause still waits for.
fn progress(status: &Value) -> String {
    let busy: Vec<String> = status["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| {
            !matches!(
                i["state"].as_str(),
                Some("paused" | "passive" | "fenced" | "stopped")
            ) || i["in_flight"].as_i64().unwrap_or(0) > 0
        })
        .map(|i| {
            format!(
                "{} {} ({} in flight)",
                i["instance"].as_str().unwrap_or("?"),
                i["state"].as_str().unwrap_or("?"),
                i["in_flight"]
            )
        })
        .collect();
    if busy.is_empty() {
        "waiting for every instance to see the pause".into()
    } else {
        format!(
            "waiting for {} instance(s): {}",
            busy.len(),
            busy.join(", ")
        )
    }
}

/// `cartbus config`: every effective setting, loaded exactly as `serve` loads it (the same
/// `--config` file and environment), one per line: its variable, its value (secrets as
/// `[redacted]`, URLs without credentials), where the value came from, its `--config` key.
/// An invalid setting exits 2 with the message `serve` would stop with.
pub fn config(file: Option<&Path>) -> ExitCode {
    let loaded = match crate::config::Loaded::load(file) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("cartbus: {e}");
            return ExitCode::from(2);
        }
    };
    let header = ["SETTING", "VALUE", "SOURCE", "KEY"].map(String::from);
    let rows: Vec<[String; 4]> = std::iter::once(header)
        .chain(
            loaded
                .settings()
                .into_iter()
                .map(|s| [s.env, s.value, s.source, s.key]),
        )
        .collect();
    // Long values (a routing table) run over their column rather than widen it for all.
    let width = |column: usize, cap: usize| {
        rows.iter()
            .map(|row| row[column].chars().count())
            .max()
            .unwrap_or(0)
            .min(cap)
    };
    let (env, value, source) = (width(0, 40), width(1, 40), width(2, 40));
    for [e, v, s, k] in &rows {
        println!("{e:<env$}  {v:<value$}  {s:<source$}  {k}");
    }
    ExitCode::SUCCESS
}
