//! What the controller remembers of each run between reconciles, in memory only, keyed by the
//! run's uid: a new controller (a restart, a new leader) starts without it and loses nothing
//! but one read or one early status write.
//!
//! One entry per run, forgotten at once by [`RunMemory::forget`] (see `Context::forget`, which
//! forgets the run's metric series, demand, Redis connection and poller with it) when the runs
//! watch reports the run deleted, and by a sweep after each relist of the runs (a delete missed
//! while the watch was down).

use super::records::RecordsRead;
use crate::api::{AbcRun, AbcRunStatus, SecretKeyRef};
use kube::ResourceExt;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long the same problem of a run is not told again.
const PROBLEM_QUIET: Duration = Duration::from_secs(600);

#[derive(Default)]
pub struct RunMemory {
    runs: Mutex<HashMap<String, Remembered>>,
}

/// What is remembered of one run.
#[derive(Default)]
struct Remembered {
    /// The run's namespace and name, which its metric series and demand are labelled with.
    namespace: String,
    name: String,
    /// The Redis password from the user's own Secret. That Secret is not watched (it carries
    /// none of the run's labels, and watching every Secret would cache all of them), so it is
    /// read once and kept until the run's Redis refuses it or the run points at another Secret.
    password: Option<(SecretKeyRef, String)>,
    /// When this controller last wrote the run's status (progress counters are written at a
    /// bounded rate, see `follow_up::write_due`).
    status_written: Option<Instant>,
    /// The problems (Degraded reasons) told to the run's user as a Warning, and when. A problem
    /// that clears for a moment and comes back (another, shorter problem took the Degraded
    /// condition in between, e.g. a Redis read that timed out while the run started) is the
    /// same problem: it is told once, not once per flap.
    told: HashMap<String, Instant>,
    /// What the owned objects were built from and compared with the last time none of them
    /// differed (see `apply::unsettled`).
    settled: Option<u64>,
    /// The largest `status.lostWorkers` this controller wrote: until the runs watch brings the
    /// written status back, the cached run holds an older count, and a Redis that lost its
    /// data (its count too) would make the count go back.
    lost_workers_written: i64,
    /// The generation records this controller stored last (their number and the latest one),
    /// until the cached run's status holds that number: see `reconcile::keep_records`.
    records_stored: Option<RecordsRead>,
    /// The `status.idleSince` this controller wrote last, until the cached run holds it: a
    /// reconcile before the runs watch brings the write back would otherwise find none and
    /// write a later time.
    idle_since_written: Option<Option<String>>,
}

impl RunMemory {
    /// Runs `f` on the run's entry, made when there is none.
    fn with<R>(&self, run: &AbcRun, f: impl FnOnce(&mut Remembered) -> R) -> R {
        let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        let entry = runs
            .entry(run.uid().unwrap_or_default())
            .or_insert_with(|| Remembered {
                namespace: run.namespace().unwrap_or_default(),
                name: run.name_any(),
                ..Remembered::default()
            });
        f(entry)
    }

    /// Remembers the run (with nothing yet), so that what is kept of it elsewhere under its
    /// name (metric series, demand) is forgotten with it.
    pub fn remember(&self, run: &AbcRun) {
        self.with(run, |_| ());
    }

    pub fn password(&self, run: &AbcRun, reference: &SecretKeyRef) -> Option<String> {
        self.with(run, |r| match &r.password {
            Some((kept_for, password)) if kept_for == reference => Some(password.clone()),
            _ => None,
        })
    }

    pub fn keep_password(&self, run: &AbcRun, reference: &SecretKeyRef, password: String) {
        self.with(run, |r| r.password = Some((reference.clone(), password)));
    }

    pub fn forget_password(&self, run: &AbcRun) {
        self.with(run, |r| r.password = None);
    }

    /// How long ago this controller last wrote the run's status (`None`: not since it started).
    pub fn since_status_written(&self, run: &AbcRun) -> Option<Duration> {
        self.with(run, |r| r.status_written.map(|at| at.elapsed()))
    }

    /// The run's status `written` was written now.
    pub fn status_written(&self, run: &AbcRun, written: &AbcRunStatus) {
        self.with(run, |r| {
            r.status_written = Some(Instant::now());
            r.lost_workers_written = r.lost_workers_written.max(written.lost_workers);
            r.idle_since_written = Some(written.idle_since.clone());
        });
    }

    /// Since when the run is idle: what this controller wrote last, unless the cached status
    /// (`cached`) has caught up with it (then it is forgotten).
    pub fn idle_since(&self, run: &AbcRun, cached: Option<String>) -> Option<String> {
        self.with(run, |r| {
            if r.idle_since_written.as_ref() == Some(&cached) {
                r.idle_since_written = None;
            }
            r.idle_since_written.clone().unwrap_or(cached)
        })
    }

    /// The largest `status.lostWorkers` this controller wrote for the run (0: none).
    pub fn lost_workers_written(&self, run: &AbcRun) -> i64 {
        self.with(run, |r| r.lost_workers_written)
    }

    /// The records stored last, unless the cached status (`cached` records) has caught up with
    /// them (then they are forgotten: nothing stays in memory for a settled run).
    pub fn records_stored(&self, run: &AbcRun, cached: i64) -> Option<RecordsRead> {
        self.with(run, |r| {
            if r.records_stored
                .as_ref()
                .is_some_and(|s| s.recorded == cached)
            {
                r.records_stored = None;
            }
            r.records_stored.clone()
        })
    }

    /// `read` was stored: its number and its latest record are kept.
    pub fn set_records_stored(&self, run: &AbcRun, read: &RecordsRead) {
        let kept = RecordsRead {
            recorded: read.recorded,
            records: read.records.last().cloned().into_iter().collect(),
            problem: read.problem.clone(),
        };
        self.with(run, |r| r.records_stored = Some(kept));
    }

    /// Whether the problem `reason` is news for the run (and remembers it as told from now on).
    pub fn tell(&self, run: &AbcRun, reason: &str) -> bool {
        self.with(run, |r| {
            r.told.retain(|_, at| at.elapsed() < PROBLEM_QUIET);
            r.told.insert(reason.to_string(), Instant::now()).is_none()
        })
    }

    pub fn settled(&self, run: &AbcRun) -> Option<u64> {
        self.with(run, |r| r.settled)
    }

    pub fn set_settled(&self, run: &AbcRun, inputs: Option<u64>) {
        self.with(run, |r| r.settled = inputs);
    }

    /// Forgets the run `uid`; returns its namespace and name when nothing else remembered
    /// keeps them (a run deleted and created again under its name keeps its series).
    pub fn forget(&self, uid: &str) -> Option<(String, String)> {
        let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        let gone = runs.remove(uid)?;
        let name_in_use = runs
            .values()
            .any(|r| r.namespace == gone.namespace && r.name == gone.name);
        (!name_in_use).then_some((gone.namespace, gone.name))
    }

    /// The uids of the runs remembered.
    pub fn uids(&self) -> Vec<String> {
        let runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        runs.keys().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.runs.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(name: &str, uid: &str) -> AbcRun {
        let mut run = crate::resources::test_support::minimal();
        run.metadata.name = Some(name.into());
        run.metadata.uid = Some(uid.into());
        run
    }

    #[test]
    fn a_problem_is_told_once_per_run_however_often_it_comes_back() {
        let told = RunMemory::default();
        let (a, b) = (run("a", "1"), run("b", "2"));
        assert!(told.tell(&a, "ErrImageNeverPull"));
        assert!(told.tell(&a, "RedisUnavailable"));
        assert!(!told.tell(&a, "ErrImageNeverPull"));
        assert!(told.tell(&b, "ErrImageNeverPull"));
        told.forget("1");
        assert!(told.tell(&a, "ErrImageNeverPull"));
    }

    #[test]
    fn the_idle_time_written_holds_until_the_cached_run_has_it() {
        let memory = RunMemory::default();
        let a = run("a", "1");
        let idle_at = |t: &str| AbcRunStatus {
            idle_since: Some(t.into()),
            ..AbcRunStatus::default()
        };
        assert_eq!(memory.idle_since(&a, None), None);
        memory.status_written(&a, &idle_at("10:00"));
        // The cache has not brought the write back: the time written stands.
        assert_eq!(memory.idle_since(&a, None), Some("10:00".into()));
        assert_eq!(memory.idle_since(&a, None), Some("10:00".into()));
        // Caught up: forgotten, the cache decides from now on.
        assert_eq!(
            memory.idle_since(&a, Some("10:00".into())),
            Some("10:00".into())
        );
        assert_eq!(memory.idle_since(&a, None), None);
        // A master sampled: `None` written stands over a stale idle time.
        memory.status_written(&a, &AbcRunStatus::default());
        assert_eq!(memory.idle_since(&a, Some("10:00".into())), None);
    }

    #[test]
    fn a_forgotten_run_leaves_nothing_and_its_name_only_when_unused() {
        let memory = RunMemory::default();
        let (old, new) = (run("a", "1"), run("a", "2"));
        memory.status_written(
            &old,
            &AbcRunStatus {
                lost_workers: 1,
                ..AbcRunStatus::default()
            },
        );
        assert_eq!(memory.lost_workers_written(&old), 1);
        memory.remember(&new);
        assert_eq!(memory.len(), 2);
        // The run created again under its name keeps the name's series.
        assert_eq!(memory.forget("1"), None);
        assert_eq!(memory.since_status_written(&new), None);
        assert_eq!(
            memory.forget("2"),
            Some((new.namespace().unwrap(), "a".into()))
        );
        assert_eq!(memory.len(), 0);
        assert_eq!(memory.forget("2"), None);
    }
}
