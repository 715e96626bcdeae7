//! The run's page on a laptop: the same page an operator serves for an AbcRun (`dashboard`),
//! served on a loopback port while the run goes, and left in the run folder as one
//! self-contained HTML file when it ends (it needs nothing from anywhere: no script, no CDN).
//!
//! A page view reads nothing from Redis: the runner's polls keep what the page shows (the
//! generation records are read only when the master recorded a new one).

use super::Runner;
use crate::api::{AbcRunStatus, InferenceStatus, Phase, Progress, RedisInstance, Resumes};
use crate::controller::records::MAX_STORED_GENERATIONS;
use crate::dashboard::page::PageData;
use crate::dashboard::server::{PageQuery, parse_query, respond};
use crate::protocol::Snapshot;
use crate::protocol::inference::{Execution, GenerationRecord, read_records};
use axum::extract::{RawQuery, State};
use axum::response::Response;
use axum::routing::get;
use std::sync::{Arc, Mutex};

/// The page's data, shared by the runner (which updates it at each poll) and the server.
pub(super) type Shared = Arc<Mutex<PageData>>;

/// What the page shows of a local run, kept by the runner.
pub(super) struct LocalPage {
    pub data: Shared,
    /// Records read so far (the number the master's list had).
    recorded: i64,
    /// The last progress with a generation: a finished run keeps where it ended.
    last_progress: Option<Progress>,
}

impl LocalPage {
    pub fn new(name: &str) -> LocalPage {
        LocalPage {
            data: Arc::new(Mutex::new(PageData {
                namespace: None,
                name: name.to_string(),
                status: AbcRunStatus::default(),
                records: Vec::new(),
                gone: false,
                now: k8s_openapi::jiff::Timestamp::now(),
            })),
            recorded: 0,
            last_progress: None,
        }
    }
}

/// Serves the page on `listener` until the runner ends.
pub(super) async fn serve(listener: tokio::net::TcpListener, data: Shared) {
    let router = axum::Router::new().route("/", get(page)).with_state(data);
    if let Err(err) = axum::serve(listener, router).await {
        tracing::warn!(error = %err, "the run's page stopped");
    }
}

async fn page(State(data): State<Shared>, RawQuery(query): RawQuery) -> Response {
    let query: PageQuery = parse_query(query.as_deref());
    // rendered under the lock: a poll waits a millisecond rather than the page copying it
    let mut data = data.lock().unwrap_or_else(|e| e.into_inner());
    data.now = k8s_openapi::jiff::Timestamp::now();
    respond(&data, &query)
}

impl Runner {
    /// Brings the page up to date with a poll's snapshot (and the records the master added).
    pub(super) async fn update_page(&mut self, snapshot: &Snapshot, workers: usize) {
        let Some(page) = self.page.as_mut() else {
            return;
        };
        let mut new_records = Vec::new();
        let recorded = snapshot.generations_recorded;
        if recorded != page.recorded && recorded > 0 {
            // fewer than read: the master started a new analysis, read them all again
            let from = if recorded > page.recorded {
                page.recorded
            } else {
                0
            };
            if let Ok(read) = read_records(&mut self.conn, from).await {
                new_records = read.into_iter().flatten().collect();
                if from == 0 {
                    page.data
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .records
                        .clear();
                }
                page.recorded = recorded;
            }
        }
        let mut progress = Progress::from(snapshot);
        if progress.generation.is_some() {
            progress.acceptances = Some(format!("{}/{}", progress.accepted, progress.required));
            page.last_progress = Some(progress);
        }
        // As the operator stores them: with the execution when the generation was recorded.
        let execution = Execution {
            workers_ready: workers as i64,
            workers_desired: self.slots.len() as i64,
            active_workers: snapshot.n_worker.unwrap_or(0),
            lost_workers: self.lost_workers,
            resumes: i64::from(snapshot.resumed.is_some()),
            redis_restarts: self.redis_restarts.into(),
        };
        for record in &mut new_records {
            record.execution.get_or_insert_with(|| execution.clone());
        }
        let mut data = page.data.lock().unwrap_or_else(|e| e.into_inner());
        data.records.extend(new_records);
        let excess = data
            .records
            .len()
            .saturating_sub(MAX_STORED_GENERATIONS as usize);
        data.records.drain(..excess);
        let desired = self.slots.len();
        data.status = AbcRunStatus {
            phase: Some(if self.stopping {
                data.status.phase.unwrap_or(Phase::Running)
            } else {
                Phase::Running
            }),
            workers: Some(format!("{workers}/{desired}")),
            replicas: desired as i32,
            ready_replicas: workers as i32,
            progress: page.last_progress.clone(),
            lost_workers: self.lost_workers,
            resumes: snapshot.resumed.as_ref().map(|r| Resumes {
                count: 1,
                last_from_generation: r.from_generation,
                last_time: r.at.clone(),
            }),
            redis: Some(RedisInstance {
                run_id: snapshot.run_id.clone().unwrap_or_default(),
                restarts: self.redis_restarts.into(),
            }),
            inference: inference(&data.records, page.recorded),
            ..AbcRunStatus::default()
        };
    }

    /// The run ended (`phase`): the page says so and is written into the run folder, where it
    /// stays readable after the runner is gone. Returns the file.
    pub(super) fn finish_page(&mut self, phase: Phase) -> Option<std::path::PathBuf> {
        let page = self.page.as_ref()?;
        let mut data = page.data.lock().unwrap_or_else(|e| e.into_inner());
        data.status.phase = Some(phase);
        data.now = k8s_openapi::jiff::Timestamp::now();
        let html = crate::dashboard::page::page(&data, &Default::default());
        let file = self.dirs.run.join("dashboard.html");
        match std::fs::write(&file, html) {
            Ok(()) => Some(file),
            Err(err) => {
                tracing::warn!(error = %err, file = %file.display(), "cannot write the run's page");
                None
            }
        }
    }
}

/// The status' figures: the latest record's, as the operator shows them.
fn inference(records: &[GenerationRecord], recorded: i64) -> Option<InferenceStatus> {
    let latest = records.last()?;
    Some(InferenceStatus {
        generations: recorded,
        ..crate::controller::status::figures_of(latest)
    })
}
