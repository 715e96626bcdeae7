//! What a run has inferred so far: one record per stored generation, written by the
//! `abc_operator` module (`GENERATIONS_KEY` and the bounds below in
//! python/abc_operator/__init__.py, kept equal to these constants by a test) into the run's Redis
//! (the list [`GENERATIONS`], one JSON text per generation, in order) right after pyABC stored
//! the generation in its database.
//!
//! The module writes each record from exactly what pyABC logs and stores for the generation
//! (`t: N, eps: ...`, `Accepted: a / n = rate, ESS: ...`), so the two always agree. When a
//! master starts (new or resumed) it rewrites the list from its database: after a Redis loss
//! the list again holds every stored generation.
//!
//! Bounds (the module keeps to them, and [`GenerationRecord::parse`] refuses a record beyond
//! them, so that a hostile or broken writer cannot make the operator hold more): at most
//! [`MAX_PARAMETERS`] parameter summaries per record (`parameters_total` says how many the
//! model has), [`HISTOGRAM_BINS`] bins per histogram, [`MAX_RECORD_BYTES`] per record.

use super::ProtocolError;
use serde::{Deserialize, Serialize};

/// Redis list of the run's generation records (JSON texts, oldest first).
pub const GENERATIONS: &str = "abc_operator:generations";
/// Parameter summaries a record holds at most (the first ones, in the model's order).
pub const MAX_PARAMETERS: usize = 32;
/// Bins of each parameter's weighted histogram.
pub const HISTOGRAM_BINS: usize = 20;
/// The quantiles each parameter summary holds, in order.
pub const QUANTILES: [f64; 5] = [0.05, 0.25, 0.5, 0.75, 0.95];
/// The largest record the operator reads (32 parameters with histograms take about 16 KiB).
pub const MAX_RECORD_BYTES: usize = 64 * 1024;

/// One stored generation, as the `abc_operator` module recorded it. Non-finite numbers (an
/// infinite first epsilon) are `None`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct GenerationRecord {
    /// pyABC's generation index t (0, 1, ...).
    pub t: i64,
    /// The generation's acceptance threshold (`eps` in pyABC's log).
    pub epsilon: Option<f64>,
    /// Particles accepted: the population size.
    pub accepted: i64,
    /// Model evaluations it took (pyABC's `nr_simulations`).
    pub evaluations: i64,
    /// `accepted / evaluations`.
    pub acceptance_rate: Option<f64>,
    /// Effective sample size of the weighted population.
    pub ess: Option<f64>,
    /// Wall time pyABC spent on the generation, in seconds.
    pub wall_time_seconds: Option<f64>,
    /// When it was stored (the master's clock, RFC 3339).
    pub time: String,
    /// Number of parameters of the model(s); `parameters` holds the first
    /// [`MAX_PARAMETERS`] of them.
    pub parameters_total: usize,
    /// Weighted summary of each parameter's marginal posterior in this generation.
    #[serde(default)]
    pub parameters: Vec<ParameterSummary>,
    /// Model probabilities, when the analysis compares several models.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub model_probabilities: Vec<f64>,
    /// The run's execution when the operator stored the record (not written by the module).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution: Option<Execution>,
}

/// What the operator saw of a run's execution when it stored a generation's record.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Execution {
    pub workers_ready: i64,
    pub workers_desired: i64,
    /// Workers inside the generation being sampled then.
    pub active_workers: i64,
    /// Lost workers repaired so far.
    pub lost_workers: i64,
    /// Resumes of the master so far.
    pub resumes: i64,
    /// Restarts of the run's Redis so far.
    pub redis_restarts: i64,
}

/// A parameter's weighted marginal in one generation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ParameterSummary {
    /// The parameter's name (prefixed `m{i}.` when several models are compared).
    pub name: String,
    pub mean: Option<f64>,
    pub sd: Option<f64>,
    /// Weighted quantiles at [`QUANTILES`].
    pub quantiles: Vec<Option<f64>>,
    /// Weighted histogram: `HISTOGRAM_BINS` weights (summing to 1) over equal bins from
    /// `low` to `high`.
    pub histogram: Histogram,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Histogram {
    pub low: f64,
    pub high: f64,
    pub weights: Vec<f64>,
}

/// The records of [`GENERATIONS`] from index `from` on, each parsed on its own: a record
/// beyond the bounds is an error of its own and does not hide the others.
pub async fn read_records<C>(
    conn: &mut C,
    from: i64,
) -> Result<Vec<Result<GenerationRecord, ProtocolError>>, ProtocolError>
where
    C: redis::aio::ConnectionLike + Send,
{
    let texts: Vec<Vec<u8>> = redis::cmd("LRANGE")
        .arg(GENERATIONS)
        .arg(from)
        .arg(-1)
        .query_async(conn)
        .await?;
    Ok(texts.iter().map(|t| GenerationRecord::parse(t)).collect())
}

/// `x` as Python's `f"{x:.{digits}e}"` writes it (`3.33e-01`: a signed exponent of at least
/// two digits), so that a note reads like the master's log line.
pub fn python_e(x: f64, digits: usize) -> String {
    let text = format!("{x:.digits$e}");
    match text.split_once('e') {
        Some((mantissa, exponent)) => {
            let (sign, magnitude) = match exponent.strip_prefix('-') {
                Some(m) => ('-', m),
                None => ('+', exponent),
            };
            format!("{mantissa}e{sign}{magnitude:0>2}")
        }
        None => text, // inf, NaN
    }
}

impl GenerationRecord {
    /// Parses one record of [`GENERATIONS`], refusing one beyond the bounds.
    pub fn parse(text: &[u8]) -> Result<GenerationRecord, ProtocolError> {
        let bad = |why: String| ProtocolError::NotPyabc(format!("a record in {GENERATIONS} {why}"));
        if text.len() > MAX_RECORD_BYTES {
            return Err(bad(format!(
                "has {} bytes, more than {MAX_RECORD_BYTES}",
                text.len()
            )));
        }
        let record: GenerationRecord = serde_json::from_slice(text)
            .map_err(|e| bad(format!("is not a generation record: {e}")))?;
        if record.parameters.len() > MAX_PARAMETERS {
            return Err(bad(format!(
                "has {} parameter summaries, more than {MAX_PARAMETERS}",
                record.parameters.len()
            )));
        }
        if let Some(p) = record.parameters.iter().find(|p| {
            p.histogram.weights.len() > HISTOGRAM_BINS || p.quantiles.len() > QUANTILES.len()
        }) {
            return Err(bad(format!(
                "has a summary of {} with more than {HISTOGRAM_BINS} bins or {} quantiles",
                p.name,
                QUANTILES.len()
            )));
        }
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECORD: &str = r#"{"t": 2, "epsilon": 0.5, "accepted": 100, "evaluations": 400,
        "acceptance_rate": 0.25, "ess": 87.5, "wall_time_seconds": 3.2,
        "time": "2026-12-06T18:00:00+00:00", "parameters_total": 1,
        "parameters": [{"name": "mu", "mean": 1.0, "sd": 0.2,
          "quantiles": [0.7, 0.9, 1.0, 1.1, 1.3],
          "histogram": {"low": 0.5, "high": 1.5, "weights": [0.5, 0.5]}}]}"#;

    #[test]
    fn reads_a_record_and_an_infinite_epsilon_as_none() {
        let record = GenerationRecord::parse(RECORD.as_bytes()).unwrap();
        assert_eq!(
            (record.t, record.accepted, record.evaluations),
            (2, 100, 400)
        );
        assert_eq!(record.parameters[0].name, "mu");
        let first = RECORD.replace(r#""epsilon": 0.5"#, r#""epsilon": null"#);
        assert_eq!(
            GenerationRecord::parse(first.as_bytes()).unwrap().epsilon,
            None
        );
    }

    #[test]
    fn the_master_module_writes_this_list_within_these_bounds() {
        let module = super::super::MASTER_MODULE;
        let quantiles = QUANTILES.map(|q| q.to_string()).join(", ");
        for line in [
            format!("GENERATIONS_KEY = \"{GENERATIONS}\""),
            format!("MAX_PARAMETERS = {MAX_PARAMETERS}"),
            format!("HISTOGRAM_BINS = {HISTOGRAM_BINS}"),
            format!("QUANTILES = ({quantiles})"),
            format!("MAX_RECORD_BYTES = {} * 1024", MAX_RECORD_BYTES / 1024),
        ] {
            assert!(module.contains(&format!("\n{line}\n")), "{line}");
        }
    }

    #[test]
    fn refuses_records_beyond_the_bounds_naming_the_list() {
        let huge = format!("{{\"pad\": \"{}\"}}", "x".repeat(MAX_RECORD_BYTES));
        let err = GenerationRecord::parse(huge.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains(GENERATIONS) && err.contains("bytes"), "{err}");
        let bins = RECORD.replace("[0.5, 0.5]", &format!("{:?}", vec![0.01; 21]));
        let err = GenerationRecord::parse(bins.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("mu"), "{err}");
        let err = GenerationRecord::parse(b"{}").unwrap_err().to_string();
        assert!(err.contains("not a generation record"), "{err}");
    }
}
