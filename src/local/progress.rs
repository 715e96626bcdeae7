//! Progress a person can follow (one line per generation) or a program can read (one JSON
//! object per update). Pure: it turns observations into text; the caller writes it to stdout.

use crate::api::Progress;
use crate::protocol::inference::python_e;
use serde_json::{Value, json};
use std::time::Duration;

/// What one poll of the run's Redis showed, plus what the runner knows itself.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observation {
    /// The progress read from Redis, as an AbcRun's status shows it: no analysis id before the
    /// master started and after it finished; generation -1 is pyABC's calibration population.
    pub progress: Progress,
    /// Worker processes the runner has alive.
    pub workers: usize,
}

/// The counters of a generation after it ended (read once, when the next one is seen).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FinalCounts {
    pub accepted: i64,
    pub required: i64,
    pub evaluations: i64,
    pub failures: i64,
}

/// What the master recorded of a generation (`protocol::inference`), for its line.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Figures {
    pub epsilon: Option<f64>,
    pub acceptance_rate: Option<f64>,
    pub ess: Option<f64>,
}

impl From<&crate::protocol::inference::GenerationRecord> for Figures {
    fn from(record: &crate::protocol::inference::GenerationRecord) -> Figures {
        Figures {
            epsilon: record.epsilon,
            acceptance_rate: record.acceptance_rate,
            ess: record.ess,
        }
    }
}

/// A piece of output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Out {
    /// A finished line.
    Line(String),
    /// A line that replaces the previous live line (terminals only); empty: remove it.
    Live(String),
}

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// A terminal: the current generation is redrawn in place, each finished one stays.
    Terminal,
    /// A pipe or file: one line per finished generation, and a line at most every
    /// [`PLAIN_INTERVAL`] while a long generation makes progress.
    Plain,
    /// One JSON object per line and per change.
    Json,
}

/// How often a plain (non-terminal) display reports a generation still in progress.
pub const PLAIN_INTERVAL: Duration = Duration::from_secs(10);

/// Turns successive observations into output.
#[derive(Debug)]
pub struct Renderer {
    style: Style,
    last: Option<Observation>,
    last_plain_line: Duration,
}

impl Renderer {
    pub fn new(style: Style) -> Renderer {
        Renderer {
            style,
            last: None,
            last_plain_line: Duration::ZERO,
        }
    }

    /// The generation (analysis, t) that `obs` ends, if it ends one: the caller may read its
    /// final counters and pass them to [`Renderer::observe`], since the last poll inside it
    /// may have missed its last half second.
    pub fn ending(&self, obs: &Observation) -> Option<(String, i64)> {
        let (prev, now) = (&self.last.as_ref()?.progress, &obs.progress);
        let (ana, t) = (prev.analysis_id.clone()?, prev.generation?);
        (prev.generation != now.generation || prev.analysis_id != now.analysis_id)
            .then_some((ana, t))
    }

    /// Output for a new observation made `elapsed` after the run started; `ended` are the
    /// final counters of the generation it ends (see [`Renderer::ending`]), `figures` what the
    /// master recorded of it.
    pub fn observe(
        &mut self,
        obs: Observation,
        ended: Option<FinalCounts>,
        figures: Option<Figures>,
        elapsed: Duration,
    ) -> Vec<Out> {
        let mut out = Vec::new();
        let previous = self.last.replace(obs.clone());
        if previous.as_ref() == Some(&obs) {
            return out;
        }
        // A generation ended when the generation or the analysis changed (or went away): it
        // gets its permanent line (or a `generation_done` object).
        if let Some(mut done) = previous.filter(|p| p.progress.generation.is_some())
            && (done.progress.generation != obs.progress.generation
                || done.progress.analysis_id != obs.progress.analysis_id)
        {
            let p = &mut done.progress;
            match ended {
                Some(c) => {
                    (p.accepted, p.required) = (c.accepted, c.required);
                    (p.evaluations, p.failures) = (c.evaluations, c.failures);
                }
                // A finished generation has, by pyABC's definition, its required particles.
                None => p.accepted = p.accepted.max(p.required),
            }
            out.push(Out::Line(match self.style {
                Style::Json => {
                    let mut event = progress_json(&done, elapsed);
                    event["event"] = "generation_done".into();
                    if let Some(f) = figures {
                        event["epsilon"] = json!(f.epsilon);
                        event["acceptance_rate"] = json!(f.acceptance_rate);
                        event["ess"] = json!(f.ess);
                    }
                    event.to_string()
                }
                _ => {
                    format_line(&done, elapsed, true)
                        + &figures.map(figures_text).unwrap_or_default()
                }
            }));
            self.last_plain_line = elapsed;
        }
        match self.style {
            Style::Json => out.push(Out::Line(progress_json(&obs, elapsed).to_string())),
            // No generation running (between analyses, or at the end): no live line either.
            Style::Terminal if obs.progress.generation.is_none() => {
                out.push(Out::Live(String::new()))
            }
            _ if obs.progress.generation.is_none() => {}
            Style::Terminal => out.push(Out::Live(format_line(&obs, elapsed, false))),
            Style::Plain => {
                if elapsed.saturating_sub(self.last_plain_line) >= PLAIN_INTERVAL {
                    out.push(Out::Line(format_line(&obs, elapsed, false)));
                    self.last_plain_line = elapsed;
                }
            }
        }
        out
    }

    /// Forgets the generation in progress: it was lost with Redis and will be sampled again,
    /// so it gets no `done` line when the next observation no longer shows it.
    pub fn forget_generation(&mut self) {
        self.last = None;
    }

    /// A note between progress lines (e.g. a repaired worker).
    pub fn note(&self, text: &str, event: Value) -> Out {
        match self.style {
            Style::Json => Out::Line(event.to_string()),
            _ => Out::Line(text.to_string()),
        }
    }
}

fn generation_label(generation: i64) -> String {
    if generation < 0 {
        "calibration".to_string()
    } else {
        format!("generation {generation}")
    }
}

/// `generation 3  accepted 143/200  evaluations 412  workers 2, 2 in generation  [9.1s]`.
pub fn format_line(obs: &Observation, elapsed: Duration, done: bool) -> String {
    let p = &obs.progress;
    let label = p
        .generation
        .map(generation_label)
        .unwrap_or_else(|| "waiting".to_string());
    let mut line = format!(
        "{label:<13} accepted {:>5}/{:<5} evaluations {:>7}",
        p.accepted, p.required, p.evaluations
    );
    if p.failures > 0 {
        line.push_str(&format!("  failed {}", p.failures));
    }
    if done {
        line.push_str(&format!(
            "  done            [{:>6.1}s]",
            elapsed.as_secs_f64()
        ));
    } else {
        line.push_str(&format!(
            "  workers {}, {} in generation  [{:>6.1}s]",
            obs.workers,
            p.active_workers,
            elapsed.as_secs_f64()
        ));
    }
    line
}

/// `  eps 3.3333e-01  acceptance 2.5000e-01  ESS 180.0`: a done line's figures, as pyABC's
/// own log says them.
fn figures_text(f: Figures) -> String {
    let mut text = String::new();
    if let Some(eps) = f.epsilon {
        text += &format!("  eps {}", python_e(eps, 4));
    }
    if let Some(rate) = f.acceptance_rate {
        text += &format!("  acceptance {}", python_e(rate, 4));
    }
    if let Some(ess) = f.ess {
        text += &format!("  ESS {ess:.1}");
    }
    text
}

/// The JSON object of one progress update.
pub fn progress_json(obs: &Observation, elapsed: Duration) -> Value {
    let p = &obs.progress;
    json!({
        "event": "progress",
        "analysis_id": p.analysis_id,
        "generation": p.generation,
        "accepted": p.accepted,
        "required": p.required,
        "evaluations": p.evaluations,
        "failures": p.failures,
        "in_generation": p.active_workers,
        "workers": obs.workers,
        "elapsed_s": round1(elapsed),
    })
}

/// Seconds with one decimal, for JSON.
pub fn round1(d: Duration) -> f64 {
    (d.as_secs_f64() * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(generation: i64, accepted: i64, evaluations: i64) -> Observation {
        Observation {
            progress: Progress {
                analysis_id: Some("a".into()),
                generation: Some(generation),
                accepted,
                required: 200,
                evaluations,
                active_workers: 2,
                ..Progress::default()
            },
            workers: 2,
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn terminal_redraws_the_current_generation_and_keeps_finished_ones() {
        let mut r = Renderer::new(Style::Terminal);
        assert_eq!(
            r.observe(Observation::default(), None, None, secs(0)),
            vec![Out::Live(String::new())],
            "nothing before the master starts"
        );
        let out = r.observe(obs(0, 10, 20), None, None, secs(1));
        assert!(
            matches!(&out[..], [Out::Live(l)] if l.contains("generation 0") && l.contains("10/200"))
        );
        assert!(
            r.observe(obs(0, 10, 20), None, None, secs(2)).is_empty(),
            "no output without change"
        );
        let out = r.observe(obs(1, 3, 5), None, None, secs(3));
        assert_eq!(out.len(), 2);
        assert!(
            matches!(&out[0], Out::Line(l) if l.contains("generation 0") && l.contains("200/200") && l.contains("done"))
        );
        assert!(matches!(&out[1], Out::Live(l) if l.contains("generation 1")));
    }

    #[test]
    fn the_last_generation_is_finished_when_the_analysis_goes_away() {
        let mut r = Renderer::new(Style::Plain);
        r.observe(obs(4, 150, 900), None, None, secs(1));
        let figures = Figures {
            epsilon: Some(0.125),
            acceptance_rate: Some(0.25),
            ess: Some(140.0),
        };
        let out = r.observe(
            Observation {
                workers: 2,
                ..Default::default()
            },
            None,
            Some(figures),
            secs(2),
        );
        assert!(
            matches!(&out[..], [Out::Line(l)] if l.contains("generation 4") && l.contains("done")
                && l.ends_with("eps 1.2500e-01  acceptance 2.5000e-01  ESS 140.0")),
            "{out:?}"
        );
        let mut r = Renderer::new(Style::Terminal);
        r.observe(obs(4, 150, 900), None, None, secs(1));
        let out = r.observe(
            Observation {
                workers: 2,
                ..Default::default()
            },
            None,
            None,
            secs(2),
        );
        assert!(
            matches!(&out[..], [Out::Line(_), Out::Live(l)] if l.is_empty()),
            "the live line goes: {out:?}"
        );
    }

    #[test]
    fn a_generation_lost_with_redis_is_not_reported_done() {
        let mut r = Renderer::new(Style::Json);
        r.observe(obs(3, 40, 90), None, None, secs(1));
        r.forget_generation();
        let empty = Observation {
            workers: 2,
            ..Default::default()
        };
        assert_eq!(r.ending(&empty), None);
        let out = r.observe(empty, None, None, secs(2));
        assert!(
            matches!(&out[..], [Out::Line(l)] if !l.contains("generation_done")),
            "{out:?}"
        );
    }

    #[test]
    fn a_finished_generation_shows_its_final_counters() {
        let mut r = Renderer::new(Style::Plain);
        r.observe(obs(0, 150, 300), None, None, secs(1));
        assert_eq!(r.ending(&obs(0, 160, 310)), None);
        let next = obs(1, 0, 0);
        assert_eq!(r.ending(&next), Some(("a".to_string(), 0)));
        let counts = FinalCounts {
            accepted: 201,
            required: 200,
            evaluations: 402,
            failures: 1,
        };
        let out = r.observe(next, Some(counts), None, secs(2));
        assert!(
            matches!(&out[..], [Out::Line(l)] if l.contains("201/200") && l.contains("402") && l.contains("failed 1")),
            "{out:?}"
        );
    }

    #[test]
    fn plain_output_is_one_line_per_generation_plus_a_slow_heartbeat() {
        let mut r = Renderer::new(Style::Plain);
        assert!(r.observe(obs(-1, 1, 1), None, None, secs(1)).is_empty());
        assert!(r.observe(obs(-1, 2, 2), None, None, secs(5)).is_empty());
        let out = r.observe(obs(-1, 3, 3), None, None, secs(11));
        assert!(
            matches!(&out[..], [Out::Line(l)] if l.starts_with("calibration") && !l.contains("done"))
        );
        let out = r.observe(obs(0, 0, 0), None, None, secs(12));
        assert!(
            matches!(&out[..], [Out::Line(l)] if l.starts_with("calibration") && l.contains("done"))
        );
    }

    #[test]
    fn json_is_one_object_per_change() {
        let mut r = Renderer::new(Style::Json);
        let out = r.observe(obs(2, 5, 9), None, None, Duration::from_millis(1234));
        let [Out::Line(line)] = &out[..] else {
            panic!("{out:?}")
        };
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["event"], "progress");
        assert_eq!(v["generation"], 2);
        assert_eq!(v["accepted"], 5);
        assert_eq!(v["elapsed_s"], 1.2);
        assert!(r.observe(obs(2, 5, 9), None, None, secs(2)).is_empty());
        let out = r.observe(obs(3, 0, 0), None, None, secs(3));
        let [Out::Line(done), Out::Line(_)] = &out[..] else {
            panic!("{out:?}")
        };
        let done: Value = serde_json::from_str(done).unwrap();
        assert_eq!(
            (done["event"].as_str(), done["generation"].as_i64()),
            (Some("generation_done"), Some(2))
        );
        assert_eq!(
            r.note("text", json!({"event": "x"})),
            Out::Line("{\"event\":\"x\"}".into())
        );
    }

    #[test]
    fn failures_show_only_when_there_are_some() {
        let mut o = obs(1, 1, 1);
        assert!(!format_line(&o, secs(1), false).contains("failed"));
        o.progress.failures = 2;
        assert!(format_line(&o, secs(1), false).contains("failed 2"));
    }
}
