//! The repair script's rules, on hand-made generations and ledgers: what it gives back, when
//! a ledger is stale, that it never creates pyABC keys, counts lost workers once, and
//! publishes `start` only when it gives work back.

use crate::support::redis::{connect, server, snapshot};
use crate::{check_invariants, get_i, put_ledger, set_all};
use abc_operator::protocol::{self, repair_lost_worker};
use redis::AsyncCommands;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_rules_on_hand_made_ledgers() {
    let redis = server();
    let mut conn = connect(&redis).await;
    set_all(
        &mut conn,
        &[
            ("analysis_id", "ana"),
            ("generation_ana", "3"),
            ("mode_ana_3", "dynamic"),
            ("n_worker_ana_3", "1"),
            ("n_eval_ana_3", "10"),
            ("n_fail_ana_3", "1"),
            ("n_worker_ana_2", "1"),
            ("n_eval_ana_2", "50"),
            ("n_fail_ana_2", "0"),
            ("n_worker_ana_1", "1"),
            ("worker", "someone-else"),
        ],
    )
    .await;
    let claim = |t: &'static str| {
        vec![
            ("analysis", "ana"),
            ("generation", t),
            ("joined", "1"),
            ("claim_max", "10"),
            ("claim_n", "3"),
            ("claim_fail", "1"),
        ]
    };
    put_ledger(&mut conn, "w", &claim("3")).await;
    let snap = snapshot(&mut conn).await;
    check_invariants(&snap);
    assert_eq!(
        snap.info_line(),
        "Workers=1 Evaluations=10 Acceptances=None/None (generation 3)"
    );

    assert_eq!(snap.lost_workers, 0, "no repair yet");
    let repair = repair_lost_worker(&mut conn, "w").await.unwrap().unwrap();
    assert!(repair.left_generation && !repair.stale);
    assert_eq!(
        (repair.indices.clone(), repair.failures_added),
        (Some(8..=10), 2)
    );
    // Counted by the script itself, in Redis, and read back by the snapshot.
    assert_eq!(repair.lost_workers, 1);
    assert_eq!(
        get_i(&mut conn, protocol::keys::LOST_WORKERS).await,
        Some(1)
    );
    assert_eq!(get_i(&mut conn, "n_worker_ana_3").await, Some(0));
    assert_eq!(get_i(&mut conn, "n_fail_ana_3").await, Some(3));
    let done: Vec<i64> = conn.lrange("done_ixs_ana_3", 0, -1).await.unwrap();
    assert_eq!(done, [8, 9, 10]);
    let snap = snapshot(&mut conn).await;
    assert!(snap.ledgers.is_empty());
    assert_eq!(snap.lost_workers, 1);
    // Exactly once, and counted once.
    assert_eq!(repair_lost_worker(&mut conn, "w").await.unwrap(), None);
    assert_eq!(get_i(&mut conn, "n_fail_ana_3").await, Some(3));
    assert_eq!(snapshot(&mut conn).await.lost_workers, 1);

    // n_worker already 0 (e.g. after reset-workers): never below 0.
    put_ledger(&mut conn, "w", &claim("3")).await;
    let repair = repair_lost_worker(&mut conn, "w").await.unwrap().unwrap();
    assert!(!repair.left_generation);
    assert_eq!(get_i(&mut conn, "n_worker_ana_3").await, Some(0));
    assert_eq!(repair.lost_workers, 2, "its claim was given back: a repair");

    // The generation before the current one (look-ahead) is still live.
    put_ledger(&mut conn, "w", &claim("2")).await;
    let repair = repair_lost_worker(&mut conn, "w").await.unwrap().unwrap();
    assert!(repair.left_generation && !repair.stale);
    assert_eq!(get_i(&mut conn, "n_worker_ana_2").await, Some(0));

    // Older generations and other analyses: the ledger is only deleted.
    put_ledger(&mut conn, "w", &claim("1")).await;
    let repair = repair_lost_worker(&mut conn, "w").await.unwrap().unwrap();
    assert!(repair.stale && !repair.corrected());
    assert_eq!(get_i(&mut conn, "n_worker_ana_1").await, Some(1));
    assert_eq!(
        repair.lost_workers, 3,
        "a stale ledger is not a lost worker"
    );
    put_ledger(
        &mut conn,
        "w",
        &[
            ("analysis", "gone"),
            ("generation", "3"),
            ("joined", "1"),
            ("claim_max", "4"),
            ("claim_n", "1"),
        ],
    )
    .await;
    assert!(
        repair_lost_worker(&mut conn, "w")
            .await
            .unwrap()
            .unwrap()
            .stale
    );
    let created: i64 = redis::cmd("EXISTS")
        .arg(&["n_worker_gone_3", "done_ixs_gone_3", "n_fail_gone_3"][..])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(created, 0, "a repair never creates pyABC keys");

    // A live generation whose counters are gone (a static master cleared them): nothing created.
    put_ledger(
        &mut conn,
        "w",
        &[("analysis", "ana"), ("generation", "3"), ("jobs", "1")],
    )
    .await;
    let repair = repair_lost_worker(&mut conn, "w").await.unwrap().unwrap();
    assert_eq!(repair.jobs_returned, 0);
    assert_eq!(get_i(&mut conn, "n_job_ana_3").await, None);

    // pyABC's static lock: released only when the dead worker's token still holds it.
    put_ledger(
        &mut conn,
        "w",
        &[("lock_name", "worker"), ("lock_token", "tok")],
    )
    .await;
    let repair = repair_lost_worker(&mut conn, "w").await.unwrap().unwrap();
    assert!(!repair.lock_released);
    assert_eq!(repair.lost_workers, 3);
    assert_eq!(
        conn.get::<_, Option<String>>("worker")
            .await
            .unwrap()
            .as_deref(),
        Some("someone-else")
    );
    set_all(&mut conn, &[("worker", "tok")]).await;
    put_ledger(
        &mut conn,
        "w",
        &[("lock_name", "worker"), ("lock_token", "tok")],
    )
    .await;
    assert!(
        repair_lost_worker(&mut conn, "w")
            .await
            .unwrap()
            .unwrap()
            .lock_released
    );
    assert_eq!(conn.get::<_, Option<String>>("worker").await.unwrap(), None);

    // Never a ledger: no-op.
    assert_eq!(repair_lost_worker(&mut conn, "nobody").await.unwrap(), None);
    // The look-ahead repair and the lock release counted; nothing else did.
    assert_eq!(snapshot(&mut conn).await.lost_workers, 4);
}

/// `start` wakes idle workers into the current generation: only worth it when the repair gave
/// work back. After a bare n_worker -1 the generation may be ending, and a static master that
/// saw n_worker 0 deletes its keys under workers joining then (their leaving makes n_worker -1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_publishes_start_only_when_it_gives_work_back() {
    use futures::StreamExt;
    let redis = server();
    let mut conn = connect(&redis).await;
    set_all(
        &mut conn,
        &[
            ("analysis_id", "ana"),
            ("generation_ana", "3"),
            ("mode_ana_3", "dynamic"),
            ("n_worker_ana_3", "2"),
            ("n_eval_ana_3", "10"),
            ("n_fail_ana_3", "0"),
        ],
    )
    .await;
    let mut pubsub = redis::Client::open(redis.url())
        .unwrap()
        .get_async_pubsub()
        .await
        .unwrap();
    pubsub.subscribe(protocol::keys::MSG).await.unwrap();
    let mut messages = pubsub.on_message();
    let joined = [("analysis", "ana"), ("generation", "3"), ("joined", "1")];

    put_ledger(&mut conn, "between-claims", &joined).await;
    let repair = repair_lost_worker(&mut conn, "between-claims")
        .await
        .unwrap()
        .unwrap();
    assert!(repair.left_generation && repair.indices.is_none());
    assert_eq!(repair.lost_workers, 1, "a lost worker all the same");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), messages.next())
            .await
            .is_err(),
        "no start after a bare n_worker -1"
    );

    put_ledger(
        &mut conn,
        "claiming",
        &[joined.as_slice(), &[("claim_max", "10"), ("claim_n", "1")]].concat(),
    )
    .await;
    let repair = repair_lost_worker(&mut conn, "claiming")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(repair.indices, Some(10..=10));
    let message = tokio::time::timeout(Duration::from_secs(5), messages.next())
        .await
        .expect("start after giving indices back")
        .unwrap();
    assert_eq!(
        message.get_payload::<String>().unwrap(),
        protocol::keys::START
    );
    assert_eq!(get_i(&mut conn, "n_worker_ana_3").await, Some(0));
}
