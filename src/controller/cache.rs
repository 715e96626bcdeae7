//! What the reconciler reads of the cluster: reflector stores fed by the same watches that
//! trigger reconciles, so that a reconcile sends no read request of its own.
//!
//! Each store keeps only what a reconcile reads (memory at 1,000 runs and 10,000 worker pods):
//! pods keep the few fields the worker and problem decisions read
//! ([`super::pod_index::WatchedPod`]), owned objects keep of their metadata only what
//! identifies them, their owner and the hash apply compares ([`trim_metadata`]), and the kinds
//! whose content the controller never reads back (ConfigMap, Service, NetworkPolicy) are
//! watched as metadata only, which is all [`super::apply`] compares. Pods are indexed by run
//! ([`PodIndex`]).
//!
//! Deletions trigger reconciles too: a deleted worker pod is a lost worker at once, and a
//! deleted owned object is created again.

use super::apply::DESIRED_HASH_ANNOTATION;
use super::pod_index::{PodIndex, WatchedPod};
use crate::api::{AbcRun, RUN_LABEL};
use crate::resources::Component;
use futures::future::FutureExt;
use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::sync::Arc;

/// Objects per page of a watch's (re)list. A page is parsed whole before it is trimmed: kube's
/// default of 500 made the first list of 1,000 pods the controller's peak memory (tens of MiB,
/// mostly managed fields, kept by the allocator afterwards).
pub const LIST_PAGE_SIZE: u32 = 100;

/// The stores a reconcile reads. Every object in them carries the run label.
#[derive(Clone)]
pub struct Caches {
    pub deployments: Store<Deployment>,
    pub jobs: Store<Job>,
    pub secrets: Store<Secret>,
    pub config_maps: Store<PartialObjectMeta<ConfigMap>>,
    pub services: Store<PartialObjectMeta<Service>>,
    pub network_policies: Store<PartialObjectMeta<NetworkPolicy>>,
    pub pods: PodIndex,
}

/// The watch streams that feed [`Caches`]; the Controller polls them (and reconciles on their
/// events), which is what fills the stores.
pub struct CacheStreams {
    pub deployments: ObjectStream<Deployment>,
    pub jobs: ObjectStream<Job>,
    pub secrets: ObjectStream<Secret>,
    pub config_maps: ObjectStream<PartialObjectMeta<ConfigMap>>,
    pub services: ObjectStream<PartialObjectMeta<Service>>,
    pub network_policies: ObjectStream<PartialObjectMeta<NetworkPolicy>>,
    pub pods: ObjectStream<WatchedPod>,
}

pub type ObjectStream<K> =
    std::pin::Pin<Box<dyn Stream<Item = Result<K, watcher::Error>> + Send + 'static>>;

impl Caches {
    /// The stores and the streams that fill them, for every namespace or only `namespace`.
    pub fn new(client: &Client, namespace: Option<&str>) -> (Caches, CacheStreams) {
        let config = || {
            watcher::Config::default()
                .labels(RUN_LABEL)
                .page_size(LIST_PAGE_SIZE)
        };
        let (deployments, deployments_stream) =
            full(api(client, namespace), config(), |d: &mut Deployment| {
                trim_metadata(d);
                // The pod template is the desired state, which apply compares by hash.
                if let Some(spec) = d.spec.as_mut() {
                    spec.template = Default::default();
                }
            });
        let (jobs, jobs_stream) = full(api(client, namespace), config(), |j: &mut Job| {
            trim_metadata(j);
            if let Some(spec) = j.spec.as_mut() {
                spec.template = Default::default();
            }
        });
        let (secrets, secrets_stream) = full(api(client, namespace), config(), trim_metadata);
        let (pods, pods_stream) = PodIndex::watch(api(client, namespace), config());
        let (config_maps, config_maps_stream) = metadata_only(api(client, namespace), config());
        let (services, services_stream) = metadata_only(api(client, namespace), config());
        let (network_policies, network_policies_stream) =
            metadata_only(api(client, namespace), config());
        (
            Caches {
                deployments,
                jobs,
                secrets,
                config_maps,
                services,
                network_policies,
                pods,
            },
            CacheStreams {
                deployments: deployments_stream,
                jobs: jobs_stream,
                secrets: secrets_stream,
                config_maps: config_maps_stream,
                services: services_stream,
                network_policies: network_policies_stream,
                pods: pods_stream,
            },
        )
    }

    /// Every store has listed its kind once. Before that a missing object may only be missing
    /// from the store: a pod among them would make its workers look lost.
    pub fn synced(&self) -> bool {
        fn ready<K: Resource + Clone + 'static>(store: &Store<K>) -> bool
        where
            K::DynamicType: std::hash::Hash + Eq + Clone,
        {
            // Polled once: never waits, never registers a waker (see controller::run).
            matches!(store.wait_until_ready().now_or_never(), Some(Ok(())))
        }
        ready(&self.deployments)
            && ready(&self.jobs)
            && ready(&self.secrets)
            && ready(&self.config_maps)
            && ready(&self.services)
            && ready(&self.network_policies)
            && self.pods.listed()
    }

    /// The run's pods, by the part of the run they belong to, each sorted by name (the same
    /// pods always give the same actions and Events).
    pub fn run_pods(&self, run: &AbcRun) -> RunPods {
        let mut by_part = RunPods::default();
        for pod in self
            .pods
            .of_run(&run.namespace().unwrap_or_default(), &run.name_any())
        {
            let part = match pod.component.as_deref() {
                Some(c) if c == Component::Worker.as_str() => &mut by_part.workers,
                Some(c) if c == Component::Master.as_str() => &mut by_part.master,
                Some(c) if c == Component::Redis.as_str() => &mut by_part.redis,
                _ => continue,
            };
            part.push(pod);
        }
        by_part
    }
}

/// The run's pods, by the part of the run they belong to.
#[derive(Clone, Debug, Default)]
pub struct RunPods {
    pub workers: Vec<Arc<WatchedPod>>,
    pub master: Vec<Arc<WatchedPod>>,
    pub redis: Vec<Arc<WatchedPod>>,
}

/// The object `name` of the run's namespace in `store`.
pub fn get<K>(store: &Store<K>, namespace: &str, name: &str) -> Option<Arc<K>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    store.get(&ObjectRef::new(name).within(namespace))
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    super::api(client, namespace)
}

/// Keeps of an owned object's metadata its name, versions and owner (the Controller maps its
/// events to the run by the owner) and the hash [`super::apply`] compares; drops the managed
/// fields, the labels and any other annotation, which nothing reads from a store. The labels
/// were a B-tree node and its strings per object: 2 MiB at 1,000 runs (measured).
fn trim_metadata<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    meta.labels = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.retain(|key, _| key == DESIRED_HASH_ANNOTATION);
    }
}

fn full<K>(
    api: Api<K>,
    config: watcher::Config,
    trim: impl FnMut(&mut K) + Send + 'static,
) -> (Store<K>, ObjectStream<K>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, config)
        .default_backoff()
        .modify(trim)
        .reflect(writer)
        .touched_objects()
        .boxed();
    (reader, stream)
}

fn metadata_only<K>(
    api: Api<PartialObjectMeta<K>>,
    config: watcher::Config,
) -> (
    Store<PartialObjectMeta<K>>,
    ObjectStream<PartialObjectMeta<K>>,
)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    // An Api of PartialObjectMeta asks the API server for metadata only.
    let stream = watcher(api, config)
        .default_backoff()
        .modify(trim_metadata)
        .reflect(writer)
        .touched_objects()
        .boxed();
    (reader, stream)
}

#[cfg(test)]
impl Caches {
    /// Caches holding `objects` as the API server would have stored them when applied.
    pub fn holding(objects: &[super::apply::OwnedObject]) -> Caches {
        use super::apply::OwnedObject;
        use kube::runtime::watcher::Event;
        fn filled<K>(objects: Vec<K>) -> Store<K>
        where
            K: Resource<DynamicType = ()> + Clone + 'static,
        {
            let (reader, mut writer) = reflector::store();
            for object in objects {
                writer.apply_watcher_event(&Event::Apply(object));
            }
            reader
        }
        fn meta<K: Resource<DynamicType = ()>>(o: &K) -> PartialObjectMeta<K> {
            PartialObjectMeta {
                types: None,
                metadata: o.meta().clone(),
                _phantom: Default::default(),
            }
        }
        Caches {
            deployments: filled(
                objects
                    .iter()
                    .filter_map(|o| match o {
                        OwnedObject::Deployment(d) => Some(d.clone()),
                        _ => None,
                    })
                    .collect(),
            ),
            jobs: filled(
                objects
                    .iter()
                    .filter_map(|o| match o {
                        OwnedObject::Job(j) => Some(j.clone()),
                        _ => None,
                    })
                    .collect(),
            ),
            secrets: filled(
                objects
                    .iter()
                    .filter_map(|o| match o {
                        OwnedObject::Secret(s) => Some(s.clone()),
                        _ => None,
                    })
                    .collect(),
            ),
            config_maps: filled(
                objects
                    .iter()
                    .filter_map(|o| match o {
                        OwnedObject::ConfigMap(c) => Some(meta(c)),
                        _ => None,
                    })
                    .collect(),
            ),
            services: filled(
                objects
                    .iter()
                    .filter_map(|o| match o {
                        OwnedObject::Service(s) => Some(meta(s)),
                        _ => None,
                    })
                    .collect(),
            ),
            network_policies: filled(
                objects
                    .iter()
                    .filter_map(|o| match o {
                        OwnedObject::NetworkPolicy(n) => Some(meta(n)),
                        _ => None,
                    })
                    .collect(),
            ),
            pods: PodIndex::default(),
        }
    }
}
