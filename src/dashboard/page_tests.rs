use super::*;
use crate::api::{InferenceStatus, Progress, RedisInstance, Resumes};
use crate::protocol::inference::{Histogram, ParameterSummary};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// A run `generations` generations in, each recording `parameters` parameters (`mu`, `sigma`,
/// then `p2`, `p3`, ...): ε shrinking, acceptance falling, histograms tightening around each
/// parameter's value, a worker lost in generation 3 and a resume in generation 5.
fn run(generations: usize, parameters: usize) -> PageData {
    let start: Timestamp = "2026-12-06T18:00:00Z".parse().unwrap();
    let mut at = start.as_second();
    let records = (0..generations)
        .map(|g| {
            let t = g as i64;
            let rate = 0.6 * 0.72f64.powi(g.min(12) as i32);
            let evaluations = (100.0 / rate).round() as i64;
            let wall = evaluations as f64 * 0.02;
            at += wall.round() as i64 + 2;
            GenerationRecord {
                t,
                epsilon: Some(3.0 * 0.55f64.powi(g.min(30) as i32)),
                accepted: 100,
                evaluations,
                acceptance_rate: Some(100.0 / evaluations as f64),
                ess: Some(70.0 + (g % 4) as f64 * 6.0),
                wall_time_seconds: Some(wall),
                time: Timestamp::from_second(at).unwrap().to_string(),
                parameters_total: parameters,
                parameters: (0..parameters.min(MAX_PARAMETERS))
                    .map(|i| {
                        summary(
                            &name(i),
                            1.0 + i as f64,
                            2.0 * 0.7f64.powi(g.min(20) as i32),
                        )
                    })
                    .collect(),
                model_probabilities: Vec::new(),
                execution: Some(Execution {
                    workers_ready: if g == 3 { 3 } else { 4 },
                    workers_desired: 4,
                    active_workers: 4,
                    lost_workers: if g >= 3 { 1 } else { 0 },
                    resumes: if g >= 5 { 1 } else { 0 },
                    redis_restarts: 0,
                }),
            }
        })
        .collect();
    PageData {
        namespace: Some("science".into()),
        name: "gaussian".into(),
        status: AbcRunStatus {
            phase: Some(Phase::Running),
            workers: Some("4/4".into()),
            progress: Some(Progress {
                generation: Some(generations as i64),
                accepted: 40,
                required: 100,
                evaluations: 800,
                active_workers: 4,
                ..Progress::default()
            }),
            lost_workers: 1,
            resumes: Some(Resumes {
                count: 1,
                last_from_generation: 5,
                last_time: "2026-12-06T18:10:00Z".into(),
            }),
            redis: Some(RedisInstance {
                run_id: "r".into(),
                restarts: 0,
            }),
            inference: Some(InferenceStatus {
                generations: generations as i64,
                ..InferenceStatus::default()
            }),
            ..AbcRunStatus::default()
        },
        records,
        gone: false,
        now: Timestamp::from_second(at + 20).unwrap(),
    }
}

fn name(i: usize) -> String {
    match i {
        0 => "mu".into(),
        1 => "sigma".into(),
        i => format!("p{i}"),
    }
}

/// A normal-looking weighted histogram around `center`, `width` wide.
fn summary(name: &str, center: f64, width: f64) -> ParameterSummary {
    let weights: Vec<f64> = (0..20)
        .map(|i| {
            let z = (i as f64 + 0.5 - 10.0) / 4.0;
            (-z * z / 2.0).exp()
        })
        .collect();
    let sum: f64 = weights.iter().sum();
    let sd = width / 5.0;
    ParameterSummary {
        name: name.into(),
        mean: Some(center),
        sd: Some(sd),
        quantiles: [-1.645, -0.674, 0.0, 0.674, 1.645]
            .iter()
            .map(|z| Some(center + z * sd))
            .collect(),
        histogram: Histogram {
            low: center - width / 2.0,
            high: center + width / 2.0,
            weights: weights.iter().map(|w| w / sum).collect(),
        },
    }
}

fn count(html: &str, needle: &str) -> usize {
    html.matches(needle).count()
}

fn options() -> PageOptions {
    PageOptions::default()
}

#[test]
fn every_generation_is_a_point_of_every_generation_chart() {
    let data = run(8, 2);
    let html = page(&data, &options());
    assert_eq!(count(&html, "data-epsilon="), 8);
    assert_eq!(count(&html, "data-acceptance-rate="), 8);
    assert_eq!(count(&html, "data-evaluations="), 8);
    assert_eq!(count(&html, "data-wall-time="), 8);
    assert_eq!(count(&html, "data-ess="), 8);
    for t in 0..8 {
        assert!(
            html.contains(&format!("data-generation=\"{t}\" data-epsilon=")),
            "generation {t}"
        );
    }
    // each parameter: a line per generation, and the latest's 90% interval
    assert_eq!(count(&html, "data-parameter=\"mu\"><title>generation"), 8);
    assert_eq!(
        count(&html, "data-parameter=\"sigma\"><title>generation"),
        8
    );
    assert_eq!(count(&html, "class=\"hist latest\""), 2);
    assert_eq!(count(&html, "class=\"interval\""), 2);
    // execution: three workers series and three disruption series, a marker per generation
    // and one for now (the run is live)
    assert_eq!(count(&html, "data-workers-ready="), 9);
    assert_eq!(count(&html, "data-lost-workers="), 9);
    assert_eq!(count(&html, "data-now=\"true\""), 6);
    // the ε spans more than a decade: log scale
    assert!(html.contains("ε (log scale)"));
    // figures in the header
    assert!(html.contains("<h1 id=\"name\">gaussian</h1>"));
    assert!(html.contains("in namespace science"));
    assert!(html.contains("id=\"phase\">Running<"));
    assert!(
        html.contains("Sampling generation 8: 40 of 100 particles accepted after 800 evaluations"),
        "{html}"
    );
    assert!(
        html.contains(
            "About 1,200 more evaluations at this generation's acceptance rate so far (5%)"
        ),
        "60 remaining at 40/800"
    );
    assert!(html.contains("<title>gaussian · Running · abc-operator</title>"));
    assert!(html.contains("href=\"?csv=generations\""));
    assert!(html.contains("href=\"?csv=posterior\""));
}

#[test]
fn the_page_needs_nothing_from_elsewhere() {
    let html = page(&run(8, 2), &options());
    for banned in [
        "<script",
        "javascript:",
        "http://",
        "https://",
        "@import",
        "url(http",
    ] {
        assert!(!html.contains(banned), "{banned}");
    }
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("@media print"));
}

#[test]
fn run_strings_are_escaped_everywhere() {
    let evil = "<script>alert(1)</script>\"'&<img src=x onerror=alert(2)>";
    let mut data = run(3, 2);
    data.name = evil.into();
    data.namespace = Some(evil.into());
    for r in &mut data.records {
        r.parameters[1].name = evil.into();
    }
    data.status.inference.as_mut().unwrap().message = Some(evil.into());
    data.status.conditions.push(Condition {
        type_: "Degraded".into(),
        status: "True".into(),
        reason: evil.into(),
        message: evil.into(),
        last_transition_time: Time(data.now),
        observed_generation: None,
    });
    let options = PageOptions {
        parameters: vec![evil.into(), "mu".into(), "</form><b>".into()],
        refresh_seconds: Some(5),
    };
    let html = page(&data, &options);
    assert!(!html.contains("<script"), "{html}");
    assert!(!html.contains("<img"), "{html}");
    assert!(!html.contains("</form><b>"), "{html}");
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#39;&amp;&lt;img"));
    // the evil parameter is a parameter like any other: chosen, plotted, named in attributes
    assert_eq!(
        count(
            &html,
            "data-parameter=\"&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#39;&amp;&lt;img src=x onerror=alert(2)&gt;\"><title>generation"
        ),
        3
    );
    assert!(html.contains("Not recorded, so not shown: &lt;/form&gt;&lt;b&gt;."));
    // the CSV quotes it and defuses nothing that is not a formula
    let csv = csv(&data, Plot::Posterior);
    assert!(csv.contains("\"<script>alert(1)</script>\"\"'&<img src=x onerror=alert(2)>\""));
}

#[test]
fn a_run_without_records_says_why_and_shows_its_execution() {
    let mut data = run(0, 0);
    data.status.progress = None;
    data.status.inference = Some(InferenceStatus {
        message: Some(
            "the master does not record generations (a master without the \
                       abc_operator module)"
                .into(),
        ),
        ..InferenceStatus::default()
    });
    let html = page(&data, &options());
    assert!(html.contains(
        "No generation records: the master does not record generations (a master without the \
         abc_operator module)"
    ));
    assert!(!html.contains("data-plot=\"epsilon\""));
    assert!(!html.contains("id=\"posterior\""));
    assert!(html.contains("id=\"execution\""));
    assert!(html.contains("Now: 4 of 4 workers ready, 0 active in the generation; 1 lost worker"));
    assert!(html.contains("id=\"fact-workers\"><dt>Workers ready</dt><dd>4 / 4</dd>"));
    assert!(html.contains("Running: no generation is being sampled right now."));
}

#[test]
fn the_first_parameters_are_shown_unless_others_are_chosen() {
    let data = run(4, 40);
    let html = page(&data, &options());
    assert_eq!(count(&html, "class=\"marginal\""), MAX_SHOWN_PARAMETERS);
    assert_eq!(count(&html, "type=\"checkbox\""), MAX_PARAMETERS);
    assert_eq!(count(&html, " checked>"), MAX_SHOWN_PARAMETERS);
    assert!(html.contains("id=\"selector\" method=\"get\""));
    assert!(
        html.contains("Showing 6 of 32 recorded parameters (the first 6; choose others below).")
    );
    assert!(html.contains("8 more parameters are not recorded"));
    let chosen = PageOptions {
        parameters: vec!["p9".into(), "sigma".into(), "p9".into(), "nope".into()],
        refresh_seconds: None,
    };
    let html = page(&data, &chosen);
    assert_eq!(count(&html, "class=\"marginal\""), 2);
    let p9 = html
        .find("data-plot=\"posterior\" data-parameter=\"p9\"")
        .unwrap();
    let sigma = html
        .find("data-plot=\"posterior\" data-parameter=\"sigma\"")
        .unwrap();
    assert!(p9 < sigma, "in the order chosen");
    assert!(html.contains("value=\"p9\" checked>"));
    assert!(html.contains("value=\"mu\">"));
    assert!(html.contains("Not recorded, so not shown: nope."));
    assert!(!html.contains("http-equiv=\"refresh\""));
}

#[test]
fn a_live_page_reloads_and_a_finished_or_deleted_one_says_so() {
    let mut data = run(5, 1);
    let live = page(
        &data,
        &PageOptions {
            refresh_seconds: Some(5),
            ..options()
        },
    );
    assert!(live.contains("<meta http-equiv=\"refresh\" content=\"5\">"));
    assert!(live.contains("reloads every 5 s"));
    data.status.phase = Some(Phase::Succeeded);
    let done = page(&data, &options());
    assert!(done.contains("Finished after 5 stored generations; the last ε was 0.275."));
    assert!(done.contains("phase-succeeded"));
    // not the workers active in its last generation
    assert!(done.contains(
        "At the end: its workers given back; 1 lost worker repaired, 1 resume of the master, \
         0 Redis restarts.</p>"
    ));
    assert!(
        !done.contains("data-now="),
        "a finished run's execution ends at its last record"
    );
    data.gone = true;
    let gone = page(&data, &options());
    assert!(gone.contains("This run was deleted"));
    assert!(gone.contains("id=\"deleted\">Deleted<"));
    assert!(gone.contains("Last seen: its workers given back;"));
    let nothing = PageData {
        namespace: Some("science".into()),
        name: "gaussian".into(),
        status: AbcRunStatus::default(),
        records: Vec::new(),
        gone: true,
        now: data.now,
    };
    let html = page(&nothing, &options());
    assert!(html.contains("No generation records are left of this run."));
    assert!(html.contains("Nothing is known of its execution."));
    assert!(
        !html.contains("id=\"facts\""),
        "no zeros for what is not known"
    );
    assert!(html.contains("<title>gaussian · deleted · abc-operator</title>"));
}

#[test]
fn the_eta_uses_the_last_rate_before_the_first_acceptance() {
    let mut data = run(3, 1);
    let progress = data.status.progress.as_mut().unwrap();
    progress.accepted = 0;
    progress.evaluations = 50;
    let html = page(&data, &options());
    let rate = data.records[2].acceptance_rate.unwrap();
    let expected = format!(
        "About {} more evaluations at the last generation's acceptance rate",
        int(round_2(100.0 / rate) as i64)
    );
    assert!(html.contains(&expected), "{expected}");
    assert_eq!(round_2(1234.0), 1200.0);
    assert_eq!(round_2(0.0), 0.0);
}

#[test]
fn csv_files_have_a_header_and_a_row_per_generation_or_summary() {
    let mut data = run(8, 3);
    data.records[0].epsilon = None;
    data.records[2].execution = None;
    data.records[4].model_probabilities = vec![0.25, 0.75];
    let generations = csv(&data, Plot::Generations);
    let lines: Vec<&str> = generations.split_terminator("\r\n").collect();
    assert_eq!(lines.len(), 1 + 8);
    assert_eq!(
        lines[0],
        "generation,time,epsilon,accepted,evaluations,acceptance_rate,ess,wall_time_seconds,\
         parameters_total,workers_ready,workers_desired,active_workers,lost_workers,resumes,\
         redis_restarts,model_probability_0,model_probability_1"
    );
    assert!(lines[1].starts_with("0,2026-12-06T18:00:"), "{}", lines[1]);
    assert!(
        lines[1].contains(",,100,"),
        "an infinite ε is empty: {}",
        lines[1]
    );
    assert!(lines[3].ends_with(",,,,,,,,"), "no execution: {}", lines[3]);
    assert!(lines[5].ends_with(",0.25,0.75"), "{}", lines[5]);
    for line in &lines {
        assert_eq!(line.split(',').count(), 17, "{line}");
    }
    let posterior = csv(&data, Plot::Posterior);
    let lines: Vec<&str> = posterior.split_terminator("\r\n").collect();
    assert_eq!(lines.len(), 1 + 8 * 3);
    assert!(lines[0].starts_with(
        "generation,parameter,mean,sd,q05,q25,q50,q75,q95,histogram_low,histogram_high,weight_1,"
    ));
    assert!(lines[0].ends_with(",weight_20"));
    assert!(lines[1].starts_with("0,mu,1.0,0.4,"), "{}", lines[1]);
    for line in &lines {
        assert_eq!(line.split(',').count(), 11 + 20, "{line}");
    }
}

#[test]
fn an_infinite_epsilon_is_a_marker_at_the_top() {
    let mut data = run(4, 1);
    data.records[0].epsilon = None;
    let html = page(&data, &options());
    assert_eq!(count(&html, "data-epsilon="), 4);
    assert!(html.contains("data-generation=\"0\" data-epsilon=\"inf\""));
    assert!(html.contains("infinite in generation 0"));
}

/// The page's size is bounded by what the controller keeps: 100 generations (about 420 KB
/// with 6 marginals, 1.3 MB with all 32 recorded ones chosen; printed with --nocapture).
#[test]
fn a_hundred_generations_render_in_well_under_a_megabyte() {
    let data = run(100, 6);
    let html = page(&data, &options());
    eprintln!("100 generations, 6 parameters shown: {} bytes", html.len());
    assert!(html.len() < 600 * 1024, "{} bytes", html.len());
    assert_eq!(count(&html, "data-epsilon="), 100);
    // every recorded parameter chosen: 32 marginals
    let data = run(100, 32);
    let all = PageOptions {
        parameters: (0..32).map(name).collect(),
        refresh_seconds: None,
    };
    let html = page(&data, &all);
    eprintln!("100 generations, 32 parameters shown: {} bytes", html.len());
    assert!(html.len() < 2 * 1024 * 1024, "{} bytes", html.len());
    assert_eq!(count(&html, "class=\"marginal\""), 32);
}

#[test]
fn a_local_runs_records_without_execution_say_so() {
    let mut data = run(3, 1);
    data.namespace = None;
    for r in &mut data.records {
        r.execution = None;
    }
    let html = page(&data, &options());
    assert!(html.contains("<span class=\"ns\">local run</span>"));
    assert!(html.contains("A local run's generation records carry no execution figures"));
    assert!(!html.contains("data-workers-ready="));
    assert_eq!(
        count(&html, "data-epsilon="),
        3,
        "the inference is all there"
    );
}

#[test]
fn a_page_served_again_says_when_it_was_served_each_time() {
    let data = run(4, 2);
    let kept = template(&data, &options());
    for now in ["2026-12-07T09:00:00Z", "2026-12-07T09:00:05Z"] {
        let html = kept.fill(now.parse().unwrap());
        let shown = format!("{} UTC", now.trim_end_matches('Z').replace('T', " "));
        assert!(html.contains(&format!("As of {shown}")), "{html}");
        assert_eq!(count(&html, &shown), 2, "the header and the footer");
        assert!(!html.contains(SERVED_AT), "{html}");
    }
}
