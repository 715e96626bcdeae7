//! What one reconcile read of a run (its objects and pods from the caches, its password, its
//! Redis) and what it observed of them for the status ([`Observed`], made by [`observe`]).

use super::cache::RunPods;
pub use super::pod_problems::PodProblem;
use super::pod_problems::{creation_problem, last_failed_exit, pod_problem};
use super::records::RecordsRead;
use crate::api::{AbcRun, Progress, ResultsStatus};
use crate::protocol::{MasterStart, Resumed, Snapshot};
use crate::resources::{self, Owned};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::jiff::Timestamp;
use std::sync::Arc;

/// The run's objects and pods as the caches hold them, shared with the caches: a reconcile
/// copies none of them.
#[derive(Clone, Debug, Default)]
pub struct ClusterView {
    pub workers: Option<Arc<Deployment>>,
    /// The managed Redis' Deployment (none for an external Redis).
    pub redis: Option<Arc<Deployment>>,
    pub master_job: Option<Arc<Job>>,
    /// The results claim the run made, when it makes one.
    pub results_claim: Option<Arc<PersistentVolumeClaim>>,
    pub pods: RunPods,
}

/// The run's Redis password, as far as it could be found.
#[derive(Clone, Debug, Default)]
pub struct Password {
    /// The password, when it could be found.
    pub value: Option<String>,
    /// A newly generated or kept password for the operator-owned Secret (managed Redis only).
    pub generated: Option<String>,
    /// What the user must fix, e.g. a referenced Secret that does not exist.
    pub problem: Option<String>,
}

/// What reading the run's Redis gave.
#[derive(Clone, Debug)]
pub enum RedisReading {
    /// Not read: see `decide::redis_readable`.
    NotRead,
    Read(Box<Snapshot>),
    Failed(String),
}

impl RedisReading {
    /// What was read, when the Redis was read: its snapshot, or why it could not be.
    pub fn into_reading(self) -> Option<Result<Snapshot, String>> {
        match self {
            RedisReading::NotRead => None,
            RedisReading::Read(snapshot) => Some(Ok(*snapshot)),
            RedisReading::Failed(err) => Some(Err(err)),
        }
    }

    pub fn snapshot(&self) -> Option<&Snapshot> {
        match self {
            RedisReading::Read(s) => Some(s),
            _ => None,
        }
    }
}

/// What the controller saw of a run's parts in one reconcile.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    /// The Redis Deployment has a ready replica (always true for an external Redis that answered).
    pub redis_ready: bool,
    /// Why Redis is not usable, when it is not (missing Secret, unreachable, wrong password...).
    pub redis_problem: Option<String>,
    /// Worker pods that exist / are ready (from the worker Deployment's status).
    pub workers_replicas: i32,
    pub workers_ready: i32,
    /// Worker replicas the run asks for now (0 while stopped or suspended).
    pub workers_desired: i32,
    /// Label selector of the worker pods.
    pub selector: String,
    /// The master Job, if the run has one.
    pub master: Option<MasterState>,
    /// Progress read from Redis, when Redis answered.
    pub progress: Option<Progress>,
    /// Workers repaired so far: the larger of the previous status and the count the repair
    /// script keeps in the run's Redis (`protocol::keys::LOST_WORKERS`).
    pub lost_workers: i64,
    /// Why worker pods cannot run (a missing image, a crash loop...), if they cannot.
    pub worker_pod_problem: Option<PodProblem>,
    /// Why the master Job's pod cannot run, if it cannot.
    pub master_pod_problem: Option<PodProblem>,
    /// Why the managed Redis' pod cannot run, if it cannot.
    pub redis_pod_problem: Option<PodProblem>,
    /// The last resume of a master that Redis holds, when Redis answered.
    pub resumed: Option<Resumed>,
    /// The Redis server's `run_id`, when Redis answered.
    pub redis_run_id: Option<String>,
    /// How the last master start on the current Redis went, when Redis answered and holds it.
    pub master_start: Option<MasterStart>,
    /// The last failed exit of the master's container (the newest pod's), e.g. `exit code 1:
    /// abc_operator.ResumeError: …`, from its termination message.
    pub master_exit: Option<String>,
    /// Where the results database is: the claim's name, and its phase when the run made it.
    pub results: Option<ResultsStatus>,
    /// Why the results database has no place (reason, message): its claim stays unbound or
    /// lost its volume.
    pub results_problem: Option<(String, String)>,
    /// Generation records read in this reconcile (only when their number changed).
    pub records: Option<RecordsRead>,
    /// Where a stop asked of the run stands (`decide::stop_stage`), if one was asked.
    pub stop: Option<StopStage>,
    /// Whether the run's Redis holds an analysis (a master samples), when Redis answered.
    pub analysis: Option<bool>,
    /// Since when the run has been known idle: the cached status's `idleSince`, or the one this
    /// controller wrote last while the cached run does not hold it yet.
    pub idle_since: Option<String>,
}

/// A stop asked of the run: going on until nothing samples, or done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopStage {
    Stopping,
    Stopped,
}

impl Observed {
    /// The pod problem the run's Degraded condition reports, if any: Redis' first (nothing
    /// works without it), then the master's, then the workers'.
    pub fn pod_problem(&self) -> Option<&PodProblem> {
        self.redis_pod_problem
            .as_ref()
            .or(self.master_pod_problem.as_ref())
            .or(self.worker_pod_problem.as_ref())
    }
}

/// State of the master Job.
#[derive(Clone, Debug, PartialEq)]
pub enum MasterState {
    /// Not created yet or no pod running.
    Pending,
    Running,
    Succeeded,
    /// Failed for good (backoff limit or deadline), with the Job's reason.
    Failed(String),
}

impl MasterState {
    /// The Job ended for good: nothing needs the run's Redis or workers any more.
    pub fn is_finished(&self) -> bool {
        matches!(self, MasterState::Succeeded | MasterState::Failed(_))
    }
}

/// What the status is computed from.
pub fn observe(
    run: &AbcRun,
    view: &ClusterView,
    password: &Password,
    redis: &RedisReading,
    owned: &Owned,
    now: Timestamp,
) -> Observed {
    let worker_status = view
        .workers
        .as_ref()
        .and_then(|d| d.status.clone())
        .unwrap_or_default();
    let mut observed = Observed {
        // An external Redis is ready when it answers (below).
        redis_ready: owned.redis_deployment.is_none() || deployment_ready(view.redis.as_deref()),
        redis_problem: password.problem.clone(),
        workers_replicas: worker_status.replicas.unwrap_or(0),
        workers_ready: worker_status.ready_replicas.unwrap_or(0),
        workers_desired: owned
            .workers
            .spec
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or(0),
        selector: resources::worker_selector(run),
        master: owned
            .master_job
            .as_ref()
            .map(|_| master_state(view.master_job.as_deref())),
        progress: None,
        lost_workers: run.status.as_ref().map(|s| s.lost_workers).unwrap_or(0),
        worker_pod_problem: pod_problem(&view.pods.workers, now)
            .or_else(|| creation_problem(view.workers.as_deref())),
        master_pod_problem: owned
            .master_job
            .as_ref()
            .and_then(|_| pod_problem(&view.pods.master, now)),
        redis_pod_problem: owned.redis_deployment.as_ref().and_then(|_| {
            pod_problem(&view.pods.redis, now).or_else(|| creation_problem(view.redis.as_deref()))
        }),
        resumed: None,
        redis_run_id: None,
        master_start: None,
        master_exit: owned
            .master_job
            .as_ref()
            .and_then(|_| last_failed_exit(&view.pods.master)),
        results: run.spec.master.as_ref().map(|_| ResultsStatus {
            claim_name: resources::results_claim_name(run),
            claim_phase: view
                .results_claim
                .as_ref()
                .and_then(|c| c.status.as_ref()?.phase.clone()),
        }),
        results_problem: view
            .results_claim
            .as_ref()
            .and_then(|claim| results_problem(claim, now)),
        records: None,
        stop: None,
        analysis: None,
        idle_since: run.status.as_ref().and_then(|s| s.idle_since.clone()),
    };
    match redis {
        RedisReading::NotRead => {}
        RedisReading::Read(snapshot) => {
            observed.progress = Some(Progress::from(snapshot.as_ref()));
            // The repair script counts in Redis itself, so a repair whose status write was
            // lost (a controller crash) is counted here; max, so that a Redis that lost its
            // data does not make the number go back.
            observed.lost_workers = observed.lost_workers.max(snapshot.lost_workers);
            observed.resumed = snapshot.resumed.clone();
            observed.redis_run_id = snapshot.run_id.clone();
            observed.master_start = snapshot.master_start.clone();
            observed.analysis = Some(snapshot.analysis_id.is_some());
        }
        RedisReading::Failed(err) => {
            if run.spec.redis.external.is_some() {
                observed.redis_ready = false;
            }
            // named: an external Redis may be any server (another tenant's, a typo)
            let at = resources::redis_host_port_for_operator(run)
                .map(|(host, port)| format!(" at {host}:{port}"))
                .unwrap_or_default();
            observed.redis_problem = Some(format!("cannot read the run's Redis{at}: {err}"));
        }
    }
    observed
}

/// How long a new results claim may stay Pending before it is a problem: a claim whose
/// StorageClass binds on the first consumer waits for the master's pod to be scheduled, and a
/// provisioner takes a few seconds.
pub const CLAIM_BIND_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// Why the results claim the run made gives the database no place, if it does not.
fn results_problem(claim: &PersistentVolumeClaim, now: Timestamp) -> Option<(String, String)> {
    let name = claim.metadata.name.as_deref().unwrap_or_default();
    let class = match claim
        .spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
    {
        Some(class) => format!("StorageClass {class:?}"),
        None => "the cluster's default StorageClass".to_string(),
    };
    match claim.status.as_ref()?.phase.as_deref()? {
        "Lost" => Some((
            "ResultsClaimLost".into(),
            format!(
                "the results claim {name} lost its volume: the master cannot store or resume                  its database; `kubectl describe pvc {name}` says why"
            ),
        )),
        "Pending" => {
            let created = claim.metadata.creation_timestamp.as_ref()?.0;
            let waited = now.duration_since(created);
            (waited.as_secs() >= CLAIM_BIND_GRACE.as_secs() as i64).then(|| {
                (
                    "ResultsClaimPending".into(),
                    format!(
                        "the results claim {name} has been Pending for {}s: no volume of {class}                          was bound to it, so the master cannot start (no default StorageClass, a                          quota, or a provisioner that failed: `kubectl describe pvc {name}`); set                          spec.master.results.storageClassName, or resultsClaimName to a claim of                          your own",
                        waited.as_secs()
                    ),
                )
            })
        }
        _ => None,
    }
}

pub fn deployment_ready(deployment: Option<&Deployment>) -> bool {
    deployment
        .and_then(|d| d.status.as_ref())
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0)
        > 0
}

/// The master Job's state, from its conditions and counts.
pub fn master_state(job: Option<&Job>) -> MasterState {
    let Some(status) = job.and_then(|j| j.status.as_ref()) else {
        return MasterState::Pending;
    };
    for c in status.conditions.iter().flatten() {
        if c.status == "True" {
            match c.type_.as_str() {
                "Complete" => return MasterState::Succeeded,
                "Failed" => {
                    return MasterState::Failed(
                        c.reason.clone().unwrap_or_else(|| "Failed".into()),
                    );
                }
                _ => {}
            }
        }
    }
    if status.active.unwrap_or(0) > 0 {
        MasterState::Running
    } else {
        MasterState::Pending
    }
}
