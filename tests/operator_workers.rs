//! The operator with real pyABC: an external loopback redis-server, worker "pods" on kwok whose
//! processes the fake kubelet runs locally through the shipped entrypoint, and a real master.
//! Progress reaches the AbcRun status; a worker lost mid-generation is repaired once; workers
//! whose runtime is over are replaced without CrashLoopBackOff.

mod support;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams};
use std::time::Duration;
use support::cluster::eventually;
use support::controller::ControllerProcess;
use support::run::{master_finishes, setup};

/// Deletes pod `name` with grace 0: its process is SIGKILLed by the (fake) kubelet, as on a
/// lost node, inside whatever it was doing.
async fn delete_now(pods: &Api<Pod>, name: &str) {
    let now = DeleteParams {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    pods.delete(name, &now).await.unwrap();
}

/// A running pod of `component`, from now on left alone by kwok (a "custom" status), so that
/// the test can set its status as a kubelet would. Running first: kwok would otherwise
/// overwrite that status with its own.
async fn running_pod_whose_status_the_test_sets(pods: &Api<Pod>, component: &str) -> String {
    let selector = format!("abc-operator.dev/component={component}");
    let pod = eventually(60, &format!("a running {component} pod"), || async {
        let list = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .ok()?;
        list.items
            .into_iter()
            .find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
    })
    .await;
    let name = kube::ResourceExt::name_any(&pod);
    let annotate =
        serde_json::json!({"metadata": {"annotations": {"kwok.x-k8s.io/status": "custom"}}});
    pods.patch(
        &name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&annotate),
    )
    .await
    .unwrap();
    name
}

#[tokio::test]
async fn status_shows_pyabc_progress_from_redis() {
    // A 0.05 s model: each generation lasts seconds, longer than the poller's 1 s between
    // reads of a run with an analysis. With a faster model the whole run can be over between
    // reads.
    let s = setup("wk-status", 2, "10m", "0.05").await;
    let _controller = ControllerProcess::start(&s.ns.name);
    let _kubelet = s.kubelet();
    let mut master = s.master(100, 3);

    let mut generations_seen = std::collections::BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    let status = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "status never showed two generations: saw {generations_seen:?}"
        );
        if let Some(status) = s.runs.get("sim").await.ok().and_then(|r| r.status) {
            if let Some(generation) = status.progress.as_ref().and_then(|p| p.generation) {
                generations_seen.insert(generation);
            }
            if generations_seen.len() >= 2
                && status
                    .progress
                    .as_ref()
                    .is_some_and(|p| p.acceptances.is_some())
            {
                break status;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let progress = status.progress.unwrap();
    assert_eq!(progress.required, 100);
    assert!(progress.analysis_id.is_some());
    assert!(master_finishes(&mut master, 240).await, "the master failed");
    s.wait_for_event("GenerationCompleted").await;
}

/// A running run with idle workers costs no reconciles: its Redis is read by its poller,
/// which wakes it only when something there changed (the workers' heartbeats and the clock
/// are no change). A master that starts is in the status within moments all the same: the
/// run's connection hears its `start` on pyABC's channel, however rarely the run is read.
#[tokio::test]
async fn an_idle_run_is_not_reconciled_until_its_redis_changes() {
    let s = setup("wk-idle", 2, "10m", "0.1").await;
    // Idle runs read every 10 minutes: only the heard `start` can show the master in time.
    let controller = ControllerProcess::start_with(&s.ns.name, &["--idle-read-seconds", "600"]);
    let _kubelet = s.kubelet();
    let mut conn = support::redis::connect(&s.redis).await;
    support::redis::wait_for(
        &mut conn,
        Duration::from_secs(120),
        "two idle workers registered",
        |snapshot| snapshot.ledgers.len() == 2,
    )
    .await;
    let before = controller
        .reconciles_once_settled(Duration::from_secs(3), 90)
        .await;
    // Long enough for several heartbeats of each worker (every 5 s) and, before the poller,
    // for 10 polling reconciles (every 2 s).
    tokio::time::sleep(Duration::from_secs(20)).await;
    let after = controller
        .metric("abc_operator_reconciles_total")
        .await
        .unwrap();
    assert!(
        after - before <= 1.0,
        "{} reconciles in 20 s of an idle run; the controller's log:\n{}",
        after - before,
        controller.logs()
    );

    let mut master = s.master(40, 2);
    let started = support::redis::wait_for(
        &mut conn,
        Duration::from_secs(120),
        "the master's analysis in Redis",
        |snapshot| snapshot.analysis_id.is_some(),
    )
    .await;
    // Without the `start` heard, the next read would come with the poller's next idle read,
    // 10 minutes after the last (a reconcile in between uses that read).
    eventually(10, "the master's analysis in the status", || async {
        let shown = s.runs.get("sim").await.ok()?.status?.progress?.analysis_id;
        (shown == started.analysis_id).then_some(())
    })
    .await;
    assert!(master_finishes(&mut master, 240).await, "the master failed");
}

#[tokio::test]
async fn a_worker_pod_lost_mid_generation_is_repaired_once_and_the_run_completes() {
    let s = setup("wk-lost", 3, "10m", "0.2").await;
    let controller = ControllerProcess::start(&s.ns.name);
    let _kubelet = s.kubelet();
    let mut master = s.master(30, 2);

    // Lose a worker inside a generation (pod deleted with grace 0, its process SIGKILLed by
    // the kubelet).
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), &s.ns.name);
    let victim = s.worker_inside_a_generation().await;
    delete_now(&pods, &victim).await;
    // Restart the controller while it may be repairing: the repair still happens exactly once.
    controller.stop();
    let controller = ControllerProcess::start(&s.ns.name);

    assert!(
        master_finishes(&mut master, 240).await,
        "the run did not complete after the loss"
    );
    let repairs = eventually(60, "a RepairedLostWorker event", || {
        let s = &s;
        async move {
            let events = s.events("RepairedLostWorker").await;
            (!events.is_empty()).then_some(events)
        }
    })
    .await;
    let repairs_of_victim: u32 = repairs
        .iter()
        .filter(|e| e.message.as_deref().unwrap_or_default().contains(&victim))
        .map(|e| e.count.unwrap_or(1).max(1) as u32)
        .sum();
    assert_eq!(
        repairs_of_victim, 1,
        "the lost worker must be repaired exactly once: {repairs:?}"
    );
    let status = s.runs.get("sim").await.unwrap().status.unwrap();
    assert_eq!(status.lost_workers, 1);
    drop(controller);
}

/// A repair whose status write was lost (the controller crashed right after the repair
/// script) is still counted: the script counts it in the run's Redis and the controller reads
/// that. And the count never goes back, even when Redis loses its data.
#[tokio::test]
async fn lost_worker_count_survives_a_controller_crash_and_a_redis_reset() {
    let s = setup("wk-count", 0, "10m", "0").await;
    let mut conn = abc_operator::protocol::connect(&s.redis.endpoint())
        .await
        .unwrap();
    let set = |key: &str, value: &str| redis::cmd("SET").arg(key).arg(value).clone();
    // A generation, and the ledger of a worker that died inside it.
    for (key, value) in [
        ("analysis_id", "ana"),
        ("generation_ana", "0"),
        ("n_worker_ana_0", "1"),
    ] {
        let _: () = set(key, value).query_async(&mut conn).await.unwrap();
    }
    let _: () = redis::cmd("HSET")
        .arg(abc_operator::protocol::keys::ledger_key("gone-pod"))
        .arg(&["analysis", "ana", "generation", "0", "joined", "1"][..])
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("SADD")
        .arg(abc_operator::protocol::keys::LEDGER_SET)
        .arg("gone-pod")
        .query_async(&mut conn)
        .await
        .unwrap();
    // The repair of a controller that crashed before it wrote the status.
    let repair = abc_operator::protocol::repair_lost_worker(&mut conn, "gone-pod")
        .await
        .unwrap()
        .expect("a ledger to repair");
    assert!(repair.corrected() && repair.lost_workers == 1, "{repair:?}");

    let controller = ControllerProcess::start(&s.ns.name);
    eventually(60, "lostWorkers 1 in the status", || {
        let runs = s.runs.clone();
        async move {
            let status = runs.get("sim").await.ok()?.status?;
            (status.lost_workers == 1).then_some(())
        }
    })
    .await;
    assert!(
        s.events("RepairedLostWorker").await.is_empty(),
        "the new controller repaired nothing itself, it only counted"
    );
    let series = format!(
        "abc_operator_run_lost_workers{{namespace=\"{}\",run=\"sim\"}}",
        s.ns.name
    );
    assert_eq!(
        controller.metric(&series).await,
        Some(1.0),
        "the metric follows the status"
    );

    // Redis loses its data (a Redis without persistence restarted) and a new analysis starts.
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    for (key, value) in [("analysis_id", "ana2"), ("generation_ana2", "0")] {
        let _: () = set(key, value).query_async(&mut conn).await.unwrap();
    }
    let status = eventually(60, "the new analysis in the status", || {
        let runs = s.runs.clone();
        async move {
            let status = runs.get("sim").await.ok()?.status?;
            let analysis = status.progress.as_ref()?.analysis_id.clone();
            (analysis.as_deref() == Some("ana2")).then_some(status)
        }
    })
    .await;
    assert_eq!(status.lost_workers, 1, "the count never goes back");
    drop(controller);
}

#[tokio::test]
async fn expired_workers_are_replaced_without_crash_loops() {
    let s = setup("wk-expiry", 3, "20s", "0.1").await;
    let _controller = ControllerProcess::start(&s.ns.name);
    let kubelet = s.kubelet();
    let mut master = s.master(60, 4);

    // Generous: on a loaded 2-core machine a worker may spend much of its 20 s importing pyabc.
    let finished = tokio::time::timeout(Duration::from_secs(420), async {
        loop {
            if let Some(status) = master.try_wait().unwrap() {
                return status.success();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    let log = kubelet.log.lock().unwrap().clone();
    let status = s.runs.get("sim").await.unwrap().status;
    assert_eq!(
        finished,
        Ok(true),
        "the run did not complete: {log:?} {status:?}"
    );
    let expired = log.exited.iter().filter(|(_, code)| *code == 0).count();
    assert!(
        expired >= 3,
        "workers with a 20 s runtime never expired: {log:?}"
    );
    assert!(
        log.crash_loops.is_empty(),
        "pods reached CrashLoopBackOff: {:?}",
        log.crash_loops
    );
    assert!(
        log.started.len() > 3,
        "expired workers were not replaced: {log:?}"
    );
    s.wait_for_event("WorkerExpired").await;
}

/// Stops the run once 3 workers are inside a generation after calibration; returns that
/// generation's progress.
async fn stop_inside_a_generation(s: &support::run::Setup) -> abc_operator::api::Progress {
    let at_stop = eventually(
        180,
        "3 workers inside a generation after calibration",
        || {
            let runs = s.runs.clone();
            async move {
                let p = runs.get("sim").await.ok()?.status?.progress?;
                (p.active_workers == 3 && p.generation? >= 0 && p.accepted < p.required)
                    .then_some(p)
            }
        },
    )
    .await;
    s.patch_run(serde_json::json!({"spec": {"stop": true}}))
        .await;
    at_stop
}

/// Waits for the run to be Stopped with its workers scaled to zero; its last progress.
async fn stopped(s: &support::run::Setup) -> abc_operator::api::Progress {
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(s.client.clone(), &s.ns.name);
    eventually(180, "the run Stopped", || async {
        let status = s.runs.get("sim").await.ok()?.status?;
        (status.phase == Some(abc_operator::api::Phase::Stopped)).then_some(())
    })
    .await;
    eventually(60, "workers scaled to zero", || async {
        let d = deployments.get("sim-workers").await.ok()?;
        (d.spec?.replicas == Some(0)).then_some(())
    })
    .await;
    s.runs
        .get("sim")
        .await
        .unwrap()
        .status
        .unwrap()
        .progress
        .unwrap()
}

/// A stop asked of a run whose master runs `abc_operator.run`: the master ends the analysis
/// once the generation being sampled is stored (its workers finish it), then the run is
/// Stopped and gives its workers back; the stop cannot be undone.
#[tokio::test]
async fn a_stopped_runs_master_ends_after_the_generation_being_sampled() {
    let s = setup("wk-stop", 3, "10m", "0.05").await;
    let _controller = ControllerProcess::start(&s.ns.name);
    let _kubelet = s.kubelet();
    let mut master = s.master_with(150, 20, &[("PROTO_RUN", "module")]);
    let at_stop = stop_inside_a_generation(&s).await;
    s.wait_for_event("Stopping").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    let ended = loop {
        if let Some(status) = master.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the master did not end"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert!(ended.success(), "the master ends cleanly: {ended}");
    stopped(&s).await;
    let inference = s.runs.get("sim").await.unwrap().status.unwrap().inference;
    let last_stored = inference.and_then(|i| i.generation);
    assert!(
        last_stored >= at_stop.generation && last_stored < Some(20),
        "the last stored generation {last_stored:?}, asked to stop in {:?}",
        at_stop.generation
    );
    s.wait_for_event("Stopped").await;

    let undo = serde_json::json!({"spec": {"stop": false}});
    let refused = s
        .runs
        .patch(
            "sim",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&undo),
        )
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("spec.stop cannot be undone"),
        "{refused}"
    );
}

/// A master that does not run `abc_operator.run` cannot be asked to stop: the workers get
/// pyABC's stop, finish the generation and leave; then the run is Stopped.
#[tokio::test]
async fn a_stopped_runs_workers_finish_the_generation_when_the_master_cannot_be_asked() {
    let s = setup("wk-stop-plain", 3, "10m", "0.05").await;
    let _controller = ControllerProcess::start(&s.ns.name);
    let _kubelet = s.kubelet();
    let mut master = s.master(150, 6);
    let at_stop = stop_inside_a_generation(&s).await;
    let p = stopped(&s).await;
    let finished_generation = p.generation > at_stop.generation || p.accepted >= p.required;
    assert!(
        finished_generation,
        "workers left before finishing generation {:?}: {p:?}",
        at_stop.generation
    );
    assert_eq!(p.active_workers, 0);
    let _ = master.kill();
    let _ = master.wait();
}

/// A run without a master whose Redis holds no analysis for its `idleTimeoutSeconds` is
/// Stopped and gives its workers back, and an Event says why.
#[tokio::test]
async fn a_run_idle_for_its_timeout_is_stopped() {
    let s = setup("wk-idle", 2, "10m", "0").await;
    let _controller = ControllerProcess::start(&s.ns.name);
    let _kubelet = s.kubelet();
    s.patch_run(serde_json::json!({"spec": {"idleTimeoutSeconds": 5}}))
        .await;
    let since = eventually(60, "the run idle", || async {
        s.runs.get("sim").await.ok()?.status?.idle_since
    })
    .await;
    stopped(&s).await;
    s.wait_for_event("Stopped").await;
    let events = s.events("Stopped").await;
    let note = events[0].message.clone().unwrap_or_default();
    assert!(note.contains("idleTimeoutSeconds"), "{note}");
    let status = s.runs.get("sim").await.unwrap().status.unwrap();
    assert_eq!(status.idle_since, Some(since), "idle since then");
}

#[tokio::test]
async fn a_failed_master_leaves_no_stale_analysis_lock_for_its_retry() {
    let s = setup("wk-lock", 0, "10m", "0").await;
    // A master that died mid-run left pyABC's lock behind.
    let mut conn = support::redis::connect(&s.redis).await;
    let _: () = redis::AsyncCommands::set(&mut conn, "analysis_id", "dead-master")
        .await
        .unwrap();
    // An emptyDir: the fake node has no volume provisioner, and a pod on an unbound claim is
    // never scheduled (the results claim is proven on the real node).
    let patch = serde_json::json!({"spec": {"master": {"command": ["python", "gaussian.py"], "backoffLimit": 2,
        "results": {"volume": "EmptyDir"}}}});
    s.patch_run(patch).await;
    let _controller = ControllerProcess::start(&s.ns.name);

    let pods: Api<Pod> = Api::namespaced(s.client.clone(), &s.ns.name);
    // The master's container fails (as a kubelet would report it).
    let name = running_pod_whose_status_the_test_sets(&pods, "master").await;
    let failed = serde_json::json!({"status": {"phase": "Failed", "containerStatuses": [{
        "name": "master", "image": "worker", "imageID": "", "ready": false, "restartCount": 0,
        "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}]}});
    pods.patch_status(
        &name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&failed),
    )
    .await
    .unwrap();

    eventually(60, "the stale analysis lock cleared", || {
        let mut conn = conn.clone();
        async move {
            let id: Option<String> = redis::AsyncCommands::get(&mut conn, "analysis_id")
                .await
                .ok()?;
            id.is_none().then_some(())
        }
    })
    .await;
    s.wait_for_event("ClearedAnalysisLock").await;
}

/// Each lost pod is its own RepairedLostWorker Event, about that pod: kube's event recorder
/// would otherwise fold them into one series that names only the first pod. A pod with two
/// worker processes is one Event naming both repaired ledgers.
#[tokio::test]
async fn every_lost_pod_gets_its_own_repair_event_naming_it() {
    let s = setup("wk-events", 0, "10m", "0").await;
    let mut conn = abc_operator::protocol::connect(&s.redis.endpoint())
        .await
        .unwrap();
    // A generation with three workers inside: two processes of pod a, one of pod b. Both pods
    // are gone (force-deleted, say); their ledgers are left behind.
    for (key, value) in [
        ("analysis_id", "ana"),
        ("generation_ana", "0"),
        ("n_worker_ana_0", "3"),
    ] {
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let ledgers = [
        ("sim-workers-gone-a-0", "sim-workers-gone-a"),
        ("sim-workers-gone-a-1", "sim-workers-gone-a"),
        ("sim-workers-gone-b-0", "sim-workers-gone-b"),
    ];
    for (id, pod) in ledgers {
        let _: () = redis::cmd("HSET")
            .arg(abc_operator::protocol::keys::ledger_key(id))
            .arg(
                &[
                    "worker",
                    pod,
                    "analysis",
                    "ana",
                    "generation",
                    "0",
                    "joined",
                    "1",
                ][..],
            )
            .query_async(&mut conn)
            .await
            .unwrap();
        let _: () = redis::cmd("SADD")
            .arg(abc_operator::protocol::keys::LEDGER_SET)
            .arg(id)
            .query_async(&mut conn)
            .await
            .unwrap();
    }

    let _controller = ControllerProcess::start(&s.ns.name);
    // As `kubectl get events` lists them (events.k8s.io, the API the recorder writes).
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(s.client.clone(), &s.ns.name);
    let repairs = eventually(60, "a repair Event for each lost pod", || async {
        let repairs: Vec<_> = events
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("RepairedLostWorker"))
            .collect();
        (repairs.len() >= 2).then_some(repairs)
    })
    .await;
    let mut about: Vec<(String, String)> = repairs
        .iter()
        .map(|e| {
            let pod = e.related.as_ref().and_then(|r| r.name.clone());
            (pod.unwrap_or_default(), e.note.clone().unwrap_or_default())
        })
        .collect();
    about.sort();
    let pods: Vec<&str> = about.iter().map(|(pod, _)| pod.as_str()).collect();
    assert_eq!(
        pods,
        ["sim-workers-gone-a", "sim-workers-gone-b"],
        "{repairs:#?}"
    );
    for (pod, note) in &about {
        assert!(
            note.contains(&format!("worker pod {pod} was lost")),
            "{note}"
        );
    }
    let (_, note_a) = &about[0];
    assert!(
        note_a.contains("sim-workers-gone-a-0") && note_a.contains("sim-workers-gone-a-1"),
        "both processes of pod a are in its Event: {note_a}"
    );
    assert!(
        repairs.iter().all(|e| e.series.is_none()),
        "a repair was folded into a series: {repairs:#?}"
    );
    let status = eventually(30, "lostWorkers 3", || async {
        let status = s.runs.get("sim").await.ok()?.status?;
        (status.lost_workers == 3).then_some(status)
    })
    .await;
    assert_eq!(status.lost_workers, 3);
}

/// A worker image the node cannot pull is a condition and one Warning Event naming the image,
/// and the status does not change while the kubelet alternates between ErrImagePull and
/// ImagePullBackOff.
#[tokio::test]
async fn an_image_that_cannot_be_pulled_is_a_condition_and_one_event() {
    let s = setup("wk-image", 1, "10m", "0").await;
    let controller = ControllerProcess::start(&s.ns.name);
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), &s.ns.name);
    // The kubelet's view of a missing image.
    let name = running_pod_whose_status_the_test_sets(&pods, "worker").await;
    let pull_error = "rpc error: code = NotFound desc = failed to pull and unpack image \"docker.io/library/worker:latest\": not found";
    let waiting = |reason: &str, message: String| {
        serde_json::json!({"status": {"phase": "Pending", "containerStatuses": [{
            "name": "worker", "image": "worker", "imageID": "", "ready": false,
            "restartCount": 0, "state": {"waiting": {"reason": reason, "message": message}}}]}})
    };
    pods.patch_status(
        &name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&waiting("ErrImagePull", pull_error.to_string())),
    )
    .await
    .unwrap();

    let run = eventually(
        60,
        "WorkersReady=False with reason ImagePullBackOff",
        || async {
            let run = s.runs.get("sim").await.ok()?;
            let status = run.status.as_ref()?;
            let workers = status
                .conditions
                .iter()
                .find(|c| c.type_ == "WorkersReady")?;
            (workers.reason == "ImagePullBackOff").then_some(run)
        },
    )
    .await;
    let status = run.status.as_ref().unwrap();
    let condition = |type_: &str| status.conditions.iter().find(|c| c.type_ == type_).unwrap();
    assert!(
        condition("WorkersReady").message.contains(&format!(
            "pod {name}: container \"worker\" cannot pull image \"worker\": {pull_error}"
        )),
        "{status:?}"
    );
    let degraded = condition("Degraded");
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "ImagePullBackOff")
    );

    // Let what follows from the first report settle (the Deployment's counts, say).
    let mut run = run;
    loop {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let now = s.runs.get("sim").await.unwrap();
        if now.metadata.resource_version == run.metadata.resource_version {
            break;
        }
        run = now;
    }
    // The kubelet backs off: same problem, so the run's status is not written again.
    pods.patch_status(
        &name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&waiting(
            "ImagePullBackOff",
            format!("Back-off pulling image \"worker\": ErrImagePull: {pull_error}"),
        )),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let later = s.runs.get("sim").await.unwrap();
    assert_eq!(
        later.metadata.resource_version, run.metadata.resource_version,
        "the same problem rewrote the status: {:?}",
        later.status
    );
    // No hot loop: a run held up by its image is looked at now and then, and on pod changes.
    let reconciles = || controller.metric("abc_operator_reconciles_total");
    let before = reconciles().await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = reconciles().await.unwrap();
    assert!(
        after - before <= 3.0,
        "{} reconciles in 5 s",
        after - before
    );
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(s.client.clone(), &s.ns.name);
    let warnings: Vec<_> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("ImagePullBackOff"))
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    let warning = &warnings[0];
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    assert!(
        warning.series.is_none(),
        "published more than once: {warning:#?}"
    );
    assert_eq!(
        warning.related.as_ref().and_then(|r| r.name.as_deref()),
        Some(name.as_str())
    );
    assert!(
        warning
            .note
            .as_deref()
            .unwrap_or_default()
            .contains("cannot pull image \"worker\""),
        "{warning:#?}"
    );

    // Fixed (say, the image was loaded onto the node): the problem is gone.
    let running = serde_json::json!({"status": {"phase": "Running", "conditions": [
        {"type": "Ready", "status": "True"}], "containerStatuses": [{
        "name": "worker", "image": "worker", "imageID": "", "ready": true, "restartCount": 0,
        "started": true, "state": {"running": {"startedAt": "2026-01-01T10:00:00Z"}}}]}});
    pods.patch_status(
        &name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&running),
    )
    .await
    .unwrap();
    eventually(60, "Degraded=False once the image runs", || async {
        let status = s.runs.get("sim").await.ok()?.status?;
        let degraded = status.conditions.iter().find(|c| c.type_ == "Degraded")?;
        (degraded.status == "False").then_some(())
    })
    .await;
}

/// One run's external Redis is hostile (another tenant's server, answering the controller's
/// reads with replies nested a million levels deep, a 100 GB value, or nothing, one per
/// connection) among 20 runs. That run gets a condition naming the problem and the server,
/// and the controller lives on. The live run beside it keeps its pace: its status follows
/// each generation, and a worker lost mid-generation is repaired once. The figures are
/// printed; the bounds asserted are far below the hostile reads' 3 to 10 s timeouts, which is
/// what the live run would wait if those reads held it up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_redis_harms_only_its_own_run() {
    use abc_operator::api::AbcRun;
    use abc_operator::local::redis_server::{RedisServer, RedisServerOptions};
    use abc_operator::protocol::{self, Snapshot};
    use kube::api::PostParams;
    use std::time::Instant;
    use support::hostile_redis::{Hostile, fake_redis};
    use support::run::create_password_secret;

    let s = setup("wk-hostile", 3, "10m", "0.1").await;
    let hostile_port = fake_redis(Hostile::Rotating).await;
    create_password_secret(&s.client, &s.ns.name, "hostile-pw", "any").await;
    let idle = RedisServer::start(RedisServerOptions::default()).expect("redis-server starts");
    create_password_secret(&s.client, &s.ns.name, "idle-pw", idle.password()).await;
    let external = |name: &str, port: u16, secret: &str| -> AbcRun {
        serde_yaml::from_str(&format!(
            "{{apiVersion: abc-operator.dev/v1alpha1, kind: AbcRun, metadata: {{name: {name}}},
              spec: {{image: worker, workers: {{replicas: 0}},
                      redis: {{external: {{host: 127.0.0.1, port: {port},
                                           passwordSecret: {{name: {secret}}}}}}}}}}}"
        ))
        .unwrap()
    };
    let mut others = vec![external("hostile", hostile_port, "hostile-pw")];
    others.extend((0..18).map(|i| external(&format!("idle-{i}"), idle.port(), "idle-pw")));
    for run in &others {
        s.runs.create(&PostParams::default(), run).await.unwrap();
    }
    let mut controller = ControllerProcess::start(&s.ns.name);
    let _kubelet = s.kubelet();

    // The hostile run: a condition naming the problem and the server.
    let address = format!("127.0.0.1:{hostile_port}");
    let message = eventually(60, "the hostile run's Degraded condition", || async {
        let status = s.runs.get("hostile").await.ok()?.status?;
        let degraded = status.conditions.iter().find(|c| c.type_ == "Degraded")?;
        (degraded.status == "True" && degraded.reason == "RedisUnavailable")
            .then(|| degraded.message.clone())
    })
    .await;
    assert!(message.contains(&address), "{message}");

    // The live run: each generation's start in its Redis until its status shows it.
    let mut master = s.master(60, 4);
    let mut conn = protocol::connect(&s.redis.endpoint()).await.unwrap();
    let mut lags = Vec::new();
    let mut pending: Option<(i64, Instant)> = None;
    let mut repair: Option<(String, Instant, Option<Duration>)> = None;
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), &s.ns.name);
    let deadline = Instant::now() + Duration::from_secs(240);
    while master.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the live run did not finish");
        let snapshot = Snapshot::read(&mut conn).await.unwrap();
        let status = s.runs.get("sim").await.unwrap().status.unwrap_or_default();
        let shown = status.progress.as_ref().and_then(|p| p.generation);
        if let Some(t) = snapshot.generation
            && pending.is_none_or(|(seen, _)| t > seen)
            && shown < Some(t)
        {
            pending = Some((t, Instant::now()));
        }
        if let Some((t, since)) = pending
            && shown >= Some(t)
        {
            lags.push(since.elapsed());
            pending = None;
        }
        // once, inside generation 1: a worker pod lost mid-generation
        if repair.is_none()
            && let Some(victim) = support::run::worker_inside(&snapshot, 1..=1)
        {
            delete_now(&pods, &victim).await;
            repair = Some((victim, Instant::now(), None));
        }
        if let Some((_, since, counted @ None)) = &mut repair
            && status.lost_workers >= 1
        {
            *counted = Some(since.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(master.wait().unwrap().success(), "the live run's master");
    let (victim, _, repaired_after) = repair.expect("a worker was lost inside generation 1");
    let repaired_after = match repaired_after {
        Some(after) => after,
        None => {
            let lost = eventually(30, "the repair counted", || async {
                let status = s.runs.get("sim").await.ok()?.status?;
                (status.lost_workers >= 1).then_some(status.lost_workers)
            })
            .await;
            panic!("the repair of {victim} was counted ({lost}) only after the run ended")
        }
    };
    eprintln!(
        "beside a hostile Redis: status lag per generation {lags:?}, repair of {victim} \
         counted after {repaired_after:?}"
    );
    assert!(lags.len() >= 3, "generations seen: {lags:?}");
    assert!(
        lags.iter().all(|lag| *lag < Duration::from_secs(3)),
        "status lag: {lags:?}"
    );
    assert!(
        repaired_after < Duration::from_secs(3),
        "repair counted after {repaired_after:?}"
    );
    let status = s.runs.get("sim").await.unwrap().status.unwrap();
    assert_eq!(status.lost_workers, 1, "repaired once");
    assert_eq!(controller.exited(), None, "the controller lives on");
    drop(idle);
}

/// What the master records after each stored generation reaches the status (`kubectl get abc`'s
/// EPSILON column) and the run's records ConfigMap, which keeps them after the run's Redis is
/// gone; a record the operator cannot read is named in the status and does not hide the others.
#[tokio::test]
async fn generation_records_reach_the_status_and_the_runs_configmap() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use support::redis::{push_records, record};
    let s = setup("wk-records", 0, "10m", "0").await;
    let _controller = ControllerProcess::start(&s.ns.name);
    let mut conn = support::redis::connect(&s.redis).await;
    push_records(&mut conn, vec![record(0, 2.0), record(1, 1.0)]).await;
    let inference = |generations: i64| {
        let runs = s.runs.clone();
        async move {
            eventually(
                60,
                &format!("{generations} records in the status"),
                || async {
                    let status = runs.get("sim").await.ok()?.status?;
                    status.inference.filter(|i| i.generations == generations)
                },
            )
            .await
        }
    };
    let figures = inference(2).await;
    assert_eq!(figures.generation, Some(1));
    assert_eq!(figures.epsilon, Some(1.0));
    assert_eq!(figures.evaluations, 401);
    assert_eq!(figures.parameters[0].mean, Some(1.0));
    assert_eq!(
        figures.records_config_map.as_deref(),
        Some("sim-generations")
    );

    push_records(&mut conn, vec![record(2, 0.5), "{\"t\": 3}".into()]).await;
    let figures = inference(4).await;
    assert_eq!((figures.generation, figures.epsilon), (Some(2), Some(0.5)));
    assert!(
        figures
            .message
            .as_deref()
            .is_some_and(|m| m.contains("not a generation record")),
        "{figures:?}"
    );
    let config_maps: Api<ConfigMap> = Api::namespaced(s.client.clone(), &s.ns.name);
    let data = config_maps
        .get("sim-generations")
        .await
        .unwrap()
        .data
        .unwrap();
    assert_eq!(
        data.keys().collect::<Vec<_>>(),
        ["gen-00000.json", "gen-00001.json", "gen-00002.json"]
    );
    let stored: abc_operator::protocol::inference::GenerationRecord =
        serde_json::from_str(&data["gen-00002.json"]).unwrap();
    assert_eq!(stored.epsilon, Some(0.5));

    // The run's Redis loses everything (a restart): the status and the ConfigMap keep them.
    redis::cmd("FLUSHALL")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = s.runs.get("sim").await.unwrap().status.unwrap();
    assert_eq!(status.inference.unwrap().generations, 4);
    assert_eq!(
        config_maps
            .get("sim-generations")
            .await
            .unwrap()
            .data
            .unwrap()
            .len(),
        3
    );
}
