//! The pure middle of a reconcile: from what was read (the run, its objects and pods from the
//! caches, its Redis) to what to do (objects to apply, workers to repair or replace, pyABC's
//! stop, a stale lock to clear) and what was observed for the status. No I/O here: every
//! decision is unit-tested from YAML fixtures.

use super::observe::{
    ClusterView, Observed, Password, RedisReading, deployment_ready, master_state, observe,
};
use super::workers::{self, WorkerAction};
use crate::api::AbcRun;
use crate::protocol::{self, Heartbeat};
use crate::resources::{self, BuildError, BuildSettings, Owned};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::jiff::Timestamp;

/// Whether the run's Redis is worth reading now. A managed Redis whose pod is not ready yet is
/// not read: the attempt could only time out and report a false problem while the run starts.
/// Nor once the master has finished: its Redis is going away and has nothing left to say.
pub fn redis_readable(run: &AbcRun, view: &ClusterView, password: &Password) -> bool {
    password.value.is_some()
        && password.problem.is_none()
        && (run.spec.redis.external.is_some() || deployment_ready(view.redis.as_ref()))
        && !master_state(view.master_job.as_ref()).is_finished()
}

/// What one reconcile does, and what it saw for the status.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Every object the run owns, as it should be now.
    pub owned: Owned,
    /// Publish pyABC's stop: the run is stopping and workers are still inside a generation
    /// (they leave at its end; the worker Deployment is held at its size until then).
    pub publish_stop: bool,
    /// Lost workers to repair, ended or hung worker pods to replace.
    pub worker_actions: Vec<WorkerAction>,
    /// The master died and its retry has not started: pyABC's analysis lock is stale.
    pub clear_stale_lock: bool,
    /// What was observed, for the status (repairs done by this reconcile are added to it).
    pub observed: Observed,
}

/// The plan for `run`, given what was read of it at `now`.
pub fn decide(
    run: &AbcRun,
    view: &ClusterView,
    password: &Password,
    redis: &RedisReading,
    settings: &BuildSettings,
    now: Timestamp,
) -> Result<Plan, BuildError> {
    let snapshot = redis.snapshot();
    let mut owned = resources::build(run, password.generated.as_deref(), settings)?;
    // spec.stop: pyABC's stop makes idle workers leave now and busy ones at the end of the
    // current generation; the workers keep running until none is inside one.
    let publish_stop =
        run.spec.stop && !run.spec.suspend && snapshot.is_some_and(|s| s.n_worker.unwrap_or(0) > 0);
    if publish_stop && let Some(spec) = owned.workers.spec.as_mut() {
        spec.replicas = Some(run.spec.workers.replicas);
    }

    let observed = observe(run, view, password, redis, &owned, now);
    // Without Redis no ledger can be judged, but ended pods are still replaced.
    let (ledgers, now_ms) = snapshot
        .map(|s| (s.ledgers.as_slice(), s.time_ms))
        .unwrap_or((&[], 0));
    let heartbeat = Heartbeat::from_timeout_seconds(run.spec.workers.heartbeat_timeout_seconds);
    let worker_actions = workers::decide(&view.pods.workers, ledgers, now_ms, heartbeat)
        .into_iter()
        // A stopping run lets its workers go instead of replacing them.
        .filter(|a| !(run.spec.stop && matches!(a, WorkerAction::Replace { .. })))
        .collect();
    let clear_stale_lock = owned.master_job.is_some()
        && snapshot.is_some_and(|s| s.analysis_id.is_some())
        && master_down_before_retry(view.master_job.as_ref());
    Ok(Plan {
        owned,
        publish_stop,
        worker_actions,
        clear_stale_lock,
        observed,
    })
}

/// A master that died leaves pyABC's `analysis_id` behind, and its retry would fail with "The
/// server seems busy with an analysis already". Between a failed master pod and its retry no
/// master runs, so the lock is stale by definition.
fn master_down_before_retry(job: Option<&Job>) -> bool {
    let Some(status) = job.and_then(|j| j.status.as_ref()) else {
        return false;
    };
    !master_state(job).is_finished()
        && status.failed.unwrap_or(0) > 0
        && status.active.unwrap_or(0) == 0
}

/// The endpoint the operator reaches the run's Redis at, once the password is known.
pub fn endpoint(
    run: &AbcRun,
    password: &Password,
) -> Result<Option<protocol::Endpoint>, BuildError> {
    let (host, port) = resources::redis_host_port_for_operator(run)?;
    Ok(password.value.as_ref().map(|pw| protocol::Endpoint {
        host,
        port,
        password: Some(pw.clone()),
    }))
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
