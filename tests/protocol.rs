//! The pyABC protocol module against a real redis-server and real pyabc 0.13.0 processes:
//! workers through the shipped entrypoint (`protocol::WORKER_ENTRYPOINT`), masters from
//! tests/fixtures/protocol_master.py.
//!
//! Needs `redis-server` on PATH and the pinned Python (`$ABC_PYTHON` or `.venv`; `make test`
//! creates it). Every wait is bounded; every process is killed when its guard drops.

mod chaos;
mod support;

use abc_operator::protocol::{
    self, Heartbeat, Ledger, Mode, ProtocolError, Snapshot, clear_stale_analysis_lock,
    repair_lost_worker, reset_workers, stop,
};
use nix::sys::signal::Signal;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::python::{Proc, manager, master, worker};
use support::redis::{connect, server, snapshot, wait_for};

const RUN_TIMEOUT: Duration = Duration::from_secs(300);

fn subdir(root: &tempfile::TempDir, name: &str) -> PathBuf {
    let dir = root.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn ledger<'a>(snap: &'a Snapshot, id: &str) -> &'a Ledger {
    snap.ledgers
        .iter()
        .find(|l| l.id == id)
        .unwrap_or_else(|| panic!("no ledger {id} in {snap:#?}"))
}

/// What must hold in every snapshot of a run, whatever the instant.
fn check_invariants(snap: &Snapshot) {
    if let Some(broken) = violated_invariant(snap) {
        panic!("{broken}");
    }
}

/// The first invariant of [`check_invariants`] that `snap` breaks, if any.
fn violated_invariant(snap: &Snapshot) -> Option<String> {
    for (name, value) in [
        ("n_worker", snap.n_worker),
        ("n_eval", snap.n_eval),
        ("n_acc", snap.n_acc),
        ("n_fail", snap.n_fail),
        ("n_job", snap.n_job),
        ("n_lookahead_eval", snap.n_lookahead_eval),
    ] {
        if value.unwrap_or(0) < 0 {
            return Some(format!("{name} negative: {snap:#?}"));
        }
    }
    if let Some(n_worker) = snap.n_worker
        && snap.joined_current().count() as i64 != n_worker
    {
        return Some(format!(
            "ledgers joined to the current generation must equal pyABC's n_worker: {snap:#?}"
        ));
    }
    for l in &snap.ledgers {
        if (l.claim.is_some() || l.jobs > 0) && !l.joined {
            return Some(format!("a claim or job outside a generation: {l:#?}"));
        }
        if let Some(claim) = &l.claim {
            if !(0..=claim.count).contains(&claim.failures) {
                return Some(format!("claim failures out of range: {l:#?}"));
            }
            if let (Some(ana), Some(t)) = (&snap.analysis_id, snap.generation)
                && l.in_generation(ana, t)
                && claim.max_index > snap.n_eval.unwrap_or(0)
            {
                return Some(format!("claim beyond n_eval: {snap:#?}"));
            }
        }
    }
    None
}

/// What the snapshots of a run showed.
#[derive(Default)]
struct Seen {
    generations: BTreeSet<i64>,
    /// Snapshots with workers inside a generation.
    busy: usize,
    /// Snapshots with an open claim in a ledger.
    claims: usize,
}

/// Polls snapshots (checking the invariants) until the master exits; it must succeed.
async fn run_to_end(conn: &mut ConnectionManager, master: &mut Proc) -> Seen {
    let start = Instant::now();
    let mut seen = Seen::default();
    loop {
        let snap = snapshot(conn).await;
        check_invariants(&snap);
        seen.generations.extend(snap.generation);
        seen.busy += usize::from(snap.n_worker.unwrap_or(0) > 0);
        seen.claims += usize::from(snap.ledgers.iter().any(|l| l.claim.is_some()));
        if let Some(status) = master.try_status() {
            assert!(
                status.success(),
                "master failed: {status}\n{}",
                master.log_tail()
            );
            assert!(
                master.log().contains("DONE max_t="),
                "{}",
                master.log_tail()
            );
            return seen;
        }
        assert!(
            start.elapsed() < RUN_TIMEOUT,
            "run did not finish; master log:\n{}",
            master.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_file(path: &Path, timeout: Duration, victim: &Proc) {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared; victim log:\n{}",
            path.display(),
            victim.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The run is stuck: the same snapshot counters for `quiet`, and the master still running.
async fn assert_stuck(
    conn: &mut ConnectionManager,
    master: &mut Proc,
    quiet: Duration,
) -> Snapshot {
    let before = snapshot(conn).await;
    tokio::time::sleep(quiet).await;
    let after = snapshot(conn).await;
    assert!(
        master.try_status().is_none(),
        "master ended: {}",
        master.log_tail()
    );
    assert_eq!(
        (
            before.generation,
            before.n_acc,
            before.n_eval,
            before.n_worker
        ),
        (after.generation, after.n_acc, after.n_eval, after.n_worker),
        "pyABC alone makes no progress"
    );
    after
}

/// Environment of the live workers that finish a generation after a kill.
const FAST: [(&str, &str); 1] = [("ABC_TEST_MODEL_SLEEP", "0.01")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledgers_follow_pyabc_counters_through_real_runs() {
    let redis = server();
    let endpoint = redis.endpoint();
    let mut conn = connect(&redis).await;
    let root = tempfile::tempdir().unwrap();
    let env = [
        ("ABC_TEST_MODEL_SLEEP", "0.002"),
        ("ABC_HEARTBEAT_SECONDS", "1"),
    ];
    let mut a = worker(
        &endpoint,
        "a",
        &[env[0], env[1], ("ABC_WORKER_PROCESSES", "2")],
        root.path(),
    );
    let mut b = worker(&endpoint, "b", &env, root.path());
    let snap = wait_for(
        &mut conn,
        Duration::from_secs(180),
        "three registered ledgers",
        |s| s.ledgers.len() == 3,
    )
    .await;
    let ids: Vec<&str> = snap.ledgers.iter().map(|l| l.id.as_str()).collect();
    assert_eq!(ids, ["a-0", "a-1", "b"]);
    assert_eq!(snap.ledgers_of("a").count(), 2);
    assert!(snap.ledgers.iter().all(Ledger::is_idle));

    // A dynamic run with failures and batches, then one with look-ahead sampling.
    for look_ahead in ["0", "1"] {
        let dir = subdir(&root, &format!("look-ahead-{look_ahead}"));
        let mut m = master(
            &endpoint,
            &[
                ("PROTO_POPULATION", "60"),
                ("PROTO_GENERATIONS", "3"),
                ("PROTO_BATCH_SIZE", "2"),
                ("PROTO_FAIL_RATE", "0.1"),
                ("PROTO_LOOK_AHEAD", look_ahead),
            ],
            &dir,
        );
        let seen = run_to_end(&mut conn, &mut m).await;
        assert!(
            seen.generations.len() >= 3,
            "saw generations {:?}",
            seen.generations
        );
        // the invariants were checked while workers were inside generations and owed indices
        assert!(
            seen.busy > 10 && seen.claims > 10,
            "busy {} claims {}",
            seen.busy,
            seen.claims
        );
        // Quiet: the master's stop() removed the analysis; nobody owes anything.
        let snap = wait_for(&mut conn, Duration::from_secs(20), "idle ledgers", |s| {
            s.ledgers.len() == 3 && s.ledgers.iter().all(Ledger::is_idle)
        })
        .await;
        assert_eq!(snap.analysis_id, None);
        assert_eq!(snap.info_line(), "No active generation");
        assert_eq!(snap.info_line(), manager(&endpoint, "info"));
    }

    // pyABC's stop message: every worker process leaves, and no ledger is left behind.
    assert_eq!(stop(&mut conn).await.unwrap(), 3);
    assert!(
        a.wait(Duration::from_secs(30)).success(),
        "{}",
        a.log_tail()
    );
    assert!(
        b.wait(Duration::from_secs(30)).success(),
        "{}",
        b.log_tail()
    );
    assert!(snapshot(&mut conn).await.ledgers.is_empty());
    let members: Vec<String> = conn.smembers(protocol::keys::LEDGER_SET).await.unwrap();
    assert!(members.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_in_calibration_is_repaired_where_reset_workers_is_not_enough() {
    let redis = server();
    let endpoint = redis.endpoint();
    let mut conn = connect(&redis).await;
    let root = tempfile::tempdir().unwrap();
    let hang = root.path().join("hang");
    std::fs::write(&hang, "").unwrap();
    let mut m = master(
        &endpoint,
        &[
            ("PROTO_POPULATION", "20"),
            ("PROTO_GENERATIONS", "1"),
            ("PROTO_BATCH_SIZE", "2"),
        ],
        &subdir(&root, "master"),
    );
    // The victim is alone: its first claim is indices 1..=2, and it hangs inside it.
    let mut victim = worker(
        &endpoint,
        "victim",
        &[("ABC_TEST_HANG_FILE", hang.to_str().unwrap())],
        root.path(),
    );
    wait_file(
        &hang.with_extension("hanging"),
        Duration::from_secs(180),
        &victim,
    )
    .await;
    let snap = snapshot(&mut conn).await;
    let owed = ledger(&snap, "victim").clone();
    assert_eq!(snap.generation, Some(-1));
    assert_eq!(snap.all_accepted, Some(true));
    assert_eq!(snap.n_eval, Some(2));
    assert!(owed.joined && owed.in_generation(snap.analysis_id.as_deref().unwrap(), -1));
    assert_eq!(owed.claim.as_ref().unwrap().indices(), 1..=2);
    assert_eq!(owed.claim.as_ref().unwrap().failures, 0);

    victim.signal(Signal::SIGKILL);
    assert!(!victim.wait(Duration::from_secs(10)).success());
    let after = snapshot(&mut conn).await;
    let kept = ledger(&after, "victim");
    assert_eq!(
        (&kept.claim, kept.joined, kept.generation),
        (&owed.claim, owed.joined, owed.generation)
    );

    let _live: Vec<Proc> = (1..=2)
        .map(|i| worker(&endpoint, &format!("live-{i}"), &FAST, root.path()))
        .collect();
    // pyABC alone: the live workers stop at n_eval - n_fail = 20, two particles short.
    wait_for(
        &mut conn,
        Duration::from_secs(180),
        "live workers done with calibration",
        |s| {
            check_invariants(s);
            s.n_eval == Some(20) && s.n_acc == Some(18) && s.n_worker == Some(1)
        },
    )
    .await;
    let stuck = assert_stuck(&mut conn, &mut m, Duration::from_secs(2)).await;
    assert_eq!(stuck.info_line(), manager(&endpoint, "info"));
    assert_eq!(
        stuck.info_line(),
        format!("Workers=1 Evaluations=20 Acceptances=18/20 (generation -1)")
    );

    // The manual fix: reset-workers. In calibration it does not unblock the master.
    let reset = reset_workers(&mut conn).await.unwrap();
    assert_eq!(reset, Some((stuck.analysis_id.clone().unwrap(), -1)));
    let still = assert_stuck(&mut conn, &mut m, Duration::from_secs(3)).await;
    assert_eq!((still.n_acc, still.n_worker), (Some(18), Some(0)));

    // The exact repair: n_worker is already 0 and stays there; the two lost evaluations are
    // reported done and failed, and the live workers re-enter.
    let repair = repair_lost_worker(&mut conn, "victim")
        .await
        .unwrap()
        .expect("a ledger to repair");
    assert!(
        !repair.left_generation,
        "n_worker must not go below 0: {repair:?}"
    );
    assert_eq!(repair.indices, Some(1..=2));
    assert_eq!(repair.failures_added, 2);
    assert!(!repair.stale && repair.corrected());
    assert_eq!(
        repair_lost_worker(&mut conn, "victim").await.unwrap(),
        None,
        "exactly once"
    );
    run_to_end(&mut conn, &mut m).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_in_a_normal_generation_is_repaired() {
    let redis = server();
    let endpoint = redis.endpoint();
    let mut conn = connect(&redis).await;
    let root = tempfile::tempdir().unwrap();
    let hang = root.path().join("hang");
    let mut m = master(
        &endpoint,
        &[("PROTO_POPULATION", "20"), ("PROTO_GENERATIONS", "2")],
        &subdir(&root, "master"),
    );
    let mut victim = worker(
        &endpoint,
        "victim",
        &[
            ("ABC_TEST_HANG_FILE", hang.to_str().unwrap()),
            ("ABC_TEST_MODEL_SLEEP", "0.05"),
        ],
        root.path(),
    );
    wait_for(&mut conn, Duration::from_secs(180), "generation 0", |s| {
        s.generation == Some(0)
    })
    .await;
    std::fs::write(&hang, "").unwrap();
    wait_file(
        &hang.with_extension("hanging"),
        Duration::from_secs(30),
        &victim,
    )
    .await;

    // Alone in the generation and before n acceptances (the master has not drained
    // done_ixs yet): what it owes is exactly the claimed indices that are not done.
    let snap = snapshot(&mut conn).await;
    let ana = snap.analysis_id.clone().unwrap();
    let t = snap.generation.unwrap();
    assert!(snap.n_acc < snap.n_req, "{snap:#?}");
    let done: Vec<i64> = conn
        .lrange(format!("done_ixs_{ana}_{t}"), 0, -1)
        .await
        .unwrap();
    let expected: Vec<i64> = (1..=snap.n_eval.unwrap())
        .filter(|i| !done.contains(i))
        .collect();
    let owed = ledger(&snap, "victim").clone();
    assert!(owed.joined && owed.in_generation(&ana, t));
    assert_eq!(
        owed.claim.as_ref().unwrap().indices().collect::<Vec<_>>(),
        expected
    );

    victim.signal(Signal::SIGKILL);
    victim.wait(Duration::from_secs(10));
    let _live: Vec<Proc> = (1..=2)
        .map(|i| worker(&endpoint, &format!("live-{i}"), &FAST, root.path()))
        .collect();
    // pyABC alone: all particles are in, and the master waits for the dead worker forever.
    wait_for(
        &mut conn,
        Duration::from_secs(180),
        "all particles accepted",
        |s| {
            check_invariants(s);
            s.generation == Some(t) && s.n_acc >= s.n_req && s.n_worker == Some(1)
        },
    )
    .await;
    let stuck = assert_stuck(&mut conn, &mut m, Duration::from_secs(2)).await;
    assert_eq!(stuck.info_line(), manager(&endpoint, "info"));

    let repair = repair_lost_worker(&mut conn, "victim")
        .await
        .unwrap()
        .unwrap();
    assert!(repair.left_generation);
    assert_eq!(repair.generation, Some(t));
    assert_eq!(
        repair.indices.clone().unwrap().collect::<Vec<_>>(),
        expected
    );
    assert_eq!(repair.failures_added, expected.len() as i64);
    assert_eq!(repair_lost_worker(&mut conn, "victim").await.unwrap(), None);
    run_to_end(&mut conn, &mut m).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_worker_killed_holding_a_job_is_repaired() {
    let redis = server();
    let endpoint = redis.endpoint();
    let mut conn = connect(&redis).await;
    let root = tempfile::tempdir().unwrap();
    let hang = root.path().join("hang");
    std::fs::write(&hang, "").unwrap();
    let mut m = master(
        &endpoint,
        &[
            ("PROTO_SAMPLER", "static"),
            ("PROTO_POPULATION", "10"),
            ("PROTO_GENERATIONS", "1"),
        ],
        &subdir(&root, "master"),
    );
    let mut victim = worker(
        &endpoint,
        "victim",
        &[("ABC_TEST_HANG_FILE", hang.to_str().unwrap())],
        root.path(),
    );
    wait_file(
        &hang.with_extension("hanging"),
        Duration::from_secs(180),
        &victim,
    )
    .await;
    let snap = snapshot(&mut conn).await;
    assert_eq!(snap.mode, Some(Mode::Static));
    assert_eq!(snap.n_job, Some(9));
    let owed = ledger(&snap, "victim");
    assert!(owed.joined && owed.claim.is_none() && owed.lock.is_none());
    assert_eq!(owed.jobs, 1);

    victim.signal(Signal::SIGKILL);
    victim.wait(Duration::from_secs(10));
    let _live: Vec<Proc> = (1..=2)
        .map(|i| worker(&endpoint, &format!("live-{i}"), &FAST, root.path()))
        .collect();
    wait_for(
        &mut conn,
        Duration::from_secs(180),
        "the other jobs done",
        |s| {
            check_invariants(s);
            s.n_acc == Some(9) && s.n_job == Some(0) && s.n_worker == Some(1)
        },
    )
    .await;
    let stuck = assert_stuck(&mut conn, &mut m, Duration::from_secs(2)).await;
    assert_eq!(stuck.info_line(), manager(&endpoint, "info"));

    let repair = repair_lost_worker(&mut conn, "victim")
        .await
        .unwrap()
        .unwrap();
    assert!(repair.left_generation);
    assert_eq!(repair.jobs_returned, 1);
    assert_eq!(repair.indices, None);
    assert_eq!(repair_lost_worker(&mut conn, "victim").await.unwrap(), None);
    run_to_end(&mut conn, &mut m).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entrypoint_heartbeat_runtime_sigterm_and_fencing() {
    let redis = server();
    let endpoint = redis.endpoint();
    let mut conn = connect(&redis).await;
    let root = tempfile::tempdir().unwrap();
    let hb = ("ABC_HEARTBEAT_SECONDS", "1");
    let mut expiring = worker(
        &endpoint,
        "expiring",
        &[hb, ("ABC_WORKER_RUNTIME", "6s")],
        root.path(),
    );
    let mut terminated = worker(&endpoint, "terminated", &[hb], root.path());
    let mut hung = worker(&endpoint, "hung", &[hb], root.path());
    let first = wait_for(&mut conn, Duration::from_secs(180), "three ledgers", |s| {
        s.ledgers.len() == 3
    })
    .await;
    let started = Instant::now();

    // Heartbeats advance on the Redis clock.
    let later = wait_for(
        &mut conn,
        Duration::from_secs(10),
        "a newer heartbeat",
        |s| {
            s.ledgers.len() == 3
                && ledger(s, "terminated").heartbeat_ms > ledger(&first, "terminated").heartbeat_ms
        },
    )
    .await;
    let three_seconds = Heartbeat::from_timeout_seconds(3);
    assert_eq!(three_seconds.stale_ledgers(&later).count(), 0);

    // A stopped (hung) process goes stale; the others do not.
    hung.signal(Signal::SIGSTOP);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let snap = snapshot(&mut conn).await;
    assert_eq!(
        three_seconds
            .stale_ledgers(&snap)
            .map(|l| l.id.as_str())
            .collect::<Vec<_>>(),
        ["hung"]
    );

    // Declared lost and repaired, it must not come back: it exits 3 at its next heartbeat.
    let repair = repair_lost_worker(&mut conn, "hung")
        .await
        .unwrap()
        .unwrap();
    assert!(!repair.corrected());
    hung.signal(Signal::SIGCONT);
    assert_eq!(
        hung.wait(Duration::from_secs(15)).code(),
        Some(3),
        "{}",
        hung.log_tail()
    );
    assert!(
        snapshot(&mut conn)
            .await
            .ledgers
            .iter()
            .all(|l| l.id != "hung")
    );

    // SIGTERM while idle: exit 0, ledger removed.
    terminated.signal(Signal::SIGTERM);
    assert_eq!(
        terminated.wait(Duration::from_secs(15)).code(),
        Some(0),
        "{}",
        terminated.log_tail()
    );

    // pyABC ignores its runtime while idle; the entrypoint does not.
    assert_eq!(
        expiring.wait(Duration::from_secs(30)).code(),
        Some(0),
        "{}",
        expiring.log_tail()
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(expiring.log().contains("runtime 6s over while idle"));
    assert!(snapshot(&mut conn).await.ledgers.is_empty());
}

/// Sets raw keys (a pyABC generation or a hand-made ledger).
async fn set_all(conn: &mut ConnectionManager, pairs: &[(&str, &str)]) {
    for (key, value) in pairs {
        let _: () = conn.set(*key, *value).await.unwrap();
    }
}

async fn put_ledger(conn: &mut ConnectionManager, id: &str, fields: &[(&str, &str)]) {
    let _: () = conn
        .hset_multiple(protocol::keys::ledger_key(id), fields)
        .await
        .unwrap();
    let _: () = conn.sadd(protocol::keys::LEDGER_SET, id).await.unwrap();
}

async fn get_i(conn: &mut ConnectionManager, key: &str) -> Option<i64> {
    conn.get(key).await.unwrap()
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_their_cause() {
    let redis = server();
    let mut endpoint = redis.endpoint();

    endpoint.password = Some("not-the-password".into());
    let err = protocol::connect(&endpoint).await.unwrap_err();
    assert!(
        matches!(err, ProtocolError::WrongPassword { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("rejected the password"), "{err}");
    assert!(!err.to_string().contains(redis.password()));

    endpoint.password = None;
    let err = protocol::connect(&endpoint).await.unwrap_err();
    assert!(
        matches!(err, ProtocolError::PasswordRequired { .. }),
        "{err:?}"
    );

    // Something that is not Redis on the port.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(8) {
            use std::io::Write;
            let _ = stream.and_then(|mut s| s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n"));
        }
    });
    let err = protocol::connect(&protocol::Endpoint {
        host: "127.0.0.1".into(),
        port,
        password: Some("x".into()),
    })
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            ProtocolError::NotRedis { .. } | ProtocolError::Unreachable { .. }
        ),
        "{err:?}"
    );

    // Nothing on the port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = protocol::connect(&protocol::Endpoint {
        host: "127.0.0.1".into(),
        port: closed,
        password: None,
    })
    .await
    .unwrap_err();
    assert!(matches!(err, ProtocolError::Unreachable { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{closed}")),
        "{err}"
    );

    // A Redis that holds something else than pyABC's data.
    let mut conn = connect(&redis).await;
    let _: () = conn.hset("analysis_id", "f", "v").await.unwrap();
    let err = Snapshot::read(&mut conn).await.unwrap_err();
    assert!(matches!(err, ProtocolError::NotPyabc(_)), "{err:?}");
    assert!(
        err.to_string().contains("analysis_id") && err.to_string().contains("hash"),
        "{err}"
    );
    let _: () = conn.del("analysis_id").await.unwrap();
    set_all(
        &mut conn,
        &[("analysis_id", "ana"), ("generation_ana", "soon")],
    )
    .await;
    let err = Snapshot::read(&mut conn).await.unwrap_err().to_string();
    assert!(
        err.contains("generation_ana") && err.contains("soon"),
        "{err}"
    );
    set_all(
        &mut conn,
        &[("generation_ana", "1"), ("n_worker_ana_1", "many")],
    )
    .await;
    let err = Snapshot::read(&mut conn).await.unwrap_err().to_string();
    assert!(
        err.contains("n_worker_ana_1") && err.contains("many"),
        "{err}"
    );
    // Repair tolerates odd ledgers and never panics.
    put_ledger(
        &mut conn,
        "odd",
        &[("analysis", "ana"), ("generation", "x"), ("claim_max", "y")],
    )
    .await;
    let repair = repair_lost_worker(&mut conn, "odd").await.unwrap().unwrap();
    assert!(repair.stale && repair.generation.is_none(), "{repair:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_server_keeps_its_password_off_command_lines_and_cleans_up() {
    let mut redis = server();
    let pid = redis.pid().expect("running");
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    for file in ["cmdline", "environ"] {
        let bytes = std::fs::read(proc_dir.join(file)).unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(redis.password()),
            "password in {file}"
        );
    }
    // redis-server runs in its private directory: the config there is readable by us only.
    let dir = std::fs::read_link(proc_dir.join("cwd")).unwrap();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.join("redis.conf"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let config = std::fs::read_to_string(dir.join("redis.conf")).unwrap();
    assert!(config.contains("bind 127.0.0.1") && !config.contains("protected-mode no"));
    assert_eq!(redis.password().len(), 32);
    assert!(
        redis
            .url()
            .ends_with(&format!("@127.0.0.1:{}/", redis.port()))
    );
    let mut conn = connect(&redis).await;
    let _: () = conn.set("k", "v").await.unwrap();

    redis.stop().unwrap();
    assert!(
        !proc_dir.exists()
            || std::fs::read_to_string(proc_dir.join("stat"))
                .unwrap()
                .contains(") Z")
    );
    assert!(!dir.exists(), "its directory is removed");
    redis.stop().unwrap();

    // A port in use is a clear error.
    let taken = server();
    let err = abc_operator::local::redis_server::RedisServer::start(
        abc_operator::local::redis_server::RedisServerOptions {
            port: Some(taken.port()),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "port {} on 127.0.0.1 is already in use",
            taken.port()
        )),
        "{err}"
    );
}

// Chaos: random SIGKILLs of workers during real runs, repaired by the product's repair code
// (see tests/chaos/mod.rs for what each run asserts).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_dynamic_sampler() {
    chaos::Chaos::repeated_kills(
        "dynamic",
        vec![("PROTO_BATCH_SIZE", "2"), ("PROTO_FAIL_RATE", "0.05")],
    )
    .run()
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_static_sampler() {
    chaos::Chaos::repeated_kills("static", vec![("PROTO_SAMPLER", "static")])
        .run()
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_look_ahead() {
    chaos::Chaos::repeated_kills("look-ahead", vec![("PROTO_LOOK_AHEAD", "1")])
        .run()
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_sigkill_in_calibration() {
    chaos::Chaos {
        name: "calibration",
        master_env: vec![],
        population: 40,
        generations: 2,
        model_sleep: "0.1",
        workers: 3,
        max_kills: 2,
        kill_window: Duration::from_secs(60),
        pause_ms: 100..300,
        calibration_only: true,
    }
    .run()
    .await;
}
