use std::collections::HashSet;

use super::{Figure, Metrics, outcomes};

const FAMILIES: [(&str, &outcomes::List); 6] = [
    ("checkouts", &outcomes::CHECKOUTS),
    ("consumer_messages", &outcomes::CONSUMER),
    ("outbox_events", &outcomes::OUTBOX),
    ("partner_replies", &outcomes::PARTNER_REPLIES),
    ("dead_letter_resubmits", &outcomes::DEAD_LETTER_RESUBMITS),
    ("payment_calls", &outcomes::PAYMENT_CALLS),
];

#[test]
fn every_known_outcome_is_there_at_zero_before_anything_happens() {
    let text = Metrics::new().render();
    for (name, known) in FAMILIES {
        let unique: HashSet<_> = known.iter().collect();
        assert_eq!(unique.len(), known.len(), "{name}: {:?}", **known);
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(&format!("cartbus_{name}_total{{")))
            .collect();
        assert_eq!(series.len(), known.len(), "{name}: {series:?}");
        for outcome in known.iter() {
            let line = format!("cartbus_{name}_total{{outcome=\"{outcome}\"}} 0");
            assert!(series.contains(&line.as_str()), "no `{line}` in\n{text}");
        }
    }
    assert!(
        !text.contains("cartbus_http_request_duration_seconds_count"),
        "requests are not pre-registered"
    );
}

#[test]
fn a_known_outcome_counts() {
    let metrics = Metrics::new();
    metrics.checkout("conflict");
    metrics.consumed("payment_unknown", 2);
    metrics.partner_reply("bad-signature");
    metrics.dead_letter_resubmit("created-order");
    metrics.payment_call("late_after_resolution");
    metrics.outbox("send_deferred", 3);
    let text = metrics.render();
    for line in [
        r#"cartbus_checkouts_total{outcome="conflict"} 1"#,
        r#"cartbus_consumer_messages_total{outcome="payment_unknown"} 2"#,
        r#"cartbus_partner_replies_total{outcome="bad-signature"} 1"#,
        r#"cartbus_dead_letter_resubmits_total{outcome="created-order"} 1"#,
        r#"cartbus_payment_calls_total{outcome="late_after_resolution"} 1"#,
        r#"cartbus_outbox_events_total{outcome="send_deferred"} 3"#,
    ] {
        assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
    }
}

#[test]
fn a_dead_letter_reason_with_none_left_reads_zero_rather_than_vanish() {
    let metrics = Metrics::new();
    let line = |reason: &str, n: i64| format!("cartbus_dead_letters{{reason=\"{reason}\"}} {n}");
    metrics.set_dead_letters(&[
        ("conflict".to_string(), 2),
        ("from-a-newer-version".to_string(), 1),
    ]);
    let text = metrics.render();
    for expected in [
        line("conflict", 2),
        line("from-a-newer-version", 1),
        line("max-attempts", 0),
        line("payment-unknown", 0),
    ] {
        assert!(
            text.lines().any(|l| l == expected),
            "no `{expected}` in\n{text}"
        );
    }
    assert!(
        !text.contains(r#"cartbus_dead_letters{reason="payment-declined"}"#),
        "not a dead-letter reason"
    );

    metrics.set_dead_letters(&[]);
    let text = metrics.render();
    for expected in [line("conflict", 0), line("from-a-newer-version", 0)] {
        assert!(
            text.lines().any(|l| l == expected),
            "no `{expected}` in\n{text}"
        );
    }
}

#[test]
fn a_figure_is_fresh_until_a_read_of_it_fails_and_again_once_one_works() {
    let metrics = Metrics::new();
    let line = |figure: Figure, stale: u8| {
        format!(
            "cartbus_sample_stale{{figure=\"{}\"}} {stale}",
            figure.as_str()
        )
    };
    let has = |text: &str, line: String| {
        assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
    };
    let text = metrics.render();
    for figure in Figure::ALL {
        has(&text, line(figure, 0));
    }
    metrics.sampled(Figure::DeadLetters, false);
    let text = metrics.render();
    has(&text, line(Figure::DeadLetters, 1));
    has(&text, line(Figure::OutboxRows, 0));
    metrics.sampled(Figure::DeadLetters, true);
    has(&metrics.render(), line(Figure::DeadLetters, 0));
}

#[test]
#[cfg(debug_assertions)]
#[should_panic(expected = "not a known outcome")]
fn an_unknown_outcome_fails_in_debug_builds() {
    Metrics::new().checkout("made-up");
}
