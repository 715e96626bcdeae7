//! One run's page: a self-contained HTML document telling where the run is and what it has
//! inferred, at a glance on a laptop screen, and printing well to PDF.
//!
//! What it needs from elsewhere: nothing. No script (the page works with JavaScript off, and
//! the server's Content-Security-Policy forbids any), no stylesheet, font or image from
//! another origin; the charts are inline SVG written on the server ([`super::svg`]). The
//! parameter selector is a plain `GET` form; a live page reloads itself with
//! `<meta http-equiv=refresh>`. Links are relative (`?csv=generations`), answered by whoever
//! serves the page.
//!
//! From the top: the run's name and phase, where it is (the generation being sampled, its
//! acceptances and how many more evaluations that may take), the latest figures; then the
//! inference: ε and the acceptance rate per generation, the posterior marginals of the chosen
//! parameters, what each generation cost (evaluations, wall time, effective sample size);
//! then the execution on the generations' time axis (workers, and lost workers, resumes,
//! Redis restarts so far); then the run's conditions.
//!
//! Every string from the run (its name, namespace, parameter names, messages, conditions) is
//! escaped ([`super::svg::escape`]): a parameter named `<script>` shows as that text.
//!
//! Size: bounded by the records (at most 100 generations of at most 32 parameters, kept by
//! the controller) and by the marginals shown ([`MAX_SHOWN_PARAMETERS`] unless others are
//! chosen). 100 generations with 6 marginals render to about 420 KB (measured 2026-12-06; a
//! unit test keeps it under 600 KB), with all 32 chosen to about 1.3 MB (under 2 MB); the
//! marginals' histogram lines are most of it.

use super::plots::{self, Moment};
use super::svg::{duration, escape, int, num, percent};
use crate::api::{AbcRunStatus, Phase};
use crate::protocol::inference::{Execution, GenerationRecord, MAX_PARAMETERS};
use k8s_openapi::jiff::Timestamp;
use std::fmt::Write;
use std::sync::Arc;

pub use super::export::csv;

/// Posterior marginals shown when none are chosen: the first six parameters fill two rows of
/// three charts on a laptop screen, below the generation charts, and most models have fewer.
pub const MAX_SHOWN_PARAMETERS: usize = 6;

/// What a page shows of one run.
pub struct PageData {
    /// `None`: a local run (`abc-operator run`).
    pub namespace: Option<String>,
    pub name: String,
    pub status: AbcRunStatus,
    /// The stored generations' records, oldest first.
    pub records: Vec<GenerationRecord>,
    /// The run was deleted: the page shows what was last known of it.
    pub gone: bool,
    pub now: Timestamp,
}

/// How the page is asked for.
#[derive(Clone, Debug, Default)]
pub struct PageOptions {
    /// Parameters whose marginals are shown (the query's `parameter=`); empty: the first
    /// [`MAX_SHOWN_PARAMETERS`].
    pub parameters: Vec<String>,
    /// A live page reloads itself this often; `None` once the run is finished or gone.
    pub refresh_seconds: Option<u32>,
}

/// The CSV files of the page's plots (`?csv=generations`, `?csv=posterior`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plot {
    /// Per generation: t, time, ε, accepted, evaluations, acceptance rate, ESS, wall time,
    /// and the execution when it was stored.
    Generations,
    /// Per generation and recorded parameter: mean, sd, quantiles, histogram.
    Posterior,
}

/// Where the time of serving goes in a [`template`]: [`Template::fill`] writes it in. A comment,
/// which no escaped text can contain.
const SERVED_AT: &str = "<!--served-at-->";

/// The page (a complete HTML document).
pub fn page(data: &PageData, options: &PageOptions) -> String {
    template(data, options).fill(data.now)
}

/// The page with the time of serving left to [`Template::fill`]: a page rendered once is
/// served again while its run has not changed, each time saying when. The execution chart's
/// line to "now" ends at `data.now`, when it was rendered.
pub fn template(data: &PageData, options: &PageOptions) -> Template {
    let mut out = String::with_capacity(64 * 1024);
    head(&mut out, data, options);
    out.push_str("<body>\n");
    header(&mut out, data, options);
    out.push_str("<main>\n");
    if data.records.is_empty() {
        no_records(&mut out, data);
    } else {
        inference(&mut out, data);
        posterior(&mut out, data, options);
        costs(&mut out, data);
    }
    execution(&mut out, data);
    conditions(&mut out, &data.status);
    out.push_str("</main>\n");
    let _ = write!(
        out,
        "<footer>abc-operator · {}<span class=\"csv\"> · <a href=\"?csv=generations\">\
         generations.csv</a> · <a href=\"?csv=posterior\">posterior.csv</a></span></footer>\n\
         </body>\n</html>\n",
        SERVED_AT
    );
    Template(out.split(SERVED_AT).map(Box::from).collect())
}

/// A rendered page kept to be served again: its text split where the time of serving goes,
/// so that serving it copies it once instead of searching all of it (a page is tens of KiB).
#[derive(Clone, Debug)]
pub struct Template(Arc<[Box<str>]>);

impl Template {
    /// The page, served at `now`.
    pub fn fill(&self, now: Timestamp) -> String {
        let time = Template::time_text(now);
        let parts = &self.0;
        let length = parts.iter().map(|p| p.len()).sum::<usize>() + parts.len() * time.len();
        let mut page = String::with_capacity(length);
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                page.push_str(&time);
            }
            page.push_str(part);
        }
        page
    }

    /// The page's text between the times of serving.
    pub fn parts(&self) -> &[Box<str>] {
        &self.0
    }

    /// The time of serving as the page says it.
    pub fn time_text(now: Timestamp) -> String {
        now.strftime("%Y-%m-%d %H:%M:%S UTC").to_string()
    }

    #[cfg(test)]
    pub fn from_parts(parts: &[&str]) -> Template {
        Template(parts.iter().map(|p| Box::from(*p)).collect())
    }
}

fn finished(data: &PageData) -> bool {
    data.status.phase.is_some_and(Phase::is_finished)
}

fn head(out: &mut String, data: &PageData, options: &PageOptions) {
    let phase = if data.gone {
        "deleted".to_string()
    } else {
        data.status
            .phase
            .map_or("unknown".to_string(), |p| p.to_string())
    };
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    if let Some(seconds) = options.refresh_seconds {
        let _ = writeln!(out, "<meta http-equiv=\"refresh\" content=\"{seconds}\">");
    }
    let _ = writeln!(
        out,
        "<title>{} · {phase} · abc-operator</title>",
        escape(&data.name)
    );
    out.push_str("<style>\n");
    out.push_str(STYLE);
    out.push_str("</style>\n</head>\n");
}

/// The page's style: system fonts only, a card per chart, one column when printed.
const STYLE: &str = r#":root{--fg:#1c2230;--muted:#5d6677;--line:#dde1e8;--bg:#f5f6f8;--card:#fff}
*{box-sizing:border-box}
body{margin:0;color:var(--fg);background:var(--bg);font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue","Noto Sans","Liberation Sans",Arial,sans-serif;font-variant-numeric:tabular-nums}
header,main,footer{max-width:1280px;margin:0 auto;padding:0 24px}
header{padding-top:18px}
h1{display:inline;font-size:24px;margin:0;overflow-wrap:anywhere}
.ns{color:var(--muted);margin-left:.4em}
.badge{display:inline-block;padding:2px 10px;border-radius:999px;font-size:13px;font-weight:600;color:#fff;vertical-align:3px;margin-left:.5em;background:#7d8796}
.phase-running{background:#2f6fb5}.phase-succeeded{background:#2e7d4f}.phase-failed{background:#c0392b}.phase-stopped{background:#6f6252}.phase-suspended{background:#b7791f}.phase-deleted{background:#343a44}
.where{font-size:16px;margin:8px 0 4px}
.notice{margin:8px 0;padding:8px 12px;border-radius:6px;background:#fff5e1;border:1px solid #efc46c}
.notice.gone{background:#eceef2;border-color:#9aa1ad}
.facts{display:flex;flex-wrap:wrap;gap:6px;margin:12px 0 4px;padding:0}
.facts div{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:4px 10px}
.facts dt{font-size:12px;color:var(--muted);white-space:nowrap}
.facts dd{margin:0;font-size:16px;font-weight:600;white-space:nowrap}
.facts .warn dd{color:#b03a2e}
.asof{font-size:12px;color:var(--muted);margin:4px 0 0}
h2{font-size:18px;margin:22px 0 6px}
.lead{margin:0 0 10px;color:var(--muted)}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(440px,1fr));gap:14px}
.grid.three{grid-template-columns:repeat(auto-fill,minmax(330px,1fr))}
.grid.one{grid-template-columns:1fr}
figure{margin:0;background:var(--card);border:1px solid var(--line);border-radius:8px;padding:10px 12px 6px;min-width:0}
figcaption{display:flex;justify-content:space-between;align-items:baseline;gap:8px}
figcaption h3{font-size:14px;margin:0;overflow-wrap:anywhere}
.csv{font-size:12px;white-space:nowrap}
.sub{font-size:12px;color:var(--muted);margin:2px 0 4px}
.keys{font-size:12px;color:var(--muted);margin:2px 0 0}
.key{margin-right:14px;white-space:nowrap}
.key i{display:inline-block;width:16px;height:3px;background:var(--c);vertical-align:middle;margin-right:5px}
.key i.band{height:10px;background:#f2c14e;opacity:.5}
.median-key{--c:#9a6700}
svg.chart{display:block;width:100%;height:auto}
svg text{font-size:11px;fill:#4f5767}
.tick.y{text-anchor:end}.tick.x,.title,.gen-label{text-anchor:middle}
.title{fill:#737b8a}.gen-label{font-size:10px;fill:#8a92a0}
.gl path{stroke:#eef0f3}.axis path{stroke:#a3abb7;fill:none}
.gen-mark{stroke:#e3e6ea}.gen-mark.now{stroke:#9aa1ad;stroke-dasharray:2 3}
.s-eps{--c:#2f6fb5}.s-acc{--c:#1f8a7a}.s-evals{--c:#7b61a8}.s-wall{--c:#c77d1e}.s-ess{--c:#4f8a2f}.s-pop{--c:#9aa1ad}
.s-ready{--c:#1f8a7a}.s-desired{--c:#9aa1ad}.s-active{--c:#2f6fb5}.s-lost{--c:#c0392b}.s-resumes{--c:#c77d1e}.s-restarts{--c:#7b61a8}
.line{fill:none;stroke:var(--c);stroke-width:1.8;stroke-linejoin:round}
.dashed{stroke-dasharray:5 4}
.pt{fill:var(--c);stroke:#fff;stroke-width:1}
.bar{fill:var(--c);opacity:.85}
.hist{fill:none;stroke-width:1.1;stroke-linejoin:round}
.hist.latest{stroke-width:2.4;fill:#0a346e;fill-opacity:.07}
.interval{fill:#f2c14e;fill-opacity:.3}
.median{stroke:#9a6700;stroke-width:1.2;stroke-dasharray:3 3}
.empty{padding:14px;background:var(--card);border:1px dashed #b9c0cb;border-radius:8px}
form.selector{display:flex;flex-wrap:wrap;align-items:center;gap:4px 16px;background:var(--card);border:1px solid var(--line);border-radius:8px;padding:6px 12px;margin:0 0 10px}
form.selector strong{font-weight:600}
form.selector label{overflow-wrap:anywhere}
form.selector button{font:inherit;padding:2px 14px}
table{border-collapse:collapse;background:var(--card);font-size:13px;width:100%}
th,td{border:1px solid var(--line);padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef0f4}
footer{margin:24px auto 20px;font-size:12px;color:var(--muted)}
a{color:#2a5f9e}
@media print{
body{background:#fff;font-size:12px}
header,main,footer{max-width:none;padding:0}
form,form.selector,.csv,.refresh{display:none}
.grid{grid-template-columns:1fr}
.grid.three{grid-template-columns:1fr 1fr}
svg.across text{font-size:17px}
svg.across .gen-label{font-size:15px}
figure,.facts div,table{break-inside:avoid}
figure{border-color:#ccc}
h2{break-after:avoid}
*{-webkit-print-color-adjust:exact;print-color-adjust:exact}
}
@page{margin:12mm}
"#;

fn header(out: &mut String, data: &PageData, options: &PageOptions) {
    let status = &data.status;
    out.push_str("<header>\n<div class=\"top\">");
    let _ = write!(out, "<h1 id=\"name\">{}</h1>", escape(&data.name));
    match &data.namespace {
        Some(ns) => {
            let _ = write!(out, "<span class=\"ns\">in namespace {}</span>", escape(ns));
        }
        None => out.push_str("<span class=\"ns\">local run</span>"),
    }
    if let Some(phase) = status.phase {
        let _ = write!(
            out,
            "<span class=\"badge phase-{}\" id=\"phase\">{phase}</span>",
            phase.to_string().to_lowercase()
        );
    }
    if data.gone {
        out.push_str("<span class=\"badge phase-deleted\" id=\"deleted\">Deleted</span>");
    }
    out.push_str("</div>\n");
    let _ = writeln!(
        out,
        "<p class=\"where\" id=\"where\">{}</p>",
        where_it_is(data)
    );
    if data.gone {
        out.push_str(
            "<p class=\"notice gone\" id=\"gone\">This run was deleted: the page shows what \
             was last known of it.</p>\n",
        );
    }
    // without records the inference section says it instead
    if let Some(message) = status
        .inference
        .as_ref()
        .and_then(|i| i.message.as_ref())
        .filter(|_| !data.records.is_empty())
    {
        let _ = writeln!(
            out,
            "<p class=\"notice\" id=\"message\">{}</p>",
            escape(message)
        );
    }
    if let Some(degraded) = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded" && c.status == "True")
    {
        let _ = writeln!(
            out,
            "<p class=\"notice\" id=\"degraded\">Degraded: {}</p>",
            escape(&degraded.message)
        );
    }
    facts(out, data);
    let _ = write!(out, "<p class=\"asof\">As of {SERVED_AT}");
    if let Some(seconds) = options.refresh_seconds {
        let _ = write!(
            out,
            "<span class=\"refresh\"> · reloads every {seconds} s</span>"
        );
    }
    out.push_str("</p>\n</header>\n");
}

/// One sentence: where the run is.
fn where_it_is(data: &PageData) -> String {
    let status = &data.status;
    // the controller keeps the last 100 records; the status counts them all
    let recorded = status.inference.as_ref().map_or(0, |i| i.generations);
    let stored = data.records.len().max(recorded.max(0) as usize);
    let last = data.records.last();
    let final_eps = last
        .map(|r| match r.epsilon {
            Some(e) => format!("; the last ε was {}", num(e)),
            None => String::new(),
        })
        .unwrap_or_default();
    if data.gone {
        return if stored > 0 {
            format!(
                "Deleted after {} stored generation{}{final_eps}.",
                stored,
                plural(stored)
            )
        } else {
            "Deleted.".to_string()
        };
    }
    match status.phase {
        Some(phase) if phase.is_finished() => {
            let how = match phase {
                Phase::Succeeded => "Finished",
                Phase::Failed => "Finished (failed)",
                _ => "Finished (stopped)",
            };
            format!(
                "{how} after {stored} stored generation{}{final_eps}.",
                plural(stored)
            )
        }
        Some(Phase::Suspended) => format!(
            "Suspended{}: no workers run until it is resumed.",
            last.map(|r| format!(" after generation {}", r.t))
                .unwrap_or_default()
        ),
        Some(Phase::Pending) => "Pending: Redis, the master and the workers are starting.".into(),
        None => "No status yet: the operator has not reported on this run.".into(),
        Some(_) => match status.progress.as_ref().filter(|p| p.generation.is_some()) {
            Some(p) => {
                let mut s = format!(
                    "Sampling generation {}: {} of {} particles accepted after {} evaluation{}.",
                    p.generation.unwrap_or_default(),
                    int(p.accepted),
                    int(p.required),
                    int(p.evaluations),
                    plural(p.evaluations as usize)
                );
                if let Some(eta) = eta(data) {
                    s.push(' ');
                    s.push_str(&eta);
                }
                s
            }
            None => "Running: no generation is being sampled right now.".into(),
        },
    }
}

/// How many more evaluations the current generation may take, at the acceptance rate seen so
/// far in it (or the last generation's, before its first acceptance). An estimate, and said
/// to be one: the rate usually falls from one generation to the next and varies within one.
fn eta(data: &PageData) -> Option<String> {
    let p = data.status.progress.as_ref()?;
    let remaining = p.required - p.accepted;
    if p.required > 0 && remaining <= 0 {
        return Some("All particles are accepted: the master is storing the generation.".into());
    }
    let (rate, whose) = if p.accepted > 0 && p.evaluations > 0 {
        (
            p.accepted as f64 / p.evaluations as f64,
            "this generation's acceptance rate so far",
        )
    } else {
        let rate = data
            .records
            .last()?
            .acceptance_rate
            .filter(|r| *r > 0.0 && r.is_finite())?;
        (rate, "the last generation's acceptance rate")
    };
    let more = remaining as f64 / rate;
    Some(format!(
        "About {} more evaluations at {whose} ({}).",
        int(round_2(more) as i64),
        percent(rate)
    ))
}

/// `x` rounded to two significant digits (an estimate says no more).
fn round_2(x: f64) -> f64 {
    if x <= 0.0 || !x.is_finite() {
        return 0.0;
    }
    let scale = 10f64.powi(x.log10().floor() as i32 - 1);
    (x / scale).round() * scale
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// The latest figures, one tile each.
fn facts(out: &mut String, data: &PageData) {
    let status = &data.status;
    let last = data.records.last();
    let mut tiles: Vec<(&str, &str, String, bool)> = Vec::new();
    let recorded = status.inference.as_ref().map_or(0, |i| i.generations);
    if !data.records.is_empty() {
        let stored = data.records.len() as i64;
        let value = if recorded > stored {
            format!("{} (last {})", int(recorded), int(stored))
        } else {
            int(stored)
        };
        tiles.push(("generations", "Generations", value, false));
    }
    if let Some(p) = status.progress.as_ref().filter(|p| p.generation.is_some())
        && !finished(data)
        && !data.gone
    {
        tiles.push((
            "accepted",
            "Accepted now",
            format!("{} / {}", int(p.accepted), int(p.required)),
            false,
        ));
    }
    if let Some(r) = last {
        tiles.push((
            "epsilon",
            "ε (latest)",
            r.epsilon.map_or("∞".into(), num),
            false,
        ));
        if let Some(rate) = r.acceptance_rate {
            tiles.push(("acceptance", "Acceptance (latest)", percent(rate), false));
        }
        if let Some(ess) = r.ess {
            tiles.push((
                "ess",
                "ESS (latest)",
                format!("{} of {}", num(ess), int(r.accepted)),
                false,
            ));
        }
        let evaluations: i64 = data.records.iter().map(|r| r.evaluations).sum();
        tiles.push(("evaluations", "Evaluations", int(evaluations), false));
        let wall: f64 = data
            .records
            .iter()
            .filter_map(|r| r.wall_time_seconds)
            .sum();
        if wall > 0.0 {
            tiles.push(("wall-time", "Wall time", duration(wall), false));
        }
    }
    // a deleted run's page may know nothing of it (no phase): no zeros then
    if status.phase.is_some() {
        let now = current_execution(status);
        tiles.push((
            "workers",
            "Workers ready",
            format!("{} / {}", now.workers_ready, now.workers_desired),
            false,
        ));
        tiles.push((
            "lost-workers",
            "Lost workers",
            int(now.lost_workers),
            now.lost_workers > 0,
        ));
        tiles.push(("resumes", "Resumes", int(now.resumes), now.resumes > 0));
        tiles.push((
            "redis-restarts",
            "Redis restarts",
            int(now.redis_restarts),
            now.redis_restarts > 0,
        ));
    }
    if tiles.is_empty() {
        return;
    }
    out.push_str("<dl class=\"facts\" id=\"facts\">");
    for (id, what, value, warn) in tiles {
        let _ = write!(
            out,
            "<div id=\"fact-{id}\"{}><dt>{what}</dt><dd>{}</dd></div>",
            if warn { " class=\"warn\"" } else { "" },
            escape(&value)
        );
    }
    out.push_str("</dl>\n");
}

/// The execution as the status says it is now.
fn current_execution(status: &AbcRunStatus) -> Execution {
    let (ready, desired) = status
        .workers
        .as_deref()
        .and_then(|w| w.split_once('/'))
        .and_then(|(r, d)| Some((r.trim().parse().ok()?, d.trim().parse().ok()?)))
        .unwrap_or((status.ready_replicas as i64, status.replicas as i64));
    Execution {
        workers_ready: ready,
        workers_desired: desired,
        active_workers: status.progress.as_ref().map_or(0, |p| p.active_workers),
        lost_workers: status.lost_workers,
        resumes: status.resumes.as_ref().map_or(0, |r| r.count),
        redis_restarts: status.redis.as_ref().map_or(0, |r| r.restarts),
    }
}

/// A chart in its card: a title, a CSV link, an optional line below the title, the SVG.
fn figure(out: &mut String, id: &str, title: &str, csv: &str, sub: &str, svg: &str) {
    let _ = write!(
        out,
        "<figure id=\"plot-{id}\" data-plot=\"{id}\"><figcaption><h3>{title}</h3>\
         <a class=\"csv\" href=\"?csv={csv}\">CSV</a></figcaption>"
    );
    if !sub.is_empty() {
        let _ = write!(out, "<p class=\"sub\">{sub}</p>");
    }
    out.push_str(svg);
    out.push_str("</figure>\n");
}

fn key(class: &str, what: &str) -> String {
    format!("<span class=\"key {class}\"><i></i>{what}</span>")
}

fn no_records(out: &mut String, data: &PageData) {
    let message = data
        .status
        .inference
        .as_ref()
        .and_then(|i| i.message.as_deref());
    let why = match (message, data.gone, finished(data)) {
        (Some(m), _, _) => format!("No generation records: {}", escape(m)),
        (None, true, _) => "No generation records are left of this run.".to_string(),
        (None, false, true) => "The run stored no generation records.".to_string(),
        (None, false, false) => "No generation is stored yet: the charts appear as the master \
                                  stores each one."
            .to_string(),
    };
    let _ = writeln!(
        out,
        "<section id=\"inference\"><h2>Inference</h2><p class=\"empty\" id=\"no-records\">\
         {why}</p></section>"
    );
}

fn inference(out: &mut String, data: &PageData) {
    let records = &data.records;
    out.push_str("<section id=\"inference\"><h2>Inference</h2>\n<div class=\"grid\">\n");
    let infinite: Vec<String> = records
        .iter()
        .filter(|r| r.epsilon.is_none())
        .map(|r| r.t.to_string())
        .collect();
    let sub = if infinite.is_empty() {
        "The acceptance threshold each generation reached; it shrinks as the posterior \
         sharpens."
            .to_string()
    } else {
        format!(
            "The acceptance threshold each generation reached; infinite in generation{} {} \
             (▲ at the top).",
            plural(infinite.len()),
            infinite.join(", ")
        )
    };
    figure(
        out,
        "epsilon",
        "Acceptance threshold ε",
        "generations",
        &sub,
        &plots::epsilon(records),
    );
    figure(
        out,
        "acceptance",
        "Acceptance rate",
        "generations",
        "Accepted particles per model evaluation in each generation.",
        &plots::acceptance(records),
    );
    out.push_str("</div></section>\n");
}

/// The parameters the records name, in the model's order (the latest record's first).
fn parameter_names(records: &[GenerationRecord]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for r in records.iter().rev() {
        for p in &r.parameters {
            if !names.contains(&p.name) {
                names.push(p.name.clone());
            }
        }
    }
    names
}

fn posterior(out: &mut String, data: &PageData, options: &PageOptions) {
    let records = &data.records;
    let names = parameter_names(records);
    out.push_str("<section id=\"posterior\"><h2>Posterior marginals</h2>\n");
    let total = records.last().map_or(0, |r| r.parameters_total);
    if names.is_empty() {
        let why = if total > 0 {
            format!(
                "The records hold no parameter summaries (the model has {total} parameter{}).",
                plural(total)
            )
        } else {
            "The records hold no parameter summaries.".into()
        };
        let _ = writeln!(
            out,
            "<p class=\"empty\" id=\"no-parameters\">{why}</p></section>"
        );
        return;
    }
    let chosen: Vec<&String> = {
        let mut chosen: Vec<&String> = Vec::new();
        for wanted in &options.parameters {
            if let Some(name) = names.iter().find(|n| *n == wanted)
                && !chosen.contains(&name)
            {
                chosen.push(name);
            }
        }
        chosen
    };
    let unknown: Vec<&String> = options
        .parameters
        .iter()
        .filter(|p| !names.contains(p))
        .collect();
    let shown: Vec<&String> = if chosen.is_empty() {
        names.iter().take(MAX_SHOWN_PARAMETERS).collect()
    } else {
        chosen.into_iter().take(MAX_PARAMETERS).collect()
    };
    let mut lead = format!(
        "Showing {} of {} recorded parameter{}",
        shown.len(),
        names.len(),
        plural(names.len())
    );
    if options.parameters.is_empty() && names.len() > shown.len() {
        let _ = write!(
            lead,
            " (the first {MAX_SHOWN_PARAMETERS}; choose others below)"
        );
    }
    lead.push('.');
    if total > names.len() {
        let more = total - names.len();
        let _ = write!(
            lead,
            " <span id=\"unrecorded\">{more} more parameter{} {} not recorded: the records \
             hold the first {MAX_PARAMETERS} of the model's {total}.</span>",
            plural(more),
            if more == 1 { "is" } else { "are" }
        );
    }
    if !unknown.is_empty() {
        let listed: Vec<String> = unknown.iter().take(5).map(|u| escape(u)).collect();
        let _ = write!(
            lead,
            " <span id=\"unknown\">Not recorded, so not shown: {}{}.</span>",
            listed.join(", "),
            if unknown.len() > 5 { ", …" } else { "" }
        );
    }
    let _ = writeln!(out, "<p class=\"lead\">{lead}</p>");
    if names.len() > 1 {
        selector(out, &names, &shown);
    }
    let latest_t = records.last().map_or(0, |r| r.t);
    let first_t = records.first().map_or(0, |r| r.t);
    let _ = writeln!(
        out,
        "<p class=\"keys\">Each line is one generation's weighted histogram, from generation \
         {first_t} (lightest) to {latest_t} (darkest, thickest). <span class=\"key\"><i \
         class=\"band\"></i>latest 90% interval</span> <span class=\"key median-key\"><i></i>\
         latest median (dashed)</span></p>"
    );
    out.push_str("<div class=\"grid three\">\n");
    for (index, name) in shown.iter().enumerate() {
        let Some(svg) = plots::marginal(index, name, records) else {
            continue;
        };
        let latest = records.iter().rev().find_map(|r| {
            r.parameters
                .iter()
                .find(|p| &p.name == *name)
                .map(|p| (r.t, p))
        });
        let sub = latest
            .map(|(t, p)| {
                let q = |i: usize| p.quantiles.get(i).copied().flatten();
                let mut s = format!("generation {t}:");
                if let Some(mean) = p.mean {
                    let _ = write!(s, " mean {}", num(mean));
                }
                if let Some(sd) = p.sd {
                    let _ = write!(s, ", sd {}", num(sd));
                }
                if let (Some(a), Some(b)) = (q(0), q(4)) {
                    let _ = write!(s, ", 90% in [{}, {}]", num(a), num(b));
                }
                s
            })
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "<figure class=\"marginal\" id=\"plot-posterior-{index}\" data-plot=\"posterior\" \
             data-parameter=\"{name}\"><figcaption><h3>{name}</h3><a class=\"csv\" \
             href=\"?csv=posterior\">CSV</a></figcaption><p class=\"sub\">{sub}</p>{svg}</figure>",
            name = escape(name),
        );
    }
    out.push_str("</div></section>\n");
}

/// A plain GET form: the checked parameters come back as `?parameter=…&parameter=…`.
fn selector(out: &mut String, names: &[String], shown: &[&String]) {
    out.push_str(
        "<form class=\"selector\" id=\"selector\" method=\"get\" aria-label=\"parameters \
         shown\"><strong>Parameters shown:</strong>",
    );
    for name in names {
        let checked = if shown.contains(&name) {
            " checked"
        } else {
            ""
        };
        let name = escape(name);
        let _ = write!(
            out,
            "<label><input type=\"checkbox\" name=\"parameter\" value=\"{name}\"{checked}> \
             {name}</label>"
        );
    }
    out.push_str("<button type=\"submit\">Show</button></form>\n");
}

fn costs(out: &mut String, data: &PageData) {
    let records = &data.records;
    out.push_str(
        "<section id=\"costs\"><h2>What each generation took</h2>\n<div class=\"grid three\">\n",
    );
    figure(
        out,
        "evaluations",
        "Model evaluations",
        "generations",
        "Simulations run to accept the population.",
        &plots::evaluations(records),
    );
    figure(
        out,
        "wall-time",
        "Wall time",
        "generations",
        "Time pyABC spent on each generation.",
        &plots::wall_time(records),
    );
    figure(
        out,
        "ess",
        "Effective sample size",
        "generations",
        &format!(
            "{} {}",
            key("s-ess", "effective sample size"),
            key("s-pop", "population size (dashed)")
        ),
        &plots::ess(records),
    );
    out.push_str("</div></section>\n");
}

fn execution(out: &mut String, data: &PageData) {
    out.push_str("<section id=\"execution\"><h2>Execution</h2>\n");
    let mut moments: Vec<Moment> = data
        .records
        .iter()
        .filter_map(|r| {
            Some(Moment {
                at: seconds(&r.time)?,
                generation: Some(r.t),
                execution: r.execution.clone()?,
            })
        })
        .collect();
    let now = current_execution(&data.status);
    let live = !data.gone && !finished(data) && data.status.phase.is_some();
    let now_at = data.now.as_millisecond() as f64 / 1000.0;
    if let (Some(first), Some(last)) = (moments.first(), moments.last()) {
        // a live run's line goes on to now, unless now is so far off that the generations
        // would crowd into a corner
        let span = (last.at - first.at).max(3600.0);
        if live && now_at > last.at && now_at - last.at <= span {
            moments.push(Moment {
                at: now_at,
                generation: None,
                execution: now.clone(),
            });
        }
    }
    if data.status.phase.is_none() && moments.is_empty() {
        out.push_str("<p class=\"empty\" id=\"no-execution\">Nothing is known of its execution.</p></section>\n");
        return;
    }
    // A finished run has given its workers back; its last progress still counts the workers
    // that were active in its last generation.
    let when = match (data.gone, finished(data)) {
        (true, _) => "Last seen",
        (false, true) => "At the end",
        (false, false) => "Now",
    };
    let (workers, so_far) = if finished(data) {
        ("its workers given back".to_string(), "")
    } else {
        (
            format!(
                "{} of {} workers ready, {} active in the generation",
                int(now.workers_ready),
                int(now.workers_desired),
                int(now.active_workers)
            ),
            " so far",
        )
    };
    let _ = writeln!(
        out,
        "<p class=\"lead\" id=\"execution-now\">{when}: {workers}; {} lost worker{} \
         repaired, {} resume{} of the master, {} Redis restart{}{so_far}.</p>",
        int(now.lost_workers),
        plural(now.lost_workers as usize),
        int(now.resumes),
        plural(now.resumes as usize),
        int(now.redis_restarts),
        plural(now.redis_restarts as usize),
    );
    if moments.is_empty() {
        let why = if data.records.is_empty() {
            "The execution over time is drawn from the generation records; there are none."
        } else if data.namespace.is_none() {
            "A local run's generation records carry no execution figures (the operator adds \
             them as it stores each record); its execution now is above."
        } else {
            "The generation records carry no execution figures (stored by an operator before \
             they did)."
        };
        let _ = writeln!(
            out,
            "<p class=\"empty\" id=\"no-execution\">{why}</p></section>"
        );
        return;
    }
    out.push_str("<div class=\"grid one\">\n");
    figure(
        out,
        "workers",
        "Workers",
        "generations",
        &format!(
            "{} {} {} <span class=\"key\">· numbers on top: generations, at the time each \
             was stored</span>",
            key("s-ready", "ready"),
            key("s-desired", "desired (dashed)"),
            key("s-active", "active in a generation")
        ),
        &plots::workers(&moments),
    );
    figure(
        out,
        "disruptions",
        "Disruptions so far",
        "generations",
        &format!(
            "{} {} {}",
            key("s-lost", "lost workers repaired"),
            key("s-resumes", "master resumes"),
            key("s-restarts", "Redis restarts")
        ),
        &plots::disruptions(&moments),
    );
    out.push_str("</div></section>\n");
}

fn seconds(time: &str) -> Option<f64> {
    let ts: Timestamp = time.parse().ok()?;
    Some(ts.as_millisecond() as f64 / 1000.0)
}

fn conditions(out: &mut String, status: &AbcRunStatus) {
    if status.conditions.is_empty() {
        return;
    }
    out.push_str(
        "<section id=\"conditions\"><h2>Conditions</h2>\n<table><thead><tr><th>Type</th>\
         <th>Status</th><th>Reason</th><th>Message</th><th>Since</th></tr></thead><tbody>",
    );
    for c in &status.conditions {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&c.type_),
            escape(&c.status),
            escape(&c.reason),
            escape(&c.message),
            escape(
                &c.last_transition_time
                    .0
                    .strftime("%Y-%m-%d %H:%M:%S")
                    .to_string()
            ),
        );
    }
    out.push_str("</tbody></table></section>\n");
}

#[cfg(test)]
#[path = "page_tests.rs"]
mod tests;
