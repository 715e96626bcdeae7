//! `abc-operator run`: a real redis-server, real pyabc workers and masters, the built binary.
//!
//! Needs `redis-server` on PATH and a Python with the pinned pyabc: `$ABC_PYTHON`, else
//! `.venv/bin/python` at the crate root (`python3 -m venv .venv && .venv/bin/pip install -r
//! python/requirements.txt`). Every test is bounded in time; on a timeout the runner is killed
//! and the test fails with what the runner printed.

mod support;

use abc_operator::protocol::inference::{GENERATIONS, GenerationRecord, HISTOGRAM_BINS, QUANTILES};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};
use support::python::{python, python_script};
use support::results_db::{
    database_of_another_run, generation_records, row_counts, stored_generations,
};

/// Runs that start pyabc processes take one at a time: each imports pyabc in three processes,
/// and on a small machine parallel runs would only make every time limit meaningless.
static HEAVY: Mutex<()> = Mutex::new(());

fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> PathBuf {
    crate_dir().join("tests/fixtures").join(name)
}

/// The runner under test, with its output collected by background threads.
struct Run {
    child: Child,
    cwd: tempfile::TempDir,
    lines: mpsc::Receiver<String>,
    stdout: Vec<String>,
    stderr: Arc<Mutex<String>>,
    status: Option<ExitStatus>,
}

impl Run {
    /// `abc-operator run MANIFEST ARGS`, in a fresh folder, in a process group of its own (as
    /// a shell runs a foreground job, so that a group SIGINT is the terminal's Ctrl-C).
    fn start(manifest: &Path, args: &[&str]) -> Run {
        Run::start_with(manifest, args, true)
    }

    fn start_with(manifest: &Path, args: &[&str], with_python: bool) -> Run {
        Run::start_with_env(manifest, args, with_python, &[])
    }

    /// With `env` on top of this process' environment (the children inherit it).
    fn start_with_env(
        manifest: &Path,
        args: &[&str],
        with_python: bool,
        env: &[(&str, &str)],
    ) -> Run {
        let cwd = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_abc-operator"));
        cmd.envs(env.iter().copied());
        cmd.arg("run")
            .arg(manifest)
            .args(args)
            .current_dir(cwd.path());
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.env_remove("ABC_PYTHON").env("RUST_LOG", "info");
        if with_python {
            cmd.env("ABC_PYTHON", python());
        }
        cmd.process_group(0);
        let mut child = cmd.spawn().expect("the abc-operator binary runs");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Run {
            child,
            cwd,
            lines,
            stdout: Vec::new(),
            stderr,
            status: None,
        }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn fail(&mut self, why: &str) -> ! {
        let _ = killpg(Pid::from_raw(self.pid()), Signal::SIGKILL);
        std::thread::sleep(Duration::from_millis(300));
        self.drain();
        panic!(
            "{why}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout.join("\n"),
            self.stderr()
        );
    }

    fn drain(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.stdout.push(line);
        }
    }

    /// The JSON events printed so far.
    fn events(&mut self) -> Vec<Value> {
        self.drain();
        self.stdout
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits for a JSON event matching `pred`.
    fn wait_event(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        let mut checked = 0;
        loop {
            self.drain();
            while checked < self.stdout.len() {
                let line = self.stdout[checked].clone();
                checked += 1;
                match serde_json::from_str::<Value>(&line) {
                    Ok(event) if pred(&event) => return event,
                    Ok(_) => {}
                    Err(_) => self.fail(&format!("stdout line is not JSON: {line}")),
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.status = Some(status);
                std::thread::sleep(Duration::from_millis(200));
                self.drain();
                if checked == self.stdout.len() {
                    self.fail(&format!("runner exited ({status}) before {what}"));
                }
                continue;
            }
            if Instant::now() > deadline {
                self.fail(&format!("no {what} within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the runner to exit; its exit code.
    fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.status {
                break status;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                self.fail(&format!("the runner did not exit within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        self.status = Some(status);
        // The reader threads finish with the pipes.
        std::thread::sleep(Duration::from_millis(300));
        self.drain();
        match status.code() {
            Some(code) => code,
            None => self.fail(&format!("the runner died: {status}")),
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if self.status.is_none() && self.child.try_wait().ok().flatten().is_none() {
            let _ = killpg(Pid::from_raw(self.pid()), Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// Alive and not a zombie.
fn alive(pid: i64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            stat.rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next())
                != Some("Z")
        }
        Err(_) => false,
    }
}

/// Processes whose command line starts with redis-server and names `port` (redis-server
/// shows `redis-server 127.0.0.1:PORT`).
fn redis_pids(port: u64) -> Vec<i64> {
    let needle = format!(":{port}");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i64>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            cmdline.starts_with("redis-server") && cmdline.contains(&needle)
        })
        .filter(|pid| alive(*pid))
        .collect()
}

/// Waits until none of `pids` is alive; the survivors otherwise.
fn survivors(pids: &[i64], within: Duration) -> Vec<i64> {
    let deadline = Instant::now() + within;
    loop {
        let left: Vec<i64> = pids.iter().copied().filter(|p| alive(*p)).collect();
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn by_event<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == kind).collect()
}

fn redis_port(events: &[Value]) -> u64 {
    by_event(events, "started")[0]["redis"]["port"]
        .as_u64()
        .unwrap()
}

/// Every pid the runner reported (workers, master) plus its redis-server.
fn all_pids(events: &[Value]) -> Vec<i64> {
    let mut pids: Vec<i64> = events
        .iter()
        .filter(|e| e["event"] == "worker_started" || e["event"] == "master_started")
        .filter_map(|e| e["pid"].as_i64())
        .collect();
    let redis = redis_pids(redis_port(events));
    assert_eq!(redis.len(), 1, "exactly one redis-server on the run's port");
    let reported = by_event(events, "started")[0]["redis"]["pid"].as_i64();
    assert_eq!(
        reported,
        Some(redis[0]),
        "the started event names redis-server's pid"
    );
    pids.extend(redis);
    pids
}

/// A progress event inside a generation with both workers in it and room before its end.
fn mid_generation(e: &Value) -> bool {
    e["event"] == "progress"
        && e["generation"].as_i64().is_some_and(|t| t >= 0)
        && e["in_generation"].as_i64() >= Some(2)
        && e["accepted"].as_i64() >= Some(2)
        && e["accepted"].as_i64().unwrap_or(0) + 8 < e["required"].as_i64().unwrap_or(0)
}

#[test]
fn gaussian_example_runs_to_completion() {
    let _heavy = heavy();
    let manifest = crate_dir().join("examples/gaussian/abcrun.yaml");
    let mut run = Run::start(&manifest, &["--run-dir", "run"]);
    let code = run.wait_exit(Duration::from_secs(300));
    let stdout = run.stdout.join("\n");
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{}", run.stderr());
    // The master's own summary reaches the terminal, between one line per generation.
    for expected in [
        "master | posterior summary",
        "weighted mean",
        "total evaluations",
        "master finished",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected:?} missing in:\n{stdout}"
        );
    }
    for t in 0..3 {
        let line = format!("generation {t}");
        assert!(
            run.stdout
                .iter()
                .any(|l| l.starts_with(&line) && l.contains("done")),
            "no finished line for {line} in:\n{stdout}"
        );
    }
    let run_dir = run.cwd.path().join("run");
    assert!(
        run_dir.join("results/gaussian.db").is_file(),
        "results in ABC_RESULTS_DIR"
    );
    // The last lines say how to open the database.
    let db = run_dir.join("results/gaussian.db").display().to_string();
    assert!(
        run.stdout.iter().any(|l| l
            == &format!(
                "database {db}: open it with pyabc.History(\"sqlite:///{db}\") or abc-server-flask {db}"
            )),
        "no line naming the database in:\n{stdout}"
    );
    assert!(
        run_dir.join("logs/master.log").is_file() && run_dir.join("logs/local-1.log").is_file()
    );
    assert!(
        !run_dir.join("redis.env").exists(),
        "no password file for a run with a master"
    );
    let port: u64 = stdout
        .split("redis 127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .expect("the first line names the redis port");
    assert!(
        redis_pids(port).is_empty(),
        "redis-server stopped at the end"
    );
}

/// The run's redis-server, left running at the end by `--keep-redis` so that a test can read
/// what the run wrote; shut down when dropped, also when the test fails before (every
/// redis-server of the run's port is killed).
struct KeptRedis {
    port: u64,
    conn: Option<redis::Connection>,
}

impl KeptRedis {
    /// Once the run has started its redis-server.
    fn of(run: &mut Run) -> KeptRedis {
        run.wait_event("the start", Duration::from_secs(120), |e| {
            e["event"] == "started"
        });
        KeptRedis {
            port: redis_port(&run.events()),
            conn: None,
        }
    }

    /// The run's generation records, read after its end through the connection file of its
    /// `redis_kept` event; each must parse.
    fn records(&mut self, run: &mut Run) -> Vec<GenerationRecord> {
        let events = run.events();
        let kept = by_event(&events, "redis_kept");
        let env_file = kept
            .first()
            .and_then(|e| e["env_file"].as_str())
            .unwrap_or_else(|| run.fail("no redis_kept event"));
        let text = std::fs::read_to_string(env_file).unwrap();
        let password = text
            .lines()
            .find_map(|l| l.strip_prefix("ABC_REDIS_PASSWORD="))
            .map(|v| v.trim_matches('\''))
            .expect("the connection file has the password");
        let url = format!("redis://:{password}@127.0.0.1:{}/", self.port);
        let conn = self.conn.insert(
            redis::Client::open(url)
                .unwrap()
                .get_connection()
                .expect("the kept redis-server answers"),
        );
        let texts: Vec<Vec<u8>> = redis::cmd("LRANGE")
            .arg(GENERATIONS)
            .arg(0)
            .arg(-1)
            .query(conn)
            .unwrap();
        texts
            .iter()
            .map(|text| {
                GenerationRecord::parse(text)
                    .unwrap_or_else(|err| panic!("{err}: {}", String::from_utf8_lossy(text)))
            })
            .collect()
    }
}

impl Drop for KeptRedis {
    fn drop(&mut self) {
        if let Some(conn) = &mut self.conn {
            let _: redis::RedisResult<()> = redis::cmd("SHUTDOWN").arg("NOSAVE").query(conn);
        }
        for pid in redis_pids(self.port) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
}

/// One generation as pyABC's master logs it at INFO: `t: N, eps: E.` and then
/// `Accepted: a / n = rate, ESS: ess.`
#[derive(Debug)]
struct LoggedGeneration {
    t: i64,
    epsilon: f64,
    accepted: i64,
    evaluations: i64,
    acceptance_rate: f64,
    ess: f64,
}

/// Every generation the master's log shows, in order.
fn logged_generations(log: &str) -> Vec<LoggedGeneration> {
    let number = |text: &str| -> f64 {
        let text = text.trim().trim_end_matches('.');
        text.parse()
            .unwrap_or_else(|_| panic!("a number in pyABC's log: {text:?}"))
    };
    let mut out = Vec::new();
    let mut current: Option<(i64, f64)> = None;
    for line in log.lines() {
        if let Some(rest) = line.split_once("INFO: t: ").map(|(_, r)| r) {
            let (t, eps) = rest.split_once(", eps: ").expect("t: N, eps: E");
            current = Some((t.parse().unwrap(), number(eps)));
        } else if let Some(rest) = line.split_once("INFO: Accepted: ").map(|(_, r)| r) {
            let (t, epsilon) = current.take().expect("an Accepted line after its t line");
            let (accepted, rest) = rest.split_once(" / ").unwrap();
            let (evaluations, rest) = rest.split_once(" = ").unwrap();
            let (rate, ess) = rest.split_once(", ESS: ").unwrap();
            out.push(LoggedGeneration {
                t,
                epsilon,
                accepted: accepted.parse().unwrap(),
                evaluations: evaluations.parse().unwrap(),
                acceptance_rate: number(rate),
                ess: number(ess),
            });
        }
    }
    out
}

/// `recorded` is `logged` as pyABC prints it: in its exponent format with `digits` digits
/// after the point (`{:.8e}`, `{:.4e}`), so within half a unit of the last digit printed.
fn as_printed(recorded: Option<f64>, logged: f64, digits: i32) -> bool {
    recorded.is_some_and(|r| (r - logged).abs() <= 0.51 * 10f64.powi(-digits) * logged.abs())
}

/// Holds for every record: its parameter summaries are weighted distributions.
fn assert_summaries_are_distributions(record: &GenerationRecord) {
    for p in &record.parameters {
        let h = &p.histogram;
        assert_eq!(h.weights.len(), HISTOGRAM_BINS, "{record:?}");
        let total: f64 = h.weights.iter().sum();
        assert!(
            (total - 1.0).abs() < 1e-9,
            "histogram weights sum to 1: {record:?}"
        );
        assert!(
            h.weights.iter().all(|w| *w >= 0.0) && h.low < h.high,
            "{record:?}"
        );
        let q: Vec<f64> = p.quantiles.iter().map(|q| q.unwrap()).collect();
        assert_eq!(q.len(), QUANTILES.len());
        assert!(
            q.windows(2).all(|w| w[0] <= w[1]),
            "quantiles in order: {q:?}"
        );
        assert!(h.low <= q[0] && q[q.len() - 1] <= h.high, "{record:?}");
        let mean = p.mean.unwrap();
        assert!(
            h.low <= mean && mean <= h.high && p.sd.unwrap() > 0.0,
            "{record:?}"
        );
    }
}

/// After a run that lost its master or its Redis: the list again holds every stored
/// generation exactly once, in order, each record as the module computes it from the
/// database (identical in every field, also for the generations recorded live).
fn assert_records_of_every_stored_generation(kept: &mut KeptRedis, run: &mut Run, db: &Path) {
    let records = kept.records(run);
    let ts: Vec<i64> = records.iter().map(|r| r.t).collect();
    assert_eq!(
        ts,
        (0..6).collect::<Vec<_>>(),
        "every generation once, in order"
    );
    assert_eq!(
        records,
        generation_records(db),
        "each record as the database gives it"
    );
    for (record, (t, evaluations)) in records.iter().zip(stored_generations(db)) {
        assert_eq!((record.t, record.evaluations), (t, evaluations));
        assert_summaries_are_distributions(record);
    }
}

#[test]
fn every_stored_generation_is_recorded_as_the_master_logs_it() {
    let _heavy = heavy();
    let manifest = crate_dir().join("examples/gaussian/abcrun.yaml");
    let mut run = Run::start(&manifest, &["--json", "--run-dir", "run", "--keep-redis"]);
    let mut kept = KeptRedis::of(&mut run);
    let code = run.wait_exit(Duration::from_secs(300));
    assert_eq!(code, 0, "stderr:\n{}", run.stderr());
    let records = kept.records(&mut run);
    let log = std::fs::read_to_string(run.cwd.path().join("run/logs/master.log")).unwrap();
    let logged = logged_generations(&log);
    let db = run.cwd.path().join("run/results/gaussian.db");
    let stored = stored_generations(&db);
    assert!(
        logged.len() >= 2,
        "pyABC logs its generations at INFO:\n{log}"
    );
    assert_eq!(
        records.len(),
        logged.len(),
        "one record per generation:\n{log}"
    );
    assert_eq!(
        records.len(),
        stored.len(),
        "one record per stored generation"
    );
    for (record, logged) in records.iter().zip(&logged) {
        let what = format!("{record:?}\nagainst the log's {logged:?}");
        assert_eq!(record.t, logged.t, "{what}");
        assert!(as_printed(record.epsilon, logged.epsilon, 8), "{what}");
        assert_eq!(
            (record.accepted, record.evaluations),
            (logged.accepted, logged.evaluations),
            "{what}"
        );
        assert!(
            as_printed(record.acceptance_rate, logged.acceptance_rate, 4),
            "{what}"
        );
        assert!(as_printed(record.ess, logged.ess, 4), "{what}");
        assert!(record.wall_time_seconds.is_some_and(|s| s > 0.0), "{what}");
        assert!(record.time.ends_with("+00:00"), "UTC, RFC 3339: {what}");
        assert_eq!(record.parameters_total, 1, "{what}");
        assert_eq!(record.parameters[0].name, "mu", "{what}");
        assert!(record.model_probabilities.is_empty(), "one model: {what}");
        assert_summaries_are_distributions(record);
    }
    assert!(
        records.windows(2).all(|w| w[0].time <= w[1].time),
        "stored in order"
    );
    // The example's posterior of mu is close to N(2.0, 0.5^2).
    let last = &records[records.len() - 1].parameters[0];
    let (mean, sd) = (last.mean.unwrap(), last.sd.unwrap());
    // Said with every generation's epsilon, acceptances and mu, and the master's log: a mean
    // far off (0.62 once in CI) must say how the run got there.
    let summary: Vec<String> = records
        .iter()
        .map(|r| {
            format!(
                "t {} epsilon {:?} accepted {}/{} mu mean {:?} sd {:?}",
                r.t, r.epsilon, r.accepted, r.evaluations, r.parameters[0].mean, r.parameters[0].sd
            )
        })
        .collect();
    assert!(
        (mean - 2.0).abs() < 0.3 && (0.2..1.0).contains(&sd),
        "posterior mean {mean}, sd {sd}:\n{}\n{log}",
        summary.join("\n")
    );
    assert_eq!(
        records,
        generation_records(&db),
        "as the database gives them"
    );
}

/// The Gaussian example with exactly six generations, returned once generation 3 is sampled.
fn six_generations_sampling_generation_3(args: &[&str]) -> Run {
    let manifest = crate_dir().join("examples/gaussian/abcrun.yaml");
    let args = [&["--json", "--run-dir", "run"], args].concat();
    let mut run = Run::start_with_env(
        &manifest,
        &args,
        true,
        &[
            ("GAUSSIAN_GENERATIONS", "6"),
            ("GAUSSIAN_MINIMUM_EPSILON", "0"),
            ("GAUSSIAN_MODEL_SECONDS", "0.002"),
        ],
    );
    run.wait_event("generation 3", Duration::from_secs(240), |e| {
        e["event"] == "progress" && e["generation"].as_i64() >= Some(3)
    });
    run
}

/// The database holds generations 0..5 once each, and those stored `before` a kill unchanged.
fn assert_six_generations_keeping(db: &Path, before: &[(i64, i64)]) {
    let after = stored_generations(db);
    assert_eq!(
        after.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
        (0..6).collect::<Vec<_>>(),
        "six generations, none twice"
    );
    assert_eq!(
        after[..before.len()],
        before[..],
        "the generations stored before the kill were not sampled again"
    );
}

#[test]
fn a_killed_master_is_started_again_and_resumes() {
    let _heavy = heavy();
    let mut run = six_generations_sampling_generation_3(&["--keep-redis"]);
    let mut kept = KeptRedis::of(&mut run);
    let events = run.events();
    let master = by_event(&events, "master_started")[0]["pid"]
        .as_i64()
        .unwrap();
    // As the OOM killer would.
    kill(Pid::from_raw(master as i32), Signal::SIGKILL).unwrap();
    let db = run.cwd.path().join("run/results/gaussian.db");
    let before = stored_generations(&db);

    let restarted = run.wait_event("the master's restart", Duration::from_secs(30), |e| {
        e["event"] == "master_restarted"
    });
    assert_eq!(
        (restarted["signal"].as_i64(), restarted["retry"].as_i64()),
        (Some(9), Some(1))
    );
    let resumed = run.wait_event("the resume", Duration::from_secs(60), |e| {
        e["event"] == "master_resumed"
    });
    assert!(
        resumed["from_generation"].as_i64() >= Some(3),
        "resumed after the stored generations: {resumed}"
    );
    let code = run.wait_exit(Duration::from_secs(300));
    assert_eq!(code, 0, "stderr:\n{}", run.stderr());
    assert_six_generations_keeping(&db, &before);
    assert_records_of_every_stored_generation(&mut kept, &mut run, &db);
}

#[test]
fn a_killed_redis_is_started_again_and_the_master_resumes() {
    let _heavy = heavy();
    let mut run = six_generations_sampling_generation_3(&[]);
    let events = run.events();
    let port = redis_port(&events);
    let redis = by_event(&events, "started")[0]["redis"]["pid"]
        .as_i64()
        .unwrap();
    // As the OOM killer would.
    kill(Pid::from_raw(redis as i32), Signal::SIGKILL).unwrap();
    let db = run.cwd.path().join("run/results/gaussian.db");
    let before = stored_generations(&db);

    let restarted = run.wait_event("the Redis restart", Duration::from_secs(30), |e| {
        e["event"] == "redis_restarted"
    });
    assert_eq!(restarted["port"].as_u64(), Some(port), "the same port");
    assert_eq!(restarted["restarting_master"], true);
    let resumed = run.wait_event("the resume", Duration::from_secs(60), |e| {
        e["event"] == "master_resumed"
    });
    assert!(
        resumed["from_generation"].as_i64() >= Some(before.len() as i64),
        "resumed after the stored generations: {resumed}"
    );
    let code = run.wait_exit(Duration::from_secs(300));
    assert_eq!(code, 0, "stderr:\n{}", run.stderr());
    let events = run.events();
    assert!(
        by_event(&events, "master_restarted").is_empty(),
        "not a master failure: nothing counted against backoffLimit"
    );
    assert_six_generations_keeping(&db, &before);
    assert!(
        redis_pids(port).is_empty(),
        "redis-server stopped at the end"
    );
}

/// A `redis-server` first on PATH that runs the real one once, and fails every later start
/// the way redis-server reports it in its log.
fn redis_server_that_starts_once(dir: &Path) -> String {
    let real = std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .map(|d| d.join("redis-server"))
        .find(|p| p.is_file())
        .expect("redis-server on PATH");
    let script = dir.join("redis-server");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             if [ -e \"$0.started\" ]; then\n\
             \x20 log=$(sed -n 's/^logfile \"\\(.*\\)\"$/\\1/p' \"$1\")\n\
             \x20 echo 'Failed listening on port: Address already in use' >> \"$log\"\n\
             \x20 exit 1\n\
             fi\n\
             touch \"$0.started\"\n\
             exec {} \"$@\"\n",
            real.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = std::env::var_os("PATH").unwrap();
    let mut dirs = vec![dir.to_path_buf()];
    dirs.extend(std::env::split_paths(&path));
    std::env::join_paths(dirs).unwrap().into_string().unwrap()
}

#[test]
fn a_redis_that_cannot_be_started_again_fails_the_run_naming_the_cause() {
    let _heavy = heavy();
    let bin = tempfile::tempdir().unwrap();
    let path = redis_server_that_starts_once(bin.path());
    let mut run = Run::start_with_env(
        &fixture("local_nomaster.yaml"),
        &["--json", "--run-dir", "run"],
        true,
        &[("PATH", &path)],
    );
    let started = run.wait_event("the start", Duration::from_secs(60), |e| {
        e["event"] == "started"
    });
    let port = started["redis"]["port"].as_u64().unwrap();
    let redis = started["redis"]["pid"].as_i64().unwrap();
    kill(Pid::from_raw(redis as i32), Signal::SIGKILL).unwrap();
    let code = run.wait_exit(Duration::from_secs(60));
    assert_eq!(code, 2, "stdout:\n{}", run.stdout.join("\n"));
    let stderr = run.stderr();
    assert!(
        stderr.contains(&format!("cannot be started again on 127.0.0.1:{port}"))
            && stderr.contains("already in use"),
        "{stderr}"
    );
}

#[test]
fn a_redis_that_keeps_dying_fails_the_run_after_three_restarts() {
    let _heavy = heavy();
    let mut run = Run::start(
        &fixture("local_nomaster.yaml"),
        &["--json", "--run-dir", "run"],
    );
    let started = run.wait_event("the start", Duration::from_secs(60), |e| {
        e["event"] == "started"
    });
    let port = started["redis"]["port"].as_u64().unwrap();
    let mut redis = started["redis"]["pid"].as_i64().unwrap();
    for restart in 1..=3 {
        kill(Pid::from_raw(redis as i32), Signal::SIGKILL).unwrap();
        let restarted = run.wait_event("the Redis restart", Duration::from_secs(30), |e| {
            e["event"] == "redis_restarted" && e["restarts"] == restart
        });
        redis = restarted["pid"].as_i64().unwrap();
    }
    kill(Pid::from_raw(redis as i32), Signal::SIGKILL).unwrap();
    let code = run.wait_exit(Duration::from_secs(60));
    assert_eq!(code, 2, "stdout:\n{}", run.stdout.join("\n"));
    let stderr = run.stderr();
    assert!(
        stderr.contains(&format!(
            "redis-server on 127.0.0.1:{port} died again (signal: 9"
        )) && stderr.contains("after 3 restarts"),
        "{stderr}"
    );
    assert!(redis_pids(port).is_empty(), "nothing left on the port");
}

#[test]
fn killed_worker_is_repaired_and_the_run_completes() {
    let _heavy = heavy();
    let mut run = Run::start(
        &fixture("local_slow/abcrun.yaml"),
        &["--json", "--run-dir", "run"],
    );
    run.wait_event(
        "a generation with both workers in it",
        Duration::from_secs(180),
        mid_generation,
    );
    let events = run.events();
    let victim = by_event(&events, "worker_started")
        .into_iter()
        .rev()
        .find(|e| e["slot"] == 1)
        .map(|e| {
            (
                e["worker"].as_str().unwrap().to_string(),
                e["pid"].as_i64().unwrap(),
            )
        })
        .unwrap();
    kill(Pid::from_raw(victim.1 as i32), Signal::SIGKILL).unwrap();

    let exited = run.wait_event("the lost worker's exit", Duration::from_secs(30), |e| {
        e["event"] == "worker_exited" && e["pid"].as_i64() == Some(victim.1)
    });
    assert_eq!(exited["lost"], true);
    assert_eq!(exited["exit"], "killed by SIGKILL");
    let repaired = run.wait_event("the repair", Duration::from_secs(10), |e| {
        e["event"] == "repaired" || e["event"] == "lost_worker"
    });
    assert_eq!(
        repaired["event"], "repaired",
        "a worker killed inside a generation owes something: {repaired}"
    );
    assert_eq!(repaired["worker"], victim.0.as_str());
    assert_eq!(repaired["repair"]["left_generation"], true, "{repaired}");
    assert_eq!(
        repaired["lost_workers"], 1,
        "counted by the repair script in Redis: {repaired}"
    );
    run.wait_event("the replacement worker", Duration::from_secs(10), |e| {
        e["event"] == "worker_started" && e["worker"] == format!("{}-r2", victim.0).as_str()
    });

    let code = run.wait_exit(Duration::from_secs(240));
    assert_eq!(
        code,
        0,
        "the run completes after the repair; stderr:\n{}",
        run.stderr()
    );
    let events = run.events();
    let finished = by_event(&events, "finished");
    assert_eq!(finished.len(), 1);
    assert_eq!(finished[0]["exit_code"], 0);
    assert_eq!(finished[0]["lost_workers"], 1, "{}", finished[0]);
    assert!(
        run.stderr().contains("master | slow done: 3 generations"),
        "{}",
        run.stderr()
    );
    // The repair's warning is logged to stderr, which is no terminal here: plain text only.
    let stderr = run.stderr();
    assert!(
        stderr.contains("WARN") && !stderr.contains('\x1b'),
        "a warning without colour codes expected on stderr:\n{stderr}"
    );
    assert!(
        events
            .iter()
            .all(|e| e["event"] != "repaired" || e["worker"] == victim.0.as_str()),
        "only the killed worker needed a repair"
    );
}

#[test]
fn a_hung_worker_is_killed_repaired_and_replaced() {
    let _heavy = heavy();
    let mut run = Run::start(
        &fixture("local_slow/hung.yaml"),
        &["--json", "--run-dir", "run"],
    );
    run.wait_event(
        "a generation with both workers in it",
        Duration::from_secs(180),
        mid_generation,
    );
    let events = run.events();
    let victim = by_event(&events, "worker_started")
        .into_iter()
        .rev()
        .find(|e| e["slot"] == 2)
        .map(|e| {
            (
                e["worker"].as_str().unwrap().to_string(),
                e["pid"].as_i64().unwrap(),
            )
        })
        .unwrap();
    // Stopped, the process lives on but its ledger heartbeat stops.
    kill(Pid::from_raw(victim.1 as i32), Signal::SIGSTOP).unwrap();
    let exited = run.wait_event("the hung worker killed", Duration::from_secs(30), |e| {
        e["event"] == "worker_exited" && e["pid"].as_i64() == Some(victim.1)
    });
    assert_eq!(exited["exit"], "killed by SIGKILL", "{exited}");
    let repaired = run.wait_event("the repair", Duration::from_secs(10), |e| {
        e["event"] == "repaired" || e["event"] == "lost_worker"
    });
    assert_eq!(repaired["worker"], victim.0.as_str(), "{repaired}");
    let code = run.wait_exit(Duration::from_secs(240));
    assert_eq!(code, 0, "stderr:\n{}", run.stderr());
    assert!(
        run.stderr().contains("stopped its heartbeat"),
        "the kill is logged: {}",
        run.stderr()
    );
}

/// A model that holds Python's GIL for twice the heartbeat timeout, evaluation after
/// evaluation (a compiled simulator bound without releasing it): its workers are busy, not
/// lost. None is killed, repaired or restarted, and the run completes.
#[test]
fn a_model_holding_the_gil_longer_than_the_heartbeat_timeout_is_busy_not_lost() {
    let _heavy = heavy();
    let mut run = Run::start(
        &fixture("local_slow/gil.yaml"),
        &["--json", "--run-dir", "run"],
    );
    let code = run.wait_exit(Duration::from_secs(300));
    assert_eq!(code, 0, "stderr:\n{}", run.stderr());
    let events = run.events();
    for kind in ["repaired", "lost_worker"] {
        assert!(
            by_event(&events, kind).is_empty(),
            "no {kind}: {:?}",
            by_event(&events, kind)
        );
    }
    let exits = by_event(&events, "worker_exited");
    assert!(
        exits.len() == 2 && exits.iter().all(|e| e["exit"] == "exited cleanly"),
        "the two workers exited cleanly at the end, none before: {exits:?}"
    );
    assert!(
        !run.stderr().contains("stopped its heartbeat"),
        "{}",
        run.stderr()
    );
}

#[test]
fn ctrl_c_stops_workers_gracefully_and_leaves_nothing_behind() {
    let _heavy = heavy();
    let mut run = Run::start(
        &fixture("local_slow/abcrun.yaml"),
        &["--json", "--run-dir", "run"],
    );
    run.wait_event(
        "a generation with both workers in it",
        Duration::from_secs(180),
        mid_generation,
    );
    let events = run.events();
    let pids = all_pids(&events);
    assert_eq!(
        pids.len(),
        4,
        "two workers, the master and redis-server: {pids:?}"
    );

    for pid in &pids {
        // Otherwise the terminal's SIGINT would hit it directly, before the runner stops the
        // workers (which need Redis to leave their generation cleanly).
        let group = nix::unistd::getpgid(Some(Pid::from_raw(*pid as i32))).unwrap();
        assert_ne!(
            group.as_raw(),
            run.pid(),
            "process {pid} is in the runner's process group"
        );
    }
    // Ctrl-C in a terminal: SIGINT to the whole foreground process group.
    killpg(Pid::from_raw(run.pid()), Signal::SIGINT).unwrap();
    let code = run.wait_exit(Duration::from_secs(60));
    assert_eq!(code, 130, "stderr:\n{}", run.stderr());
    assert_eq!(
        survivors(&pids, Duration::from_secs(5)),
        Vec::<i64>::new(),
        "processes left behind"
    );
    let events = run.events();
    let exits = by_event(&events, "worker_exited");
    assert_eq!(exits.len(), 2, "{exits:?}");
    for exit in exits {
        // Workers stop before Redis and the master: they leave their generation themselves.
        assert_eq!(
            exit["lost"],
            false,
            "worker stopped gracefully: {exit}\nstderr:\n{}",
            run.stderr()
        );
    }
    assert!(by_event(&events, "repaired").is_empty());
}

#[test]
fn a_killed_runner_takes_its_processes_with_it() {
    let _heavy = heavy();
    let mut run = Run::start(
        &fixture("local_slow/abcrun.yaml"),
        &["--json", "--run-dir", "run"],
    );
    run.wait_event(
        "the master and both workers",
        Duration::from_secs(120),
        |e| e["event"] == "master_started",
    );
    let events = run.events();
    let pids = all_pids(&events);
    kill(Pid::from_raw(run.pid()), Signal::SIGKILL).unwrap();
    run.wait_exit_by_signal();
    let left = survivors(&pids, Duration::from_secs(10));
    for pid in &left {
        let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
    }
    assert_eq!(left, Vec::<i64>::new(), "processes outlived the runner");
}

impl Run {
    fn wait_exit_by_signal(&mut self) {
        let status = self.child.wait().unwrap();
        self.status = Some(status);
    }
}

#[test]
fn without_a_master_workers_wait_until_ctrl_c() {
    let _heavy = heavy();
    let mut run = Run::start(
        &fixture("local_nomaster.yaml"),
        &["--json", "--run-dir", "run"],
    );
    let waiting = run.wait_event("the connection file", Duration::from_secs(60), |e| {
        e["event"] == "waiting_for_master"
    });
    let env_file = PathBuf::from(waiting["env_file"].as_str().unwrap());
    let mode = std::fs::metadata(&env_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the connection file holds the password");
    let text = std::fs::read_to_string(&env_file).unwrap();
    let var = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
            .map(|v| v.trim_matches('\'').to_string())
            .unwrap_or_else(|| panic!("the connection file has {name}"))
    };
    let password = var("ABC_REDIS_PASSWORD");
    assert!(password.len() >= 16);
    for var in ["ABC_REDIS_HOST=", "ABC_REDIS_PORT=", "ABC_RESULTS_DIR="] {
        assert!(text.contains(var), "{var} in {text}");
    }
    // Both workers' start events may trail the connection file's.
    let deadline = Instant::now() + Duration::from_secs(30);
    let events = loop {
        let events = run.events();
        if by_event(&events, "worker_started").len() >= 2 || Instant::now() > deadline {
            break events;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let pids = all_pids(&events);
    assert_eq!(pids.len(), 3, "two workers and redis-server");
    // The workers' connections (2 each) come over the server's Unix socket, which only we
    // can reach: less CPU per round trip than loopback TCP.
    let port = var("ABC_REDIS_PORT");
    let mut admin = redis::Client::open(format!("redis://:{password}@127.0.0.1:{port}/"))
        .unwrap()
        .get_connection()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let sockets = loop {
        let clients: String = redis::cmd("CLIENT").arg("LIST").query(&mut admin).unwrap();
        let sockets: Vec<String> = clients
            .lines()
            .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("laddr=/")))
            .map(|addr| format!("/{}", addr.rsplit_once(':').unwrap().0))
            .collect();
        if sockets.len() >= 4 || Instant::now() > deadline {
            break sockets;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(sockets.len(), 4, "the workers' connections over the socket");
    let socket = PathBuf::from(&sockets[0]);
    for (path, what) in [
        (socket.as_path(), "socket"),
        (socket.parent().unwrap(), "its folder"),
    ] {
        let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "the {what}: {}", path.display());
    }
    // Workers keep running until Ctrl-C.
    std::thread::sleep(Duration::from_secs(2));
    assert!(pids.iter().all(|p| alive(*p)));

    killpg(Pid::from_raw(run.pid()), Signal::SIGINT).unwrap();
    let code = run.wait_exit(Duration::from_secs(60));
    assert_eq!(code, 0, "stderr:\n{}", run.stderr());
    assert_eq!(survivors(&pids, Duration::from_secs(5)), Vec::<i64>::new());
    assert!(
        !env_file.exists(),
        "the connection file goes with the server"
    );
    assert!(
        !socket.parent().unwrap().exists(),
        "the socket's folder goes with the server"
    );
    let everything = format!("{}\n{}", run.stdout.join("\n"), run.stderr());
    assert!(
        !everything.contains(&password),
        "the password is never printed"
    );
}

/// Nothing was started: no run folder, no progress, no events.
fn assert_started_nothing(run: &mut Run) {
    assert!(run.stdout.is_empty(), "stdout: {:?}", run.stdout);
    let entries: Vec<_> = std::fs::read_dir(run.cwd.path()).unwrap().collect();
    assert!(entries.is_empty(), "the runner created {entries:?}");
}

#[test]
fn an_invalid_manifest_exits_2_and_starts_nothing() {
    let mut run = Run::start_with(&fixture("local_invalid.yaml"), &["--json"], false);
    let code = run.wait_exit(Duration::from_secs(20));
    assert_eq!(code, 2);
    let stderr = run.stderr();
    assert!(
        stderr.contains("local_invalid.yaml") && stderr.contains("spec.workers.runtime"),
        "{stderr}"
    );
    assert!(
        stderr.contains("\"abc\"") && stderr.contains("30s, 10m"),
        "says what is valid: {stderr}"
    );
    assert_started_nothing(&mut run);
}

#[test]
fn a_missing_python_exits_2_and_starts_nothing() {
    let manifest = crate_dir().join("examples/gaussian/abcrun.yaml");
    let mut run = Run::start_with(&manifest, &["--python", "/nonexistent/python3"], false);
    let code = run.wait_exit(Duration::from_secs(20));
    assert_eq!(code, 2);
    let stderr = run.stderr();
    for expected in [
        "/nonexistent/python3",
        "--python",
        "ABC_PYTHON",
        "pip install",
    ] {
        assert!(
            stderr.contains(expected),
            "{expected:?} missing in: {stderr}"
        );
    }
    assert_started_nothing(&mut run);
}

#[test]
fn workers_that_keep_crashing_make_the_run_give_up() {
    let _heavy = heavy();
    let mut run = Run::start(
        &fixture("local_crash/abcrun.yaml"),
        &["--json", "--run-dir", "run"],
    );
    let code = run.wait_exit(Duration::from_secs(90));
    assert_eq!(code, 2);
    let stderr = run.stderr();
    assert!(
        stderr.contains("worker local-1-r5 failed 5 times in a row"),
        "{stderr}"
    );
    assert!(
        stderr.contains("boom: the model cannot be imported"),
        "the log's tail is shown: {stderr}"
    );
    let events = run.events();
    let starts = by_event(&events, "worker_started");
    assert_eq!(
        starts.len(),
        5,
        "restarted after each fast failure, then gave up"
    );
    assert!(
        redis_pids(redis_port(&events)).is_empty(),
        "redis-server stopped"
    );
}

#[test]
fn a_database_of_other_observed_data_is_refused_and_left_unchanged() {
    let _heavy = heavy();
    let run_dir = tempfile::tempdir().unwrap();
    let db = run_dir.path().join("results/gaussian.db");
    database_of_another_run(&db);
    let (generations, rows) = (stored_generations(&db), row_counts(&db));
    assert_eq!(generations.len(), 2);

    let manifest = crate_dir().join("examples/gaussian/abcrun.yaml");
    let run_dir_arg = run_dir.path().to_str().unwrap();
    let mut run = Run::start(&manifest, &["--json", "--run-dir", run_dir_arg]);
    let refused = run.wait_event("the refused start", Duration::from_secs(120), |e| {
        e["event"] == "master_start"
    });
    assert_eq!(refused["outcome"], "refused", "{refused}");
    let cause = refused["cause"].as_str().unwrap();
    assert!(
        cause.contains("gaussian.db") && cause.contains("other observed data"),
        "the cause names the database and what is wrong: {cause}"
    );
    let code = run.wait_exit(Duration::from_secs(60));
    assert_ne!(code, 0, "the run fails");
    let stderr = run.stderr();
    assert!(
        stderr.contains("ResumeError") && stderr.contains("other observed data"),
        "the master's log tail names the cause: {stderr}"
    );
    assert_eq!(
        (stored_generations(&db), row_counts(&db)),
        (generations, rows),
        "nothing in the database was written"
    );
}

#[test]
fn a_failing_model_is_a_counted_failure_by_default() {
    let _heavy = heavy();
    let mut run = Run::start(
        &fixture("local_failing_model/catch.yaml"),
        &["--json", "--run-dir", "run"],
    );
    let code = run.wait_exit(Duration::from_secs(180));
    assert_eq!(code, 0, "stderr:\n{}", run.stderr());
    let events = run.events();
    assert!(
        by_event(&events, "progress")
            .iter()
            .any(|e| e["failures"].as_i64() > Some(0)),
        "the model's exceptions were counted as failed evaluations"
    );
    assert_eq!(
        by_event(&events, "worker_started").len(),
        1,
        "the worker ran through every exception"
    );
}

#[test]
fn with_catch_false_a_failing_model_stops_the_worker() {
    let _heavy = heavy();
    let mut run = Run::start(
        &fixture("local_failing_model/no-catch.yaml"),
        &["--json", "--run-dir", "run"],
    );
    let code = run.wait_exit(Duration::from_secs(180));
    assert_eq!(code, 2, "the run gives up on a worker that keeps stopping");
    let stderr = run.stderr();
    assert!(
        stderr.contains("failed 5 times in a row")
            && stderr.contains("ValueError: the model failed on purpose"),
        "each start stopped on the model's exception: {stderr}"
    );
}

/// `(t, particles)` of every generation stored in a pyABC database.
fn stored_populations(db: &Path) -> Vec<(i64, i64)> {
    let out = python_script(
        "import json, sqlite3, sys; c = sqlite3.connect(sys.argv[1]); \
         print(json.dumps(c.execute('select p.t, count(pa.id) from populations p \
         join models m on m.population_id = p.id join particles pa on pa.model_id = m.id \
         where p.t >= 0 group by p.id order by p.t').fetchall()))",
        &[db],
    );
    serde_json::from_slice(&out).unwrap()
}

/// Random worker kills through a six-generation run, with the master killed once and the
/// redis-server once among them: the run completes with exactly six generations of 200
/// particles, none stored twice. `ABC_CHAOS_SEED` replays the choice of workers.
#[test]
fn chaos_kills_of_workers_the_master_and_redis_cost_no_generation_twice() {
    let _heavy = heavy();
    let seed: u64 = std::env::var("ABC_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("ABC_CHAOS_SEED={seed}");
    let mut state = seed;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        state >> 33
    };
    let manifest = crate_dir().join("examples/gaussian/abcrun.yaml");
    // --keep-redis: the generation records are read at the end.
    let mut run = Run::start_with_env(
        &manifest,
        &["--json", "--run-dir", "run", "--keep-redis"],
        true,
        &[
            ("GAUSSIAN_GENERATIONS", "6"),
            ("GAUSSIAN_MINIMUM_EPSILON", "0"),
            ("GAUSSIAN_MODEL_SECONDS", "0.002"),
        ],
    );
    let mut kept = KeptRedis::of(&mut run);
    let kill_a_worker = |run: &mut Run, next: &mut dyn FnMut() -> u64| {
        run.wait_event("a generation in progress", Duration::from_secs(120), |e| {
            e["event"] == "progress" && e["generation"].as_i64() >= Some(0)
        });
        let events = run.events();
        let live: Vec<i64> = by_event(&events, "worker_started")
            .iter()
            .filter_map(|e| e["pid"].as_i64())
            .filter(|pid| alive(*pid))
            .collect();
        if let Some(pid) = live.get(next() as usize % live.len().max(1)) {
            let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
        }
    };
    let generation =
        |t: i64| move |e: &Value| e["event"] == "progress" && e["generation"].as_i64() >= Some(t);
    let limit = Duration::from_secs(120);

    run.wait_event("generation 1", limit, generation(1));
    kill_a_worker(&mut run, &mut next);
    run.wait_event("generation 2", limit, generation(2));
    let master = by_event(&run.events(), "master_started")[0]["pid"]
        .as_i64()
        .unwrap();
    kill(Pid::from_raw(master as i32), Signal::SIGKILL).unwrap();
    kill_a_worker(&mut run, &mut next);
    run.wait_event("the first resume", limit, |e| {
        e["event"] == "master_resumed"
    });
    kill_a_worker(&mut run, &mut next);
    run.wait_event("generation 4", limit, generation(4));
    let redis = by_event(&run.events(), "started")[0]["redis"]["pid"]
        .as_i64()
        .unwrap();
    kill(Pid::from_raw(redis as i32), Signal::SIGKILL).unwrap();
    run.wait_event("the Redis restart", limit, |e| {
        e["event"] == "redis_restarted"
    });
    kill_a_worker(&mut run, &mut next);

    let code = run.wait_exit(Duration::from_secs(300));
    assert_eq!(code, 0, "ABC_CHAOS_SEED={seed}; stderr:\n{}", run.stderr());
    let events = run.events();
    assert_eq!(
        (
            by_event(&events, "master_restarted").len(),
            by_event(&events, "redis_restarted").len(),
            by_event(&events, "master_resumed").len(),
        ),
        (1, 1, 2),
        "one master kill and one Redis kill, each resumed (ABC_CHAOS_SEED={seed})"
    );
    let db = run.cwd.path().join("run/results/gaussian.db");
    assert_eq!(
        stored_populations(&db),
        (0..6).map(|t| (t, 200)).collect::<Vec<_>>(),
        "six generations of 200 particles, none twice (ABC_CHAOS_SEED={seed})"
    );
    // The Redis kill lost the records of the generations before it: the resumed master
    // wrote them again from the database.
    assert_records_of_every_stored_generation(&mut kept, &mut run, &db);
}

/// Plotted generations in a rendered page: one epsilon point per stored generation.
fn epsilon_points(dom: &str) -> usize {
    dom.matches("data-epsilon=").count()
}

/// `abc-operator run` serves the run's page while it samples (every stored generation's epsilon
/// plotted, as Chromium renders it) and leaves the whole run's page in the run folder, which
/// a browser opens offline after the runner is gone.
#[test]
fn the_runs_page_is_live_while_it_samples_and_left_in_the_run_folder() {
    let _heavy = heavy();
    let mut run = six_generations_sampling_generation_3(&[]);
    let url = run
        .events()
        .iter()
        .find(|e| e["event"] == "started")
        .and_then(|e| e["dashboard"].as_str().map(str::to_string))
        .expect("the started event names the page's URL");
    let live = support::browser::render(&url, "local-run-page-live", 1280, 2000);
    assert!(live.dom.contains("gaussian"), "the page names its run");
    let shown = epsilon_points(&live.dom);
    assert!(
        (3..=6).contains(&shown),
        "generations 0..2 at least are stored while generation 3 samples: {shown} plotted"
    );
    assert_eq!(
        run.wait_exit(Duration::from_secs(300)),
        0,
        "{}",
        run.stderr()
    );
    let recorded = by_event(&run.events(), "generation_done")
        .iter()
        .filter(|e| e["epsilon"].is_number())
        .count();
    assert_eq!(recorded, 6, "every generation's line has its epsilon");
    let file = run.cwd.path().join("run/dashboard.html");
    let page = support::browser::render(
        &format!("file://{}", file.display()),
        "local-run-page-final",
        1280,
        2000,
    );
    assert_eq!(epsilon_points(&page.dom), 6, "the whole run, offline");
    assert!(
        page.dom.contains("Succeeded"),
        "the page says how the run ended"
    );
}
