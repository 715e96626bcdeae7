//! One reconcile of an AbcRun: resolve the password, build the owned objects, apply them with
//! server-side apply, observe the parts and the run's Redis, write status when it changed.

use super::pod_problems::{last_failed_exit, pod_problem};
use super::status::{self, MasterState, Observed};
use super::workers::{self, WorkerAction};
use super::{Context, Error};
use crate::api::{
    AbcRun, COMPONENT_LABEL, FIELD_MANAGER, Phase, Progress, RUN_LABEL, SecretKeyRef,
};
use crate::protocol;
use crate::resources::{self, Component};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ObjectReference, Pod, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, EvictParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How often a running run's Redis is read for progress (bounded rate per run).
const POLL_RUNNING: Duration = Duration::from_secs(2);
/// How often an idle or finished run is looked at again without a watch event.
const POLL_IDLE: Duration = Duration::from_secs(300);
/// Retry interval for problems only the user can fix (a missing Secret): no hot loop.
const POLL_PROBLEM: Duration = Duration::from_secs(15);

pub async fn reconcile(run: Arc<AbcRun>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started();
    let namespace = run.namespace().ok_or(Error::NotNamespaced)?;
    let name = run.name_any();
    if run.meta().deletion_timestamp.is_some() {
        // Owner references let the garbage collector remove what the run owned.
        ctx.metrics.forget_run(&namespace, &name);
        ctx.demand.forget(&namespace, &name);
        ctx.redis.forget(&run);
        return Ok(Action::await_change());
    }

    let password = resolve_password(&run, &ctx, &namespace).await?;
    let (host, port) = resources::redis_host_port_for_operator(&run).map_err(Error::Build)?;
    let endpoint = password.value.as_ref().map(|pw| protocol::Endpoint {
        host,
        port,
        password: Some(pw.clone()),
    });
    let mut owned = resources::build(&run, password.generated.as_deref(), &ctx.build_settings)
        .map_err(Error::Build)?;
    if drain_on_stop(&run, &ctx, endpoint.as_ref()).await {
        // Keep the workers until they have left the generation; then the builder's zero applies.
        if let Some(spec) = owned.workers.spec.as_mut() {
            spec.replicas = Some(run.spec.workers.replicas);
        }
    }
    apply_owned(&ctx, &namespace, &owned).await?;

    let mut observed = observe(&run, &ctx, &namespace, &owned, &password).await?;
    // A managed Redis whose pod is not ready yet is not read: the attempt could only time out
    // and report a false problem while the run starts.
    // Nor once the master has finished: its Redis is going away and has nothing left to say.
    let master_finished = observed
        .master
        .as_ref()
        .is_some_and(MasterState::is_finished);
    let readable = observed.redis_problem.is_none() && observed.redis_ready && !master_finished;
    let snapshot = match (&endpoint, readable) {
        (Some(endpoint), true) => read_redis(&run, &ctx, endpoint, &mut observed).await,
        _ => None,
    };
    // Pods are listed after the snapshot: a ledger whose pod is missing from this list was
    // written by a pod that has since gone.
    let pods = list_pods(&run, &ctx, &namespace).await?;
    let now = Timestamp::now();
    observed.worker_pod_problem = pod_problem(&pods.workers, now);
    if owned.master_job.is_some() {
        observed.master_pod_problem = pod_problem(&pods.master, now);
        observed.master_exit = last_failed_exit(&pods.master);
    }
    if owned.redis_deployment.is_some() {
        observed.redis_pod_problem = pod_problem(&pods.redis, now);
    }
    handle_workers(
        &run,
        &ctx,
        &namespace,
        &pods.workers,
        endpoint.as_ref(),
        snapshot.as_ref(),
        &mut observed,
    )
    .await?;
    if let (Some(endpoint), Some(snapshot)) = (&endpoint, &snapshot) {
        clear_stale_lock_if_master_down(&run, &ctx, &namespace, &owned, endpoint, snapshot).await;
    }

    let new_status = status::compute(&run, &observed, now);
    record_demand(
        &ctx,
        &namespace,
        &name,
        &new_status,
        snapshot.as_ref(),
        &observed,
    );
    record_metrics(&ctx, &namespace, &name, &new_status);
    if let Some(old) = &run.status
        && status::redis_restarted(old, &new_status)
    {
        restart_master_after_redis_loss(&run, &ctx, &namespace, &pods.master).await;
    }
    if run.status.as_ref() != Some(&new_status) {
        write_status(&ctx, &namespace, &name, &new_status).await?;
        publish_transitions(&run, &ctx, &namespace, &new_status, &observed).await;
    }

    if let Some(action) = ttl_action(&run, &ctx, &namespace, &new_status).await? {
        return Ok(action);
    }
    // A run held up by what only the user can fix is looked at less often; its pods' watch
    // events still reconcile it at once when the kubelet's view changes.
    let held_up = new_status.phase == Some(Phase::Pending) && observed.pod_problem().is_some();
    Ok(next_poll(
        &new_status,
        password.problem.is_some() || held_up,
    ))
}

/// `spec.stop`: pyABC's `stop` makes idle workers leave now and busy ones at the end of the
/// current generation. While some are still inside a generation the workers keep running;
/// returns whether that is the case (the caller then holds the replicas).
async fn drain_on_stop(run: &AbcRun, ctx: &Context, endpoint: Option<&protocol::Endpoint>) -> bool {
    let (true, false, Some(endpoint)) = (run.spec.stop, run.spec.suspend, endpoint) else {
        return false;
    };
    let Ok(snapshot) = ctx.redis.snapshot(run, endpoint).await else {
        return false;
    };
    if snapshot.n_worker.unwrap_or(0) == 0 {
        return false;
    }
    if let Err(err) = ctx.redis.stop(run, endpoint).await {
        tracing::warn!(run = %run.name_any(), error = %err, "publishing pyABC's stop failed");
    }
    true
}

/// The run's Redis password: read from its Secret, or generated once for a managed Redis.
struct Password {
    /// The password, when it could be found.
    value: Option<String>,
    /// A newly generated or kept password for the operator-owned Secret (managed Redis only).
    generated: Option<String>,
    /// What the user must fix, e.g. a referenced Secret that does not exist.
    problem: Option<String>,
}

async fn resolve_password(run: &AbcRun, ctx: &Context, namespace: &str) -> Result<Password, Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let reference: SecretKeyRef = resources::password_secret_ref(run);
    let existing = secrets
        .get_opt(&reference.name)
        .await
        .map_err(Error::Kube)?;
    if resources::needs_generated_password(run) {
        let value = resources::password_to_keep(existing.as_ref())
            .unwrap_or_else(protocol::generate_password);
        return Ok(Password {
            value: Some(value.clone()),
            generated: Some(value),
            problem: None,
        });
    }
    let value = existing
        .as_ref()
        .and_then(|s| secret_value(s, &reference.key));
    let problem = match (&existing, &value) {
        (None, _) => Some(format!(
            "Secret {:?} with the Redis password does not exist in namespace {namespace:?}; create it with key {:?}",
            reference.name, reference.key
        )),
        (Some(_), None) => Some(format!(
            "Secret {:?} has no key {:?} with the Redis password",
            reference.name, reference.key
        )),
        _ => None,
    };
    Ok(Password {
        value,
        generated: None,
        problem,
    })
}

fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone())
        .ok()
        .filter(|s| !s.is_empty())
}

/// Applies every owned object with server-side apply under the one field manager. An unchanged
/// object is a no-op on the server (no new resourceVersion), which keeps reconcile write-free.
async fn apply_owned(
    ctx: &Context,
    namespace: &str,
    owned: &resources::Owned,
) -> Result<(), Error> {
    let c = &ctx.client;
    // Destructure without `..` so a new owned object cannot be forgotten here.
    let resources::Owned {
        secret,
        config_map,
        redis_deployment,
        redis_service,
        network_policy,
        workers,
        master_job,
    } = owned;
    if let Some(o) = secret {
        apply(c, namespace, o).await?;
    }
    apply(c, namespace, config_map).await?;
    if let Some(o) = network_policy {
        apply(c, namespace, o).await?;
    }
    if let Some(o) = redis_deployment {
        apply(c, namespace, o).await?;
    }
    if let Some(o) = redis_service {
        apply(c, namespace, o).await?;
    }
    apply(c, namespace, workers).await?;
    if let Some(o) = master_job {
        apply(c, namespace, o).await?;
    }
    Ok(())
}

async fn apply<K>(client: &kube::Client, namespace: &str, object: &K) -> Result<(), Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Serialize
        + DeserializeOwned
        + Clone
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let name = object.meta().name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .map_err(|source| Error::Apply {
        kind: K::kind(&Default::default()).to_string(),
        name,
        source,
    })?;
    Ok(())
}

async fn observe(
    run: &AbcRun,
    ctx: &Context,
    namespace: &str,
    owned: &resources::Owned,
    password: &Password,
) -> Result<Observed, Error> {
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), namespace);
    let workers_name = owned.workers.metadata.name.clone().unwrap_or_default();
    let workers = deployments
        .get_opt(&workers_name)
        .await
        .map_err(Error::Kube)?;
    let worker_status = workers
        .as_ref()
        .and_then(|d| d.status.clone())
        .unwrap_or_default();

    let redis_ready = match &owned.redis_deployment {
        Some(d) => {
            let name = d.metadata.name.clone().unwrap_or_default();
            let redis = deployments.get_opt(&name).await.map_err(Error::Kube)?;
            redis
                .and_then(|d| d.status)
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0)
                > 0
        }
        // An external Redis is ready when it answers; read_redis decides.
        None => true,
    };

    let master = match &owned.master_job {
        Some(job) => {
            let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
            let name = job.metadata.name.clone().unwrap_or_default();
            Some(master_state(
                jobs.get_opt(&name).await.map_err(Error::Kube)?.as_ref(),
            ))
        }
        None => None,
    };

    Ok(Observed {
        redis_ready,
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
        master,
        progress: None,
        lost_workers: run.status.as_ref().map(|s| s.lost_workers).unwrap_or(0),
        // Decided from the pods, listed after Redis was read.
        worker_pod_problem: None,
        master_pod_problem: None,
        redis_pod_problem: None,
        resumed: None,
        redis_run_id: None,
        master_start: None,
        master_exit: None,
    })
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

/// Reads the run's Redis once; on failure records the problem (the run keeps its last progress).
async fn read_redis(
    run: &AbcRun,
    ctx: &Context,
    endpoint: &protocol::Endpoint,
    observed: &mut Observed,
) -> Option<protocol::Snapshot> {
    match ctx.redis.snapshot(run, endpoint).await {
        Ok(snapshot) => {
            observed.progress = Some(Progress::from(&snapshot));
            // The repair script counts in Redis itself, so a repair whose status write was
            // lost (a controller crash) is counted here; max, so that a Redis that lost its
            // data does not make the number go back.
            observed.lost_workers = observed.lost_workers.max(snapshot.lost_workers);
            observed.resumed = snapshot.resumed.clone();
            observed.redis_run_id = snapshot.run_id.clone();
            observed.master_start = snapshot.master_start.clone();
            Some(snapshot)
        }
        Err(err) => {
            if run.spec.redis.external.is_some() {
                observed.redis_ready = false;
            }
            observed.redis_problem = Some(format!("cannot read the run's Redis: {err}"));
            None
        }
    }
}

/// The run's pods, by the part of the run they belong to.
struct RunPods {
    workers: Vec<Pod>,
    master: Vec<Pod>,
    redis: Vec<Pod>,
}

async fn list_pods(run: &AbcRun, ctx: &Context, namespace: &str) -> Result<RunPods, Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let selector = format!("{RUN_LABEL}={}", run.name_any());
    let listed = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(Error::Kube)?
        .items;
    let mut by_part = RunPods {
        workers: Vec::new(),
        master: Vec::new(),
        redis: Vec::new(),
    };
    for pod in listed {
        let part = match pod.labels().get(COMPONENT_LABEL).map(String::as_str) {
            Some(c) if c == Component::Worker.as_str() => &mut by_part.workers,
            Some(c) if c == Component::Master.as_str() => &mut by_part.master,
            Some(c) if c == Component::Redis.as_str() => &mut by_part.redis,
            _ => continue,
        };
        part.push(pod);
    }
    Ok(by_part)
}

/// Repairs lost workers and replaces ended or hung worker pods (see [`workers::decide`]).
async fn handle_workers(
    run: &AbcRun,
    ctx: &Context,
    namespace: &str,
    listed: &[Pod],
    endpoint: Option<&protocol::Endpoint>,
    snapshot: Option<&protocol::Snapshot>,
    observed: &mut Observed,
) -> Result<(), Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let heartbeat =
        protocol::Heartbeat::from_timeout_seconds(run.spec.workers.heartbeat_timeout_seconds);
    // Without Redis no ledger can be judged, but ended pods are still replaced.
    let (ledgers, now_ms) = snapshot
        .map(|s| (s.ledgers.as_slice(), s.time_ms))
        .unwrap_or((&[], 0));
    let actions = workers::decide(listed, ledgers, now_ms, heartbeat);
    // One Event per lost pod (a pod with several worker processes has a ledger for each).
    let mut repaired: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut failed_delete = None;
    for action in actions {
        match action {
            WorkerAction::Repair {
                ledger_id,
                worker,
                reason,
            } => {
                let Some(endpoint) = endpoint else { continue };
                match ctx.redis.repair(run, endpoint, &ledger_id).await {
                    Ok(Some(repair)) if repair.corrected() => {
                        observed.lost_workers = observed.lost_workers.max(repair.lost_workers);
                        tracing::warn!(run = %run.name_any(), namespace, worker, ledger = ledger_id, reason, %repair, "repaired lost worker");
                        repaired
                            .entry(worker)
                            .or_default()
                            .push(format!("{reason}; repaired {repair}"));
                    }
                    Ok(_) => {
                        tracing::debug!(run = %run.name_any(), ledger = ledger_id, "removed the ledger of an ended worker")
                    }
                    Err(err) => {
                        tracing::warn!(run = %run.name_any(), ledger = ledger_id, error = %err, "repairing a lost worker failed; retrying")
                    }
                }
            }
            // A stopping run lets its workers go instead of replacing them.
            WorkerAction::Replace { .. } if run.spec.stop => {}
            WorkerAction::Replace {
                pod,
                reason,
                expired,
            } => match pods.delete(&pod, &DeleteParams::default()).await {
                Ok(_) => {
                    tracing::info!(run = %run.name_any(), namespace, pod, reason, "replacing worker pod");
                    let (type_, why) = if expired {
                        (EventType::Normal, "WorkerExpired")
                    } else {
                        (EventType::Warning, "WorkerReplaced")
                    };
                    ctx.publish_about(
                        run,
                        type_,
                        why,
                        format!("replacing worker pod {pod}: {reason}"),
                        pod_reference(namespace, &pod),
                    )
                    .await;
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                // Reported after the repairs' Events: a repair is done once and for all.
                Err(err) => {
                    failed_delete.get_or_insert(Error::Kube(err));
                }
            },
        }
    }
    for (pod, repairs) in repaired {
        ctx.publish_about(
            run,
            EventType::Warning,
            "RepairedLostWorker",
            format!("worker pod {pod} was lost: {}", repairs.join("; ")),
            pod_reference(namespace, &pod),
        )
        .await;
    }
    failed_delete.map_or(Ok(()), Err)
}

/// A reference to a pod of the run, as an Event's related object. Without uid or
/// resourceVersion: a lost pod may be gone, and the Recorder compares references whole, so the
/// same pod must always give the same reference.
fn pod_reference(namespace: &str, pod: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(pod.into()),
        namespace: Some(namespace.into()),
        ..ObjectReference::default()
    }
}

/// A new Redis server has none of pyABC's state: the master's generation is gone. A master
/// that noticed exited with `REDIS_LOST_EXIT_CODE` and its Job retries it; one still running
/// (it may wait for ever on an empty queue) is evicted, which the Job's pod failure policy does
/// not count against `backoffLimit` either. Either way the retry resumes from the database.
async fn restart_master_after_redis_loss(
    run: &AbcRun,
    ctx: &Context,
    namespace: &str,
    master: &[Pod],
) {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let mut evicted = Vec::new();
    for pod in master.iter().filter(|p| {
        p.metadata.deletion_timestamp.is_none()
            && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
    }) {
        let name = pod.name_any();
        match pods.evict(&name, &EvictParams::default()).await {
            Ok(_) => evicted.push(name),
            Err(err) => {
                tracing::warn!(run = %run.name_any(), namespace, pod = %name, error = %err, "evicting the master after a Redis restart failed")
            }
        }
    }
    let note = match evicted.as_slice() {
        [] => "the run's Redis restarted and lost the generation in progress; the master's retry \
               resumes from its results database"
            .to_string(),
        pods => format!(
            "the run's Redis restarted and lost the generation in progress; evicted the master \
             ({}) so that its retry resumes from its results database",
            pods.join(", ")
        ),
    };
    ctx.publish(run, EventType::Warning, "RedisRestarted", note)
        .await;
}

/// A master that died leaves pyABC's `analysis_id` behind, and its retry would fail with "The
/// server seems busy with an analysis already". Between a failed master pod and its retry no
/// master runs, so the lock is stale by definition: clear it then, and say so.
async fn clear_stale_lock_if_master_down(
    run: &AbcRun,
    ctx: &Context,
    namespace: &str,
    owned: &resources::Owned,
    endpoint: &protocol::Endpoint,
    snapshot: &protocol::Snapshot,
) {
    let Some(job) = &owned.master_job else { return };
    if snapshot.analysis_id.is_none() {
        return;
    }
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
    let Ok(Some(job)) = jobs
        .get_opt(job.metadata.name.as_deref().unwrap_or_default())
        .await
    else {
        return;
    };
    let Some(status) = &job.status else { return };
    let finished = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.status == "True" && (c.type_ == "Complete" || c.type_ == "Failed"));
    if finished || status.failed.unwrap_or(0) == 0 || status.active.unwrap_or(0) > 0 {
        return;
    }
    match ctx.redis.clear_stale_analysis_lock(run, endpoint).await {
        Ok(Some(_)) => {
            tracing::info!(run = %run.name_any(), namespace, "cleared the stale analysis lock of a failed master");
            ctx.publish(
                run,
                EventType::Normal,
                "ClearedAnalysisLock",
                "the master failed; cleared pyABC's stale analysis_id so its retry can start"
                    .into(),
            )
            .await;
        }
        Ok(None) => {}
        Err(err) => {
            tracing::warn!(run = %run.name_any(), namespace, error = %err, "clearing the analysis lock failed")
        }
    }
}

async fn write_status(
    ctx: &Context,
    namespace: &str,
    name: &str,
    status: &crate::api::AbcRunStatus,
) -> Result<(), Error> {
    let api: Api<AbcRun> = Api::namespaced(ctx.client.clone(), namespace);
    let patch = serde_json::json!({
        "apiVersion": "abc-operator.dev/v1alpha1",
        "kind": "AbcRun",
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(Error::Kube)?;
    Ok(())
}

/// Events for what a person following the run wants to know: phase changes, finished
/// generations, problems appearing.
async fn publish_transitions(
    run: &AbcRun,
    ctx: &Context,
    namespace: &str,
    new: &crate::api::AbcRunStatus,
    observed: &Observed,
) {
    let old = run.status.clone().unwrap_or_default();
    if old.phase != new.phase
        && let Some(phase) = new.phase
    {
        let type_ = if phase == Phase::Failed {
            EventType::Warning
        } else {
            EventType::Normal
        };
        let note = match phase {
            Phase::Failed => new
                .conditions
                .iter()
                .find(|c| c.type_ == status::DEGRADED)
                .map(|c| c.message.clone())
                .unwrap_or_else(|| "the run failed".into()),
            other => format!("the run is {other}"),
        };
        ctx.publish(run, type_, &phase.to_string(), note).await;
    }
    // A problem appearing, or another one taking its place, is one Warning named after it
    // (e.g. ImagePullBackOff) and about its pod when it has one; the same problem persisting
    // changes no status, so it is not published again.
    let degraded = |s: &crate::api::AbcRunStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == status::DEGRADED && c.status == "True")
            .map(|c| (c.reason.clone(), c.message.clone()))
    };
    match (degraded(&old), degraded(new)) {
        (before, Some((reason, message))) if before.as_ref().map(|b| &b.0) != Some(&reason) => {
            match observed.pod_problem() {
                Some(problem) if problem.reason == reason => {
                    let pod = pod_reference(namespace, &problem.pod);
                    ctx.publish_about(run, EventType::Warning, &reason, message, pod)
                        .await
                }
                _ => ctx.publish(run, EventType::Warning, &reason, message).await,
            }
        }
        _ => {}
    }
    let resumes = |s: &crate::api::AbcRunStatus| s.resumes.as_ref().map_or(0, |r| r.count);
    if resumes(new) > resumes(&old)
        && let Some(last) = &new.resumes
    {
        ctx.publish_unfolded(
            run,
            EventType::Normal,
            "Resumed",
            format!(
                "the master continued the run from generation {} of its results database \
                 (stored generations are not sampled again; resume {})",
                last.last_from_generation, last.count
            ),
        )
        .await;
    }
    if let Some((reason, note)) = status::master_start_warning(&old, new) {
        ctx.publish_unfolded(run, EventType::Warning, reason, note)
            .await;
    }
    let generation_of =
        |s: &crate::api::AbcRunStatus| s.progress.as_ref().and_then(|p| p.generation);
    if let (Some(before), Some(now)) = (generation_of(&old), generation_of(new))
        && now > before
    {
        // Each generation completes once, with its own note: never folded.
        ctx.publish_unfolded(
            run,
            EventType::Normal,
            "GenerationCompleted",
            format!("generation {before} completed; sampling generation {now}"),
        )
        .await;
    }
}

/// Puts the run's demand on the board the autoscaling endpoints read, and into the gauges.
fn record_demand(
    ctx: &Context,
    namespace: &str,
    name: &str,
    status: &crate::api::AbcRunStatus,
    snapshot: Option<&protocol::Snapshot>,
    observed: &Observed,
) {
    let reading = snapshot.ok_or_else(|| {
        observed
            .redis_problem
            .clone()
            .unwrap_or_else(|| "the run's Redis is not ready yet".into())
    });
    let phase = status.phase.unwrap_or(Phase::Pending);
    let demand = ctx
        .demand
        .record(namespace, name, phase, reading)
        .unwrap_or(crate::autoscaling::Demand::IDLE);
    let labels = crate::metrics::RunLabels {
        namespace: namespace.into(),
        run: name.into(),
    };
    ctx.metrics
        .evaluations_needed
        .get_or_create(&labels)
        .set(demand.evaluations_needed);
    ctx.metrics
        .analysis_active
        .get_or_create(&labels)
        .set(demand.active as i64);
}

fn record_metrics(ctx: &Context, namespace: &str, name: &str, status: &crate::api::AbcRunStatus) {
    use crate::metrics::{PhaseLabels, RunLabels};
    let m = &ctx.metrics;
    let labels = RunLabels {
        namespace: namespace.into(),
        run: name.into(),
    };
    for phase in Phase::ALL {
        let current = status.phase == Some(phase);
        let l = PhaseLabels {
            namespace: namespace.into(),
            run: name.into(),
            phase: phase.to_string(),
        };
        m.run_phase.get_or_create(&l).set(current as i64);
    }
    m.workers_ready
        .get_or_create(&labels)
        .set(status.ready_replicas as i64);
    let desired = status
        .workers
        .as_deref()
        .and_then(|w| w.split('/').nth(1))
        .and_then(|d| d.parse().ok())
        .unwrap_or(0);
    m.workers_desired.get_or_create(&labels).set(desired);
    m.lost_workers
        .get_or_create(&labels)
        .set(status.lost_workers);
    if let Some(p) = &status.progress {
        m.generation
            .get_or_create(&labels)
            .set(p.generation.unwrap_or(0));
        m.accepted.get_or_create(&labels).set(p.accepted);
        m.required.get_or_create(&labels).set(p.required);
        m.evaluations.get_or_create(&labels).set(p.evaluations);
        m.active_workers
            .get_or_create(&labels)
            .set(p.active_workers);
    }
}

/// Deletes a finished run once its TTL is over; otherwise says when to look again.
async fn ttl_action(
    run: &AbcRun,
    ctx: &Context,
    namespace: &str,
    status: &crate::api::AbcRunStatus,
) -> Result<Option<Action>, Error> {
    let (Some(ttl), Some(finished)) = (
        run.spec.ttl_seconds_after_finished,
        status::finished_at(status),
    ) else {
        return Ok(None);
    };
    if let Some(left) = status::ttl_left(ttl, finished, Timestamp::now()) {
        return Ok(Some(Action::requeue(left)));
    }
    tracing::info!(run = %run.name_any(), namespace, ttl, "deleting finished run after its TTL");
    let api: Api<AbcRun> = Api::namespaced(ctx.client.clone(), namespace);
    api.delete(&run.name_any(), &DeleteParams::background())
        .await
        .map_err(Error::Kube)?;
    Ok(Some(Action::await_change()))
}

fn next_poll(status: &crate::api::AbcRunStatus, user_problem: bool) -> Action {
    if user_problem {
        return Action::requeue(POLL_PROBLEM);
    }
    match status.phase {
        Some(Phase::Running | Phase::Pending) => Action::requeue(POLL_RUNNING),
        Some(Phase::Stopped)
            if status
                .progress
                .as_ref()
                .is_some_and(|p| p.active_workers > 0) =>
        {
            Action::requeue(POLL_RUNNING)
        }
        _ => Action::requeue(POLL_IDLE),
    }
}

/// The API server refuses an Event whose note is longer than this (in bytes).
const MAX_NOTE_BYTES: usize = 1024;

/// `note`, cut at a character boundary to what the API server accepts.
fn within_note_limit(mut note: String) -> String {
    if note.len() <= MAX_NOTE_BYTES {
        return note;
    }
    let mut end = MAX_NOTE_BYTES - '…'.len_utf8();
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    note.truncate(end);
    note.push('…');
    note
}

impl Context {
    /// Publishes an Event on the run; failures to publish are logged, never fatal.
    ///
    /// kube's Recorder folds Events with the same type, reason, action and objects (within
    /// 6 minutes) into one series that keeps the first note: use this for news that is the
    /// same each time it repeats (a phase, a reconcile error), and [`Context::publish_about`]
    /// when the Event concerns one object among several.
    pub async fn publish(
        &self,
        run: &impl Resource<DynamicType = ()>,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        self.publish_event(run, type_, reason, note, None).await;
    }

    /// Publishes an Event on the run about `related` (e.g. the worker pod that was lost), so
    /// that Events about different objects stay apart while a repeat about the same object
    /// still folds into its series.
    pub async fn publish_about(
        &self,
        run: &impl Resource<DynamicType = ()>,
        type_: EventType,
        reason: &str,
        note: String,
        related: ObjectReference,
    ) {
        self.publish_event(run, type_, reason, note, Some(related))
            .await;
    }

    /// Publishes an Event that never folds into an earlier one: for news whose note differs
    /// each time under the same reason and objects (e.g. which generation completed), which
    /// the shared Recorder would fold into a series showing only the first.
    pub async fn publish_unfolded(
        &self,
        run: &impl Resource<DynamicType = ()>,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        // A Recorder's series cache is its own: a fresh one has nothing to fold into.
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        publish_with(&recorder, run, event(type_, reason, note, None)).await;
    }

    async fn publish_event(
        &self,
        run: &impl Resource<DynamicType = ()>,
        type_: EventType,
        reason: &str,
        note: String,
        related: Option<ObjectReference>,
    ) {
        publish_with(&self.recorder, run, event(type_, reason, note, related)).await;
    }
}

fn event(type_: EventType, reason: &str, note: String, related: Option<ObjectReference>) -> Event {
    Event {
        type_,
        reason: reason.into(),
        note: Some(within_note_limit(note)),
        action: "Reconcile".into(),
        secondary: related,
    }
}

async fn publish_with(recorder: &Recorder, run: &impl Resource<DynamicType = ()>, event: Event) {
    if let Err(err) = recorder.publish(&event, &run.object_ref(&())).await {
        tracing::warn!(run = %run.name_any(), error = %err, "publishing an event failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_notes_are_cut_to_what_the_api_server_accepts() {
        // Many repaired processes of one pod, with a multi-byte character at the cut.
        let note = format!("{}é{}", "a".repeat(MAX_NOTE_BYTES - 2), "b".repeat(500));
        let cut = within_note_limit(note);
        assert!(cut.len() <= MAX_NOTE_BYTES, "{}", cut.len());
        assert!(cut.ends_with('…'));
        let short = "worker pod w1 was lost".to_string();
        assert_eq!(within_note_limit(short.clone()), short);
    }
}
