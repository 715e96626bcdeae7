//! The results claim: where the master's pyABC database lives, so that it outlives the
//! master (a retry resumes from it) and can be copied out (`kubectl abc results`).
//!
//! A run with a master makes `{run}-results` unless `spec.master.resultsClaimName` names a
//! claim of the user's own or `spec.master.results.volume` is `EmptyDir`. The claim is owned
//! by the run (deleted with it) unless `keep` is set: then it has no owner reference and says
//! in an annotation which run made it.

use super::{BuildError, Component, object_meta};
use crate::api::{AbcRun, ResultsSpec, ResultsVolume};
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, PersistentVolumeClaimSpec, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::ResourceExt;
use std::collections::BTreeMap;

/// Annotation of a kept claim: `{namespace}/{run} {uid}` of the run that made it.
pub const MADE_BY_RUN_ANNOTATION: &str = "abc-operator.dev/made-by-run";

/// The ConfigMap of the run's generation records (`controller::records`), owned by the run.
pub fn records_config_map_name(run: &AbcRun) -> String {
    format!("{}-generations", run.name_any())
}

/// The records ConfigMap holding `data` (one key per generation).
pub fn records_config_map(
    run: &AbcRun,
    data: BTreeMap<String, String>,
) -> Result<ConfigMap, BuildError> {
    Ok(ConfigMap {
        metadata: object_meta(run, records_config_map_name(run), Component::Results)?,
        data: Some(data),
        ..ConfigMap::default()
    })
}

/// The claim the master's results database is on: the user's own, or the one the run makes;
/// `None` without a master or with an emptyDir.
pub fn results_claim_name(run: &AbcRun) -> Option<String> {
    let master = run.spec.master.as_ref()?;
    if let Some(own) = &master.results_claim_name {
        return Some(own.clone());
    }
    let results = master.results.clone().unwrap_or_default();
    (results.volume == ResultsVolume::Claim).then(|| format!("{}-results", run.name_any()))
}

/// The claim the run makes (see [`results_claim_name`]), or `None` when it makes none.
pub fn results_claim(run: &AbcRun) -> Result<Option<PersistentVolumeClaim>, BuildError> {
    let Some(master) = &run.spec.master else {
        return Ok(None);
    };
    if master.results_claim_name.is_some() {
        return Ok(None);
    }
    let Some(name) = results_claim_name(run) else {
        return Ok(None);
    };
    let ResultsSpec {
        size,
        storage_class_name,
        access_modes,
        keep,
        ..
    } = master.results.clone().unwrap_or_default();
    let mut meta = object_meta(run, name, Component::Results)?;
    if keep {
        meta.owner_references = None;
        meta.annotations = Some(BTreeMap::from([(
            MADE_BY_RUN_ANNOTATION.to_string(),
            format!(
                "{}/{} {}",
                run.namespace().unwrap_or_default(),
                run.name_any(),
                run.uid().unwrap_or_default()
            ),
        )]));
    }
    Ok(Some(PersistentVolumeClaim {
        metadata: meta,
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(access_modes),
            storage_class_name,
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_string(), Quantity(size))])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::test_support::{minimal, run};

    const MASTER: &str = "image: img\nmaster:\n  command: [python, m.py]\n";

    #[test]
    fn a_run_with_a_master_makes_an_owned_claim_by_default() {
        let claim = results_claim(&run(MASTER)).unwrap().unwrap();
        assert_eq!(claim.metadata.name.as_deref(), Some("gaussian-results"));
        assert_eq!(claim.metadata.owner_references.as_ref().unwrap().len(), 1);
        let spec = claim.spec.unwrap();
        assert_eq!(spec.storage_class_name, None, "the cluster's default class");
        assert_eq!(spec.access_modes.unwrap(), ["ReadWriteOnce"]);
        assert_eq!(
            spec.resources.unwrap().requests.unwrap()["storage"],
            Quantity("1Gi".into())
        );
        assert_eq!(
            results_claim_name(&run(MASTER)).as_deref(),
            Some("gaussian-results")
        );
    }

    #[test]
    fn no_claim_without_a_master_with_an_own_claim_or_with_an_empty_dir() {
        assert_eq!(results_claim(&minimal()).unwrap(), None);
        assert_eq!(results_claim_name(&minimal()), None);
        let own = run(&format!("{MASTER}  resultsClaimName: mine\n"));
        assert_eq!(results_claim(&own).unwrap(), None);
        assert_eq!(results_claim_name(&own).as_deref(), Some("mine"));
        let empty = run(&format!("{MASTER}  results: {{volume: EmptyDir}}\n"));
        assert_eq!(results_claim(&empty).unwrap(), None);
        assert_eq!(results_claim_name(&empty), None);
    }

    #[test]
    fn a_kept_claim_has_no_owner_and_names_the_run_that_made_it() {
        let kept = run(&format!(
            "{MASTER}  results: {{keep: true, size: 5Gi, storageClassName: fast}}\n"
        ));
        let claim = results_claim(&kept).unwrap().unwrap();
        assert_eq!(claim.metadata.owner_references, None);
        let made_by = &claim.metadata.annotations.unwrap()[MADE_BY_RUN_ANNOTATION];
        assert!(made_by.starts_with("science/gaussian "), "{made_by}");
        assert_eq!(
            claim.spec.unwrap().storage_class_name.as_deref(),
            Some("fast")
        );
    }
}
