//! Each live run's Redis, read at a bounded rate apart from its reconciles.
//!
//! A running run's progress lives in its Redis, which sends no events. Reading it in every
//! reconcile and requeueing every run every few seconds costs a whole reconcile per run per
//! poll, also for the many runs where nothing moves. Instead, one small task per live run
//! reads the run's [`Snapshot`] every [`POLL_INTERVAL`] while an analysis is in it, keeps the
//! latest for the next reconcile, and wakes the reconciler only when something a reconcile
//! acts on changed: the snapshot apart from the Redis clock and the heartbeat times, plus
//! which ledgers are past their heartbeat timeout (a worker hanging changes nothing else).
//! Repairs, status, Events and demand then follow within one interval.
//!
//! A run without an analysis (no master has started yet, or the last one finished) cannot
//! move until a master publishes `start`. Its connection hears that ([`Publications`]), so it
//! is read at once then, and otherwise only every `idle_interval` (30 s by default; for what
//! else changes there: workers coming and going). The profile of 1,000 such runs read every
//! 5 s was 44% Redis reads. A Redis that cannot be heard (older than 6) is read every
//! [`UNHEARD_IDLE_INTERVAL`]: a master's start shows up to that much later.
//!
//! The reconcile that finds a run live starts its poller ([`Pollers::keep`]) and stops it when
//! the run no longer is ([`Pollers::stop`]). A run deleted without the controller seeing it
//! (runs have no finalizer) is noticed by its poller, which then ends and drops the run's
//! Redis connection.

use super::GuardedRun;
use super::redis_access::RedisAccess;
use crate::api::AbcRun;
use crate::protocol::{Endpoint, Heartbeat, Publications, Snapshot};
use futures::channel::mpsc;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// How often a live run's Redis is read while an analysis is in it (or the last read failed).
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How often a Redis whose messages the controller cannot hear is read while no analysis is
/// in it. The price of not reading it every second: a master's start shows in the status up
/// to 5 s later, and an analysis over within 5 s may not show at all (its master Job's
/// completion still does).
pub const UNHEARD_IDLE_INTERVAL: Duration = Duration::from_secs(5);
/// The shortest time between two reads of a run without an analysis, however often messages
/// come.
const MIN_GAP: Duration = Duration::from_millis(200);
/// A reconcile uses its poller's snapshot until the poller's next read is this late (the
/// poller is behind or stopped); then it reads for itself. A run without an analysis is read
/// every `idle_interval` and at once when a master starts, so its snapshot serves the
/// reconciles in between: the safety-net requeue of 1,000 idle runs (`follow_up::POLL_POLLED`)
/// read their Redis again, a third of the reads at that size (bench S).
const OVERDUE_AFTER: Duration = Duration::from_secs(1);
/// The oldest snapshot a reconcile of a run with a master Job uses, however on time its poller
/// is. Such a master can leave what only a read shows and end before the next one: one that
/// refuses its results database writes its start record, publishes nothing and fails. The
/// reconcile its pod's end brings must see that record, and once the Job has failed the run's
/// Redis is not read any more (`decide::redis_readable`).
const FRESH_FOR_A_MASTER: Duration = Duration::from_secs(2);

/// What a reconcile acts on in one reading of a run's Redis: the snapshot without the clock
/// and heartbeat times, and which ledgers are stale; or that the read failed (and why).
#[derive(Debug, Clone, PartialEq)]
pub struct Digest(Result<(Snapshot, Vec<bool>), String>);

impl Digest {
    pub fn of(reading: &Result<Snapshot, String>, heartbeat: Heartbeat) -> Digest {
        Digest(reading.as_ref().map_err(Clone::clone).map(|snapshot| {
            let stale = snapshot
                .ledgers
                .iter()
                .map(|ledger| heartbeat.is_stale(ledger, snapshot.time_ms))
                .collect();
            let mut timeless = snapshot.clone();
            timeless.time_ms = 0;
            for ledger in &mut timeless.ledgers {
                ledger.heartbeat_ms = None;
            }
            (timeless, stale)
        }))
    }
}

/// The latest snapshot of one run, as its poller left it.
type Latest = Arc<Mutex<Option<Reading>>>;

struct Reading {
    at: Instant,
    /// The poller's next read is due then, and late after [`OVERDUE_AFTER`].
    overdue: Instant,
    snapshot: Arc<Snapshot>,
}

impl Reading {
    /// Whether a reconcile at `now` uses this reading instead of reading for itself.
    fn serves(&self, now: Instant, has_master_job: bool) -> bool {
        now <= self.overdue && (!has_master_job || now <= self.at + FRESH_FOR_A_MASTER)
    }
}

struct Poller {
    /// The endpoint and heartbeat timeout it polls with: others restart it.
    endpoint: Endpoint,
    heartbeat: Heartbeat,
    latest: Latest,
    task: tokio::task::AbortHandle,
}

impl Poller {
    fn polls(&self, endpoint: &Endpoint, heartbeat: Heartbeat) -> bool {
        self.endpoint == *endpoint && self.heartbeat == heartbeat
    }
}

/// The pollers of all live runs, keyed by run uid.
pub struct Pollers {
    wake: mpsc::UnboundedSender<ObjectRef<GuardedRun>>,
    runs: Store<GuardedRun>,
    redis: Arc<RedisAccess>,
    /// How often a run without an analysis is read when its messages are heard.
    idle_interval: Duration,
    polling: Mutex<HashMap<String, Poller>>,
}

impl Pollers {
    /// Pollers that wake runs through `wake` (the controller's `reconcile_on`) and end when
    /// their run is gone from `runs`.
    pub fn new(
        wake: mpsc::UnboundedSender<ObjectRef<GuardedRun>>,
        runs: Store<GuardedRun>,
        redis: Arc<RedisAccess>,
        idle_interval: Duration,
    ) -> Pollers {
        Pollers {
            wake,
            runs,
            redis,
            idle_interval,
            polling: Mutex::default(),
        }
    }

    /// The run's latest snapshot, while its poller is on time ([`OVERDUE_AFTER`]) and, for a
    /// run with a master Job, recent ([`FRESH_FOR_A_MASTER`]).
    pub fn latest(
        &self,
        run: &AbcRun,
        endpoint: &Endpoint,
        heartbeat: Heartbeat,
        has_master_job: bool,
    ) -> Option<Snapshot> {
        let polling = self.polling.lock().unwrap();
        let poller = polling.get(&run.uid()?)?;
        if !poller.polls(endpoint, heartbeat) {
            return None;
        }
        let latest = poller.latest.lock().unwrap();
        let reading = latest.as_ref()?;
        reading
            .serves(Instant::now(), has_master_job)
            .then(|| Snapshot::clone(&reading.snapshot))
    }

    /// Keeps the run's Redis polled (starts a poller, or restarts one that polls another
    /// endpoint). `seen` is what the calling reconcile read: the poller wakes the run when a
    /// reading differs from it.
    pub fn keep(
        &self,
        run: &AbcRun,
        endpoint: &Endpoint,
        heartbeat: Heartbeat,
        seen: &Result<Snapshot, String>,
    ) {
        let (Some(uid), Some(namespace)) = (run.uid(), run.namespace()) else {
            return;
        };
        let mut polling = self.polling.lock().unwrap();
        if polling
            .get(&uid)
            .is_some_and(|p| p.polls(endpoint, heartbeat) && !p.task.is_finished())
        {
            return;
        }
        let latest = Latest::default();
        let task = tokio::spawn(poll(
            PollerOf {
                reference: ObjectRef::new(&run.name_any()).within(&namespace),
                uid: uid.clone(),
                endpoint: endpoint.clone(),
                heartbeat,
                latest: latest.clone(),
                publications: self.redis.publications(&uid),
                idle_interval: self.idle_interval,
            },
            Digest::of(seen, heartbeat),
            self.wake.clone(),
            self.runs.clone(),
            self.redis.clone(),
        ))
        .abort_handle();
        if let Some(old) = polling.insert(
            uid,
            Poller {
                endpoint: endpoint.clone(),
                heartbeat,
                latest,
                task,
            },
        ) {
            old.task.abort();
        }
    }

    /// Stops polling the run (finished, suspended, deleted, or its Redis not readable).
    pub fn stop(&self, uid: &str) {
        if let Some(poller) = self.polling.lock().unwrap().remove(uid) {
            poller.task.abort();
        }
    }
}

/// One poller's run and what it reads with.
struct PollerOf {
    reference: ObjectRef<GuardedRun>,
    uid: String,
    endpoint: Endpoint,
    heartbeat: Heartbeat,
    latest: Latest,
    publications: Arc<Publications>,
    idle_interval: Duration,
}

async fn poll(
    of: PollerOf,
    mut seen: Digest,
    wake: mpsc::UnboundedSender<ObjectRef<GuardedRun>>,
    runs: Store<GuardedRun>,
    redis: Arc<RedisAccess>,
) {
    let mut next_read = Instant::now() + POLL_INTERVAL;
    let mut idle = false;
    let mut last_read = Instant::now();
    loop {
        // Reads follow each other, so a slow Redis delays the next read rather than causing a
        // burst of them. Messages matter only while no analysis is in Redis: a live run is
        // read every second anyway, and reading it at a generation's `start` itself would
        // find the workers not joined yet.
        if idle {
            tokio::select! {
                () = tokio::time::sleep_until(next_read) => {}
                // a flood of messages costs a read every MIN_GAP at most
                () = of.publications.heard() => tokio::time::sleep_until(last_read + MIN_GAP).await,
            }
        } else {
            tokio::time::sleep_until(next_read).await;
        }
        let started = Instant::now();
        last_read = started;
        if runs.get(&of.reference).and_then(|r| r.uid()).as_deref() != Some(of.uid.as_str()) {
            // Deleted (or replaced by a new run of the same name): nothing to poll any more.
            redis.forget(&of.uid);
            return;
        }
        // Boxed: the read (and the connecting it may need) is most of this future's size,
        // which every poller would otherwise hold all the time, also while it sleeps.
        let reading = Box::pin(redis.snapshot(&of.uid, &of.endpoint))
            .await
            .map_err(|err| err.to_string());
        idle = matches!(&reading, Ok(snapshot) if snapshot.analysis_id.is_none());
        next_read = started + interval_after(idle, &of);
        let digest = Digest::of(&reading, of.heartbeat);
        // After a failed read the next reconcile reads for itself, and reports the failure.
        *of.latest.lock().unwrap() = reading.ok().map(|snapshot| Reading {
            at: started,
            overdue: next_read + OVERDUE_AFTER,
            snapshot: Arc::new(snapshot),
        });
        if digest != seen {
            seen = digest;
            if wake.unbounded_send(of.reference.clone()).is_err() {
                return; // the controller stopped
            }
        }
    }
}

/// How long after a read the next one starts (a message can start it earlier while `idle`).
fn interval_after(idle: bool, of: &PollerOf) -> Duration {
    match idle {
        true if of.publications.subscribed() => of.idle_interval,
        true => UNHEARD_IDLE_INTERVAL,
        false => POLL_INTERVAL,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::liveness_test_support::ledger;

    fn snapshot(time_ms: i64, heartbeat_ms: i64, n_acc: i64) -> Result<Snapshot, String> {
        Ok(Snapshot {
            time_ms,
            n_acc: Some(n_acc),
            ledgers: vec![ledger("w1", Some("w1"), Some(0), Some(heartbeat_ms))],
            ..Snapshot::default()
        })
    }

    #[test]
    fn a_run_with_a_master_job_is_read_again_after_two_seconds_whatever_its_poller_does() {
        let at = Instant::now();
        let idle = Reading {
            at,
            overdue: at + Duration::from_secs(31),
            snapshot: Arc::default(),
        };
        let later = at + Duration::from_secs(3);
        assert!(
            idle.serves(later, false),
            "a run without a master: until overdue"
        );
        assert!(
            !idle.serves(later, true),
            "a master may have left a start record since"
        );
        assert!(idle.serves(at + Duration::from_secs(1), true));
        assert!(
            !idle.serves(at + Duration::from_secs(32), false),
            "the poller is late"
        );
    }

    #[test]
    fn the_clock_and_heartbeats_alone_wake_nothing() {
        let heartbeat = Heartbeat::from_timeout_seconds(30);
        assert_eq!(
            Digest::of(&snapshot(1_000, 900, 5), heartbeat),
            Digest::of(&snapshot(6_000, 5_900, 5), heartbeat)
        );
    }

    #[test]
    fn progress_a_hung_worker_and_a_failed_read_wake_the_run() {
        let heartbeat = Heartbeat::from_timeout_seconds(30);
        let before = Digest::of(&snapshot(1_000, 900, 5), heartbeat);
        assert_ne!(before, Digest::of(&snapshot(1_000, 900, 6), heartbeat));
        // the same ledger, its last beat now older than the timeout
        assert_ne!(before, Digest::of(&snapshot(31_000, 900, 5), heartbeat));
        assert_ne!(
            before,
            Digest::of(&Err("no answer within 3 s".into()), heartbeat)
        );
    }
}
