//! Chaos runs: real pyabc 0.13.0 masters and workers (through the shipped entrypoint) on a
//! real redis-server, while random workers are SIGKILLed again and again, replaced, and
//! repaired with the product's own `protocol::repair_lost_worker`.
//!
//! What a run proves: it completes; every generation in pyABC's history has exactly the
//! population size; no pyABC counter is ever negative, and the ledgers agree with n_worker,
//! in every snapshot a background task takes during the run; each victim is repaired by
//! exactly one of two racing repairs (two controllers), a third call is a no-op; a repair
//! corrects something exactly when the victim died owing something (its ledger was not idle),
//! and the lost-worker count the repair script keeps in Redis equals those repairs.
//!
//! Randomness (victims, pauses) comes from one seed, printed at the start (so with a failure)
//! and taken from `ABC_CHAOS_SEED` when set. Timing still varies from run to run, so a seed
//! picks the same choices, not the same interleaving. Nothing asserts on durations; every
//! wait is bounded.

use crate::support::python::{Proc, master, python, worker};
use crate::support::redis::{connect, server, snapshot};
use crate::{subdir, violated_invariant};
use abc_operator::protocol::Connection;
use abc_operator::protocol::{Ledger, Snapshot, repair_lost_worker};
use nix::sys::signal::Signal;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The whole run, kills included, must end within this.
const RUN_TIMEOUT: Duration = Duration::from_secs(240);

/// One chaos scenario.
pub struct Chaos {
    pub name: &'static str,
    /// The master's settings (`PROTO_*`, see tests/fixtures/protocol_master.py).
    pub master_env: Vec<(&'static str, &'static str)>,
    /// `PROTO_POPULATION`, also what every generation must hold.
    pub population: i64,
    /// `PROTO_GENERATIONS`: generations 0..generations after the calibration sample.
    pub generations: i64,
    /// Seconds each simulation sleeps in the workers.
    pub model_sleep: &'static str,
    /// Workers at the start; every victim gets a replacement at once.
    pub workers: usize,
    /// At most this many kills ...
    pub max_kills: usize,
    /// ... within this long after sampling starts.
    pub kill_window: Duration,
    /// Pause between kills, in ms, drawn uniformly.
    pub pause_ms: std::ops::Range<u64>,
    /// Kill only in the calibration sample (generation -1), and only workers holding a claim.
    pub calibration_only: bool,
}

impl Chaos {
    /// Up to 4 kills within 40 s of a 4-generation run (population 30, a fast model) that
    /// starts with 4 workers: the sampler is the master's choice (`master_env`).
    pub fn repeated_kills(
        name: &'static str,
        master_env: Vec<(&'static str, &'static str)>,
    ) -> Chaos {
        Chaos {
            name,
            master_env,
            population: 30,
            generations: 4,
            model_sleep: "0.02",
            workers: 4,
            max_kills: 4,
            kill_window: Duration::from_secs(40),
            pause_ms: 400..1200,
            calibration_only: false,
        }
    }
}

/// What happened to one victim.
#[derive(Debug)]
struct Kill {
    worker: String,
    /// Generation shown by the snapshot the victim was chosen from.
    generation: Option<i64>,
    /// Its ledger after death owed something (inside a generation).
    owed: bool,
    /// Its repair corrected something.
    repaired: bool,
}

/// A deterministic stream of choices; the seed is printed so a failing run can be replayed.
fn seeded_rng(name: &str) -> (u64, StdRng) {
    let seed = std::env::var("ABC_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("chaos {name}: seed {seed} (rerun with ABC_CHAOS_SEED={seed})");
    (seed, StdRng::seed_from_u64(seed))
}

/// Samples snapshots until told to stop; returns how many, or the first broken invariant.
fn spawn_monitor(
    mut conn: Connection,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Result<usize, String>> {
    tokio::spawn(async move {
        let mut samples = 0;
        while !stop.load(Ordering::Relaxed) {
            let snap = Snapshot::read(&mut conn)
                .await
                .map_err(|err| format!("snapshot failed: {err}"))?;
            if let Some(broken) = violated_invariant(&snap) {
                return Err(broken);
            }
            samples += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(samples)
    })
}

/// Particles per generation `t` in the master's pyABC history database.
fn particles_per_generation(db: &Path) -> BTreeMap<i64, i64> {
    let out = std::process::Command::new(python())
        .args([
            "-c",
            "import sys, pyabc\n\
             h = pyabc.History('sqlite:///' + sys.argv[1])\n\
             for t, n in h.get_nr_particles_per_population().items(): print(t, n)",
        ])
        .arg(db)
        .output()
        .expect("run python on the history database");
    assert!(
        out.status.success(),
        "reading {}: {}",
        db.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let (t, n) = line.split_once(' ').expect("`t n` lines");
            (t.parse().unwrap(), n.parse().unwrap())
        })
        .collect()
}

fn registered<'a>(snap: &'a Snapshot, id: &str) -> Option<&'a Ledger> {
    snap.ledgers.iter().find(|l| l.id == id)
}

impl Chaos {
    /// Whether the run is at a point where this scenario kills.
    fn may_kill(&self, snap: &Snapshot) -> bool {
        match snap.generation {
            _ if snap.analysis_id.is_none() => false,
            Some(t) if self.calibration_only => t == -1,
            // Not in the last generation: once the master has all of it, it ends the analysis,
            // and a ledger repaired after that is stale (only deleted), which is right but
            // would make the count of "killed inside a generation" depend on timing.
            Some(t) => t < self.generations - 1,
            None => false,
        }
    }

    pub async fn run(self) {
        let (seed, mut rng) = seeded_rng(self.name);
        let ctx = format!("chaos {} seed {seed}", self.name);
        let redis = server();
        let endpoint = redis.endpoint();
        let mut conn = connect(&redis).await;
        let mut rival = connect(&redis).await;
        let root = tempfile::tempdir().unwrap();
        let results = subdir(&root, "master");
        let population = self.population.to_string();
        let generations = self.generations.to_string();
        let mut master_env = self.master_env.clone();
        master_env.push(("PROTO_POPULATION", &population));
        master_env.push(("PROTO_GENERATIONS", &generations));
        let worker_env = [
            ("ABC_TEST_MODEL_SLEEP", self.model_sleep),
            ("ABC_HEARTBEAT_SECONDS", "1"),
        ];
        let mut started = 0;
        let spawn_worker = |started: &mut usize| {
            *started += 1;
            let id = format!("{}-{}", self.name, *started);
            (id.clone(), worker(&endpoint, &id, &worker_env, root.path()))
        };
        let mut live: Vec<(String, Proc)> = (0..self.workers)
            .map(|_| spawn_worker(&mut started))
            .collect();
        let mut m = master(&endpoint, &master_env, &results);

        let stop_monitor = Arc::new(AtomicBool::new(false));
        let monitor = spawn_monitor(connect(&redis).await, stop_monitor.clone());

        let begin = Instant::now();
        let mut sampling_since: Option<Instant> = None;
        let mut next_kill = Instant::now();
        let mut kills: Vec<Kill> = Vec::new();
        loop {
            if let Some(status) = m.try_status() {
                assert!(
                    status.success(),
                    "{ctx}: master failed: {status}\n{}",
                    m.log_tail()
                );
                break;
            }
            assert!(
                begin.elapsed() < RUN_TIMEOUT,
                "{ctx}: run did not finish; kills {kills:#?}; master log:\n{}",
                m.log_tail()
            );
            let snap = snapshot(&mut conn).await;
            if sampling_since.is_none() && snap.generation.is_some() {
                sampling_since = Some(Instant::now());
            }
            let in_window = sampling_since.is_some_and(|at| at.elapsed() < self.kill_window);
            if kills.len() < self.max_kills
                && in_window
                && Instant::now() >= next_kill
                && self.may_kill(&snap)
            {
                // Victims among registered workers; one always stays, or nobody samples until a
                // replacement has imported pyabc.
                let registered_live: Vec<usize> = (0..live.len())
                    .filter(|&i| registered(&snap, &live[i].0).is_some())
                    .collect();
                // Every other kill (and every calibration kill) picks a worker that is inside
                // a generation right now, so that some victims surely owe something; the others
                // pick any worker, idle ones included.
                let inside = self.calibration_only || kills.len().is_multiple_of(2);
                let candidates: Vec<usize> = registered_live
                    .iter()
                    .copied()
                    .filter(|&i| {
                        let ledger = registered(&snap, &live[i].0).unwrap();
                        !inside
                            || (ledger.claim.is_some() || ledger.jobs > 0)
                                && (!self.calibration_only || ledger.generation == Some(-1))
                    })
                    .collect();
                if registered_live.len() >= 2 && !candidates.is_empty() {
                    let index = candidates[rng.random_range(0..candidates.len())];
                    let (id, mut victim) = live.swap_remove(index);
                    let kill = self
                        .kill_and_repair(
                            &ctx,
                            &id,
                            &mut victim,
                            snap.generation,
                            &mut conn,
                            &mut rival,
                        )
                        .await;
                    kills.push(kill);
                    live.push(spawn_worker(&mut started));
                    next_kill = Instant::now()
                        + Duration::from_millis(rng.random_range(self.pause_ms.clone()));
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop_monitor.store(true, Ordering::Relaxed);
        let samples = monitor
            .await
            .expect("the monitor task does not panic")
            .unwrap_or_else(|broken| panic!("{ctx}: {broken}\nkills {kills:#?}"));
        for kill in &kills {
            eprintln!(
                "{ctx}: killed {} in generation {:?}: owed {}, repaired {}",
                kill.worker, kill.generation, kill.owed, kill.repaired
            );
        }
        eprintln!("{ctx}: {samples} snapshots checked");

        // The run completed, through pyABC's own bookkeeping.
        assert!(
            m.log()
                .contains(&format!("DONE max_t={}", self.generations - 1)),
            "{ctx}: {}",
            m.log_tail()
        );
        // t = -1 is pyABC's pre-time entry (the observed data as one particle), not sampled.
        let mut particles = particles_per_generation(&results.join("protocol.db"));
        particles.retain(|&t, _| t >= 0);
        let expected: BTreeMap<i64, i64> = (0..self.generations)
            .map(|t| (t, self.population))
            .collect();
        assert_eq!(
            particles, expected,
            "{ctx}: every generation has exactly the population size"
        );
        assert!(
            samples > 20,
            "{ctx}: the monitor sampled only {samples} snapshots"
        );

        // The kills happened as planned and were counted exactly.
        assert!(
            kills.len() >= 2,
            "{ctx}: only {} kills: {kills:#?}",
            kills.len()
        );
        let owed = kills.iter().filter(|k| k.owed).count() as i64;
        assert!(
            owed >= 1,
            "{ctx}: no victim died inside a generation: {kills:#?}"
        );
        if self.calibration_only {
            assert!(
                kills.iter().all(|k| k.generation == Some(-1) && k.owed),
                "{ctx}: {kills:#?}"
            );
        }
        for kill in &kills {
            assert_eq!(
                kill.repaired, kill.owed,
                "{ctx}: a repair corrects something exactly when the victim owed something: {kill:?}"
            );
        }
        let after = snapshot(&mut conn).await;
        assert_eq!(
            after.lost_workers, owed,
            "{ctx}: the repair script counted each lost worker once: {kills:#?}"
        );
        assert!(
            after.ledgers.iter().all(Ledger::is_idle),
            "{ctx}: nobody owes anything after the run: {after:#?}"
        );
    }

    /// SIGKILLs `victim`, waits for its death, reads what its ledger says it owed, then repairs
    /// it twice at once (as two controllers could) and once more.
    async fn kill_and_repair(
        &self,
        ctx: &str,
        id: &str,
        victim: &mut Proc,
        generation: Option<i64>,
        conn: &mut Connection,
        rival: &mut Connection,
    ) -> Kill {
        victim.signal(Signal::SIGKILL);
        let status = victim.wait(Duration::from_secs(10));
        assert!(!status.success(), "{ctx}: {id} was killed: {status}");
        // Dead, the ledger cannot change any more: this is what the worker owed.
        let snap = snapshot(conn).await;
        let ledger = registered(&snap, id)
            .unwrap_or_else(|| panic!("{ctx}: {id} was registered and nobody repaired it yet"))
            .clone();
        let (first, second) =
            tokio::join!(repair_lost_worker(conn, id), repair_lost_worker(rival, id));
        let (first, second) = (first.unwrap(), second.unwrap());
        let repair = match (first, second) {
            (Some(repair), None) | (None, Some(repair)) => repair,
            other => panic!("{ctx}: exactly one of two racing repairs of {id} acts: {other:?}"),
        };
        assert_eq!(
            repair_lost_worker(conn, id).await.unwrap(),
            None,
            "{ctx}: a repeated repair of {id} is a no-op"
        );
        Kill {
            worker: id.to_string(),
            generation,
            owed: !ledger.is_idle(),
            repaired: repair.corrected(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_dynamic_sampler() {
    Chaos::repeated_kills(
        "dynamic",
        vec![("PROTO_BATCH_SIZE", "2"), ("PROTO_FAIL_RATE", "0.05")],
    )
    .run()
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_static_sampler() {
    Chaos::repeated_kills("static", vec![("PROTO_SAMPLER", "static")])
        .run()
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_look_ahead() {
    Chaos::repeated_kills("look-ahead", vec![("PROTO_LOOK_AHEAD", "1")])
        .run()
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_sigkill_in_calibration() {
    Chaos {
        name: "calibration",
        master_env: vec![],
        population: 40,
        generations: 2,
        model_sleep: "0.1",
        workers: 3,
        max_kills: 2,
        kill_window: Duration::from_secs(60),
        pause_ms: 100..300,
        calibration_only: true,
    }
    .run()
    .await;
}
