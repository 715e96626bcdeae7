//! What to do when a worker process ends: a pure function of how it ended, how long it lived
//! and what came before, so every case is unit-tested without processes.
//!
//! - exit 0 is an expired (or idle, or politely stopped) worker: it left its generation
//!   cleanly and owes nothing, so it is replaced at once;
//! - anything else (a signal, a non-zero code) may have died inside a generation with claimed
//!   evaluations: it is a *lost* worker whose ledger must be repaired before the master can
//!   finish the generation, then it is replaced;
//! - a worker that keeps failing soon after it starts (the model cannot be unpickled, a
//!   dependency is missing) would be restarted forever: after a few such failures in a row the
//!   run gives up with an error that points at the worker's log;
//! - a worker whose Redis died while it ran (the runner started Redis again) lost its
//!   connection or its ledger through no fault of its own: it is replaced at once, and its end
//!   neither counts towards giving up nor breaks a streak of real failures.

use std::fmt;
use std::time::Duration;

/// How a worker process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerExit {
    /// Exit code 0: runtime over, idle, or left after SIGTERM.
    Clean,
    /// A non-zero exit code (e.g. an uncaught exception).
    Code(i32),
    /// Killed by a signal (SIGKILL, OOM killer, ...).
    Signal(i32),
}

impl WorkerExit {
    /// Classifies a process exit status.
    pub fn from_status(status: std::process::ExitStatus) -> WorkerExit {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(0), _) => WorkerExit::Clean,
            (Some(code), _) => WorkerExit::Code(code),
            (None, Some(signal)) => WorkerExit::Signal(signal),
            // Neither a code nor a signal does not happen for a reaped child; treat it as lost
            // so that a repair (a no-op without a ledger) is never skipped.
            (None, None) => WorkerExit::Code(-1),
        }
    }

    /// Whether the worker may have died holding claimed work.
    pub fn is_lost(self) -> bool {
        self != WorkerExit::Clean
    }
}

impl fmt::Display for WorkerExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkerExit::Clean => write!(f, "exited cleanly"),
            WorkerExit::Code(code) => write!(f, "exit code {code}"),
            WorkerExit::Signal(signal) => match nix::sys::signal::Signal::try_from(*signal) {
                Ok(sig) => write!(f, "killed by {sig}"),
                Err(_) => write!(f, "killed by signal {signal}"),
            },
        }
    }
}

/// Limits of the restart policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestartPolicy {
    /// A failure this soon after the start counts as a "fast" failure. Generous because
    /// importing pyabc alone takes several seconds on a busy machine.
    pub fast_failure_window: Duration,
    /// Give up after this many fast failures of one worker slot in a row.
    pub max_fast_failures: u32,
    /// Pause before restarting after the n-th fast failure in a row: `n * step`, so a crash
    /// loop does not spin on CPU while it is being detected.
    pub fast_failure_backoff_step: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            fast_failure_window: Duration::from_secs(60),
            max_fast_failures: 5,
            fast_failure_backoff_step: Duration::from_millis(500),
        }
    }
}

/// Memory of one worker slot (`local-<n>`) across its incarnations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotHistory {
    /// Failures in a row, each soon after its start.
    pub fast_failures_in_a_row: u32,
}

/// What the runner does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Start a new incarnation now.
    Restart,
    /// Repair the lost worker's ledger, then start a new incarnation after `delay`.
    RepairAndRestart { delay: Duration },
    /// Repair the lost worker's ledger; the run is shutting down, so no new incarnation.
    RepairOnly,
    /// The run is shutting down and the worker left cleanly: nothing to do.
    Nothing,
    /// Repair, then stop the run: this slot failed `failures` times in a row, each soon after
    /// starting, so restarting again will not help.
    GiveUp { failures: u32 },
}

impl Decision {
    /// Whether the ledger of the ended worker must be repaired.
    pub fn needs_repair(&self) -> bool {
        matches!(
            self,
            Decision::RepairAndRestart { .. } | Decision::RepairOnly | Decision::GiveUp { .. }
        )
    }
}

/// Decides what follows a worker's end. `lived` is how long the incarnation ran; `stopping`
/// says whether the runner is shutting down (then nothing is restarted); `outlived_redis`
/// whether the Redis it was started against died meanwhile.
pub fn decide(
    exit: WorkerExit,
    lived: Duration,
    stopping: bool,
    outlived_redis: bool,
    history: SlotHistory,
    policy: &RestartPolicy,
) -> (Decision, SlotHistory) {
    if stopping {
        // Workers killed past their grace period during shutdown still get repaired, so that a
        // Redis kept with --keep-redis is consistent for a master started later.
        let decision = if exit.is_lost() {
            Decision::RepairOnly
        } else {
            Decision::Nothing
        };
        return (decision, history);
    }
    if outlived_redis {
        // Not its failure: nothing learnt about the slot. A lost one is still repaired, in
        // case it registered a ledger with the new Redis before it ended.
        let decision = if exit.is_lost() {
            Decision::RepairAndRestart {
                delay: Duration::ZERO,
            }
        } else {
            Decision::Restart
        };
        return (decision, history);
    }
    if !exit.is_lost() {
        // An expired worker is healthy: forget earlier failures and replace it at once.
        return (Decision::Restart, SlotHistory::default());
    }
    if lived >= policy.fast_failure_window {
        // It ran a good while (e.g. SIGKILLed mid-run): an accident, not a crash loop.
        return (
            Decision::RepairAndRestart {
                delay: Duration::ZERO,
            },
            SlotHistory::default(),
        );
    }
    let failures = history.fast_failures_in_a_row + 1;
    let history = SlotHistory {
        fast_failures_in_a_row: failures,
    };
    if failures >= policy.max_fast_failures {
        return (Decision::GiveUp { failures }, history);
    }
    let delay = policy.fast_failure_backoff_step * failures;
    (Decision::RepairAndRestart { delay }, history)
}

/// Worker identity of incarnation `incarnation` (1-based) of slot `slot` (1-based):
/// `local-3`, then `local-3-r2`, `local-3-r3`, ... Unique per incarnation, so a repair keyed by
/// the id can never hit the ledger of the process that replaced it.
pub fn worker_id(slot: usize, incarnation: u32) -> String {
    if incarnation <= 1 {
        format!("local-{slot}")
    } else {
        format!("local-{slot}-r{incarnation}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn policy() -> RestartPolicy {
        RestartPolicy::default()
    }

    #[test]
    fn expired_worker_restarts_at_once_and_clears_failures() {
        let history = SlotHistory {
            fast_failures_in_a_row: 3,
        };
        let (decision, history) =
            decide(WorkerExit::Clean, 2 * SEC, false, false, history, &policy());
        assert_eq!(decision, Decision::Restart);
        assert!(!decision.needs_repair());
        assert_eq!(history.fast_failures_in_a_row, 0);
    }

    #[test]
    fn killed_worker_after_a_while_is_repaired_and_restarted_without_delay() {
        let (decision, history) = decide(
            WorkerExit::Signal(9),
            300 * SEC,
            false,
            false,
            SlotHistory::default(),
            &policy(),
        );
        assert_eq!(
            decision,
            Decision::RepairAndRestart {
                delay: Duration::ZERO
            }
        );
        assert!(decision.needs_repair());
        assert_eq!(history.fast_failures_in_a_row, 0);
    }

    #[test]
    fn non_zero_exit_is_lost_too() {
        let (decision, _) = decide(
            WorkerExit::Code(1),
            300 * SEC,
            false,
            false,
            SlotHistory::default(),
            &policy(),
        );
        assert!(decision.needs_repair());
    }

    #[test]
    fn fast_failures_back_off_then_give_up() {
        let p = policy();
        let mut history = SlotHistory::default();
        for n in 1..p.max_fast_failures {
            let (decision, next) = decide(WorkerExit::Code(1), 3 * SEC, false, false, history, &p);
            assert_eq!(
                decision,
                Decision::RepairAndRestart {
                    delay: p.fast_failure_backoff_step * n
                }
            );
            history = next;
        }
        let (decision, _) = decide(WorkerExit::Code(1), 3 * SEC, false, false, history, &p);
        assert_eq!(
            decision,
            Decision::GiveUp {
                failures: p.max_fast_failures
            }
        );
        assert!(
            decision.needs_repair(),
            "even a given-up worker may hold claimed work"
        );
    }

    #[test]
    fn a_long_life_or_clean_exit_breaks_the_streak() {
        let p = policy();
        let streak = SlotHistory {
            fast_failures_in_a_row: p.max_fast_failures - 1,
        };
        let (_, after_long) = decide(
            WorkerExit::Signal(9),
            p.fast_failure_window,
            false,
            false,
            streak,
            &p,
        );
        assert_eq!(after_long.fast_failures_in_a_row, 0);
        let (_, after_clean) = decide(WorkerExit::Clean, SEC, false, false, streak, &p);
        assert_eq!(after_clean.fast_failures_in_a_row, 0);
    }

    #[test]
    fn nothing_restarts_while_stopping_but_lost_workers_are_repaired() {
        let h = SlotHistory::default();
        assert_eq!(
            decide(WorkerExit::Clean, SEC, true, false, h, &policy()).0,
            Decision::Nothing
        );
        assert_eq!(
            decide(WorkerExit::Signal(9), SEC, true, false, h, &policy()).0,
            Decision::RepairOnly
        );
        // Stopping never counts towards giving up.
        let streak = SlotHistory {
            fast_failures_in_a_row: 99,
        };
        assert_eq!(
            decide(WorkerExit::Code(1), SEC, true, false, streak, &policy()).0,
            Decision::RepairOnly
        );
    }

    #[test]
    fn workers_that_outlived_their_redis_are_replaced_at_once_and_never_make_the_run_give_up() {
        let p = policy();
        let streak = SlotHistory {
            fast_failures_in_a_row: p.max_fast_failures - 1,
        };
        // Several times in a row, right after their start: a Redis dying again and again.
        for exit in [
            WorkerExit::Code(1),
            WorkerExit::Code(3),
            WorkerExit::Signal(9),
        ] {
            let (decision, history) = decide(exit, SEC, false, true, streak, &p);
            assert_eq!(
                decision,
                Decision::RepairAndRestart {
                    delay: Duration::ZERO
                }
            );
            assert_eq!(history, streak, "neither counted nor forgotten");
        }
        let (decision, _) = decide(WorkerExit::Clean, SEC, false, true, streak, &p);
        assert_eq!(decision, Decision::Restart);
        // Stopping still wins: nothing restarts.
        let (decision, _) = decide(WorkerExit::Code(1), SEC, true, true, streak, &p);
        assert_eq!(decision, Decision::RepairOnly);
    }

    #[test]
    fn exit_statuses_are_classified() {
        use std::os::unix::process::ExitStatusExt;
        let status = std::process::ExitStatus::from_raw;
        assert_eq!(WorkerExit::from_status(status(0)), WorkerExit::Clean);
        assert_eq!(WorkerExit::from_status(status(1 << 8)), WorkerExit::Code(1));
        assert_eq!(WorkerExit::from_status(status(9)), WorkerExit::Signal(9));
        assert_eq!(WorkerExit::Signal(9).to_string(), "killed by SIGKILL");
        assert_eq!(WorkerExit::Code(3).to_string(), "exit code 3");
    }

    #[test]
    fn worker_ids_are_unique_per_incarnation() {
        assert_eq!(worker_id(3, 1), "local-3");
        assert_eq!(worker_id(3, 2), "local-3-r2");
        assert_ne!(worker_id(1, 12), worker_id(11, 2));
    }
}
