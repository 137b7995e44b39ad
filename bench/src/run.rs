//! `cartbus-bench run`: the whole table of issue 6, for the embedded defaults and for
//! PostgreSQL + RabbitMQ. cartbus runs as a child process (the release binary next to
//! this one), driven over real HTTP from this process; every figure sits next to the raw
//! speed of the part underneath it, measured in the same run.
//!
//! This file picks the stacks and sets each one up; [`crate::phases`] runs the phases.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};
use bytes::Bytes;

use crate::cli::RunArgs;
use crate::cpu::on_service_core;
use crate::databases::fresh_postgres;
use crate::load::percentile;
use crate::phases::{memory_with_backlog, shared_phases};
use crate::raw_amqp::{drain, raw_publish, raw_round_trips};
use crate::raw_db::raw_sqlite_append;
use crate::report::{Table, print_figure_header, write_json};

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let binary = std::env::current_exe()?
        .parent()
        .map(|d| d.join("cartbus"))
        .context("no directory for the cartbus binary")?;
    if !binary.is_file() {
        bail!(
            "{} not found: build it first (cargo build --release)",
            binary.display()
        );
    }
    println!(
        "cartbus-bench run: {} clients, backlog {}, {} s phases, hand-off {}, on {} ({} cores){}",
        args.clients,
        args.backlog,
        args.seconds,
        if args.hand_off { "on" } else { "off" },
        hostname::get()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        if args.pin { ", pinned" } else { "" }
    );
    if args.pin {
        crate::cpu::pin(0, 1)?;
        println!("pinned: load generator on core 0, cartbus and the raw figures on core 1");
    }
    print_figure_header();
    let mut all = Vec::new();
    if args.stack == "embedded" || args.stack == "both" {
        println!("embedded (SQLite orders + embedded queue):");
        let mut table = Table::new("embedded");
        embedded(&args, &binary, &mut table).await?;
        all.extend(table.figures);
    }
    if args.stack == "broker" || args.stack == "both" {
        println!("broker (PostgreSQL + RabbitMQ over AMQP 1.0):");
        let mut table = Table::new("broker");
        broker(&args, &binary, &mut table).await?;
        all.extend(table.figures);
    }
    write_json(&args.json, &all)?;
    println!("written to {}", args.json.display());
    Ok(())
}

/// SQLite orders and the embedded queue, in a fresh data directory.
async fn embedded(args: &RunArgs, binary: &Path, table: &mut Table) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().to_path_buf();
    let raw_append =
        on_service_core(raw_sqlite_append(&dir.path().join("raw.db"), args.backlog)).await??;
    let mut env = vec![("CARTBUS_DATA_DIR".to_string(), data.display().to_string())];
    if args.hand_off {
        env.extend(hand_off("partner-bench"));
    }
    shared_phases(
        args,
        binary,
        table,
        &env,
        &data,
        None,
        raw_append,
        "raw SQLite append (WAL, FULL, 256/tx)",
    )
    .await?;
    memory_with_backlog(args, binary, table).await
}

/// A fresh PostgreSQL database and fresh RabbitMQ queues; the raw publish figures first.
async fn broker(args: &RunArgs, binary: &Path, table: &mut Table) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().to_path_buf();
    let database = fresh_postgres(&args.postgres).await?;
    let queue = format!("cartbus-bench-{}", uuid::Uuid::new_v4().simple());
    let address = format!("/queue/{queue}");
    let body = Bytes::from(vec![b'x'; 1024]);
    let serial = on_service_core(raw_publish(&args.amqp, &address, &body, 2_000, 1)).await??;
    let windowed = on_service_core(raw_publish(&args.amqp, &address, &body, 20_000, 256)).await??;
    // Plain receive + accept of the same messages: what the broker alone gives a consumer
    // on this machine, the ceiling of cartbus's drain on this stack.
    let consumed = on_service_core(drain(&args.amqp, &address, 22_000)).await??;
    let rtt = on_service_core(raw_round_trips(&args.amqp, &address, &body, 2_000)).await??;
    drain(&args.amqp, &address, 2_000).await?;
    let serial_rate = 2_000.0 / serial.as_secs_f64();
    let windowed_rate = 20_000.0 / windowed.as_secs_f64();
    table.add(
        "raw publish, one in flight",
        serial_rate,
        "msg/s",
        None,
        "plain fe2o3-amqp, durable 1 KB",
    );
    table.add(
        "raw publish, window 256",
        windowed_rate,
        "msg/s",
        None,
        "plain fe2o3-amqp, durable 1 KB",
    );
    table.add(
        "raw consume, accept each",
        22_000.0 / consumed.as_secs_f64(),
        "msg/s",
        None,
        "plain fe2o3-amqp, credit 256: the drain's ceiling here",
    );
    let mut env = vec![
        ("CARTBUS_DATA_DIR".to_string(), data.display().to_string()),
        ("DATABASE_URL".to_string(), database.clone()),
        ("CARTBUS_QUEUE_URL".to_string(), args.amqp.clone()),
        ("CARTBUS_CART_ADDRESS".to_string(), address.clone()),
    ];
    let partner_queue = format!("{queue}-partner");
    if args.hand_off {
        env.extend(hand_off(&format!("/queue/{partner_queue}")));
    }
    let rtt_p99 = percentile(&rtt, 0.99);
    table.add(
        "raw publish round trip p99",
        rtt_p99,
        "ms",
        None,
        "one in flight",
    );
    let intake_p99 = shared_phases(
        args,
        binary,
        table,
        &env,
        &data,
        Some(serial_rate),
        windowed_rate,
        "raw windowed publish",
    )
    .await?;
    table.add(
        "intake p99 (4 clients) − broker round trip p99",
        intake_p99 - rtt_p99,
        "ms",
        None,
        "target ≤ 2",
    );
    for queue in [&queue, &partner_queue] {
        let _ = Command::new("rabbitmqctl")
            .args(["delete_queue", queue])
            .output();
    }
    Ok(())
}

/// The fulfilment hand-off switched on, as in production: every order is also relayed
/// to one partner at `address` while the phases run.
fn hand_off(address: &str) -> [(String, String); 3] {
    [
        ("CARTBUS_ROUTES".into(), "*=bench".into()),
        ("CARTBUS_PARTNER_BENCH_ADDRESS".into(), address.into()),
        (
            "CARTBUS_PARTNER_BENCH_SECRET".into(),
            "bench-partner-secret-0001".into(),
        ),
    ]
}
