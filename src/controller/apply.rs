//! Writes only what differs: each owned object carries a hash of its desired state in an
//! annotation, and is applied (server-side apply) only when the cached object's hash is not
//! the desired one. A run that is settled sends no write at all.
//!
//! Why a hash and not a comparison with the cached object: the API server fills in defaults
//! (pod template fields, ports' protocols, ...), so a desired object never equals the stored
//! one, and a field-by-field "is it a subset" check would have to know every default. The price:
//! a field someone else changes by hand on an owned object stays changed until the run's desired
//! object changes (the chart's RBAC lets nobody but the operator and cluster admins do that).

use super::Error;
use super::cache::{self, Caches};
use crate::api::{AbcRun, FIELD_MANAGER};
use crate::resources::Owned;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;

/// The annotation with the hash of the object as the operator last applied it.
pub const DESIRED_HASH_ANNOTATION: &str = "abc-operator.dev/desired-hash";

/// The owned objects to apply: those whose cached copy is missing or holds another hash. Each
/// returned object carries its hash annotation.
pub fn differing(owned: &Owned, namespace: &str, caches: &Caches) -> Vec<OwnedObject> {
    struct Differing<'a> {
        namespace: &'a str,
        found: Vec<OwnedObject>,
    }
    impl EachOwned for Differing<'_> {
        fn object<K, C>(&mut self, store: &Store<C>, desired: &K, wrap: fn(K) -> OwnedObject)
        where
            K: Resource + Serialize + Clone,
            C: Resource<DynamicType = ()> + Clone + 'static,
        {
            self.found
                .extend(if_differs(store, self.namespace, desired, wrap));
        }
    }
    let mut differing = Differing {
        namespace,
        found: Vec::new(),
    };
    for_each_owned(owned, caches, &mut differing);
    differing.found
}

/// What is done with each owned object, given the store that caches it and its
/// [`OwnedObject`] variant.
trait EachOwned {
    fn object<K, C>(&mut self, store: &Store<C>, desired: &K, wrap: fn(K) -> OwnedObject)
    where
        K: Resource + Serialize + Clone,
        C: Resource<DynamicType = ()> + Clone + 'static;
}

/// Every owned object with the store that caches it, in the order a run comes up: the
/// password and the entrypoint before the pods using them.
fn for_each_owned(owned: &Owned, caches: &Caches, each: &mut impl EachOwned) {
    // Destructure without `..` so a new owned object cannot be forgotten here.
    let Owned {
        secret,
        config_map,
        redis_deployment,
        redis_service,
        network_policy,
        workers,
        master_job,
    } = owned;
    if let Some(o) = secret {
        each.object(&caches.secrets, o, OwnedObject::Secret);
    }
    each.object(&caches.config_maps, config_map, OwnedObject::ConfigMap);
    if let Some(o) = network_policy {
        each.object(&caches.network_policies, o, OwnedObject::NetworkPolicy);
    }
    if let Some(o) = redis_deployment {
        each.object(&caches.deployments, o, OwnedObject::Deployment);
    }
    if let Some(o) = redis_service {
        each.object(&caches.services, o, OwnedObject::Service);
    }
    each.object(&caches.deployments, workers, OwnedObject::Deployment);
    if let Some(o) = master_job {
        each.object(&caches.jobs, o, OwnedObject::Job);
    }
}

/// For each run (by uid), what the owned objects were built from and compared with the last
/// time none of them differed. A reconcile with the same inputs would build the same desired
/// objects and compare them with the same cached ones, so it skips serializing and hashing them
/// (46 KiB of Python files in the ConfigMap alone): a live run is reconciled every time its
/// poller sees progress, and at 1,000 runs that hashing was a seventh of the controller's CPU.
#[derive(Default)]
pub struct Settled(Mutex<HashMap<String, u64>>);

impl Settled {
    /// [`differing`], or nothing without looking when the inputs are those of the last time
    /// nothing differed: the run's version (its spec and status), `built_from` (what the
    /// builders read besides the run) and the cached objects' versions (an object deleted or
    /// changed by someone else has another, or none).
    pub fn differing(
        &self,
        run: &AbcRun,
        built_from: impl Hash,
        owned: &Owned,
        namespace: &str,
        caches: &Caches,
    ) -> Vec<OwnedObject> {
        let (Some(uid), Some(version)) = (run.uid(), run.resource_version()) else {
            return differing(owned, namespace, caches);
        };
        let mut inputs = DefaultHasher::new();
        (
            version,
            built_from,
            cached_versions(owned, namespace, caches),
        )
            .hash(&mut inputs);
        let inputs = inputs.finish();
        if self.0.lock().unwrap_or_else(|e| e.into_inner()).get(&uid) == Some(&inputs) {
            return Vec::new();
        }
        let objects = differing(owned, namespace, caches);
        let mut settled = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if objects.is_empty() {
            settled.insert(uid, inputs);
        } else {
            settled.remove(&uid);
        }
        objects
    }

    pub fn forget(&self, run: &AbcRun) {
        if let Some(uid) = run.uid() {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&uid);
        }
    }
}

/// The resource versions of the cached copies of the owned objects (`None` where not cached).
fn cached_versions(owned: &Owned, namespace: &str, caches: &Caches) -> Vec<Option<String>> {
    struct Versions<'a> {
        namespace: &'a str,
        found: Vec<Option<String>>,
    }
    impl EachOwned for Versions<'_> {
        fn object<K, C>(&mut self, store: &Store<C>, desired: &K, _: fn(K) -> OwnedObject)
        where
            K: Resource + Serialize + Clone,
            C: Resource<DynamicType = ()> + Clone + 'static,
        {
            let cached = desired
                .meta()
                .name
                .as_deref()
                .and_then(|name| cache::get(store, self.namespace, name));
            self.found.push(cached.and_then(|c| c.resource_version()));
        }
    }
    let mut versions = Versions {
        namespace,
        found: Vec::new(),
    };
    for_each_owned(owned, caches, &mut versions);
    versions.found
}

/// `desired` with its hash annotation, when the cached copy in `store` is missing or holds
/// another hash.
fn if_differs<K, C>(
    store: &Store<C>,
    namespace: &str,
    desired: &K,
    wrap: fn(K) -> OwnedObject,
) -> Option<OwnedObject>
where
    K: Resource + Serialize + Clone,
    C: Resource<DynamicType = ()> + Clone + 'static,
{
    let desired = with_hash(desired.clone());
    let applied = applied_hash(store, namespace, &desired);
    let object = wrap(desired);
    (applied.as_deref() != Some(object.hash())).then_some(object)
}

/// An owned object to apply, with its hash annotation set.
#[derive(Clone, Debug)]
pub enum OwnedObject {
    Secret(k8s_openapi::api::core::v1::Secret),
    ConfigMap(k8s_openapi::api::core::v1::ConfigMap),
    NetworkPolicy(k8s_openapi::api::networking::v1::NetworkPolicy),
    Deployment(k8s_openapi::api::apps::v1::Deployment),
    Service(k8s_openapi::api::core::v1::Service),
    Job(k8s_openapi::api::batch::v1::Job),
}

impl OwnedObject {
    fn hash(&self) -> &str {
        let meta = match self {
            OwnedObject::Secret(o) => o.meta(),
            OwnedObject::ConfigMap(o) => o.meta(),
            OwnedObject::NetworkPolicy(o) => o.meta(),
            OwnedObject::Deployment(o) => o.meta(),
            OwnedObject::Service(o) => o.meta(),
            OwnedObject::Job(o) => o.meta(),
        };
        meta.annotations
            .as_ref()
            .and_then(|a| a.get(DESIRED_HASH_ANNOTATION))
            .map(String::as_str)
            .unwrap_or_default()
    }

    /// What a log line or a test names the object by, e.g. `Deployment/sim-workers`.
    pub fn describe(&self) -> String {
        fn name<K: Resource<DynamicType = ()>>(o: &K) -> String {
            format!(
                "{}/{}",
                K::kind(&()),
                o.meta().name.as_deref().unwrap_or("")
            )
        }
        match self {
            OwnedObject::Secret(o) => name(o),
            OwnedObject::ConfigMap(o) => name(o),
            OwnedObject::NetworkPolicy(o) => name(o),
            OwnedObject::Deployment(o) => name(o),
            OwnedObject::Service(o) => name(o),
            OwnedObject::Job(o) => name(o),
        }
    }

    /// Applies the object with server-side apply under the operator's one field manager.
    pub async fn apply(&self, client: &kube::Client, namespace: &str) -> Result<(), Error> {
        match self {
            OwnedObject::Secret(o) => apply(client, namespace, o).await,
            OwnedObject::ConfigMap(o) => apply(client, namespace, o).await,
            OwnedObject::NetworkPolicy(o) => apply(client, namespace, o).await,
            OwnedObject::Deployment(o) => apply(client, namespace, o).await,
            OwnedObject::Service(o) => apply(client, namespace, o).await,
            OwnedObject::Job(o) => apply(client, namespace, o).await,
        }
    }
}

/// `object` with the hash of its content (hash annotation excluded) in the hash annotation.
fn with_hash<K: Resource + Serialize>(mut object: K) -> K {
    if let Some(annotations) = object.meta_mut().annotations.as_mut() {
        annotations.remove(DESIRED_HASH_ANNOTATION);
    }
    // Serialized from typed structs with sorted maps: the same object always gives the same
    // bytes.
    let bytes = serde_json::to_vec(&object).unwrap_or_default();
    let hash = Sha256::digest(&bytes);
    let hex: String = hash[..16].iter().map(|b| format!("{b:02x}")).collect();
    object
        .meta_mut()
        .annotations
        .get_or_insert_with(Default::default)
        .insert(DESIRED_HASH_ANNOTATION.into(), hex);
    object
}

/// The hash annotation of the cached object with `desired`'s name, if it is cached.
fn applied_hash<K, D>(store: &Store<K>, namespace: &str, desired: &D) -> Option<String>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
    D: Resource,
{
    let name = desired.meta().name.as_deref()?;
    let cached = cache::get(store, namespace, name)?;
    cached.annotations().get(DESIRED_HASH_ANNOTATION).cloned()
}

async fn apply<K>(client: &kube::Client, namespace: &str, object: &K) -> Result<(), Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Serialize
        + DeserializeOwned
        + Clone
        + std::fmt::Debug,
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
