//! What a run asks of its workers right now, for autoscalers: the evaluations still needed in
//! the current generation and whether an analysis is in progress. Computed by the reconciler
//! from each Redis snapshot and kept on a board the metrics endpoints read.

use crate::api::Phase;
use crate::protocol::Snapshot;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

/// A reading that depends on Redis is stale after this long without a new one (the reconciler
/// reads a running run every few seconds); a stale value must not keep an HPA scaled up.
const STALE_AFTER: Duration = Duration::from_secs(60);

/// A run's demand on its workers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Demand {
    /// Evaluations (simulations) still needed to fill the current generation: the missing
    /// acceptances divided by the acceptance rate so far. 0 between generations and when done.
    pub evaluations_needed: i64,
    /// An analysis is in progress (a master holds the Redis and the run is not finished), even
    /// between generations: scale-to-zero autoscalers keep workers while this is true.
    pub active: bool,
    /// The acceptance rate the estimate used, when one was known.
    pub acceptance_rate: Option<f64>,
    pub generation: Option<i64>,
}

impl Demand {
    pub const IDLE: Demand = Demand {
        evaluations_needed: 0,
        active: false,
        acceptance_rate: None,
        generation: None,
    };
}

/// The demand of a run in `phase` whose Redis shows `snapshot`. `prior_rate` is the acceptance
/// rate seen in an earlier generation: at the start of a generation (nothing accepted yet) it
/// is a better guess than 1, since acceptance rates fall as epsilon shrinks.
pub fn estimate(phase: Phase, snapshot: &Snapshot, prior_rate: Option<f64>) -> Demand {
    if !matches!(phase, Phase::Running | Phase::Pending) || snapshot.analysis_id.is_none() {
        return Demand::IDLE;
    }
    let generation = snapshot.generation;
    let (Some(required), Some(accepted)) = (snapshot.n_req, snapshot.n_acc) else {
        // The master holds the Redis but has not published a generation yet.
        return Demand {
            active: true,
            generation,
            ..Demand::IDLE
        };
    };
    let missing = (required - accepted).max(0);
    let rate = current_rate(snapshot).or(prior_rate);
    let evaluations_needed = if missing == 0 {
        0
    } else {
        let rate = rate.unwrap_or(1.0).clamp(1e-6, 1.0);
        let needed = (missing as f64 / rate).ceil();
        if needed >= i64::MAX as f64 {
            i64::MAX
        } else {
            needed as i64
        }
    };
    Demand {
        evaluations_needed,
        active: true,
        acceptance_rate: rate,
        generation,
    }
}

/// The acceptance rate of the current generation, once it has accepted something. Every
/// evaluation is accepted while pyABC calibrates (`all_accepted`).
fn current_rate(s: &Snapshot) -> Option<f64> {
    if s.all_accepted == Some(true) {
        return Some(1.0);
    }
    match (s.n_acc, s.n_eval) {
        (Some(acc), Some(eval)) if acc > 0 && eval > 0 => Some((acc as f64 / eval as f64).min(1.0)),
        _ => None,
    }
}

/// Why a run's demand is not known.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DemandError {
    #[error(
        "AbcRun {namespace}/{name} is not known to this operator (no such run, or not reconciled yet)"
    )]
    UnknownRun { namespace: String, name: String },
    #[error("AbcRun {namespace}/{name}: {problem}")]
    Unavailable {
        namespace: String,
        name: String,
        problem: String,
    },
}

struct Entry {
    reading: Result<Demand, String>,
    at: Instant,
    /// The last acceptance rate seen, kept across generations for [`estimate`].
    rate: Option<f64>,
}

/// The latest demand of every run the reconciler has seen, keyed by (namespace, name).
#[derive(Default)]
pub struct DemandBoard {
    runs: RwLock<HashMap<(String, String), Entry>>,
}

impl DemandBoard {
    /// Records the demand of a run in `phase`, from its Redis `snapshot` or the reason there is
    /// none, and returns it when known. A finished run needs no Redis: its demand is 0.
    pub fn record(
        &self,
        namespace: &str,
        name: &str,
        phase: Phase,
        snapshot: Result<&Snapshot, String>,
    ) -> Option<Demand> {
        let mut runs = self.runs.write().unwrap_or_else(|e| e.into_inner());
        let key = (namespace.to_string(), name.to_string());
        let prior = runs.get(&key).and_then(|e| e.rate);
        let reading = match (phase, snapshot) {
            (Phase::Running | Phase::Pending, Ok(s)) => Ok(estimate(phase, s, prior)),
            (Phase::Running | Phase::Pending, Err(problem)) => Err(problem),
            _ => Ok(Demand::IDLE),
        };
        let rate = match &reading {
            Ok(d) => d.acceptance_rate.or(prior),
            Err(_) => prior,
        };
        let known = reading.as_ref().ok().copied();
        runs.insert(
            key,
            Entry {
                reading,
                at: Instant::now(),
                rate,
            },
        );
        known
    }

    pub fn forget(&self, namespace: &str, name: &str) {
        let mut runs = self.runs.write().unwrap_or_else(|e| e.into_inner());
        runs.remove(&(namespace.to_string(), name.to_string()));
    }

    /// The demand of one run.
    pub fn get(&self, namespace: &str, name: &str) -> Result<Demand, DemandError> {
        let runs = self.runs.read().unwrap_or_else(|e| e.into_inner());
        let entry = runs
            .get(&(namespace.to_string(), name.to_string()))
            .ok_or_else(|| DemandError::UnknownRun {
                namespace: namespace.into(),
                name: name.into(),
            })?;
        let unavailable = |problem: String| DemandError::Unavailable {
            namespace: namespace.into(),
            name: name.into(),
            problem,
        };
        match &entry.reading {
            Err(problem) => Err(unavailable(problem.clone())),
            Ok(d) if d.active && entry.at.elapsed() > STALE_AFTER => Err(unavailable(format!(
                "no reading of the run's Redis for {} s",
                entry.at.elapsed().as_secs()
            ))),
            Ok(d) => Ok(*d),
        }
    }

    /// The names of the runs known in a namespace, sorted.
    pub fn runs_in(&self, namespace: &str) -> Vec<String> {
        let runs = self.runs.read().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<String> = runs
            .keys()
            .filter(|(ns, _)| ns == namespace)
            .map(|(_, name)| name.clone())
            .collect();
        names.sort();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampling(req: i64, acc: i64, eval: i64) -> Snapshot {
        Snapshot {
            analysis_id: Some("a".into()),
            generation: Some(2),
            n_req: Some(req),
            n_acc: Some(acc),
            n_eval: Some(eval),
            all_accepted: Some(false),
            ..Snapshot::default()
        }
    }

    #[test]
    fn needed_evaluations_follow_the_acceptance_rate() {
        // 25 of 100 accepted in 250 evaluations: rate 0.1, 75 missing -> 750 more.
        let d = estimate(Phase::Running, &sampling(100, 25, 250), None);
        assert_eq!(d.evaluations_needed, 750);
        assert!(d.active);
        assert_eq!(d.acceptance_rate, Some(0.1));
    }

    #[test]
    fn a_fresh_generation_uses_the_prior_rate_then_one() {
        assert_eq!(
            estimate(Phase::Running, &sampling(100, 0, 0), Some(0.2)).evaluations_needed,
            500
        );
        assert_eq!(
            estimate(Phase::Running, &sampling(100, 0, 0), None).evaluations_needed,
            100
        );
        let mut calibration = sampling(100, 0, 0);
        calibration.all_accepted = Some(true);
        assert_eq!(
            estimate(Phase::Running, &calibration, Some(0.01)).evaluations_needed,
            100
        );
    }

    #[test]
    fn a_full_generation_or_no_analysis_needs_nothing() {
        let full = estimate(Phase::Running, &sampling(100, 100, 900), None);
        assert_eq!((full.evaluations_needed, full.active), (0, true));
        let no_master = Snapshot::default();
        assert_eq!(estimate(Phase::Running, &no_master, None), Demand::IDLE);
        let waiting = Snapshot {
            analysis_id: Some("a".into()),
            ..Snapshot::default()
        };
        let d = estimate(Phase::Running, &waiting, None);
        assert_eq!((d.evaluations_needed, d.active), (0, true));
    }

    #[test]
    fn finished_or_stopped_runs_need_nothing_whatever_redis_says() {
        for phase in [
            Phase::Succeeded,
            Phase::Failed,
            Phase::Stopped,
            Phase::Suspended,
        ] {
            assert_eq!(estimate(phase, &sampling(100, 10, 20), None), Demand::IDLE);
        }
    }

    #[test]
    fn the_board_keeps_the_rate_across_generations_and_names_problems() {
        let board = DemandBoard::default();
        board.record("ns", "r", Phase::Running, Ok(&sampling(100, 50, 1000)));
        // Next generation, nothing accepted yet: the last rate (0.05) drives the estimate.
        board.record("ns", "r", Phase::Running, Ok(&sampling(100, 0, 10)));
        assert_eq!(board.get("ns", "r").unwrap().evaluations_needed, 2000);

        board.record(
            "ns",
            "r",
            Phase::Running,
            Err("cannot read the run's Redis: refused".into()),
        );
        let err = board.get("ns", "r").unwrap_err().to_string();
        assert_eq!(err, "AbcRun ns/r: cannot read the run's Redis: refused");

        board.record("ns", "done", Phase::Succeeded, Err("Redis gone".into()));
        assert_eq!(board.get("ns", "done").unwrap(), Demand::IDLE);

        assert!(matches!(
            board.get("ns", "nope"),
            Err(DemandError::UnknownRun { .. })
        ));
        assert_eq!(board.runs_in("ns"), ["done", "r"]);
        board.forget("ns", "r");
        assert_eq!(board.runs_in("ns"), ["done"]);
    }
}
