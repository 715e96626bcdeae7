//! The local run from start to end: check, start Redis, workers and master, supervise, stop.
//!
//! Files: this one prepares the run, starts it and holds the runner's state; `event_loop.rs`
//! supervises until the run ends; `children.rs` starts workers and master (and their
//! environment); `worker_exits.rs` handles a worker's end (repair, restart); `polling.rs` reads
//! progress from Redis and kills hung workers; `redis_restart.rs` starts a Redis that died
//! again; `shutdown.rs` stops everything in order and gives the exit code; `messages.rs` tells the user what was started and how it ended;
//! `logs.rs` sets up the runner's own logging.

mod children;
mod event_loop;
mod logs;
mod messages;
mod page;
mod polling;
mod redis_restart;
mod shutdown;
mod worker_exits;

use super::RunArgs;
use super::dirs::RunDirs;
use super::error::LocalError;
use super::manifest::{self, Manifest};
use super::printer::Printer;
use super::progress::{Renderer, Style};
use super::python::{self, CheckedPython};
use super::redis_access::{self, Conn, LocalRedis};
use super::supervisor::{RestartPolicy, SlotHistory};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

/// Everything checked before anything is started.
struct Prepared {
    manifest: Manifest,
    name: String,
    python: CheckedPython,
    workers: usize,
}

/// Reads the manifest and checks the interpreter; starts nothing, writes nothing.
async fn prepare(args: &RunArgs) -> Result<Prepared, LocalError> {
    let manifest = manifest::load(&args.manifest)?;
    let chosen = python::choose(
        args.python.as_deref(),
        std::env::var_os("ABC_PYTHON"),
        &manifest.dir,
    );
    let python = python::check(chosen).await?;
    let name = manifest
        .run
        .metadata
        .name
        .clone()
        .unwrap_or_else(|| "abcrun".to_string());
    let workers = match args.workers {
        Some(n) => n as usize,
        None => usize::try_from(manifest.run.spec.workers.replicas).unwrap_or(0),
    };
    Ok(Prepared {
        manifest,
        name,
        python,
        workers,
    })
}

pub async fn run(args: RunArgs) -> Result<u8, LocalError> {
    let prepared = prepare(&args).await?;
    let dirs = RunDirs::create(
        &prepared.name,
        args.run_dir.as_deref(),
        args.log_dir.as_deref(),
    )?;
    logs::init_tracing(&dirs);
    for note in manifest::cluster_only_notes(&prepared.manifest.run) {
        tracing::warn!("{note}");
    }
    if prepared.python.pyabc_version != python::EXPECTED_PYABC {
        tracing::warn!(
            found = %prepared.python.pyabc_version,
            expected = python::EXPECTED_PYABC,
            "the worker entrypoint is written for another pyabc version"
        );
    }
    let style = if args.json {
        Style::Json
    } else if std::io::stdout().is_terminal() {
        Style::Terminal
    } else {
        Style::Plain
    };
    let temp = tempfile::Builder::new()
        .prefix("abc-operator-run-")
        .tempdir()
        .map_err(|cause| LocalError::Files {
            path: std::env::temp_dir(),
            cause,
        })?;
    let entrypoint = redis_access::write_worker_files(temp.path())?;
    crate::protocol::write_master_module(temp.path())
        .map_err(|(path, cause)| LocalError::Files { path, cause })?;
    let mpl = temp.path().join("matplotlib");
    std::fs::create_dir_all(&mpl).map_err(|cause| LocalError::Files {
        path: mpl.clone(),
        cause,
    })?;

    // From here on Ctrl-C stops what was started, in order, instead of killing the runner.
    let mut signals = Signals::new();
    let redis = LocalRedis::start(args.redis_port, args.keep_redis)?;
    let conn = redis.connect().await?;
    let (tx, rx) = mpsc::unbounded_channel();
    let mut runner = Runner {
        spec: prepared.manifest.run.spec.clone(),
        name: prepared.name,
        manifest_dir: prepared.manifest.dir.clone(),
        python: prepared.python,
        entrypoint,
        mpl,
        dirs,
        redis: Some(redis),
        keep_redis: args.keep_redis,
        conn,
        slots: (0..prepared.workers).map(|_| Slot::default()).collect(),
        master: None,
        tx,
        rx,
        renderer: Renderer::new(style),
        printer: Printer::new(style),
        started: Instant::now(),
        policy: RestartPolicy::default(),
        stopping: false,
        poll_failed: false,
        last_poll: Instant::now(),
        lost_workers: 0,
        master_restarts: 0,
        redis_restarts: 0,
        last_resume: None,
        last_master_start: None,
        page: None,
        page_url: None,
    };
    if args.dashboard_port != Some(0) {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], args.dashboard_port.unwrap_or(0)));
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|cause| LocalError::Dashboard { addr, cause })?;
        let local = listener
            .local_addr()
            .map_err(|cause| LocalError::Dashboard { addr, cause })?;
        let page = page::LocalPage::new(&runner.name);
        tokio::spawn(page::serve(listener, page.data.clone()));
        runner.page = Some(page);
        runner.page_url = Some(format!("http://{local}/"));
    } else {
        runner.page = Some(page::LocalPage::new(&runner.name));
    }
    let outcome = runner.run_until_done(&mut signals).await;
    let result = runner.shutdown(outcome, &mut signals).await;
    // The entrypoint and matplotlib's cache go with the temp dir, after every child is gone.
    drop(runner);
    drop(temp);
    result
}

/// A worker slot (`local-<n>`) across its incarnations.
#[derive(Default)]
struct Slot {
    incarnation: u32,
    history: SlotHistory,
    running: Option<Running>,
    /// A restart held back after a fast failure.
    restart_at: Option<Instant>,
}

struct Running {
    id: String,
    pid: u32,
    started: Instant,
    /// Killed by the runner for a stopped heartbeat (not twice).
    killed: bool,
    /// [`Runner::redis_restarts`] when it started: a smaller one than now means the Redis it
    /// was given died while it ran.
    redis_restarts: u32,
}

struct MasterProcess {
    pid: u32,
    log: PathBuf,
    /// Killed by the runner because Redis died: its end starts it again.
    stopped_for_redis: bool,
}

enum Event {
    WorkerExited {
        slot: usize,
        incarnation: u32,
        status: std::io::Result<ExitStatus>,
    },
    MasterLine(String),
    MasterExited(std::io::Result<ExitStatus>),
}

/// Why the run ends.
enum Outcome {
    /// The master exited with this status, this long after the start.
    Master(ExitStatus, Duration),
    /// Without a master: the user pressed Ctrl-C.
    Stopped,
    /// With a master still running: the user pressed Ctrl-C (or the runner got SIGTERM).
    Interrupted,
    Failed(LocalError),
}

struct Runner {
    spec: crate::api::AbcRunSpec,
    name: String,
    manifest_dir: PathBuf,
    python: CheckedPython,
    entrypoint: PathBuf,
    mpl: PathBuf,
    dirs: RunDirs,
    redis: Option<LocalRedis>,
    keep_redis: bool,
    conn: Conn,
    slots: Vec<Slot>,
    master: Option<MasterProcess>,
    tx: mpsc::UnboundedSender<Event>,
    rx: mpsc::UnboundedReceiver<Event>,
    renderer: Renderer,
    printer: Printer,
    started: Instant,
    policy: RestartPolicy,
    stopping: bool,
    poll_failed: bool,
    last_poll: Instant,
    /// Lost workers repaired in this run: the count the repair script keeps in Redis (so
    /// repairs made by a worker pod's own supervisor count too), never going back.
    lost_workers: i64,
    /// Masters started again after a kill (at most `spec.master.backoffLimit`, as on a cluster).
    master_restarts: i32,
    /// Times the run's redis-server died and was started again.
    redis_restarts: u32,
    /// The last resume the master recorded in Redis that was reported (by its time).
    last_resume: Option<String>,
    /// The last master start recorded in Redis that was looked at (by its time).
    last_master_start: Option<String>,
    /// What the run's page shows.
    page: Option<page::LocalPage>,
    /// Where the page is served, when it is.
    page_url: Option<String>,
}

/// SIGINT or SIGTERM to the runner.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Signals {
        Signals {
            int: signal(SignalKind::interrupt()).expect("SIGINT handler can be installed"),
            term: signal(SignalKind::terminate()).expect("SIGTERM handler can be installed"),
        }
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

impl Runner {
    fn redis(&self) -> &LocalRedis {
        self.redis.as_ref().expect("redis lives until shutdown")
    }

    fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}
