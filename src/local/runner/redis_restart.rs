//! The run's redis-server dying mid-run (killed, crashed): started again, empty, on the same
//! port with the same password, so the environment of workers and master stays valid; the
//! master is started again to resume from its results database. What is lost is the
//! generation in progress, sampled again; the stored ones are kept.
//!
//! Workers are left alone: one that loses its connection or finds its ledger gone ends by
//! itself, and its replacement joins the new Redis. Such an end is not the worker's failure
//! (see [`crate::local::supervisor`]), nor is the master's restart counted against
//! `spec.master.backoffLimit`.

use super::{LocalError, Runner};
use crate::local::process;
use nix::sys::signal::Signal;
use serde_json::json;

/// Restarts of the run's redis-server a run survives. One that keeps dying (the OOM killer
/// choosing it again and again, a broken disk) would otherwise restart the master for ever,
/// each time re-doing the generation in progress: after this many the run stops, naming it.
const MAX_REDIS_RESTARTS: u32 = 3;

impl Runner {
    /// Starts the run's redis-server again if it died. Called before every event is handled,
    /// so that an exit the dead Redis caused is never taken for the child's own failure.
    pub(super) fn revive_redis(&mut self) -> Result<(), LocalError> {
        if self.stopping {
            return Ok(());
        }
        let Some(redis) = self.redis.as_mut() else {
            return Ok(());
        };
        let Some(status) = redis.exit_status() else {
            return Ok(());
        };
        let port = redis.port;
        if self.redis_restarts >= MAX_REDIS_RESTARTS {
            return Err(LocalError::RedisKeepsDying {
                port,
                restarts: self.redis_restarts,
                last: status.to_string(),
            });
        }
        tracing::warn!(%status, port, "redis-server died; starting it again on the same port");
        redis.restart()?;
        let pid = redis.pid();
        self.redis_restarts += 1;
        // Its counters are gone with the old server: no `done` line for it.
        self.renderer.forget_generation();
        // The master's generation is gone: pyABC's master would wait for it forever or fail.
        // Killed, its end starts it again (see `Runner::on_master_exit`).
        let restarting_master = match self.master.as_mut() {
            Some(master) => {
                master.stopped_for_redis = true;
                process::signal_group(master.pid, Signal::SIGKILL);
                true
            }
            None => false,
        };
        self.printer.say(format!(
            "redis-server died ({status}); started it again on port {port}{}",
            if restarting_master {
                ", and the master again: it continues from its results database, sampling the \
                 lost generation again"
            } else {
                ""
            }
        ));
        self.printer.event(json!({
            "event": "redis_restarted",
            "port": port,
            "pid": pid,
            "status": status.to_string(),
            "restarting_master": restarting_master,
            "restarts": self.redis_restarts,
        }));
        Ok(())
    }
}
