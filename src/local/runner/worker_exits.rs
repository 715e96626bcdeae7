//! The end of a worker incarnation: repair if it was lost, restart unless stopping.

use super::{LocalError, Runner};
use crate::local::process;
use crate::local::progress::round1;
use crate::local::redis_access;
use crate::local::supervisor::{Decision, WorkerExit, decide};
use nix::sys::signal::Signal;
use serde_json::json;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

impl Runner {
    /// Handles the end of a worker incarnation: repair if lost, restart unless stopping.
    pub(super) async fn on_worker_exit(
        &mut self,
        slot: usize,
        incarnation: u32,
        status: std::io::Result<ExitStatus>,
    ) -> Result<(), LocalError> {
        let state = &mut self.slots[slot];
        if state.incarnation != incarnation {
            return Ok(());
        }
        let Some(running) = state.running.take() else {
            return Ok(());
        };
        let exit = match status {
            Ok(status) => WorkerExit::from_status(status),
            Err(err) => {
                tracing::warn!(worker = %running.id, %err, "could not wait for worker; treating it as lost");
                WorkerExit::Code(-1)
            }
        };
        if exit.is_lost() {
            // With `processes > 1` the worker's own processes may outlive it (they share its
            // process group): they must be dead before their ledgers are repaired.
            process::signal_group(running.pid, Signal::SIGKILL);
        }
        let lived = running.started.elapsed();
        let outlived_redis = running.redis_restarts < self.redis_restarts;
        let (decision, history) = decide(
            exit,
            lived,
            self.stopping,
            outlived_redis,
            state.history,
            &self.policy,
        );
        state.history = history;
        tracing::info!(worker = %running.id, pid = running.pid, %exit, lived_s = round1(lived), outlived_redis, ?decision, "worker exited");
        self.printer.event(json!({
            "event": "worker_exited",
            "worker": running.id,
            "pid": running.pid,
            "exit": exit.to_string(),
            "lost": exit.is_lost(),
            "lived_s": round1(lived),
        }));
        if decision.needs_repair() {
            self.repair(&running.id, exit).await;
        }
        match decision {
            Decision::Restart
            | Decision::RepairAndRestart {
                delay: Duration::ZERO,
            } => self.spawn_worker(slot)?,
            Decision::RepairAndRestart { delay } => {
                self.slots[slot].restart_at = Some(Instant::now() + delay)
            }
            Decision::RepairOnly | Decision::Nothing => {}
            Decision::GiveUp { failures } => {
                let log = self.dirs.logs.join(format!("local-{}.log", slot + 1));
                return Err(LocalError::WorkersCrashLoop {
                    worker: running.id,
                    failures,
                    last_exit: exit.to_string(),
                    tail: process::tail(&log, 20),
                    log,
                });
            }
        }
        Ok(())
    }

    /// Repairs the ledger of a lost worker, so the master does not wait for its claimed work.
    async fn repair(&mut self, id: &str, exit: WorkerExit) {
        match redis_access::repair(&mut self.conn, id).await {
            Ok(repairs) if repairs.is_empty() && self.stopping => {
                // Stopped while starting up or idle: nothing worth a note.
                tracing::info!(worker = %id, %exit, "stopped worker owed nothing");
            }
            Ok(repairs) if repairs.is_empty() => {
                let note = self.renderer.note(
                    &format!("worker {id} died ({exit}) outside a generation: nothing to repair"),
                    json!({"event": "lost_worker", "worker": id, "exit": exit.to_string(), "repairs": []}),
                );
                self.printer.out(note);
                tracing::info!(worker = %id, %exit, "lost worker owed nothing");
            }
            Ok(repairs) => {
                let elapsed = round1(self.elapsed());
                for repair in &repairs {
                    self.lost_workers = self.lost_workers.max(repair.lost_workers);
                    // The note first: it ends the live line, so the warning starts on its own.
                    let note = self.renderer.note(
                        &format!("repaired lost {repair} ({exit})"),
                        json!({"event": "repaired", "worker": id, "exit": exit.to_string(), "repair": repair, "lost_workers": self.lost_workers, "elapsed_s": elapsed}),
                    );
                    self.printer.out(note);
                    tracing::warn!(worker = %id, ledger = %repair.ledger_id, %exit, %repair, "repaired lost worker");
                }
            }
            Err(err) if self.stopping => {
                tracing::warn!(worker = %id, %exit, %err, "could not repair lost worker")
            }
            Err(err) => {
                tracing::error!(worker = %id, %exit, %err, "could not repair lost worker; the master may wait for its work")
            }
        }
    }

    pub(super) fn restart_due(&mut self) -> Result<(), LocalError> {
        if self.stopping {
            return Ok(());
        }
        let now = Instant::now();
        for slot in 0..self.slots.len() {
            if self.slots[slot].restart_at.is_some_and(|at| at <= now) {
                self.spawn_worker(slot)?;
            }
        }
        Ok(())
    }
}
