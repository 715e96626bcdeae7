//! The Helm chart: it lints, and renders what its values say. `helm install` itself, the
//! operator's pod running and its least-privilege RBAC are tested on the real node
//! (tests/real_node.rs).

mod support;

use k8s_openapi::api::apps::v1::Deployment;
use support::cluster::helm;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/abc-operator");

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
