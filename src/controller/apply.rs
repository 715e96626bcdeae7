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
use crate::resources::{Owned, POD_TEMPLATE_ANNOTATION};
use k8s_openapi::api::batch::v1::Job;
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

/// `desired`, a master Job that exists as `live`, made appliable: a Job's pod template cannot
/// change once made, so it gets `live`'s template, and the annotation saying which template
/// that is ([`resources::POD_TEMPLATE_ANNOTATION`]; none when `live` predates it). The hash
/// annotation stays the desired one, so that the run settles. Returns whether the run now
/// builds another template than `live` has (a changed `spec.master`, or an operator version
/// that builds it differently): that is for the user to know, and not applied.
pub fn with_live_template(desired: &mut Job, live: &Job) -> bool {
    let template_of = |job: &Job| job.annotations().get(POD_TEMPLATE_ANNOTATION).cloned();
    let (kept, wanted) = (template_of(live), template_of(desired));
    if let (Some(spec), Some(live_spec)) = (desired.spec.as_mut(), live.spec.as_ref()) {
        spec.template = live_spec.template.clone();
    }
    let annotations = desired.annotations_mut();
    match &kept {
        Some(hash) => annotations.insert(POD_TEMPLATE_ANNOTATION.into(), hash.clone()),
        None => annotations.remove(POD_TEMPLATE_ANNOTATION),
    };
    kept.is_some() && kept != wanted
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::test_support::master as job;

    #[test]
    fn an_existing_master_job_keeps_its_template_and_says_when_the_run_wants_another() {
        let live = job("image: img\nmaster: {command: [python, a.py]}\n");
        let mut same = live.clone();
        assert!(!with_live_template(&mut same, &live));

        let mut changed = job("image: img\nmaster: {command: [python, b.py]}\nsuspend: true\n");
        assert!(with_live_template(&mut changed, &live));
        let spec = changed.spec.as_ref().unwrap();
        assert_eq!(spec.template, live.spec.as_ref().unwrap().template);
        assert_eq!(spec.suspend, Some(true), "what a Job may change is applied");
        assert_eq!(
            changed.annotations().get(POD_TEMPLATE_ANNOTATION),
            live.annotations().get(POD_TEMPLATE_ANNOTATION)
        );

        // A Job made before the annotation: its template is kept, nothing is claimed about it.
        let mut older = live.clone();
        older.annotations_mut().remove(POD_TEMPLATE_ANNOTATION);
        let mut desired = job("image: img\nmaster: {command: [python, b.py]}\n");
        assert!(!with_live_template(&mut desired, &older));
        assert!(!desired.annotations().contains_key(POD_TEMPLATE_ANNOTATION));
        assert_eq!(desired.spec.unwrap().template, older.spec.unwrap().template);
    }
}
