//! The architecture, as a test. cartbus is built in layers; each may use the layers below
//! it and never one above. This file holds the layer list (the one place it is written
//! down), reads every `crate::…` and `super::…` path under `src/`, and fails on an import
//! that runs up the order, on a cycle between top-level modules, and on a module that no
//! layer claims.
//!
//! Bottom to top:
//!
//! | layer    | modules                | what it holds                                              |
//! |----------|------------------------|------------------------------------------------------------|
//! | support  | `backoff`, `fault`, `telemetry`, `sqlite` | retry waits, fail points (test builds), tracing, SQLite connection hygiene |
//! | domain   | `domain`               | the cart, money, messages, reasons: no I/O                 |
//! | metrics  | `metrics`              | the metric registry: every known label value, from the domain's enums |
//! | config   | `config`               | every setting, its default, its validation                 |
//! | queue    | `queue`                | the queue trait and its backends: nothing of the orders database |
//! | stores   | `store`                | SQL per table family: `&mut` a transaction in, `StoreError` out |
//! | services | `service`              | place, pay, intake, the worker loop and its steps, the drain policy |
//! | runtime  | `runtime`              | `App` wiring, background tasks, health, metric sampling    |
//! | http     | `http`                 | thin handlers: parse, call one service, map its error      |
//! | entry    | crate root, `cli`      | `Application`, the command line                            |

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Bottom to top: a module may use its own layer and those before it.
const LAYERS: &[(&str, &[&str])] = &[
    ("support", &["backoff", "fault", "telemetry", "sqlite"]),
    ("domain", &["domain"]),
    ("metrics", &["metrics"]),
    ("config", &["config"]),
    ("queue", &["queue"]),
    ("stores", &["store"]),
    ("services", &["service"]),
    ("runtime", &["runtime"]),
    ("http", &["http"]),
    ("entry", &["", "cli"]),
];

/// One reference from a module to another.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Edge {
    from: String,
    to: String,
    file: String,
    line: usize,
}

#[test]
fn imports_only_run_down_the_layers() {
    let sources = read_sources(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src")));
    assert!(
        sources.len() > 20,
        "found only {} source files under src/",
        sources.len()
    );
    let report = check(&sources);
    let mut failures = Vec::new();
    if !report.unclaimed.is_empty() {
        failures.push(format!(
            "modules that no layer claims (add them to LAYERS): {:?}",
            report.unclaimed
        ));
    }
    if !report.upward.is_empty() {
        let upward: Vec<String> = report.upward.iter().map(describe).collect();
        failures.push(format!(
            "imports that run up the layers ({}):\n  {}",
            upward.len(),
            upward.join("\n  ")
        ));
    }
    if !report.cycles.is_empty() {
        failures.push(format!(
            "top-level modules that import each other: {:?}",
            report.cycles
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The checker itself catches what it is for: an upward import, a cycle, an unclaimed
/// module (so the test above cannot pass by reading nothing).
#[test]
fn the_checker_catches_an_upward_import_and_a_cycle() {
    let sources = vec![
        source(
            "store/mod.rs",
            "use crate::domain::Cart;\nuse crate::service::place;\n",
        ),
        source("store/orders.rs", "use super::Tx;\n"),
        source(
            "domain/mod.rs",
            "// use crate::http::x; (a comment: ignored)\n",
        ),
        source(
            "service/mod.rs",
            "use crate::{domain::{Cart, Reason}, store::{self, Tx}};\n",
        ),
        source("queue/mod.rs", "use crate::domain::Message;\n"),
        source("stray.rs", "use crate::domain::Cart;\n"),
        // `super` in an inline module is the file's own module, not its parent.
        source(
            "config/mod.rs",
            "fn f() { let _ = '{'; }\n#[cfg(test)]\nmod tests {\n    use super::*;\n}\nuse super::lib;\n",
        ),
    ];
    let report = check(&sources);
    let upward: Vec<(&str, &str)> = report
        .upward
        .iter()
        .map(|e| (e.from.as_str(), e.to.as_str()))
        .collect();
    // The inline module's `super` is no edge; the file's own `super` (line 6) is.
    assert_eq!(
        upward,
        vec![("config", ""), ("store", "service")],
        "{:?}",
        report.upward
    );
    assert_eq!((report.upward[0].line, report.upward[1].line), (6, 2));
    assert_eq!(
        report.cycles,
        vec![vec!["service".to_string(), "store".to_string()]]
    );
    assert_eq!(report.unclaimed, vec!["stray".to_string()]);
}

fn source(path: &str, text: &str) -> (String, String) {
    (path.to_string(), text.to_string())
}

#[derive(Debug, Default)]
struct Report {
    upward: Vec<Edge>,
    /// Each a set of top-level modules that reach one another.
    cycles: Vec<Vec<String>>,
    unclaimed: Vec<String>,
}

fn check(sources: &[(String, String)]) -> Report {
    let modules: BTreeSet<String> = sources.iter().map(|(p, _)| module_of(p)).collect();
    let macros = exported_macros(sources);
    let mut edges = Vec::new();
    for (path, text) in sources {
        let from = module_of(path);
        for (line, target) in references(&from, text) {
            let to = resolve(&target, &modules, &macros);
            if to != from && !to.starts_with(&format!("{from}::")) {
                edges.push(Edge {
                    from: from.clone(),
                    to,
                    file: path.clone(),
                    line,
                });
            }
        }
    }
    let mut report = Report::default();
    let mut unclaimed = BTreeSet::new();
    for module in &modules {
        if layer(module).is_none() {
            unclaimed.insert(top(module).to_string());
        }
    }
    report.unclaimed = unclaimed.into_iter().collect();
    for edge in &edges {
        if let (Some(from), Some(to)) = (layer(&edge.from), layer(&edge.to))
            && to > from
        {
            report.upward.push(edge.clone());
        }
    }
    report.upward.sort();
    report
        .upward
        .dedup_by(|a, b| a.from == b.from && a.to == b.to);
    report.cycles = cycles(&edges);
    report
}

fn describe(edge: &Edge) -> String {
    let name = |m: &str| layer(m).map(|i| LAYERS[i].0).unwrap_or("?").to_string();
    format!(
        "src/{}:{}: {} ({}) uses {} ({})",
        edge.file,
        edge.line,
        display(&edge.from),
        name(&edge.from),
        display(&edge.to),
        name(&edge.to)
    )
}

fn display(module: &str) -> &str {
    if module.is_empty() { "crate" } else { module }
}

/// The index in [`LAYERS`] of the layer that claims `module` (by its top-level module).
fn layer(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .position(|(_, tops)| tops.contains(&top(module)))
}

fn top(module: &str) -> &str {
    module.split("::").next().unwrap_or("")
}

/// `store/orders.rs` → `store::orders`; `store/mod.rs` → `store`; `lib.rs` → `` (root).
fn module_of(path: &str) -> String {
    let path = path.trim_end_matches(".rs");
    let path = path.strip_suffix("/mod").unwrap_or(path);
    if path == "lib" || path == "main" {
        return String::new();
    }
    path.replace('/', "::")
}

/// Every `crate::…` and `super::…` path in `text`, with its line, `use` groups expanded
/// (`crate::{a::B, c}` → `a::B`, `c`), as absolute module paths. Comment lines are skipped.
fn references(module: &str, text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    // Inline modules (`mod tests { … }`) open at a brace depth and close when it returns.
    let mut inline: Vec<(String, i64)> = Vec::new();
    let mut depth: i64 = 0;
    for (n, line) in text.lines().enumerate() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        let module = match inline.last() {
            Some((inner, _)) => inner.clone(),
            None => module.to_string(),
        };
        let module = module.as_str();
        if let Some(name) = inline_module(code) {
            inline.push((join(module, name), depth));
        }
        depth += braces(code);
        while inline.last().is_some_and(|(_, open)| depth <= *open) {
            inline.pop();
        }
        let bytes = code.as_bytes();
        let mut i = 0;
        while i < code.len() {
            let rest = &code[i..];
            let boundary = i == 0 || !is_ident(bytes[i - 1]) && bytes[i - 1] != b'$';
            let base = if !boundary {
                None
            } else if rest.starts_with("crate::") {
                Some((String::new(), "crate::".len()))
            } else if rest.starts_with("super::") {
                let mut parent = module.rsplit_once("::").map_or("", |(p, _)| p).to_string();
                let mut skip = "super::".len();
                while code[i + skip..].starts_with("super::") {
                    parent = parent.rsplit_once("::").map_or("", |(p, _)| p).to_string();
                    skip += "super::".len();
                }
                Some((parent, skip))
            } else {
                None
            };
            match base {
                Some((base, skip)) => {
                    let (paths, used) = parse_tree(&code[i + skip..]);
                    for path in paths {
                        found.push((n + 1, join(&base, &path)));
                    }
                    i += skip + used.max(1);
                }
                None => i += rest.chars().next().map_or(1, char::len_utf8),
            }
        }
    }
    found
}

/// `mod name {` (with `pub` or `pub(crate)`) opens an inline module called `name`.
fn inline_module(code: &str) -> Option<&str> {
    let code = code
        .strip_prefix("pub(crate) ")
        .or_else(|| code.strip_prefix("pub "))
        .unwrap_or(code);
    let name = code.strip_prefix("mod ")?.strip_suffix('{')?.trim();
    name.bytes().all(is_ident).then_some(name)
}

/// Opening minus closing braces on a line, outside string and char literals.
fn braces(code: &str) -> i64 {
    let mut count = 0;
    let mut in_string = false;
    let mut chars = code.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if in_string => {
                chars.next();
            }
            '"' => in_string = !in_string,
            '\'' if !in_string => {
                // A char literal ('{', '\'') — not a lifetime ('a): skip to its close.
                let literal: String = chars.clone().take(3).collect();
                if literal.chars().nth(1) == Some('\'') || literal.starts_with('\\') {
                    for next in chars.by_ref() {
                        if next == '\'' {
                            break;
                        }
                    }
                }
            }
            '{' if !in_string => count += 1,
            '}' if !in_string => count -= 1,
            _ => {}
        }
    }
    count
}

fn join(base: &str, path: &str) -> String {
    match (base.is_empty(), path.is_empty()) {
        (true, _) => path.to_string(),
        (false, true) => base.to_string(),
        (false, false) => format!("{base}::{path}"),
    }
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Parses `a::b::C`, `a::{b, c::{D, E}}` or `{a, b}` at the start of `s`: the paths it
/// names and how many bytes it took. Only as much of Rust as `use` trees need.
fn parse_tree(s: &str) -> (Vec<String>, usize) {
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut prefix = Vec::new();
    loop {
        if i < bytes.len() && bytes[i] == b'{' {
            let mut paths = Vec::new();
            i += 1;
            loop {
                while i < bytes.len() && (bytes[i].is_ascii_whitespace() || bytes[i] == b',') {
                    i += 1;
                }
                if i >= bytes.len() || bytes[i] == b'}' {
                    i += 1;
                    break;
                }
                let (inner, used) = parse_tree(&s[i..]);
                for path in inner {
                    let mut whole = prefix.clone();
                    if !path.is_empty() && path != "self" {
                        whole.push(path);
                    }
                    paths.push(whole.join("::"));
                }
                i += used.max(1);
            }
            return (paths, i);
        }
        let start = i;
        while i < bytes.len() && is_ident(bytes[i]) {
            i += 1;
        }
        if i > start {
            prefix.push(s[start..i].to_string());
        }
        if s[i..].starts_with("::") {
            i += 2;
        } else {
            // `as alias`, `;`, `(`, … end the path.
            return (vec![prefix.join("::")], i);
        }
    }
}

/// `#[macro_export]` macros live at the crate root; they belong to the module that
/// defines them.
fn exported_macros(sources: &[(String, String)]) -> BTreeMap<String, String> {
    let mut macros = BTreeMap::new();
    for (path, text) in sources {
        let mut exported = false;
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with("#[macro_export]") {
                exported = true;
            } else if let Some(rest) = line.strip_prefix("macro_rules!") {
                if exported {
                    let name: String = rest
                        .trim()
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    macros.insert(name, module_of(path));
                }
                exported = false;
            }
        }
    }
    macros
}

/// The longest known module that `path` starts with (the root when none does).
fn resolve(path: &str, modules: &BTreeSet<String>, macros: &BTreeMap<String, String>) -> String {
    if let Some(module) = macros.get(path) {
        return module.clone();
    }
    let parts: Vec<&str> = path.split("::").collect();
    (1..=parts.len())
        .rev()
        .map(|n| parts[..n].join("::"))
        .find(|candidate| modules.contains(candidate))
        .unwrap_or_default()
}

/// Strongly connected sets of more than one top-level module (Tarjan's algorithm would
/// do; with ~15 modules, reachability is plainer).
fn cycles(edges: &[Edge]) -> Vec<Vec<String>> {
    let mut graph: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for edge in edges {
        let (from, to) = (top(&edge.from), top(&edge.to));
        if from != to {
            graph.entry(from).or_default().insert(to);
        }
    }
    let reach = |start: &str| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![start.to_string()];
        while let Some(node) = todo.pop() {
            for next in graph.get(node.as_str()).into_iter().flatten() {
                if seen.insert(next.to_string()) {
                    todo.push(next.to_string());
                }
            }
        }
        seen
    };
    let nodes: BTreeSet<&str> = graph.keys().copied().collect();
    let reachable: BTreeMap<&str, BTreeSet<String>> =
        nodes.iter().map(|n| (*n, reach(n))).collect();
    let mut groups: BTreeSet<Vec<String>> = BTreeSet::new();
    for node in &nodes {
        let group: Vec<String> = nodes
            .iter()
            .filter(|other| reachable[node].contains(**other) && reachable[**other].contains(*node))
            .map(|s| s.to_string())
            .collect();
        if group.len() > 1 {
            groups.insert(group);
        }
    }
    groups.into_iter().collect()
}

/// Every `.rs` file under `dir`, as (path relative to `src/`, text); `src/bin/` is left
/// out (binaries use the library from outside, as `cartbus::…`).
fn read_sources(dir: &Path) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(current) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "bin") {
                    todo.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                let relative = path
                    .strip_prefix(dir)
                    .expect("walked from dir")
                    .to_string_lossy()
                    .replace('\\', "/");
                let text = std::fs::read_to_string(&path).expect("source files are UTF-8");
                found.push((relative, text));
            }
        }
    }
    found.sort();
    found
}
