//! What the user reads about the run itself: what was started, how to reach it, how it ended.

use super::{LocalError, Runner};
use crate::local::dirs::write_env_file;
use crate::local::process;
use crate::local::redis_access::LocalRedis;
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

impl Runner {
    /// What was started and, without a master, how to start one by hand.
    pub(super) fn announce(&mut self) {
        let (host, port, pid) = (
            self.redis().host.clone(),
            self.redis().port,
            self.redis().pid(),
        );
        let py = &self.python;
        self.printer.say(format!(
            "abc-operator run {}: redis {host}:{port}, {} worker(s), {} (pyabc {}, from {})",
            self.name,
            self.slots.len(),
            py.python.path.display(),
            py.pyabc_version,
            py.python.source
        ));
        self.printer.say(format!(
            "run folder {} (logs in {})",
            self.dirs.run.display(),
            self.dirs.logs.display()
        ));
        if let Some(url) = &self.page_url {
            self.printer.say(format!(
                "the run's page: {url} (epsilon, acceptance, posterior, workers)"
            ));
        }
        self.printer.event(json!({
            "event": "started",
            "dashboard": self.page_url,
            "name": self.name,
            "redis": {"host": host, "port": port, "pid": pid},
            "workers": self.slots.len(),
            "python": py.python.path,
            "pyabc": py.pyabc_version,
            "run_dir": self.dirs.run,
            "results_dir": self.dirs.results,
            "log_dir": self.dirs.logs,
        }));
        tracing::info!(name = %self.name, %host, port, workers = self.slots.len(), "run started");
        if self.slots.is_empty() && self.spec.master.is_some() {
            tracing::warn!("no workers: the master waits until workers connect to Redis");
        }
        if self.spec.master.is_none() {
            match self.write_env_file(self.redis()) {
                Ok(path) => {
                    self.printer.say(format!(
                        "no master in the manifest: workers wait for one until Ctrl-C. Start it with\n  \
                         set -a; . {}; set +a; python your_master.py\n\
                         ({} holds ABC_REDIS_HOST, ABC_REDIS_PORT, ABC_REDIS_PASSWORD and ABC_RESULTS_DIR, readable only by you)",
                        path.display(),
                        path.display()
                    ));
                    self.printer
                        .event(json!({"event": "waiting_for_master", "env_file": path}));
                }
                Err(err) => {
                    tracing::error!(%err, "cannot write the connection file for a master started by hand")
                }
            }
        }
    }

    /// The connection of a master started by hand, in a file only the user can read.
    pub(super) fn write_env_file(&self, redis: &LocalRedis) -> Result<PathBuf, LocalError> {
        let path = self.dirs.run.join("redis.env");
        write_env_file(
            &path,
            &[
                ("ABC_REDIS_HOST", redis.host.clone()),
                ("ABC_REDIS_PORT", redis.port.to_string()),
                ("ABC_REDIS_PASSWORD", redis.password().to_string()),
                ("ABC_RESULTS_DIR", self.dirs.results.display().to_string()),
            ],
        )?;
        Ok(path)
    }

    pub(super) fn report_master_end(&mut self, status: ExitStatus, code: u8, after: Duration) {
        let elapsed = after.as_secs_f64();
        let log = self
            .master
            .as_ref()
            .map(|m| m.log.clone())
            .unwrap_or_else(|| self.dirs.logs.join("master.log"));
        if status.success() {
            self.printer.say(format!(
                "master finished after {elapsed:.1}s; results in {}",
                self.dirs.results.display()
            ));
        } else {
            self.printer.say(format!(
                "master failed ({status}) after {elapsed:.1}s; its log is {}",
                log.display()
            ));
            eprintln!(
                "last lines of the master's log {}:\n{}",
                log.display(),
                process::tail(&log, 20)
            );
        }
        self.printer.event(
            json!({"event": "master_exited", "exit_code": code, "status": status.to_string()}),
        );
        tracing::info!(code, "master exited");
    }
}
