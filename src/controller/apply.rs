//! Writes only what differs: each owned object carries a hash of its desired state in an
//! annotation, and is applied (server-side apply) only when the cached object's hash is not
//! the desired one. A run that is settled sends no write at all.
//!
//! Why a hash and not a comparison with the cached object: the API server fills in defaults
//! (pod template fields, ports' protocols, ...), so a desired object never equals the stored
//! one, and a field-by-field "is it a subset" check would have to know every default. The price:
//! a field someone else changes by hand on an owned object stays changed until the run's desired
//! object changes (the chart's RBAC lets nobody but the operator and cluster admins do that).

use super::cache::Caches;
use super::memory::RunMemory;
use super::owned::{self, DESIRED_HASH_ANNOTATION, OwnedObject};
use crate::api::AbcRun;
use crate::resources::Owned;
use kube::ResourceExt;
use sha2::{Digest, Sha256};
use std::hash::{DefaultHasher, Hash, Hasher};

/// The owned objects to apply: those whose cached copy is missing or holds another hash. Each
/// returned object carries its hash annotation.
pub fn differing(owned: &Owned, namespace: &str, caches: &Caches) -> Vec<OwnedObject> {
    owned::objects(owned)
        .into_iter()
        .filter_map(|desired| {
            let applied = desired
                .cached(&caches.owned, namespace)
                .and_then(|meta| meta.annotations?.remove(DESIRED_HASH_ANNOTATION));
            let object = with_hash(desired.to_object());
            (applied.as_deref() != object.desired_hash()).then_some(object)
        })
        .collect()
}

/// [`differing`], or nothing without looking when the inputs are those of the last time nothing
/// differed (remembered per run in `memory`): the run's version (its spec and status),
/// `built_from` (what the builders read besides the run) and the cached objects' versions (an
/// object deleted or changed by someone else has another, or none).
///
/// A reconcile with the same inputs would build the same desired objects and compare them with
/// the same cached ones, so it skips serializing and hashing them (46 KiB of Python files in
/// the ConfigMap alone): a live run is reconciled every time its poller sees progress, and at
/// 1,000 runs that hashing was a seventh of the controller's CPU.
pub fn unsettled(
    memory: &RunMemory,
    run: &AbcRun,
    built_from: impl Hash,
    owned: &Owned,
    namespace: &str,
    caches: &Caches,
) -> Vec<OwnedObject> {
    let Some(version) = run.resource_version() else {
        return differing(owned, namespace, caches);
    };
    let cached_versions: Vec<Option<String>> = owned::objects(owned)
        .into_iter()
        .map(|o| o.cached(&caches.owned, namespace)?.resource_version)
        .collect();
    let mut inputs = DefaultHasher::new();
    (version, built_from, cached_versions).hash(&mut inputs);
    let inputs = inputs.finish();
    if memory.settled(run) == Some(inputs) {
        return Vec::new();
    }
    let objects = differing(owned, namespace, caches);
    memory.set_settled(run, objects.is_empty().then_some(inputs));
    objects
}

/// `object` with the hash of its content (hash annotation excluded) in the hash annotation.
fn with_hash(mut object: OwnedObject) -> OwnedObject {
    if let Some(annotations) = object.meta_mut().annotations.as_mut() {
        annotations.remove(DESIRED_HASH_ANNOTATION);
    }
    // Serialized from typed structs with sorted maps: the same object always gives the same
    // bytes (untagged: the object's own JSON).
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
