//! Fixtures shared by the controller's unit tests: a run from its spec's YAML, what a healthy
//! run's parts look like, a master start.

use super::observe::{MasterState, Observed};
use crate::api::AbcRun;
use crate::protocol::{MasterStart, StartOutcome};

/// The run `r` in namespace `n` (spec generation 3) with the spec `yaml` (a flow mapping).
pub fn run(yaml: &str) -> AbcRun {
    serde_yaml::from_str(&format!(
        "apiVersion: abc-operator.dev/v1alpha1\nkind: AbcRun\nmetadata: {{name: r, namespace: n, generation: 3}}\nspec: {yaml}"
    ))
    .unwrap()
}

/// A run whose Redis, two workers and master are up.
pub fn healthy() -> Observed {
    Observed {
        redis_ready: true,
        workers_replicas: 2,
        workers_ready: 2,
        workers_desired: 2,
        selector: "abc-operator.dev/run=r".into(),
        master: Some(MasterState::Running),
        ..Observed::default()
    }
}

/// A master start Redis holds.
pub fn start(outcome: StartOutcome, cause: &str, at: &str) -> Option<MasterStart> {
    Some(MasterStart {
        outcome,
        cause: cause.into(),
        at: at.into(),
    })
}
