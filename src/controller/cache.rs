//! What the reconciler reads of the cluster: reflector stores fed by the same watches that
//! trigger reconciles, so that a reconcile sends no read request of its own.
//!
//! Each store keeps only what a reconcile reads (memory at 1,000 runs and 10,000 worker pods):
//! pods keep the few fields the worker and problem decisions read
//! ([`super::pod_index::WatchedPod`]), owned objects keep of their metadata only what
//! identifies them, their owner and the hash apply compares (`owned::trim_metadata`), and the kinds
//! whose content the controller never reads back (ConfigMap, Service, NetworkPolicy) are
//! watched as metadata only, which is all [`super::apply`] compares. Pods are indexed by run
//! ([`PodIndex`]).
//!
//! Deletions trigger reconciles too: a deleted worker pod is a lost worker at once, and a
//! deleted owned object is created again.

use super::owned::{ObjectStream, OwnedStores, OwnedStreams};
use super::pod_index::{PodIndex, RunPod, WatchedPod};
use crate::api::{AbcRun, RUN_LABEL};
use crate::resources::Component;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use std::sync::Arc;

/// Objects per page of a watch's (re)list. A page is parsed whole before it is trimmed: kube's
/// default of 500 made the first list of 1,000 pods the controller's peak memory (tens of MiB,
/// mostly managed fields, kept by the allocator afterwards).
pub const LIST_PAGE_SIZE: u32 = 100;

/// The stores a reconcile reads: the run's owned objects (one store per owned kind) and its
/// pods. Every object in them carries the run label.
#[derive(Clone)]
pub struct Caches {
    pub owned: OwnedStores,
    pub pods: PodIndex,
}

impl Caches {
    /// The stores, and the streams that fill them (the owned kinds', the pods'), for every
    /// namespace or only `namespace`. The Controller polls the streams (and reconciles on their
    /// events), which is what fills the stores.
    pub fn new(
        client: &Client,
        namespace: Option<&str>,
    ) -> (Caches, OwnedStreams, ObjectStream<WatchedPod>) {
        let config = || {
            watcher::Config::default()
                .labels(RUN_LABEL)
                .page_size(LIST_PAGE_SIZE)
        };
        let (owned, owned_streams) = OwnedStores::watch(client, namespace, config);
        let (pods, pods_stream) = PodIndex::watch(super::api(client, namespace), config());
        (Caches { owned, pods }, owned_streams, pods_stream)
    }

    /// Every store has listed its kind once. Before that a missing object may only be missing
    /// from the store: a pod among them would make its workers look lost.
    pub fn synced(&self) -> bool {
        self.owned.listed() && self.pods.listed()
    }

    /// The run's pods, by the part of the run they belong to, each sorted by name (the same
    /// pods always give the same actions and Events).
    pub fn run_pods(&self, run: &AbcRun) -> RunPods {
        let mut by_part = RunPods::default();
        for pod in self
            .pods
            .of_run(&run.namespace().unwrap_or_default(), &run.name_any())
        {
            let part = match pod.component {
                Some(Component::Worker) => &mut by_part.workers,
                Some(Component::Master) => &mut by_part.master,
                Some(Component::Redis) => &mut by_part.redis,
                _ => continue,
            };
            part.push(pod);
        }
        by_part
    }

    /// Caches holding `objects` as the API server would have stored them when applied.
    #[cfg(test)]
    pub fn holding(objects: &[super::owned::OwnedObject]) -> Caches {
        Caches {
            owned: OwnedStores::holding(objects),
            pods: PodIndex::default(),
        }
    }
}

/// The run's pods, by the part of the run they belong to.
#[derive(Clone, Debug, Default)]
pub struct RunPods {
    pub workers: Vec<Arc<RunPod>>,
    pub master: Vec<Arc<RunPod>>,
    pub redis: Vec<Arc<RunPod>>,
}
