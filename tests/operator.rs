//! The AbcRun reconciler against a real control plane: the CRD from `crds/`, the real
//! `abc-operator controller` process, kube-controller-manager's Deployment, Job, GC and HPA
//! controllers, and kwok pods.

mod support;

use abc_operator::api::AbcRun;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use std::collections::BTreeMap;
use support::cluster::{
    self, TestNamespace, events_published, events_with_reason, eventually, install_crd, kubectl,
    output_with_stdin,
};
use support::controller::ControllerProcess;

/// `kubectl apply -f -` of a manifest in a namespace; returns (success, stderr).
fn kubectl_apply(namespace: &str, manifest: &str) -> (bool, String) {
    let mut cmd = kubectl();
    cmd.args(["apply", "-n", namespace, "-f", "-"]);
    let out = output_with_stdin(cmd, manifest);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const GAUSSIAN: &str = r#"
apiVersion: abc-operator.dev/v1alpha1
kind: AbcRun
metadata: {name: gaussian}
spec:
  image: abc-example-gaussian:0.1.0
  workers: {replicas: 3, runtime: 10m}
  master: {command: [python, gaussian.py]}
"#;

async fn run_status(runs: &Api<AbcRun>, name: &str) -> Option<abc_operator::api::AbcRunStatus> {
    runs.get(name).await.ok()?.status
}

fn labels_of_run(name: &str) -> ListParams {
    ListParams::default().labels(&format!("abc-operator.dev/run={name}"))
}

#[tokio::test]
async fn example_run_gets_its_objects_pods_status_and_is_garbage_collected() {
    install_crd();
    let client = cluster::client().await;
    let ns = TestNamespace::new(&client, "op-example").await;
    let _controller = ControllerProcess::start(&ns.name);
    let (ok, err) = kubectl_apply(&ns.name, GAUSSIAN);
    assert!(ok, "example AbcRun rejected: {err}");

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let workers = eventually(60, "the worker Deployment", || async {
        deployments.get_opt("gaussian-workers").await.ok().flatten()
    })
    .await;
    let pod_spec = workers
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .clone()
        .unwrap();
    assert_eq!(workers.spec.as_ref().unwrap().replicas, Some(3));
    let container = &pod_spec.containers[0];
    let password_env = container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "ABC_REDIS_PASSWORD")
        .unwrap();
    assert!(
        password_env.value.is_none(),
        "the password must come from a Secret reference"
    );
    assert!(
        password_env
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .is_some()
    );
    let security = container.security_context.as_ref().unwrap();
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(
        pod_spec.security_context.as_ref().unwrap().run_as_non_root,
        Some(true)
    );

    // Every other owned object exists, owned by the run.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let secret = eventually(30, "the generated password Secret", || async {
        secrets
            .list(&labels_of_run("gaussian"))
            .await
            .ok()?
            .items
            .into_iter()
            .next()
    })
    .await;
    let password = secret
        .data
        .as_ref()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .0
        .clone();
    assert!(password.len() >= 16, "generated password is too short");
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns.name);
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns.name);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    assert_eq!(
        services
            .list(&labels_of_run("gaussian"))
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    assert_eq!(
        policies
            .list(&labels_of_run("gaussian"))
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    assert_eq!(
        jobs.list(&labels_of_run("gaussian"))
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    assert_eq!(
        config_maps
            .list(&labels_of_run("gaussian"))
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    for d in deployments.list(&labels_of_run("gaussian")).await.unwrap() {
        let owner = &d.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("AbcRun", "gaussian")
        );
    }

    // Pods run on the kwok node and status follows.
    let runs: Api<AbcRun> = Api::namespaced(client.clone(), &ns.name);
    let status = eventually(90, "phase Running with 3 ready workers", || async {
        let s = run_status(&runs, "gaussian").await?;
        (s.phase == Some(abc_operator::api::Phase::Running) && s.ready_replicas == 3).then_some(s)
    })
    .await;
    assert_eq!(status.workers.as_deref(), Some("3/3"));
    let selector = status.selector.clone().unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    assert_eq!(
        pods.list(&ListParams::default().labels(&selector))
            .await
            .unwrap()
            .items
            .len(),
        3
    );
    for ty in ["RedisReady", "WorkersReady", "MasterRunning"] {
        let c = status
            .conditions
            .iter()
            .find(|c| c.type_ == ty)
            .unwrap_or_else(|| panic!("no {ty} condition"));
        assert_eq!(c.status, "True", "{ty}: {}", c.message);
    }

    // Deleting the run deletes everything it owned.
    runs.delete("gaussian", &DeleteParams::foreground())
        .await
        .unwrap();
    eventually(90, "owned objects garbage-collected", || async {
        owned_objects(&client, &ns.name)
            .await
            .is_empty()
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn kubectl_scale_and_an_hpa_drive_the_workers() {
    install_crd();
    let client = cluster::client().await;
    let ns = TestNamespace::new(&client, "op-scale").await;
    let _controller = ControllerProcess::start(&ns.name);
    let (ok, err) = kubectl_apply(&ns.name, GAUSSIAN);
    assert!(ok, "{err}");
    let runs: Api<AbcRun> = Api::namespaced(client.clone(), &ns.name);
    eventually(60, "status.replicas 3", || async {
        (run_status(&runs, "gaussian").await?.replicas == 3).then_some(())
    })
    .await;

    let out = kubectl()
        .args(["scale", "-n", &ns.name, "abcrun/gaussian", "--replicas=5"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl scale: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    eventually(60, "worker Deployment at 5", || async {
        let d = deployments.get("gaussian-workers").await.ok()?;
        (d.spec?.replicas == Some(5)).then_some(())
    })
    .await;
    eventually(60, "status.replicas 5", || async {
        (run_status(&runs, "gaussian").await?.replicas == 5).then_some(())
    })
    .await;

    // The real HPA controller reads the AbcRun's scale subresource.
    let hpa = r#"
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: gaussian}
spec:
  scaleTargetRef: {apiVersion: abc-operator.dev/v1alpha1, kind: AbcRun, name: gaussian}
  minReplicas: 1
  maxReplicas: 10
  metrics:
  - type: Resource
    resource: {name: cpu, target: {type: Utilization, averageUtilization: 80}}
"#;
    let (ok, err) = kubectl_apply(&ns.name, hpa);
    assert!(ok, "HPA rejected: {err}");
    let hpas: Api<k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler> =
        Api::namespaced(client.clone(), &ns.name);
    // On a fresh cluster the HPA controller may not know the kind yet (its discovery of a CRD
    // installed moments ago lags: "no matches for kind AbcRun"); it must come to AbleToScale.
    let told = std::sync::Mutex::new(None);
    eventually(90, "HPA condition AbleToScale True", || async {
        let h = hpas.get("gaussian").await.ok()?;
        let able = h
            .status?
            .conditions?
            .into_iter()
            .find(|c| c.type_ == "AbleToScale")?;
        if able.status != "True" {
            // shown with the test's output if it never turns True, once per message
            let mut told = told.lock().unwrap();
            if *told != able.message {
                eprintln!("HPA cannot scale the AbcRun (yet): {:?}", able.message);
                *told = able.message;
            }
            return None;
        }
        Some(())
    })
    .await;
}

/// A Job's pod template cannot change once made: a run whose `spec.master` changes while its
/// master Job exists keeps that Job as it is, says so once (`MasterPodKept`, with what to do),
/// and goes on being reconciled, instead of failing every reconcile on the Job's write.
#[tokio::test]
async fn a_changed_master_keeps_its_job_is_said_once_and_the_run_goes_on() {
    install_crd();
    let client = cluster::client().await;
    let ns = TestNamespace::new(&client, "op-master-kept").await;
    let _controller = ControllerProcess::start(&ns.name);
    let (ok, err) = kubectl_apply(&ns.name, GAUSSIAN);
    assert!(ok, "{err}");
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns.name);
    let runs: Api<AbcRun> = Api::namespaced(client.clone(), &ns.name);
    let command = |job: Job| job.spec?.template.spec?.containers.first()?.command.clone();
    eventually(60, "the master Job and status.replicas 3", || async {
        jobs.get_opt("gaussian-master").await.ok().flatten()?;
        (run_status(&runs, "gaussian").await?.replicas == 3).then_some(())
    })
    .await;

    let changed = GAUSSIAN
        .replace("[python, gaussian.py]", "[python, other.py]")
        .replace("replicas: 3", "replicas: 4");
    let (ok, err) = kubectl_apply(&ns.name, &changed);
    assert!(ok, "{err}");
    // The status is written after the owned objects: it follows only if the Job's write passed.
    eventually(60, "status.replicas 4 after the master changed", || async {
        (run_status(&runs, "gaussian").await?.replicas == 4).then_some(())
    })
    .await;
    let kept = events_published(&client, &ns.name, "MasterPodKept", 1).await;
    assert_eq!(kept.len(), 1, "{kept:#?}");
    let note = kept[0].note.clone().unwrap_or_default();
    assert!(
        note.contains("kubectl delete job gaussian-master"),
        "{note}"
    );
    let job = jobs.get("gaussian-master").await.unwrap();
    assert_eq!(
        command(job),
        Some(vec!["python".to_string(), "gaussian.py".to_string()]),
        "the Job's pod is the one it was made with"
    );
    let errors = events_with_reason(&client, &ns.name, "ReconcileError").await;
    assert!(errors.is_empty(), "{errors:#?}");
}

#[tokio::test]
async fn a_restarted_controller_sends_no_write_for_an_unchanged_run() {
    install_crd();
    let client = cluster::client().await;
    let ns = TestNamespace::new(&client, "op-restart").await;
    let controller = ControllerProcess::start(&ns.name);
    let (ok, err) = kubectl_apply(&ns.name, GAUSSIAN);
    assert!(ok, "{err}");
    let runs: Api<AbcRun> = Api::namespaced(client.clone(), &ns.name);
    eventually(90, "a steady Running run", || async {
        let s = run_status(&runs, "gaussian").await?;
        (s.phase == Some(abc_operator::api::Phase::Running) && s.ready_replicas == 3).then_some(())
    })
    .await;
    // Once nothing changes between two looks 3 s apart, record every object's resourceVersion.
    let mut versions_before = resource_versions(&client, &ns.name).await;
    for _ in 0..20 {
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        let now = resource_versions(&client, &ns.name).await;
        if now == versions_before {
            break;
        }
        versions_before = now;
    }
    controller.stop();

    let restarted = ControllerProcess::start(&ns.name);
    // Wait until the new controller has reconciled the run with its caches filled: its first
    // reconcile, and then 5 s (a reconcile that came before the caches had listed everything is
    // tried again after 0.5 s). Not "two reconciles": the start-up's watch events may fold into
    // one, and a settled, polled run is next looked at only after a minute.
    eventually(60, "a reconcile by the restarted controller", || async {
        let n = restarted.metric("abc_operator_reconciles_total").await?;
        (n >= 1.0).then_some(())
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    let versions_after = resource_versions(&client, &ns.name).await;
    assert_eq!(
        versions_before, versions_after,
        "the restarted controller wrote to unchanged objects"
    );
    // Not even a write that changes nothing (a no-op apply still costs the API server a
    // decode, admission and a comparison): none for a minute of steady reconciles.
    tokio::time::sleep(std::time::Duration::from_secs(60)).await;
    let reconciles = restarted.metric("abc_operator_reconciles_total").await;
    let reads = restarted
        .metric("abc_operator_api_requests_total{verb=\"read\",resource=\"abcruns\"}")
        .await;
    // The watches' first lists are reads: the counter counts.
    assert!(
        reads.is_some_and(|n| n > 0.0),
        "no request counted: {reads:?}"
    );
    assert_eq!(
        restarted.writes_sent().await,
        Some(0.0),
        "the restarted controller sent write requests to a settled run \
         ({reconciles:?} reconciles, {reads:?} reads); its log:\n{}",
        restarted.logs()
    );
}

/// resourceVersion of every object the run "gaussian" owns (pods included), by kind/name.
async fn owned_objects(client: &Client, namespace: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let lp = labels_of_run("gaussian");
    macro_rules! collect {
        ($t:ty, $kind:literal) => {
            for o in Api::<$t>::namespaced(client.clone(), namespace)
                .list(&lp)
                .await
                .unwrap()
            {
                out.insert(
                    format!("{}/{}", $kind, o.name_any()),
                    o.resource_version().unwrap(),
                );
            }
        };
    }
    collect!(Deployment, "Deployment");
    collect!(Secret, "Secret");
    collect!(Service, "Service");
    collect!(Job, "Job");
    collect!(ConfigMap, "ConfigMap");
    collect!(NetworkPolicy, "NetworkPolicy");
    collect!(Pod, "Pod");
    out
}

/// resourceVersion of the run and of every object it owns.
async fn resource_versions(client: &Client, namespace: &str) -> BTreeMap<String, String> {
    let mut out = owned_objects(client, namespace).await;
    let run = Api::<AbcRun>::namespaced(client.clone(), namespace)
        .get("gaussian")
        .await
        .unwrap();
    out.insert("AbcRun/gaussian".into(), run.resource_version().unwrap());
    out
}

#[tokio::test]
async fn invalid_manifests_are_rejected_with_a_clear_message() {
    install_crd();
    let client = cluster::client().await;
    let ns = TestNamespace::new(&client, "op-invalid").await;
    let cases = [
        ("workers: {replicas: -1}\n  image: i", "replicas"),
        ("workers: {runtime: abc}\n  image: i", "runtime"),
        (
            "image: i\n  redis: {managed: {}, external: {host: h, passwordSecret: {name: s}}}",
            "either managed or external",
        ),
        ("workers: {replicas: 1}", "image"),
        (
            "image: i\n  workers: {volumes: [{name: tmp, emptyDir: {}}]}",
            "tmp, abc-operator and results are the operator's volume names",
        ),
        (
            "image: i\n  master: {command: [m], volumeMounts: [{name: d, mountPath: /results}]}",
            "mount your volumes elsewhere",
        ),
        (
            "image: i\n  redis: {managed: {podLabels: {abc-operator.dev/run: other}}}",
            "are the run's own",
        ),
        (
            "image: i\n  idleTimeoutSeconds: 60\n  master: {command: [m]}",
            "spec.idleTimeoutSeconds is for a run without spec.master",
        ),
        (
            "image: i\n  master: {command: [m], resultsClaimName: c, results: {size: 1Gi}}",
            "either resultsClaimName",
        ),
        (
            "image: i\n  master: {command: [m], results: {size: lots}}",
            "quantity",
        ),
        (
            "image: i\n  workers: {env: [{name: ABC_REDIS_HOST, value: elsewhere}]}",
            "spec.workers.env: ABC_REDIS_HOST, ABC_REDIS_PORT",
        ),
        (
            "image: i\n  master: {command: [m], env: [{name: ABC_RESULTS_DIR, value: /data}]}",
            "are set by the operator",
        ),
        (
            "image: i\n  master: {command: [m], env: [{name: PYTHONPATH, valueFrom: {configMapKeyRef: {name: c, key: k}}}]}",
            "PYTHONPATH must be a value",
        ),
    ];
    for (spec, expected) in cases {
        let manifest = format!(
            "apiVersion: abc-operator.dev/v1alpha1\nkind: AbcRun\nmetadata: {{name: bad}}\nspec:\n  {spec}\n"
        );
        let (ok, err) = kubectl_apply(&ns.name, &manifest);
        assert!(!ok, "accepted an invalid AbcRun: {spec}");
        assert!(
            err.contains(expected),
            "the error for {spec:?} does not mention {expected:?}: {err}"
        );
    }
}

/// A run with a master makes its results claim; it goes with the run, unless the run asked to
/// keep it: then it stays, naming the run that made it. The claim's storage cannot change once
/// made (the API server says so), `keep` can.
#[tokio::test]
async fn the_results_claim_goes_with_the_run_unless_kept() {
    use k8s_openapi::api::core::v1::PersistentVolumeClaim;
    install_crd();
    let client = cluster::client().await;
    let ns = TestNamespace::new(&client, "op-claims").await;
    let _controller = ControllerProcess::start(&ns.name);
    let manifest = |name: &str, results: &str| {
        format!(
            "apiVersion: abc-operator.dev/v1alpha1\nkind: AbcRun\nmetadata: {{name: {name}}}\n\
             spec:\n  image: i\n  workers: {{replicas: 0}}\n  master: {{command: [m], results: {results}}}\n"
        )
    };
    for (name, results) in [("owned", "{size: 2Gi}"), ("kept", "{keep: true}")] {
        let (ok, err) = kubectl_apply(&ns.name, &manifest(name, results));
        assert!(ok, "{err}");
    }
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns.name);
    for name in ["owned-results", "kept-results"] {
        eventually(60, name, || async {
            claims.get_opt(name).await.ok().flatten()
        })
        .await;
    }
    let owned = claims.get("owned-results").await.unwrap();
    assert_eq!(
        owned.spec.unwrap().resources.unwrap().requests.unwrap()["storage"].0,
        "2Gi"
    );

    let (ok, err) = kubectl_apply(&ns.name, &manifest("owned", "{size: 5Gi}"));
    assert!(!ok && err.contains("only keep can change"), "{err}");

    let runs: Api<AbcRun> = Api::namespaced(client.clone(), &ns.name);
    for name in ["owned", "kept"] {
        runs.delete(name, &DeleteParams::foreground())
            .await
            .unwrap();
    }
    eventually(90, "the owned claim gone with its run", || async {
        claims
            .get_opt("owned-results")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    eventually(60, "both runs gone", || async {
        runs.list(&ListParams::default())
            .await
            .ok()?
            .items
            .is_empty()
            .then_some(())
    })
    .await;
    let kept = claims
        .get("kept-results")
        .await
        .expect("the kept claim stays");
    let made_by = &kept.annotations()["abc-operator.dev/made-by-run"];
    assert!(
        made_by.starts_with(&format!("{}/kept ", ns.name)),
        "{made_by}"
    );
}

#[tokio::test]
async fn a_missing_password_secret_is_a_condition_not_a_crash_or_a_hot_loop() {
    install_crd();
    let client = cluster::client().await;
    let ns = TestNamespace::new(&client, "op-secret").await;
    let controller = ControllerProcess::start(&ns.name);
    let runs: Api<AbcRun> = Api::namespaced(client.clone(), &ns.name);
    let run: AbcRun = serde_yaml::from_str(
        "apiVersion: abc-operator.dev/v1alpha1\nkind: AbcRun\nmetadata: {name: ext}\nspec:\n  image: i\n  redis: {external: {host: 127.0.0.1, port: 1, passwordSecret: {name: nope}}}\n",
    )
    .unwrap();
    runs.create(&PostParams::default(), &run).await.unwrap();
    let degraded = eventually(60, "a Degraded condition", || async {
        let s = run_status(&runs, "ext").await?;
        s.conditions
            .into_iter()
            .find(|c| c.type_ == "Degraded" && c.status == "True")
    })
    .await;
    assert!(
        degraded.message.contains("\"nope\""),
        "{}",
        degraded.message
    );
    assert!(
        degraded.message.contains("does not exist"),
        "{}",
        degraded.message
    );

    // No hot loop. The run's own objects and pods start with a burst of watch events (more
    // or fewer, later or sooner, with the cluster's load); once that has passed, the run is
    // looked at again only at the retry interval for problems the user must fix (15 s).
    let before = controller
        .reconciles_once_settled(std::time::Duration::from_secs(3), 60)
        .await;
    tokio::time::sleep(std::time::Duration::from_secs(16)).await;
    let after = controller
        .metric("abc_operator_reconciles_total")
        .await
        .unwrap();
    assert!(
        after - before <= 2.0,
        "{} reconciles in 16 s of a run waiting for its Secret: hot loop",
        after - before
    );

    // Creating the Secret heals the run without a restart.
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "nope"}, "stringData": {"password": "pw"}
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    eventually(60, "the Secret problem to clear", || async {
        let s = run_status(&runs, "ext").await?;
        let c = s.conditions.into_iter().find(|c| c.type_ == "Degraded")?;
        (!c.message.contains("does not exist")).then_some(())
    })
    .await;
}

/// Pods the API server refuses to make (here: a priority class that does not exist) leave no
/// pod to look at: the run says what its Deployment was told, once, and heals when the cause
/// is gone.
#[tokio::test]
async fn pods_the_api_server_refuses_are_named_in_the_runs_status() {
    install_crd();
    let client = cluster::client().await;
    let ns = TestNamespace::new(&client, "op-refused").await;
    let _controller = ControllerProcess::start(&ns.name);
    // A Redis that answers, so that the workers' problem is the one the run reports.
    let redis = support::redis::server();
    support::run::create_password_secret(&client, &ns.name, "redis-pw", redis.password()).await;
    let (ok, err) = kubectl_apply(
        &ns.name,
        &format!(
            "apiVersion: abc-operator.dev/v1alpha1\nkind: AbcRun\nmetadata: {{name: refused}}\n\
             spec: {{image: i, workers: {{replicas: 1, priorityClassName: abc-test-missing}}, \
             redis: {{external: {{host: 127.0.0.1, port: {}, passwordSecret: {{name: redis-pw}}}}}}}}\n",
            redis.port()
        ),
    );
    assert!(ok, "{err}");
    let runs: Api<AbcRun> = Api::namespaced(client.clone(), &ns.name);
    let degraded = eventually(90, "a Degraded condition", || async {
        let s = run_status(&runs, "refused").await?;
        s.conditions
            .into_iter()
            .find(|c| c.type_ == "Degraded" && c.status == "True")
    })
    .await;
    assert_eq!(degraded.reason, "FailedCreate", "{degraded:?}");
    assert!(
        degraded
            .message
            .starts_with("Deployment refused-workers cannot make its pods: ")
            && degraded
                .message
                .contains("no PriorityClass with name abc-test-missing was found"),
        "{}",
        degraded.message
    );
    // published after the status was written; the ReplicaSet's own FailedCreate may come first
    let by_us = eventually(30, "a FailedCreate Event on the run", || async {
        let by_us: Vec<_> = events_with_reason(&client, &ns.name, "FailedCreate")
            .await
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("AbcRun"))
            .collect();
        (!by_us.is_empty()).then_some(by_us)
    })
    .await;
    assert_eq!(by_us.len(), 1, "{by_us:#?}");
    assert_eq!(
        by_us[0].related.as_ref().and_then(|r| r.kind.as_deref()),
        Some("Deployment")
    );
}

#[tokio::test]
async fn the_operators_redis_image_is_the_default_of_a_managed_redis() {
    install_crd();
    let client = cluster::client().await;
    let ns = TestNamespace::new(&client, "op-redis-image").await;
    // An air-gapped cluster's own copy of Redis, set once for the operator.
    let _controller =
        ControllerProcess::start_with(&ns.name, &["--redis-image", "registry.local/redis:7.4"]);
    let manifest = r#"
apiVersion: abc-operator.dev/v1alpha1
kind: AbcRun
metadata: {name: mirrored}
spec:
  image: i
---
apiVersion: abc-operator.dev/v1alpha1
kind: AbcRun
metadata: {name: own}
spec:
  image: i
  redis: {managed: {image: "redis:7.2"}}
"#;
    let (ok, err) = kubectl_apply(&ns.name, manifest);
    assert!(ok, "AbcRuns rejected: {err}");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    for (run, image) in [
        ("mirrored", "registry.local/redis:7.4"),
        ("own", "redis:7.2"),
    ] {
        let redis = eventually(60, &format!("the Redis Deployment of {run}"), || async {
            deployments
                .get_opt(&format!("{run}-redis"))
                .await
                .ok()
                .flatten()
        })
        .await;
        let pod = redis.spec.unwrap().template.spec.unwrap();
        let images: Vec<_> = pod
            .init_containers
            .iter()
            .flatten()
            .chain(&pod.containers)
            .map(|c| c.image.clone().unwrap_or_default())
            .collect();
        assert_eq!(images, [image, image], "{run}");
    }
}

/// What a shared cluster asks of pods (a private registry's pull secret, a spot pool's taint
/// and affinity, a priority class, a service account, labels, a volume of model data) reaches
/// the worker, master and Redis pod templates, as the API server accepts them.
#[tokio::test]
async fn pod_settings_reach_every_pod_of_the_run() {
    install_crd();
    let client = cluster::client().await;
    let ns = TestNamespace::new(&client, "op-pods").await;
    let _controller = ControllerProcess::start(&ns.name);
    let placement = "nodeSelector: {pool: spot}, tolerations: [{key: spot, operator: Exists, \
        effect: NoSchedule}], affinity: {nodeAffinity: {preferredDuringSchedulingIgnoredDuringExecution: \
        [{weight: 1, preference: {matchExpressions: [{key: zone, operator: In, values: [a]}]}}]}}, \
        priorityClassName: science, serviceAccountName: model-reader, podLabels: {team: bio}";
    let data = "volumes: [{name: model-data, configMap: {name: model-data}}], \
        volumeMounts: [{name: model-data, mountPath: /model-data}], envFrom: [{secretRef: {name: keys}}]";
    let manifest = format!(
        "apiVersion: abc-operator.dev/v1alpha1\nkind: AbcRun\nmetadata: {{name: placed}}\n\
         spec:\n  image: i\n  imagePullSecrets: [{{name: registry}}]\n\
         \x20 workers: {{replicas: 1, {placement}, {data}}}\n\
         \x20 master: {{command: [m], results: {{volume: EmptyDir}}, {placement}, {data}}}\n\
         \x20 redis: {{managed: {{{placement}}}}}\n"
    );
    let (ok, err) = kubectl_apply(&ns.name, &manifest);
    assert!(ok, "AbcRun rejected: {err}");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(client.clone(), &ns.name);
    let workers = eventually(60, "the worker Deployment", || async {
        deployments.get_opt("placed-workers").await.ok().flatten()
    })
    .await;
    let redis = eventually(60, "the Redis Deployment", || async {
        deployments.get_opt("placed-redis").await.ok().flatten()
    })
    .await;
    let master = eventually(60, "the master Job", || async {
        jobs.get_opt("placed-master").await.ok().flatten()
    })
    .await;
    for (what, template, has_data) in [
        ("workers", workers.spec.unwrap().template, true),
        ("master", master.spec.unwrap().template, true),
        ("redis", redis.spec.unwrap().template, false),
    ] {
        let labels = template.metadata.unwrap().labels.unwrap();
        assert_eq!(labels["team"], "bio", "{what}");
        let pod = template.spec.unwrap();
        assert_eq!(
            pod.priority_class_name.as_deref(),
            Some("science"),
            "{what}"
        );
        assert_eq!(
            pod.service_account_name.as_deref(),
            Some("model-reader"),
            "{what}"
        );
        assert_eq!(pod.node_selector.unwrap()["pool"], "spot", "{what}");
        assert!(pod.affinity.unwrap().node_affinity.is_some(), "{what}");
        assert_eq!(
            pod.image_pull_secrets.unwrap()[0].name,
            "registry",
            "{what}"
        );
        let mounts_data = pod.containers[0]
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.mount_path == "/model-data");
        assert_eq!(mounts_data, has_data, "{what}");
    }
}

/// Every AbcRun of examples/ is one the API server accepts as it is.
#[tokio::test]
async fn every_example_is_a_valid_abcrun() {
    install_crd();
    let client = cluster::client().await;
    let ns = TestNamespace::new(&client, "op-examples").await;
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
    let mut checked = 0;
    for dir in std::fs::read_dir(examples).unwrap() {
        for file in std::fs::read_dir(dir.unwrap().path()).unwrap() {
            let path = file.unwrap().path();
            if path.extension().is_none_or(|e| e != "yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let doc = <serde_yaml::Value as serde::Deserialize>::deserialize(doc).unwrap();
                if doc["kind"] != "AbcRun" {
                    continue;
                }
                let mut cmd = kubectl();
                cmd.args(["apply", "--dry-run=server", "-n", &ns.name, "-f", "-"]);
                let out = output_with_stdin(cmd, &serde_yaml::to_string(&doc).unwrap());
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(out.status.success(), "{}: {err}", path.display());
                checked += 1;
            }
        }
    }
    assert!(checked >= 3, "{checked} examples");
}

/// A run without a master: all the controller keeps of it is its metric series, its demand
/// and its per-run state.
fn idle_run(name: &str) -> String {
    format!(
        "apiVersion: abc-operator.dev/v1alpha1\nkind: AbcRun\nmetadata: {{name: {name}}}\n\
         spec: {{image: abc-example-gaussian:0.1.0, workers: {{replicas: 1}}}}\n"
    )
}

#[tokio::test]
async fn a_deleted_run_is_forgotten_whether_deleted_in_the_background_or_the_foreground() {
    install_crd();
    let client = cluster::client().await;
    let ns = TestNamespace::new(&client, "op-forget").await;
    let controller = ControllerProcess::start(&ns.name);
    for name in ["background", "foreground", "kept"] {
        let (ok, err) = kubectl_apply(&ns.name, &idle_run(name));
        assert!(ok, "{err}");
    }
    let series_of = |metrics: &str, run: &str| -> usize {
        let label = format!("run=\"{run}\"");
        metrics.lines().filter(|l| l.contains(&label)).count()
    };
    // Known to the demand board: its demand, or why it has none yet; not "not known".
    let demand_found = |answer: Option<String>| {
        answer.is_some_and(|a| !a.contains("is not known to this operator"))
    };
    eventually(90, "series, demand and state of the three runs", || async {
        let metrics = controller.metrics().await?;
        let remembered = controller.metric("abc_operator_remembered_runs").await?;
        for run in ["background", "foreground", "kept"] {
            let demand = controller.get(&format!("/demand/{}/{run}", ns.name)).await;
            if series_of(&metrics, run) == 0 || !demand_found(demand) {
                return None;
            }
        }
        (remembered == 3.0).then_some(())
    })
    .await;

    // `kubectl delete` deletes in the background: the run is gone at once, and the controller
    // never sees it with a deletion timestamp.
    let runs: Api<AbcRun> = Api::namespaced(client.clone(), &ns.name);
    runs.delete("background", &DeleteParams::background())
        .await
        .unwrap();
    runs.delete("foreground", &DeleteParams::foreground())
        .await
        .unwrap();
    eventually(90, "the deleted runs forgotten", || async {
        let metrics = controller.metrics().await?;
        let remembered = controller.metric("abc_operator_remembered_runs").await?;
        for run in ["background", "foreground"] {
            let demand = controller.get(&format!("/demand/{}/{run}", ns.name)).await;
            if series_of(&metrics, run) > 0 || demand_found(demand) {
                return None;
            }
        }
        (remembered == 1.0).then_some(())
    })
    .await;
    let metrics = controller.metrics().await.unwrap();
    assert!(series_of(&metrics, "kept") > 0, "{metrics}");
    assert!(demand_found(
        controller.get(&format!("/demand/{}/kept", ns.name)).await
    ));
}
