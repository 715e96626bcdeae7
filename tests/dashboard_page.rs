//! A run's page in a real browser (headless Chromium): served as the operator serves it
//! (`dashboard::server::respond`, its Content-Security-Policy included) from a loopback HTTP
//! server inside the test, for a realistic run: 8 generations of a 2-parameter model, ε
//! shrinking and the posteriors tightening, a worker lost and a master resumed on the way.
//!
//! What a person sees is asserted on the DOM Chromium rendered; what they would count is
//! counted by a probe script (served on `/probe` only, without the policy) that keeps the
//! elements with a box on screen inside their chart. The screenshots and a PDF print stay in
//! `<target dir>/test-artifacts/` (the test prints their paths) for a person to look at.

mod support;

use abc_operator::api::{AbcRunStatus, InferenceStatus, Phase, Progress, RedisInstance, Resumes};
use abc_operator::dashboard::page::{PageData, page};
use abc_operator::dashboard::server::{parse_query, respond};
use abc_operator::protocol::inference::{Execution, GenerationRecord, Histogram, ParameterSummary};
use axum::extract::{RawQuery, State};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use std::io::{Read, Write};
use std::sync::Arc;
use support::browser;

const GENERATIONS: usize = 8;

/// A weighted histogram of a skewed bump around `center` (20 bins over `low..high`), and the
/// summary it makes.
fn summary(name: &str, center: f64, spread: f64, skew: f64) -> ParameterSummary {
    let (low, high) = (center - 2.5 * spread, center + 2.5 * spread);
    let bin = (high - low) / 20.0;
    let mids: Vec<f64> = (0..20).map(|i| low + (i as f64 + 0.5) * bin).collect();
    let raw: Vec<f64> = mids
        .iter()
        .map(|x| {
            let z = (x - center) / spread;
            let s = if z > 0.0 { 1.0 + skew } else { 1.0 };
            (-(z / s).powi(2) / 2.0).exp()
        })
        .collect();
    let total: f64 = raw.iter().sum();
    let weights: Vec<f64> = raw.iter().map(|w| w / total).collect();
    let mean: f64 = mids.iter().zip(&weights).map(|(x, w)| x * w).sum();
    let var: f64 = mids
        .iter()
        .zip(&weights)
        .map(|(x, w)| w * (x - mean).powi(2))
        .sum();
    let quantile = |q: f64| {
        let mut acc = 0.0;
        for (i, w) in weights.iter().enumerate() {
            if acc + w >= q {
                return Some(low + (i as f64 + (q - acc) / w) * bin);
            }
            acc += w;
        }
        Some(high)
    };
    ParameterSummary {
        name: name.into(),
        mean: Some(mean),
        sd: Some(var.sqrt()),
        quantiles: [0.05, 0.25, 0.5, 0.75, 0.95].map(quantile).to_vec(),
        histogram: Histogram { low, high, weights },
    }
}

fn fixture() -> PageData {
    run(GENERATIONS, 2)
}

/// A run `generations` in, of a model with `parameters` parameters (the records hold the
/// first 32): `mu`, `sigma`, then `theta_2`, `theta_3`, ...
fn run(generations: usize, parameters: usize) -> PageData {
    let mut at: Timestamp = "2026-12-06T18:00:00Z".parse().unwrap();
    let records: Vec<GenerationRecord> = (0..generations)
        .map(|g| {
            let g_ = g.min(12) as i32;
            let t = g as i64;
            let rate = 0.62 * 0.66f64.powi(g_);
            let evaluations = (500.0 / rate).round() as i64;
            let wall = evaluations as f64 * 0.011 + 1.5;
            at += k8s_openapi::jiff::SignedDuration::from_secs_f64(wall + 0.4);
            let shrink = 0.62f64.powi(g_);
            GenerationRecord {
                t,
                epsilon: Some(4.2 * 0.58f64.powi(g_) * (1.0 - 0.003 * g as f64)),
                accepted: 500,
                evaluations,
                acceptance_rate: Some(500.0 / evaluations as f64),
                ess: Some(500.0 * (0.93 - 0.04 * (g % 3) as f64)),
                wall_time_seconds: Some(wall),
                time: at.to_string(),
                parameters_total: parameters,
                parameters: (0..parameters.min(32))
                    .map(|i| match i {
                        0 => summary("mu", 1.2 + 0.8 * shrink, 2.0 * shrink, 0.1),
                        1 => summary("sigma", 0.5 + 0.3 * shrink, 0.6 * shrink, 0.6),
                        i => summary(
                            &format!("theta_{i}"),
                            i as f64 * 0.1,
                            (0.2 + 0.05 * (i % 5) as f64) * shrink,
                            0.2 * (i % 3) as f64,
                        ),
                    })
                    .collect(),
                model_probabilities: Vec::new(),
                execution: Some(Execution {
                    workers_ready: if g == 4 { 5 } else { 6 },
                    workers_desired: 6,
                    active_workers: if g == 4 { 5 } else { 6 },
                    lost_workers: if g >= 4 { 1 } else { 0 },
                    resumes: if g >= 6 { 1 } else { 0 },
                    redis_restarts: 0,
                }),
            }
        })
        .collect();
    let now = at + k8s_openapi::jiff::SignedDuration::from_secs(41);
    PageData {
        namespace: Some("science".into()),
        name: "gaussian".into(),
        status: AbcRunStatus {
            phase: Some(Phase::Running),
            workers: Some("6/6".into()),
            ready_replicas: 6,
            replicas: 6,
            progress: Some(Progress {
                generation: Some(generations as i64),
                accepted: 212,
                required: 500,
                evaluations: 9_870,
                active_workers: 6,
                ..Progress::default()
            }),
            lost_workers: 1,
            resumes: Some(Resumes {
                count: 1,
                last_from_generation: 6,
                last_time: records.last().map(|r| r.time.clone()).unwrap_or_default(),
            }),
            redis: Some(RedisInstance {
                run_id: "a1".into(),
                restarts: 0,
            }),
            inference: Some(InferenceStatus {
                generations: generations as i64,
                ..InferenceStatus::default()
            }),
            conditions: vec![
                condition("RedisReady", "True", "Ready", "redis-server answers", now),
                condition("WorkersReady", "True", "AllReady", "6/6 workers ready", now),
                condition(
                    "MasterRunning",
                    "True",
                    "Running",
                    "the master samples",
                    now,
                ),
                condition("Degraded", "False", "Healthy", "nothing is degraded", now),
            ],
            ..AbcRunStatus::default()
        },
        records,
        gone: false,
        now,
    }
}

fn condition(kind: &str, status: &str, reason: &str, message: &str, at: Timestamp) -> Condition {
    Condition {
        type_: kind.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: Time(at),
        observed_generation: None,
    }
}

/// Counts, in the browser, what a person sees: elements with a box on screen inside their
/// chart; and what ran (scripts) and what loaded (images) besides.
const PROBE: &str = r#"<script>
const visible = el => {
  const s = getComputedStyle(el);
  if (s.display === 'none' || s.visibility === 'hidden' || +s.opacity === 0) return false;
  const r = el.getBoundingClientRect();
  if (r.width <= 0 && r.height <= 0) return false;
  const svg = el.closest('svg');
  if (!svg) return true;
  const b = svg.getBoundingClientRect();
  return r.right >= b.left && r.left <= b.right && r.bottom >= b.top && r.top <= b.bottom;
};
const count = sel => [...document.querySelectorAll(sel)].filter(visible).length;
const out = {
  title: document.title,
  phase: document.getElementById('phase').textContent,
  epsilon: count('circle[data-epsilon]'),
  generationsWithEpsilon: new Set([...document.querySelectorAll('[data-epsilon]')]
    .filter(visible).map(e => e.dataset.generation)).size,
  acceptance: count('[data-acceptance-rate]'),
  evaluations: count('rect[data-evaluations]'),
  wallTime: count('rect[data-wall-time]'),
  ess: count('[data-ess]'),
  workersReady: count('[data-workers-ready]'),
  lostWorkers: count('[data-lost-workers]'),
  figures: count('figure'),
  posterior: {},
  intervals: {},
  scripts: document.scripts.length,
  images: document.images.length,
  smallestTickText: Math.min(...[...document.querySelectorAll('svg text')]
    .map(t => t.getBoundingClientRect().height)),
  pageHeight: document.documentElement.scrollHeight,
};
for (const f of document.querySelectorAll('figure[data-plot=posterior]')) {
  out.posterior[f.dataset.parameter] = [...f.querySelectorAll('path[data-generation]')]
    .filter(visible).length;
  out.intervals[f.dataset.parameter] = [...f.querySelectorAll('rect.interval')]
    .filter(visible).length;
}
const pre = document.createElement('pre');
pre.id = 'probe';
pre.textContent = JSON.stringify(out);
document.body.appendChild(pre);
</script></body>"#;

type Shared = Arc<PageData>;

async fn serve_page(State(data): State<Shared>, RawQuery(query): RawQuery) -> Response {
    respond(&data, &parse_query(query.as_deref()))
}

async fn serve_probe(State(data): State<Shared>, RawQuery(query): RawQuery) -> Response {
    let query = parse_query(query.as_deref());
    let options = abc_operator::dashboard::page::PageOptions {
        parameters: query.parameter,
        refresh_seconds: None,
    };
    Html(page(&data, &options).replace("</body>", PROBE)).into_response()
}

/// Serves `data` on a loopback port: `/` as the operator does, `/probe` with the probe. The
/// page as first shown is kept as `<artifacts>/<name>.html` beside the screenshots.
async fn server(name: &str, data: PageData) -> u16 {
    let file = browser::artifacts_dir().join(format!("{name}.html"));
    std::fs::write(&file, page(&data, &Default::default())).unwrap();
    let router = axum::Router::new()
        .route("/", get(serve_page))
        .route("/probe", get(serve_probe))
        .with_state(Arc::new(data));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    port
}

/// `GET path` over plain HTTP/1.0: (head, body).
fn http_get(port: u16, path: &str) -> (String, String) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}

async fn render(url: String, name: &'static str) -> browser::Rendered {
    tokio::task::spawn_blocking(move || browser::render(&url, name, 1280, 2000))
        .await
        .unwrap()
}

fn probe(dom: &str) -> serde_json::Value {
    let start = dom.find("<pre id=\"probe\">").expect("the probe ran") + "<pre id=\"probe\">".len();
    let end = start + dom[start..].find("</pre>").unwrap();
    let json = dom[start..end]
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("probe output {json}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runs_page_reads_in_a_real_browser() {
    let port = server("dashboard-page", fixture()).await;
    let base = format!("http://127.0.0.1:{port}");

    // as served, with the operator's Content-Security-Policy
    let (head, _) = http_get(port, "/");
    assert!(
        head.contains("content-security-policy: default-src 'none'"),
        "{head}"
    );
    let shown = render(format!("{base}/"), "dashboard-page").await;
    let dom = &shown.dom;
    assert!(
        dom.contains("<title>gaussian · Running · abc-operator</title>"),
        "{dom}"
    );
    assert!(dom.contains("id=\"phase\">Running</span>"));
    assert!(dom.contains("Sampling generation 8: 212 of 500 particles accepted"));
    assert_eq!(dom.matches("data-epsilon=").count(), GENERATIONS);
    for name in ["mu", "sigma"] {
        assert!(
            dom.contains(&format!(
                "data-plot=\"posterior\" data-parameter=\"{name}\""
            )),
            "the posterior of {name}"
        );
    }
    assert!(
        dom.contains("http-equiv=\"refresh\""),
        "a live page reloads"
    );

    // what a person would count
    let seen = probe(
        &render(format!("{base}/probe"), "dashboard-page-probe")
            .await
            .dom,
    );
    eprintln!("seen: {seen}");
    let n = GENERATIONS as u64;
    assert_eq!(seen["title"], "gaussian · Running · abc-operator");
    assert_eq!(seen["phase"], "Running");
    assert_eq!(seen["epsilon"], n);
    assert_eq!(seen["generationsWithEpsilon"], n);
    assert_eq!(seen["acceptance"], n);
    assert_eq!(seen["evaluations"], n);
    assert_eq!(seen["wallTime"], n);
    assert_eq!(seen["ess"], n);
    assert_eq!(
        seen["workersReady"],
        n + 1,
        "a marker per generation, and now"
    );
    assert_eq!(seen["lostWorkers"], n + 1);
    assert_eq!(seen["posterior"]["mu"], n);
    assert_eq!(seen["posterior"]["sigma"], n);
    assert_eq!(seen["intervals"]["mu"], 1);
    assert_eq!(seen["scripts"], 1, "only the probe's own");
    assert_eq!(seen["images"], 0);
    let smallest = seen["smallestTickText"].as_f64().unwrap();
    assert!(
        smallest >= 9.0,
        "tick labels readable on a laptop: {smallest}px"
    );

    // one parameter chosen through the form's query
    let one = probe(
        &render(
            format!("{base}/probe?parameter=sigma"),
            "dashboard-page-sigma",
        )
        .await
        .dom,
    );
    assert_eq!(one["posterior"].as_object().unwrap().len(), 1);
    assert_eq!(one["posterior"]["sigma"], n);

    // the CSV links answer
    let (head, csv) = http_get(port, "/?csv=generations");
    assert!(head.contains("text/csv"), "{head}");
    assert_eq!(csv.lines().count(), 1 + GENERATIONS);
    let (_, csv) = http_get(port, "/?csv=posterior");
    assert_eq!(csv.lines().count(), 1 + 2 * GENERATIONS);

    // printed: a PDF (print style: no form, charts full width)
    let pdf = tokio::task::spawn_blocking(move || {
        browser::print_to_pdf(&format!("{base}/"), "dashboard-page")
    })
    .await
    .unwrap();
    let bytes = std::fs::read(&pdf).unwrap();
    assert!(bytes.starts_with(b"%PDF"), "{}", pdf.display());

    // offline, as the local runner leaves it in the run folder: a file, nothing else
    let file = browser::artifacts_dir().join("dashboard-page.html");
    let offline = render(format!("file://{}", file.display()), "dashboard-page-file").await;
    assert_eq!(offline.dom.matches("data-epsilon=").count(), GENERATIONS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_parameter_name_is_text_in_the_browser() {
    let evil =
        "<script>document.title='pwned'</script><img src=x onerror=\"document.title='img'\">";
    let mut data = fixture();
    for r in &mut data.records {
        r.parameters[1].name = evil.into();
    }
    data.name = "<b>bold</b>".into();
    let port = server("dashboard-page-hostile", data).await;
    let seen = probe(
        &render(
            format!("http://127.0.0.1:{port}/probe"),
            "dashboard-page-hostile",
        )
        .await
        .dom,
    );
    assert_eq!(seen["title"], "<b>bold</b> · Running · abc-operator");
    assert_eq!(seen["scripts"], 1, "only the probe's own");
    assert_eq!(seen["images"], 0);
    assert_eq!(seen["posterior"][evil], GENERATIONS as u64, "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_without_records_says_why_and_shows_its_execution() {
    let mut data = run(0, 0);
    data.status.progress = None;
    let why = "the master does not record generations (its image has no abc_operator module)";
    data.status.inference = Some(InferenceStatus {
        message: Some(why.into()),
        ..InferenceStatus::default()
    });
    let port = server("dashboard-page-no-records", data).await;
    let shown = render(
        format!("http://127.0.0.1:{port}/"),
        "dashboard-page-no-records",
    )
    .await;
    assert!(shown.dom.contains(why), "{}", shown.dom);
    assert!(shown.dom.contains("id=\"no-records\""));
    assert!(shown.dom.contains("Now: 6 of 6 workers ready"));
    assert!(!shown.dom.contains("data-plot=\"epsilon\""));
}

/// As large as a page gets with the first parameters shown: the 100 generations the
/// controller keeps, of a model with 40 parameters (32 recorded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_generations_of_forty_parameters_read_and_stay_small() {
    let port = server("dashboard-page-100", run(100, 40)).await;
    let (_, body) = http_get(port, "/");
    eprintln!(
        "100 generations, 40 parameters (6 shown): {} bytes",
        body.len()
    );
    assert!(body.len() < 600 * 1024, "{} bytes", body.len());
    let seen = probe(
        &render(
            format!("http://127.0.0.1:{port}/probe"),
            "dashboard-page-100",
        )
        .await
        .dom,
    );
    assert_eq!(seen["epsilon"], 100);
    assert_eq!(seen["generationsWithEpsilon"], 100);
    assert_eq!(seen["posterior"].as_object().unwrap().len(), 6);
    assert_eq!(seen["posterior"]["theta_5"], 100);
}
