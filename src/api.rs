//! The `AbcRun` custom resource: one pyABC Redis-sampler run (Redis, workers, optional master).
//!
//! Validation lives in the schema (ranges, patterns, CEL rules) so the API server rejects a bad
//! manifest before the controller ever sees it; the local runner applies the same checks through
//! [`AbcRunSpec::validate`].

use k8s_openapi::api::core::v1::{
    Affinity, EnvFromSource, EnvVar, LocalObjectReference, ResourceRequirements, Toleration,
    TopologySpreadConstraint, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// API group of every abc-operator resource.
pub const GROUP: &str = "abc-operator.dev";
/// Label put on every object that belongs to a run (value: the AbcRun's name).
pub const RUN_LABEL: &str = "abc-operator.dev/run";
/// Label telling what part of a run an object is (`redis`, `worker`, `master`).
pub const COMPONENT_LABEL: &str = "abc-operator.dev/component";
/// The one field manager the operator applies every object with.
pub const FIELD_MANAGER: &str = "abc-operator";

/// A pyABC ABC-SMC run sampled through Redis: a password-protected Redis, a scalable set of
/// workers, and optionally the master (the user's script) as a Job.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "abc-operator.dev",
    version = "v1alpha1",
    kind = "AbcRun",
    plural = "abcruns",
    shortname = "abc",
    namespaced,
    status = "AbcRunStatus",
    scale(
        spec_replicas_path = ".spec.workers.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Generation", type_ = "integer", json_path = ".status.progress.generation"),
    printcolumn(name = "Accepted", type_ = "string", json_path = ".status.progress.acceptances"),
    printcolumn(name = "Epsilon", type_ = "number", json_path = ".status.inference.epsilon"),
    printcolumn(name = "Workers", type_ = "string", json_path = ".status.workers"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    doc = "A pyABC ABC-SMC run sampled through Redis: a password-protected Redis, a scalable set of workers, and optionally the master as a Job.",
    // The run's name names its objects: `{run}-redis` is a Service (a DNS-1035 label) and
    // `{run}-master` a Job (whose name must fit a 63-character label value).
    validation = Rule::new("self.metadata.name.size() <= 56 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("an AbcRun name must be at most 56 lowercase letters, digits and '-', start with a letter and end with a letter or digit (it names the run's Service and Job)"),
    validation = Rule::new("!has(self.spec.idleTimeoutSeconds) || !has(self.spec.master)").message("spec.idleTimeoutSeconds is for a run without spec.master (its master runs elsewhere); a run with a master ends with it")
)]
#[serde(rename_all = "camelCase")]
pub struct AbcRunSpec {
    /// Container image with Python, pyabc and the model's dependencies; used by workers and
    /// the master. The operator mounts its worker entrypoint into it, so pyabc is all it needs.
    #[x_kube(validation = Rule::new("self.size() > 0").message("spec.image must name a container image with python and pyabc"))]
    pub image: String,

    /// Secrets to pull images with (a private registry's credentials), for every pod of the
    /// run: workers, master and the managed Redis.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub image_pull_secrets: Vec<LocalObjectReference>,

    /// Image pull policy for workers and master (Always, IfNotPresent, Never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(Always|IfNotPresent|Never)$"))]
    pub image_pull_policy: Option<String>,

    /// The workers that simulate (pyABC's `abc-redis-worker`, run through the operator's
    /// ledger-keeping entrypoint).
    #[serde(default)]
    pub workers: WorkersSpec,

    /// Where Redis comes from: managed by the operator (the default) or external.
    #[serde(default)]
    pub redis: RedisSpec,

    /// The master: the user's script that runs `ABCSMC.run` with a Redis sampler. Without it the
    /// user runs the master elsewhere (e.g. a laptop through a port-forward).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master: Option<MasterSpec>,

    /// Stop the run for good (`kubectl abc stop` sets it): the master ends the analysis once
    /// the generation being sampled is stored (a master that runs `abc_operator.run`; another
    /// is ended after its workers left at the end of that generation), the workers finish it
    /// and are not replaced, then workers and Redis are given back and the phase is Stopped.
    /// Cannot be undone: a stopped run is finished.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self || !oldSelf").message("spec.stop cannot be undone: a stopped run is finished (its master ended after its last stored generation); create a new AbcRun to sample again"))]
    pub stop: bool,

    /// Hold the run where it is (Kueue-style suspension): the workers are scaled to zero and
    /// the master Job is suspended (its pod is deleted; its stored generations are kept). When
    /// lifted, the master starts again and resumes from its results database (kept on the
    /// run's results claim), and the workers come back.
    #[serde(default)]
    pub suspend: bool,

    /// For a run without `master` (its master runs elsewhere: a laptop, a notebook): stop the
    /// run after this many seconds with no analysis in its Redis, as `stop` does (workers and
    /// Redis given back, phase Stopped). Unset: it waits for a master for ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub idle_timeout_seconds: Option<i64>,

    /// Delete the AbcRun (and so everything it owns) this many seconds after it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i64>,
}

/// Deserializers of the flattened pod fields that name their field in an error: serde loses
/// the path inside a flattened struct, and a user must learn which field is wrong.
mod named {
    use serde::{Deserialize, Deserializer, de::Error};

    fn named<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        deserializer: D,
        field: &str,
    ) -> Result<T, D::Error> {
        T::deserialize(deserializer).map_err(|e| D::Error::custom(format!("{field}: {e}")))
    }

    macro_rules! named_fields {
        ($($rust:ident: $type:ty = $json:literal),* $(,)?) => {$(
            pub fn $rust<'de, D: Deserializer<'de>>(deserializer: D) -> Result<$type, D::Error> {
                named(deserializer, $json)
            }
        )*};
    }

    use k8s_openapi::api::core::v1::{
        Affinity, EnvFromSource, Toleration, TopologySpreadConstraint, Volume, VolumeMount,
    };
    use std::collections::BTreeMap;
    named_fields! {
        node_selector: BTreeMap<String, String> = "nodeSelector",
        tolerations: Vec<Toleration> = "tolerations",
        affinity: Option<Affinity> = "affinity",
        topology_spread_constraints: Vec<TopologySpreadConstraint> = "topologySpreadConstraints",
        priority_class_name: Option<String> = "priorityClassName",
        service_account_name: Option<String> = "serviceAccountName",
        pod_labels: BTreeMap<String, String> = "podLabels",
        pod_annotations: BTreeMap<String, String> = "podAnnotations",
        volumes: Vec<Volume> = "volumes",
        volume_mounts: Vec<VolumeMount> = "volumeMounts",
        env_from: Vec<EnvFromSource> = "envFrom",
    }
}

/// Where and as what a run's pods run: placement, priority, identity and metadata, the same
/// fields for workers, master and the managed Redis (written beside their other fields).
/// Explicit fields rather than a partial pod template: the API server validates each as it does
/// in a pod, and what the operator owns (the command, the security context, its volumes, the
/// run's labels) is out of reach; a label the operator uses is refused with the field named.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodPlacement {
    /// Node selector of the pods.
    #[serde(
        default,
        deserialize_with = "named::node_selector",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the pods (e.g. of a spot or GPU node pool's taint).
    #[serde(
        default,
        deserialize_with = "named::tolerations",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub tolerations: Vec<Toleration>,
    /// Affinity of the pods (node affinity, pod (anti-)affinity), as in a pod.
    #[serde(
        default,
        deserialize_with = "named::affinity",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(schema_with = "as_in_a_pod_schema")]
    pub affinity: Option<Affinity>,
    /// Topology spread constraints of the pods.
    #[serde(
        default,
        deserialize_with = "named::topology_spread_constraints",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    /// PriorityClass of the pods.
    #[serde(
        default,
        deserialize_with = "named::priority_class_name",
        skip_serializing_if = "Option::is_none"
    )]
    pub priority_class_name: Option<String>,
    /// ServiceAccount the pods run as (its token is not mounted: the operator's pods need no
    /// API access; a volume of `volumes` can project one).
    #[serde(
        default,
        deserialize_with = "named::service_account_name",
        skip_serializing_if = "Option::is_none"
    )]
    pub service_account_name: Option<String>,
    /// Labels added to the pods (not under `abc-operator.dev/`, the run's own).
    #[serde(
        default,
        deserialize_with = "named::pod_labels",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    #[schemars(extend("maxProperties" = 64))]
    #[x_kube(validation = Rule::new("self.all(k, !k.startsWith('abc-operator.dev/') && !k.startsWith('app.kubernetes.io/'))").message("podLabels: abc-operator.dev/ and app.kubernetes.io/ labels are the run's own (its selectors use them)"))]
    pub pod_labels: BTreeMap<String, String>,
    /// Annotations added to the pods.
    #[serde(
        default,
        deserialize_with = "named::pod_annotations",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub pod_annotations: BTreeMap<String, String>,
}

/// [`PodPlacement`], and volumes and environment of the user's own (workers and master).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodSettings {
    #[serde(flatten)]
    pub placement: PodPlacement,
    /// More volumes of the pods (model data, a shared cache); `tmp`, `abc-operator` and
    /// `results` are the operator's.
    #[serde(
        default,
        deserialize_with = "named::volumes",
        skip_serializing_if = "Vec::is_empty"
    )]
    #[schemars(schema_with = "volumes_schema")]
    #[x_kube(validation = Rule::new("self.all(v, !(v.name in ['tmp', 'abc-operator', 'results']))").message("volumes: tmp, abc-operator and results are the operator's volume names; choose another name"))]
    pub volumes: Vec<Volume>,
    /// Where the main container mounts them; `/tmp`, `/etc/abc-operator` and `/results` are
    /// the operator's.
    #[serde(
        default,
        deserialize_with = "named::volume_mounts",
        skip_serializing_if = "Vec::is_empty"
    )]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.all(m, !(m.mountPath in ['/tmp', '/etc/abc-operator', '/results']) && !m.mountPath.startsWith('/etc/abc-operator/') && !(m.name in ['tmp', 'abc-operator', 'results']))").message("volumeMounts: /tmp, /etc/abc-operator and /results, and the volumes tmp, abc-operator and results, are the operator's; mount your volumes elsewhere"))]
    pub volume_mounts: Vec<VolumeMount>,
    /// Environment of the main container from ConfigMaps and Secrets (the operator's `ABC_*`
    /// variables and `env` take precedence, as in a pod).
    #[serde(
        default,
        deserialize_with = "named::env_from",
        skip_serializing_if = "Vec::is_empty"
    )]
    #[schemars(length(max = 16))]
    pub env_from: Vec<EnvFromSource>,
}

/// Worker pods.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkersSpec {
    /// Number of worker pods (driven by `kubectl scale`, an HPA or KEDA through the scale
    /// subresource).
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 10000))]
    pub replicas: i32,

    /// Runtime limit of one worker, in pyABC's syntax (`30s`, `10m`, `2h`, `2d`). An expired
    /// worker leaves cleanly and is replaced at once.
    #[serde(default = "default_runtime")]
    #[x_kube(validation = Rule::new(r"self.matches('^[0-9]+(\\.[0-9]+)?[smhd]$')").message("spec.workers.runtime must be in pyABC's syntax: a number and s, m, h or d (30s, 10m, 2h, 2d)"))]
    pub runtime: String,

    /// Worker processes per pod (each one a pyABC worker with its own ledger).
    #[serde(default = "default_processes")]
    #[schemars(range(min = 1, max = 256))]
    pub processes: i32,

    /// pyABC's `--catch`: a model that raises counts as a failed evaluation and the worker goes
    /// on (true, pyABC's default), or the worker stops (false), e.g. to see a model's bug at
    /// once in its log and the pod's restarts.
    #[serde(default = "default_catch")]
    pub catch: bool,

    /// Seconds a worker gets after SIGTERM to finish its current evaluation and leave the
    /// generation cleanly; one killed past it is repaired like any lost worker.
    #[serde(default = "default_grace")]
    #[schemars(range(min = 1, max = 86400))]
    pub termination_grace_period_seconds: i64,

    /// Seconds without a ledger heartbeat after which a worker whose pod still exists is
    /// declared lost (a hung process or a network partition) and repaired.
    #[serde(default = "default_heartbeat_timeout")]
    #[schemars(range(min = 5, max = 86400))]
    pub heartbeat_timeout_seconds: i64,

    /// Compute resources of each worker container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Extra environment of the worker container. The operator's names (`ABC_REDIS_*`,
    /// `ABC_WORKER_ID`, `ABC_RESULTS_DIR`) are refused; `PYTHONPATH` goes after the operator's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new("self.all(e, !(e.name in ['ABC_REDIS_HOST', 'ABC_REDIS_PORT', 'ABC_REDIS_PASSWORD', 'ABC_REDIS_SOCKET', 'ABC_WORKER_ID', 'ABC_RESULTS_DIR']))").message("spec.workers.env: ABC_REDIS_HOST, ABC_REDIS_PORT, ABC_REDIS_PASSWORD, ABC_REDIS_SOCKET, ABC_WORKER_ID and ABC_RESULTS_DIR are set by the operator (the run's Redis, the worker's identity, the results folder); remove them"))]
    pub env: Vec<EnvVar>,

    /// Where and as what the worker pods run, and what more they mount.
    #[serde(flatten)]
    pub pod: PodSettings,
}

impl Default for WorkersSpec {
    fn default() -> Self {
        WorkersSpec {
            replicas: default_replicas(),
            runtime: default_runtime(),
            processes: default_processes(),
            catch: default_catch(),
            termination_grace_period_seconds: default_grace(),
            heartbeat_timeout_seconds: default_heartbeat_timeout(),
            resources: None,
            env: Vec::new(),
            pod: PodSettings::default(),
        }
    }
}

fn default_replicas() -> i32 {
    1
}
fn default_runtime() -> String {
    "2h".into()
}
fn default_catch() -> bool {
    true
}

fn default_processes() -> i32 {
    1
}
fn default_grace() -> i64 {
    60
}
fn default_heartbeat_timeout() -> i64 {
    60
}

/// Redis: either managed by the operator or an existing one.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.managed) && has(self.external))").message("spec.redis: set either managed or external, not both"))]
pub struct RedisSpec {
    /// A Redis Deployment and Service owned by the run (the default when `external` is unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedRedis>,
    /// An existing Redis the run uses instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalRedis>,
}

/// A Redis the operator runs for this run.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ManagedRedis {
    /// Redis image (defaults to the operator's `--redis-image`, redis:7.4-alpine unless set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Compute resources of the Redis container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// A Secret holding the password; generated (and kept across reconciles) when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret: Option<SecretKeyRef>,
    /// Where and as what the Redis pod runs.
    #[serde(flatten)]
    pub pod: PodPlacement,
}

/// A Redis outside the run.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExternalRedis {
    /// Host name or address of the Redis server.
    #[x_kube(validation = Rule::new("self.size() > 0").message("spec.redis.external.host must not be empty"))]
    pub host: String,
    /// Port of the Redis server.
    #[serde(default = "default_redis_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// The Secret holding the Redis password. Required: abc-operator never talks to a Redis
    /// without one.
    pub password_secret: SecretKeyRef,
}

/// The standard Redis port.
pub fn default_redis_port() -> i32 {
    6379
}

/// A key of a Secret in the run's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[x_kube(validation = Rule::new("self.size() > 0").message("a Secret name must not be empty"))]
    pub name: String,
    /// Key in the Secret.
    #[serde(default = "default_password_key")]
    pub key: String,
}

/// The Secret key the generated password is stored under.
pub fn default_password_key() -> String {
    "password".into()
}

/// The master: the user's script that runs the ABC-SMC analysis.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.resultsClaimName) && has(self.results))").message("spec.master: set either resultsClaimName (a claim of your own) or results (the claim the run makes), not both"))]
pub struct MasterSpec {
    /// Command of the master (e.g. `["python", "gaussian.py"]`). It finds Redis in
    /// `ABC_REDIS_HOST`, `ABC_REDIS_PORT` and `ABC_REDIS_PASSWORD`, and should write its results
    /// database under `ABC_RESULTS_DIR`. Locally it runs in the manifest's folder.
    #[x_kube(validation = Rule::new("self.size() > 0").message("spec.master.command must not be empty"))]
    pub command: Vec<String>,
    /// Arguments to the command.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Extra environment of the master container. The operator's names (`ABC_REDIS_*`,
    /// `ABC_WORKER_ID`, `ABC_RESULTS_DIR`) are refused; a `PYTHONPATH` goes after the folder of
    /// the `abc_operator` module, so it is a literal value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new("self.all(e, !(e.name in ['ABC_REDIS_HOST', 'ABC_REDIS_PORT', 'ABC_REDIS_PASSWORD', 'ABC_REDIS_SOCKET', 'ABC_WORKER_ID', 'ABC_RESULTS_DIR']))").message("spec.master.env: ABC_REDIS_HOST, ABC_REDIS_PORT, ABC_REDIS_PASSWORD, ABC_REDIS_SOCKET, ABC_WORKER_ID and ABC_RESULTS_DIR are set by the operator (the run's Redis, the worker's identity, the results folder); remove them"))]
    #[x_kube(validation = Rule::new("self.all(e, e.name != 'PYTHONPATH' || !has(e.valueFrom))").message("spec.master.env: PYTHONPATH must be a value, not valueFrom (the operator puts the abc_operator module's folder before it)"))]
    pub env: Vec<EnvVar>,
    /// Compute resources of the master container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Where and as what the master's pod runs, and what more it mounts.
    #[serde(flatten)]
    pub pod: PodSettings,
    /// Retries of a failed master (the Job's backoffLimit).
    #[serde(default = "default_backoff_limit")]
    #[schemars(range(min = 0, max = 100))]
    pub backoff_limit: i32,
    /// Fail the run when the master has run this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub active_deadline_seconds: Option<i64>,
    /// A PersistentVolumeClaim of your own for the results database (mounted at
    /// `ABC_RESULTS_DIR`), instead of the claim the run makes (`results`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results_claim_name: Option<String>,
    /// The claim the run makes for its results database (`{run}-results`), unless
    /// `resultsClaimName` names one of your own. It outlives the master, so that a master that
    /// is started again resumes from the database, and `kubectl abc results` copies it out
    /// during and after the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results: Option<ResultsSpec>,
}

/// The results claim the run makes. Its storage cannot change once made: only `keep` can.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.volume == oldSelf.volume && self.size == oldSelf.size && self.accessModes == oldSelf.accessModes && has(self.storageClassName) == has(oldSelf.storageClassName) && (!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)").message("spec.master.results: only keep can change once the run exists (its claim is made); delete and create the run to change its storage"))]
pub struct ResultsSpec {
    /// `Claim` (the default): a PersistentVolumeClaim `{run}-results` that outlives the
    /// master. `EmptyDir`: no claim; the database is lost with the master's pod and a master
    /// started again starts over.
    #[serde(default)]
    pub volume: ResultsVolume,
    /// Requested size of the claim.
    #[serde(default = "default_results_size")]
    #[x_kube(validation = Rule::new(r"self.matches('^[0-9]+(\\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$')").message("spec.master.results.size must be a quantity such as 1Gi or 500Mi"))]
    pub size: String,
    /// StorageClass of the claim; unset: the cluster's default StorageClass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Access modes of the claim.
    #[serde(default = "default_results_access_modes")]
    #[x_kube(validation = Rule::new("self.size() > 0").message("spec.master.results.accessModes must name at least one access mode"))]
    pub access_modes: Vec<String>,
    /// Keep the claim when the run is deleted (it then carries the annotation
    /// `abc-operator.dev/made-by-run`, naming the run that made it). A run of the same name
    /// created later uses it again, and its master resumes from it.
    #[serde(default)]
    pub keep: bool,
}

impl Default for ResultsSpec {
    fn default() -> Self {
        ResultsSpec {
            volume: ResultsVolume::default(),
            size: default_results_size(),
            storage_class_name: None,
            access_modes: default_results_access_modes(),
            keep: false,
        }
    }
}

/// Where the results database lives when the run makes the volume.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum ResultsVolume {
    #[default]
    Claim,
    EmptyDir,
}

fn default_results_size() -> String {
    "1Gi".into()
}

fn default_results_access_modes() -> Vec<String> {
    vec!["ReadWriteOnce".into()]
}

fn default_backoff_limit() -> i32 {
    2
}

/// Observed state of a run.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AbcRunStatus {
    /// Pending, Running, Succeeded, Failed, Stopped or Suspended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// RedisReady, WorkersReady, MasterRunning, Degraded, ...
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Worker pods that exist (the scale subresource's status replicas).
    #[serde(default)]
    pub replicas: i32,
    /// Worker pods that are ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Label selector of the worker pods (the scale subresource's selector, used by an HPA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// `ready/desired` worker pods, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<String>,
    /// Sampling progress read from the run's Redis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// Workers found lost (killed inside a generation) and repaired so far.
    #[serde(default)]
    pub lost_workers: i64,
    /// Times a master continued the run from its results database (after it was killed, lost
    /// its node or its Redis), as the `abc_operator` module records it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumes: Option<Resumes>,
    /// The Redis server the run uses, as last read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisInstance>,
    /// How the master's last start went, as the `abc_operator` module recorded it (kept when
    /// Redis loses the record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_master_start: Option<MasterStartStatus>,
    /// Where the master's results database is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results: Option<ResultsStatus>,
    /// What the run has inferred so far: the latest stored generation's figures, as the
    /// `abc_operator` module recorded them (every generation's are in `recordsConfigMap`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference: Option<InferenceStatus>,
    /// Since when (RFC 3339) the run's Redis has held no analysis, for a run with
    /// `idleTimeoutSeconds`; none while a master samples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_since: Option<String>,
}

/// Where the master's results database is.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResultsStatus {
    /// The PersistentVolumeClaim the database is on (none: an emptyDir, lost with the master).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_name: Option<String>,
    /// The claim's phase (Pending, Bound, Lost) when the run made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_phase: Option<String>,
}

/// The latest stored generation of the run, as the `abc_operator` module recorded it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InferenceStatus {
    /// Generation records read so far (one per stored generation).
    pub generations: i64,
    /// The latest stored generation (pyABC's t).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// Its acceptance threshold (pyABC's `eps`); none while infinite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon: Option<f64>,
    /// Accepted particles per evaluation in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acceptance_rate: Option<f64>,
    /// Its effective sample size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_sample_size: Option<f64>,
    /// Model evaluations it took.
    #[serde(default)]
    pub evaluations: i64,
    /// Its population size.
    #[serde(default)]
    pub accepted: i64,
    /// Wall time pyABC spent on it, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_time_seconds: Option<f64>,
    /// When it was stored (the master's clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// Its posterior marginals: weighted mean, sd and 90% interval of the first parameters
    /// (at most 8; `parametersTotal` says how many there are).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parameters: Vec<ParameterStatus>,
    #[serde(default)]
    pub parameters_total: i64,
    /// The ConfigMap holding the generations' records (the last 100 generations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records_config_map: Option<String>,
    /// Why figures are missing, e.g. a master that does not record them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A parameter's marginal posterior in the latest generation.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParameterStatus {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sd: Option<f64>,
    /// The 5% weighted quantile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q05: Option<f64>,
    /// The 95% weighted quantile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q95: Option<f64>,
}

/// A master's start: what it did with its results database, and why.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MasterStartStatus {
    pub outcome: MasterStartOutcome,
    /// Why, e.g. "no results database there yet" or what the database holds instead.
    pub cause: String,
    /// When (RFC 3339, the master's clock).
    pub time: String,
    /// The version of the master's `abc_operator` module; a master run outside the cluster
    /// brings its own, and one that is not the operator's gets a `ModuleVersionDiffers` Event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_version: Option<String>,
}

/// What a starting master did with its results database.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum MasterStartOutcome {
    /// Continued the unfinished run stored there.
    Resumed,
    /// Started a new run (no database yet, or no unfinished run in it).
    New,
    /// Could not use the database; left it unchanged and failed.
    Refused,
}

/// The Redis server of a run: which instance, and how often a new one took its place.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedisInstance {
    /// The server's `run_id` (new at every start of redis-server).
    pub run_id: String,
    /// How many times the server restarted during the run; each time it lost pyABC's state
    /// (the generation in progress) and the master resumed from its results database.
    pub restarts: i64,
}

/// Resumes of a run's master.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Resumes {
    /// How many times a master resumed.
    pub count: i64,
    /// The generation the last resume started from (the ones before were stored).
    pub last_from_generation: i64,
    /// When the last resume happened (RFC 3339, the master's clock).
    pub last_time: String,
}

/// Condition types, as users see them in `kubectl describe`.
pub const REDIS_READY: &str = "RedisReady";
pub const WORKERS_READY: &str = "WorkersReady";
pub const MASTER_RUNNING: &str = "MasterRunning";
pub const DEGRADED: &str = "Degraded";

/// Phase of a run.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum Phase {
    Pending,
    Running,
    Succeeded,
    Failed,
    Stopped,
    Suspended,
}

impl Phase {
    pub const ALL: [Phase; 6] = [
        Phase::Pending,
        Phase::Running,
        Phase::Succeeded,
        Phase::Failed,
        Phase::Stopped,
        Phase::Suspended,
    ];

    /// A finished run does not come back (TTL counts from here).
    pub fn is_finished(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed | Phase::Stopped)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// What `abc-redis-manager info` shows, and more.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// pyABC's analysis id of the current run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis_id: Option<String>,
    /// Current generation (population index t).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// `dynamic` or `static`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Accepted particles in the current generation.
    #[serde(default)]
    pub accepted: i64,
    /// Particles required in the current generation (population size).
    #[serde(default)]
    pub required: i64,
    /// `accepted/required`, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acceptances: Option<String>,
    /// Evaluations started in the current generation.
    #[serde(default)]
    pub evaluations: i64,
    /// Failed evaluations in the current generation (including those of repaired workers).
    #[serde(default)]
    pub failures: i64,
    /// Workers inside the current generation.
    #[serde(default)]
    pub active_workers: i64,
    /// When generation or acceptances last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_progress_time: Option<String>,
}

/// The schema of a pod field of many nested types (a volume, an affinity): an object the
/// API server checks when the operator makes the pod, not here. Their full schemas would make
/// the CRD 500 KB, past what `kubectl apply` can annotate.
fn as_in_a_pod_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    serde_json::from_value(serde_json::json!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    }))
    .expect("static schema is valid")
}

/// Volumes as in a pod (any volume source), named (the name is checked here).
fn volumes_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    serde_json::from_value(serde_json::json!({
        "type": "array",
        "maxItems": 32,
        "items": {
            "type": "object",
            "properties": { "name": { "type": "string", "maxLength": 63 } },
            "required": ["name"],
            "x-kubernetes-preserve-unknown-fields": true,
        },
    }))
    .expect("static volumes schema is valid")
}

fn conditions_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    serde_json::from_value(serde_json::json!({
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": {
            "type": "object",
            "properties": {
                "lastTransitionTime": { "format": "date-time", "type": "string" },
                "message": { "type": "string" },
                "observedGeneration": { "type": "integer", "format": "int64", "default": 0 },
                "reason": { "type": "string" },
                "status": { "type": "string" },
                "type": { "type": "string" }
            },
            "required": ["lastTransitionTime", "message", "reason", "status", "type"],
        },
    }))
    .expect("static conditions schema is valid")
}

/// Errors in a spec that the schema cannot express, or that a local run finds before starting
/// anything.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SpecError {
    #[error("spec.image must name a container image with python and pyabc")]
    MissingImage,
    #[error("spec.workers.replicas must be between 0 and 10000, got {0}")]
    Replicas(i32),
    #[error(
        "spec.workers.runtime {0:?} is not in pyABC's syntax: a number followed by s, m, h or d (e.g. 30s, 10m, 2h, 2d)"
    )]
    Runtime(String),
    #[error("spec.workers.processes must be between 1 and 256, got {0}")]
    Processes(i32),
    #[error("spec.redis: set either managed or external, not both")]
    RedisBoth,
    #[error("spec.master.command must not be empty")]
    EmptyMasterCommand,
    #[error(
        "{field}: {name} is set by the operator (the run's Redis, the worker's identity, the results folder); remove it"
    )]
    ReservedEnv { field: &'static str, name: String },
}

/// Parses a pyABC runtime (`30s`, `10m`, `2h`, `2d`, fractions allowed) into seconds.
pub fn parse_runtime(runtime: &str) -> Result<f64, SpecError> {
    let bad = || SpecError::Runtime(runtime.to_string());
    // The unit is the last character, which need not be one byte (`10µ`).
    let (unit_start, _) = runtime.char_indices().last().ok_or_else(bad)?;
    let (number, unit) = runtime.split_at(unit_start);
    let factor = match unit {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        _ => return Err(bad()),
    };
    if number.is_empty() || !number.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(bad());
    }
    let value: f64 = number.parse().map_err(|_| bad())?;
    // Hundreds of digits parse to infinity: no runtime.
    Some(value * factor)
        .filter(|s| s.is_finite())
        .ok_or_else(bad)
}

impl AbcRunSpec {
    /// The checks the CRD schema makes, for manifests that never reach an API server.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.image.is_empty() {
            return Err(SpecError::MissingImage);
        }
        if !(0..=10000).contains(&self.workers.replicas) {
            return Err(SpecError::Replicas(self.workers.replicas));
        }
        parse_runtime(&self.workers.runtime)?;
        if !(1..=256).contains(&self.workers.processes) {
            return Err(SpecError::Processes(self.workers.processes));
        }
        if self.redis.managed.is_some() && self.redis.external.is_some() {
            return Err(SpecError::RedisBoth);
        }
        if let Some(master) = &self.master
            && master.command.is_empty()
        {
            return Err(SpecError::EmptyMasterCommand);
        }
        let master_env = self.master.as_ref().map(|m| m.env.as_slice());
        for (field, env) in [
            ("spec.workers.env", Some(self.workers.env.as_slice())),
            ("spec.master.env", master_env),
        ] {
            if let Some(var) = env
                .unwrap_or_default()
                .iter()
                .find(|v| crate::protocol::worker_env::RESERVED.contains(&v.name.as_str()))
            {
                return Err(SpecError::ReservedEnv {
                    field,
                    name: var.name.clone(),
                });
            }
        }
        Ok(())
    }
}

/// The CRD as the YAML committed under `crds/`.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    serde_yaml::to_string(&AbcRun::crd()).expect("the CRD serializes to YAML")
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn runtime_parses_pyabc_syntax() {
        assert_eq!(parse_runtime("30s").unwrap(), 30.0);
        assert_eq!(parse_runtime("10m").unwrap(), 600.0);
        assert_eq!(parse_runtime("2h").unwrap(), 7200.0);
        assert_eq!(parse_runtime("1.5d").unwrap(), 129600.0);
        for bad in [
            "abc", "", "s", "10", "-1s", "1e3s", "10 m", "10µ", "é", "1é5s",
        ] {
            assert!(parse_runtime(bad).is_err(), "{bad:?} must be rejected");
        }
        let huge = format!("{}s", "9".repeat(400));
        assert_eq!(parse_runtime(&huge), Err(SpecError::Runtime(huge.clone())));
    }

    #[test]
    fn minimal_manifest_gets_defaults() {
        let run: AbcRun = serde_yaml::from_str(
            "apiVersion: abc-operator.dev/v1alpha1\nkind: AbcRun\nmetadata: {name: x}\nspec: {image: img}\n",
        )
        .unwrap();
        assert_eq!(run.spec.workers, WorkersSpec::default());
        assert_eq!(run.spec.redis, RedisSpec::default());
        assert!(run.spec.validate().is_ok());
    }

    #[test]
    fn validate_names_the_bad_field() {
        let mut spec: AbcRunSpec = serde_yaml::from_str("image: img").unwrap();
        spec.workers.replicas = -1;
        assert_eq!(spec.validate(), Err(SpecError::Replicas(-1)));
        spec.workers.replicas = 1;
        spec.workers.runtime = "abc".into();
        assert!(spec.validate().unwrap_err().to_string().contains("\"abc\""));
        spec.workers.runtime = "1h".into();
        spec.workers.env = serde_yaml::from_str("[{name: ABC_WORKER_ID, value: me}]").unwrap();
        assert_eq!(
            spec.validate(),
            Err(SpecError::ReservedEnv {
                field: "spec.workers.env",
                name: "ABC_WORKER_ID".into()
            })
        );
    }

    /// The CRD's rule and `validate` refuse the same names: the rule is spelled out in CEL.
    #[test]
    fn the_crd_refuses_every_reserved_env_name() {
        let crd = serde_json::to_value(AbcRun::crd()).unwrap();
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
        for env in [
            &spec["workers"]["properties"]["env"],
            &spec["master"]["properties"]["env"],
        ] {
            let rule = env["x-kubernetes-validations"][0]["rule"].as_str().unwrap();
            for name in crate::protocol::worker_env::RESERVED {
                assert!(rule.contains(&format!("'{name}'")), "{rule} lacks {name}");
            }
        }
    }

    #[test]
    fn crd_has_scale_subresource_and_cel_rules() {
        let crd = serde_json::to_value(AbcRun::crd()).unwrap();
        let version = &crd["spec"]["versions"][0];
        let scale = &version["subresources"]["scale"];
        assert_eq!(scale["specReplicasPath"], ".spec.workers.replicas");
        assert_eq!(scale["statusReplicasPath"], ".status.replicas");
        assert_eq!(scale["labelSelectorPath"], ".status.selector");
        let text = crd.to_string();
        assert!(text.contains("set either managed or external, not both"));
    }
}
