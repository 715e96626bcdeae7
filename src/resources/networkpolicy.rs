//! The NetworkPolicy of a managed Redis: only the run's own pods and the operator reach it.
//!
//! `kubectl port-forward` (the laptop master of `examples/no-master`) enters the pod through
//! its own network namespace, not through the pod network, so this policy does not block it.

use super::{
    BuildError, Component, NAME_LABEL, REDIS_PORT, managed_redis, object_meta, redis_service_name,
    selector_labels,
};
use crate::api::{AbcRun, RUN_LABEL};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use std::collections::BTreeMap;

/// `app.kubernetes.io/name` of the operator's own pods (set by the Helm chart).
pub const OPERATOR_NAME_LABEL_VALUE: &str = "abc-operator";

fn match_labels(labels: BTreeMap<String, String>) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels),
        ..LabelSelector::default()
    }
}

/// The NetworkPolicy (`{run}-redis`) for a managed Redis, or `None` for an external one:
/// ingress to the Redis pod on 6379 only, from pods of this run (workers, master) in its
/// namespace and from the operator's pods in any namespace.
pub fn redis_network_policy(run: &AbcRun) -> Result<Option<NetworkPolicy>, BuildError> {
    if managed_redis(run).is_none() {
        return Ok(None);
    }
    let run_pods = NetworkPolicyPeer {
        pod_selector: Some(match_labels(BTreeMap::from([(
            RUN_LABEL.to_string(),
            run.name_any(),
        )]))),
        ..NetworkPolicyPeer::default()
    };
    let operator_pods = NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector::default()),
        pod_selector: Some(match_labels(BTreeMap::from([(
            NAME_LABEL.to_string(),
            OPERATOR_NAME_LABEL_VALUE.to_string(),
        )]))),
        ..NetworkPolicyPeer::default()
    };
    Ok(Some(NetworkPolicy {
        metadata: object_meta(run, redis_service_name(run), Component::Redis)?,
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(match_labels(selector_labels(run, Component::Redis))),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![run_pods, operator_pods]),
                ports: Some(vec![NetworkPolicyPort {
                    port: Some(IntOrString::Int(REDIS_PORT)),
                    protocol: Some("TCP".into()),
                    end_port: None,
                }]),
            }]),
            egress: None,
        }),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::test_support::{minimal, run};

    #[test]
    fn only_this_runs_pods_and_the_operator_reach_redis_on_6379() {
        let policy = redis_network_policy(&minimal()).unwrap().unwrap();
        let spec = policy.spec.unwrap();
        let target = spec.pod_selector.unwrap().match_labels.unwrap();
        assert_eq!(target["abc-operator.dev/run"], "gaussian");
        assert_eq!(target["abc-operator.dev/component"], "redis");
        assert_eq!(spec.policy_types.unwrap(), ["Ingress"]);
        let rules = spec.ingress.unwrap();
        assert_eq!(rules.len(), 1);
        let ports = rules[0].ports.as_ref().unwrap();
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].port, Some(IntOrString::Int(6379)));
        let from = rules[0].from.as_ref().unwrap();
        // Run pods: same namespace (no namespaceSelector), any component of this run only.
        assert!(from[0].namespace_selector.is_none());
        assert_eq!(
            from[0]
                .pod_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap(),
            &BTreeMap::from([("abc-operator.dev/run".to_string(), "gaussian".to_string())])
        );
        // The operator: any namespace, selected by its name label.
        assert_eq!(from[1].namespace_selector, Some(LabelSelector::default()));
        assert_eq!(
            from[1]
                .pod_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()["app.kubernetes.io/name"],
            "abc-operator"
        );
    }

    #[test]
    fn external_redis_gets_no_policy() {
        let run = run("image: i\nredis:\n  external: {host: h, passwordSecret: {name: s}}\n");
        assert!(redis_network_policy(&run).unwrap().is_none());
    }
}
