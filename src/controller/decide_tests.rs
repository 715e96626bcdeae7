//! The reconcile's decisions from YAML fixtures: a run, what the caches hold of it, its Redis.

use super::*;
use crate::controller::apply;
use crate::controller::cache::{Caches, RunPods};
use crate::controller::memory::RunMemory;
use crate::controller::observe::{MasterState, StopStage};
use crate::controller::owned::OwnedObject;
use crate::protocol::Snapshot;
use crate::protocol::liveness_test_support::ledger;
use crate::resources::test_support::{in_phase, run};
use k8s_openapi::api::apps::v1::Deployment;

const MANAGED: &str = "image: models/gaussian:1
workers:
  replicas: 3
master:
  command: [python, /app/master.py]";

fn yaml<T: serde::de::DeserializeOwned>(text: &str) -> T {
    serde_yaml::from_str(text).expect("fixture parses")
}

fn password() -> Password {
    Password {
        value: Some("kept".into()),
        generated: Some("kept".into()),
        problem: None,
    }
}

fn settings() -> BuildSettings {
    BuildSettings {
        default_redis_image: "redis:7".into(),
    }
}

/// A Deployment as the cache holds it, with `ready` ready replicas.
fn deployment(name: &str, ready: i32) -> Deployment {
    yaml(&format!(
        "metadata: {{name: {name}, namespace: science}}
status: {{replicas: {ready}, readyReplicas: {ready}}}"
    ))
}

fn master_job(status: &str) -> Job {
    yaml(&format!(
        "metadata: {{name: gaussian-master, namespace: science}}
status: {status}"
    ))
}

fn running_worker(name: &str) -> crate::controller::pod_index::RunPod {
    yaml(&format!(
        "metadata:
  name: {name}
  namespace: science
  labels: {{abc-operator.dev/run: gaussian, abc-operator.dev/component: worker}}
status:
  phase: Running
  containerStatuses:
  - {{name: worker, image: i, imageID: '', ready: true, restartCount: 0, state: {{running: {{}}}}}}"
    ))
}

/// A run whose managed Redis and workers are up and whose master is sampling.
fn running_view() -> ClusterView {
    ClusterView {
        workers: Some(deployment("gaussian-workers", 3).into()),
        redis: Some(deployment("gaussian-redis", 1).into()),
        master_job: Some(master_job("{active: 1}").into()),
        results_claim: None,
        pods: RunPods {
            workers: vec![
                running_worker("gaussian-workers-a").into(),
                running_worker("gaussian-workers-b").into(),
            ],
            ..RunPods::default()
        },
    }
}

fn in_generation(n_worker: i64, ledgers: Vec<Ledger>) -> RedisReading {
    RedisReading::Read(Box::new(Snapshot {
        time_ms: 100_000,
        analysis_id: Some("ana".into()),
        generation: Some(2),
        n_req: Some(100),
        n_acc: Some(40),
        n_worker: Some(n_worker),
        ledgers,
        ..Snapshot::default()
    }))
}

use crate::protocol::Ledger;

fn joined(id: &str, heartbeat_ms: i64) -> Ledger {
    Ledger {
        analysis_id: Some("ana".into()),
        generation: Some(2),
        joined: true,
        ..ledger(id, Some(id), Some(0), Some(heartbeat_ms))
    }
}

fn plan(run: &AbcRun, view: &ClusterView, redis: &RedisReading) -> Plan {
    decide(
        run,
        view,
        &password(),
        redis,
        &settings(),
        Timestamp::UNIX_EPOCH,
    )
    .unwrap()
}

#[test]
fn a_new_run_is_built_whole_and_its_redis_is_not_read_before_it_is_ready() {
    let run = run(MANAGED);
    let view = ClusterView::default();
    assert!(!redis_readable(&run, &view, &password()));
    let plan = plan(&run, &view, &RedisReading::NotRead);
    assert!(plan.owned.redis_deployment.is_some() && plan.owned.master_job.is_some());
    assert!(plan.worker_actions.is_empty() && !plan.clear_stale_lock && !plan.publish_stop);
    assert!(!plan.observed.redis_ready);
    assert_eq!(plan.observed.master, Some(MasterState::Pending));
    assert!(redis_readable(&run, &running_view(), &password()));
}

#[test]
fn a_ledger_without_its_pod_is_repaired_and_a_live_one_is_left_alone() {
    let run = run(MANAGED);
    let redis = in_generation(
        3,
        vec![
            joined("gaussian-workers-a", 99_000),
            joined("gaussian-workers-gone", 99_000),
        ],
    );
    let plan = plan(&run, &running_view(), &redis);
    assert_eq!(
        plan.worker_actions,
        vec![WorkerAction::Repair {
            ledger_id: "gaussian-workers-gone".into(),
            worker: "gaussian-workers-gone".into(),
            reason: "its pod is gone".into(),
        }]
    );
    assert_eq!(plan.observed.progress.as_ref().unwrap().accepted, 40);
}

/// A generation of a master that runs `abc_operator.run` (it recorded its start).
fn module_master_in_generation(n_worker: i64, stop_requested: bool) -> RedisReading {
    let RedisReading::Read(mut snapshot) = in_generation(n_worker, vec![]) else {
        unreachable!()
    };
    snapshot.master_start = crate::controller::test_support::start(
        crate::protocol::StartOutcome::New,
        "started a new run",
        "2026-12-06T22:00:00Z",
    );
    snapshot.stop_requested = stop_requested;
    RedisReading::Read(snapshot)
}

#[test]
fn a_run_asked_to_stop_asks_its_master_once_and_keeps_its_workers_until_the_analysis_ends() {
    let stopping = run(&format!("{MANAGED}\nstop: true"));
    let asked = plan(
        &stopping,
        &running_view(),
        &module_master_in_generation(2, false),
    );
    assert!(
        asked.request_stop && !asked.publish_stop,
        "the workers are not told"
    );
    assert_eq!(asked.observed.stop, Some(StopStage::Stopping));
    assert_eq!(asked.observed.workers_desired, 3);
    let told = plan(
        &stopping,
        &running_view(),
        &module_master_in_generation(0, true),
    );
    assert!(!told.request_stop, "asked once");
    assert_eq!(
        told.observed.stop,
        Some(StopStage::Stopping),
        "between generations"
    );
    let RedisReading::Read(mut no_analysis) = module_master_in_generation(0, true) else {
        unreachable!()
    };
    no_analysis.analysis_id = None;
    let ending = plan(
        &stopping,
        &running_view(),
        &RedisReading::Read(no_analysis.clone()),
    );
    assert_eq!(
        ending.observed.stop,
        Some(StopStage::Stopping),
        "its master still stores and prints after the analysis"
    );
    let ended_view = ClusterView {
        master_job: Some(
            master_job("{succeeded: 1, conditions: [{type: Complete, status: 'True'}]}").into(),
        ),
        ..running_view()
    };
    let ended = plan(
        &stopping,
        &ended_view,
        &RedisReading::Read(no_analysis.clone()),
    );
    assert_eq!(
        ended.observed.stop,
        Some(StopStage::Stopped),
        "the master ended"
    );
    let elsewhere = run("image: i\nstop: true");
    let ended = plan(
        &elsewhere,
        &running_view(),
        &RedisReading::Read(no_analysis),
    );
    assert_eq!(
        ended.observed.stop,
        Some(StopStage::Stopped),
        "a master elsewhere: no analysis left"
    );
    let unknown = plan(
        &stopping,
        &running_view(),
        &RedisReading::Failed("timed out".into()),
    );
    assert_eq!(unknown.observed.stop, Some(StopStage::Stopping));
    // The status a reconcile wrote when the run stopped: everything is given back.
    let stopped = plan(
        &in_phase(stopping, crate::api::Phase::Stopped),
        &running_view(),
        &RedisReading::NotRead,
    );
    assert_eq!(stopped.observed.stop, Some(StopStage::Stopped));
    assert_eq!(stopped.observed.workers_desired, 0);
    let redis = stopped.owned.redis_deployment.unwrap().spec.unwrap();
    assert_eq!(redis.replicas, Some(0));
    let master = stopped.owned.master_job.unwrap().spec.unwrap();
    assert_eq!(
        master.suspend,
        Some(true),
        "a master still running is ended"
    );
}

#[test]
fn a_master_that_cannot_be_asked_to_stop_loses_its_workers_at_the_end_of_the_generation() {
    let stopping = run(&format!("{MANAGED}\nstop: true"));
    let busy = plan(&stopping, &running_view(), &in_generation(2, vec![]));
    assert!(busy.publish_stop);
    assert_eq!(busy.observed.stop, Some(StopStage::Stopping));
    assert_eq!(busy.observed.workers_desired, 3);
    let left = plan(&stopping, &running_view(), &in_generation(0, vec![]));
    assert!(!left.publish_stop);
    assert_eq!(left.observed.stop, Some(StopStage::Stopped));
}

#[test]
fn a_run_not_asked_to_stop_or_suspended_has_no_stop() {
    let redis = module_master_in_generation(2, false);
    assert_eq!(
        plan(&run(MANAGED), &running_view(), &redis).observed.stop,
        None
    );
    let suspended = run(&format!("{MANAGED}\nstop: true\nsuspend: true"));
    let plan = plan(&suspended, &running_view(), &redis);
    assert!(plan.observed.stop.is_none() && !plan.request_stop);
}

#[test]
fn a_stopping_run_lets_ended_workers_go_instead_of_replacing_them() {
    let mut view = running_view();
    std::sync::Arc::make_mut(&mut view.pods.workers[0])
        .status
        .as_mut()
        .unwrap()
        .container_statuses
        .as_mut()
        .unwrap()[0]
        .state = Some(yaml("{terminated: {exitCode: 0}}"));
    let running = plan(&run(MANAGED), &view, &RedisReading::NotRead);
    assert!(matches!(
        running.worker_actions.as_slice(),
        [WorkerAction::Replace { expired: true, .. }]
    ));
    let stopping = plan(
        &run(&format!("{MANAGED}\nstop: true")),
        &view,
        &RedisReading::NotRead,
    );
    assert!(stopping.worker_actions.is_empty());
}

#[test]
fn the_lock_of_a_dead_master_is_cleared_only_between_its_failure_and_its_retry() {
    let run = run(MANAGED);
    let with_job = |status: &str| ClusterView {
        master_job: Some(master_job(status).into()),
        ..running_view()
    };
    let redis = in_generation(0, vec![]);
    assert!(plan(&run, &with_job("{failed: 1}"), &redis).clear_stale_lock);
    assert!(!plan(&run, &with_job("{failed: 1, active: 1}"), &redis).clear_stale_lock);
    assert!(!plan(&run, &with_job("{active: 1}"), &redis).clear_stale_lock);
    let failed_for_good =
        "{failed: 2, conditions: [{type: Failed, status: 'True', reason: BackoffLimitExceeded}]}";
    assert!(!plan(&run, &with_job(failed_for_good), &redis).clear_stale_lock);
    // Nothing to clear without a lock.
    let no_lock = RedisReading::Read(Box::default());
    assert!(!plan(&run, &with_job("{failed: 1}"), &no_lock).clear_stale_lock);
}

#[test]
fn a_finished_master_frees_the_workers_and_its_redis_is_not_read() {
    // The status a reconcile wrote when it saw the Job complete.
    let run = in_phase(run(MANAGED), crate::api::Phase::Succeeded);
    let view = ClusterView {
        master_job: Some(
            master_job("{succeeded: 1, conditions: [{type: Complete, status: 'True'}]}").into(),
        ),
        ..running_view()
    };
    assert!(!redis_readable(&run, &view, &password()));
    let plan = plan(&run, &view, &RedisReading::NotRead);
    assert_eq!(plan.observed.master, Some(MasterState::Succeeded));
    assert_eq!(plan.observed.workers_desired, 0);
}

#[test]
fn an_external_redis_that_does_not_answer_is_not_ready_and_says_why() {
    let run = run("image: models/gaussian:1
redis:
  external: {host: redis.example, port: 6379, passwordSecret: {name: pw, key: password}}");
    let plan = plan(
        &run,
        &ClusterView::default(),
        &RedisReading::Failed("connection refused".into()),
    );
    assert!(!plan.observed.redis_ready);
    assert_eq!(
        plan.observed.redis_problem.as_deref(),
        Some("cannot read the run's Redis at redis.example:6379: connection refused")
    );
}

fn caches_holding(objects: &[OwnedObject]) -> Caches {
    Caches::holding(objects)
}

#[test]
fn a_settled_run_applies_nothing_and_a_changed_spec_only_what_it_changes() {
    let run1 = run(MANAGED);
    let owned = plan(&run1, &running_view(), &RedisReading::NotRead).owned;
    let first = apply::differing(&owned, "science", &caches_holding(&[]));
    assert_eq!(
        first.len(),
        8,
        "{:?}",
        first.iter().map(|o| o.describe()).collect::<Vec<_>>()
    );
    let caches = caches_holding(&first);
    assert!(apply::differing(&owned, "science", &caches).is_empty());

    let scaled = run(&MANAGED.replace("replicas: 3", "replicas: 5"));
    let owned = plan(&scaled, &running_view(), &RedisReading::NotRead).owned;
    let changed: Vec<String> = apply::differing(&owned, "science", &caches)
        .iter()
        .map(|o| o.describe())
        .collect();
    assert_eq!(changed, ["Deployment/gaussian-workers"]);
}

/// The objects as the API server stores them: each with resource version `version`.
fn stored(objects: &[OwnedObject], version: &str) -> Vec<OwnedObject> {
    let mut objects = objects.to_vec();
    for object in &mut objects {
        object.meta_mut().resource_version = Some(version.into());
    }
    objects
}

#[test]
fn a_settled_run_is_not_compared_again_until_it_or_an_object_of_it_changes() {
    let names = |objects: Vec<OwnedObject>| -> Vec<String> {
        objects.iter().map(|o| o.describe()).collect()
    };
    let mut run1 = run(MANAGED);
    run1.metadata.resource_version = Some("1".into());
    let owned = plan(&run1, &running_view(), &RedisReading::NotRead).owned;
    let memory = RunMemory::default();
    let settled = Settled(&memory);
    let applied = settled.differing(&run1, (), &owned, "science", &caches_holding(&[]));
    assert_eq!(applied.len(), 8);
    let caches = caches_holding(&stored(&applied, "10"));
    assert!(
        settled
            .differing(&run1, (), &owned, "science", &caches)
            .is_empty()
    );

    // The same versions of the run and of its objects: not compared again. Shown with desired
    // objects that would differ, which the same run version never gives.
    let mut scaled = run(&MANAGED.replace("replicas: 3", "replicas: 5"));
    let scaled_owned = plan(&scaled, &running_view(), &RedisReading::NotRead).owned;
    assert!(
        settled
            .differing(&run1, (), &scaled_owned, "science", &caches)
            .is_empty()
    );

    // An object deleted (it has no version any more): compared again, and created again.
    let mut without_workers = stored(&applied, "10");
    without_workers.retain(|o| o.describe() != "Deployment/gaussian-workers");
    assert_eq!(
        names(settled.differing(
            &run1,
            (),
            &owned,
            "science",
            &caches_holding(&without_workers)
        )),
        ["Deployment/gaussian-workers"]
    );
    assert!(
        settled
            .differing(&run1, (), &owned, "science", &caches)
            .is_empty()
    );

    // What the builders read besides the run changed: compared again.
    assert_eq!(
        names(settled.differing(&run1, true, &scaled_owned, "science", &caches)),
        ["Deployment/gaussian-workers"]
    );
    // Another version of the run (its spec or its status changed): compared again.
    scaled.metadata.resource_version = Some("2".into());
    assert_eq!(
        names(settled.differing(&scaled, (), &scaled_owned, "science", &caches)),
        ["Deployment/gaussian-workers"]
    );
}

/// `apply::unsettled` with the memory of one test.
struct Settled<'a>(&'a RunMemory);

impl Settled<'_> {
    fn differing(
        &self,
        run: &AbcRun,
        built_from: impl std::hash::Hash,
        owned: &crate::resources::Owned,
        namespace: &str,
        caches: &Caches,
    ) -> Vec<OwnedObject> {
        apply::unsettled(self.0, run, built_from, owned, namespace, caches)
    }
}

#[test]
fn a_run_without_an_analysis_for_its_idle_timeout_is_stopped() {
    let idle = |since_seconds: i64| {
        let mut run = run("image: i\nidleTimeoutSeconds: 60");
        run.status = Some(crate::api::AbcRunStatus {
            idle_since: Some(
                Timestamp::from_second(1000 - since_seconds)
                    .unwrap()
                    .to_string(),
            ),
            ..Default::default()
        });
        decide(
            &run,
            &running_view(),
            &password(),
            &RedisReading::Read(Box::default()),
            &settings(),
            Timestamp::from_second(1000).unwrap(),
        )
        .unwrap()
        .observed
    };
    assert_eq!(idle(30).stop, None);
    assert_eq!(idle(60).stop, Some(StopStage::Stopped));
    assert_eq!(idle(30).analysis, Some(false));
}
