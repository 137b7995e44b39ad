//! Schemathesis (an independent OpenAPI fuzzer) against a real cartbus: it reads the
//! served `/openapi.json`, generates valid and invalid requests for every operation, and
//! fails on a 5xx, a status code the document does not list, or a response that does not
//! match its documented schema, content type or headers.
//!
//! Needs `CARTBUS_TEST_SCHEMATHESIS`: the `schemathesis` command (`.ci/run` installs a
//! pinned one in `target/schemathesis-venv`). `CARTBUS_SCHEMATHESIS_EXAMPLES` raises the
//! number of cases per operation for a deeper run than CI's.

mod common;

use std::process::Command;
use std::time::Instant;

use common::{Backend, Process, Settings};

const ADMIN_TOKEN: &str = "schemathesis-admin-token-0123456789";

/// Every check but `positive_data_acceptance`: the document cannot express every rule
/// (a cart's total is the sum of its lines, a `limit` is 1–1000, a status is one of a
/// few words), so a request that matches the schema may still be rightly refused.
const EXCLUDED_CHECKS: &str = "positive_data_acceptance";

fn schemathesis() -> Option<String> {
    match std::env::var("CARTBUS_TEST_SCHEMATHESIS") {
        Ok(path) if !path.is_empty() => Some(path),
        _ if common::services_required() => {
            panic!("CARTBUS_REQUIRE_SERVICES=1 but CARTBUS_TEST_SCHEMATHESIS is not set")
        }
        _ => {
            common::skipped(
                "the_api_keeps_its_openapi_document",
                "needs schemathesis; set CARTBUS_TEST_SCHEMATHESIS to its command (.ci/run makes target/schemathesis-venv)",
            );
            None
        }
    }
}

#[test]
fn the_api_keeps_its_openapi_document() {
    let Some(schemathesis) = schemathesis() else {
        return;
    };
    let examples =
        std::env::var("CARTBUS_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "25".to_string());
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = Settings::new(dir.path(), &Backend::Sqlite)
        .set("CARTBUS_ADMIN_TOKEN", ADMIN_TOKEN)
        // Schemathesis calls every admin operation without the token once (and expects
        // 401): past the wrong-token limit, which tests/hostile.rs covers, it would get 429.
        .set("CARTBUS_ADMIN_AUTH_FAILURES", "100000");
    let server = Process::start(&settings, &[]);

    let started = Instant::now();
    let output = Command::new(&schemathesis)
        .arg("run")
        .arg(format!("{}/openapi.json", server.base))
        .args(["--checks", "all", "--exclude-checks", EXCLUDED_CHECKS])
        .args(["--header", &format!("Authorization: Bearer {ADMIN_TOKEN}")])
        .args(["--max-examples", &examples])
        .args(["--seed", "20261126"])
        .args(["--request-timeout", "10"])
        // One worker: hypothesis 6.170 can trip over its own lambda-source cache when
        // schemathesis runs operations on several threads ("Runtime Error").
        .args(["--workers", "1"])
        // Its .hypothesis cache goes with the test's directory, not into the source tree.
        .current_dir(dir.path())
        .output()
        .unwrap_or_else(|e| panic!("run {schemathesis}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    common::note(&format!(
        "schemathesis ran in {:.0?}: {}",
        started.elapsed(),
        stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
    ));
    if !output.status.success() {
        let server_errors: Vec<String> = server
            .logs()
            .into_iter()
            .filter(|l| l.contains("\"ERROR\""))
            .collect();
        panic!(
            "schemathesis failed ({}):\n{stdout}\n{}\nserver errors:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr),
            server_errors.join("\n")
        );
    }
}
