//! One reconcile of an AbcRun, as a pipeline that carries out pure decisions: read (the run's
//! objects and pods from the caches, then its Redis) -> decide ([`decide::decide`]) -> write
//! only what differs (owned objects whose desired hash changed, repairs, replaced pods) ->
//! the status ([`status::compute`]) -> what follows ([`follow_up::follow_up`]: the status
//! write and its Events, a master's eviction, the poller, when to look again, the TTL).

use super::cache::Caches;
use super::context::{Context, Error};
use super::follow_up::{self, FollowUp, Next, Seen};
use super::observe::{ClusterView, Observed, Password, RedisReading};
use super::owned;
use super::pod_index::RunPod;
use super::records;
use super::status;
use super::workers::WorkerAction;
use super::{apply, decide, pod_problems};
use crate::api::{AbcRun, AbcRunStatus, FIELD_MANAGER, Phase, SecretKeyRef};
use crate::protocol;
use crate::resources;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, EvictParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Makes a master Job that exists appliable ([`apply::with_live_template`]): one read, only
/// when the Job is about to be written (made, suspended, its metadata changed). Returns whether
/// the run now builds another pod template than the Job keeps.
async fn keep_job_template(ctx: &Context, namespace: &str, job: &mut Job) -> Result<bool, Error> {
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
    let live = api
        .get_opt(&job.name_any())
        .await
        .map_err(Error::kube("reading the master Job"))?;
    Ok(live.is_some_and(|live| apply::with_live_template(job, &live)))
}

/// A failed pull of a run that names image pull secrets says which of them do not exist: a
/// read of each, only while a pull fails.
async fn name_missing_pull_secrets(
    run: &AbcRun,
    ctx: &Context,
    namespace: &str,
    observed: &mut Observed,
) -> Result<(), Error> {
    let failed_pull = |p: &Option<pod_problems::PodProblem>| {
        p.as_ref()
            .is_some_and(pod_problems::PodProblem::is_failed_pull)
    };
    if run.spec.image_pull_secrets.is_empty()
        || !(failed_pull(&observed.worker_pod_problem)
            || failed_pull(&observed.master_pod_problem)
            || failed_pull(&observed.redis_pod_problem))
    {
        return Ok(());
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let mut missing = Vec::new();
    for secret in &run.spec.image_pull_secrets {
        let found = secrets
            .get_metadata_opt(&secret.name)
            .await
            .map_err(Error::kube("reading the run's image pull secrets"))?;
        if found.is_none() {
            missing.push(secret.name.clone());
        }
    }
    for problem in [
        &mut observed.worker_pod_problem,
        &mut observed.master_pod_problem,
        &mut observed.redis_pod_problem,
    ]
    .into_iter()
    .flatten()
    {
        pod_problems::name_missing_pull_secrets(problem, &missing, namespace);
    }
    Ok(())
}

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

    ctx.remember(&run);

    // Read: the run's objects and pods from the caches, then its Redis.
    let view = view_of(&run, &ctx.caches, &namespace);
    let password = resolve_password(&run, &ctx, &namespace).await?;
    let endpoint = decide::endpoint(&run, &password).map_err(Error::Build)?;
    let heartbeat =
        protocol::Heartbeat::from_timeout_seconds(run.spec.workers.heartbeat_timeout_seconds);
    let run_uid = run.uid().unwrap_or_default();
    let redis = match &endpoint {
        Some(endpoint) if decide::redis_readable(&run, &view, &password) => {
            match ctx
                .pollers
                .latest(&run, endpoint, heartbeat, view.master_job.is_some())
            {
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
    let built_from = &password.generated;
    let differing = apply::unsettled(
        &ctx.memory,
        &run,
        built_from,
        &plan.owned,
        &namespace,
        &ctx.caches,
    );
    for mut object in differing {
        if let owned::OwnedObject::Job(job) = &mut object
            && keep_job_template(&ctx, &namespace, job).await?
        {
            ctx.publish(run.as_ref(), follow_up::master_pod_kept_notice(&run))
                .await;
        }
        tracing::debug!(run = %name, namespace, object = %object.describe(), "applying");
        object.apply(&ctx.client, &namespace).await?;
    }
    if let (true, Some(endpoint)) = (plan.request_stop, &endpoint) {
        match ctx.redis.request_stop(&run_uid, endpoint).await {
            Ok(()) => {
                ctx.publish(run.as_ref(), follow_up::stop_requested_notice())
                    .await
            }
            Err(err) => {
                tracing::warn!(run = %name, error = %err, "asking the master to stop failed")
            }
        }
    }
    if let (true, Some(endpoint)) = (plan.publish_stop, &endpoint)
        && let Err(err) = ctx.redis.stop(&run_uid, endpoint).await
    {
        tracing::warn!(run = %name, error = %err, "publishing pyABC's stop failed");
    }
    let mut observed = plan.observed;
    name_missing_pull_secrets(&run, &ctx, &namespace, &mut observed).await?;
    if let (Some(endpoint), Some(snapshot)) = (&endpoint, redis.snapshot()) {
        observed.records =
            keep_records(&run, &ctx, &namespace, endpoint, snapshot, &observed).await;
    }
    // A count only grows, also when the cached run does not hold this controller's last write.
    observed.lost_workers = observed
        .lost_workers
        .max(ctx.memory.lost_workers_written(&run));
    observed.idle_since = ctx.memory.idle_since(&run, observed.idle_since.take());
    handle_workers(
        &run,
        &ctx,
        plan.worker_actions,
        endpoint.as_ref(),
        &mut observed,
    )
    .await?;
    if let (true, Some(endpoint)) = (plan.clear_stale_lock, &endpoint) {
        clear_stale_lock(&run, &ctx, endpoint).await;
    }

    // Status, and what follows from it.
    let new_status = status::compute(&run, &observed, now);
    record_demand(&ctx, &namespace, &name, &new_status, &redis, &observed);
    record_metrics(&ctx, &namespace, &name, &new_status);
    let follow = follow_up::follow_up(&Seen {
        run: &run,
        new: &new_status,
        observed: &observed,
        password_problem: password.problem.is_some(),
        redis_pollable: endpoint.is_some() && !matches!(redis, RedisReading::NotRead),
        since_last_write: ctx.memory.since_status_written(&run),
        progress_interval: ctx.progress_interval,
        now,
    });
    match (&endpoint, redis.into_reading()) {
        (Some(endpoint), Some(reading)) if follow.poll_redis => {
            ctx.pollers.keep(&run, endpoint, heartbeat, &reading)
        }
        _ => ctx.pollers.stop(&run_uid),
    }
    carry_out(
        &run,
        &ctx,
        &namespace,
        follow,
        &new_status,
        &view.pods.master,
    )
    .await
}

/// Carries out the follow-up of a reconcile, in order: the master's eviction, the status write
/// and its Events, the TTL's deletion; returns when to look at the run again.
async fn carry_out(
    run: &AbcRun,
    ctx: &Context,
    namespace: &str,
    follow: FollowUp,
    new_status: &AbcRunStatus,
    master_pods: &[Arc<RunPod>],
) -> Result<Action, Error> {
    if follow.evict_master {
        let evicted = evict_running_master(run, ctx, namespace, master_pods).await;
        ctx.publish(run, follow_up::redis_restarted_notice(&evicted))
            .await;
    }
    if follow.write_status {
        write_status(ctx, namespace, &run.name_any(), new_status).await?;
        ctx.memory.status_written(run, new_status);
        if let Some(problem) = follow.problem
            && ctx.memory.tell(run, &problem.reason)
        {
            ctx.publish(run, problem).await;
        }
        for notice in follow.notices {
            ctx.publish(run, notice).await;
        }
    }
    match follow.next {
        Next::LookAgainIn(after) => Ok(Action::requeue(after)),
        Next::DeleteRun => {
            tracing::info!(run = %run.name_any(), namespace, ttl = ?run.spec.ttl_seconds_after_finished, "deleting finished run after its TTL");
            let api: Api<AbcRun> = Api::namespaced(ctx.client.clone(), namespace);
            api.delete(&run.name_any(), &DeleteParams::background())
                .await
                .map_err(Error::kube("deleting the finished run after its TTL"))?;
            Ok(Action::await_change())
        }
    }
}

/// Reads the run's new generation records when their number in Redis changed, and stores them
/// in its records ConfigMap (`records`); `None` when there was nothing to read. A failure is
/// logged and leaves the status as it was, so the records are read again next time.
async fn keep_records(
    run: &AbcRun,
    ctx: &Context,
    namespace: &str,
    endpoint: &protocol::Endpoint,
    snapshot: &protocol::Snapshot,
    observed: &Observed,
) -> Option<records::RecordsRead> {
    let cached = run.status.as_ref().and_then(|s| s.inference.as_ref());
    // What this controller stored last, until the runs watch brings back the status written
    // with it: without it a reconcile in between (the new ConfigMap wakes the run) would read
    // and store the same records again.
    let stored = ctx
        .memory
        .records_stored(run, cached.map_or(0, |i| i.generations));
    if let Some(stored) = stored.as_ref()
        && stored.recorded == snapshot.generations_recorded
    {
        return Some(stored.clone());
    }
    let (held, held_latest) = match &stored {
        Some(stored) => (stored.recorded, stored.latest().map(|r| r.t)),
        None => (
            cached.map_or(0, |i| i.generations),
            cached.and_then(|i| i.generation),
        ),
    };
    let from = records::read_from(held, snapshot.generations_recorded)?;
    let read = match ctx
        .redis
        .records(&run.uid().unwrap_or_default(), endpoint, from)
        .await
    {
        Ok(read) => read,
        Err(err) => {
            tracing::warn!(run = %run.name_any(), namespace, error = %err, "reading the run's generation records failed");
            return None;
        }
    };
    let mut problem = None;
    let mut records: Vec<_> = read
        .into_iter()
        .filter_map(|r| r.map_err(|e| problem = Some(e.to_string())).ok())
        .collect();
    let execution = records::execution(run.status.as_ref(), observed);
    for record in &mut records {
        if held_latest.is_none_or(|t| record.t > t) {
            record.execution = Some(execution.clone());
        }
    }
    let patch = records::data_patch(&records, held_latest);
    if let Err(err) = store_records(run, ctx, namespace, patch).await {
        tracing::warn!(run = %run.name_any(), namespace, error = %err, "storing the run's generation records failed");
        return None;
    }
    let read = records::RecordsRead {
        recorded: snapshot.generations_recorded,
        records,
        problem,
    };
    ctx.memory.set_records_stored(run, &read);
    Some(read)
}

/// Merges `patch` into the run's records ConfigMap, made when it does not exist yet.
async fn store_records(
    run: &AbcRun,
    ctx: &Context,
    namespace: &str,
    patch: BTreeMap<String, Option<String>>,
) -> Result<(), Error> {
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    let name = crate::resources::records_config_map_name(run);
    let merge = serde_json::json!({ "data": patch });
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&merge))
        .await
    {
        Err(kube::Error::Api(e)) if e.code == 404 => {
            let data = patch
                .into_iter()
                .filter_map(|(k, v)| Some((k, v?)))
                .collect();
            let config_map = resources::records_config_map(run, data).map_err(Error::Build)?;
            api.create(&PostParams::default(), &config_map)
                .await
                .map_err(Error::kube("making the run's records ConfigMap"))?;
            Ok(())
        }
        other => other.map(drop).map_err(Error::kube(
            "storing generation records in the run's ConfigMap",
        )),
    }
}

/// The run's objects and pods in the caches.
fn view_of(run: &AbcRun, caches: &Caches, namespace: &str) -> ClusterView {
    let deployment = |name: String| owned::get(&caches.owned.deployments, namespace, &name);
    ClusterView {
        workers: deployment(resources::workers_deployment_name(run)),
        redis: run
            .spec
            .redis
            .external
            .is_none()
            .then(|| deployment(resources::redis_deployment_name(run)))
            .flatten(),
        master_job: run.spec.master.as_ref().and_then(|_| {
            owned::get(
                &caches.owned.jobs,
                namespace,
                &resources::master_job_name(run),
            )
        }),
        results_claim: resources::results_claim(run)
            .ok()
            .flatten()
            .and_then(|claim| owned::get(&caches.owned.claims, namespace, &claim.name_any())),
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
    actions: Vec<WorkerAction>,
    endpoint: Option<&protocol::Endpoint>,
    observed: &mut Observed,
) -> Result<(), Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &run.namespace().unwrap_or_default());
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
                        tracing::warn!(run = %run.name_any(), worker, ledger = ledger_id, reason, %repair, "repaired lost worker");
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
                    tracing::info!(run = %run.name_any(), pod, reason, "replacing worker pod");
                    let notice = follow_up::worker_replaced_notice(run, &pod, &reason, expired);
                    ctx.publish(run, notice).await;
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
        ctx.publish(run, follow_up::lost_worker_notice(run, &pod, &repairs))
            .await;
    }
    failed_delete.map_or(Ok(()), Err)
}

/// Evicts the run's running master after its Redis restarted (see
/// [`follow_up::redis_restarted_notice`]); returns the pods evicted.
async fn evict_running_master(
    run: &AbcRun,
    ctx: &Context,
    namespace: &str,
    master: &[Arc<RunPod>],
) -> Vec<String> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let mut evicted = Vec::new();
    for pod in master.iter().filter(|p| {
        !p.deleting && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
    }) {
        let name = pod.name.clone();
        match pods.evict(&name, &EvictParams::default()).await {
            Ok(_) => evicted.push(name),
            Err(err) => {
                tracing::warn!(run = %run.name_any(), namespace, pod = %name, error = %err, "evicting the master after a Redis restart failed")
            }
        }
    }
    evicted
}

/// Clears pyABC's analysis lock left by a master that died (see [`decide::Plan`]), and says so.
async fn clear_stale_lock(run: &AbcRun, ctx: &Context, endpoint: &protocol::Endpoint) {
    match ctx
        .redis
        .clear_stale_analysis_lock(&run.uid().unwrap_or_default(), endpoint)
        .await
    {
        Ok(Some(_)) => {
            tracing::info!(run = %run.name_any(), "cleared the stale analysis lock of a failed master");
            ctx.publish(run, follow_up::cleared_lock_notice()).await;
        }
        Ok(None) => {}
        Err(err) => {
            tracing::warn!(run = %run.name_any(), error = %err, "clearing the analysis lock failed")
        }
    }
}

async fn write_status(
    ctx: &Context,
    namespace: &str,
    name: &str,
    status: &AbcRunStatus,
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

/// Puts the run's demand on the board the autoscaling endpoints read, and into the gauges.
fn record_demand(
    ctx: &Context,
    namespace: &str,
    name: &str,
    status: &AbcRunStatus,
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

fn record_metrics(ctx: &Context, namespace: &str, name: &str, status: &AbcRunStatus) {
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
    let degraded = status
        .conditions
        .iter()
        .any(|c| c.type_ == super::status::DEGRADED && c.status == "True");
    m.degraded.get_or_create(&labels).set(degraded as i64);
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
    if let Some(i) = &status.inference
        && let Some(t) = i.generation
    {
        m.inference_generation.get_or_create(&labels).set(t);
        for (family, value) in [
            (&m.epsilon, i.epsilon),
            (&m.acceptance_rate, i.acceptance_rate),
            (&m.effective_sample_size, i.effective_sample_size),
        ] {
            match value {
                Some(v) => _ = family.get_or_create(&labels).set(v),
                // an infinite epsilon: no number rather than a stale one
                None => _ = family.remove(&labels),
            }
        }
    }
}
