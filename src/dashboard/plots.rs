//! The page's charts, each an inline `<svg>` from [`super::svg`]'s kit. Every plotted value is
//! an element carrying its data (`data-generation`, `data-epsilon`, ...) and a `<title>` a
//! browser shows on hover, so that a test finds what a person sees, and a person can read the
//! exact figure without a script.

use super::svg::{Chart, Frame, Scale, c, data, escape, int, num, percent, time_ticks};
use crate::protocol::inference::{Execution, GenerationRecord, ParameterSummary};
use std::fmt::Write;

/// Charts of the generations side by side (two on a laptop's row).
const WIDE: (f64, f64) = (600.0, 250.0);
/// The posterior marginals (three on a row).
const SMALL: (f64, f64) = (400.0, 230.0);
/// Charts on the time axis, across the page.
const ACROSS: (f64, f64) = (1200.0, 190.0);

/// An earlier generation's histogram wider than this many times the latest one's does not
/// widen a marginal's x axis (it is drawn clipped): the first generations often span the
/// whole prior, which would squeeze the latest posterior into a few pixels.
pub const ZOOM: f64 = 8.0;

fn generation_scale(records: &[GenerationRecord], frame: &Frame) -> Scale {
    let lo = records.iter().map(|r| r.t).min().unwrap_or(0) as f64;
    let hi = records.iter().map(|r| r.t).max().unwrap_or(0) as f64;
    Scale::generations(lo - 0.5, hi + 0.5, frame.x0(), frame.x1())
}

/// A line through the finite values and a point per value, over the generations.
struct Series<'a> {
    class: &'a str,
    /// The `data-*` attribute naming the value (`epsilon` makes `data-epsilon`).
    attr: &'a str,
    /// What the tooltip calls it.
    what: &'a str,
    value: fn(&GenerationRecord) -> Option<f64>,
    label: fn(f64) -> String,
}

/// A point's radius: smaller when there are many.
fn radius(count: usize) -> &'static str {
    if count <= 40 { "3.5" } else { "2.2" }
}

fn points(chart: &mut Chart, x: &Scale, y: &Scale, records: &[GenerationRecord], s: &Series) {
    let r = radius(records.len());
    let mut line = String::new();
    for r in records {
        let Some(v) = (s.value)(r).filter(|v| v.is_finite()) else {
            continue;
        };
        let cmd = if line.is_empty() { 'M' } else { 'L' };
        let _ = write!(line, "{cmd}{} {}", c(x.at(r.t as f64)), c(y.at(v)));
    }
    if !line.is_empty() {
        chart.mark(&format!("<path class=\"line {}\" d=\"{line}\"/>", s.class));
    }
    for rec in records {
        let Some(v) = (s.value)(rec).filter(|v| v.is_finite()) else {
            continue;
        };
        chart.mark(&format!(
            "<circle class=\"pt {class}\" cx=\"{cx}\" cy=\"{cy}\" r=\"{r}\" \
             data-generation=\"{t}\" data-{attr}=\"{v}\"><title>generation {t}: {what} {label}</title></circle>",
            class = s.class,
            cx = c(x.at(rec.t as f64)),
            cy = c(y.at(v)),
            t = rec.t,
            attr = s.attr,
            v = data(v),
            what = s.what,
            label = escape(&(s.label)(v)),
        ));
    }
}

/// A wide chart of `series` per generation on an automatic scale (log beyond a decade), its
/// points drawn; `y_titles` (linear, log) and `y_tick` label the y axis. Returns the chart and
/// its y scale, for more marks.
fn per_generation(
    id: &str,
    records: &[GenerationRecord],
    series: &Series,
    y_titles: (&str, &str),
    y_tick: impl Fn(&Scale, f64) -> String,
) -> (Chart, Scale, Scale) {
    let frame = Frame::new(WIDE.0, WIDE.1);
    let values: Vec<f64> = records
        .iter()
        .filter_map(series.value)
        .filter(|v| v.is_finite())
        .collect();
    let x = generation_scale(records, &frame);
    let y = Scale::auto(&values, frame.y0(), frame.y1(), 5);
    let mut chart = Chart::new(id, frame);
    let y_title = if y.is_log() { y_titles.1 } else { y_titles.0 };
    chart.axes(
        &x,
        &x.ticks(|t| x.label(t)),
        &y,
        &y.ticks(|t| y_tick(&y, t)),
        "generation",
        y_title,
    );
    points(&mut chart, &x, &y, records, series);
    (chart, x, y)
}

/// The acceptance threshold per generation; an infinite one (`None`) is a marker at the top.
pub fn epsilon(records: &[GenerationRecord]) -> String {
    let series = Series {
        class: "s-eps",
        attr: "epsilon",
        what: "ε =",
        value: |r| r.epsilon,
        label: num,
    };
    let (mut chart, x, _) = per_generation(
        "epsilon",
        records,
        &series,
        ("ε", "ε (log scale)"),
        |y, t| y.label(t),
    );
    let top = Frame::new(WIDE.0, WIDE.1).y1();
    for r in records.iter().filter(|r| r.epsilon.is_none()) {
        let (px, py) = (x.at(r.t as f64), top + 2.0);
        chart.mark(&format!(
            "<path class=\"pt s-eps infinite\" d=\"M{} {}l-4.5 8h9z\" data-generation=\"{t}\" \
             data-epsilon=\"inf\"><title>generation {t}: ε infinite</title></path>",
            c(px),
            c(py),
            t = r.t
        ));
    }
    chart.finish("acceptance threshold epsilon per generation")
}

/// Accepted particles per evaluation, per generation.
pub fn acceptance(records: &[GenerationRecord]) -> String {
    let series = Series {
        class: "s-acc",
        attr: "acceptance-rate",
        what: "acceptance rate",
        value: |r| r.acceptance_rate,
        label: percent,
    };
    let (chart, _, _) = per_generation(
        "acceptance",
        records,
        &series,
        ("accepted per evaluation", "accepted per evaluation (log)"),
        |_, t| percent(t),
    );
    chart.finish("acceptance rate per generation")
}

/// Effective sample size per generation, under the population size (dashed).
pub fn ess(records: &[GenerationRecord]) -> String {
    let frame = Frame::new(SMALL.0, SMALL.1);
    let top = records
        .iter()
        .map(|r| (r.accepted as f64).max(r.ess.unwrap_or(0.0)))
        .fold(1.0, f64::max);
    let x = generation_scale(records, &frame);
    let y = Scale::linear(0.0, top, frame.y0(), frame.y1(), 5, false);
    let mut chart = Chart::new("ess", frame);
    chart.axes(
        &x,
        &x.ticks(|t| x.label(t)),
        &y,
        &y.ticks(|t| y.label(t)),
        "generation",
        "particles",
    );
    let mut pop = String::new();
    for r in records {
        let cmd = if pop.is_empty() { 'M' } else { 'L' };
        let _ = write!(
            pop,
            "{cmd}{} {}",
            c(x.at(r.t as f64)),
            c(y.at(r.accepted as f64))
        );
    }
    chart.mark(&format!("<path class=\"line dashed s-pop\" d=\"{pop}\"/>"));
    points(
        &mut chart,
        &x,
        &y,
        records,
        &Series {
            class: "s-ess",
            attr: "ess",
            what: "effective sample size",
            value: |r| r.ess,
            label: num,
        },
    );
    chart.finish("effective sample size per generation")
}

/// A bar per generation; `id` names the chart and its bars' `data-*` attribute.
fn bars(
    id: &str,
    records: &[GenerationRecord],
    class: &str,
    y_title: &str,
    value: impl Fn(&GenerationRecord) -> Option<f64>,
    label: impl Fn(f64) -> String,
    tick: impl Fn(f64) -> String,
) -> String {
    let frame = Frame::new(SMALL.0, SMALL.1);
    let top = records
        .iter()
        .filter_map(&value)
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let x = generation_scale(records, &frame);
    let y = Scale::linear(0.0, top, frame.y0(), frame.y1(), 5, false);
    let mut chart = Chart::new(id, frame);
    chart.axes(
        &x,
        &x.ticks(|t| x.label(t)),
        &y,
        &y.ticks(&tick),
        "generation",
        y_title,
    );
    let width = ((x.at(1.0) - x.at(0.0)) * 0.7).clamp(1.0, 40.0);
    for r in records {
        let Some(v) = value(r).filter(|v| v.is_finite() && *v >= 0.0) else {
            continue;
        };
        let (px, py) = (x.at(r.t as f64), y.at(v));
        chart.mark(&format!(
            "<rect class=\"bar {class}\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" \
             data-generation=\"{t}\" data-{id}=\"{v}\"><title>generation {t}: {label}</title></rect>",
            c(px - width / 2.0),
            c(py),
            c(width),
            c((frame.y0() - py).max(0.0)),
            t = r.t,
            v = data(v),
            label = escape(&label(v)),
        ));
    }
    chart.finish(y_title)
}

/// Model evaluations per generation.
pub fn evaluations(records: &[GenerationRecord]) -> String {
    bars(
        "evaluations",
        records,
        "s-evals",
        "evaluations",
        |r| Some(r.evaluations as f64),
        |v| format!("{} evaluations", int(v as i64)),
        |v| {
            if v >= 10_000.0 {
                format!("{}k", num(v / 1000.0))
            } else {
                int(v as i64)
            }
        },
    )
}

/// Wall time per generation, in the unit its longest one reads best in.
pub fn wall_time(records: &[GenerationRecord]) -> String {
    let longest = records
        .iter()
        .filter_map(|r| r.wall_time_seconds)
        .fold(0.0, f64::max);
    let (unit, per) = if longest >= 2.0 * 3600.0 {
        ("hours", 3600.0)
    } else if longest >= 120.0 {
        ("minutes", 60.0)
    } else {
        ("seconds", 1.0)
    };
    bars(
        "wall-time",
        records,
        "s-wall",
        &format!("wall time ({unit})"),
        |r| r.wall_time_seconds.map(|s| s / per),
        |v| super::svg::duration(v * per),
        num,
    )
}

/// A histogram's weights as densities (weight per unit of the parameter).
fn density(p: &ParameterSummary) -> impl Iterator<Item = f64> + '_ {
    let bin = (p.histogram.high - p.histogram.low) / p.histogram.weights.len() as f64;
    p.histogram
        .weights
        .iter()
        .map(move |w| if w.is_finite() { w / bin } else { 0.0 })
}

/// A light-to-dark blue for the `k`th of `n` generations (the latest darkest).
fn ramp(k: usize, n: usize) -> String {
    let f = if n <= 1 {
        1.0
    } else {
        k as f64 / (n - 1) as f64
    };
    let light = [200.0, 216.0, 236.0];
    let dark = [10.0, 52.0, 110.0];
    let mix = |i: usize| (light[i] + (dark[i] - light[i]) * f).round() as u8;
    format!("#{:02x}{:02x}{:02x}", mix(0), mix(1), mix(2))
}

fn usable(p: &ParameterSummary) -> bool {
    let h = &p.histogram;
    h.low.is_finite() && h.high.is_finite() && h.high > h.low && !h.weights.is_empty()
}

/// One parameter's marginal: each generation's weighted histogram as a density outline
/// (older lighter, the latest darkest), the latest's 90% interval shaded and its median
/// dashed. `index`: the chart's place on the page (its ids).
pub fn marginal(index: usize, name: &str, records: &[GenerationRecord]) -> Option<String> {
    let series: Vec<(i64, &ParameterSummary)> = records
        .iter()
        .filter_map(|r| {
            r.parameters
                .iter()
                .find(|p| p.name == name)
                .filter(|p| usable(p))
                .map(|p| (r.t, p))
        })
        .collect();
    let (_, latest) = *series.last()?;
    let width = latest.histogram.high - latest.histogram.low;
    let (mut lo, mut hi) = (latest.histogram.low, latest.histogram.high);
    for (_, p) in &series {
        if p.histogram.high - p.histogram.low <= ZOOM * width {
            lo = lo.min(p.histogram.low);
            hi = hi.max(p.histogram.high);
        }
    }
    let top = series
        .iter()
        .flat_map(|(_, p)| density(p))
        .fold(0.0, f64::max);
    let frame = Frame {
        left: 48.0,
        ..Frame::new(SMALL.0, SMALL.1)
    };
    let x = Scale::linear_exact(lo, hi, frame.x0(), frame.x1(), 5);
    let y = Scale::linear(0.0, top, frame.y0(), frame.y1(), 4, false);
    let mut chart = Chart::new(&format!("posterior-{index}"), frame);
    chart.axes(
        &x,
        &x.ticks(|t| x.label(t)),
        &y,
        &y.ticks(|t| y.label(t)),
        "value",
        "density",
    );
    let attr = escape(name);
    let q = |i: usize| latest.quantiles.get(i).copied().flatten();
    if let (Some(q05), Some(q95)) = (q(0), q(4)) {
        let (a, b) = (x.at(q05), x.at(q95));
        chart.mark(&format!(
            "<rect class=\"interval\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" \
             data-parameter=\"{attr}\" data-q05=\"{}\" data-q95=\"{}\"><title>90% of the \
             latest generation: {} to {}</title></rect>",
            c(a),
            c(frame.y1()),
            c((b - a).max(1.0)),
            c(frame.y0() - frame.y1()),
            data(q05),
            data(q95),
            num(q05),
            num(q95),
        ));
    }
    let n = series.len();
    for (k, (t, p)) in series.iter().enumerate() {
        let bin = (p.histogram.high - p.histogram.low) / p.histogram.weights.len() as f64;
        // bins beyond the axis (a wide early generation) are left out, the ones across its
        // ends cut just outside the clipped area: the path stays as small as what is seen
        let (left_edge, right_edge) = (frame.x0() - 6.0, frame.x1() + 6.0);
        let mut start = None;
        // (height, right end) of each run of bins at the same height as drawn
        let mut steps: Vec<(String, String)> = Vec::new();
        for (i, dens) in density(p).enumerate() {
            let left = x.at(p.histogram.low + i as f64 * bin);
            let right = x.at(p.histogram.low + (i + 1) as f64 * bin);
            if right < left_edge || left > right_edge {
                continue;
            }
            start.get_or_insert(left.max(left_edge));
            let (height, end) = (c(y.at(dens)), c(right.min(right_edge)));
            match steps.last_mut() {
                Some(last) if last.0 == height => last.1 = end,
                _ => steps.push((height, end)),
            }
        }
        let baseline = c(y.at(0.0));
        let mut d = format!("M{} {baseline}", c(start.unwrap_or(frame.x0())));
        for (height, end) in &steps {
            let _ = write!(d, "V{height}H{end}");
        }
        let _ = write!(d, "V{baseline}");
        let latest_one = k + 1 == n;
        chart.mark(&format!(
            "<path class=\"hist{}\" d=\"{d}\" stroke=\"{}\" data-generation=\"{t}\" \
             data-parameter=\"{attr}\"><title>generation {t}</title></path>",
            if latest_one { " latest" } else { "" },
            ramp(k, n),
        ));
    }
    if let Some(median) = q(2) {
        chart.mark(&format!(
            "<path class=\"median\" d=\"M{} {}V{}\"><title>median of the latest generation: \
             {}</title></path>",
            c(x.at(median)),
            c(frame.y0()),
            c(frame.y1()),
            num(median)
        ));
    }
    Some(chart.finish(&format!("posterior marginal of {name} per generation")))
}

/// One point of the execution on the time axis: a record's, or the status' now.
pub struct Moment {
    /// Seconds since the epoch.
    pub at: f64,
    /// The record's generation; `None`: now, from the status.
    pub generation: Option<i64>,
    pub execution: Execution,
}

/// How the execution charts' x axis runs: from the first moment to the last.
pub fn time_scale(moments: &[Moment], frame: &Frame) -> Scale {
    let lo = moments.iter().map(|m| m.at).fold(f64::INFINITY, f64::min);
    let hi = moments
        .iter()
        .map(|m| m.at)
        .fold(f64::NEG_INFINITY, f64::max);
    let (lo, hi) = if hi - lo < 10.0 {
        (lo - 30.0, hi + 30.0)
    } else {
        let pad = (hi - lo) * 0.02;
        (lo - pad, hi + pad)
    };
    Scale::linear_exact(lo, hi, frame.x0(), frame.x1(), 8)
}

/// A series of the execution charts: its CSS class, `data-*` attribute, what its tooltip
/// calls it, and its value.
type Step<'a> = (&'a str, &'a str, &'a str, fn(&Execution) -> i64);

/// Step lines over time (a value holds until the next moment), with a marker per moment.
fn steps(
    id: &str,
    moments: &[Moment],
    series: &[Step],
    y_title: &str,
    label_generations: bool,
    height: f64,
) -> String {
    let mut frame = Frame::new(ACROSS.0, height);
    if label_generations {
        frame.top = 26.0;
    }
    let x = time_scale(moments, &frame);
    let top = moments
        .iter()
        .flat_map(|m| series.iter().map(|s| (s.3)(&m.execution)))
        .max()
        .unwrap_or(0)
        .max(1);
    let y = Scale::linear(0.0, top as f64, frame.y0(), frame.y1(), 4, true);
    let (lo, hi) = x.domain();
    let mut chart = Chart::new(id, frame);
    chart.class("chart across");
    chart.axes(
        &x,
        &time_ticks(lo, hi, 10),
        &y,
        &y.ticks(|t| y.label(t)),
        "time (UTC)",
        y_title,
    );
    if label_generations {
        // labels from the latest back, each at least a label's width from the one after it
        let mut next_label = f64::INFINITY;
        for m in moments.iter().rev() {
            let px = x.at(m.at);
            let (text, class) = match m.generation {
                Some(t) => (format!("{t}"), "gen-mark"),
                None => ("now".to_string(), "gen-mark now"),
            };
            chart.overlay(&format!(
                "<path class=\"{class}\" d=\"M{} {}V{}\"/>",
                c(px),
                c(frame.y1() - 4.0),
                c(frame.y0())
            ));
            if next_label - px >= 26.0 {
                next_label = px;
                chart.overlay(&format!(
                    "<text class=\"gen-label\" x=\"{}\" y=\"{}\">{text}</text>",
                    c(px),
                    c(frame.y1() - 8.0)
                ));
            }
        }
    }
    let r = if moments.len() <= 40 { "3" } else { "1.8" };
    // later series drawn over earlier ones: a small offset keeps equal values apart
    for (k, (class, attr, what, value)) in series.iter().enumerate() {
        let offset = (k as f64 - (series.len() as f64 - 1.0) / 2.0) * 1.5;
        let mut d = String::new();
        for m in moments {
            let (px, py) = (c(x.at(m.at)), c(y.at(value(&m.execution) as f64) + offset));
            if d.is_empty() {
                let _ = write!(d, "M{px} {py}");
            } else {
                let _ = write!(d, "H{px}V{py}");
            }
        }
        let dashed = if *attr == "workers-desired" {
            " dashed"
        } else {
            ""
        };
        chart.mark(&format!("<path class=\"line{dashed} {class}\" d=\"{d}\"/>"));
        for m in moments {
            let v = value(&m.execution);
            let (at, when) = match m.generation {
                Some(t) => (
                    format!("data-generation=\"{t}\""),
                    format!("generation {t} stored"),
                ),
                None => ("data-now=\"true\"".to_string(), "now".to_string()),
            };
            chart.mark(&format!(
                "<circle class=\"pt {class}\" cx=\"{}\" cy=\"{}\" r=\"{r}\" {at} data-{attr}=\"{v}\">\
                 <title>{when}: {v} {what}</title></circle>",
                c(x.at(m.at)),
                c(y.at(v as f64) + offset),
            ));
        }
    }
    chart.finish(y_title)
}

/// Workers ready, desired (dashed) and active inside the generation, over time.
pub fn workers(moments: &[Moment]) -> String {
    steps(
        "workers",
        moments,
        &[
            ("s-desired", "workers-desired", "workers desired", |e| {
                e.workers_desired
            }),
            ("s-ready", "workers-ready", "workers ready", |e| {
                e.workers_ready
            }),
            ("s-active", "active-workers", "workers active", |e| {
                e.active_workers
            }),
        ],
        "workers",
        true,
        ACROSS.1,
    )
}

/// Lost workers repaired, master resumes and Redis restarts so far, over time.
pub fn disruptions(moments: &[Moment]) -> String {
    steps(
        "disruptions",
        moments,
        &[
            ("s-lost", "lost-workers", "lost workers so far", |e| {
                e.lost_workers
            }),
            ("s-resumes", "resumes", "resumes so far", |e| e.resumes),
            (
                "s-restarts",
                "redis-restarts",
                "Redis restarts so far",
                |e| e.redis_restarts,
            ),
        ],
        "count so far",
        false,
        ACROSS.1 - 40.0,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_generation_is_darkest() {
        assert_eq!(ramp(0, 1), "#0a346e");
        assert_eq!(ramp(0, 3), "#c8d8ec");
        assert_eq!(ramp(2, 3), "#0a346e");
    }
}
