//! The run's generation records (`protocol::inference`), kept where the controller can read
//! them after the run's Redis is gone.
//!
//! The `abc_operator` module writes one record per stored generation into the run's Redis. That
//! Redis holds them only while it lives: it is scaled to zero when the run ends, and it never
//! persists. So the controller copies them, once per generation, into a ConfigMap the run
//! owns, `{run}-generations`, one key per generation (`gen-00007.json`):
//! - it outlives the run's Redis and the master, and goes with the run;
//! - a restarted controller, or a new leader, reads it from the API server: nothing lives only
//!   in one replica's memory;
//! - whoever may read ConfigMaps in the run's namespace may read it (`kubectl get cm
//!   RUN-generations -o yaml`), with no access to Redis;
//! - adding a generation is one JSON merge patch of its key alone, never a rewrite.
//!
//! Bounds (a ConfigMap holds at most 1 MiB): the last [`MAX_STORED_GENERATIONS`] generations,
//! each record at most [`MAX_STORED_RECORD_BYTES`] (a record over it loses its parameters'
//! histograms, then its parameter summaries, from the last parameter on). The status always
//! has the latest generation.
//!
//! When to read: the snapshot the controller polls anyway carries the number of records in
//! Redis. Only when it differs from the number the status holds are the new records read
//! (one LRANGE), stored, and the status updated: a poll costs no record read.

use super::observe::Observed;
use crate::api::AbcRunStatus;
use crate::protocol::inference::{Execution, GenerationRecord};
use std::collections::BTreeMap;

/// Generations the records ConfigMap keeps (the last ones).
pub const MAX_STORED_GENERATIONS: i64 = 100;
/// Largest record text the ConfigMap keeps: 100 of them stay under a ConfigMap's 1 MiB.
pub const MAX_STORED_RECORD_BYTES: usize = 8 * 1024;

/// The generation records read in one reconcile, because their number changed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RecordsRead {
    /// Records in the run's Redis when read.
    pub recorded: i64,
    /// The records read (the new ones, or all of the last ones after a rewrite), oldest first.
    pub records: Vec<GenerationRecord>,
    /// What was wrong with records that could not be read, if any.
    pub problem: Option<String>,
}

impl RecordsRead {
    pub fn latest(&self) -> Option<&GenerationRecord> {
        self.records.last()
    }
}

/// Which records to read: from which index of the list, or none. `held` is the number the
/// status holds, `recorded` the number in Redis now.
///
/// More recorded: the new ones. Fewer but some: the master started a new analysis (its
/// database was lost) and the list was written anew, so the last ones are read again. None: the
/// Redis is new and empty (the master writes the list again from its database when it
/// starts), so nothing is read and the records kept stay.
pub fn read_from(held: i64, recorded: i64) -> Option<i64> {
    if recorded == held || recorded == 0 {
        return None;
    }
    let window_start = (recorded - MAX_STORED_GENERATIONS).max(0);
    Some(if recorded > held {
        held.max(window_start)
    } else {
        window_start
    })
}

/// The key of generation `t` in the records ConfigMap.
pub fn key(t: i64) -> String {
    format!("gen-{t:05}.json")
}

/// The JSON merge patch of the ConfigMap's data for `read`: each read record under its key,
/// and null for the keys it no longer keeps: those out of the window, and after a rewrite
/// those past the new latest generation up to `previous_latest`.
pub fn data_patch(
    read: &[GenerationRecord],
    previous_latest: Option<i64>,
) -> BTreeMap<String, Option<String>> {
    let mut patch = BTreeMap::new();
    let Some(latest) = read.last().map(|r| r.t) else {
        return patch;
    };
    let keep_from = latest - MAX_STORED_GENERATIONS + 1;
    let first = read.first().map_or(latest, |r| r.t);
    let previous_latest = previous_latest.unwrap_or(-1);
    // Out of the window: at most as many as came in (keys before that were removed earlier).
    for t in (keep_from - read.len() as i64).max(0)..keep_from.min(first) {
        patch.insert(key(t), None);
    }
    for t in latest + 1..=previous_latest {
        patch.insert(key(t), None);
    }
    for record in read.iter().filter(|r| r.t >= keep_from) {
        patch.insert(key(record.t), Some(stored_text(record)));
    }
    patch
}

/// The record's JSON as stored: at most [`MAX_STORED_RECORD_BYTES`], losing histograms and
/// then parameter summaries from the last parameter on until it fits.
pub fn stored_text(record: &GenerationRecord) -> String {
    let mut record = record.clone();
    loop {
        let text = serde_json::to_string(&record).unwrap_or_default();
        if text.len() <= MAX_STORED_RECORD_BYTES {
            return text;
        }
        if let Some(p) = record
            .parameters
            .iter_mut()
            .rev()
            .find(|p| !p.histogram.weights.is_empty())
        {
            p.histogram.weights.clear();
        } else if record.parameters.pop().is_none() {
            return text;
        }
    }
}

/// The run's execution now, stored with the generations that just completed: what the
/// dashboard plots on the generations' time axis.
pub fn execution(previous: Option<&AbcRunStatus>, observed: &Observed) -> Execution {
    Execution {
        workers_ready: observed.workers_ready.into(),
        workers_desired: observed.workers_desired.into(),
        active_workers: observed.progress.as_ref().map_or(0, |p| p.active_workers),
        lost_workers: observed.lost_workers,
        resumes: previous
            .and_then(|s| s.resumes.as_ref())
            .map_or(0, |r| r.count),
        redis_restarts: previous
            .and_then(|s| s.redis.as_ref())
            .map_or(0, |r| r.restarts),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::test_support::record;
    use crate::protocol::inference::ParameterSummary;

    #[test]
    fn records_are_read_only_when_their_number_changed() {
        assert_eq!(
            read_from(3, 3),
            None,
            "a poll of an unchanged run reads none"
        );
        assert_eq!(read_from(3, 5), Some(3), "the new ones");
        assert_eq!(
            read_from(5, 0),
            None,
            "a new, empty Redis: keep what is held"
        );
        assert_eq!(read_from(5, 2), Some(0), "a new analysis: read again");
        assert_eq!(read_from(0, 250), Some(150), "at most the kept window");
    }

    #[test]
    fn a_generation_adds_its_key_and_a_rewrite_removes_the_keys_past_it() {
        let added = data_patch(&[record(3)], Some(2));
        assert_eq!(added.keys().collect::<Vec<_>>(), ["gen-00003.json"]);
        let text = added["gen-00003.json"].as_deref().unwrap();
        assert_eq!(GenerationRecord::parse(text.as_bytes()).unwrap(), record(3));

        let rewritten = data_patch(&[record(0), record(1)], Some(4));
        let removed: Vec<_> = rewritten
            .iter()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(
            removed,
            ["gen-00002.json", "gen-00003.json", "gen-00004.json"]
        );
    }

    #[test]
    fn the_config_map_keeps_the_last_generations_only() {
        let patch = data_patch(&[record(100), record(101)], Some(99));
        assert_eq!(patch["gen-00000.json"], None);
        assert_eq!(patch["gen-00001.json"], None);
        assert!(patch["gen-00101.json"].is_some());
        assert!(!patch.contains_key("gen-00002.json"));
    }

    #[test]
    fn a_large_record_loses_histograms_then_summaries_to_fit() {
        let mut big = record(0);
        big.parameters = (0..32)
            .map(|i| ParameterSummary {
                name: format!("a_rather_long_parameter_name_{i}"),
                ..record(0).parameters[0].clone()
            })
            .collect();
        let text = stored_text(&big);
        assert!(text.len() <= MAX_STORED_RECORD_BYTES, "{}", text.len());
        let stored = GenerationRecord::parse(text.as_bytes()).unwrap();
        assert_eq!(
            stored.parameters.len(),
            32,
            "every summary, fewer histograms"
        );
        assert!(
            !stored.parameters[0].histogram.weights.is_empty(),
            "first ones keep theirs"
        );
        assert!(stored.parameters[31].histogram.weights.is_empty());
    }
}
