//! Each poll of the run's Redis: progress for the user, and hung workers killed.

use super::Runner;
use crate::api::Progress;
use crate::local::process;
use crate::local::progress::Observation;
use crate::local::redis_access;
use crate::protocol::{Heartbeat, Ledger, Snapshot};
use nix::sys::signal::Signal;
use std::collections::BTreeSet;
use std::time::Instant;

impl Runner {
    /// One snapshot of the run's Redis, rendered as progress; hung workers are killed.
    pub(super) async fn poll(&mut self) {
        self.last_poll = Instant::now();
        match redis_access::snapshot(&mut self.conn).await {
            Ok(snapshot) => {
                self.poll_failed = false;
                self.lost_workers = self.lost_workers.max(snapshot.lost_workers);
                self.report_resume(&snapshot);
                self.report_master_start(&snapshot);
                let workers = self.slots.iter().filter(|s| s.running.is_some()).count();
                self.update_page(&snapshot, workers).await;
                let obs = Observation {
                    progress: Progress::from(&snapshot),
                    workers,
                };
                let (ended, figures) = match self.renderer.ending(&obs) {
                    Some((ana, t)) => (
                        redis_access::final_counts(&mut self.conn, &ana, t)
                            .await
                            .ok()
                            .flatten(),
                        redis_access::figures_of(&mut self.conn, snapshot.generations_recorded, t)
                            .await,
                    ),
                    None => (None, None),
                };
                let elapsed = self.elapsed();
                for out in self.renderer.observe(obs, ended, figures, elapsed) {
                    self.printer.out(out);
                }
                if !self.stopping {
                    self.kill_hung_workers(&snapshot);
                }
            }
            Err(err) => {
                // Once per outage, not twice a second.
                if !self.poll_failed {
                    tracing::warn!(%err, "cannot read progress from Redis");
                }
                self.poll_failed = true;
            }
        }
    }

    /// Says once that the master resumed, as the operator's `Resumed` Event does.
    fn report_resume(&mut self, snapshot: &Snapshot) {
        let Some(resumed) = &snapshot.resumed else {
            return;
        };
        if self.last_resume.as_ref() == Some(&resumed.at) {
            return;
        }
        self.last_resume = Some(resumed.at.clone());
        self.printer
            .say(crate::protocol::resumed_note(resumed.from_generation));
        self.printer.event(serde_json::json!({"event": "master_resumed", "from_generation": resumed.from_generation}));
    }

    /// Says once how a master start went when it did not resume although it should have, as
    /// the operator's `ResumeFailed` and `NotResumed` Events do: a database it refused (it
    /// fails, leaving the database unchanged), or a restarted master that started anew.
    fn report_master_start(&mut self, snapshot: &Snapshot) {
        let Some(start) = &snapshot.master_start else {
            return;
        };
        if self.last_master_start.as_ref() == Some(&start.at) {
            return;
        }
        let restarted =
            self.last_master_start.is_some() || self.master_restarts > 0 || self.redis_restarts > 0;
        self.last_master_start = Some(start.at.clone());
        let Some((_, line)) = start.outcome.warning(&start.cause, restarted) else {
            return;
        };
        self.printer.say(line);
        self.printer.event(serde_json::json!({"event": "master_start", "outcome": start.outcome, "cause": start.cause}));
    }

    /// A worker process that is alive but whose ledger heartbeat stopped (stopped, or stuck
    /// holding the GIL) would keep the master waiting: kill it, and its exit repairs it.
    fn kill_hung_workers(&mut self, snapshot: &Snapshot) {
        let heartbeat =
            Heartbeat::from_timeout_seconds(self.spec.workers.heartbeat_timeout_seconds);
        let timeout = heartbeat.timeout();
        let hung: BTreeSet<&str> = heartbeat
            .stale_ledgers(snapshot)
            .map(Ledger::worker_id)
            .collect();
        for running in self.slots.iter_mut().filter_map(|s| s.running.as_mut()) {
            if hung.contains(running.id.as_str())
                && !running.killed
                && running.started.elapsed() > timeout
            {
                tracing::warn!(worker = %running.id, pid = running.pid, timeout_s = timeout.as_secs(), "worker stopped its heartbeat; killing it");
                process::signal_group(running.pid, Signal::SIGKILL);
                running.killed = true;
            }
        }
    }
}
