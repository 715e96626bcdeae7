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
    let mut apply = kubectl()
        .args([
            "apply",
            "--server-side",
            "--force-conflicts",
            "-n",
            &ns.name,
            "-f",
            "-",
        ])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    apply.stdin.take().unwrap().write_all(&out.stdout).unwrap();
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
    ] {
        assert!(
            !can_i(&ns.name, &sa, verb, resource),
            "the operator may {verb} {resource}: too broad"
        );
    }
    // Cluster-scoped objects of this release outlive the namespace: remove them.
    let _ = kubectl()
        .args([
            "delete",
            "clusterrole,clusterrolebinding",
            "-l",
            &format!("app.kubernetes.io/instance={release}"),
        ])
        .output();
}
