//! The plots' data as CSV (RFC 4180: comma-separated, a header row, `\r\n` line ends), for a
//! spreadsheet or `pandas.read_csv`. Missing or non-finite values are empty cells; numbers are
//! written in full (the shortest text that reads back exactly, `1e-7` style when tiny or huge).
//!
//! Text cells (parameter names, times) are quoted when they hold a comma, a quote or a line
//! end; one starting with `=`, `+`, `-`, `@`, a tab or a carriage return gets a leading `'`
//! so that a spreadsheet shows it as text instead of running it as a formula (OWASP's advice
//! on CSV injection: a parameter name is the run author's, the reader may be someone else).

use super::page::{PageData, Plot};
use crate::protocol::inference::{HISTOGRAM_BINS, QUANTILES};
use std::fmt::Write;

/// Every stored generation (`Plot::Generations`: its figures and the run's execution then), or
/// every recorded parameter's summary in every generation (`Plot::Posterior`), oldest first.
pub fn csv(data: &PageData, plot: Plot) -> String {
    match plot {
        Plot::Generations => generations(data),
        Plot::Posterior => posterior(data),
    }
}

fn generations(data: &PageData) -> String {
    let models = data
        .records
        .iter()
        .map(|r| r.model_probabilities.len())
        .max()
        .unwrap_or(0);
    let mut out = String::from(
        "generation,time,epsilon,accepted,evaluations,acceptance_rate,ess,wall_time_seconds,\
         parameters_total,workers_ready,workers_desired,active_workers,lost_workers,resumes,\
         redis_restarts",
    );
    for m in 0..models {
        let _ = write!(out, ",model_probability_{m}");
    }
    out.push_str("\r\n");
    for r in &data.records {
        let e = r.execution.as_ref();
        let execution = |f: fn(&crate::protocol::inference::Execution) -> i64| {
            e.map(|e| f(e).to_string()).unwrap_or_default()
        };
        let _ = write!(
            out,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            r.t,
            text(&r.time),
            number(r.epsilon),
            r.accepted,
            r.evaluations,
            number(r.acceptance_rate),
            number(r.ess),
            number(r.wall_time_seconds),
            r.parameters_total,
            execution(|e| e.workers_ready),
            execution(|e| e.workers_desired),
            execution(|e| e.active_workers),
            execution(|e| e.lost_workers),
            execution(|e| e.resumes),
            execution(|e| e.redis_restarts),
        );
        for m in 0..models {
            let _ = write!(out, ",{}", number(r.model_probabilities.get(m).copied()));
        }
        out.push_str("\r\n");
    }
    out
}

fn posterior(data: &PageData) -> String {
    let mut out = String::from("generation,parameter,mean,sd");
    for q in QUANTILES {
        let _ = write!(out, ",q{:02}", (q * 100.0).round() as u32);
    }
    out.push_str(",histogram_low,histogram_high");
    for i in 1..=HISTOGRAM_BINS {
        let _ = write!(out, ",weight_{i}");
    }
    out.push_str("\r\n");
    for r in &data.records {
        for p in &r.parameters {
            let _ = write!(
                out,
                "{},{},{},{}",
                r.t,
                text(&p.name),
                number(p.mean),
                number(p.sd)
            );
            for i in 0..QUANTILES.len() {
                let _ = write!(out, ",{}", number(p.quantiles.get(i).copied().flatten()));
            }
            let _ = write!(
                out,
                ",{},{}",
                number(Some(p.histogram.low)),
                number(Some(p.histogram.high))
            );
            for i in 0..HISTOGRAM_BINS {
                let _ = write!(out, ",{}", number(p.histogram.weights.get(i).copied()));
            }
            out.push_str("\r\n");
        }
    }
    out
}

fn number(x: Option<f64>) -> String {
    x.filter(|x| x.is_finite())
        .map(|x| format!("{x:?}"))
        .unwrap_or_default()
}

fn text(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_cells_are_quoted_and_never_formulas() {
        assert_eq!(text("mu"), "mu");
        assert_eq!(text("a,b"), "\"a,b\"");
        assert_eq!(text("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(text("=HYPERLINK(1)"), "'=HYPERLINK(1)");
        assert_eq!(text("-1+1,x"), "\"'-1+1,x\"");
        assert_eq!(
            text("2026-12-06T18:00:00+00:00"),
            "2026-12-06T18:00:00+00:00"
        );
        assert_eq!(number(Some(1e-7)), "1e-7");
        assert_eq!(number(Some(0.25)), "0.25");
        assert_eq!(number(Some(f64::INFINITY)), "");
        assert_eq!(number(None), "");
    }
}
