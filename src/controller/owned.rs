//! The kinds of object a run owns, listed once.
//!
//! [`owned_kinds!`] below is the one list: from its rows come the [`OwnedObject`] that apply
//! dispatches on, the stores a reconcile reads ([`OwnedStores`]), the watch streams that fill
//! them and make the Controller reconcile a run when an object of it changes
//! ([`OwnedStreams::owned_by`]), whether they have all listed ([`OwnedStores::listed`]), and a
//! test that the chart's ClusterRole lets the operator apply and watch every kind. [`objects`]
//! says which of a run's [`Owned`] objects are of which kind, in the order they are applied.
//!
//! Adding an owned object: a builder in `resources/` and a field of [`Owned`], a line in
//! [`objects`], and (for a new kind) a row here and a rule in the chart's `rbac.yaml`.

use super::context::Error;
use super::guard::GuardedRun;
use crate::api::FIELD_MANAGER;
use crate::resources::Owned;
use futures::future::FutureExt;
use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::controller::Controller;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::sync::Arc;

/// The annotation with the hash of the object as the operator last applied it.
pub const DESIRED_HASH_ANNOTATION: &str = "abc-operator.dev/desired-hash";

/// A watch's objects, as the Controller polls them.
pub type ObjectStream<K> =
    std::pin::Pin<Box<dyn Stream<Item = Result<K, watcher::Error>> + Send + 'static>>;

/// Generates everything per owned kind from one row each:
/// `Variant(Kind) in store_field, full(trim)` caches whole objects, trimmed by `trim`;
/// `Variant(Kind) in store_field, metadata` caches their metadata only (all that apply
/// compares), for kinds whose content the controller never reads back.
macro_rules! owned_kinds {
    (@cached full $kind:ty) => { $kind };
    (@cached metadata $kind:ty) => { PartialObjectMeta<$kind> };
    (@watch full($trim:expr), $api:expr, $config:expr) => { full($api, $config, $trim) };
    (@watch metadata, $api:expr, $config:expr) => { metadata_only($api, $config) };
    (@copy full, $object:expr) => { $object.clone() };
    (@copy metadata, $object:expr) => { metadata_of($object) };
    ($($variant:ident($kind:ty) in $store:ident, $how:ident $(($trim:expr))?;)*) => {
        /// An owned object to apply, of one of the owned kinds.
        #[derive(Clone, Debug, Serialize)]
        #[serde(untagged)]
        pub enum OwnedObject {
            $($variant($kind),)*
        }

        /// An owned object of a run's [`Owned`], borrowed.
        #[derive(Clone, Copy, Debug)]
        pub enum OwnedRef<'a> {
            $($variant(&'a $kind),)*
        }

        impl OwnedObject {
            pub fn meta(&self) -> &ObjectMeta {
                match self {
                    $(OwnedObject::$variant(o) => o.meta(),)*
                }
            }

            pub fn meta_mut(&mut self) -> &mut ObjectMeta {
                match self {
                    $(OwnedObject::$variant(o) => o.meta_mut(),)*
                }
            }

            fn kind(&self) -> &'static str {
                match self {
                    $(OwnedObject::$variant(_) => stringify!($variant),)*
                }
            }

            /// Applies the object with server-side apply under the operator's one field manager.
            pub async fn apply(&self, client: &Client, namespace: &str) -> Result<(), Error> {
                match self {
                    $(OwnedObject::$variant(o) => apply(client, namespace, o).await,)*
                }
            }
        }

        impl OwnedRef<'_> {
            pub fn to_object(self) -> OwnedObject {
                match self {
                    $(OwnedRef::$variant(o) => OwnedObject::$variant(o.clone()),)*
                }
            }

            /// The metadata of the object's copy in its store, when it is cached.
            pub fn cached(self, stores: &OwnedStores, namespace: &str) -> Option<ObjectMeta> {
                match self {
                    $(OwnedRef::$variant(o) => cached_meta(&stores.$store, namespace, o),)*
                }
            }
        }

        /// The store of each owned kind. Every object in them carries the run label.
        #[derive(Clone)]
        pub struct OwnedStores {
            $(pub $store: Store<owned_kinds!(@cached $how $kind)>,)*
        }

        /// The watch streams that fill [`OwnedStores`].
        pub struct OwnedStreams {
            $($store: ObjectStream<owned_kinds!(@cached $how $kind)>,)*
        }

        impl OwnedStores {
            /// The stores and the streams that fill them, for every namespace or only
            /// `namespace`.
            pub fn watch(
                client: &Client,
                namespace: Option<&str>,
                config: impl Fn() -> watcher::Config,
            ) -> (OwnedStores, OwnedStreams) {
                $(let $store = owned_kinds!(@watch $how $(($trim))?, super::api(client, namespace), config());)*
                (
                    OwnedStores { $($store: $store.0,)* },
                    OwnedStreams { $($store: $store.1,)* },
                )
            }

            /// Every store has listed its kind once.
            pub fn listed(&self) -> bool {
                true $(&& listed(&self.$store))*
            }

            /// Stores holding `objects` as the API server would have stored them when applied.
            #[cfg(test)]
            pub fn holding(objects: &[OwnedObject]) -> OwnedStores {
                OwnedStores {
                    $($store: filled(objects.iter().filter_map(|o| match o {
                        OwnedObject::$variant(o) => Some(owned_kinds!(@copy $how, o)),
                        #[allow(unreachable_patterns)]
                        _ => None,
                    })),)*
                }
            }
        }

        impl OwnedStreams {
            /// Makes `controller` reconcile a run when an object it owns changes (found by the
            /// object's owner reference).
            pub fn owned_by(self, controller: Controller<GuardedRun>) -> Controller<GuardedRun> {
                controller $(.owns_stream(self.$store))*
            }
        }

        /// The API group and resource of every owned kind, for the RBAC test.
        #[cfg(test)]
        fn kinds() -> Vec<(String, String)> {
            vec![$((
                <$kind as Resource>::group(&()).into_owned(),
                <$kind as Resource>::plural(&()).into_owned(),
            ),)*]
        }
    };
}

owned_kinds! {
    Secret(Secret) in secrets, full(trim_metadata);
    ConfigMap(ConfigMap) in config_maps, metadata;
    NetworkPolicy(NetworkPolicy) in network_policies, metadata;
    // The pod template is the desired state, which apply compares by hash.
    Deployment(Deployment) in deployments, full(|d: &mut Deployment| {
        trim_metadata(d);
        if let Some(spec) = d.spec.as_mut() {
            spec.template = Default::default();
        }
    });
    Service(Service) in services, metadata;
    Job(Job) in jobs, full(|j: &mut Job| {
        trim_metadata(j);
        if let Some(spec) = j.spec.as_mut() {
            spec.template = Default::default();
        }
    });
    // Its phase says whether the results database has a place.
    PersistentVolumeClaim(PersistentVolumeClaim) in claims, full(trim_metadata);
}

/// The run's owned objects in the order a run comes up (the password and the entrypoint before
/// the pods using them).
pub fn objects(owned: &Owned) -> Vec<OwnedRef<'_>> {
    // Destructured without `..`, so that a new owned object cannot be forgotten here.
    let Owned {
        secret,
        config_map,
        redis_deployment,
        redis_service,
        network_policy,
        workers,
        master_job,
        results_claim,
    } = owned;
    [
        secret.as_ref().map(OwnedRef::Secret),
        Some(OwnedRef::ConfigMap(config_map)),
        network_policy.as_ref().map(OwnedRef::NetworkPolicy),
        redis_deployment.as_ref().map(OwnedRef::Deployment),
        redis_service.as_ref().map(OwnedRef::Service),
        Some(OwnedRef::Deployment(workers)),
        // Before the master whose pod mounts it.
        results_claim.as_ref().map(OwnedRef::PersistentVolumeClaim),
        master_job.as_ref().map(OwnedRef::Job),
    ]
    .into_iter()
    .flatten()
    .collect()
}

impl OwnedObject {
    /// The hash annotation the object carries.
    pub fn desired_hash(&self) -> Option<&str> {
        self.meta()
            .annotations
            .as_ref()?
            .get(DESIRED_HASH_ANNOTATION)
            .map(String::as_str)
    }

    /// What a log line or a test names the object by, e.g. `Deployment/sim-workers`.
    pub fn describe(&self) -> String {
        format!(
            "{}/{}",
            self.kind(),
            self.meta().name.as_deref().unwrap_or("")
        )
    }
}

/// The object `name` of the run's namespace in `store`.
pub fn get<K>(store: &Store<K>, namespace: &str, name: &str) -> Option<Arc<K>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    store.get(&ObjectRef::new(name).within(namespace))
}

fn cached_meta<K, C>(store: &Store<C>, namespace: &str, desired: &K) -> Option<ObjectMeta>
where
    K: Resource,
    C: Resource<DynamicType = ()> + Clone + 'static,
{
    let name = desired.meta().name.as_deref()?;
    get(store, namespace, name).map(|cached| cached.meta().clone())
}

/// Polled once: never waits, never registers a waker (see `controller::run`).
pub fn listed<K: Resource + Clone + 'static>(store: &Store<K>) -> bool
where
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    matches!(store.wait_until_ready().now_or_never(), Some(Ok(())))
}

async fn apply<K>(client: &Client, namespace: &str, object: &K) -> Result<(), Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Serialize
        + DeserializeOwned
        + Clone
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let name = object.meta().name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .map_err(|source| Error::Apply {
        kind: K::kind(&()).to_string(),
        name,
        source,
    })?;
    Ok(())
}

/// Keeps of an owned object's metadata its name, versions and owner (the Controller maps its
/// events to the run by the owner) and the hash apply compares; drops the managed fields, the
/// labels and any other annotation, which nothing reads from a store. The labels were a B-tree
/// node and its strings per object: 2 MiB at 1,000 runs (measured).
pub fn trim_metadata<K: Resource>(object: &mut K) {
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
    // An Api of PartialObjectMeta asks the API server for metadata only.
    full(api, config, trim_metadata)
}

#[cfg(test)]
fn metadata_of<K: Resource<DynamicType = ()>>(object: &K) -> PartialObjectMeta<K> {
    PartialObjectMeta {
        types: None,
        metadata: object.meta().clone(),
        _phantom: Default::default(),
    }
}

#[cfg(test)]
fn filled<K>(objects: impl Iterator<Item = K>) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let (reader, mut writer) = reflector::store();
    for object in objects {
        writer.apply_watcher_event(&watcher::Event::Apply(object));
    }
    reader
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chart's ClusterRole, its Helm template lines dropped or blanked: YAML again.
    fn cluster_role_rules() -> Vec<serde_yaml::Value> {
        let template = include_str!("../../charts/abc-operator/templates/rbac.yaml");
        let yaml: String = template
            .lines()
            .filter(|line| !line.trim_start().starts_with("{{"))
            .map(|line| match (line.find("{{"), line.rfind("}}")) {
                (Some(start), Some(end)) => format!("{}x{}\n", &line[..start], &line[end + 2..]),
                _ => format!("{line}\n"),
            })
            .collect();
        serde_yaml::Deserializer::from_str(&yaml)
            .map(|document| serde_yaml::Value::deserialize(document).unwrap())
            .find(|document| document["kind"] == "ClusterRole")
            .expect("the chart has a ClusterRole")["rules"]
            .as_sequence()
            .unwrap()
            .clone()
    }

    use serde::Deserialize;

    #[test]
    fn the_charts_cluster_role_lets_the_operator_apply_and_watch_every_owned_kind() {
        let rules = cluster_role_rules();
        let strings = |rule: &serde_yaml::Value, key: &str| -> Vec<String> {
            rule[key]
                .as_sequence()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        };
        for (group, plural) in kinds() {
            let allowed: Vec<String> = rules
                .iter()
                .filter(|rule| {
                    strings(rule, "apiGroups").contains(&group)
                        && strings(rule, "resources").contains(&plural)
                })
                .flat_map(|rule| strings(rule, "verbs"))
                .collect();
            for verb in ["list", "watch", "create", "patch"] {
                assert!(
                    allowed.iter().any(|v| v == verb),
                    "the chart's ClusterRole does not allow {verb} on {plural} in group {group:?}"
                );
            }
        }
    }
}
