//! The embedded queue's semantics (DESIGN §2), tested directly against real queue files.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cartbus::domain::Reason;
use cartbus::queue::embedded::EmbeddedOptions;
use cartbus::queue::{
    Delivery, EmbeddedQueue, Lookup, Message, Properties, Property, Queue, Receiver, Settlement,
};
use tokio_util::sync::CancellationToken;

const ADDRESS: &str = "test-queue";

fn options(owner: &str, lease: Duration, max_attempts: u32) -> EmbeddedOptions {
    EmbeddedOptions {
        owner: owner.into(),
        lease,
        max_attempts,
        poll_interval: Duration::from_millis(20),
    }
}

async fn open(path: &Path, owner: &str) -> EmbeddedQueue {
    EmbeddedQueue::open(path, options(owner, Duration::from_secs(30), 3))
        .await
        .expect("queue opens")
}

fn message(n: usize) -> Message {
    Message {
        message_id: format!("m-{n}"),
        content_type: "application/json".into(),
        properties: Properties::from([
            ("schema".into(), Property::Int(1)),
            ("total".into(), Property::Long(5_000_000_000)),
            ("country".into(), Property::String("GB".into())),
            ("gift".into(), Property::Bool(true)),
        ]),
        body: Bytes::from(format!("{{\"n\":{n}}}")),
        ..Default::default()
    }
}

async fn receive(receiver: &mut Box<dyn Receiver>, max: usize) -> Vec<Delivery> {
    let stop = CancellationToken::new();
    tokio::time::timeout(common::DEADLINE, receiver.receive(max, &stop))
        .await
        .expect("a delivery arrives")
        .expect("receive works")
}

/// Receives with a short wait, expecting nothing.
async fn receive_nothing(receiver: &mut Box<dyn Receiver>) {
    let stop = CancellationToken::new();
    let got = tokio::time::timeout(Duration::from_millis(300), receiver.receive(10, &stop)).await;
    assert!(
        got.is_err(),
        "expected no delivery, got {:?}",
        got.map(|r| r.map(|d| d.len()))
    );
}

async fn depth(queue: &EmbeddedQueue) -> u64 {
    queue.stats(ADDRESS).await.expect("stats").depth
}

#[tokio::test]
async fn sent_messages_come_out_in_order_with_their_properties_and_accept_removes_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = open(&dir.path().join("q.db"), "a").await;
    for n in 0..5 {
        queue.send(ADDRESS, message(n)).await.expect("send");
    }
    assert_eq!(depth(&queue).await, 5);
    assert_eq!(
        queue.lookup(ADDRESS, "m-3").await.expect("lookup"),
        Lookup::Waiting
    );

    let mut receiver = queue.receiver(ADDRESS).await.expect("receiver");
    let batch = receive(&mut receiver, 3).await;
    let ids: Vec<&str> = batch
        .iter()
        .map(|d| d.message.message_id.as_str())
        .collect();
    assert_eq!(ids, ["m-0", "m-1", "m-2"]);
    assert_eq!(batch[0].message, message(0));
    assert_eq!(batch[0].attempts, 0);

    receiver
        .settle(batch.iter().map(|d| (d.tag, Settlement::Accept)).collect())
        .await
        .expect("settle");
    assert_eq!(depth(&queue).await, 2);
    assert_eq!(
        queue.lookup(ADDRESS, "m-0").await.expect("lookup"),
        Lookup::Absent
    );
    let rest = receive(&mut receiver, 10).await;
    let ids: Vec<&str> = rest.iter().map(|d| d.message.message_id.as_str()).collect();
    assert_eq!(ids, ["m-3", "m-4"]);
}

#[tokio::test]
async fn release_gives_back_without_counting_and_honours_its_delay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = open(&dir.path().join("q.db"), "a").await;
    queue.send(ADDRESS, message(1)).await.expect("send");
    let mut receiver = queue.receiver(ADDRESS).await.expect("receiver");

    let first = receive(&mut receiver, 1).await;
    receive_nothing(&mut receiver).await; // leased: invisible
    let delay = Duration::from_millis(500);
    let released_at = Instant::now();
    receiver
        .settle(vec![(first[0].tag, Settlement::Release { delay })])
        .await
        .expect("release");
    let again = receive(&mut receiver, 1).await;
    // The queue keeps times in wall-clock milliseconds: allow for their rounding.
    let waited = released_at.elapsed();
    assert!(
        waited + Duration::from_millis(2) >= delay,
        "redelivered after {waited:?}, before its {delay:?} delay"
    );
    assert_eq!(again[0].message.message_id, "m-1");
    assert_eq!(again[0].attempts, 0, "release does not count an attempt");
}

#[tokio::test]
async fn failures_count_attempts_and_the_limit_dead_letters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = open(&dir.path().join("q.db"), "a").await; // max_attempts = 3
    queue.send(ADDRESS, message(7)).await.expect("send");
    let mut receiver = queue.receiver(ADDRESS).await.expect("receiver");
    for expected_attempts in 0..3 {
        let batch = receive(&mut receiver, 1).await;
        assert_eq!(batch[0].attempts, expected_attempts);
        let fail = Settlement::Fail {
            delay: Duration::ZERO,
            detail: format!("boom {expected_attempts}"),
        };
        receiver
            .settle(vec![(batch[0].tag, fail)])
            .await
            .expect("fail");
    }
    receive_nothing(&mut receiver).await;
    assert_eq!(depth(&queue).await, 0);
    let dead = queue.dead_letters(ADDRESS).await.expect("dead letters");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message_id, "m-7");
    assert_eq!(dead[0].reason, "max-attempts");
    assert_eq!(dead[0].attempts, 3);
    assert!(dead[0].detail.contains("boom 2"), "{}", dead[0].detail);
    assert_eq!(dead[0].body, message(7).body);
    assert_eq!(
        queue.lookup(ADDRESS, "m-7").await.expect("lookup"),
        Lookup::DeadLettered {
            reason: "max-attempts".into()
        }
    );
}

#[tokio::test]
async fn reject_dead_letters_at_once_with_its_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = open(&dir.path().join("q.db"), "a").await;
    queue.send(ADDRESS, message(1)).await.expect("send");
    queue.send(ADDRESS, message(2)).await.expect("send");
    let mut receiver = queue.receiver(ADDRESS).await.expect("receiver");
    let batch = receive(&mut receiver, 2).await;
    let reject = Settlement::Reject {
        reason: Reason::UnknownSchema,
        detail: "schema 99".into(),
    };
    receiver
        .settle(vec![
            (batch[0].tag, reject),
            (batch[1].tag, Settlement::Accept),
        ])
        .await
        .expect("settle");
    assert_eq!(depth(&queue).await, 0);
    let dead = queue.dead_letters(ADDRESS).await.expect("dead letters");
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].message_id.as_str(), dead[0].reason.as_str()),
        ("m-1", "unknown-schema")
    );
    assert_eq!(dead[0].detail, "schema 99");
    assert_eq!(dead[0].attempts, 0);
}

#[tokio::test]
async fn an_unsettled_delivery_comes_back_when_its_lease_expires() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("q.db");
    let lease = Duration::from_millis(400);
    let queue = EmbeddedQueue::open(&path, options("a", lease, 3))
        .await
        .expect("open");
    queue.send(ADDRESS, message(1)).await.expect("send");

    let mut first = queue.receiver(ADDRESS).await.expect("receiver");
    // Taken before the lease starts; the queue keeps lease times in wall-clock
    // milliseconds, so allow for one millisecond of rounding against this monotonic clock.
    let leased_at = Instant::now();
    let held = receive(&mut first, 1).await;
    // A second consumer (another process, say) gets it only after the lease.
    let mut second = queue.receiver(ADDRESS).await.expect("receiver");
    let again = receive(&mut second, 1).await;
    let waited = leased_at.elapsed();
    assert!(
        waited + Duration::from_millis(2) >= lease,
        "handed out again after {waited:?}, before the {lease:?} lease ran out"
    );
    assert_eq!(again[0].message.message_id, "m-1");

    // The first holder's late settlement must not remove the message from its new holder.
    first
        .settle(vec![(held[0].tag, Settlement::Accept)])
        .await
        .expect("late settle is ignored");
    assert_eq!(depth(&queue).await, 1);
    second
        .settle(vec![(again[0].tag, Settlement::Accept)])
        .await
        .expect("settle");
    assert_eq!(depth(&queue).await, 0);
}

#[tokio::test]
async fn closing_a_receiver_gives_back_what_it_holds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = open(&dir.path().join("q.db"), "a").await;
    for n in 0..3 {
        queue.send(ADDRESS, message(n)).await.expect("send");
    }
    let mut receiver = queue.receiver(ADDRESS).await.expect("receiver");
    let batch = receive(&mut receiver, 3).await;
    receiver
        .settle(vec![(batch[0].tag, Settlement::Accept)])
        .await
        .expect("settle");
    receiver.close().await.expect("close");
    let mut next = queue.receiver(ADDRESS).await.expect("receiver");
    let back = receive(&mut next, 10).await;
    let ids: Vec<&str> = back.iter().map(|d| d.message.message_id.as_str()).collect();
    assert_eq!(ids, ["m-1", "m-2"]);
}

#[tokio::test]
async fn messages_and_leases_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("q.db");
    {
        let queue = open(&path, "instance-1").await;
        for n in 0..10 {
            queue.send(ADDRESS, message(n)).await.expect("send");
        }
        let mut receiver = queue.receiver(ADDRESS).await.expect("receiver");
        let held = receive(&mut receiver, 4).await;
        assert_eq!(held.len(), 4);
        // The process "dies" holding four leases: nothing is settled.
        drop(receiver);
    }
    // Another instance must wait for those leases…
    let other = open(&path, "instance-2").await;
    assert_eq!(depth(&other).await, 10);
    let mut receiver = other.receiver(ADDRESS).await.expect("receiver");
    let visible = receive(&mut receiver, 10).await;
    assert_eq!(visible.len(), 6, "the four leased messages stay invisible");
    receiver.close().await.expect("close");
    drop(other);
    // …but the same instance, restarted, gives them back at once.
    let restarted = open(&path, "instance-1").await;
    let mut receiver = restarted.receiver(ADDRESS).await.expect("receiver");
    let all = receive(&mut receiver, 10).await;
    let ids: Vec<String> = all.iter().map(|d| d.message.message_id.clone()).collect();
    let expected: Vec<String> = (0..10).map(|n| format!("m-{n}")).collect();
    assert_eq!(ids, expected);
}

#[tokio::test]
async fn concurrent_sends_are_all_stored_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = open(&dir.path().join("q.db"), "a").await;
    let sends = (0..2000).map(|n| {
        let queue = queue.clone();
        tokio::spawn(async move { queue.send(ADDRESS, message(n)).await })
    });
    for result in futures::future::join_all(sends).await {
        result.expect("task").expect("send");
    }
    assert_eq!(depth(&queue).await, 2000);
    let mut receiver = queue.receiver(ADDRESS).await.expect("receiver");
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 2000 {
        let batch = receive(&mut receiver, 500).await;
        for delivery in &batch {
            assert!(
                seen.insert(delivery.message.message_id.clone()),
                "duplicate delivery"
            );
        }
        receiver
            .settle(batch.iter().map(|d| (d.tag, Settlement::Accept)).collect())
            .await
            .expect("settle");
    }
    assert_eq!(depth(&queue).await, 0);
}

#[tokio::test]
async fn an_unusable_path_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").expect("write");
    let result = EmbeddedQueue::open(
        &file.join("queue.db"),
        options("a", Duration::from_secs(1), 3),
    )
    .await;
    assert!(result.is_err());
}
