//! Starting workers and master, and the environment they get.

use super::{Event, LocalError, MasterProcess, Runner, Running};
use crate::api::WorkersSpec;
use crate::local::manifest;
use crate::local::process::{self, Output, Spec};
use crate::local::python;
use crate::local::supervisor::worker_id;
use crate::protocol::worker_env;
use k8s_openapi::api::core::v1::EnvVar;
use serde_json::json;
use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

impl Runner {
    /// Environment shared by workers and master. The password goes only here, never on argv.
    fn base_env(&self) -> Vec<(OsString, OsString)> {
        let redis = self.redis();
        let mut env: Vec<(OsString, OsString)> = vec![
            ("ABC_REDIS_HOST".into(), redis.host.clone().into()),
            ("ABC_REDIS_PORT".into(), redis.port.to_string().into()),
            ("ABC_REDIS_PASSWORD".into(), redis.password().into()),
            // Output reaches the logs (and the terminal) as it is printed, not at exit.
            ("PYTHONUNBUFFERED".into(), "1".into()),
        ];
        if let Some(socket) = &redis.socket {
            // the worker entrypoint's commands go there (less CPU than loopback TCP); the
            // master's pyABC sampler takes only a host and a port
            env.push(("ABC_REDIS_SOCKET".into(), socket.clone().into()));
        }
        if std::env::var_os("MPLCONFIGDIR").is_none() {
            env.push(("MPLCONFIGDIR".into(), self.mpl.clone().into()));
        }
        env
    }

    pub(super) fn spawn_worker(&mut self, slot: usize) -> Result<(), LocalError> {
        let incarnation = self.slots[slot].incarnation + 1;
        let id = worker_id(slot + 1, incarnation);
        // The model may be pickled by reference to a module next to the manifest (as it would
        // be in the image's working directory), so the workers must be able to import it.
        let pythonpath = pythonpath_with(&self.manifest_dir);
        let env = worker_process_env(self.base_env(), &id, &self.spec.workers, pythonpath);
        let spec = Spec {
            what: format!("worker {id}"),
            argv: vec![
                self.python.python.path.clone().into(),
                self.entrypoint.clone().into(),
            ],
            cwd: self.manifest_dir.clone(),
            env,
        };
        let log = self.dirs.logs.join(format!("local-{}.log", slot + 1));
        let header = format!(
            "{id} (incarnation {incarnation}) at {:.1}s",
            self.elapsed().as_secs_f64()
        );
        let mut child = process::spawn(&spec, Output::Log(log), &header)?;
        let pid = child.id().unwrap_or(0);
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            let _ = tx.send(Event::WorkerExited {
                slot,
                incarnation,
                status,
            });
        });
        tracing::info!(worker = %id, pid, incarnation, "worker started");
        self.printer.event(json!({"event": "worker_started", "worker": id, "slot": slot + 1, "incarnation": incarnation, "pid": pid}));
        let state = &mut self.slots[slot];
        state.incarnation = incarnation;
        state.running = Some(Running {
            id,
            pid,
            started: Instant::now(),
            killed: false,
            redis_restarts: self.redis_restarts,
        });
        state.restart_at = None;
        Ok(())
    }

    pub(super) fn spawn_master(&mut self) -> Result<(), LocalError> {
        let Some(master) = self.spec.master.clone() else {
            return Ok(());
        };
        let mut ours = self.base_env();
        ours.push(("ABC_RESULTS_DIR".into(), self.dirs.results.clone().into()));
        // `import abc_operator` (new-or-resume), as on a cluster: the module lies beside the
        // worker entrypoint.
        let module_dir = self.entrypoint.parent().unwrap_or(Path::new("."));
        ours.push(("PYTHONPATH".into(), pythonpath_with(module_dir)));
        let env = with_user_env(ours, &master.env);
        let spec = Spec {
            what: "the master".into(),
            argv: python::master_argv(&master.command, &master.args, &self.python.python.path),
            cwd: self.manifest_dir.clone(),
            env,
        };
        let log = self.dirs.logs.join("master.log");
        let mut child = process::spawn(&spec, Output::PipeStdout(log.clone()), "master")?;
        let pid = child.id().unwrap_or(0);
        let stdout = child.stdout.take();
        let tx = self.tx.clone();
        let log_path = log.clone();
        // stdout is both shown and kept in master.log (stderr, pyabc's logging, only kept).
        let lines_tx = self.tx.clone();
        let pump = tokio::spawn(async move {
            let Some(stdout) = stdout else { return };
            let mut file = tokio::fs::OpenOptions::new()
                .append(true)
                .open(&log_path)
                .await
                .ok();
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(f) = file.as_mut() {
                    let _ = f.write_all(format!("{line}\n").as_bytes()).await;
                }
                let _ = lines_tx.send(Event::MasterLine(line));
            }
        });
        tokio::spawn(async move {
            let status = child.wait().await;
            // The last lines, unless a process the master left behind holds its stdout open.
            let _ = tokio::time::timeout(Duration::from_secs(2), pump).await;
            let _ = tx.send(Event::MasterExited(status));
        });
        tracing::info!(pid, "master started");
        self.printer
            .event(json!({"event": "master_started", "pid": pid}));
        self.master = Some(MasterProcess {
            pid,
            log,
            stopped_for_redis: false,
        });
        Ok(())
    }
}

/// The environment of worker `id`: `base` (shared with the master), its identity, the
/// entrypoint's settings and `pythonpath`, then the user's `spec.workers.env` by the cluster's
/// rule ([`worker_env::merge`]).
fn worker_process_env(
    base: Vec<(OsString, OsString)>,
    id: &str,
    workers: &WorkersSpec,
    pythonpath: OsString,
) -> Vec<(OsString, OsString)> {
    let mut ours = base;
    ours.push(("ABC_WORKER_ID".into(), id.into()));
    ours.extend(
        worker_env::worker_settings(workers)
            .into_iter()
            .map(|(name, value)| (name.into(), value.into())),
    );
    ours.push(("PYTHONPATH".into(), pythonpath));
    with_user_env(ours, &workers.env)
}

/// `dir` first, then the runner's own PYTHONPATH, if any.
fn pythonpath_with(dir: &Path) -> OsString {
    let mut pythonpath = OsString::from(dir);
    if let Some(existing) = std::env::var_os("PYTHONPATH").filter(|p| !p.is_empty()) {
        pythonpath.push(":");
        pythonpath.push(existing);
    }
    pythonpath
}

/// `ours`, then the literal entries of a user's env by the cluster's rule.
fn with_user_env(ours: Vec<(OsString, OsString)>, user: &[EnvVar]) -> Vec<(OsString, OsString)> {
    let user = manifest::literal_env(user)
        .into_iter()
        .map(|(name, value)| (name.into(), value.into()));
    worker_env::merge(ours, user)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Heartbeat, Snapshot};

    fn value<'a>(env: &'a [(OsString, OsString)], name: &str) -> Option<&'a str> {
        let mut values = env.iter().filter(|(n, _)| n == name);
        let (_, value) = values.next()?;
        assert!(values.next().is_none(), "{name} is set twice");
        value.to_str()
    }

    #[test]
    fn users_env_overrides_settings_but_not_the_connection_or_identity() {
        let workers: WorkersSpec = serde_yaml::from_str(
            "env:\n- {name: ABC_REDIS_PASSWORD, value: guess}\n- {name: ABC_WORKER_ID, value: me}\n- {name: ABC_WORKER_PROCESSES, value: '3'}\n- {name: MODEL, value: fast}\n",
        )
        .unwrap();
        let base = vec![("ABC_REDIS_PASSWORD".into(), "ours".into())];
        let env = worker_process_env(base, "local-1", &workers, "/models".into());
        assert_eq!(value(&env, "ABC_REDIS_PASSWORD"), Some("ours"));
        assert_eq!(value(&env, "ABC_WORKER_ID"), Some("local-1"));
        assert_eq!(value(&env, "ABC_WORKER_PROCESSES"), Some("3"));
        assert_eq!(value(&env, "MODEL"), Some("fast"));
        assert_eq!(value(&env, "PYTHONPATH"), Some("/models"));
        let master = with_user_env(
            vec![("ABC_RESULTS_DIR".into(), "results".into())],
            &[EnvVar {
                name: "ABC_RESULTS_DIR".into(),
                value: Some("elsewhere".into()),
                value_from: None,
            }],
        );
        assert_eq!(value(&master, "ABC_RESULTS_DIR"), Some("results"));
    }

    #[test]
    fn healthy_workers_beating_at_their_period_are_never_lost_at_the_shortest_timeout() {
        let workers = WorkersSpec {
            heartbeat_timeout_seconds: 5,
            ..WorkersSpec::default()
        };
        let env = worker_process_env(vec![], "local-1", &workers, "".into());
        let period_ms: i64 = value(&env, "ABC_HEARTBEAT_SECONDS")
            .unwrap()
            .parse::<i64>()
            .unwrap()
            * 1000;
        let heartbeat = Heartbeat::from_timeout_seconds(workers.heartbeat_timeout_seconds);
        // Seen just before its next beat, and with that beat missed entirely.
        for age_ms in [period_ms, 2 * period_ms] {
            let snapshot = Snapshot {
                time_ms: 100_000 + age_ms,
                ledgers: vec![crate::protocol::liveness_test_support::ledger(
                    "local-1",
                    Some("local-1"),
                    Some(0),
                    Some(100_000),
                )],
                ..Snapshot::default()
            };
            assert_eq!(
                heartbeat.stale_ledgers(&snapshot).count(),
                0,
                "age {age_ms} ms"
            );
        }
    }
}
