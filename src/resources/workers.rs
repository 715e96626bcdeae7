//! The worker Deployment: `spec.workers.replicas` pods running the operator's entrypoint
//! (pyABC's `abc-redis-worker` with a ledger) from the mounted ConfigMap.
//!
//! Deployments only know `restartPolicy: Always`. A worker whose runtime expired exits 0 and
//! would be restarted in place (and eventually crash-loop back-off); the controller deletes
//! completed worker pods instead, and the ReplicaSet replaces them at once.

use super::{
    BuildError, Component, ENTRYPOINT_PATH, POD_UID, container_security_context, entrypoint_sha256,
    env, finished, hardened_pod_spec, object_meta, operator_files_mount, operator_files_volume,
    pod_metadata, redis_env, selector_labels, tmp_mount, tmp_volume, with_pod_settings,
};
use crate::api::{AbcRun, GROUP};
use crate::protocol::worker_env;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, EnvVarSource, ObjectFieldSelector, PodSpec, PodTemplateSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use std::collections::BTreeMap;

/// Name of the worker Deployment.
pub fn workers_deployment_name(run: &AbcRun) -> String {
    format!("{}-workers", run.name_any())
}

/// Worker pods the run asks for: `spec.workers.replicas`, or 0 when suspended or finished,
/// stopped included (whatever an HPA or `kubectl scale` has set: a finished run gives its
/// workers back). A run asked to stop keeps them until it has stopped: they finish the
/// generation being sampled.
pub fn desired_worker_replicas(run: &AbcRun) -> i32 {
    if run.spec.suspend || finished(run) {
        0
    } else {
        run.spec.workers.replicas
    }
}

/// The label selector string of the run's worker pods (the scale subresource's
/// `status.selector`, used by an HPA).
pub fn worker_selector(run: &AbcRun) -> String {
    selector_labels(run, Component::Worker)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The worker Deployment (`{run}-workers`).
///
/// Rolling updates surge new workers before old ones get SIGTERM (`maxUnavailable: 0`): a
/// template change (new image, new entrypoint) never drops sampling capacity, and the old
/// workers finish their evaluation within `terminationGracePeriodSeconds`.
pub fn worker_deployment(run: &AbcRun) -> Result<Deployment, BuildError> {
    let workers = &run.spec.workers;
    let ours = [
        redis_env(run),
        vec![EnvVar {
            name: "ABC_WORKER_ID".into(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    api_version: Some("v1".into()),
                    field_path: "metadata.name".into(),
                }),
                ..EnvVarSource::default()
            }),
        }],
        worker_env::worker_settings(workers)
            .into_iter()
            .map(|(name, value)| env(name, value))
            .collect(),
        vec![
            env("PYTHONUNBUFFERED", "1"),
            env("HOME", "/tmp"),
            env("MPLCONFIGDIR", "/tmp"),
        ],
    ]
    .concat();
    let container = Container {
        name: "worker".into(),
        image: Some(run.spec.image.clone()),
        image_pull_policy: run.spec.image_pull_policy.clone(),
        command: Some(vec!["python".into(), ENTRYPOINT_PATH.into()]),
        env: Some(worker_env::merge(ours, workers.env.iter().cloned())),
        resources: workers.resources.clone(),
        volume_mounts: Some(vec![operator_files_mount(), tmp_mount()]),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        security_context: Some(container_security_context()),
        ..Container::default()
    };
    let meta = object_meta(run, workers_deployment_name(run), Component::Worker)?;
    Ok(Deployment {
        spec: Some(DeploymentSpec {
            replicas: Some(desired_worker_replicas(run)),
            revision_history_limit: Some(2),
            selector: LabelSelector {
                match_labels: Some(selector_labels(run, Component::Worker)),
                ..LabelSelector::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::String("25%".into())),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(pod_metadata(
                    meta.labels.clone(),
                    BTreeMap::from([(
                        format!("{GROUP}/entrypoint-sha256"),
                        entrypoint_sha256().to_string(),
                    )]),
                    &workers.pod.placement,
                )),
                spec: Some(with_pod_settings(
                    run,
                    PodSpec {
                        termination_grace_period_seconds: Some(
                            workers.termination_grace_period_seconds,
                        ),
                        // The pause container is PID 1, not the worker: the kernel does not deliver
                        // a signal to a PID 1 without a handler, so a SIGTERM that comes while
                        // Python is still starting (a pod deleted right after the kubelet restarted
                        // its worker) would be lost, and the SIGKILL at the end of the grace period
                        // would hit the worker inside a generation.
                        share_process_namespace: Some(true),
                        ..hardened_pod_spec(
                            POD_UID,
                            vec![container],
                            vec![operator_files_volume(run), tmp_volume()],
                        )
                    },
                    &workers.pod,
                )),
            },
            ..DeploymentSpec::default()
        }),
        metadata: meta,
        ..Deployment::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Phase;
    use crate::resources::test_support::{env_value, in_phase, minimal, run};

    fn container(run: &AbcRun) -> Container {
        worker_deployment(run)
            .unwrap()
            .spec
            .unwrap()
            .template
            .spec
            .unwrap()
            .containers[0]
            .clone()
    }

    #[test]
    fn replicas_follow_the_spec_until_stopped_and_drop_to_zero_when_suspended() {
        let scaled = run("image: i\nworkers: {replicas: 7}\n");
        assert_eq!(
            worker_deployment(&scaled).unwrap().spec.unwrap().replicas,
            Some(7)
        );
        // they finish the generation being sampled
        let stopping = run("image: i\nworkers: {replicas: 7}\nstop: true\n");
        assert_eq!(
            worker_deployment(&stopping).unwrap().spec.unwrap().replicas,
            Some(7)
        );
        let stopped = in_phase(stopping, Phase::Stopped);
        assert_eq!(
            worker_deployment(&stopped).unwrap().spec.unwrap().replicas,
            Some(0)
        );
        let suspended = run("image: i\nworkers: {replicas: 7}\nsuspend: true\n");
        assert_eq!(
            worker_deployment(&suspended)
                .unwrap()
                .spec
                .unwrap()
                .replicas,
            Some(0)
        );
    }

    #[test]
    fn a_finished_run_gives_its_workers_back_whatever_its_replicas_say() {
        // An HPA's minReplicas (or `kubectl scale`) keeps `spec.workers.replicas` above 0.
        for (phase, want) in [
            (Phase::Running, 7),
            (Phase::Stopped, 0),
            (Phase::Succeeded, 0),
            (Phase::Failed, 0),
        ] {
            let finished = in_phase(run("image: i\nworkers: {replicas: 7}\n"), phase);
            assert_eq!(desired_worker_replicas(&finished), want, "{phase}");
            assert_eq!(
                worker_deployment(&finished).unwrap().spec.unwrap().replicas,
                Some(want),
                "{phase}"
            );
        }
    }

    #[test]
    fn workers_run_the_mounted_entrypoint_and_find_the_managed_redis() {
        let c = container(&minimal());
        assert_eq!(
            c.command.as_deref(),
            Some(&["python".to_string(), ENTRYPOINT_PATH.to_string()][..])
        );
        let mount = c
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.mount_path == crate::resources::ENTRYPOINT_DIR)
            .unwrap();
        assert_eq!(mount.read_only, Some(true));
        assert_eq!(
            env_value(&c, "ABC_REDIS_HOST").as_deref(),
            Some("gaussian-redis")
        );
        assert_eq!(env_value(&c, "ABC_REDIS_PORT").as_deref(), Some("6379"));
        assert_eq!(env_value(&c, "ABC_WORKER_RUNTIME").as_deref(), Some("2h"));
        assert_eq!(env_value(&c, "ABC_WORKER_PROCESSES").as_deref(), Some("1"));
        assert_eq!(env_value(&c, "ABC_HEARTBEAT_SECONDS").as_deref(), Some("5"));
        assert_eq!(env_value(&c, "HOME").as_deref(), Some("/tmp"));
        let id = c
            .env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == "ABC_WORKER_ID")
            .unwrap();
        assert_eq!(
            id.value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path,
            "metadata.name"
        );
        assert!(
            c.volume_mounts
                .as_ref()
                .unwrap()
                .iter()
                .any(|m| m.mount_path == "/tmp")
        );
    }

    #[test]
    fn external_redis_host_and_port_reach_the_workers() {
        let c = container(&run(
            "image: i\nredis:\n  external: {host: redis.shared.svc, port: 6380, passwordSecret: {name: s, key: k}}\n",
        ));
        assert_eq!(
            env_value(&c, "ABC_REDIS_HOST").as_deref(),
            Some("redis.shared.svc")
        );
        assert_eq!(env_value(&c, "ABC_REDIS_PORT").as_deref(), Some("6380"));
        let pw = c
            .env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == "ABC_REDIS_PASSWORD")
            .unwrap();
        let key = pw
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!((key.name.as_str(), key.key.as_str()), ("s", "k"));
    }

    #[test]
    fn scheduling_and_lifetime_come_from_the_spec() {
        let run = run(
            "image: i\nimagePullPolicy: Always\nworkers:\n  runtime: 30m\n  processes: 4\n  catch: false\n  terminationGracePeriodSeconds: 300\n  nodeSelector: {pool: cpu}\n  tolerations: [{key: spot, operator: Exists}]\n  resources: {requests: {cpu: '2'}}\n  env: [{name: MODEL, value: fast}]\n",
        );
        let pod = worker_deployment(&run)
            .unwrap()
            .spec
            .unwrap()
            .template
            .spec
            .unwrap();
        assert_eq!(pod.termination_grace_period_seconds, Some(300));
        assert_eq!(pod.node_selector.unwrap()["pool"], "cpu");
        assert_eq!(pod.tolerations.unwrap()[0].key.as_deref(), Some("spot"));
        let c = &pod.containers[0];
        assert_eq!(c.image_pull_policy.as_deref(), Some("Always"));
        assert!(c.resources.as_ref().unwrap().requests.is_some());
        assert_eq!(env_value(c, "ABC_WORKER_RUNTIME").as_deref(), Some("30m"));
        assert_eq!(env_value(c, "ABC_WORKER_PROCESSES").as_deref(), Some("4"));
        assert_eq!(env_value(c, "ABC_WORKER_CATCH").as_deref(), Some("false"));
        assert_eq!(env_value(c, "MODEL").as_deref(), Some("fast"));
        // pyABC's default: a model's exception is a failed evaluation.
        let default = container(&minimal());
        assert_eq!(
            env_value(&default, "ABC_WORKER_CATCH").as_deref(),
            Some("true")
        );
    }

    #[test]
    fn users_env_overrides_settings_but_not_the_connection_or_identity() {
        let c = container(&run(
            "image: i\nworkers:\n  env:\n  - {name: ABC_REDIS_HOST, value: elsewhere}\n  - {name: ABC_WORKER_ID, value: me}\n  - {name: ABC_HEARTBEAT_SECONDS, value: '2'}\n  - {name: MODEL, value: fast}\n",
        ));
        assert_eq!(
            env_value(&c, "ABC_REDIS_HOST").as_deref(),
            Some("gaussian-redis")
        );
        let ids: Vec<_> = c
            .env
            .iter()
            .flatten()
            .filter(|e| e.name == "ABC_WORKER_ID")
            .collect();
        assert!(
            matches!(&ids[..], [id] if id.value.is_none() && id.value_from.is_some()),
            "{ids:?}"
        );
        assert_eq!(env_value(&c, "ABC_HEARTBEAT_SECONDS").as_deref(), Some("2"));
        assert_eq!(env_value(&c, "MODEL").as_deref(), Some("fast"));
    }

    #[test]
    fn rollouts_never_reduce_capacity() {
        let strategy = worker_deployment(&minimal())
            .unwrap()
            .spec
            .unwrap()
            .strategy
            .unwrap();
        assert_eq!(
            strategy.rolling_update.unwrap().max_unavailable,
            Some(IntOrString::Int(0))
        );
    }

    #[test]
    fn worker_selector_selects_worker_pods() {
        let run = minimal();
        assert_eq!(
            worker_selector(&run),
            "abc-operator.dev/component=worker,abc-operator.dev/run=gaussian"
        );
        let pod_labels = worker_deployment(&run)
            .unwrap()
            .spec
            .unwrap()
            .template
            .metadata
            .unwrap()
            .labels
            .unwrap();
        for pair in worker_selector(&run).split(',') {
            let (k, v) = pair.split_once('=').unwrap();
            assert_eq!(pod_labels.get(k).map(String::as_str), Some(v));
        }
    }
}
