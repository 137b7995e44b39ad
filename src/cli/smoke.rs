//! `cartbus smoke --url <staging instance>` (issue 21): a smoke checkout of the instance
//! at `--url` (`POST /v1/admin/smoke`), with a built-in set of carts or carts from a
//! file, printed as a table. For a deploy pipeline between the runbook's pause-and-deploy
//! and its resume: exit 0 when every cart came out as expected, 2 when any did not (or
//! the instance is fenced), 4 wrong or missing token, 5 admin API off, 1 anything else.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde_json::{Value, json};
use uuid::Uuid;

#[derive(Args, Debug)]
pub struct SmokeArgs {
    /// Base URL of the instance to smoke (the staging slot's own address, not the load
    /// balancer: each instance smokes its own version).
    #[arg(long, env = "CARTBUS_ADMIN_URL", hide_env_values = true)]
    pub url: String,
    /// The admin token (CARTBUS_ADMIN_TOKEN of the service).
    #[arg(long, env = "CARTBUS_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A JSON file: an array of carts, or of `{"cart": …, "expect": "duplicate"}`
    /// (`would-create-order`, `duplicate`, `conflict`, `invalid`); default: the built-in
    /// set (a new cart, it again, its id with another payload, a broken cart, a large
    /// order).
    #[arg(long)]
    pub carts: Option<PathBuf>,
    /// Print the service's JSON report instead of the table.
    #[arg(long)]
    pub json: bool,
}

const UNEXPECTED: u8 = 2;
const UNAUTHORIZED: u8 = 4;
const ADMIN_OFF: u8 = 5;

pub async fn smoke(args: SmokeArgs) -> ExitCode {
    match run(&args).await {
        Ok(code) => code,
        Err((code, message)) => {
            eprintln!("cartbus smoke: {message}");
            ExitCode::from(code)
        }
    }
}

/// A cart to smoke: what it is, the cart, and the outcome it should come to ("" = any).
type Case = (String, Value, &'static str);

/// The built-in set, each with what it should come to.
fn built_in() -> Vec<Case> {
    let id = Uuid::new_v4().to_string();
    let cart = |cart_id: &str, name: &str, quantity: i64, unit_price: i64| {
        json!({
            "cart_id": cart_id,
            "customer": {"id": "smoke", "name": "Smoke Test", "email": "smoke@example.com", "phone": "+44 20 7946 0000"},
            "shipping_address": {"line1": "1 Staging Row", "line2": null, "city": "London",
                                 "region": "LND", "postal_code": "EC1A 1AA", "country": "GB"},
            "currency": "GBP",
            "lines": [{"sku": "SMOKE-1", "name": name, "quantity": quantity, "unit_price": unit_price}],
            "total": quantity * unit_price
        })
    };
    let valid = cart(&id, "Smoke item", 2, 1_999);
    vec![
        ("a new cart".into(), valid.clone(), "would-create-order"),
        ("the same cart again".into(), valid, "duplicate"),
        (
            "its id, another payload".into(),
            cart(&id, "Another item", 2, 1_999),
            "conflict",
        ),
        (
            "a broken cart".into(),
            json!({"cart_id": "not-a-uuid", "lines": []}),
            "invalid",
        ),
        (
            "a large order".into(),
            cart(&Uuid::new_v4().to_string(), "Smoke pallet", 100, 99_999),
            "would-create-order",
        ),
    ]
}

fn from_file(path: &PathBuf) -> Result<Vec<Case>, (u8, String)> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| (1, format!("cannot read {}: {e}", path.display())))?;
    let items: Vec<Value> = serde_json::from_str(&text)
        .map_err(|e| (1, format!("{} is not a JSON array: {e}", path.display())))?;
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let (cart, expect) = match item.get("cart") {
                Some(cart) => (
                    cart.clone(),
                    item["expect"].as_str().unwrap_or("").to_string(),
                ),
                None => (item, String::new()),
            };
            let expect: &'static str = match expect.as_str() {
                "" => "",
                "would-create-order" => "would-create-order",
                "duplicate" => "duplicate",
                "conflict" => "conflict",
                "invalid" => "invalid",
                other => return Err((1, format!("item {i}: unknown expect {other:?}"))),
            };
            Ok((format!("cart {}", i + 1), cart, expect))
        })
        .collect()
}

async fn run(args: &SmokeArgs) -> Result<ExitCode, (u8, String)> {
    let token = args.token.as_deref().ok_or((
        UNAUTHORIZED,
        "no admin token: set CARTBUS_ADMIN_TOKEN (the service's admin token) or pass --token"
            .to_string(),
    ))?;
    let set = match &args.carts {
        Some(path) => from_file(path)?,
        None => built_in(),
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| (1, format!("cannot build an HTTP client: {e}")))?;
    let url = format!("{}/v1/admin/smoke", args.url.trim_end_matches('/'));
    let carts: Vec<&Value> = set.iter().map(|(_, cart, _)| cart).collect();
    let response = client
        .post(&url)
        .bearer_auth(token)
        .json(&json!({ "carts": carts }))
        .send()
        .await
        .map_err(|e| (1, format!("{url}: {}", e.without_url())))?;
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    match status {
        200 => {}
        401 => return Err((UNAUTHORIZED, "the admin token was refused".into())),
        404 => return Err((ADMIN_OFF, format!("{url}: {}", body["detail"]))),
        _ => return Err((1, format!("{url} answered {status}: {body}"))),
    }
    if args.json {
        println!("{body:#}");
    }
    let mut unexpected = !body["ok"].as_bool().unwrap_or(false);
    if !args.json {
        println!(
            "smoke of {} version {} (fence: {})",
            body["instance"].as_str().unwrap_or("?"),
            body["version"].as_str().unwrap_or("?"),
            body["fence"]["detail"].as_str().unwrap_or("?")
        );
        println!(
            "{:<26} {:<20} {:<20} {:>8}  detail",
            "cart", "expected", "outcome", "ms"
        );
    }
    let reports = body["carts"].as_array().cloned().unwrap_or_default();
    for (i, (what, _, expect)) in set.iter().enumerate() {
        let report = reports.get(i).cloned().unwrap_or(Value::Null);
        let outcome = report["outcome"].as_str().unwrap_or("(not run)");
        let ms: f64 = report["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["ms"].as_f64())
            .sum();
        let as_expected = expect.is_empty() || *expect == outcome;
        unexpected |= !as_expected || outcome == "failed" || outcome == "(not run)";
        if !args.json {
            let mark = if as_expected { "" } else { "  <-- UNEXPECTED" };
            let detail = report["hand_off"]
                .as_str()
                .map(|h| format!("{}; hand-off: {h}", report["detail"].as_str().unwrap_or("")))
                .unwrap_or_else(|| report["detail"].as_str().unwrap_or("").to_string());
            println!("{what:<26} {expect:<20} {outcome:<20} {ms:>8.1}  {detail}{mark}");
        }
    }
    if unexpected {
        eprintln!("cartbus smoke: not as expected");
        return Ok(ExitCode::from(UNEXPECTED));
    }
    Ok(ExitCode::SUCCESS)
}
