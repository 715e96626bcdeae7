//! Every sampler option pyABC 0.13.0 offers, through the shipped worker: pyABC's own samplers
//! (tests/fixtures/protocol_master.py) drive two entrypoint workers through whole analyses.
//! Each run checks the ledger invariants in every snapshot, that no worker failed on the way
//! (no traceback in its log), that every worker exits 0 on pyABC's stop message leaving no
//! ledger, and what pyABC documents for the option.

use crate::support::python::{Proc, master, worker};
use crate::support::redis::{connect, server, snapshot};
use crate::{run_to_end, subdir};
use abc_operator::local::redis_server::RedisServer;
use abc_operator::protocol::stop;
use redis::AsyncCommands;
use serde_json::Value;
use std::time::Duration;

/// What a run showed: the master's `RESULT` (per generation: `evaluations`, `running_after`,
/// `lookahead`) and the Redis it ran on, for checks after it.
struct Outcome {
    result: Value,
    conn: abc_operator::protocol::Connection,
    _redis: RedisServer,
}

impl Outcome {
    fn per_generation(&self, name: &str) -> Vec<i64> {
        self.result[name]
            .as_array()
            .unwrap_or_else(|| panic!("no {name} in {}", self.result))
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect()
    }
}

/// One analysis of the protocol master with `options`, sampled by two workers (the second one
/// with `second_worker` in its environment); then pyABC's stop message.
async fn analysis(
    name: &str,
    options: &[(&str, &str)],
    second_worker: &[(&str, &str)],
    second_worker_exit: i32,
) -> Outcome {
    let redis = server();
    let endpoint = redis.endpoint();
    let mut conn = connect(&redis).await;
    let root = tempfile::tempdir().unwrap();
    // evaluations long enough to overlap at a generation's end
    let model = ("ABC_TEST_MODEL_SLEEP", "0.005");
    let mut workers = [
        worker(&endpoint, "a", &[model], root.path()),
        worker(
            &endpoint,
            "b",
            &[&[model], second_worker].concat(),
            root.path(),
        ),
    ];
    let mut options = options.to_vec();
    options.extend([("PROTO_POPULATION", "40"), ("PROTO_GENERATIONS", "3")]);
    let mut m = master(&endpoint, &options, &subdir(&root, name));
    run_to_end(&mut conn, &mut m).await;
    let log = m.log();
    let result: Value = log
        .lines()
        .find_map(|line| line.strip_prefix("RESULT "))
        .map(|json| serde_json::from_str(json).unwrap())
        .unwrap_or_else(|| panic!("{name}: no RESULT in the master's log: {log}"));

    let live = workers
        .iter_mut()
        .filter_map(|w| w.try_status().is_none().then_some(()))
        .count();
    assert_eq!(
        stop(&mut conn).await.unwrap() as usize,
        live,
        "{name}: listening workers"
    );
    for (w, expected) in workers.iter_mut().zip([0, second_worker_exit]) {
        let code = w.wait(Duration::from_secs(30)).code();
        assert_eq!(code, Some(expected), "{name}: {}", w.log_tail());
        if expected == 0 {
            assert_clean(name, w);
        }
    }
    assert!(
        snapshot(&mut conn).await.ledgers.is_empty(),
        "{name}: every ledger settled"
    );
    Outcome {
        result,
        conn,
        _redis: redis,
    }
}

fn assert_clean(name: &str, w: &Proc) {
    let log = w.log();
    for failure in ["Traceback", "worker failed", "was cleared while"] {
        assert!(
            !log.contains(failure),
            "{name}: {failure} in {}",
            w.log_tail()
        );
    }
}

/// `wait_for_all_samples`: pyABC's master waits for every evaluation started in a generation
/// before it closes it, so none is still running when the sampler returns the generation;
/// both with pyABC's own sampler class and with the `abc_operator` module's, which then does
/// not let workers leave early.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_all_samples_waits_for_every_evaluation_started() {
    for class in ["pyabc", "module"] {
        let name = format!("wait-for-all-{class}");
        let mut outcome = analysis(
            &name,
            &[("PROTO_WAIT_FOR_ALL", "1"), ("PROTO_SAMPLER_CLASS", class)],
            &[],
            0,
        )
        .await;
        let running = outcome.per_generation("running_after");
        assert_eq!(running.len(), 4, "{name}: calibration and 3 generations");
        assert!(running.iter().all(|&n| n == 0), "{name}: {running:?}");
        let early: Option<String> = outcome
            .conn
            .get(abc_operator::protocol::keys::EARLY_RELEASE)
            .await
            .unwrap();
        assert_eq!(early, None, "{name}: no early release for this master");
    }
}

/// `batch_size`: a worker claims, and pyABC records, evaluations in whole batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_size_claims_whole_batches() {
    let outcome = analysis("batch", &[("PROTO_BATCH_SIZE", "5")], &[], 0).await;
    let evaluations = outcome.per_generation("evaluations");
    assert!(
        evaluations.iter().all(|n| n % 5 == 0),
        "evaluations in batches of 5: {evaluations:?}"
    );
}

/// Look-ahead sampling, with pyABC's delayed evaluation and without it (which pyABC allows
/// only with a fixed epsilon schedule), and with its cap on look-ahead evaluations
/// (`max_n_eval_look_ahead_factor` times the previous generation's evaluations, in delayed
/// evaluation) holding. Each samples ahead of the generation the master is in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn look_ahead_with_and_without_delayed_evaluation() {
    for (name, delay, factor, epsilons) in [
        ("look-ahead-delayed", "1", "10", ""),
        ("look-ahead-direct", "0", "10", "4,3,2"),
        ("look-ahead-capped", "1", "0.2", ""),
    ] {
        let outcome = analysis(
            name,
            &[
                ("PROTO_LOOK_AHEAD", "1"),
                ("PROTO_LOOK_AHEAD_DELAY", delay),
                ("PROTO_MAX_N_EVAL_LOOK_AHEAD_FACTOR", factor),
                ("PROTO_EPSILONS", epsilons),
            ],
            &[],
            0,
        )
        .await;
        let evaluations = outcome.per_generation("evaluations");
        let lookahead = outcome.per_generation("lookahead");
        assert!(
            lookahead.iter().sum::<i64>() > 0,
            "{name}: sampled ahead: {lookahead:?}"
        );
        if delay == "1" {
            // with the calibration sample, one sampler record per generation
            assert_eq!(lookahead.len(), evaluations.len(), "{name}");
            let factor: f64 = factor.parse().unwrap();
            for t in 1..evaluations.len() {
                // pyABC's loop checks the cap before each claim: each of the 2 workers may
                // claim once more
                let cap = (factor * evaluations[t - 1] as f64).floor() as i64 + 2;
                assert!(
                    lookahead[t] <= cap,
                    "{name}: generation {t}: {} look-ahead evaluations, cap {cap} \
                     ({evaluations:?}, {lookahead:?})",
                    lookahead[t]
                );
            }
        }
    }
}

/// `RedisStaticSampler`: one job per particle, the static lock, through to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_sampler() {
    let outcome = analysis("static", &[("PROTO_SAMPLER", "static")], &[], 0).await;
    assert_eq!(outcome.per_generation("evaluations").len(), 4);
}

/// A model that raises: with pyABC's `--catch` (the default) each raise is a failed
/// evaluation and the workers go on; without it (`ABC_WORKER_CATCH=false`) the worker stops
/// on the first one, exiting 1, its ledger settled, and the other worker ends the analysis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_raises_with_and_without_catch() {
    let failing = [("PROTO_FAIL_RATE", "0.2")];
    analysis("catch", &failing, &[], 0).await;
    analysis("no-catch", &failing, &[("ABC_WORKER_CATCH", "false")], 1).await;
}
