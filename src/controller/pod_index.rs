//! Every run's pods as the controller keeps them: only what a reconcile reads of them
//! ([`WatchedPod`]), indexed by run.
//!
//! A reconcile reads the pods of one run. A store of all pods would make that a pass over every
//! pod of every run (10,000 worker pods at 1,000 runs) in each reconcile; this index hands out a
//! run's own pods, shared (`Arc`), not copied.

use super::owned::ObjectStream;
use crate::api::{COMPONENT_LABEL, RUN_LABEL};
use crate::resources::Component;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{
    ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting, Pod,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Resource, ResourceExt};
use serde::{Deserialize, Deserializer};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

/// A run's key: namespace and name.
type RunKey = (String, String);
/// A pod's key: namespace and name.
type PodKey = (String, String);

/// The index, shared by the watch that fills it and the reconciles that read it.
#[derive(Clone, Default)]
pub struct PodIndex(Arc<RwLock<Listing>>);

#[derive(Default)]
struct Listing {
    current: Pods,
    /// The pods of a relist in progress (between `Init` and `InitDone`): until it is complete,
    /// reconciles keep reading the previous listing, as from kube's own stores.
    relisting: Option<Pods>,
    /// A first listing has completed.
    listed: bool,
}

#[derive(Default)]
struct Pods {
    /// Each run's pods by name (sorted, as reconciles want them).
    by_run: HashMap<RunKey, BTreeMap<String, Arc<RunPod>>>,
    /// Each pod's run, so that a pod relabelled to another run leaves the first.
    run_of: HashMap<PodKey, String>,
}

impl Pods {
    fn insert(&mut self, pod: &WatchedPod) {
        let (Some(namespace), Some(run)) = (pod.namespace(), pod.run.as_ref()) else {
            return; // the watch selects pods with the run label: not one of ours
        };
        let name = pod.name_any();
        if let Some(old_run) = self
            .run_of
            .insert((namespace.clone(), name.clone()), run.clone())
            && old_run != *run
        {
            self.forget(&namespace, old_run, &name);
        }
        self.by_run
            .entry((namespace, run.clone()))
            .or_default()
            .insert(name, pod.pod.clone());
    }

    fn remove(&mut self, pod: &WatchedPod) {
        let (Some(namespace), name) = (pod.namespace(), pod.name_any()) else {
            return;
        };
        if let Some(run) = self.run_of.remove(&(namespace.clone(), name.clone())) {
            self.forget(&namespace, run, &name);
        }
    }

    fn forget(&mut self, namespace: &str, run: String, name: &str) {
        let key = (namespace.to_string(), run);
        if let Some(pods) = self.by_run.get_mut(&key) {
            pods.remove(name);
            if pods.is_empty() {
                self.by_run.remove(&key);
            }
        }
    }
}

impl PodIndex {
    /// An index and the pod watch that fills it (and triggers reconciles) as the Controller
    /// polls it; deletions are passed on too (a deleted worker pod is a lost worker).
    pub fn watch(
        api: Api<WatchedPod>,
        config: watcher::Config,
    ) -> (PodIndex, ObjectStream<WatchedPod>) {
        let index = PodIndex::default();
        let filling = index.clone();
        let stream = watcher::watcher(api, config)
            .default_backoff()
            .map_ok(move |event| {
                filling.apply(&event);
                event
            })
            .touched_objects()
            .boxed();
        (index, stream)
    }

    /// Takes one event of the pod watch into the index.
    pub fn apply(&self, event: &Event<WatchedPod>) {
        let mut listing = self.0.write().unwrap_or_else(|e| e.into_inner());
        match event {
            Event::Apply(pod) => listing.current.insert(pod),
            Event::Delete(pod) => listing.current.remove(pod),
            Event::Init => listing.relisting = Some(Pods::default()),
            Event::InitApply(pod) => {
                if let Some(relisting) = listing.relisting.as_mut() {
                    relisting.insert(pod);
                }
            }
            Event::InitDone => {
                if let Some(relisting) = listing.relisting.take() {
                    listing.current = relisting;
                }
                listing.listed = true;
            }
        }
    }

    /// Whether the watch has listed every pod once (before that, a pod missing from the index
    /// may only be missing from it).
    pub fn listed(&self) -> bool {
        self.0.read().unwrap_or_else(|e| e.into_inner()).listed
    }

    /// The pods of run `run` in `namespace`, sorted by name.
    pub fn of_run(&self, namespace: &str, run: &str) -> Vec<Arc<RunPod>> {
        let listing = self.0.read().unwrap_or_else(|e| e.into_inner());
        listing
            .current
            .by_run
            .get(&(namespace.to_string(), run.to_string()))
            .map(|pods| pods.values().cloned().collect())
            .unwrap_or_default()
    }
}

/// A pod event as the watch reads it: what the watch and the Controller need (name, namespace,
/// resource version, run) and, shared, what the index keeps ([`RunPod`]). Not k8s-openapi's
/// `Pod`, which holds room for every field whether read or not.
#[derive(Clone, Debug)]
pub struct WatchedPod {
    /// Name, namespace and resource version (the watch resumes from the last one).
    pub metadata: ObjectMeta,
    /// The run it belongs to (its [`RUN_LABEL`]).
    pub run: Option<String>,
    /// What the index keeps of it: shared with the index, not copied into it.
    pub pod: Arc<RunPod>,
}

/// A pod as the index keeps it: what the worker actions ([`super::workers`]) and the pod
/// problems ([`super::pod_problems`]) read, and nothing else. Everything else is skipped while
/// parsing (a list page holds [`super::cache::LIST_PAGE_SIZE`] pods): the spec and the managed
/// fields, most of a pod's size, the other labels and metadata, the parts of the status no
/// decision reads. In the index at 10,000 pods (bench S, heaptrack): 2.7 KiB per pod with
/// k8s-openapi's `Pod`, 1.3 KiB with its `ObjectMeta` and `ContainerState`; without them the
/// `Arc` of a running worker's pod is 168 bytes instead of 520, its state inline 80 instead of
/// a boxed 208 (see bench/LOG.md, section S).
#[derive(Clone, Debug, Default)]
pub struct RunPod {
    pub name: String,
    /// Its part of the run (its [`COMPONENT_LABEL`]), when one the controller knows.
    pub component: Option<Component>,
    pub created: Option<Time>,
    /// It has a deletion timestamp: on its way out.
    pub deleting: bool,
    pub status: Option<WatchedPodStatus>,
}

/// What is kept of a pod's status.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchedPodStatus {
    pub phase: Option<String>,
    /// Boxed slices, not `Vec`s: a `Vec` parsed from a watch keeps room for four containers
    /// (at bench S's 10,000 one-container pods, 5.5 MiB of `Vec`s, three quarters unused).
    pub init_container_statuses: Option<Box<[WatchedContainer]>>,
    pub container_statuses: Option<Box<[WatchedContainer]>>,
    /// The scheduler's message while it cannot place the pod (its `PodScheduled` condition is
    /// False, reason `Unschedulable`); the pod's other conditions are not kept.
    #[serde(default, rename = "conditions", deserialize_with = "unschedulable")]
    pub unschedulable: Option<String>,
}

fn unschedulable<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    struct Condition {
        #[serde(rename = "type")]
        type_: String,
        status: String,
        reason: Option<String>,
        message: Option<String>,
    }
    let conditions = Option::<Vec<Condition>>::deserialize(deserializer)?;
    Ok(conditions.into_iter().flatten().find_map(|c| {
        (c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable"))
        .then(|| c.message.unwrap_or_default())
    }))
}

/// What is kept of a container's status (its image ID, container ID, resources and ready flag
/// are not).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WatchedContainer {
    pub name: String,
    pub image: String,
    pub restart_count: i32,
    pub state: Option<WatchedState>,
    /// Boxed: most containers never had a last state.
    pub last_state: Option<Box<WatchedState>>,
}

/// A container's state. Not k8s-openapi's `ContainerState`, which has room for all three
/// (about 200 bytes): a running container, nearly every one, is kept in a third of that.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct WatchedState {
    pub waiting: Option<ContainerStateWaiting>,
    pub running: Option<ContainerStateRunning>,
    pub terminated: Option<Box<ContainerStateTerminated>>,
}

/// What is read of a pod; any other field is skipped unparsed.
#[derive(Deserialize)]
struct ReadPod {
    metadata: ReadMetadata,
    status: Option<WatchedPodStatus>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReadMetadata {
    name: Option<String>,
    namespace: Option<String>,
    resource_version: Option<String>,
    creation_timestamp: Option<Time>,
    deletion_timestamp: Option<Time>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

impl ReadPod {
    fn into_run_pod(self) -> RunPod {
        RunPod {
            component: self
                .metadata
                .labels
                .get(COMPONENT_LABEL)
                .and_then(|label| Component::from_label(label)),
            name: self.metadata.name.unwrap_or_default(),
            created: self.metadata.creation_timestamp,
            deleting: self.metadata.deletion_timestamp.is_some(),
            status: self.status,
        }
    }
}

impl<'de> Deserialize<'de> for WatchedPod {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut read = ReadPod::deserialize(deserializer)?;
        let metadata = ObjectMeta {
            name: read.metadata.name.clone(),
            namespace: read.metadata.namespace.take(),
            resource_version: read.metadata.resource_version.take(),
            ..ObjectMeta::default()
        };
        let run = read.metadata.labels.remove(RUN_LABEL);
        Ok(WatchedPod {
            metadata,
            run,
            pod: Arc::new(read.into_run_pod()),
        })
    }
}

impl<'de> Deserialize<'de> for RunPod {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(ReadPod::deserialize(deserializer)?.into_run_pod())
    }
}

/// The pods API, answered with [`WatchedPod`]s.
impl Resource for WatchedPod {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        Pod::kind(&())
    }
    fn group(_: &()) -> Cow<'_, str> {
        Pod::group(&())
    }
    fn version(_: &()) -> Cow<'_, str> {
        Pod::version(&())
    }
    fn plural(_: &()) -> Cow<'_, str> {
        Pod::plural(&())
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(namespace: &str, name: &str, run: &str, phase: &str) -> WatchedPod {
        serde_yaml::from_str(&format!(
            "metadata: {{name: {name}, namespace: {namespace}, labels: {{{RUN_LABEL}: {run}}}}}\n\
             status: {{phase: {phase}}}"
        ))
        .unwrap()
    }

    fn names(index: &PodIndex, namespace: &str, run: &str) -> Vec<String> {
        index
            .of_run(namespace, run)
            .iter()
            .map(|p| {
                format!(
                    "{}:{}",
                    p.name,
                    p.status.as_ref().unwrap().phase.clone().unwrap()
                )
            })
            .collect()
    }

    #[test]
    fn a_watched_pod_keeps_what_a_reconcile_reads_and_nothing_else() {
        let read: WatchedPod = serde_yaml::from_str(&format!(
            r#"
apiVersion: v1
kind: Pod
metadata:
  name: w-1
  namespace: a
  uid: u-1
  resourceVersion: "42"
  creationTimestamp: "2026-01-01T10:00:00Z"
  deletionTimestamp: "2026-01-01T10:05:00Z"
  generateName: w-
  labels: {{{RUN_LABEL}: gauss, {COMPONENT_LABEL}: worker, pod-template-hash: abc}}
  annotations: {{note: x}}
  ownerReferences: [{{apiVersion: apps/v1, kind: ReplicaSet, name: rs, uid: r}}]
  managedFields: [{{manager: kubelet, operation: Update, fieldsV1: {{f:status: {{}}}}}}]
spec:
  containers: [{{name: worker, image: img}}]
status:
  phase: Running
  podIP: 10.0.0.1
  conditions: [{{type: Ready, status: "True"}}]
  containerStatuses:
  - name: worker
    image: img
    imageID: sha256:0
    containerID: containerd://0
    ready: true
    restartCount: 2
    state: {{running: {{startedAt: "2026-01-01T10:01:00Z"}}}}
    lastState: {{terminated: {{exitCode: 1, reason: Error}}}}
"#
        ))
        .unwrap();
        let meta = &read.metadata;
        assert_eq!(
            (meta.name.as_deref(), meta.namespace.as_deref()),
            (Some("w-1"), Some("a"))
        );
        assert_eq!(meta.resource_version.as_deref(), Some("42"));
        assert_eq!(read.run.as_deref(), Some("gauss"));
        assert!(meta.labels.is_none() && meta.annotations.is_none() && meta.uid.is_none());
        assert!(meta.owner_references.is_none() && meta.managed_fields.is_none());
        assert!(meta.generate_name.is_none());
        let read = Arc::unwrap_or_clone(read.pod);
        assert_eq!(read.name, "w-1");
        assert_eq!(read.component, Some(Component::Worker));
        assert!(read.created.is_some() && read.deleting);
        let status = read.status.unwrap();
        assert_eq!(status.phase.as_deref(), Some("Running"));
        let worker = &status.container_statuses.unwrap()[0];
        assert_eq!(
            (worker.name.as_str(), worker.image.as_str()),
            ("worker", "img")
        );
        assert_eq!(worker.restart_count, 2);
        assert!(worker.state.as_ref().unwrap().running.is_some());
        assert!(worker.last_state.as_ref().unwrap().terminated.is_some());
    }

    #[test]
    fn a_run_gets_its_own_pods_sorted_and_current() {
        let index = PodIndex::default();
        for event in [
            Event::Init,
            Event::InitApply(pod("a", "w-2", "gauss", "Running")),
            Event::InitApply(pod("a", "w-1", "gauss", "Pending")),
            Event::InitApply(pod("a", "x-1", "other", "Running")),
            // the same run name in another namespace is another run
            Event::InitApply(pod("b", "w-9", "gauss", "Running")),
            Event::InitDone,
            Event::Apply(pod("a", "w-1", "gauss", "Running")),
        ] {
            index.apply(&event);
        }
        assert!(index.listed());
        assert_eq!(names(&index, "a", "gauss"), ["w-1:Running", "w-2:Running"]);
        assert_eq!(names(&index, "b", "gauss"), ["w-9:Running"]);

        index.apply(&Event::Delete(pod("a", "w-2", "gauss", "Running")));
        // a pod relabelled to another run leaves the first
        index.apply(&Event::Apply(pod("a", "w-1", "other", "Running")));
        assert!(names(&index, "a", "gauss").is_empty());
        assert_eq!(names(&index, "a", "other"), ["w-1:Running", "x-1:Running"]);
    }

    #[test]
    fn a_relist_replaces_the_listing_when_complete_and_drops_pods_gone_meanwhile() {
        let index = PodIndex::default();
        assert!(!index.listed());
        for event in [
            Event::Init,
            Event::InitApply(pod("a", "w-1", "gauss", "Running")),
            Event::InitApply(pod("a", "w-2", "gauss", "Running")),
            Event::InitDone,
            // the watch broke; w-2 was deleted while nobody watched
            Event::Init,
            Event::InitApply(pod("a", "w-1", "gauss", "Running")),
        ] {
            index.apply(&event);
        }
        // until the relist is complete, the last complete listing holds
        assert_eq!(names(&index, "a", "gauss"), ["w-1:Running", "w-2:Running"]);
        index.apply(&Event::InitDone);
        assert_eq!(names(&index, "a", "gauss"), ["w-1:Running"]);
    }
}
