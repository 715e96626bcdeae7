//! The Helm chart: it lints, and what it renders installs on a real control plane with the
//! operator's Deployment running and least-privilege RBAC.

mod support;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use std::io::Write;
use std::process::{Command, Stdio};
use support::cluster::{self, TestNamespace, eventually, kubectl, tools_bin};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/abc-operator");

fn helm() -> Command {
    let mut cmd = Command::new(tools_bin().join("helm"));
    // helm keeps caches and config under HOME; keep them out of the user's.
    let home = std::env::temp_dir().join("abc-operator-helm-home");
    cmd.env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
    cmd
}

#[test]
fn helm_lint_passes() {
    let out = helm().args(["lint", "--strict", CHART]).output().unwrap();
    assert!(
        out.status.success(),
        "helm lint failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn can_i(namespace: &str, sa: &str, verb: &str, resource: &str) -> bool {
    let out = kubectl()
        .args(["auth", "can-i", verb, resource, "-n", "default"])
        .arg(format!("--as=system:serviceaccount:{namespace}:{sa}"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

#[tokio::test]
async fn rendered_chart_installs_the_controller_with_least_privilege() {
    let client = cluster::client().await;
    let ns = TestNamespace::new(&client, "chart").await;
    // A release name of its own: ClusterRoles are cluster-wide and tests run in parallel.
    let release = format!("abc-{}", ns.name);
    let out = helm()
        .args([
            "template",
            &release,
            CHART,
            "--namespace",
            &ns.name,
            "--include-crds",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The external metrics APIService is cluster-wide and tests/autoscaling.rs registers its
    // own: check this one and apply the rest.
    let rendered = String::from_utf8(out.stdout).unwrap();
    let (apiservices, objects): (Vec<&str>, Vec<&str>) = rendered
        .split("\n---")
        .partition(|doc| doc.contains("\nkind: APIService"));
    let [apiservice] = apiservices[..] else {
        panic!("the chart renders no external metrics APIService")
    };
    let apiservice: serde_yaml::Value = serde_yaml::from_str(apiservice).unwrap();
    assert_eq!(
        apiservice["metadata"]["name"],
        "v1beta1.external.metrics.k8s.io"
    );
    let backend = &apiservice["spec"]["service"];
    assert_eq!(backend["namespace"].as_str(), Some(ns.name.as_str()));
    assert_eq!(backend["port"].as_u64(), Some(443));
    let service_name = backend["name"].as_str().unwrap().to_string();
    let mut apply = kubectl()
        .args(["apply", "--server-side", "--force-conflicts", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    apply
        .stdin
        .take()
        .unwrap()
        .write_all(objects.join("\n---").as_bytes())
        .unwrap();
    let applied = apply.wait_with_output().unwrap();
    assert!(
        applied.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&applied.stderr)
    );

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let deployment = eventually(60, "the operator Deployment with a ready pod", || async {
        let list = deployments.list(&Default::default()).await.ok()?;
        let d = list.items.into_iter().next()?;
        (d.status.as_ref()?.ready_replicas? >= 1).then_some(d)
    })
    .await;
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    let container = &pod.containers[0];
    assert!(
        container.args.iter().flatten().any(|a| a == "controller")
            || container
                .command
                .iter()
                .flatten()
                .any(|a| a == "controller")
    );
    let security = container.security_context.as_ref().unwrap();
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    let sa = pod.service_account_name.unwrap();
    // The APIService's Service reaches the container's HTTPS port.
    let services: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(client.clone(), &ns.name);
    let service = services.get(&service_name).await.unwrap().spec.unwrap();
    let target = &service.ports.unwrap()[0].target_port;
    assert_eq!(
        target,
        &Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("https".into()))
    );
    assert!(
        container
            .ports
            .iter()
            .flatten()
            .any(|p| p.name.as_deref() == Some("https")),
        "the operator container has no https port"
    );
    assert!(
        container
            .args
            .iter()
            .flatten()
            .any(|a| a == "--external-metrics-addr"),
        "the operator does not serve the external metrics API"
    );

    // What the controller needs...
    for (verb, resource) in [
        ("watch", "abcruns.abc-operator.dev"),
        ("patch", "abcruns.abc-operator.dev/status"),
        ("create", "deployments.apps"),
        ("patch", "jobs.batch"),
        ("create", "secrets"),
        ("delete", "pods"),
        ("create", "networkpolicies.networking.k8s.io"),
        ("create", "events.events.k8s.io"),
        // The external metrics API: delegated authentication and authorization.
        ("create", "subjectaccessreviews.authorization.k8s.io"),
        (
            "patch",
            "apiservices.apiregistration.k8s.io/v1beta1.external.metrics.k8s.io",
        ),
    ] {
        assert!(
            can_i(&ns.name, &sa, verb, resource),
            "the operator cannot {verb} {resource}"
        );
    }
    // ...and nothing a controller of runs has no business doing.
    for (verb, resource) in [
        ("create", "pods/exec"),
        ("create", "clusterroles.rbac.authorization.k8s.io"),
        ("delete", "namespaces"),
        ("create", "customresourcedefinitions.apiextensions.k8s.io"),
        ("update", "nodes"),
        (
            "patch",
            "apiservices.apiregistration.k8s.io/v1beta1.metrics.k8s.io",
        ),
        ("create", "apiservices.apiregistration.k8s.io"),
    ] {
        assert!(
            !can_i(&ns.name, &sa, verb, resource),
            "the operator may {verb} {resource}: too broad"
        );
    }
    let reads_aggregation_settings = kubectl()
        .args([
            "auth",
            "can-i",
            "get",
            "configmaps/extension-apiserver-authentication",
        ])
        .args(["-n", "kube-system"])
        .arg(format!("--as=system:serviceaccount:{}:{sa}", ns.name))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&reads_aggregation_settings.stdout).trim(),
        "yes"
    );
    // Objects of this release outside its namespace outlive it: remove them.
    let selector = format!("app.kubernetes.io/instance={release}");
    let _ = kubectl()
        .args(["delete", "clusterrole,clusterrolebinding", "-l", &selector])
        .output();
    let _ = kubectl()
        .args([
            "delete",
            "rolebinding",
            "-n",
            "kube-system",
            "-l",
            &selector,
        ])
        .output();
}

/// The controller container's args as `helm template` renders them with `values`.
fn rendered_controller_args(values: &[&str]) -> Vec<String> {
    let mut cmd = helm();
    cmd.args(["template", "abc", CHART]);
    for value in values {
        cmd.args(["--set", value]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered = String::from_utf8(out.stdout).unwrap();
    let deployment = rendered
        .split("\n---")
        .find(|doc| doc.contains("\nkind: Deployment"))
        .expect("the chart renders the controller's Deployment");
    let deployment: Deployment = serde_yaml::from_str(deployment).unwrap();
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    pod.containers[0].args.clone().unwrap_or_default()
}

#[test]
fn redis_image_value_sets_the_default_image_of_managed_redis() {
    let args = rendered_controller_args(&["redis.image=registry.local/mirror/redis:7.4"]);
    let flag = args.iter().position(|a| a == "--redis-image");
    assert_eq!(
        flag.and_then(|i| args.get(i + 1)).map(String::as_str),
        Some("registry.local/mirror/redis:7.4"),
        "{args:?}"
    );
    // Unset, the operator keeps its own default.
    let args = rendered_controller_args(&[]);
    assert!(!args.iter().any(|a| a == "--redis-image"), "{args:?}");
}
