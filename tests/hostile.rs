//! Hostile clients (docs/operations.md#hostile-clients): slow heads and slow bodies are cut off,
//! oversized heads refused, connections and checkouts capped without starving health, and
//! admin token guessing held off — all against a real server over raw TCP.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use common::{Backend, DEADLINE, Process, Settings, TestApp, cart, client, eventually};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "hostile-test-admin-token-0123456789";

fn address(base: &str) -> String {
    base.trim_start_matches("http://").to_string()
}

async fn connect(base: &str) -> TcpStream {
    TcpStream::connect(address(base)).await.expect("connect")
}

/// What the server did with a connection: answered (status line and whole text), or
/// closed it without a word.
#[derive(Debug)]
enum Outcome {
    Answered(u16, String),
    Closed,
}

/// Reads until the server closes the connection (or resets it), within [`DEADLINE`].
async fn read_to_close(socket: &mut (impl AsyncRead + Unpin)) -> Outcome {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let read = tokio::time::timeout(DEADLINE, async {
        loop {
            match socket.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server never closed the connection");
    let text = String::from_utf8_lossy(&received).into_owned();
    match text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
    {
        Some(status) => Outcome::Answered(status, text),
        None => Outcome::Closed,
    }
}

/// True while the server has neither closed `socket` nor sent anything on it.
fn still_open(socket: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(socket.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// A well-behaved client's request and how long it took.
async fn timed_get(http: &reqwest::Client, url: &str) -> (u16, Duration) {
    let started = Instant::now();
    let response = http.get(url).send().await.expect("GET");
    (response.status().as_u16(), started.elapsed())
}

#[tokio::test]
async fn slow_loris_heads_are_closed_at_the_header_timeout_while_others_are_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let timeout = Duration::from_secs(4);
    let settings = Settings::new(dir.path(), &Backend::Sqlite).set(
        "CARTBUS_HEADER_READ_TIMEOUT_SECONDS",
        timeout.as_secs().to_string(),
    );
    let app = TestApp::spawn(&settings).await;

    // Half send part of a header line and stall; half keep trickling a byte at a time,
    // which a per-read timeout would never end.
    let opened = Instant::now();
    let mut stalled = Vec::new();
    for _ in 0..50 {
        let mut socket = connect(&app.base).await;
        socket
            .write_all(b"GET /health/live HTTP/1.1\r\nHost: cartbus\r\nX-Slow: ")
            .await
            .expect("write");
        stalled.push(socket);
    }
    let mut tricklers = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let mut socket = connect(&app.base).await;
        tricklers.spawn(async move {
            socket.write_all(b"GET /health/live HTTP/1.1\r\n").await?;
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                socket.write_all(b"X").await?;
            }
            #[allow(unreachable_code)]
            Ok::<(), std::io::Error>(())
        });
    }

    // Meanwhile a good client is served promptly: health and a real checkout.
    let http = client();
    let (status, took) = timed_get(&http, &app.url("/health/live")).await;
    assert_eq!(status, 200);
    assert!(took < Duration::from_secs(1), "/health/live took {took:?}");
    let started = Instant::now();
    assert_eq!(app.post_cart(&cart()).await.status(), 202);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(
        opened.elapsed() < timeout,
        "the good client was served only after the slow ones were gone"
    );
    assert!(stalled.iter().all(still_open), "closed before the timeout");

    for socket in &mut stalled {
        assert!(
            matches!(read_to_close(socket).await, Outcome::Closed),
            "a stalled head is closed without an answer"
        );
    }
    let closed_after = opened.elapsed();
    assert!(
        closed_after >= timeout - Duration::from_millis(500),
        "closed after {closed_after:?}, before the header timeout"
    );
    // The tricklers' writes fail once the server has closed their connections.
    let all_ended = tokio::time::timeout(DEADLINE, async {
        while let Some(ended) = tricklers.join_next().await {
            assert!(ended.expect("trickler task").is_err());
        }
    })
    .await;
    assert!(all_ended.is_ok(), "a trickling head was never cut off");
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings =
        Settings::new(dir.path(), &Backend::Sqlite).set("CARTBUS_HEADER_READ_TIMEOUT_SECONDS", "2");
    let app = TestApp::spawn(&settings).await;
    let mut socket = connect(&app.base).await;
    socket
        .write_all(b"GET /health/live HTTP/1.1\r\nHost: cartbus\r\n\r\n")
        .await
        .expect("write");
    let answered = Instant::now();
    match read_to_close(&mut socket).await {
        Outcome::Answered(200, text) => assert!(!text.contains("connection: close"), "{text}"),
        other => panic!("expected a kept-alive 200, got {other:?}"),
    }
    let idle = answered.elapsed();
    assert!(
        idle >= Duration::from_millis(1500) && idle < Duration::from_secs(10),
        "an idle connection was closed after {idle:?}"
    );
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_body_that_trickles_or_stalls_is_cut_off_with_408() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings =
        Settings::new(dir.path(), &Backend::Sqlite).set("CARTBUS_BODY_READ_TIMEOUT_SECONDS", "2");
    let app = TestApp::spawn(&settings).await;
    let body = serde_json::to_vec(&cart()).expect("json");
    let head = format!(
        "POST /v1/checkouts HTTP/1.1\r\nHost: cartbus\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );

    for trickle in [true, false] {
        let socket = connect(&app.base).await;
        let (mut reader, mut writer) = socket.into_split();
        writer.write_all(head.as_bytes()).await.expect("head");
        let sent = Instant::now();
        let body = body.clone();
        let writing = tokio::spawn(async move {
            if trickle {
                // A byte every 100 ms: the whole body would take minutes.
                for byte in body {
                    writer.write_all(&[byte]).await?;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            std::future::pending::<()>().await;
            Ok::<(), std::io::Error>(())
        });
        let outcome = read_to_close(&mut reader).await;
        let took = sent.elapsed();
        writing.abort();
        let Outcome::Answered(status, text) = outcome else {
            panic!("trickle {trickle}: closed without an answer");
        };
        assert_eq!(status, 408, "trickle {trickle}: {text}");
        assert!(text.contains("application/problem+json"), "{text}");
        assert!(
            took >= Duration::from_millis(1500) && took < Duration::from_secs(10),
            "trickle {trickle}: answered after {took:?}"
        );
    }
    assert_eq!(common::count_orders(&app.state).await, 0);
    assert_eq!(common::queued_messages(dir.path()).await, 0);
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn an_oversized_head_is_refused_with_431_and_never_hangs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = Settings::new(dir.path(), &Backend::Sqlite)
        .set("CARTBUS_MAX_HEADER_BYTES", "8192")
        .set("CARTBUS_MAX_HEADERS", "32");
    let app = TestApp::spawn(&settings).await;

    let large_field = format!("X-Large: {}\r\n", "a".repeat(10_000));
    let many_fields: String = (0..40).map(|i| format!("X-Field-{i}: {i}\r\n")).collect();
    let within = format!(
        "X-Large: {}\r\n{}",
        "a".repeat(6_000),
        (0..20)
            .map(|i| format!("X-Field-{i}: {i}\r\n"))
            .collect::<String>()
    );
    for (what, fields, expected) in [
        ("a 10 KB header", large_field, 431),
        ("40 header fields", many_fields, 431),
        ("a head within both limits", within, 200),
    ] {
        let mut socket = connect(&app.base).await;
        let request = format!(
            "GET /health/live HTTP/1.1\r\nHost: cartbus\r\nConnection: close\r\n{fields}\r\n"
        );
        // The server may answer and close before it has read everything we send.
        let _ = socket.write_all(request.as_bytes()).await;
        match read_to_close(&mut socket).await {
            Outcome::Answered(status, text) => assert_eq!(status, expected, "{what}: {text}"),
            Outcome::Closed => panic!("{what}: closed without an answer"),
        }
    }
    let (status, _) = app.get_json("/health/live").await;
    assert_eq!(status, 200, "still serving");
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn past_the_connection_limit_new_connections_are_closed_at_once_until_slots_free_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = Settings::new(dir.path(), &Backend::Sqlite)
        .set("CARTBUS_MAX_CONNECTIONS", "8")
        .set("CARTBUS_HEADER_READ_TIMEOUT_SECONDS", "3");
    let app = TestApp::spawn(&settings).await;
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut socket = connect(&app.base).await;
        socket
            .write_all(b"GET /health/live HTT")
            .await
            .expect("write");
        held.push(socket);
    }
    // The server counts a connection when it accepts it, which may lag the client's
    // connect: a refused one proves all eight are counted.
    let refused_at = eventually("a connection past the limit closed", || async {
        let mut socket = connect(&app.base).await;
        let _ = socket
            .write_all(b"GET /health/live HTTP/1.1\r\nHost: cartbus\r\n\r\n")
            .await;
        let started = Instant::now();
        match read_to_close(&mut socket).await {
            Outcome::Closed => Some(started.elapsed()),
            Outcome::Answered(..) => None,
        }
    })
    .await;
    assert!(
        refused_at < Duration::from_secs(1),
        "closed after {refused_at:?}"
    );
    assert!(held.iter().all(still_open), "held connections closed early");

    // Once the header timeout frees the slots, new connections are served again.
    eventually("served again", || async {
        let response = client().get(app.url("/metrics")).send().await.ok()?;
        let text = response.text().await.ok()?;
        Some(text)
    })
    .await;
    let metrics = common::metrics_text(&app.client, &app.base).await;
    assert!(
        common::metric(&metrics, "cartbus_http_connections_refused_total") >= 1.0,
        "{metrics}"
    );
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_checkout_flood_is_shed_with_503_while_health_answers_and_accepted_carts_are_ordered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = Settings::new(dir.path(), &Backend::Sqlite).set("CARTBUS_MAX_IN_FLIGHT", "3");
    // Each checkout spends 2 s in intake, as with a slow queue.
    let process = Process::start(&settings, &[("FAILPOINTS", "intake-slow=return(2000)")]);
    let http = client();
    let flood = 12;
    let (results_tx, mut results) = tokio::sync::mpsc::unbounded_channel();
    let started = Instant::now();
    for _ in 0..flood {
        let (http, base, results_tx) = (http.clone(), process.base.clone(), results_tx.clone());
        tokio::spawn(async move {
            let cart = cart();
            let response = common::post_cart(&http, &base, &cart).await;
            let retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap_or_default().to_string());
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            let _ = results_tx.send((cart, status, retry_after, body));
        });
    }
    drop(results_tx);

    let first = tokio::time::timeout(DEADLINE, results.recv())
        .await
        .expect("a first answer")
        .expect("an answer");
    assert_eq!(
        first.1, 503,
        "the first answer is a shed one: {:?}",
        first.3
    );
    // Mid-flood (the accepted checkouts are still in intake) health answers at once.
    for path in ["/health/live", "/health/ready"] {
        let (status, took) = timed_get(&http, &format!("{}{path}", process.base)).await;
        assert_eq!(status, 200, "{path}");
        assert!(took < Duration::from_millis(500), "{path} took {took:?}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "health was checked after the flood"
    );

    let mut answers = vec![first];
    while let Some(answer) = results.recv().await {
        answers.push(answer);
    }
    assert_eq!(answers.len(), flood);
    let (accepted, shed): (Vec<_>, Vec<_>) = answers.into_iter().partition(|a| a.1 == 202);
    assert!(
        (1..=3).contains(&accepted.len()),
        "{} accepted with an in-flight limit of 3",
        accepted.len()
    );
    for (_, status, retry_after, body) in &shed {
        assert_eq!(*status, 503, "{body}");
        assert_eq!(retry_after.as_deref(), Some("5"), "{body}");
        assert_eq!(body["type"], "/problems/unavailable", "{body}");
    }
    for (cart, ..) in &accepted {
        let cart_id = cart["cart_id"].as_str().expect("cart_id");
        common::wait_for_order(&http, &process.base, cart_id).await;
    }
    for (cart, ..) in &shed {
        let cart_id = cart["cart_id"].as_str().expect("cart_id");
        let (status, body) =
            common::get_json(&http, &process.base, &format!("/v1/checkouts/{cart_id}")).await;
        assert_eq!(status, 404, "a shed cart became a checkout: {body}");
    }
    let (orders, distinct) = common::order_counts(&Backend::Sqlite, dir.path()).await;
    assert_eq!(
        (orders, distinct),
        (accepted.len() as i64, accepted.len() as i64)
    );
}

/// An HTTP client whose connections come from `ip` (any 127.x address reaches the
/// server on 127.0.0.1), standing for another machine.
fn client_from(ip: Ipv4Addr) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::V4(ip))
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client")
}

async fn consumer_status(http: &reqwest::Client, base: &str, token: &str) -> reqwest::Response {
    http.get(format!("{base}/v1/admin/consumer"))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET /v1/admin/consumer")
}

/// Behind a load balancer every call comes from its address. With it in
/// `CARTBUS_TRUSTED_PROXIES`, each client it forwards for is held off on its own; a client
/// calling directly cannot pick its address with the header.
#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_is_held_off_on_its_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = Settings::new(dir.path(), &Backend::Sqlite)
        .set("CARTBUS_ADMIN_TOKEN", TOKEN)
        .set("CARTBUS_ADMIN_AUTH_FAILURES", "3")
        .set("CARTBUS_TRUSTED_PROXIES", "127.0.0.1, ::1");
    let process = Process::start(&settings, &[]);
    let proxy = client_from(Ipv4Addr::LOCALHOST);
    let call = |forwarded_for: &'static str, token: &'static str| {
        let request = proxy
            .get(format!("{}/v1/admin/consumer", process.base))
            .bearer_auth(token)
            .header("x-forwarded-for", forwarded_for);
        async move { request.send().await.expect("GET").status().as_u16() }
    };
    // The guesser writes a fake address first; the proxy appends the real one.
    for _ in 0..3 {
        assert_eq!(
            call("192.0.2.1, 203.0.113.7", "wrong-token-guess-0123456").await,
            401
        );
    }
    assert_eq!(
        call("203.0.113.7", TOKEN).await,
        429,
        "the guesser is held off"
    );
    assert_eq!(
        call("203.0.113.8", TOKEN).await,
        200,
        "an operator behind the same proxy is not"
    );
    assert_eq!(
        call("192.0.2.1", TOKEN).await,
        200,
        "nor the address the guesser faked"
    );

    // A client that is not a trusted proxy cannot choose its address with the header.
    let direct = client_from(Ipv4Addr::new(127, 0, 0, 2));
    for forwarded_for in ["198.51.100.1", "198.51.100.2", "198.51.100.3"] {
        let status = direct
            .get(format!("{}/v1/admin/consumer", process.base))
            .bearer_auth("wrong-token-guess-0123456")
            .header("x-forwarded-for", forwarded_for)
            .send()
            .await
            .expect("GET")
            .status();
        assert_eq!(status, 401);
    }
    let held = consumer_status(&direct, &process.base, TOKEN)
        .await
        .status();
    assert_eq!(held, 429, "its guesses all counted against 127.0.0.2");
}

#[tokio::test]
async fn admin_token_guessing_is_held_off_per_client_with_429_and_logged_without_tokens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = Settings::new(dir.path(), &Backend::Sqlite)
        .set("CARTBUS_ADMIN_TOKEN", TOKEN)
        .set("CARTBUS_ADMIN_AUTH_FAILURES", "3")
        .set("CARTBUS_ADMIN_AUTH_WINDOW_SECONDS", "3");
    let process = Process::start(&settings, &[("CARTBUS_LOG", "debug")]);
    let guesser = client_from(Ipv4Addr::LOCALHOST);
    let guesses: Vec<String> = (0..5)
        .map(|i| format!("guess-{i}-{}", &TOKEN[8..]))
        .collect();

    let first_failure = Instant::now();
    for guess in &guesses[..3] {
        assert_eq!(
            consumer_status(&guesser, &process.base, guess)
                .await
                .status(),
            401
        );
    }
    for token in [guesses[3].as_str(), TOKEN] {
        let response = consumer_status(&guesser, &process.base, token).await;
        assert_eq!(
            response.status(),
            429,
            "held off, even with the right token"
        );
        let retry_after: u64 = response.headers()["retry-after"]
            .to_str()
            .expect("ascii")
            .parse()
            .expect("seconds");
        assert!((1..=3).contains(&retry_after), "Retry-After: {retry_after}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
    }
    // Another client is not held off by this one's guesses.
    let colleague = client_from(Ipv4Addr::new(127, 0, 0, 2));
    assert_eq!(
        consumer_status(&colleague, &process.base, TOKEN)
            .await
            .status(),
        200
    );

    // The window ends and the right token works again.
    eventually("the window to end", || async {
        (consumer_status(&guesser, &process.base, TOKEN)
            .await
            .status()
            == 200)
            .then_some(())
    })
    .await;
    assert!(first_failure.elapsed() >= Duration::from_millis(2500));
    assert_eq!(
        consumer_status(&guesser, &process.base, &guesses[4])
            .await
            .status(),
        401,
        "a new window counts afresh"
    );

    let warnings: Vec<Value> = process
        .logs()
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|event| event["level"] == "WARN")
        .collect();
    assert!(
        warnings.iter().any(|w| w["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("too many wrong admin credentials"))
            && w["client"] == "127.0.0.1"
            && w["failures"] == 3),
        "no warning with the client and its count: {warnings:?}"
    );
    let logs = process.logs();
    for presented in guesses.iter().map(String::as_str).chain([TOKEN]) {
        assert!(
            logs.iter().all(|line| !line.contains(presented)),
            "a presented token reached the logs"
        );
    }
}

#[tokio::test]
async fn guesses_from_all_clients_together_hold_every_client_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = Settings::new(dir.path(), &Backend::Sqlite)
        .set("CARTBUS_ADMIN_TOKEN", TOKEN)
        .set("CARTBUS_ADMIN_AUTH_FAILURES", "2")
        .set("CARTBUS_ADMIN_AUTH_GLOBAL_FAILURES", "3");
    let process = Process::start(&settings, &[]);
    let wrong = TOKEN.replace('0', "1");
    for (last_octet, guesses) in [(1, 2), (2, 1)] {
        let guesser = client_from(Ipv4Addr::new(127, 0, 0, last_octet));
        for _ in 0..guesses {
            assert_eq!(
                consumer_status(&guesser, &process.base, &wrong)
                    .await
                    .status(),
                401
            );
        }
    }
    let bystander = client_from(Ipv4Addr::new(127, 0, 0, 3));
    assert_eq!(
        consumer_status(&bystander, &process.base, TOKEN)
            .await
            .status(),
        429
    );
    assert!(process.logs_contain("\"failures_all_clients\":3"));
}

#[tokio::test]
async fn by_default_guesses_from_many_addresses_never_lock_out_an_operator() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = Settings::new(dir.path(), &Backend::Sqlite)
        .set("CARTBUS_ADMIN_TOKEN", TOKEN)
        .set("CARTBUS_ADMIN_AUTH_FAILURES", "2");
    let process = Process::start(&settings, &[]);
    let wrong = TOKEN.replace('0', "1");
    // Far more guesses in all than the old global limit (100) allowed, from many addresses.
    for last_octet in 10..70 {
        let guesser = client_from(Ipv4Addr::new(127, 0, 0, last_octet));
        for _ in 0..2 {
            assert_eq!(
                consumer_status(&guesser, &process.base, &wrong)
                    .await
                    .status(),
                401
            );
        }
        assert_eq!(
            consumer_status(&guesser, &process.base, &wrong)
                .await
                .status(),
            429,
            "each guesser is held off"
        );
    }
    let operator = client_from(Ipv4Addr::new(127, 0, 0, 3));
    assert_eq!(
        consumer_status(&operator, &process.base, TOKEN)
            .await
            .status(),
        200,
        "the operator's own address is not held off by the others'"
    );

    // A held-off operator's CLI says for how long, with its own exit code.
    for _ in 0..2 {
        let (code, _, err) = common::consumer_cli(&process.base, Some(&wrong), &["status"]).await;
        assert_eq!(code, 4, "{err}");
    }
    let (code, _, err) = common::consumer_cli(&process.base, Some(TOKEN), &["status"]).await;
    assert_eq!(code, 7, "{err}");
    assert!(err.contains("held off for") && err.contains(" s "), "{err}");
}
