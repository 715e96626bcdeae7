//! The pyABC protocol module against a real redis-server and real pyabc 0.13.0 processes:
//! workers through the shipped entrypoint (`protocol::WORKER_ENTRYPOINT`), masters from
//! tests/fixtures/protocol_master.py. One file per theme; the helpers they share are here.
//!
//! Needs `redis-server` on PATH and the pinned Python (`$ABC_PYTHON` or `.venv`; `make test`
//! creates it). Every wait is bounded; every process is killed when its guard drops.

mod chaos;
mod entrypoint;
mod errors;
mod hostile;
mod lost_workers;
mod master_module;
mod publications;
mod redis_server;
mod repair_rules;
mod sampler_options;
mod scripts;
#[path = "../support/mod.rs"]
mod support;

use abc_operator::protocol::Connection;
use abc_operator::protocol::{self, Ledger, Snapshot};
use redis::AsyncCommands;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use support::python::Proc;
use support::redis::snapshot;

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
        if l.jobs > 0 && !l.joined {
            return Some(format!("a job outside a generation: {l:#?}"));
        }
        // A claim outlives `joined` only where the result that completed the generation
        // released the worker (its evaluation can no longer change the sample).
        if l.claim.is_some()
            && !l.joined
            && let (Some(ana), Some(t)) = (&snap.analysis_id, snap.generation)
            && l.in_generation(ana, t)
            && snap.n_acc.unwrap_or(0) < snap.n_req.unwrap_or(0)
        {
            return Some(format!(
                "a claim outside a generation that still samples: {snap:#?}"
            ));
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
async fn run_to_end(conn: &mut Connection, master: &mut Proc) -> Seen {
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

/// Sets raw keys (a pyABC generation or a hand-made ledger).
async fn set_all(conn: &mut Connection, pairs: &[(&str, &str)]) {
    for (key, value) in pairs {
        let _: () = conn.set(*key, *value).await.unwrap();
    }
}

async fn put_ledger(conn: &mut Connection, id: &str, fields: &[(&str, &str)]) {
    let _: () = conn
        .hset_multiple(protocol::keys::ledger_key(id), fields)
        .await
        .unwrap();
    let _: () = conn.sadd(protocol::keys::LEDGER_SET, id).await.unwrap();
}

async fn get_i(conn: &mut Connection, key: &str) -> Option<i64> {
    conn.get(key).await.unwrap()
}
