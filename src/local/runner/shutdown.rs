//! Stopping everything in order, and the run's exit code.

use super::{Event, LocalError, Outcome, Runner, Signals};
use crate::local::dirs::databases;
use crate::local::process;
use crate::local::progress::round1;
use nix::sys::signal::Signal;
use serde_json::json;
use std::process::ExitStatus;
use std::time::Duration;

/// After SIGKILL, how long to wait for the kernel to report the exit before moving on.
const REAP: Duration = Duration::from_secs(5);
/// Exit code after Ctrl-C (128 + SIGINT), as shells report it.
const INTERRUPTED: u8 = 130;

impl Runner {
    pub(super) fn live_worker_pids(&self) -> Vec<u32> {
        self.slots
            .iter()
            .filter_map(|s| s.running.as_ref().map(|r| r.pid))
            .collect()
    }

    /// Stops everything in order: workers (gracefully), the master, then Redis. A second Ctrl-C
    /// kills whatever is left at once.
    pub(super) async fn shutdown(
        &mut self,
        outcome: Outcome,
        signals: &mut Signals,
    ) -> Result<u8, LocalError> {
        self.stopping = true;
        let grace = Duration::from_secs(
            u64::try_from(self.spec.workers.termination_grace_period_seconds).unwrap_or(1),
        );
        match &outcome {
            Outcome::Interrupted | Outcome::Stopped => {
                self.printer.finish_live();
                eprintln!(
                    "stopping: workers (up to {}s), then the master, then Redis; press Ctrl-C again to kill everything now",
                    grace.as_secs()
                );
            }
            // The error itself reaches the user as the run's result; here only the log gets it.
            Outcome::Failed(err) => tracing::info!(%err, "stopping the run"),
            Outcome::Master(..) => {}
        }
        let mut killed = false;
        // Workers first: a worker inside a generation finishes its evaluation and leaves it.
        for pid in self.live_worker_pids() {
            process::signal_group(pid, Signal::SIGTERM);
        }
        killed |= !self.wait_for_children(false, grace, signals).await;
        for pid in self.live_worker_pids() {
            if !killed {
                tracing::warn!(
                    pid,
                    grace_s = grace.as_secs(),
                    "worker did not stop within its grace period; killing it"
                );
            }
            process::signal_group(pid, Signal::SIGKILL);
        }
        self.wait_for_children(false, REAP, signals).await;
        // Then the master, if it is still running (Ctrl-C or a failure).
        if let Some(master) = &self.master {
            let pid = master.pid;
            process::signal_group(
                pid,
                if killed {
                    Signal::SIGKILL
                } else {
                    Signal::SIGTERM
                },
            );
            if !self.wait_for_children(true, grace, signals).await {
                killed = true;
            }
            if self.master.is_some() {
                process::signal_group(pid, Signal::SIGKILL);
                self.wait_for_children(true, REAP, signals).await;
            }
        }
        self.printer.finish_live();
        self.finish_redis();
        let elapsed = round1(self.elapsed());
        let code = match outcome {
            Outcome::Master(status, after) => {
                let code = exit_code(status);
                self.report_master_end(status, code, after);
                code
            }
            Outcome::Interrupted => {
                self.printer.say(format!(
                    "interrupted after {elapsed:.1}s; partial results in {}",
                    self.dirs.results.display()
                ));
                INTERRUPTED
            }
            Outcome::Stopped => {
                self.printer.say(format!("stopped after {elapsed:.1}s"));
                if killed { INTERRUPTED } else { 0 }
            }
            Outcome::Failed(err) => {
                self.printer.event(
                    json!({"event": "failed", "error": err.to_string(), "elapsed_s": elapsed}),
                );
                return Err(err);
            }
        };
        if self.lost_workers > 0 {
            self.printer.say(format!(
                "{} lost worker(s) repaired during the run",
                self.lost_workers
            ));
        }
        let phase = match code {
            0 => crate::api::Phase::Succeeded,
            INTERRUPTED => crate::api::Phase::Stopped,
            _ => crate::api::Phase::Failed,
        };
        if let Some(file) = self.finish_page(phase) {
            self.printer.say(format!(
                "the run's page, to open in a browser: {}",
                file.display()
            ));
        }
        let databases = databases(&self.dirs.results);
        for db in &databases {
            self.printer.say(format!(
                "database {}: open it with {}",
                db.display(),
                crate::results_copy::how_to_open(db)
            ));
        }
        self.printer.event(json!({"event": "finished", "exit_code": code, "results_dir": self.dirs.results, "databases": databases, "lost_workers": self.lost_workers, "elapsed_s": elapsed}));
        Ok(code)
    }

    /// Handles events until the workers (or, with `master`, the master) are gone, `limit` has
    /// passed, or a second Ctrl-C arrives (then everything is killed at once). Returns false
    /// only after that second Ctrl-C.
    async fn wait_for_children(
        &mut self,
        master: bool,
        limit: Duration,
        signals: &mut Signals,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let done = if master {
                self.master.is_none()
            } else {
                self.live_worker_pids().is_empty()
            };
            if done {
                return true;
            }
            tokio::select! {
                _ = signals.recv() => {
                    eprintln!("killing everything now");
                    for pid in self.live_worker_pids().into_iter().chain(self.master.as_ref().map(|m| m.pid)) {
                        process::signal_group(pid, Signal::SIGKILL);
                    }
                    return false;
                }
                Some(event) = self.rx.recv() => match event {
                    Event::WorkerExited { slot, incarnation, status } => {
                        // While stopping, nothing restarts and nothing gives up.
                        let _ = self.on_worker_exit(slot, incarnation, status).await;
                    }
                    Event::MasterLine(line) => self.printer.master_line(&line),
                    Event::MasterExited(_) => self.master = None,
                },
                _ = tokio::time::sleep_until(deadline) => return true,
            }
        }
    }

    /// Stops Redis, or with `--keep-redis` leaves it running and says how to reach it.
    fn finish_redis(&mut self) {
        let Some(redis) = self.redis.take() else {
            return;
        };
        if self.keep_redis {
            let env_file = self.write_env_file(&redis);
            let (host, port) = (redis.host.clone(), redis.port);
            redis.keep();
            match env_file {
                Ok(path) => {
                    let file = path.display();
                    self.printer.say(format!(
                        "redis-server keeps running at {host}:{port}. Its connection (with the password) is \
                         in {file}, readable only by you:\n  \
                         set -a; . {file}; set +a          # then start a master\n  \
                         (. {file}; REDISCLI_AUTH=\"$ABC_REDIS_PASSWORD\" redis-cli -h {host} -p {port} shutdown nosave)   # to stop it"
                    ));
                    self.printer.event(json!({"event": "redis_kept", "host": host, "port": port, "env_file": path}));
                }
                Err(err) => {
                    tracing::error!(%err, "redis-server keeps running but its connection file could not be written")
                }
            }
        } else {
            redis.stop();
            if self.spec.master.is_none() {
                // The connection file points at a server that no longer exists.
                let _ = std::fs::remove_file(self.dirs.run.join("redis.env"));
            }
        }
    }
}

/// The master's status as this process's exit code: its code, or 128 + signal.
fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code & 0xff).unwrap_or(1),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(1),
        (None, None) => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(9)), 137);
    }
}
