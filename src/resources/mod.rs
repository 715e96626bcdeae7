//! Pure builders of the objects an AbcRun owns.
//!
//! One file per owned object, each a pure function of the [`AbcRun`] (plus, for the generated
//! password Secret, the password). Nothing here talks to the API server: the controller applies
//! what [`build`] returns with server-side apply. Every map is a `BTreeMap` and every list has a
//! fixed order, so the same run builds the same objects and a second apply writes nothing.
//!
//! Every object lives in the run's namespace, is named from the run's name, carries
//! [`labels`] and a controller owner reference to the run (deletion is the garbage collector's
//! job). The Redis password only ever reaches a container through `secretKeyRef` env.

mod configmap;
mod master;
mod networkpolicy;
mod redis;
mod secret;
mod workers;

pub use configmap::{
    ENTRYPOINT_DIR, ENTRYPOINT_KEY, ENTRYPOINT_PATH, MASTER_MODULE_KEY, entrypoint_sha256,
    worker_entrypoint_config_map, worker_entrypoint_name,
};
use configmap::{operator_files_mount, operator_files_volume};
pub use master::{RESULTS_DIR, master_job, master_job_name};
pub use networkpolicy::{OPERATOR_NAME_LABEL_VALUE, redis_network_policy};
pub use redis::{
    DEFAULT_REDIS_IMAGE, REDIS_UID, redis_deployment, redis_deployment_name, redis_service,
};
pub use secret::{
    GENERATED_PASSWORD_LEN, generate_password, generated_password_secret_name,
    needs_generated_password, password_secret, password_secret_ref, password_to_keep,
};
pub use workers::{
    HEARTBEAT_SECONDS, desired_worker_replicas, worker_deployment, workers_deployment_name,
};

use crate::api::{AbcRun, COMPONENT_LABEL, ManagedRedis, Phase, RUN_LABEL, default_redis_port};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    PodSecurityContext, PodSpec, SeccompProfile, Secret, SecretKeySelector, SecurityContext,
    Service, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};
use std::collections::BTreeMap;

/// `app.kubernetes.io/managed-by` of every owned object.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// `app.kubernetes.io/name` of every owned object.
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "abc-operator";
/// Value of [`NAME_LABEL`] on objects owned by a run.
pub const RUN_APP_NAME: &str = "abc-run";
/// The port the managed Redis listens on (and its Service exposes).
pub const REDIS_PORT: i32 = 6379;
/// uid (and gid) of worker and master containers.
pub const POD_UID: i64 = 1000;
/// Longest run name whose owned objects are all valid: `{run}-master` is a Job name, and a
/// Job's name must fit a label value (63 characters).
pub const MAX_RUN_NAME_LEN: usize = 56;

/// What part of a run an object belongs to (the value of [`COMPONENT_LABEL`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    /// The managed Redis and everything around it (Secret, Service, NetworkPolicy).
    Redis,
    /// The worker Deployment, its pods and the entrypoint ConfigMap.
    Worker,
    /// The master Job and its pods.
    Master,
}

impl Component {
    pub fn as_str(self) -> &'static str {
        match self {
            Component::Redis => "redis",
            Component::Worker => "worker",
            Component::Master => "master",
        }
    }
}

/// A run the builders cannot build objects for.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BuildError {
    #[error("the AbcRun has no name")]
    MissingName,
    #[error("the AbcRun {0} has no namespace")]
    MissingNamespace(String),
    #[error("the AbcRun {0} has no uid (it was not read from the API server)")]
    MissingUid(String),
    #[error(
        "the AbcRun name {0:?} cannot name its objects: it must be at most {MAX_RUN_NAME_LEN} lowercase letters, digits and '-', start with a letter and end with a letter or digit"
    )]
    InvalidName(String),
    #[error("the AbcRun {0} uses a generated Redis password, but none was given to the builder")]
    MissingPassword(String),
}

/// What the builders take from the operator's configuration rather than from the run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildSettings {
    /// Image of a managed Redis whose run does not name one (`--redis-image`): air-gapped
    /// clusters pull it from their own registry.
    pub default_redis_image: String,
}

impl Default for BuildSettings {
    fn default() -> Self {
        BuildSettings {
            default_redis_image: DEFAULT_REDIS_IMAGE.to_string(),
        }
    }
}

/// Every object an AbcRun owns, as the controller applies them.
#[derive(Clone, Debug, PartialEq)]
pub struct Owned {
    /// The generated Redis password (managed Redis without `passwordSecret`).
    pub secret: Option<Secret>,
    /// The worker entrypoint.
    pub config_map: ConfigMap,
    /// The managed Redis.
    pub redis_deployment: Option<Deployment>,
    /// The managed Redis' Service.
    pub redis_service: Option<Service>,
    /// Who may reach the managed Redis.
    pub network_policy: Option<NetworkPolicy>,
    /// The workers.
    pub workers: Deployment,
    /// The master, when `spec.master` is set.
    pub master_job: Option<Job>,
}

/// Builds every object the run owns.
///
/// `password` is the generated Redis password; it is required exactly when
/// [`needs_generated_password`] (managed Redis without `passwordSecret`) and ignored otherwise.
/// The controller keeps the one already stored ([`password_to_keep`]) or generates one
/// ([`generate_password`]) the first time.
pub fn build(
    run: &AbcRun,
    password: Option<&str>,
    settings: &BuildSettings,
) -> Result<Owned, BuildError> {
    // Checks name, namespace and uid once for every builder below.
    object_meta(run, String::new(), Component::Worker)?;
    let secret = if needs_generated_password(run) {
        let password = password.ok_or_else(|| BuildError::MissingPassword(run.name_any()))?;
        Some(password_secret(run, password)?)
    } else {
        None
    };
    Ok(Owned {
        secret,
        config_map: worker_entrypoint_config_map(run)?,
        redis_deployment: redis_deployment(run, settings)?,
        redis_service: redis_service(run)?,
        network_policy: redis_network_policy(run)?,
        workers: worker_deployment(run)?,
        master_job: master_job(run)?,
    })
}

/// The managed Redis of the run (the default when `spec.redis.external` is unset), or `None`
/// for an external one.
pub fn managed_redis(run: &AbcRun) -> Option<ManagedRedis> {
    match &run.spec.redis.external {
        Some(_) => None,
        None => Some(run.spec.redis.managed.clone().unwrap_or_default()),
    }
}

/// Whether the run's master Job has finished (the status says Succeeded or Failed): its workers
/// and its managed Redis are then scaled to zero. The phase comes from the previous reconcile's
/// observation, so the scale-down follows one reconcile after the Job's end.
pub fn master_finished(run: &AbcRun) -> bool {
    matches!(
        run.status.as_ref().and_then(|s| s.phase),
        Some(Phase::Succeeded | Phase::Failed)
    )
}

/// Name of the managed Redis' Service (also its Deployment's and NetworkPolicy's name).
pub fn redis_service_name(run: &AbcRun) -> String {
    format!("{}-redis", run.name_any())
}

/// Redis host and port as the run's pods see them (same namespace: the Service's short name).
pub fn redis_host_port(run: &AbcRun) -> (String, i32) {
    match &run.spec.redis.external {
        Some(external) => (external.host.clone(), external.port),
        None => (redis_service_name(run), REDIS_PORT),
    }
}

/// Redis host and port as the operator sees them from its own namespace: the managed Redis'
/// Service as `{service}.{namespace}.svc`; an external host without a dot (a Service in the
/// run's namespace, as the run's pods resolve it) qualified the same way; any other external
/// host (a DNS name or an address) unchanged.
pub fn redis_host_port_for_operator(run: &AbcRun) -> Result<(String, u16), BuildError> {
    let namespace = namespace(run)?;
    let (host, port) = redis_host_port(run);
    let host = if host.contains('.') || host.contains(':') {
        host
    } else {
        format!("{host}.{namespace}.svc")
    };
    let port = u16::try_from(port).unwrap_or(default_redis_port() as u16);
    Ok((host, port))
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

/// Labels of every object (and pod) of `component` of the run.
pub fn labels(run: &AbcRun, component: Component) -> BTreeMap<String, String> {
    let mut labels = selector_labels(run, component);
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    labels.insert(NAME_LABEL.into(), RUN_APP_NAME.into());
    labels
}

/// The labels that select the pods of `component` of the run (Deployment selectors, Service,
/// NetworkPolicy). A subset of [`labels`], and never changed: Deployment selectors are
/// immutable.
pub fn selector_labels(run: &AbcRun, component: Component) -> BTreeMap<String, String> {
    BTreeMap::from([
        (RUN_LABEL.to_string(), run.name_any()),
        (COMPONENT_LABEL.to_string(), component.as_str().to_string()),
    ])
}

fn namespace(run: &AbcRun) -> Result<String, BuildError> {
    run.namespace()
        .ok_or_else(|| BuildError::MissingNamespace(run.name_any()))
}

fn valid_run_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_RUN_NAME_LEN
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[bytes.len() - 1] != b'-'
}

/// Metadata of an owned object: name, the run's namespace, labels, controller owner reference.
fn object_meta(run: &AbcRun, name: String, component: Component) -> Result<ObjectMeta, BuildError> {
    let run_name = run.meta().name.clone().ok_or(BuildError::MissingName)?;
    if !valid_run_name(&run_name) {
        return Err(BuildError::InvalidName(run_name));
    }
    let namespace = namespace(run)?;
    let owner = run
        .controller_owner_ref(&())
        .ok_or_else(|| BuildError::MissingUid(run_name.clone()))?;
    Ok(ObjectMeta {
        name: Some(name),
        namespace: Some(namespace),
        labels: Some(labels(run, component)),
        owner_references: Some(vec![owner]),
        ..ObjectMeta::default()
    })
}

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
fn hardened_pod_spec(uid: i64, containers: Vec<Container>, volumes: Vec<Volume>) -> PodSpec {
    PodSpec {
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(pod_security_context(uid)),
        containers,
        volumes: Some(volumes),
        ..PodSpec::default()
    }
}

/// A writable `/tmp` (Python and pyABC need one; the root file system is read-only).
fn tmp_volume() -> Volume {
    Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}

fn tmp_mount() -> VolumeMount {
    VolumeMount {
        name: "tmp".into(),
        mount_path: "/tmp".into(),
        ..VolumeMount::default()
    }
}

/// Security context of every owned container: no privilege escalation, read-only root file
/// system, no capabilities.
fn container_security_context() -> SecurityContext {
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

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

/// The Redis password as env, from the Secret it lives in (never a literal).
fn password_env(run: &AbcRun, name: &str) -> EnvVar {
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

/// Env names the operator owns in worker and master containers: a user's entry with one of
/// these names is dropped (the connection, the identity and the results mount must stay the operator's).
const RESERVED_ENV: [&str; 5] = [
    "ABC_REDIS_HOST",
    "ABC_REDIS_PORT",
    "ABC_REDIS_PASSWORD",
    "ABC_WORKER_ID",
    "ABC_RESULTS_DIR",
];

/// Redis connection env of workers and master: host, port, password (from the Secret).
fn redis_env(run: &AbcRun) -> Vec<EnvVar> {
    let (host, port) = redis_host_port(run);
    vec![
        env("ABC_REDIS_HOST", host),
        env("ABC_REDIS_PORT", port.to_string()),
        password_env(run, "ABC_REDIS_PASSWORD"),
    ]
}

/// `ours` followed by the user's env, one entry per name (env is a list-map keyed by name:
/// duplicates break server-side apply). A user's entry replaces one of ours with the same name
/// (e.g. `ABC_HEARTBEAT_SECONDS`), except the [`RESERVED_ENV`] ones; among the user's own
/// duplicates the last wins, as it would in the container.
fn merge_env(mut ours: Vec<EnvVar>, user: &[EnvVar]) -> Vec<EnvVar> {
    for var in user {
        if RESERVED_ENV.contains(&var.name.as_str()) {
            continue;
        }
        match ours.iter_mut().find(|v| v.name == var.name) {
            Some(existing) => *existing = var.clone(),
            None => ours.push(var.clone()),
        }
    }
    ours
}

#[cfg(test)]
pub(crate) mod test_support {
    //! A run as the controller sees it (name, namespace, uid), from YAML.
    use crate::api::AbcRun;

    pub const PASSWORD: &str = "s3cr3t-Pa55word-for-tests-only";

    pub fn run(spec_yaml: &str) -> AbcRun {
        let spec = spec_yaml
            .lines()
            .map(|l| format!("  {l}\n"))
            .collect::<String>();
        serde_yaml::from_str(&format!(
            "apiVersion: abc-operator.dev/v1alpha1\nkind: AbcRun\nmetadata:\n  name: gaussian\n  namespace: science\n  uid: 0b5e2c3a-1111-2222-3333-444455556666\nspec:\n{spec}"
        ))
        .expect("test run parses")
    }

    pub fn minimal() -> AbcRun {
        run("image: models/gaussian:1")
    }

    /// The literal value of a container's environment variable.
    pub fn env_value(c: &k8s_openapi::api::core::v1::Container, name: &str) -> Option<String> {
        c.env
            .as_ref()?
            .iter()
            .find(|e| e.name == name)?
            .value
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{PASSWORD, minimal, run};
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use kube::Resource;

    fn all_objects(owned: &Owned) -> Vec<(String, serde_json::Value)> {
        let mut out = Vec::new();
        fn push<K: Resource<DynamicType = ()> + serde::Serialize>(
            out: &mut Vec<(String, serde_json::Value)>,
            obj: &K,
        ) {
            out.push((
                format!(
                    "{}/{}",
                    K::kind(&()),
                    obj.meta().name.clone().unwrap_or_default()
                ),
                serde_json::to_value(obj).unwrap(),
            ));
        }
        if let Some(s) = &owned.secret {
            push(&mut out, s);
        }
        push(&mut out, &owned.config_map);
        if let Some(d) = &owned.redis_deployment {
            push(&mut out, d);
        }
        if let Some(s) = &owned.redis_service {
            push(&mut out, s);
        }
        if let Some(n) = &owned.network_policy {
            push(&mut out, n);
        }
        push(&mut out, &owned.workers);
        if let Some(j) = &owned.master_job {
            push(&mut out, j);
        }
        out
    }

    fn pod_specs(owned: &Owned) -> Vec<&PodSpec> {
        let mut specs = Vec::new();
        if let Some(d) = &owned.redis_deployment {
            specs.push(d.spec.as_ref().unwrap().template.spec.as_ref().unwrap());
        }
        specs.push(
            owned
                .workers
                .spec
                .as_ref()
                .unwrap()
                .template
                .spec
                .as_ref()
                .unwrap(),
        );
        if let Some(j) = &owned.master_job {
            specs.push(j.spec.as_ref().unwrap().template.spec.as_ref().unwrap());
        }
        specs
    }

    fn with_master() -> AbcRun {
        run("image: models/gaussian:1\nmaster:\n  command: [python, gaussian.py]\n")
    }

    #[test]
    fn managed_run_owns_everything_with_labels_and_owner_reference() {
        let owned = build(&with_master(), Some(PASSWORD), &BuildSettings::default()).unwrap();
        let objects = all_objects(&owned);
        let kinds: Vec<&str> = objects.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "Secret/gaussian-redis-password",
                "ConfigMap/gaussian-worker-entrypoint",
                "Deployment/gaussian-redis",
                "Service/gaussian-redis",
                "NetworkPolicy/gaussian-redis",
                "Deployment/gaussian-workers",
                "Job/gaussian-master",
            ]
        );
        for (what, obj) in objects {
            let meta = &obj["metadata"];
            assert_eq!(meta["namespace"], "science", "{what}");
            assert_eq!(meta["labels"]["abc-operator.dev/run"], "gaussian", "{what}");
            assert_eq!(
                meta["labels"]["app.kubernetes.io/managed-by"], "abc-operator",
                "{what}"
            );
            assert_eq!(
                meta["labels"]["app.kubernetes.io/name"], "abc-run",
                "{what}"
            );
            assert!(
                meta["labels"]["abc-operator.dev/component"].is_string(),
                "{what}"
            );
            let owners = meta["ownerReferences"].as_array().unwrap();
            assert_eq!(owners.len(), 1, "{what}");
            assert_eq!(owners[0]["kind"], "AbcRun");
            assert_eq!(owners[0]["apiVersion"], "abc-operator.dev/v1alpha1");
            assert_eq!(owners[0]["name"], "gaussian");
            assert_eq!(owners[0]["uid"], "0b5e2c3a-1111-2222-3333-444455556666");
            assert_eq!(owners[0]["controller"], true);
        }
    }

    #[test]
    fn password_is_never_a_literal_outside_its_secret() {
        let owned = build(&with_master(), Some(PASSWORD), &BuildSettings::default()).unwrap();
        for (what, obj) in all_objects(&owned) {
            let text = obj.to_string();
            if what.starts_with("Secret/") {
                continue;
            }
            assert!(!text.contains(PASSWORD), "{what} contains the password");
        }
        // Every password env var comes from the Secret.
        for spec in pod_specs(&owned) {
            let containers = spec
                .containers
                .iter()
                .chain(spec.init_containers.iter().flatten());
            for c in containers {
                for var in c.env.iter().flatten() {
                    if var.name.contains("PASSWORD") || var.name == "REDISCLI_AUTH" {
                        assert!(
                            var.value.is_none(),
                            "{} of {} is a literal",
                            var.name,
                            c.name
                        );
                        let key = var
                            .value_from
                            .as_ref()
                            .unwrap()
                            .secret_key_ref
                            .as_ref()
                            .unwrap();
                        assert_eq!(key.name, "gaussian-redis-password");
                        assert_eq!(key.key, "password");
                    }
                }
            }
        }
    }

    fn assert_locked_down(spec: &PodSpec, c: &Container) {
        let pod = spec.security_context.as_ref().unwrap();
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(pod.run_as_non_root, Some(true), "{}", c.name);
        assert!(pod.run_as_user.unwrap() > 0, "{}", c.name);
        assert_eq!(
            pod.seccomp_profile.as_ref().unwrap().type_,
            "RuntimeDefault"
        );
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
        assert_eq!(sc.read_only_root_filesystem, Some(true), "{}", c.name);
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_string()][..]),
            "{}",
            c.name
        );
        assert!(
            sc.capabilities.as_ref().unwrap().add.is_none(),
            "{}",
            c.name
        );
        assert_ne!(sc.privileged, Some(true));
        assert_eq!(
            spec.automount_service_account_token,
            Some(false),
            "{}",
            c.name
        );
    }

    #[test]
    fn every_container_is_non_root_read_only_without_capabilities() {
        let owned = build(&with_master(), Some(PASSWORD), &BuildSettings::default()).unwrap();
        let specs = pod_specs(&owned);
        assert_eq!(specs.len(), 3);
        for spec in specs {
            for c in spec
                .containers
                .iter()
                .chain(spec.init_containers.iter().flatten())
            {
                assert_locked_down(spec, c);
            }
        }
    }

    #[test]
    fn external_redis_builds_no_redis_secret_or_network_policy() {
        let run = run(
            "image: img\nredis:\n  external:\n    host: redis.shared.svc\n    port: 6380\n    passwordSecret: {name: shared-redis, key: pw}\n",
        );
        let owned = build(&run, None, &BuildSettings::default()).unwrap();
        assert!(owned.secret.is_none());
        assert!(owned.redis_deployment.is_none());
        assert!(owned.redis_service.is_none());
        assert!(owned.network_policy.is_none());
        assert!(owned.master_job.is_none());
        // A password handed in by mistake is not used anywhere.
        let with_password = build(&run, Some(PASSWORD), &BuildSettings::default()).unwrap();
        assert_eq!(with_password, owned);
    }

    #[test]
    fn managed_redis_with_own_secret_needs_no_generated_password() {
        let run = run("image: img\nredis:\n  managed:\n    passwordSecret: {name: mine}\n");
        let owned = build(&run, None, &BuildSettings::default()).unwrap();
        assert!(owned.secret.is_none());
        assert!(owned.redis_deployment.is_some());
    }

    #[test]
    fn generated_password_is_required() {
        assert_eq!(
            build(&minimal(), None, &BuildSettings::default()),
            Err(BuildError::MissingPassword("gaussian".into()))
        );
    }

    #[test]
    fn building_twice_gives_the_same_objects() {
        let a = build(&with_master(), Some(PASSWORD), &BuildSettings::default()).unwrap();
        let b = build(&with_master(), Some(PASSWORD), &BuildSettings::default()).unwrap();
        assert_eq!(a, b);
        assert_eq!(
            serde_json::to_string(&a.workers).unwrap(),
            serde_json::to_string(&b.workers).unwrap()
        );
    }

    #[test]
    fn run_without_namespace_uid_or_with_a_bad_name_is_refused() {
        let mut run = minimal();
        run.metadata.namespace = None;
        assert!(matches!(
            build(&run, Some(PASSWORD), &BuildSettings::default()),
            Err(BuildError::MissingNamespace(_))
        ));
        let mut run = minimal();
        run.metadata.uid = None;
        assert!(matches!(
            build(&run, Some(PASSWORD), &BuildSettings::default()),
            Err(BuildError::MissingUid(_))
        ));
        for bad in [
            "a".repeat(57),
            "1run".into(),
            "run.v2".into(),
            "Run".into(),
            "run-".into(),
        ] {
            let mut run = minimal();
            run.metadata.name = Some(bad.clone());
            assert_eq!(
                build(&run, Some(PASSWORD), &BuildSettings::default()),
                Err(BuildError::InvalidName(bad))
            );
        }
        let mut run = minimal();
        run.metadata.name = Some("a".repeat(56));
        assert!(build(&run, Some(PASSWORD), &BuildSettings::default()).is_ok());
    }

    #[test]
    fn crd_refuses_the_names_the_builders_refuse() {
        let crd = crate::api::crd_yaml();
        assert!(crd.contains(&format!("self.metadata.name.size() <= {MAX_RUN_NAME_LEN}")));
    }

    #[test]
    fn worker_selector_selects_worker_pods() {
        let run = minimal();
        assert_eq!(
            worker_selector(&run),
            "abc-operator.dev/component=worker,abc-operator.dev/run=gaussian"
        );
        let owned = build(&run, Some(PASSWORD), &BuildSettings::default()).unwrap();
        let pod_labels = owned
            .workers
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

    #[test]
    fn operator_reaches_redis_by_qualified_service_name() {
        assert_eq!(
            redis_host_port_for_operator(&minimal()).unwrap(),
            ("gaussian-redis.science.svc".to_string(), 6379)
        );
        let short =
            run("image: i\nredis:\n  external: {host: shared, passwordSecret: {name: s}}\n");
        assert_eq!(
            redis_host_port_for_operator(&short).unwrap(),
            ("shared.science.svc".to_string(), 6379)
        );
        let fqdn = run(
            "image: i\nredis:\n  external: {host: redis.example.org, port: 7000, passwordSecret: {name: s}}\n",
        );
        assert_eq!(
            redis_host_port_for_operator(&fqdn).unwrap(),
            ("redis.example.org".to_string(), 7000)
        );
    }

    #[test]
    fn user_env_overrides_defaults_but_not_the_connection() {
        let merged = merge_env(
            vec![
                env("ABC_REDIS_HOST", "gaussian-redis"),
                env("ABC_HEARTBEAT_SECONDS", "5"),
            ],
            &[
                env("ABC_REDIS_HOST", "elsewhere"),
                env("ABC_HEARTBEAT_SECONDS", "2"),
                env("MODEL", "a"),
                env("MODEL", "b"),
            ],
        );
        assert_eq!(
            merged,
            vec![
                env("ABC_REDIS_HOST", "gaussian-redis"),
                env("ABC_HEARTBEAT_SECONDS", "2"),
                env("MODEL", "b"),
            ]
        );
    }
}
