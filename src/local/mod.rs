//! Runs an AbcRun without a cluster: redis-server, worker processes and the master.
//!
//! The same spec types, snapshot and repair code as the operator, driven by process exits
//! instead of pod events (architecture flow 4). Nothing is started until the manifest is valid
//! and the Python interpreter has pyabc; everything started is stopped again, also on Ctrl-C
//! and when the runner itself is killed.
//!
//! Exit code: the master's (128 + signal if it was killed); 130 after Ctrl-C with a master
//! running; without a master, 0 after Ctrl-C. Errors (bad manifest, no pyabc, no redis-server,
//! workers that keep crashing) are [`LocalError`]s, which the CLI prints and exits 2 with.
//!
//! Files: `runner/` drives the run (its module docs list its files), `supervisor.rs` decides
//! about ended workers (pure), `progress.rs` renders progress (pure), `printer.rs` owns stdout,
//! `process.rs` spawns and signals children, `redis_access.rs` is the one place that talks to
//! Redis (through [`redis_server`], a password-protected redis-server, and
//! [`crate::protocol`]), `manifest.rs`, `python.rs` and `dirs.rs` prepare the run.

mod dirs;
mod error;
pub mod manifest;
mod printer;
mod process;
mod progress;
mod python;
mod redis_access;
pub mod redis_server;
mod runner;
mod supervisor;

pub use error::LocalError;
pub use supervisor::{Decision, RestartPolicy, SlotHistory, WorkerExit, decide, worker_id};

use std::path::PathBuf;

/// Options of `abc-operator run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The AbcRun manifest (YAML). The master runs in its folder.
    pub manifest: PathBuf,

    /// Number of worker processes [default: spec.workers.replicas].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=10000))]
    pub workers: Option<u32>,

    /// Python with pyabc, for workers and master; replaces `python`/`python3` in the master
    /// command [default: $ABC_PYTHON, else a .venv/bin/python in the manifest's folder or a
    /// parent up to the repository root, else python3 on PATH].
    #[arg(long, value_name = "PATH")]
    pub python: Option<PathBuf>,

    /// Port of the run's redis-server on 127.0.0.1 [default: a free port].
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub redis_port: Option<u16>,

    /// Leave redis-server running at the end and print how to reach it.
    #[arg(long)]
    pub keep_redis: bool,

    /// Folder for the logs of the workers, the master and the runner [default: RUN_DIR/logs].
    #[arg(long, value_name = "DIR")]
    pub log_dir: Option<PathBuf>,

    /// Folder of this run; the master's results go to RUN_DIR/results (ABC_RESULTS_DIR)
    /// [default: ./abc-runs/NAME-TIMESTAMP].
    #[arg(long, value_name = "RUN_DIR")]
    pub run_dir: Option<PathBuf>,

    /// Print one JSON object per line on stdout (progress and events) instead of progress lines.
    #[arg(long)]
    pub json: bool,

    /// Port of the run's page on 127.0.0.1 [default: a free port]; 0: no page served (it is
    /// still written into the run folder at the end).
    #[arg(long, value_name = "PORT")]
    pub dashboard_port: Option<u16>,
}

/// Runs the manifest to the end; returns the master's exit code.
pub async fn run(args: RunArgs) -> anyhow::Result<u8> {
    Ok(runner::run(args).await?)
}
