//! Who held the CPU: the load generator's own CPU time and cartbus's over a phase, so a
//! ratio can be read knowing how much of the two cores the load itself took; and
//! `--pin`, which gives the load generator and cartbus a core each.
//!
//! Pinning uses `taskset` (util-linux): this process moves itself with `taskset -a -p`
//! (every thread), cartbus is started under `taskset -c`. The raw figures run in this
//! process, so while they run it moves to cartbus's core: raw and cartbus are measured
//! on the same core. PostgreSQL and RabbitMQ are not pinned (they are the machine's
//! services, shared by everything).

use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::{Context, bail};

/// `/proc/<pid>/stat` counts CPU time in USER_HZ ticks, 100 a second in Linux's ABI.
const TICKS_PER_SECOND: f64 = 100.0;

/// The cores of `--pin`: `(load generator, cartbus)`.
static PINNED: OnceLock<(usize, usize)> = OnceLock::new();

/// Puts this process on `load` and every cartbus started after on `service`.
pub fn pin(load: usize, service: usize) -> anyhow::Result<()> {
    move_self(load)?;
    PINNED
        .set((load, service))
        .map_err(|_| anyhow::anyhow!("pinned twice"))
}

/// The core cartbus is pinned to, if any.
pub fn service_core() -> Option<usize> {
    PINNED.get().map(|&(_, service)| service)
}

/// Runs a raw measurement on cartbus's core (when pinned), then moves back.
pub async fn on_service_core<F: Future>(raw: F) -> anyhow::Result<F::Output> {
    let Some(&(load, service)) = PINNED.get() else {
        return Ok(raw.await);
    };
    move_self(service)?;
    let out = raw.await;
    move_self(load)?;
    Ok(out)
}

fn move_self(core: usize) -> anyhow::Result<()> {
    // `taskset -a` walks the threads one by one and fails when one ends meanwhile (the
    // runtime's blocking threads come and go): try again.
    for _ in 0..10 {
        let status = Command::new("taskset")
            .args([
                "-a",
                "-p",
                "-c",
                &core.to_string(),
                &std::process::id().to_string(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .context("taskset (util-linux) is needed for --pin")?;
        if status.success() {
            return Ok(());
        }
    }
    bail!("taskset could not move the bench to core {core}")
}

/// CPU seconds `pid` has used (user + system), from `/proc`.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from its end.
    let after_name = stat.rsplit_once(')')?.1;
    let mut fields = after_name.split_whitespace().skip(11); // field 3 is the first here
    let user: f64 = fields.next()?.parse().ok()?;
    let system: f64 = fields.next()?.parse().ok()?;
    Some((user + system) / TICKS_PER_SECOND)
}

/// The whole machine's busy CPU seconds (every core, everything but idle and I/O wait),
/// from `/proc/stat`'s first line: with the services' share, what is left of the cores.
fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<f64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .map(|t| t.parse().ok())
        .collect::<Option<_>>()?;
    let idle = ticks.get(3)? + ticks.get(4)?;
    Some((ticks.iter().sum::<f64>() - idle) / TICKS_PER_SECOND)
}

/// The machine's cores (`cpuN` lines of `/proc/stat`; this process's own affinity may be
/// one core under `--pin`).
pub fn machine_cores() -> usize {
    std::fs::read_to_string("/proc/stat")
        .map(|stat| {
            stat.lines()
                .filter(|l| {
                    l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit)
                })
                .count()
        })
        .unwrap_or(0)
}

/// CPU used by this process, by cartbus and by the whole machine since
/// [`CpuClock::start`].
pub struct CpuClock {
    started: Instant,
    service: u32,
    at_start: (f64, f64, f64),
}

/// CPU over a phase, each in percent of one core.
pub struct CpuUse {
    pub load: f64,
    pub service: f64,
    /// Every process and the kernel (PostgreSQL and RabbitMQ too); the machine's cores ×
    /// 100 is all there is.
    pub machine: f64,
}

impl CpuClock {
    pub fn start(service: u32) -> CpuClock {
        CpuClock {
            started: Instant::now(),
            service,
            at_start: Self::now(service),
        }
    }

    fn now(service: u32) -> (f64, f64, f64) {
        (
            cpu_seconds(std::process::id()).unwrap_or(0.0),
            cpu_seconds(service).unwrap_or(0.0),
            machine_busy_seconds().unwrap_or(0.0),
        )
    }

    pub fn read(&self) -> CpuUse {
        let wall = self.started.elapsed().as_secs_f64().max(f64::EPSILON);
        let (load, service, machine) = Self::now(self.service);
        CpuUse {
            load: (load - self.at_start.0) / wall * 100.0,
            service: (service - self.at_start.1) / wall * 100.0,
            machine: (machine - self.at_start.2) / wall * 100.0,
        }
    }
}
