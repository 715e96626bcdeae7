//! One reconcile of an AbcRun, as a pipeline: read (the run's objects and pods from the
//! caches, then its Redis) -> decide ([`decide::decide`], pure) -> write only what differs
//! (owned objects whose desired hash changed, repairs, replaced pods) -> status (written when
//! something a user waits for changed, progress counters at a bounded rate).

use super::cache::Caches;
use super::context::{Context, Error};
use super::decide::{self, ClusterView, Password, RedisReading};
use super::owned;
use super::pod_index::WatchedPod;
use super::status::{self, Observed, StatusWrite};
use super::workers::WorkerAction;
use crate::api::{AbcRun, FIELD_MANAGER, Phase, SecretKeyRef};
use crate::protocol::{self, Snapshot};
use crate::resources;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ObjectReference, Pod, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, EvictParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How often a running run is looked at again without a watch event while its Redis is not
/// polled (a managed Redis that is not ready yet).
const POLL_RUNNING: Duration = Duration::from_secs(2);
/// How often a running run whose Redis is polled ([`super::progress_poller`]) is looked at
/// again without an event or a wake-up from its poller: a safety net only.
const POLL_POLLED: Duration = Duration::from_secs(60);
/// How often an idle or finished run is looked at again without a watch event.
const POLL_IDLE: Duration = Duration::from_secs(300);
/// Retry interval for problems only the user can fix (a missing Secret): no hot loop.
const POLL_PROBLEM: Duration = Duration::from_secs(15);
/// How soon a reconcile that came before the caches had listed everything is tried again.
const CACHES_SYNCING: Duration = Duration::from_millis(500);

pub async fn reconcile(run: Arc<AbcRun>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started();
    let namespace = run.namespace().ok_or(Error::NotNamespaced)?;
    let name = run.name_any();
    if run.meta().deletion_timestamp.is_some() {
        // Owner references let the garbage collector remove what the run owned.
        ctx.forget(&run.uid().unwrap_or_default());
        return Ok(Action::await_change());
    }
    if !ctx.caches.synced() {
        // Until every store has listed its kind, a pod missing from it may only be missing
        // from the store, and its worker would look lost.
        return Ok(Action::requeue(CACHES_SYNCING));
    }

    ctx.memory.remember(&run);
    ctx.metrics.remembered_runs.set(ctx.memory.len() as i64);

    // Read: the run's objects and pods from the caches, then its Redis.
    let view = view_of(&run, &ctx.caches, &namespace);
    let password = resolve_password(&run, &ctx, &namespace).await?;
    let endpoint = decide::endpoint(&run, &password).map_err(Error::Build)?;
    let heartbeat =
        protocol::Heartbeat::from_timeout_seconds(run.spec.workers.heartbeat_timeout_seconds);
    let run_uid = run.uid().unwrap_or_default();
    let redis = match &endpoint {
        Some(endpoint) if decide::redis_readable(&run, &view, &password) => {
            match ctx.pollers.latest(&run, endpoint, heartbeat) {
                Some(snapshot) => RedisReading::Read(Box::new(snapshot)),
                None => match ctx.redis.snapshot(&run_uid, endpoint).await {
                    Ok(snapshot) => RedisReading::Read(Box::new(snapshot)),
                    Err(err) => {
                        // A rotated password is read again from its Secret next time.
                        ctx.memory.forget_password(&run);
                        RedisReading::Failed(err.to_string())
                    }
                },
            }
        }
        _ => RedisReading::NotRead,
    };
    let now = Timestamp::now();

    // Decide.
    let plan = decide::decide(&run, &view, &password, &redis, &ctx.build_settings, now)
        .map_err(Error::Build)?;

    // Write what differs.
    let built_from = (&password.generated, plan.publish_stop);
    for object in super::apply::unsettled(
        &ctx.memory,
        &run,
        built_from,
        &plan.owned,
        &namespace,
        &ctx.caches,
    ) {
        tracing::debug!(run = %name, namespace, object = %object.describe(), "applying");
        object.apply(&ctx.client, &namespace).await?;
    }
    if let (true, Some(endpoint)) = (plan.publish_stop, &endpoint)
        && let Err(err) = ctx.redis.stop(&run_uid, endpoint).await
    {
        tracing::warn!(run = %name, error = %err, "publishing pyABC's stop failed");
    }
    let mut observed = plan.observed;
    handle_workers(
        &run,
        &ctx,
        &namespace,
        plan.worker_actions,
        endpoint.as_ref(),
        &mut observed,
    )
    .await?;
    if let (true, Some(endpoint)) = (plan.clear_stale_lock, &endpoint) {
        clear_stale_lock(&run, &ctx, &namespace, endpoint).await;
    }

    // Status.
    let new_status = status::compute(&run, &observed, now);
    record_demand(&ctx, &namespace, &name, &new_status, &redis, &observed);
    record_metrics(&ctx, &namespace, &name, &new_status);
    if let Some(old) = &run.status
        && status::redis_restarted(old, &new_status)
    {
        restart_master_after_redis_loss(&run, &ctx, &namespace, &view.pods.master).await;
    }
    let since_last_write = ctx.memory.since_status_written(&run);
    let mut next = next_poll(
        &new_status,
        password.problem.is_some() || held_up(&new_status, &observed),
    );
    // A live run's Redis is read by its poller, which wakes the run when something changed;
    // the requeue is then only a safety net.
    let reading = match &redis {
        RedisReading::Read(snapshot) => Some(Ok(Snapshot::clone(snapshot))),
        RedisReading::Failed(err) => Some(Err(err.clone())),
        RedisReading::NotRead => None,
    };
    match (&endpoint, reading) {
        (Some(endpoint), Some(reading)) if next == POLL_RUNNING => {
            ctx.pollers.keep(&run, endpoint, heartbeat, &reading);
            next = POLL_POLLED;
        }
        _ => ctx.pollers.stop(&run_uid),
    }
    match status::write_due(
        run.status.as_ref(),
        &new_status,
        since_last_write,
        ctx.progress_interval,
    ) {
        StatusWrite::Now => {
            write_status(&ctx, &namespace, &name, &new_status).await?;
            ctx.memory.status_written(&run);
            publish_transitions(&run, &ctx, &namespace, &new_status, &observed).await;
        }
        // Only progress counters changed: they wait; the live figures are in the metrics.
        StatusWrite::After(wait) => next = next.min(wait),
        StatusWrite::Unchanged => {}
    }

    if let Some(action) = ttl_action(&run, &ctx, &namespace, &new_status).await? {
        return Ok(action);
    }
    Ok(Action::requeue(next))
}

/// A run held up by what only the user can fix is looked at less often; its pods' watch
/// events still reconcile it at once when the kubelet's view changes.
fn held_up(status: &crate::api::AbcRunStatus, observed: &Observed) -> bool {
    status.phase == Some(Phase::Pending) && observed.pod_problem().is_some()
}

/// The run's objects and pods in the caches.
fn view_of(run: &AbcRun, caches: &Caches, namespace: &str) -> ClusterView {
    let deployment = |name: String| {
        owned::get(&caches.owned.deployments, namespace, &name).map(|d| Deployment::clone(&d))
    };
    ClusterView {
        workers: deployment(resources::workers_deployment_name(run)),
        redis: run
            .spec
            .redis
            .external
            .is_none()
            .then(|| deployment(resources::redis_deployment_name(run)))
            .flatten(),
        master_job: run
            .spec
            .master
            .as_ref()
            .and_then(|_| {
                owned::get(
                    &caches.owned.jobs,
                    namespace,
                    &resources::master_job_name(run),
                )
            })
            .map(|j| Job::clone(&j)),
        pods: caches.run_pods(run),
    }
}

/// The run's Redis password: the operator's generated one (kept in its Secret), or the one in
/// the user's Secret.
async fn resolve_password(run: &AbcRun, ctx: &Context, namespace: &str) -> Result<Password, Error> {
    let reference: SecretKeyRef = resources::password_secret_ref(run);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    if resources::needs_generated_password(run) {
        // The operator's own Secret is in the cache; it is read from the API only when it is
        // not (yet) there, because a password generated anew would lock out every worker.
        let existing = match owned::get(&ctx.caches.owned.secrets, namespace, &reference.name) {
            Some(cached) => Some(Secret::clone(&cached)),
            None => secrets
                .get_opt(&reference.name)
                .await
                .map_err(Error::kube("reading the run's password Secret"))?,
        };
        let value = resources::password_to_keep(existing.as_ref())
            .unwrap_or_else(protocol::generate_password);
        return Ok(Password {
            value: Some(value.clone()),
            generated: Some(value),
            problem: None,
        });
    }
    // The user's Secret is not watched (it carries no label of the run's): it is read once and
    // kept until the run's Redis refuses it.
    if let Some(value) = ctx.memory.password(run, &reference) {
        return Ok(Password {
            value: Some(value),
            generated: None,
            problem: None,
        });
    }
    let existing = secrets.get_opt(&reference.name).await.map_err(Error::kube(
        "reading the Redis password from the run's passwordSecret",
    ))?;
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
    if let Some(value) = &value {
        ctx.memory.keep_password(run, &reference, value.clone());
    }
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

/// Repairs lost workers and replaces ended or hung worker pods (see [`workers::decide`]).
async fn handle_workers(
    run: &AbcRun,
    ctx: &Context,
    namespace: &str,
    actions: Vec<WorkerAction>,
    endpoint: Option<&protocol::Endpoint>,
    observed: &mut Observed,
) -> Result<(), Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    // One Event per lost pod (a pod with several worker processes has a ledger for each).
    let mut repaired: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut failed_delete = None;
    let run_uid = run.uid().unwrap_or_default();
    for action in actions {
        match action {
            WorkerAction::Repair {
                ledger_id,
                worker,
                reason,
            } => {
                let Some(endpoint) = endpoint else { continue };
                match ctx.redis.repair(&run_uid, endpoint, &ledger_id).await {
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
                    failed_delete.get_or_insert(Error::Kube {
                        step: "deleting a worker pod to replace it",
                        source: err,
                    });
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

/// A reference to a pod of the run, as an Event's related object. Without uid: a lost pod may
/// be gone, and repeats about the same pod must give the same reference to fold into one
/// series (`events::series_key`).
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
    master: &[Arc<WatchedPod>],
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

/// Clears pyABC's analysis lock left by a master that died (see [`decide::Plan`]), and says so.
async fn clear_stale_lock(
    run: &AbcRun,
    ctx: &Context,
    namespace: &str,
    endpoint: &protocol::Endpoint,
) {
    match ctx
        .redis
        .clear_stale_analysis_lock(&run.uid().unwrap_or_default(), endpoint)
        .await
    {
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
    .map_err(Error::kube("writing the run's status"))?;
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
        (before, Some((reason, message)))
            if before.as_ref().map(|b| &b.0) != Some(&reason) && ctx.memory.tell(run, &reason) =>
        {
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
    redis: &RedisReading,
    observed: &Observed,
) {
    let reading = redis.snapshot().ok_or_else(|| {
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
        .map_err(Error::kube("deleting the finished run after its TTL"))?;
    Ok(Some(Action::await_change()))
}

/// When to look at the run again without a watch event.
fn next_poll(status: &crate::api::AbcRunStatus, user_problem: bool) -> Duration {
    if user_problem {
        return POLL_PROBLEM;
    }
    match status.phase {
        Some(Phase::Running | Phase::Pending) => POLL_RUNNING,
        Some(Phase::Stopped)
            if status
                .progress
                .as_ref()
                .is_some_and(|p| p.active_workers > 0) =>
        {
            POLL_RUNNING
        }
        _ => POLL_IDLE,
    }
}
