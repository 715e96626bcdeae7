//! An HPA scales an AbcRun's workers on ABC demand, through the external metrics API the
//! operator serves behind the API server's aggregation layer: real API server, real HPA
//! controller (kube-controller-manager), real controller process, real pyABC master and
//! workers (the fake kubelet runs the worker pods' processes), loopback redis-server.
//!
//! The APIService `v1beta1.external.metrics.k8s.io` is cluster-wide, so this binary holds the
//! only test that registers it, and removes it at the end.

mod support;

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::api::{Api, DeleteParams, PostParams};
use std::time::Duration;
use support::aggregation::Registration;
use support::cluster::{eventually, kubectl};
use support::controller::{ControllerProcess, free_port};
use support::run::{master_finishes, setup};

const APISERVICE: &str = "v1beta1.external.metrics.k8s.io";
const METRIC: &str = "abcrun_evaluations_needed";

/// `kubectl get --raw` of one metric for a label selector: Ok(body) or Err(stderr).
fn raw_metric(namespace: &str, metric: &str, selector: &str) -> Result<serde_json::Value, String> {
    let path = format!(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric}?labelSelector={}",
        selector.replace('=', "%3D")
    );
    let out = kubectl().args(["get", "--raw", &path]).output().unwrap();
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn value_of(list: &serde_json::Value) -> Option<i64> {
    list["items"][0]["value"].as_str()?.parse().ok()
}

fn hpa(run: &str, target: u32) -> HorizontalPodAutoscaler {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": run},
        "spec": {
            "scaleTargetRef": {"apiVersion": "abc-operator.dev/v1alpha1", "kind": "AbcRun", "name": run},
            "minReplicas": 1, "maxReplicas": 4,
            "metrics": [{"type": "External", "external": {
                "metric": {"name": METRIC, "selector": {"matchLabels": {"abcrun": run}}},
                "target": {"type": "AverageValue", "averageValue": target.to_string()}}}],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 10}}
        }
    }))
    .unwrap()
}

#[tokio::test]
async fn an_hpa_scales_workers_on_demand_and_back_after_the_run() {
    let s = setup("hpa", 1, "10m", "0.3").await;
    let ns = s.ns.name.clone();
    let port = free_port();
    let registration = Registration::new(
        &s.client,
        &ns,
        port,
        ("external.metrics.k8s.io", "v1beta1", 100, 100),
    )
    .await;
    let controller = ControllerProcess::start_with(
        &ns,
        &[
            "--external-metrics-addr",
            &format!("127.0.0.1:{port}"),
            "--tls-dns-name",
            &format!("abc-operator.{ns}.svc"),
            "--apiservice",
            APISERVICE,
        ],
    );
    registration.available().await;
    // Only the aggregation layer may act for a user: a direct caller claiming to be an admin
    // through the same headers is refused.
    let direct = std::process::Command::new("curl")
        .args([
            "-sk",
            "-H",
            "X-Remote-User: system:admin",
            "-H",
            "X-Remote-Group: system:masters",
        ])
        .arg(format!(
            "https://127.0.0.1:{port}/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/{METRIC}"
        ))
        .output()
        .unwrap();
    let refused: serde_json::Value = serde_json::from_slice(&direct.stdout).unwrap();
    assert_eq!(refused["code"], 401, "{refused}");

    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(s.client.clone(), &ns);
    hpas.create(&PostParams::default(), &hpa("sim", 10))
        .await
        .unwrap();
    let kubelet = s.kubelet();
    let mut master = s.master(40, 2);

    // While a generation needs particles, the metric is positive and the HPA scales up.
    let demand = eventually(120, "a positive demand through the API server", || async {
        value_of(&raw_metric(&ns, METRIC, "abcrun=sim").ok()?).filter(|v| *v > 0)
    })
    .await;
    assert!(demand <= 40 * 100, "implausible demand {demand}");
    let scaled = eventually(120, "the HPA to scale the AbcRun up", || async {
        let run = s.runs.get("sim").await.ok()?;
        (run.spec.workers.replicas >= 3).then_some(run.spec.workers.replicas)
    })
    .await;
    assert!(scaled <= 4);
    let out = kubectl()
        .args(["get", "hpa", "sim", "-n", &ns])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("/10 (avg)") && !table.contains("<unknown>"),
        "kubectl get hpa shows no metric value:\n{table}"
    );
    // The same value for KEDA's metrics-api scaler, as JSON on the metrics port.
    let keda = controller.get(&format!("/demand/{ns}/sim")).await.unwrap();
    assert!(
        keda.starts_with("HTTP/1.0 200") || keda.starts_with("HTTP/1.1 200"),
        "{keda}"
    );
    assert!(
        keda.contains("\"evaluationsNeeded\":") && keda.contains("\"active\":"),
        "{keda}"
    );

    assert!(master_finishes(&mut master, 300).await, "the master failed");
    // The run is over: demand 0, analysis inactive, and the HPA scales to its minimum.
    eventually(60, "the demand to drop to 0", || async {
        let needed = value_of(&raw_metric(&ns, METRIC, "abcrun=sim").ok()?)?;
        let active = value_of(&raw_metric(&ns, "abcrun_active", "abcrun=sim").ok()?)?;
        (needed == 0 && active == 0).then_some(())
    })
    .await;
    eventually(120, "the HPA to scale the AbcRun back to 1", || async {
        let run = s.runs.get("sim").await.ok()?;
        (run.spec.workers.replicas == 1).then_some(())
    })
    .await;

    // Errors stay with their run: an unknown run, and a run whose Redis does not answer (its
    // pods run nothing: the HPA only needs its scale).
    drop(kubelet);
    let unknown = raw_metric(&ns, METRIC, "abcrun=nope").unwrap_err();
    assert!(
        unknown.contains(&format!("AbcRun {ns}/nope is not known")),
        "{unknown}"
    );
    let closed = free_port();
    let broken: abc_operator::api::AbcRun = serde_yaml::from_str(&format!(
        "apiVersion: abc-operator.dev/v1alpha1\nkind: AbcRun\nmetadata: {{name: broken}}\nspec:\n  image: worker\n  workers: {{replicas: 1}}\n  redis:\n    external: {{host: 127.0.0.1, port: {closed}, passwordSecret: {{name: redis-pw}}}}\n"
    ))
    .unwrap();
    s.runs
        .create(&PostParams::default(), &broken)
        .await
        .unwrap();
    let unavailable = eventually(60, "an error for the run whose Redis is down", || async {
        raw_metric(&ns, METRIC, "abcrun=broken")
            .err()
            .filter(|e| e.contains(&format!("AbcRun {ns}/broken: cannot read the run's Redis")))
    })
    .await;
    assert!(
        unavailable.contains("ServiceUnavailable") || unavailable.contains("503"),
        "{unavailable}"
    );
    assert_eq!(
        value_of(&raw_metric(&ns, METRIC, "abcrun=sim").unwrap()),
        Some(0)
    );
    // The HPA of the broken run says why it cannot scale (an HPA ignores targets at 0 replicas).
    hpas.create(&PostParams::default(), &hpa("broken", 10))
        .await
        .unwrap();
    eventually(
        60,
        "the broken run's HPA to report the metric error",
        || async {
            let status = hpas.get("broken").await.ok()?.status?;
            status.conditions?.into_iter().find(|c| {
                c.type_ == "ScalingActive"
                    && c.status == "False"
                    && c.message
                        .as_deref()
                        .unwrap_or_default()
                        .contains("cannot read the run's Redis")
            })
        },
    )
    .await;

    let _ = hpas.delete("broken", &DeleteParams::default()).await;
    drop(registration);
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(controller);
}

/// Scale-down: the kubelet sends SIGTERM and waits terminationGracePeriodSeconds. A worker busy
/// with an evaluation finishes it, reports it, leaves the generation and exits 0 with no
/// ledger left: nothing for the operator to repair, nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_busy_worker_finish_and_report_its_evaluation() {
    use nix::sys::signal::Signal;
    use support::redis::{connect, server, snapshot, wait_for};
    let redis = server();
    let endpoint = redis.endpoint();
    let mut conn = connect(&redis).await;
    let root = tempfile::tempdir().unwrap();
    let population = [("PROTO_POPULATION", "6"), ("PROTO_GENERATIONS", "1")];
    let mut master = support::python::master(&endpoint, &population, root.path());
    let slow = [("ABC_TEST_MODEL_SLEEP", "2")];
    let mut busy = support::python::worker(&endpoint, "busy", &slow, root.path());
    // In the calibration generation every evaluation is accepted, so each one reported is an
    // acceptance.
    let at_term = wait_for(
        &mut conn,
        Duration::from_secs(180),
        "the worker inside a calibration evaluation",
        |s| {
            s.all_accepted == Some(true)
                && s.ledgers
                    .iter()
                    .any(|l| l.id == "busy" && l.claim.is_some())
        },
    )
    .await;
    busy.signal(Signal::SIGTERM);
    assert_eq!(
        busy.wait(Duration::from_secs(30)).code(),
        Some(0),
        "{}",
        busy.log_tail()
    );
    let after = snapshot(&mut conn).await;
    assert!(after.ledgers.is_empty(), "{:?}", after.ledgers);
    assert_eq!(
        after.n_worker,
        Some(0),
        "the worker did not leave the generation"
    );
    // Every evaluation it claimed was reported (none given up at exit as a failure), including
    // the one in flight at SIGTERM.
    assert_eq!(after.n_acc, after.n_eval, "{after:?}");
    assert_eq!(after.n_fail.unwrap_or(0), 0, "{after:?}");
    assert!(
        after.n_acc > at_term.n_acc,
        "the evaluation in flight was not reported"
    );
    // Another worker finishes the run: nothing was lost.
    let mut next = support::python::worker(&endpoint, "next", &[], root.path());
    assert!(
        master.wait(Duration::from_secs(180)).success(),
        "{}",
        master.log_tail()
    );
    next.signal(Signal::SIGTERM);
    next.wait(Duration::from_secs(30));
}
