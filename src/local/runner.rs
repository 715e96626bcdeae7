//! The local run from start to end: check, start Redis, workers and master, supervise, stop.

use super::RunArgs;
use super::dirs::{RunDirs, write_env_file};
use super::error::LocalError;
use super::manifest::{self, Manifest};
use super::printer::Printer;
use super::process::{self, Output, Spec};
use super::progress::{Renderer, Style, round1};
use super::python::{self, CheckedPython};
use super::redis::{self, Conn, LocalRedis};
use super::supervisor::{Decision, RestartPolicy, SlotHistory, WorkerExit, decide, worker_id};
use crate::protocol::{Snapshot, stale_workers};
use futures::FutureExt;
use nix::sys::signal::Signal;
use serde_json::json;
use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

/// How often the run's Redis is polled for progress. A generation shorter than this gets no
/// line of its own (the Gaussian example's generation 0 takes about half a second on an idle
/// machine); one snapshot of a loopback Redis every 100 ms costs next to nothing.
const POLL: Duration = Duration::from_millis(100);
/// After SIGKILL, how long to wait for the kernel to report the exit before moving on.
const REAP: Duration = Duration::from_secs(5);
/// Exit code after Ctrl-C (128 + SIGINT), as shells report it.
const INTERRUPTED: u8 = 130;

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
    init_tracing(&dirs);
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
    let entrypoint = temp.path().join("abc_worker.py");
    std::fs::write(&entrypoint, redis::worker_entrypoint()).map_err(|cause| LocalError::Files {
        path: entrypoint.clone(),
        cause,
    })?;
    // `import abc_operator` in the master (new-or-resume), as on a cluster.
    let module = temp.path().join(crate::resources::MASTER_MODULE_KEY);
    std::fs::write(&module, crate::protocol::MASTER_MODULE).map_err(|cause| LocalError::Files {
        path: module.clone(),
        cause,
    })?;
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
    };
    let outcome = runner.run_until_done(&mut signals).await;
    let result = runner.shutdown(outcome, &mut signals).await;
    // The entrypoint and matplotlib's cache go with the temp dir, after every child is gone.
    drop(runner);
    drop(temp);
    result
}

/// Logs to stderr (`RUST_LOG`, default warnings only, so the terminal shows progress) and, with
/// everything from info up as JSON lines, to `runner.log` in the log folder.
fn init_tracing(dirs: &RunDirs) {
    use tracing_subscriber::{
        EnvFilter, Layer, filter::LevelFilter, layer::SubscriberExt, util::SubscriberInitExt,
    };
    let stderr_filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let stderr = tracing_subscriber::fmt::layer()
        .with_ansi(crate::logging::colour_on_stderr())
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_filter(stderr_filter);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dirs.logs.join("runner.log"))
        .ok();
    let file = file.map(|f| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::sync::Arc::new(f))
            .with_filter(LevelFilter::INFO)
    });
    // A subscriber set earlier (e.g. by a test harness) wins; logging is not worth failing for.
    let _ = tracing_subscriber::registry()
        .with(stderr)
        .with(file)
        .try_init();
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
}

struct MasterProcess {
    pid: u32,
    log: PathBuf,
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

    /// Starts workers and master, then supervises until the master exits, Ctrl-C, or failure.
    async fn run_until_done(&mut self, signals: &mut Signals) -> Outcome {
        self.announce();
        // Ctrl-C while Redis was starting: start nothing more.
        if signals.recv().now_or_never().is_some() {
            return Outcome::Stopped;
        }
        for slot in 0..self.slots.len() {
            if let Err(err) = self.spawn_worker(slot) {
                return Outcome::Failed(err);
            }
        }
        if let Err(err) = self.spawn_master() {
            return Outcome::Failed(err);
        }
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = signals.recv() => {
                    return if self.master.is_some() { Outcome::Interrupted } else { Outcome::Stopped };
                }
                Some(event) = self.rx.recv() => match event {
                    Event::WorkerExited { slot, incarnation, status } => {
                        if let Err(err) = self.on_worker_exit(slot, incarnation, status).await {
                            return Outcome::Failed(err);
                        }
                    }
                    Event::MasterLine(line) => {
                        // Progress first, so a generation's line comes before what the master
                        // prints about it (e.g. the summary after the last one).
                        if self.last_poll.elapsed() > Duration::from_millis(20) {
                            self.poll().await;
                        }
                        self.printer.master_line(&line);
                    }
                    Event::MasterExited(Ok(status)) => {
                        self.master = None;
                        self.poll().await;
                        return Outcome::Master(status, self.elapsed());
                    }
                    Event::MasterExited(Err(err)) => {
                        self.master = None;
                        return Outcome::Failed(LocalError::Spawn {
                            what: "the master".into(),
                            program: "wait".into(),
                            cause: err,
                        });
                    }
                },
                _ = tick.tick() => {
                    self.poll().await;
                    if let Err(err) = self.restart_due() {
                        return Outcome::Failed(err);
                    }
                }
            }
        }
    }

    /// What was started and, without a master, how to start one by hand.
    fn announce(&mut self) {
        let (host, port, pid) = (
            self.redis().host.clone(),
            self.redis().port,
            self.redis().pid(),
        );
        let py = &self.python;
        self.printer.say(format!(
            "abc-operator run {}: redis {host}:{port}, {} worker(s), {} (pyabc {}, from {})",
            self.name,
            self.slots.len(),
            py.python.path.display(),
            py.pyabc_version,
            py.python.source
        ));
        self.printer.say(format!(
            "run folder {} (logs in {})",
            self.dirs.run.display(),
            self.dirs.logs.display()
        ));
        self.printer.event(json!({
            "event": "started",
            "name": self.name,
            "redis": {"host": host, "port": port, "pid": pid},
            "workers": self.slots.len(),
            "python": py.python.path,
            "pyabc": py.pyabc_version,
            "run_dir": self.dirs.run,
            "results_dir": self.dirs.results,
            "log_dir": self.dirs.logs,
        }));
        tracing::info!(name = %self.name, %host, port, workers = self.slots.len(), "run started");
        if self.slots.is_empty() && self.spec.master.is_some() {
            tracing::warn!("no workers: the master waits until workers connect to Redis");
        }
        if self.spec.master.is_none() {
            match self.write_env_file(self.redis()) {
                Ok(path) => {
                    self.printer.say(format!(
                        "no master in the manifest: workers wait for one until Ctrl-C. Start it with\n  \
                         set -a; . {}; set +a; python your_master.py\n\
                         ({} holds ABC_REDIS_HOST, ABC_REDIS_PORT, ABC_REDIS_PASSWORD and ABC_RESULTS_DIR, readable only by you)",
                        path.display(),
                        path.display()
                    ));
                    self.printer
                        .event(json!({"event": "waiting_for_master", "env_file": path}));
                }
                Err(err) => {
                    tracing::error!(%err, "cannot write the connection file for a master started by hand")
                }
            }
        }
    }

    /// The connection of a master started by hand, in a file only the user can read.
    fn write_env_file(&self, redis: &LocalRedis) -> Result<PathBuf, LocalError> {
        let path = self.dirs.run.join("redis.env");
        write_env_file(
            &path,
            &[
                ("ABC_REDIS_HOST", redis.host.clone()),
                ("ABC_REDIS_PORT", redis.port.to_string()),
                ("ABC_REDIS_PASSWORD", redis.password().to_string()),
                ("ABC_RESULTS_DIR", self.dirs.results.display().to_string()),
            ],
        )?;
        Ok(path)
    }

    /// Environment shared by workers and master. The password goes only here, never on argv.
    fn base_env(&self) -> Vec<(OsString, OsString)> {
        let redis = self.redis();
        let mut env: Vec<(OsString, OsString)> = vec![
            ("ABC_REDIS_HOST".into(), redis.host.clone().into()),
            ("ABC_REDIS_PORT".into(), redis.port.to_string().into()),
            ("ABC_REDIS_PASSWORD".into(), redis.password().into()),
            // Output reaches the logs (and the terminal) as it is printed, not at exit.
            ("PYTHONUNBUFFERED".into(), "1".into()),
        ];
        if std::env::var_os("MPLCONFIGDIR").is_none() {
            env.push(("MPLCONFIGDIR".into(), self.mpl.clone().into()));
        }
        env
    }

    fn spawn_worker(&mut self, slot: usize) -> Result<(), LocalError> {
        let incarnation = self.slots[slot].incarnation + 1;
        let id = worker_id(slot + 1, incarnation);
        let workers = &self.spec.workers;
        let mut env = self.base_env();
        // The model may be pickled by reference to a module next to the manifest (as it would
        // be in the image's working directory), so the workers must be able to import it.
        let mut pythonpath = OsString::from(&self.manifest_dir);
        if let Some(existing) = std::env::var_os("PYTHONPATH").filter(|p| !p.is_empty()) {
            pythonpath.push(":");
            pythonpath.push(existing);
        }
        env.extend([
            ("ABC_WORKER_ID".into(), id.clone().into()),
            ("ABC_WORKER_RUNTIME".into(), workers.runtime.clone().into()),
            (
                "ABC_WORKER_PROCESSES".into(),
                workers.processes.to_string().into(),
            ),
            (
                "ABC_HEARTBEAT_SECONDS".into(),
                heartbeat_seconds(workers.heartbeat_timeout_seconds)
                    .to_string()
                    .into(),
            ),
            ("PYTHONPATH".into(), pythonpath),
        ]);
        env.extend(
            manifest::literal_env(&workers.env)
                .into_iter()
                .map(|(k, v)| (k.into(), v.into())),
        );
        let spec = Spec {
            what: format!("worker {id}"),
            argv: vec![
                self.python.python.path.clone().into(),
                self.entrypoint.clone().into(),
            ],
            cwd: self.manifest_dir.clone(),
            env,
        };
        let log = self.dirs.logs.join(format!("local-{}.log", slot + 1));
        let header = format!(
            "{id} (incarnation {incarnation}) at {:.1}s",
            self.elapsed().as_secs_f64()
        );
        let mut child = process::spawn(&spec, Output::Log(log), &header)?;
        let pid = child.id().unwrap_or(0);
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            let _ = tx.send(Event::WorkerExited {
                slot,
                incarnation,
                status,
            });
        });
        tracing::info!(worker = %id, pid, incarnation, "worker started");
        self.printer.event(json!({"event": "worker_started", "worker": id, "slot": slot + 1, "incarnation": incarnation, "pid": pid}));
        let state = &mut self.slots[slot];
        state.incarnation = incarnation;
        state.running = Some(Running {
            id,
            pid,
            started: Instant::now(),
            killed: false,
        });
        state.restart_at = None;
        Ok(())
    }

    fn spawn_master(&mut self) -> Result<(), LocalError> {
        let Some(master) = self.spec.master.clone() else {
            return Ok(());
        };
        let mut env = self.base_env();
        env.push(("ABC_RESULTS_DIR".into(), self.dirs.results.clone().into()));
        let module_dir = self.entrypoint.parent().unwrap_or(Path::new("."));
        let mut pythonpath = OsString::from(module_dir);
        if let Some(existing) = std::env::var_os("PYTHONPATH").filter(|p| !p.is_empty()) {
            pythonpath.push(":");
            pythonpath.push(existing);
        }
        env.push(("PYTHONPATH".into(), pythonpath));
        env.extend(
            manifest::literal_env(&master.env)
                .into_iter()
                .map(|(k, v)| (k.into(), v.into())),
        );
        let spec = Spec {
            what: "the master".into(),
            argv: python::master_argv(&master.command, &master.args, &self.python.python.path),
            cwd: self.manifest_dir.clone(),
            env,
        };
        let log = self.dirs.logs.join("master.log");
        let mut child = process::spawn(&spec, Output::PipeStdout(log.clone()), "master")?;
        let pid = child.id().unwrap_or(0);
        let stdout = child.stdout.take();
        let tx = self.tx.clone();
        let log_path = log.clone();
        // stdout is both shown and kept in master.log (stderr, pyabc's logging, only kept).
        let lines_tx = self.tx.clone();
        let pump = tokio::spawn(async move {
            let Some(stdout) = stdout else { return };
            let mut file = tokio::fs::OpenOptions::new()
                .append(true)
                .open(&log_path)
                .await
                .ok();
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(f) = file.as_mut() {
                    let _ = f.write_all(format!("{line}\n").as_bytes()).await;
                }
                let _ = lines_tx.send(Event::MasterLine(line));
            }
        });
        tokio::spawn(async move {
            let status = child.wait().await;
            // The last lines, unless a process the master left behind holds its stdout open.
            let _ = tokio::time::timeout(Duration::from_secs(2), pump).await;
            let _ = tx.send(Event::MasterExited(status));
        });
        tracing::info!(pid, "master started");
        self.printer
            .event(json!({"event": "master_started", "pid": pid}));
        self.master = Some(MasterProcess { pid, log });
        Ok(())
    }

    /// Handles the end of a worker incarnation: repair if lost, restart unless stopping.
    async fn on_worker_exit(
        &mut self,
        slot: usize,
        incarnation: u32,
        status: std::io::Result<ExitStatus>,
    ) -> Result<(), LocalError> {
        let state = &mut self.slots[slot];
        if state.incarnation != incarnation {
            return Ok(());
        }
        let Some(running) = state.running.take() else {
            return Ok(());
        };
        let exit = match status {
            Ok(status) => WorkerExit::from_status(status),
            Err(err) => {
                tracing::warn!(worker = %running.id, %err, "could not wait for worker; treating it as lost");
                WorkerExit::Code(-1)
            }
        };
        if exit.is_lost() {
            // With `processes > 1` the worker's own processes may outlive it (they share its
            // process group): they must be dead before their ledgers are repaired.
            process::signal_group(running.pid, Signal::SIGKILL);
        }
        let lived = running.started.elapsed();
        let (decision, history) = decide(exit, lived, self.stopping, state.history, &self.policy);
        state.history = history;
        tracing::info!(worker = %running.id, pid = running.pid, %exit, lived_s = round1(lived), ?decision, "worker exited");
        self.printer.event(json!({
            "event": "worker_exited",
            "worker": running.id,
            "pid": running.pid,
            "exit": exit.to_string(),
            "lost": exit.is_lost(),
            "lived_s": round1(lived),
        }));
        if decision.needs_repair() {
            self.repair(&running.id, exit).await;
        }
        match decision {
            Decision::Restart
            | Decision::RepairAndRestart {
                delay: Duration::ZERO,
            } => self.spawn_worker(slot)?,
            Decision::RepairAndRestart { delay } => {
                self.slots[slot].restart_at = Some(Instant::now() + delay)
            }
            Decision::RepairOnly | Decision::Nothing => {}
            Decision::GiveUp { failures } => {
                let log = self.dirs.logs.join(format!("local-{}.log", slot + 1));
                return Err(LocalError::WorkersCrashLoop {
                    worker: running.id,
                    failures,
                    last_exit: exit.to_string(),
                    tail: process::tail(&log, 20),
                    log,
                });
            }
        }
        Ok(())
    }

    /// Repairs the ledger of a lost worker, so the master does not wait for its claimed work.
    async fn repair(&mut self, id: &str, exit: WorkerExit) {
        let processes = u32::try_from(self.spec.workers.processes).unwrap_or(1);
        match redis::repair(&mut self.conn, id, processes).await {
            Ok(repairs) if repairs.is_empty() && self.stopping => {
                // Stopped while starting up or idle: nothing worth a note.
                tracing::info!(worker = %id, %exit, "stopped worker owed nothing");
            }
            Ok(repairs) if repairs.is_empty() => {
                let note = self.renderer.note(
                    &format!("worker {id} died ({exit}) outside a generation: nothing to repair"),
                    json!({"event": "lost_worker", "worker": id, "exit": exit.to_string(), "repairs": []}),
                );
                self.printer.out(note);
                tracing::info!(worker = %id, %exit, "lost worker owed nothing");
            }
            Ok(repairs) => {
                let elapsed = round1(self.elapsed());
                for repair in &repairs {
                    self.lost_workers = self.lost_workers.max(repair.lost_workers);
                    // The note first: it ends the live line, so the warning starts on its own.
                    let note = self.renderer.note(
                        &format!("repaired lost worker {} ({exit})", redis::describe(repair)),
                        json!({"event": "repaired", "worker": id, "exit": exit.to_string(), "repair": repair, "lost_workers": self.lost_workers, "elapsed_s": elapsed}),
                    );
                    self.printer.out(note);
                    tracing::warn!(worker = %id, ledger = %repair.ledger_id, %exit, %repair, "repaired lost worker");
                }
            }
            Err(err) if self.stopping => {
                tracing::warn!(worker = %id, %exit, %err, "could not repair lost worker")
            }
            Err(err) => {
                tracing::error!(worker = %id, %exit, %err, "could not repair lost worker; the master may wait for its work")
            }
        }
    }

    fn restart_due(&mut self) -> Result<(), LocalError> {
        if self.stopping {
            return Ok(());
        }
        let now = Instant::now();
        for slot in 0..self.slots.len() {
            if self.slots[slot].restart_at.is_some_and(|at| at <= now) {
                self.spawn_worker(slot)?;
            }
        }
        Ok(())
    }

    /// One snapshot of the run's Redis, rendered as progress; hung workers are killed.
    async fn poll(&mut self) {
        self.last_poll = Instant::now();
        match redis::observe(&mut self.conn).await {
            Ok((mut obs, snapshot)) => {
                self.poll_failed = false;
                self.lost_workers = self.lost_workers.max(snapshot.lost_workers);
                obs.workers = self.slots.iter().filter(|s| s.running.is_some()).count();
                let ended = match self.renderer.ending(&obs) {
                    Some((ana, t)) => redis::final_counts(&mut self.conn, &ana, t)
                        .await
                        .ok()
                        .flatten(),
                    None => None,
                };
                let elapsed = self.elapsed();
                for out in self.renderer.observe(obs, ended, elapsed) {
                    self.printer.out(out);
                }
                if !self.stopping {
                    self.kill_hung_workers(&snapshot);
                }
            }
            Err(err) => {
                // Once per outage, not twice a second.
                if !self.poll_failed {
                    tracing::warn!(%err, "cannot read progress from Redis");
                }
                self.poll_failed = true;
            }
        }
    }

    /// A worker process that is alive but whose ledger heartbeat stopped (stopped, or stuck
    /// holding the GIL) would keep the master waiting: kill it, and its exit repairs it.
    fn kill_hung_workers(&mut self, snapshot: &Snapshot) {
        let timeout = Duration::from_secs(
            u64::try_from(self.spec.workers.heartbeat_timeout_seconds).unwrap_or(60),
        );
        for ledger_id in stale_workers(snapshot, snapshot.time_ms, timeout) {
            let Some(worker) = snapshot
                .ledgers
                .iter()
                .find(|l| l.id == ledger_id)
                .and_then(|l| l.worker.clone())
            else {
                continue;
            };
            for running in self.slots.iter_mut().filter_map(|s| s.running.as_mut()) {
                if running.id == worker && !running.killed && running.started.elapsed() > timeout {
                    tracing::warn!(worker = %worker, pid = running.pid, timeout_s = timeout.as_secs(), "worker stopped its heartbeat; killing it");
                    process::signal_group(running.pid, Signal::SIGKILL);
                    running.killed = true;
                }
            }
        }
    }

    fn live_worker_pids(&self) -> Vec<u32> {
        self.slots
            .iter()
            .filter_map(|s| s.running.as_ref().map(|r| r.pid))
            .collect()
    }

    /// Stops everything in order: workers (gracefully), the master, then Redis. A second Ctrl-C
    /// kills whatever is left at once.
    async fn shutdown(
        &mut self,
        outcome: Outcome,
        signals: &mut Signals,
    ) -> Result<u8, LocalError> {
        self.stopping = true;
        let grace = Duration::from_secs(
            u64::try_from(self.spec.workers.termination_grace_period_seconds).unwrap_or(1),
        );
        match &outcome {
            Outcome::Interrupted | Outcome::Stopped => {
                self.printer.finish_live();
                eprintln!(
                    "stopping: workers (up to {}s), then the master, then Redis; press Ctrl-C again to kill everything now",
                    grace.as_secs()
                );
            }
            // The error itself reaches the user as the run's result; here only the log gets it.
            Outcome::Failed(err) => tracing::info!(%err, "stopping the run"),
            Outcome::Master(..) => {}
        }
        let mut killed = false;
        // Workers first: a worker inside a generation finishes its evaluation and leaves it.
        for pid in self.live_worker_pids() {
            process::signal_group(pid, Signal::SIGTERM);
        }
        killed |= !self.wait_for_children(false, grace, signals).await;
        for pid in self.live_worker_pids() {
            if !killed {
                tracing::warn!(
                    pid,
                    grace_s = grace.as_secs(),
                    "worker did not stop within its grace period; killing it"
                );
            }
            process::signal_group(pid, Signal::SIGKILL);
        }
        self.wait_for_children(false, REAP, signals).await;
        // Then the master, if it is still running (Ctrl-C or a failure).
        if let Some(master) = &self.master {
            let pid = master.pid;
            process::signal_group(
                pid,
                if killed {
                    Signal::SIGKILL
                } else {
                    Signal::SIGTERM
                },
            );
            if !self.wait_for_children(true, grace, signals).await {
                killed = true;
            }
            if self.master.is_some() {
                process::signal_group(pid, Signal::SIGKILL);
                self.wait_for_children(true, REAP, signals).await;
            }
        }
        self.printer.finish_live();
        self.finish_redis();
        let elapsed = round1(self.elapsed());
        let code = match outcome {
            Outcome::Master(status, after) => {
                let code = exit_code(status);
                self.report_master_end(status, code, after);
                code
            }
            Outcome::Interrupted => {
                self.printer.say(format!(
                    "interrupted after {elapsed:.1}s; partial results in {}",
                    self.dirs.results.display()
                ));
                INTERRUPTED
            }
            Outcome::Stopped => {
                self.printer.say(format!("stopped after {elapsed:.1}s"));
                if killed { INTERRUPTED } else { 0 }
            }
            Outcome::Failed(err) => {
                self.printer.event(
                    json!({"event": "failed", "error": err.to_string(), "elapsed_s": elapsed}),
                );
                return Err(err);
            }
        };
        if self.lost_workers > 0 {
            self.printer.say(format!(
                "{} lost worker(s) repaired during the run",
                self.lost_workers
            ));
        }
        self.printer.event(json!({"event": "finished", "exit_code": code, "results_dir": self.dirs.results, "lost_workers": self.lost_workers, "elapsed_s": elapsed}));
        Ok(code)
    }

    /// Handles events until the workers (or, with `master`, the master) are gone, `limit` has
    /// passed, or a second Ctrl-C arrives (then everything is killed at once). Returns false
    /// only after that second Ctrl-C.
    async fn wait_for_children(
        &mut self,
        master: bool,
        limit: Duration,
        signals: &mut Signals,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let done = if master {
                self.master.is_none()
            } else {
                self.live_worker_pids().is_empty()
            };
            if done {
                return true;
            }
            tokio::select! {
                _ = signals.recv() => {
                    eprintln!("killing everything now");
                    for pid in self.live_worker_pids().into_iter().chain(self.master.as_ref().map(|m| m.pid)) {
                        process::signal_group(pid, Signal::SIGKILL);
                    }
                    return false;
                }
                Some(event) = self.rx.recv() => match event {
                    Event::WorkerExited { slot, incarnation, status } => {
                        // While stopping, nothing restarts and nothing gives up.
                        let _ = self.on_worker_exit(slot, incarnation, status).await;
                    }
                    Event::MasterLine(line) => self.printer.master_line(&line),
                    Event::MasterExited(_) => self.master = None,
                },
                _ = tokio::time::sleep_until(deadline) => return true,
            }
        }
    }

    /// Stops Redis, or with `--keep-redis` leaves it running and says how to reach it.
    fn finish_redis(&mut self) {
        let Some(redis) = self.redis.take() else {
            return;
        };
        if self.keep_redis {
            let env_file = self.write_env_file(&redis);
            let (host, port) = (redis.host.clone(), redis.port);
            redis.keep();
            match env_file {
                Ok(path) => {
                    let file = path.display();
                    self.printer.say(format!(
                        "redis-server keeps running at {host}:{port}. Its connection (with the password) is \
                         in {file}, readable only by you:\n  \
                         set -a; . {file}; set +a          # then start a master\n  \
                         (. {file}; REDISCLI_AUTH=\"$ABC_REDIS_PASSWORD\" redis-cli -h {host} -p {port} shutdown nosave)   # to stop it"
                    ));
                    self.printer.event(json!({"event": "redis_kept", "host": host, "port": port, "env_file": path}));
                }
                Err(err) => {
                    tracing::error!(%err, "redis-server keeps running but its connection file could not be written")
                }
            }
        } else {
            redis.stop();
            if self.spec.master.is_none() {
                // The connection file points at a server that no longer exists.
                let _ = std::fs::remove_file(self.dirs.run.join("redis.env"));
            }
        }
    }

    fn report_master_end(&mut self, status: ExitStatus, code: u8, after: Duration) {
        let elapsed = after.as_secs_f64();
        let log = self
            .master
            .as_ref()
            .map(|m| m.log.clone())
            .unwrap_or_else(|| self.dirs.logs.join("master.log"));
        if status.success() {
            self.printer.say(format!(
                "master finished after {elapsed:.1}s; results in {}",
                self.dirs.results.display()
            ));
        } else {
            self.printer.say(format!(
                "master failed ({status}) after {elapsed:.1}s; its log is {}",
                log.display()
            ));
            eprintln!(
                "last lines of the master's log {}:\n{}",
                log.display(),
                process::tail(&log, 20)
            );
        }
        self.printer.event(
            json!({"event": "master_exited", "exit_code": code, "status": status.to_string()}),
        );
        tracing::info!(code, "master exited");
    }
}

/// The master's status as this process's exit code: its code, or 128 + signal.
fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code & 0xff).unwrap_or(1),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(1),
        (None, None) => 1,
    }
}

/// How often a worker refreshes its ledger heartbeat: several times per timeout, so one late
/// beat is not a lost worker.
fn heartbeat_seconds(timeout: i64) -> i64 {
    (timeout / 4).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(9)), 137);
    }

    #[test]
    fn heartbeat_is_a_fraction_of_the_timeout() {
        assert_eq!(heartbeat_seconds(60), 15);
        assert_eq!(heartbeat_seconds(2), 1);
    }
}
