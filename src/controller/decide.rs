//! The pure middle of a reconcile: from what was read (the run, its objects and pods from the
//! caches, its Redis) to what to do (objects to apply, workers to repair or replace, pyABC's
//! stop, a stale lock to clear) and what was observed for the status. No I/O here: every
//! decision is unit-tested from YAML fixtures.

use super::observe::{
    self, ClusterView, Observed, Password, RedisReading, StopStage, deployment_ready, master_state,
    observe,
};
use super::workers::{self, WorkerAction};
use crate::api::{AbcRun, AbcRunStatus};
use crate::protocol::{self, Heartbeat};
use crate::resources::{self, BuildError, BuildSettings, Owned};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::jiff::Timestamp;
use std::time::Duration;

/// Whether the run's Redis is worth reading now. A managed Redis whose pod is not ready yet is
/// not read: the attempt could only time out and report a false problem while the run starts.
/// Nor once the master has finished: its Redis is going away and has nothing left to say.
pub fn redis_readable(run: &AbcRun, view: &ClusterView, password: &Password) -> bool {
    password.value.is_some()
        && password.problem.is_none()
        && (run.spec.redis.external.is_some() || deployment_ready(view.redis.as_deref()))
        && !master_state(view.master_job.as_deref()).is_finished()
}

/// What one reconcile does, and what it saw for the status.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Every object the run owns, as it should be now.
    pub owned: Owned,
    /// Ask the master to end the analysis after the generation it samples
    /// (`protocol::request_stop`): the run is stopping and its Redis does not say so yet.
    pub request_stop: bool,
    /// Publish pyABC's stop: the run is stopping, its master does not run `abc_operator.run`
    /// (so cannot be asked), and workers are still inside a generation (they leave at its end).
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
    let owned = resources::build(run, password.generated.as_deref(), settings)?;
    let mut observed = observe(run, view, password, redis, &owned, now);
    observed.stop = stop_stage(run, redis, observed.master.as_ref(), now);
    let stopping = observed.stop == Some(StopStage::Stopping);
    let request_stop =
        stopping && snapshot.is_some_and(|s| s.analysis_id.is_some() && !s.stop_requested);
    let publish_stop = stopping
        && snapshot.is_some_and(|s| s.master_start.is_none() && s.n_worker.unwrap_or(0) > 0);
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
        && master_down_before_retry(view.master_job.as_deref());
    Ok(Plan {
        owned,
        request_stop,
        publish_stop,
        worker_actions,
        clear_stale_lock,
        observed,
    })
}

/// Where a stop asked of the run (`spec.stop`, `kubectl abc stop`) stands; `None` when none
/// was asked (or the run is suspended, which holds everything as it is).
///
/// Stopping, the workers go on (they are not replaced when they end) until nothing samples:
/// - a master that runs `abc_operator.run` is asked to end the analysis once the generation
///   it samples is stored (pyABC then marks the run done); its workers are needed for that
///   generation, and the analysis ends (its `analysis_id` goes) when the master does;
/// - a master that does not (pyABC's own `ABCSMC.run`) cannot be asked: the workers get
///   pyABC's stop and leave at the end of the generation; then the master waits for a
///   generation nobody samples, and is ended with the run (its stored generations are kept).
///
/// Stopped, the run is finished: the builders give back its workers and Redis and end a
/// master still running (see `resources::finished`).
///
/// A run idle for longer than its `idleTimeoutSeconds` (no analysis in its Redis) is Stopped
/// the same way, without being asked.
fn stop_stage(
    run: &AbcRun,
    redis: &RedisReading,
    master: Option<&observe::MasterState>,
    now: Timestamp,
) -> Option<StopStage> {
    let idle_over = run
        .status
        .as_ref()
        .is_some_and(|status| idle_left(run, status, now) == Some(Duration::ZERO));
    if !(run.spec.stop || idle_over) || run.spec.suspend {
        return None;
    }
    let stopped = idle_over
        || resources::finished(run)
        || master.is_some_and(|m| m.is_finished())
        || match redis {
            // no Redis to sample with (not ready yet, or gone)
            RedisReading::NotRead => true,
            RedisReading::Read(snapshot) => {
                // a master that cannot be asked: its workers have left the generation
                let workers_left =
                    snapshot.master_start.is_none() && snapshot.n_worker.unwrap_or(0) == 0;
                match master {
                    // a master Job that ends by itself is waited for: after its analysis ended
                    // it still stores, prints its results and exits
                    Some(observe::MasterState::Running) => workers_left,
                    // none running (not started, or between a failure and its retry)
                    Some(_) => true,
                    // a master elsewhere
                    None => snapshot.analysis_id.is_none() || workers_left,
                }
            }
            // not known: a Redis that did not answer this once is asked again
            RedisReading::Failed(_) => false,
        };
    Some(if stopped {
        StopStage::Stopped
    } else {
        StopStage::Stopping
    })
}

/// How much longer a run with `idleTimeoutSeconds` may stay without an analysis in its Redis,
/// from when `status` says it became idle: `None` without a timeout or while a master samples,
/// zero once over.
pub fn idle_left(run: &AbcRun, status: &AbcRunStatus, now: Timestamp) -> Option<Duration> {
    let timeout = run.spec.idle_timeout_seconds?;
    let since: Timestamp = status.idle_since.as_deref()?.parse().ok()?;
    // negative when the clock that wrote it ran ahead of ours
    let idle = now.duration_since(since).as_secs().max(0);
    Some(Duration::from_secs(
        timeout.saturating_sub(idle).max(0) as u64
    ))
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
