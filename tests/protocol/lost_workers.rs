//! A worker SIGKILLed inside an evaluation, in the calibration sample, in a normal generation
//! and in a static one: pyABC alone waits for it forever; one repair gives back exactly what
//! it owed, and the run finishes.
//!
//! Every test plays the same scenario, [`LostWorker`]: the victim, alone, hangs inside an
//! evaluation and is SIGKILLed there; two fast live workers do what is left until the run is
//! stuck; the victim is repaired, exactly once. The tests show what differs: the sampler, where
//! the victim hangs, what it owed and what the repair gave back.

use crate::support::python::{Proc, manager, master, worker};
use crate::support::redis::{connect, server, snapshot, wait_for};
use crate::{check_invariants, ledger, run_to_end, subdir};
use abc_operator::local::redis_server::RedisServer;
use abc_operator::protocol::Connection;
use abc_operator::protocol::{Endpoint, Mode, Repair, Snapshot, repair_lost_worker, reset_workers};
use nix::sys::signal::Signal;
use redis::AsyncCommands;
use std::path::Path;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The ledger id of the worker that is killed.
const VICTIM: &str = "victim";

/// Environment of the live workers that finish a generation after a kill.
const FAST: [(&str, &str); 1] = [("ABC_TEST_MODEL_SLEEP", "0.01")];

/// Where the victim hangs.
enum Hang {
    /// In its first evaluation.
    FirstEvaluation,
    /// In its first evaluation once the master is in generation `t`.
    InGeneration(i64),
}

/// A run on a fresh redis-server whose victim hangs and is killed (see the module docs).
struct LostWorker {
    _redis: RedisServer,
    endpoint: Endpoint,
    conn: Connection,
    root: TempDir,
    master: Proc,
    victim: Proc,
    live: Vec<Proc>,
}

impl LostWorker {
    /// Starts a master with `master_env` and the victim, alone, with `victim_env`; returns once
    /// the victim hangs where `hang` says, with a snapshot of that instant.
    async fn hanging(
        master_env: &[(&str, &str)],
        victim_env: &[(&str, &str)],
        hang: Hang,
    ) -> (LostWorker, Snapshot) {
        let redis = server();
        let endpoint = redis.endpoint();
        let mut conn = connect(&redis).await;
        let root = tempfile::tempdir().unwrap();
        let hang_file = root.path().join("hang");
        if let Hang::FirstEvaluation = hang {
            std::fs::write(&hang_file, "").unwrap();
        }
        let master = master(&endpoint, master_env, &subdir(&root, "master"));
        let mut env = vec![("ABC_TEST_HANG_FILE", hang_file.to_str().unwrap())];
        env.extend_from_slice(victim_env);
        let victim = worker(&endpoint, VICTIM, &env, root.path());
        let hang_timeout = match hang {
            Hang::FirstEvaluation => Duration::from_secs(180),
            Hang::InGeneration(t) => {
                let what = format!("generation {t}");
                wait_for(&mut conn, Duration::from_secs(180), &what, |s| {
                    s.generation == Some(t)
                })
                .await;
                std::fs::write(&hang_file, "").unwrap();
                Duration::from_secs(30)
            }
        };
        wait_file(&hang_file.with_extension("hanging"), hang_timeout, &victim).await;
        let snap = snapshot(&mut conn).await;
        let run = LostWorker {
            _redis: redis,
            endpoint,
            conn,
            root,
            master,
            victim,
            live: Vec::new(),
        };
        (run, snap)
    }

    /// SIGKILLs the victim.
    fn kill_victim(&mut self) {
        self.victim.signal(Signal::SIGKILL);
        assert!(!self.victim.wait(Duration::from_secs(10)).success());
    }

    /// Starts two fast live workers and waits until `done` holds (checking the invariants in
    /// every snapshot); then the run must be stuck, and pyABC's `info` must agree with the
    /// snapshot. Returns the stuck snapshot.
    async fn live_workers_until(
        &mut self,
        what: &str,
        mut done: impl FnMut(&Snapshot) -> bool,
    ) -> Snapshot {
        self.live = (1..=2)
            .map(|i| {
                worker(
                    &self.endpoint,
                    &format!("live-{i}"),
                    &FAST,
                    self.root.path(),
                )
            })
            .collect();
        wait_for(&mut self.conn, Duration::from_secs(180), what, |s| {
            check_invariants(s);
            done(s)
        })
        .await;
        let stuck = self.assert_stuck(Duration::from_secs(2)).await;
        assert_eq!(stuck.info_line(), manager(&self.endpoint, "info"));
        stuck
    }

    /// The run is stuck: the same snapshot counters for `quiet`, and the master still running.
    async fn assert_stuck(&mut self, quiet: Duration) -> Snapshot {
        let before = snapshot(&mut self.conn).await;
        tokio::time::sleep(quiet).await;
        let after = snapshot(&mut self.conn).await;
        assert!(
            self.master.try_status().is_none(),
            "master ended: {}",
            self.master.log_tail()
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

    /// Repairs the victim, which must have a ledger; a second repair finds none.
    async fn repair_once(&mut self) -> Repair {
        let repair = repair_lost_worker(&mut self.conn, VICTIM)
            .await
            .unwrap()
            .expect("a ledger to repair");
        assert_eq!(
            repair_lost_worker(&mut self.conn, VICTIM).await.unwrap(),
            None,
            "exactly once"
        );
        repair
    }

    /// The run goes on to its end, the master succeeding.
    async fn finish(mut self) {
        run_to_end(&mut self.conn, &mut self.master).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_in_calibration_is_repaired_where_reset_workers_is_not_enough() {
    let master_env = [
        ("PROTO_POPULATION", "20"),
        ("PROTO_GENERATIONS", "1"),
        ("PROTO_BATCH_SIZE", "2"),
    ];
    // The victim is alone: its first claim is indices 1..=2, and it hangs inside it.
    let (mut run, snap) = LostWorker::hanging(&master_env, &[], Hang::FirstEvaluation).await;
    let owed = ledger(&snap, VICTIM).clone();
    assert_eq!(snap.generation, Some(-1));
    assert_eq!(snap.all_accepted, Some(true));
    assert_eq!(snap.n_eval, Some(2));
    assert!(owed.joined && owed.in_generation(snap.analysis_id.as_deref().unwrap(), -1));
    assert_eq!(owed.claim.as_ref().unwrap().indices(), 1..=2);
    assert_eq!(owed.claim.as_ref().unwrap().failures, 0);

    run.kill_victim();
    let after = snapshot(&mut run.conn).await;
    let kept = ledger(&after, VICTIM);
    assert_eq!(
        (&kept.claim, kept.joined, kept.generation),
        (&owed.claim, owed.joined, owed.generation)
    );

    // pyABC alone: the live workers stop at n_eval - n_fail = 20, two particles short.
    let stuck = run
        .live_workers_until("live workers done with calibration", |s| {
            s.n_eval == Some(20) && s.n_acc == Some(18) && s.n_worker == Some(1)
        })
        .await;
    assert_eq!(
        stuck.info_line(),
        "Workers=1 Evaluations=20 Acceptances=18/20 (generation -1)"
    );

    // The manual fix: reset-workers. In calibration it does not unblock the master.
    let reset = reset_workers(&mut run.conn).await.unwrap();
    assert_eq!(reset, Some((stuck.analysis_id.clone().unwrap(), -1)));
    let still = run.assert_stuck(Duration::from_secs(3)).await;
    assert_eq!((still.n_acc, still.n_worker), (Some(18), Some(0)));

    // The exact repair: n_worker is already 0 and stays there; the two lost evaluations are
    // reported done and failed, and the live workers re-enter.
    let repair = run.repair_once().await;
    assert!(
        !repair.left_generation,
        "n_worker must not go below 0: {repair:?}"
    );
    assert_eq!(repair.indices, Some(1..=2));
    assert_eq!(repair.failures_added, 2);
    assert!(!repair.stale && repair.corrected());
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_in_a_normal_generation_is_repaired() {
    let master_env = [("PROTO_POPULATION", "20"), ("PROTO_GENERATIONS", "2")];
    let victim_env = [("ABC_TEST_MODEL_SLEEP", "0.05")];
    let (mut run, snap) =
        LostWorker::hanging(&master_env, &victim_env, Hang::InGeneration(0)).await;

    // Alone in the generation and before n acceptances (the master has not drained
    // done_ixs yet): what it owes is exactly the claimed indices that are not done.
    let ana = snap.analysis_id.clone().unwrap();
    let t = snap.generation.unwrap();
    assert!(snap.n_acc < snap.n_req, "{snap:#?}");
    let done: Vec<i64> = run
        .conn
        .lrange(format!("done_ixs_{ana}_{t}"), 0, -1)
        .await
        .unwrap();
    let expected: Vec<i64> = (1..=snap.n_eval.unwrap())
        .filter(|i| !done.contains(i))
        .collect();
    let owed = ledger(&snap, VICTIM).clone();
    assert!(owed.joined && owed.in_generation(&ana, t));
    assert_eq!(
        owed.claim.as_ref().unwrap().indices().collect::<Vec<_>>(),
        expected
    );

    run.kill_victim();
    // pyABC alone: all particles are in, and the master waits for the dead worker forever.
    run.live_workers_until("all particles accepted", |s| {
        s.generation == Some(t) && s.n_acc >= s.n_req && s.n_worker == Some(1)
    })
    .await;

    let repair = run.repair_once().await;
    assert!(repair.left_generation);
    assert_eq!(repair.generation, Some(t));
    assert_eq!(
        repair.indices.clone().unwrap().collect::<Vec<_>>(),
        expected
    );
    assert_eq!(repair.failures_added, expected.len() as i64);
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_worker_killed_holding_a_job_is_repaired() {
    let master_env = [
        ("PROTO_SAMPLER", "static"),
        ("PROTO_POPULATION", "10"),
        ("PROTO_GENERATIONS", "1"),
    ];
    let (mut run, snap) = LostWorker::hanging(&master_env, &[], Hang::FirstEvaluation).await;
    assert_eq!(snap.mode, Some(Mode::Static));
    assert_eq!(snap.n_job, Some(9));
    let owed = ledger(&snap, VICTIM);
    assert!(owed.joined && owed.claim.is_none() && owed.lock.is_none());
    assert_eq!(owed.jobs, 1);

    run.kill_victim();
    run.live_workers_until("the other jobs done", |s| {
        s.n_acc == Some(9) && s.n_job == Some(0) && s.n_worker == Some(1)
    })
    .await;

    let repair = run.repair_once().await;
    assert!(repair.left_generation);
    assert_eq!(repair.jobs_returned, 1);
    assert_eq!(repair.indices, None);
    run.finish().await;
}
