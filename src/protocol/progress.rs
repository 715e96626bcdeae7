//! A snapshot as the progress users see: the AbcRun's `status.progress`, and the local runner's
//! progress lines and JSON.

use super::Snapshot;
use crate::api::Progress;

/// The current generation's counters; a counter pyABC has not written (yet) is 0.
/// `acceptances` and `lastProgressTime` are the status' own business (they need the previous
/// status).
impl From<&Snapshot> for Progress {
    fn from(s: &Snapshot) -> Progress {
        Progress {
            analysis_id: s.analysis_id.clone(),
            generation: s.generation,
            mode: s.mode.map(|m| m.to_string()),
            accepted: s.n_acc.unwrap_or(0),
            required: s.n_req.unwrap_or(0),
            acceptances: None,
            evaluations: s.n_eval.unwrap_or(0),
            failures: s.n_fail.unwrap_or(0),
            active_workers: s.n_worker.unwrap_or(0),
            last_progress_time: None,
        }
    }
}
