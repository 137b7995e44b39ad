//! What the bench prints and writes: the tables on stdout and the same figures as JSON.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

/// One line of the `amqp-publish` table: a message rate.
#[derive(Serialize)]
pub struct Row {
    what: String,
    messages: usize,
    seconds: f64,
    per_second: f64,
}

impl Row {
    pub fn new(what: impl Into<String>, messages: usize, took: Duration) -> Row {
        let seconds = took.as_secs_f64();
        Row {
            what: what.into(),
            messages,
            seconds,
            per_second: messages as f64 / seconds.max(1e-9),
        }
    }
}

/// The `amqp-publish` table, with the ratios it is run for.
pub fn print_rows(rows: &[Row]) {
    println!(
        "{:<52} {:>9} {:>9} {:>11}",
        "", "messages", "seconds", "msg/s"
    );
    for row in rows {
        println!(
            "{:<52} {:>9} {:>9.2} {:>11.0}",
            row.what, row.messages, row.seconds, row.per_second
        );
    }
    if let (Some(serial), Some(windowed)) = (rows.first(), rows.get(1)) {
        println!(
            "\nwindowed / one-at-a-time: {:.1}x",
            windowed.per_second / serial.per_second.max(1e-9)
        );
    }
    if let (Some(raw), Some(ours)) = (rows.get(1), rows.get(2)) {
        println!(
            "cartbus publisher / raw windowed: {:.2}",
            ours.per_second / raw.per_second.max(1e-9)
        );
    }
}

/// One line of the `run` table: a cartbus figure and, where there is one, the raw speed
/// of the part underneath it.
#[derive(Serialize, Clone)]
pub struct Figure {
    stack: String,
    what: String,
    value: f64,
    unit: String,
    /// The raw counterpart and the ratio to it, where there is one.
    raw: Option<f64>,
    ratio: Option<f64>,
    note: String,
}

/// The `run` table's header line.
pub fn print_figure_header() {
    println!(
        "  {:<44} {:>12} {:<6} {:>12} {:>7}  note",
        "figure", "value", "unit", "raw", "ratio"
    );
}

/// The figures of one stack, each printed as it is added.
pub struct Table {
    pub figures: Vec<Figure>,
    stack: String,
}

impl Table {
    pub fn new(stack: &str) -> Table {
        Table {
            figures: Vec::new(),
            stack: stack.into(),
        }
    }

    pub fn add(
        &mut self,
        what: &str,
        value: f64,
        unit: &str,
        raw: Option<f64>,
        note: impl Into<String>,
    ) {
        let figure = Figure {
            stack: self.stack.clone(),
            what: what.into(),
            value,
            unit: unit.into(),
            raw,
            ratio: raw.filter(|r| *r > 0.0).map(|r| value / r),
            note: note.into(),
        };
        println!(
            "  {:<44} {:>12.1} {:<6} {:>12} {:>7}  {}",
            figure.what,
            figure.value,
            figure.unit,
            figure.raw.map(|r| format!("{r:.1}")).unwrap_or_default(),
            figure.ratio.map(|r| format!("{r:.2}")).unwrap_or_default(),
            figure.note
        );
        self.figures.push(figure);
    }
}

/// Writes `value` as pretty JSON to `path`, creating its directory.
pub fn write_json(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_json::to_vec_pretty(value)?)?;
    Ok(())
}
