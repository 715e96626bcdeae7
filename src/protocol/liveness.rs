//! Whether a worker is alive, judged from its ledgers: the one rule the controller and the local
//! runner share, together with the heartbeat period both give their workers
//! (`ABC_HEARTBEAT_SECONDS`) and which ledgers belong to which worker.
//!
//! The period is derived from the timeout, never set on its own: a period close to the timeout
//! makes one late beat (a busy node, a slow Redis) a lost worker, which is then repaired and
//! killed although it was healthy.

use super::{Ledger, Snapshot};
use std::time::Duration;

/// Heartbeats a worker sends per timeout: a beat may be late, or one missed entirely, before
/// the worker counts as lost.
const BEATS_PER_TIMEOUT: u64 = 4;
/// The longest heartbeat period: the one workers have always had on a cluster (the
/// lifecycle tests ran with it; a long timeout does not stretch it).
const MAX_PERIOD: Duration = Duration::from_secs(5);

/// The heartbeat contract of a run, from `spec.workers.heartbeatTimeoutSeconds`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    timeout: Duration,
}

impl Heartbeat {
    /// The contract for a timeout in seconds. The CRD's minimum is 5; a local manifest is not
    /// checked against the schema, so anything below 1 s (or negative) counts as 1 s.
    pub fn from_timeout_seconds(seconds: i64) -> Heartbeat {
        Heartbeat {
            timeout: Duration::from_secs(u64::try_from(seconds).unwrap_or(0).max(1)),
        }
    }

    /// How long a ledger may go without a heartbeat before its worker is lost.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// How often a worker beats (`ABC_HEARTBEAT_SECONDS`): [`BEATS_PER_TIMEOUT`] times per
    /// timeout, in whole seconds (the entrypoint's unit), at least 1 s, so that a timeout of a
    /// few seconds does not turn into a busy loop, and at most [`MAX_PERIOD`].
    pub fn period(&self) -> Duration {
        let seconds = (self.timeout.as_secs() / BEATS_PER_TIMEOUT).clamp(1, MAX_PERIOD.as_secs());
        Duration::from_secs(seconds)
    }

    /// Whether `ledger`'s worker is lost at `now_ms` (Redis time, e.g. [`Snapshot::time_ms`]):
    /// its last sign of life is older than the timeout.
    ///
    /// The last sign of life is the heartbeat, or without one the registration (`started`): a
    /// worker registers with both in one script, so a ledger with `started` but no `heartbeat`
    /// can only come from an older or foreign writer, and its registration was still proof of
    /// life at that time. A ledger with neither has no age at all. Counting it as alive would
    /// keep it forever, and if its worker hangs owing work the master waits forever, which is
    /// what the ledger is there to prevent; counting it as lost costs at most one restart of a
    /// worker (a repaired live worker is fenced and exits, it never counts twice). So it is lost.
    pub fn is_stale(&self, ledger: &Ledger, now_ms: i64) -> bool {
        let Some(last) = ledger.heartbeat_ms.or(ledger.started_ms) else {
            return true;
        };
        let timeout_ms = i64::try_from(self.timeout.as_millis()).unwrap_or(i64::MAX);
        now_ms.saturating_sub(last) > timeout_ms
    }

    /// The ledgers of `snapshot` whose worker is lost at the snapshot's time: hung or cut off,
    /// to be repaired (after its process is gone).
    pub fn stale_ledgers<'a>(&self, snapshot: &'a Snapshot) -> impl Iterator<Item = &'a Ledger> {
        let heartbeat = *self;
        snapshot
            .ledgers
            .iter()
            .filter(move |ledger| heartbeat.is_stale(ledger, snapshot.time_ms))
    }
}

impl Ledger {
    /// `ABC_WORKER_ID` of the worker that wrote this ledger (the pod name in a cluster): its
    /// `worker` field, or without one the ledger id itself (a worker with one process uses its
    /// id as ledger id).
    pub fn worker_id(&self) -> &str {
        self.worker.as_deref().unwrap_or(&self.id)
    }
}

impl Snapshot {
    /// The ledgers of one worker (`ABC_WORKER_ID`, e.g. a pod): one per process.
    pub fn ledgers_of<'a>(&'a self, worker: &'a str) -> impl Iterator<Item = &'a Ledger> + 'a {
        self.ledgers
            .iter()
            .filter(move |ledger| ledger.worker_id() == worker)
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::Ledger;

    /// An idle ledger of `worker` with these times (Redis ms).
    pub fn ledger(
        id: &str,
        worker: Option<&str>,
        started_ms: Option<i64>,
        heartbeat_ms: Option<i64>,
    ) -> Ledger {
        Ledger {
            id: id.into(),
            worker: worker.map(Into::into),
            host: None,
            pid: None,
            started_ms,
            heartbeat_ms,
            analysis_id: None,
            generation: None,
            joined: false,
            claim: None,
            jobs: 0,
            lock: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::ledger;
    use super::*;

    #[test]
    fn the_period_leaves_room_for_a_missed_beat_at_every_valid_timeout() {
        assert_eq!(
            Heartbeat::from_timeout_seconds(60).period(),
            Duration::from_secs(5)
        );
        // The CRD's range is 5..=86400.
        for seconds in (5..=600).chain([3600, 86_400]) {
            let heartbeat = Heartbeat::from_timeout_seconds(seconds);
            let period = heartbeat.period();
            assert!(period >= Duration::from_secs(1), "{seconds}");
            assert!(2 * period < heartbeat.timeout(), "{seconds}: {period:?}");
        }
    }

    #[test]
    fn odd_timeouts_do_not_panic_or_spin() {
        for seconds in [i64::MIN, -1, 0, 1] {
            let heartbeat = Heartbeat::from_timeout_seconds(seconds);
            assert_eq!(heartbeat.timeout(), Duration::from_secs(1));
            assert_eq!(heartbeat.period(), Duration::from_secs(1));
        }
        assert_eq!(
            Heartbeat::from_timeout_seconds(2).period(),
            Duration::from_secs(1)
        );
        let huge = Heartbeat::from_timeout_seconds(i64::MAX);
        assert!(!huge.is_stale(&ledger("w", None, None, Some(i64::MIN)), i64::MAX));
    }

    #[test]
    fn a_worker_is_lost_when_its_last_sign_of_life_is_older_than_the_timeout() {
        let heartbeat = Heartbeat::from_timeout_seconds(5);
        let beating = ledger("w", Some("w"), Some(0), Some(10_000));
        assert!(!heartbeat.is_stale(&beating, 15_000));
        assert!(heartbeat.is_stale(&beating, 15_001));
        // Registered, no heartbeat yet: aged from the registration.
        let registered = ledger("w", Some("w"), Some(10_000), None);
        assert!(!heartbeat.is_stale(&registered, 15_000));
        assert!(heartbeat.is_stale(&registered, 15_001));
        // No time at all: lost (see `is_stale`).
        assert!(heartbeat.is_stale(&ledger("w", Some("w"), None, None), 0));
    }

    #[test]
    fn a_workers_ledgers_are_found_by_its_id() {
        let snapshot = Snapshot {
            ledgers: vec![
                ledger("pod-a-0", Some("pod-a"), Some(0), Some(0)),
                ledger("pod-a-1", Some("pod-a"), Some(0), Some(0)),
                ledger("pod-a-10", Some("pod-a-1"), Some(0), Some(0)),
                // Written without the `worker` field: its id is the worker's.
                ledger("pod-b", None, Some(0), Some(0)),
            ],
            ..Snapshot::default()
        };
        let ids = |worker| {
            snapshot
                .ledgers_of(worker)
                .map(|l| l.id.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids("pod-a"), ["pod-a-0", "pod-a-1"]);
        assert_eq!(ids("pod-a-1"), ["pod-a-10"]);
        assert_eq!(ids("pod-b"), ["pod-b"]);
    }
}
