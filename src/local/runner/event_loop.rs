//! Supervision from the start of the children to the end of the run.

use super::{Event, LocalError, Outcome, Runner, Signals};
use crate::protocol;
use futures::FutureExt;
use serde_json::json;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

/// How often the run's Redis is polled for progress. A generation shorter than this gets no
/// line of its own (the Gaussian example's generation 0 takes about half a second on an idle
/// machine); one snapshot of a loopback Redis every 100 ms costs next to nothing.
const POLL: Duration = Duration::from_millis(100);

impl Runner {
    /// Starts workers and master, then supervises until the master exits, Ctrl-C, or failure.
    pub(super) async fn run_until_done(&mut self, signals: &mut Signals) -> Outcome {
        self.announce();
        // Ctrl-C while Redis was starting: start nothing more.
        if signals.recv().now_or_never().is_some() {
            return Outcome::Stopped;
        }
        for slot in 0..self.slots.len() {
            if let Err(err) = self.spawn_worker(slot) {
                return Outcome::Failed(err);
            }
        }
        if let Err(err) = self.spawn_master() {
            return Outcome::Failed(err);
        }
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let event = tokio::select! {
                _ = signals.recv() => {
                    return if self.master.is_some() { Outcome::Interrupted } else { Outcome::Stopped };
                }
                Some(event) = self.rx.recv() => Some(event),
                _ = tick.tick() => None,
            };
            // First: a child's end that a dead Redis caused is not the child's own failure.
            if let Err(err) = self.revive_redis() {
                return Outcome::Failed(err);
            }
            match event {
                Some(Event::WorkerExited {
                    slot,
                    incarnation,
                    status,
                }) => {
                    if let Err(err) = self.on_worker_exit(slot, incarnation, status).await {
                        return Outcome::Failed(err);
                    }
                }
                Some(Event::MasterLine(line)) => {
                    // Progress first, so a generation's line comes before what the master
                    // prints about it (e.g. the summary after the last one).
                    if self.last_poll.elapsed() > Duration::from_millis(20) {
                        self.poll().await;
                    }
                    self.printer.master_line(&line);
                }
                Some(Event::MasterExited(status)) => {
                    if let Some(outcome) = self.on_master_exit(status).await {
                        return outcome;
                    }
                }
                None => {
                    self.poll().await;
                    if let Err(err) = self.restart_due() {
                        return Outcome::Failed(err);
                    }
                }
            }
        }
    }

    /// The master's end: the run's end, unless the master is started again (after a kill, or
    /// because it lost its generation with Redis).
    async fn on_master_exit(&mut self, status: std::io::Result<ExitStatus>) -> Option<Outcome> {
        let stopped_for_redis = self.master.take().is_some_and(|m| m.stopped_for_redis);
        let status = match status {
            Ok(status) => status,
            Err(err) => {
                return Some(Outcome::Failed(LocalError::Spawn {
                    what: "the master".into(),
                    program: "wait".into(),
                    cause: err,
                }));
            }
        };
        self.poll().await;
        // A master that finished just as Redis died is done: started again, it would begin
        // a new run in its database.
        // The abc_operator module exits with REDIS_LOST_EXIT_CODE when its Redis went away
        // mid-run: as the master Job's pod failure policy on a cluster, not counted.
        let lost_redis = status.code() == Some(protocol::REDIS_LOST_EXIT_CODE);
        let restart = if (stopped_for_redis || lost_redis) && !status.success() {
            // Not counted against `backoffLimit`: it was not the master's fault.
            self.clear_analysis_lock_and_spawn_master().await
        } else if let Some(signal) = status.signal()
            && self.may_restart_master()
        {
            self.restart_master(signal).await
        } else {
            return Some(Outcome::Master(status, self.elapsed()));
        };
        restart.err().map(Outcome::Failed)
    }

    /// A master killed by a signal (the OOM killer, a `kill -9`) is started again, as the
    /// master Job retries on a cluster, up to `spec.master.backoffLimit` times; one that exits
    /// with an error code is not (its script failed: a retry would fail the same way).
    fn may_restart_master(&self) -> bool {
        let limit = self.master_backoff_limit();
        !self.stopping && self.master_restarts < limit
    }

    /// `spec.master.backoffLimit` (0 without a master).
    fn master_backoff_limit(&self) -> i32 {
        self.spec.master.as_ref().map_or(0, |m| m.backoff_limit)
    }

    /// Clears the dead master's analysis lock and starts the master again; with the
    /// `abc_operator` module it resumes from its database.
    async fn restart_master(&mut self, signal: i32) -> Result<(), LocalError> {
        self.master_restarts += 1;
        let limit = self.master_backoff_limit();
        self.printer.say(format!(
            "the master was killed (signal {signal}); starting it again (retry {} of {limit}): \
             it continues from its results database",
            self.master_restarts
        ));
        self.printer.event(json!({"event": "master_restarted", "signal": signal, "retry": self.master_restarts, "limit": limit}));
        tracing::warn!(
            signal,
            retry = self.master_restarts,
            limit,
            "master killed; starting it again"
        );
        self.clear_analysis_lock_and_spawn_master().await
    }

    /// pyABC's master refuses to start while a dead master's analysis lock is there.
    async fn clear_analysis_lock_and_spawn_master(&mut self) -> Result<(), LocalError> {
        if let Err(err) = protocol::clear_stale_analysis_lock(&mut self.conn).await {
            tracing::warn!(%err, "clearing the dead master's analysis lock failed");
        }
        self.spawn_master()
    }
}
