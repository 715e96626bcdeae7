//! What every owned pod and container shares: a locked-down security context, a writable
//! `/tmp`, and the Redis connection as env.

use super::{password_secret_ref, redis_host_port};
use crate::api::{AbcRun, PodPlacement, PodSettings};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, PodSecurityContext,
    PodSpec, SeccompProfile, SecretKeySelector, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::collections::BTreeMap;

/// Pod security context of every owned pod: non-root `uid`, RuntimeDefault seccomp.
fn pod_security_context(uid: i64) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(uid),
        run_as_group: Some(uid),
        fs_group: Some(uid),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    }
}

/// The pod spec every owned pod starts from: non-root `uid`, no service account token (no
/// owned pod talks to the API server), no service links (their variables would leak other
/// services' addresses into the user's model).
pub(crate) fn hardened_pod_spec(
    uid: i64,
    containers: Vec<Container>,
    volumes: Vec<Volume>,
) -> PodSpec {
    PodSpec {
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(pod_security_context(uid)),
        containers,
        volumes: Some(volumes),
        ..PodSpec::default()
    }
}

/// `spec` placed as `placement` says, pulling with the run's image pull secrets. The
/// operator's own fields stay as they are.
pub(crate) fn placed(run: &AbcRun, mut spec: PodSpec, placement: &PodPlacement) -> PodSpec {
    fn some<T: Clone>(items: &[T]) -> Option<Vec<T>> {
        (!items.is_empty()).then(|| items.to_vec())
    }
    spec.node_selector =
        (!placement.node_selector.is_empty()).then(|| placement.node_selector.clone());
    spec.tolerations = some(&placement.tolerations);
    spec.affinity = placement.affinity.clone();
    spec.topology_spread_constraints = some(&placement.topology_spread_constraints);
    spec.priority_class_name = placement.priority_class_name.clone();
    spec.service_account_name = placement.service_account_name.clone();
    spec.image_pull_secrets = some(&run.spec.image_pull_secrets);
    spec
}

/// [`placed`], with the user's volumes, and their mounts and `envFrom` in the main container
/// (the first). The schema keeps their names and paths off the operator's.
pub(crate) fn with_pod_settings(run: &AbcRun, spec: PodSpec, settings: &PodSettings) -> PodSpec {
    let mut spec = placed(run, spec, &settings.placement);
    if !settings.volumes.is_empty() {
        let volumes = spec.volumes.get_or_insert_default();
        volumes.extend(settings.volumes.iter().cloned());
    }
    if let Some(main) = spec.containers.first_mut() {
        if !settings.volume_mounts.is_empty() {
            let mounts = main.volume_mounts.get_or_insert_default();
            mounts.extend(settings.volume_mounts.iter().cloned());
        }
        if !settings.env_from.is_empty() {
            main.env_from = Some(settings.env_from.clone());
        }
    }
    spec
}

/// A pod template's metadata: the run's labels (and the operator's annotations) over the
/// user's `podLabels` and `podAnnotations`.
pub(crate) fn pod_metadata(
    labels: Option<BTreeMap<String, String>>,
    annotations: BTreeMap<String, String>,
    placement: &PodPlacement,
) -> ObjectMeta {
    let mut all_labels = placement.pod_labels.clone();
    all_labels.extend(labels.unwrap_or_default());
    let mut all_annotations = placement.pod_annotations.clone();
    all_annotations.extend(annotations);
    ObjectMeta {
        labels: Some(all_labels),
        annotations: (!all_annotations.is_empty()).then_some(all_annotations),
        ..ObjectMeta::default()
    }
}

/// A writable `/tmp` (Python and pyABC need one; the root file system is read-only).
pub(crate) fn tmp_volume() -> Volume {
    Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}

pub(crate) fn tmp_mount() -> VolumeMount {
    VolumeMount {
        name: "tmp".into(),
        mount_path: "/tmp".into(),
        ..VolumeMount::default()
    }
}

/// Security context of every owned container: no privilege escalation, read-only root file
/// system, no capabilities.
pub(crate) fn container_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    }
}

pub(crate) fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

/// The Redis password as env, from the Secret it lives in (never a literal).
pub(super) fn password_env(run: &AbcRun, name: &str) -> EnvVar {
    let secret = password_secret_ref(run);
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.name,
                key: secret.key,
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
    }
}

/// Redis connection env of workers and master: host, port, password (from the Secret).
pub(super) fn redis_env(run: &AbcRun) -> Vec<EnvVar> {
    let (host, port) = redis_host_port(run);
    vec![
        env("ABC_REDIS_HOST", host),
        env("ABC_REDIS_PORT", port.to_string()),
        password_env(run, "ABC_REDIS_PASSWORD"),
    ]
}

#[cfg(test)]
mod tests {
    use crate::resources::test_support::run;
    use crate::resources::{BuildSettings, master_job, redis_deployment, worker_deployment};
    use k8s_openapi::api::core::v1::PodTemplateSpec;

    const SETTINGS: &str = "
  nodeSelector: {pool: spot}
  tolerations: [{key: spot, operator: Exists}]
  affinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution: {nodeSelectorTerms: [{matchExpressions: [{key: zone, operator: In, values: [a]}]}]}}}
  topologySpreadConstraints: [{maxSkew: 1, topologyKey: zone, whenUnsatisfiable: ScheduleAnyway}]
  priorityClassName: science
  serviceAccountName: model-reader
  podLabels: {team: bio, abc-operator.dev/component: mine}
  podAnnotations: {cost-center: '42'}";
    const DATA: &str = "
  volumes: [{name: model-data, persistentVolumeClaim: {claimName: data}}]
  volumeMounts: [{name: model-data, mountPath: /data, readOnly: true}]
  envFrom: [{configMapRef: {name: model-settings}}]";

    fn placed_as_asked(template: &PodTemplateSpec, component: &str) {
        let meta = template.metadata.as_ref().unwrap();
        let labels = meta.labels.as_ref().unwrap();
        assert_eq!(labels["team"], "bio");
        assert_eq!(labels["abc-operator.dev/component"], component, "ours win");
        assert_eq!(meta.annotations.as_ref().unwrap()["cost-center"], "42");
        let spec = template.spec.as_ref().unwrap();
        assert_eq!(spec.node_selector.as_ref().unwrap()["pool"], "spot");
        assert_eq!(spec.tolerations.as_ref().unwrap().len(), 1);
        assert!(spec.affinity.as_ref().unwrap().node_affinity.is_some());
        assert_eq!(spec.topology_spread_constraints.as_ref().unwrap().len(), 1);
        assert_eq!(spec.priority_class_name.as_deref(), Some("science"));
        assert_eq!(spec.service_account_name.as_deref(), Some("model-reader"));
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert_eq!(
            spec.image_pull_secrets.as_ref().unwrap()[0].name,
            "registry"
        );
    }

    fn with_data(template: &PodTemplateSpec) {
        let spec = template.spec.as_ref().unwrap();
        let volumes: Vec<&str> = spec
            .volumes
            .iter()
            .flatten()
            .map(|v| v.name.as_str())
            .collect();
        assert!(
            volumes.contains(&"model-data") && volumes.contains(&"tmp"),
            "{volumes:?}"
        );
        let main = &spec.containers[0];
        let mounts: Vec<&str> = main
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.mount_path.as_str())
            .collect();
        assert!(
            mounts.contains(&"/data") && mounts.contains(&"/tmp"),
            "{mounts:?}"
        );
        assert_eq!(main.env_from.as_ref().unwrap().len(), 1);
    }

    #[test]
    fn every_pod_is_placed_as_asked_and_workers_and_master_get_their_data() {
        let indent = |text: &str| text.replace("\n  ", "\n    ");
        let run = run(&format!(
            "image: i\nimagePullSecrets: [{{name: registry}}]\nworkers:{}{}\nmaster:\n    command: [m]{}{}\nredis:\n  managed:{}",
            indent(SETTINGS),
            indent(DATA),
            indent(SETTINGS),
            indent(DATA),
            indent(SETTINGS),
        ));
        let workers = worker_deployment(&run).unwrap().spec.unwrap().template;
        placed_as_asked(&workers, "worker");
        with_data(&workers);
        let master = master_job(&run).unwrap().unwrap().spec.unwrap().template;
        placed_as_asked(&master, "master");
        with_data(&master);
        let redis = redis_deployment(&run, &BuildSettings::default())
            .unwrap()
            .unwrap()
            .spec
            .unwrap()
            .template;
        placed_as_asked(&redis, "redis");
    }
}
