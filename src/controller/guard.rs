//! AbcRuns as the watch reads them. One object that does not deserialize (a value of the wrong
//! type where the CRD schema is loose, or an object stored before a CRD change) would otherwise
//! fail the whole list and stall the watch of every run; here it becomes an [`UnreadableRun`]
//! that is reported on the object itself and skipped, while the others reconcile.
//!
//! The same idea as kube's `DeserializeGuard`, but the error names the field (through
//! `serde_path_to_error`), so the Event tells the user what to fix.

use crate::api::AbcRun;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::{Deserialize, Deserializer};
use std::borrow::Cow;

/// Reason of the Warning Event on an AbcRun that cannot be read.
pub const UNREADABLE_REASON: &str = "InvalidAbcRun";

/// An AbcRun from the API server, or what can be read of one that does not deserialize.
#[derive(Clone, Debug)]
pub struct GuardedRun(pub Result<AbcRun, Box<UnreadableRun>>);

/// An AbcRun that does not deserialize: its metadata and why.
#[derive(Clone, Debug, PartialEq)]
pub struct UnreadableRun {
    pub metadata: ObjectMeta,
    /// Path of the offending field, e.g. `spec.workers.replicas` (`.` for the whole object).
    pub field: String,
    /// What is wrong with it, as serde says it.
    pub error: String,
}

impl UnreadableRun {
    /// The note of the Warning Event: the field, what is wrong, and that the run is skipped.
    pub fn note(&self) -> String {
        format!(
            "cannot read this AbcRun: {}: {}; it is skipped until it is fixed (kubectl edit) or re-created from a manifest the CRD accepts",
            self.field, self.error
        )
    }
}

impl<'de> Deserialize<'de> for GuardedRun {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        match serde_path_to_error::deserialize::<_, AbcRun>(&value) {
            Ok(run) => Ok(GuardedRun(Ok(run))),
            Err(err) => {
                // Without readable metadata there is no object to report on: that fails the
                // list as before (the API server never sends such an object).
                let metadata = serde_path_to_error::deserialize(&value["metadata"]).map_err(
                    |err: serde_path_to_error::Error<serde_json::Error>| {
                        let field = match err.path().to_string().as_str() {
                            "." => "metadata".to_string(),
                            path => format!("metadata.{path}"),
                        };
                        <D::Error as serde::de::Error>::custom(format!("{field}: {}", err.inner()))
                    },
                )?;
                Ok(GuardedRun(Err(Box::new(UnreadableRun {
                    metadata,
                    field: err.path().to_string(),
                    error: err.into_inner().to_string(),
                }))))
            }
        }
    }
}

impl Resource for GuardedRun {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        AbcRun::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        AbcRun::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        AbcRun::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        AbcRun::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        match &self.0 {
            Ok(run) => run.meta(),
            Err(unreadable) => &unreadable.metadata,
        }
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        match &mut self.0 {
            Ok(run) => run.meta_mut(),
            Err(unreadable) => &mut unreadable.metadata,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(spec: serde_json::Value) -> GuardedRun {
        serde_json::from_value(json!({
            "apiVersion": "abc-operator.dev/v1alpha1",
            "kind": "AbcRun",
            "metadata": {"name": "r", "namespace": "n"},
            "spec": spec,
        }))
        .expect("an object with metadata always reads")
    }

    #[test]
    fn a_readable_run_is_the_run() {
        let run = read(json!({"image": "img"})).0.unwrap();
        assert_eq!(run.spec.image, "img");
    }

    #[test]
    fn an_unreadable_run_keeps_its_metadata_and_names_the_field() {
        let guarded = read(json!({"image": "img", "workers": {"replicas": "two"}}));
        assert_eq!(guarded.meta().name.as_deref(), Some("r"));
        assert_eq!(guarded.meta().namespace.as_deref(), Some("n"));
        let unreadable = guarded.0.unwrap_err();
        assert_eq!(unreadable.field, "spec.workers.replicas");
        assert!(unreadable.error.contains("\"two\""), "{}", unreadable.error);
        assert!(
            unreadable
                .note()
                .contains("spec.workers.replicas: invalid type"),
            "{}",
            unreadable.note()
        );
    }

    #[test]
    fn a_missing_required_field_names_its_parent() {
        let unreadable = read(json!({"workers": {}})).0.unwrap_err();
        assert_eq!(unreadable.field, "spec");
        assert!(unreadable.error.contains("image"), "{}", unreadable.error);
    }

    #[test]
    fn unreadable_metadata_fails_naming_the_field() {
        let err = serde_json::from_value::<GuardedRun>(json!({
            "metadata": {"name": 5}, "spec": {"image": 7},
        }))
        .unwrap_err();
        assert!(
            err.to_string().starts_with("metadata.name: invalid type"),
            "{err}"
        );
    }

    #[test]
    fn a_list_with_one_unreadable_run_still_reads() {
        let list: Vec<GuardedRun> = serde_json::from_value(json!([
            {"apiVersion": "abc-operator.dev/v1alpha1", "kind": "AbcRun",
             "metadata": {"name": "good"}, "spec": {"image": "img"}},
            {"apiVersion": "abc-operator.dev/v1alpha1", "kind": "AbcRun",
             "metadata": {"name": "bad"}, "spec": {"image": 7}},
        ]))
        .unwrap();
        assert!(list[0].0.is_ok());
        assert_eq!(list[1].0.as_ref().unwrap_err().field, "spec.image");
    }
}
