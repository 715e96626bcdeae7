//! Fixtures shared by the controller's unit tests: a run from its spec's YAML, what a healthy
//! run's parts look like, a master start.

use super::observe::{MasterState, Observed};
use crate::api::AbcRun;
use crate::protocol::inference::{GenerationRecord, Histogram, ParameterSummary};
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
        module_version: Some(env!("CARGO_PKG_VERSION").into()),
    })
}

/// The record of generation `t` of a one-parameter model.
pub fn record(t: i64) -> GenerationRecord {
    GenerationRecord {
        t,
        epsilon: Some(1.0 / (t + 1) as f64),
        accepted: 100,
        evaluations: 400,
        acceptance_rate: Some(0.25),
        ess: Some(90.0),
        wall_time_seconds: Some(2.0),
        time: "2026-12-06T18:00:00+00:00".into(),
        parameters_total: 1,
        parameters: vec![ParameterSummary {
            name: "mu".into(),
            mean: Some(1.0),
            sd: Some(0.1),
            quantiles: vec![Some(0.8), Some(0.9), Some(1.0), Some(1.1), Some(1.2)],
            histogram: Histogram {
                low: 0.5,
                high: 1.5,
                weights: vec![0.012_345_678_901_234; 20],
            },
        }],
        model_probabilities: vec![],
        execution: None,
    }
}
