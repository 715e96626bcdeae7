//! Every Lua script against a real redis-server: each reply is read by field name, and every
//! field a script returns reaches its reader (the worker entrypoint's included); pyABC's
//! manager commands.

use crate::support::python::{manager, worker};
use crate::support::redis::{connect, server, snapshot, wait_for};
use crate::{get_i, put_ledger, set_all};
use abc_operator::protocol::Connection;
use abc_operator::protocol::{
    Claim, Ledger, MasterStart, Mode, Repair, Resumed, Snapshot, StartOutcome,
    clear_stale_analysis_lock, keys, repair_lost_worker, reset_workers, stop,
};
use nix::sys::signal::Signal;
use redis::AsyncCommands;
use std::time::Duration;

/// Redis' clock, in ms.
async fn redis_time_ms(conn: &mut Connection) -> i64 {
    let (seconds, micros): (i64, i64) = redis::cmd("TIME").query_async(conn).await.unwrap();
    seconds * 1000 + micros / 1000
}

/// Every field of the snapshot holds a value of its own, so a value read under another
/// field's name shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_reads_every_field_by_name() {
    let redis = server();
    let mut conn = connect(&redis).await;
    set_all(
        &mut conn,
        &[
            ("analysis_id", "ana"),
            ("generation_ana", "3"),
            ("mode_ana_3", "static"),
            ("n_req_ana_3", "100"),
            ("n_acc_ana_3", "40"),
            ("n_eval_ana_3", "10"),
            ("n_fail_ana_3", "1"),
            ("n_worker_ana_3", "2"),
            ("n_job_ana_3", "5"),
            ("n_lookahead_eval_ana_3", "6"),
            ("all_accepted_ana_3", "1"),
            ("is_look_ahead_ana_3", "0"),
            (keys::LOST_WORKERS, "4"),
        ],
    )
    .await;
    put_ledger(
        &mut conn,
        "w-0",
        &[
            ("worker", "w"),
            ("process", "0"),
            ("host", "node"),
            ("pid", "7"),
            ("started", "1000"),
            ("heartbeat", "2000"),
            ("analysis", "ana"),
            ("generation", "3"),
            ("joined", "1"),
            ("claim_max", "10"),
            ("claim_n", "3"),
            ("claim_fail", "1"),
            ("jobs", "2"),
            ("lock_name", "worker"),
            ("lock_token", "tok"),
        ],
    )
    .await;
    put_ledger(&mut conn, "idle", &[("worker", "idle")]).await;
    // As the abc_operator module records a resume.
    redis::cmd("HSET")
        .arg(keys::RESUMED)
        .arg(&["from_generation", "3", "at", "2026-12-02T16:05:37+00:00"])
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    // As the module records how the master started.
    redis::cmd("HSET")
        .arg(keys::MASTER_START)
        .arg(&[
            "outcome",
            "resumed",
            "cause",
            "continued run 1",
            "at",
            "2026-12-02T16:05:37+00:00",
            "module_version",
            "0.1.0",
        ])
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    // As the module records two stored generations (the snapshot reads only their number).
    redis::cmd("RPUSH")
        .arg(abc_operator::protocol::inference::GENERATIONS)
        .arg(&["{}", "{}"])
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    abc_operator::protocol::request_stop(&mut conn)
        .await
        .unwrap();

    let before = redis_time_ms(&mut conn).await;
    let snap = snapshot(&mut conn).await;
    let after = redis_time_ms(&mut conn).await;
    assert!((before..=after).contains(&snap.time_ms), "{snap:#?}");
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await
        .unwrap();
    let run_id = info
        .lines()
        .find_map(|l| l.strip_prefix("run_id:"))
        .map(str::trim);
    assert_eq!(snap.run_id.as_deref(), run_id, "the server's own run_id");
    let idle = Ledger {
        id: "idle".into(),
        worker: Some("idle".into()),
        host: None,
        pid: None,
        started_ms: None,
        heartbeat_ms: None,
        analysis_id: None,
        generation: None,
        joined: false,
        claim: None,
        jobs: 0,
        lock: None,
    };
    let owing = Ledger {
        id: "w-0".into(),
        worker: Some("w".into()),
        host: Some("node".into()),
        pid: Some(7),
        started_ms: Some(1000),
        heartbeat_ms: Some(2000),
        analysis_id: Some("ana".into()),
        generation: Some(3),
        joined: true,
        claim: Some(Claim {
            max_index: 10,
            count: 3,
            failures: 1,
        }),
        jobs: 2,
        lock: Some("worker".into()),
    };
    assert_eq!(
        snap,
        Snapshot {
            time_ms: snap.time_ms,
            run_id: snap.run_id.clone(),
            analysis_id: Some("ana".into()),
            generation: Some(3),
            mode: Some(Mode::Static),
            n_req: Some(100),
            n_acc: Some(40),
            n_eval: Some(10),
            n_fail: Some(1),
            n_worker: Some(2),
            n_job: Some(5),
            n_lookahead_eval: Some(6),
            all_accepted: Some(true),
            is_look_ahead: Some(false),
            ledgers: vec![idle, owing],
            lost_workers: 4,
            resumed: Some(Resumed {
                from_generation: 3,
                at: "2026-12-02T16:05:37+00:00".into()
            }),
            master_start: Some(MasterStart {
                outcome: StartOutcome::Resumed,
                cause: "continued run 1".into(),
                at: "2026-12-02T16:05:37+00:00".into(),
                module_version: Some("0.1.0".into()),
            }),
            generations_recorded: 2,
            stop_requested: true,
        }
    );
}

/// A repair that corrects everything a ledger can owe, then one of a stale ledger: every
/// field of the reply reaches [`Repair`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_reads_every_field_by_name() {
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
            ("n_fail_ana_3", "1"),
            ("n_job_ana_3", "0"),
            ("worker", "tok"),
            (keys::LOST_WORKERS, "4"),
        ],
    )
    .await;
    let owing = [
        ("analysis", "ana"),
        ("generation", "3"),
        ("joined", "1"),
        ("claim_max", "10"),
        ("claim_n", "3"),
        ("claim_fail", "1"),
        ("jobs", "2"),
        ("lock_name", "worker"),
        ("lock_token", "tok"),
    ];
    put_ledger(&mut conn, "w", &owing).await;
    assert_eq!(
        repair_lost_worker(&mut conn, "w").await.unwrap(),
        Some(Repair {
            ledger_id: "w".into(),
            analysis_id: Some("ana".into()),
            generation: Some(3),
            left_generation: true,
            indices: Some(8..=10),
            failures_added: 2,
            jobs_returned: 2,
            lock_released: true,
            stale: false,
            lost_workers: 5,
        })
    );
    assert_eq!(get_i(&mut conn, "n_job_ana_3").await, Some(2));

    put_ledger(
        &mut conn,
        "old",
        &[("analysis", "gone"), ("generation", "1")],
    )
    .await;
    assert_eq!(
        repair_lost_worker(&mut conn, "old").await.unwrap(),
        Some(Repair {
            ledger_id: "old".into(),
            analysis_id: Some("gone".into()),
            generation: Some(1),
            left_generation: false,
            indices: None,
            failures_added: 0,
            jobs_returned: 0,
            lock_released: false,
            stale: true,
            lost_workers: 5,
        })
    );
}

/// The entrypoint runs the same repair script, on a predecessor's ledger with its id (a
/// restarted container) before it registers, and reads the reply by name too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entrypoint_reads_the_repair_reply_by_name() {
    let redis = server();
    let endpoint = redis.endpoint();
    let mut conn = connect(&redis).await;
    set_all(&mut conn, &[("worker", "tok")]).await;
    let held_lock = [("lock_name", "worker"), ("lock_token", "tok")];
    put_ledger(&mut conn, "restarted", &held_lock).await;
    let root = tempfile::tempdir().unwrap();
    let mut restarted = worker(&endpoint, "restarted", &[], root.path());
    let snap = wait_for(
        &mut conn,
        Duration::from_secs(180),
        "the restarted worker's own ledger",
        |s| {
            s.ledgers
                .iter()
                .any(|l| l.id == "restarted" && l.pid.is_some())
        },
    )
    .await;
    assert!(
        restarted.log().contains(
            "a previous process with this id left obligations: repaired ledger restarted \
             (generation None): left=0 indices=0..0 n_fail+=0 jobs+=0 lock_released=1"
        ),
        "{}",
        restarted.log_tail()
    );
    assert_eq!(snap.lost_workers, 1);
    let lock: Option<String> = conn.get("worker").await.unwrap();
    assert_eq!(lock, None, "the predecessor's lock is released");
    restarted.signal(Signal::SIGTERM);
    assert_eq!(
        restarted.wait(Duration::from_secs(15)).code(),
        Some(0),
        "{}",
        restarted.log_tail()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_commands_and_dead_master_lock() {
    let redis = server();
    let endpoint = redis.endpoint();
    let mut conn = connect(&redis).await;
    assert_eq!(reset_workers(&mut conn).await.unwrap(), None);
    assert_eq!(clear_stale_analysis_lock(&mut conn).await.unwrap(), None);
    set_all(
        &mut conn,
        &[
            ("analysis_id", "ana"),
            ("generation_ana", "0"),
            ("n_worker_ana_0", "4"),
            ("n_req_ana_0", "9"),
        ],
    )
    .await;
    let snap = snapshot(&mut conn).await;
    assert_eq!(snap.info_line(), manager(&endpoint, "info"));
    assert_eq!(
        reset_workers(&mut conn).await.unwrap(),
        Some(("ana".to_string(), 0))
    );
    assert_eq!(get_i(&mut conn, "n_worker_ana_0").await, Some(0));
    assert_eq!(stop(&mut conn).await.unwrap(), 0);
    assert_eq!(
        clear_stale_analysis_lock(&mut conn)
            .await
            .unwrap()
            .as_deref(),
        Some("ana")
    );
    let snap = snapshot(&mut conn).await;
    assert_eq!((snap.analysis_id, snap.generation), (None, None));
    assert_eq!(manager(&endpoint, "info"), "No active generation");
}
