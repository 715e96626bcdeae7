//! The Helm chart: it lints, and renders what its values say. `helm install` itself, the
//! operator's pod running and its least-privilege RBAC are tested on the real node
//! (tests/real_node.rs).

mod support;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PodSpec, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::Role;
use serde::Deserialize;
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

/// The chart's objects as `helm template` renders them with `values`.
fn render(values: &[&str]) -> Vec<serde_yaml::Value> {
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
    serde_yaml::Deserializer::from_str(&rendered)
        .map(|doc| serde_yaml::Value::deserialize(doc).unwrap())
        .filter(|doc| !doc.is_null())
        .collect()
}

/// The rendered object of `kind` whose name ends with `suffix`, as `K`.
fn rendered<K: serde::de::DeserializeOwned>(
    objects: &[serde_yaml::Value],
    kind: &str,
    suffix: &str,
) -> K {
    let object = objects
        .iter()
        .find(|o| {
            o["kind"].as_str() == Some(kind)
                && o["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.ends_with(suffix))
        })
        .unwrap_or_else(|| panic!("the chart renders no {kind} named *{suffix}"));
    serde_yaml::from_value(object.clone()).unwrap()
}

fn controller_pod(objects: &[serde_yaml::Value]) -> PodSpec {
    let deployment: Deployment = rendered(objects, "Deployment", "abc-operator");
    deployment.spec.unwrap().template.spec.unwrap()
}

/// The controller container's args as `helm template` renders them with `values`.
fn rendered_controller_args(values: &[&str]) -> Vec<String> {
    controller_pod(&render(values)).containers[0]
        .args
        .clone()
        .unwrap_or_default()
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

#[test]
fn two_replicas_elect_a_leader_and_only_the_leader_serves_the_external_metrics_api() {
    let objects = render(&[]);
    let deployment: Deployment = rendered(&objects, "Deployment", "abc-operator");
    assert_eq!(deployment.spec.as_ref().unwrap().replicas, Some(2));
    let pod = controller_pod(&objects);
    let args = &pod.containers[0].args.clone().unwrap();
    let lease = args.iter().position(|a| a == "--lease-name");
    assert_eq!(
        lease.and_then(|i| args.get(i + 1)).map(String::as_str),
        Some("abc-abc-operator"),
        "{args:?}"
    );
    // The elector's identity and the Lease's namespace come from the downward API.
    let env = pod.containers[0].env.clone().unwrap();
    for (name, field) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
    ] {
        let var = env.iter().find(|e| e.name == name).expect(name);
        let from = var.value_from.as_ref().and_then(|v| v.field_ref.as_ref());
        assert_eq!(from.map(|f| f.field_path.as_str()), Some(field));
    }
    // The replicas prefer different nodes.
    let anti = pod.affinity.unwrap().pod_anti_affinity.unwrap();
    let preferred = anti
        .preferred_during_scheduling_ignored_during_execution
        .unwrap();
    assert_eq!(
        preferred[0].pod_affinity_term.topology_key,
        "kubernetes.io/hostname"
    );
    let pdb: PodDisruptionBudget = rendered(&objects, "PodDisruptionBudget", "abc-operator");
    let pdb = pdb.spec.unwrap();
    assert_eq!(
        pdb.min_available,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );
    assert_eq!(
        pdb.selector.unwrap().match_labels,
        deployment.spec.unwrap().selector.match_labels
    );

    let external: Service = rendered(&objects, "Service", "abc-operator");
    let selector = external.spec.unwrap().selector.unwrap();
    assert_eq!(
        selector.get("abc-operator.dev/leader").map(String::as_str),
        Some("true")
    );
    // Prometheus scrapes every replica.
    let metrics: Service = rendered(&objects, "Service", "-metrics");
    assert!(
        !metrics
            .spec
            .unwrap()
            .selector
            .unwrap()
            .contains_key("abc-operator.dev/leader")
    );
}

#[test]
fn the_leader_election_may_touch_its_own_lease_only() {
    let role: Role = rendered(&render(&[]), "Role", "-leader");
    assert_eq!(role.metadata.namespace.as_deref(), Some("default"));
    let rules = role.rules.unwrap();
    let leases: Vec<_> = rules
        .iter()
        .filter(|r| r.resources.as_deref() == Some(&["leases".to_string()][..]))
        .collect();
    for rule in &leases {
        let verbs = &rule.verbs;
        if verbs != &["create"] {
            assert_eq!(
                rule.resource_names.as_deref(),
                Some(&["abc-abc-operator".to_string()][..]),
                "{rule:?}"
            );
        }
        assert!(
            verbs
                .iter()
                .all(|v| ["create", "get", "update"].contains(&v.as_str())),
            "{rule:?}"
        );
    }
    let verbs: Vec<&str> = leases
        .iter()
        .flat_map(|r| r.verbs.iter().map(String::as_str))
        .collect();
    assert!(
        ["create", "get", "update"]
            .iter()
            .all(|v| verbs.contains(v)),
        "{verbs:?}"
    );
}

#[test]
fn one_replica_has_no_disruption_budget() {
    let objects = render(&["replicas=1"]);
    assert!(
        !objects
            .iter()
            .any(|o| o["kind"].as_str() == Some("PodDisruptionBudget")),
        "a PodDisruptionBudget of one replica with minAvailable 1 would block every drain"
    );
}
