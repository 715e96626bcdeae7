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
//!
//! Files: one per owned object (`redis.rs` also says where the run's Redis is, `workers.rs`
//! how to select worker pods), `pod.rs` what every owned pod shares, this file what every
//! object shares (names, labels, owner) and [`build`]; `tests.rs` checks all objects together.

mod configmap;
mod master;
mod networkpolicy;
mod pod;
mod redis;
mod results;
mod secret;
#[cfg(test)]
pub(crate) mod test_support;
#[cfg(test)]
mod tests;
mod workers;

pub use configmap::{
    ENTRYPOINT_DIR, ENTRYPOINT_KEY, ENTRYPOINT_PATH, MASTER_MODULE_KEY, entrypoint_sha256,
    worker_entrypoint_config_map, worker_entrypoint_name,
};
use configmap::{operator_files_mount, operator_files_volume};
pub use master::{POD_TEMPLATE_ANNOTATION, RESULTS_DIR, master_job, master_job_name};
pub use networkpolicy::{OPERATOR_NAME_LABEL_VALUE, redis_network_policy};
pub use redis::{
    DEFAULT_REDIS_IMAGE, REDIS_UID, managed_redis, redis_deployment, redis_deployment_name,
    redis_host_port, redis_host_port_for_operator, redis_service, redis_service_name,
};
pub use results::{
    MADE_BY_RUN_ANNOTATION, records_config_map, records_config_map_name, results_claim,
    results_claim_name,
};
pub use secret::{
    generated_password_secret_name, needs_generated_password, password_secret, password_secret_ref,
    password_to_keep,
};
pub use workers::{
    desired_worker_replicas, worker_deployment, worker_selector, workers_deployment_name,
};

use pod::{password_env, redis_env};
// What every owned pod shares, also for the pod `kubectl abc results` starts (crate::results_copy).
pub(crate) use pod::{
    container_security_context, env, hardened_pod_spec, placed, pod_metadata, tmp_mount,
    tmp_volume, with_pod_settings,
};

use crate::api::{AbcRun, COMPONENT_LABEL, Phase, RUN_LABEL};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service};
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
    /// The claim of the master's results database.
    Results,
}

impl Component {
    pub fn as_str(self) -> &'static str {
        match self {
            Component::Redis => "redis",
            Component::Worker => "worker",
            Component::Master => "master",
            Component::Results => "results",
        }
    }

    /// The part a [`COMPONENT_LABEL`] value names, if it names one.
    pub fn from_label(label: &str) -> Option<Component> {
        [
            Component::Redis,
            Component::Worker,
            Component::Master,
            Component::Results,
        ]
        .into_iter()
        .find(|c| c.as_str() == label)
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
    /// The claim of the master's results database, when the run makes one.
    pub results_claim: Option<PersistentVolumeClaim>,
}

/// Builds every object the run owns.
///
/// `password` is the generated Redis password; it is required exactly when
/// [`needs_generated_password`] (managed Redis without `passwordSecret`) and ignored otherwise.
/// The controller keeps the one already stored ([`password_to_keep`]) or generates one
/// ([`crate::protocol::generate_password`]) the first time.
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
        results_claim: results_claim(run)?,
    })
}

/// Whether the run has finished (the status says Succeeded, Failed or Stopped): its workers and
/// its managed Redis are then scaled to zero, and a master still running is ended. The phase
/// comes from the previous reconcile's observation, so this follows one reconcile after the
/// end.
pub fn finished(run: &AbcRun) -> bool {
    run.status
        .as_ref()
        .and_then(|s| s.phase)
        .is_some_and(Phase::is_finished)
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
