//! A run as the controller sees it (name, namespace, uid), from YAML, for the builders' tests.
use crate::api::{AbcRun, AbcRunStatus, Phase};

pub const PASSWORD: &str = "s3cr3t-Pa55word-for-tests-only";

pub fn run(spec_yaml: &str) -> AbcRun {
    let spec = spec_yaml
        .lines()
        .map(|l| format!("  {l}\n"))
        .collect::<String>();
    serde_yaml::from_str(&format!(
        "apiVersion: abc-operator.dev/v1alpha1\nkind: AbcRun\nmetadata:\n  name: gaussian\n  namespace: science\n  uid: 0b5e2c3a-1111-2222-3333-444455556666\nspec:\n{spec}"
    ))
    .expect("test run parses")
}

/// The master Job of `run(spec_yaml)`, which must have a master.
pub fn master(spec_yaml: &str) -> k8s_openapi::api::batch::v1::Job {
    crate::resources::master_job(&run(spec_yaml))
        .unwrap()
        .expect("the run has a master")
}

pub fn minimal() -> AbcRun {
    run("image: models/gaussian:1")
}

/// `run` with the status phase a previous reconcile wrote.
pub fn in_phase(mut run: AbcRun, phase: Phase) -> AbcRun {
    run.status = Some(AbcRunStatus {
        phase: Some(phase),
        ..AbcRunStatus::default()
    });
    run
}

/// The literal value of a container's environment variable.
pub fn env_value(c: &k8s_openapi::api::core::v1::Container, name: &str) -> Option<String> {
    c.env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)?
        .value
        .clone()
}
