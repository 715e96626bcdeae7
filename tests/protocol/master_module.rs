//! The `abc_operator` module's master against a Redis that goes away: the Gaussian example's
//! master (examples/gaussian/gaussian.py, `abc_operator.run`) with a worker through the
//! shipped entrypoint.

use crate::support::python::{example_master, python_script, worker};
use crate::support::redis::{connect, server};
use crate::support::results_db::generation_records;
use abc_operator::protocol::inference::{GENERATIONS, GenerationRecord};
use abc_operator::protocol::{REDIS_LOST_EXIT_CODE, request_stop};
use std::path::Path;
use std::time::{Duration, Instant};

const GAUSSIAN: [(&str, &str); 3] = [
    ("GAUSSIAN_GENERATIONS", "3"),
    ("GAUSSIAN_MINIMUM_EPSILON", "0"),
    ("GAUSSIAN_MODEL_SECONDS", "0.002"),
];

/// `(id, end_time)` of every run in the results database.
fn runs(db: &Path) -> Vec<(i64, Option<String>)> {
    let out = python_script(
        "import json, sqlite3, sys; c = sqlite3.connect(sys.argv[1]); \
         print(json.dumps(c.execute('select id, end_time from abc_smc order by id').fetchall()))",
        &[db],
    );
    serde_json::from_slice(&out).unwrap()
}

/// A master that notices its Redis is gone (here: it waits for a worker that was killed, and
/// then Redis stops) exits with `REDIS_LOST_EXIT_CODE` and leaves its run unfinished in the
/// database, although pyABC's `ABCSMC.run` marks its run done however it ends: started again
/// on a new, empty Redis, it resumes the run, and writes the records of the generations stored
/// before into the new Redis, then the others, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_that_loses_its_redis_leaves_its_run_to_resume_and_records_it_again() {
    let root = tempfile::tempdir().unwrap();
    let results = root.path().join("results");
    std::fs::create_dir_all(&results).unwrap();
    let db = results.join("gaussian.db");

    let mut first_redis = server();
    let endpoint = first_redis.endpoint();
    let mut conn = connect(&first_redis).await;
    let first_worker = worker(&endpoint, "first", &[], root.path());
    let mut master = example_master(&endpoint, &GAUSSIAN, &results);
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let recorded: i64 = redis::cmd("LLEN")
            .arg(GENERATIONS)
            .query_async(&mut conn)
            .await
            .unwrap();
        if recorded >= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline && master.try_status().is_none(),
            "no generation recorded; master:\n{}",
            master.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The master now waits for the killed worker's evaluations, until Redis goes.
    drop(first_worker);
    first_redis.stop().unwrap();
    let status = master.wait(Duration::from_secs(120));
    assert_eq!(
        status.code(),
        Some(REDIS_LOST_EXIT_CODE),
        "{}",
        master.log_tail()
    );
    let stored = runs(&db);
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(
        stored[0].1, None,
        "the run is left unfinished, to be resumed"
    );

    let second_redis = server();
    let endpoint = second_redis.endpoint();
    let mut conn = connect(&second_redis).await;
    let _second_worker = worker(&endpoint, "second", &[], root.path());
    let mut master = example_master(&endpoint, &GAUSSIAN, &results);
    let status = master.wait(Duration::from_secs(180));
    assert!(status.success(), "{}", master.log_tail());
    assert!(
        master.log().contains("resuming run 1"),
        "{}",
        master.log_tail()
    );
    assert_eq!(runs(&db).len(), 1, "no new run");
    let texts: Vec<Vec<u8>> = redis::cmd("LRANGE")
        .arg(GENERATIONS)
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    let records: Vec<GenerationRecord> = texts
        .iter()
        .map(|text| GenerationRecord::parse(text).unwrap())
        .collect();
    assert_eq!(
        records.iter().map(|r| r.t).collect::<Vec<_>>(),
        vec![0, 1, 2],
        "every generation once, in order"
    );
    assert_eq!(
        records,
        generation_records(&db),
        "as the database gives them"
    );
}

/// A stop asked of the run (`spec.stop`, `kubectl abc stop`) ends the master's analysis once
/// the generation being sampled is stored: the master exits 0, its run is marked done with
/// fewer generations than asked, each stored one recorded; a master started again while the
/// stop stands samples nothing and starts no run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_asked_of_the_run_ends_the_analysis_after_the_generation_being_sampled() {
    let root = tempfile::tempdir().unwrap();
    let results = root.path().join("results");
    std::fs::create_dir_all(&results).unwrap();
    let db = results.join("gaussian.db");
    let redis = server();
    let endpoint = redis.endpoint();
    let mut conn = connect(&redis).await;
    let _worker = worker(&endpoint, "w", &[], root.path());
    let asked = [
        ("GAUSSIAN_GENERATIONS", "20"),
        ("GAUSSIAN_MINIMUM_EPSILON", "0"),
        ("GAUSSIAN_MODEL_SECONDS", "0.002"),
    ];
    let mut master = example_master(&endpoint, &asked, &results);
    let deadline = Instant::now() + Duration::from_secs(180);
    let recorded = |conn: &abc_operator::protocol::Connection| {
        let mut conn = conn.clone();
        async move {
            redis::cmd("LLEN")
                .arg(GENERATIONS)
                .query_async::<i64>(&mut conn)
                .await
                .unwrap()
        }
    };
    while recorded(&conn).await < 1 {
        assert!(
            Instant::now() < deadline && master.try_status().is_none(),
            "no generation recorded; master:\n{}",
            master.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    request_stop(&mut conn).await.unwrap();
    let status = master.wait(Duration::from_secs(120));
    assert!(status.success(), "{}", master.log_tail());
    assert!(
        master.log().contains("stopping after generation"),
        "{}",
        master.log_tail()
    );
    let stored = runs(&db);
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert!(stored[0].1.is_some(), "the stopped run is marked done");
    let generations = generation_records(&db);
    assert!(
        !generations.is_empty() && generations.len() < 20,
        "ended early, after {} generations",
        generations.len()
    );
    assert_eq!(recorded(&conn).await, generations.len() as i64);

    let mut again = example_master(&endpoint, &asked, &results);
    let status = again.wait(Duration::from_secs(120));
    assert!(status.success(), "{}", again.log_tail());
    assert!(
        again.log().contains("asked to stop"),
        "{}",
        again.log_tail()
    );
    assert_eq!(runs(&db).len(), 1, "no new run while the stop stands");
}

/// A record that cannot be computed, or that Redis refuses, costs only the record: one
/// warning line per generation and the analysis completes; a push that finds Redis gone
/// ends the master as any lost Redis does (exit code 75, run left unfinished). pyABC's
/// single-core sampler with the run's Redis as its `redis`, so that no worker is needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_fails_is_a_warning_and_a_lost_redis_an_exit() {
    let redis = server();
    let endpoint = redis.endpoint();
    let dir = tempfile::tempdir().unwrap();
    let script = "import io, json, os, sys\n\
        sys.path.insert(0, sys.argv[1])\n\
        import abc_operator, numpy as np, pyabc, redis\n\
        failing = {}\n\
        class Redis(redis.Redis):\n\
        \x20   def rpush(self, *args):\n\
        \x20       if failing.get('push'):\n\
        \x20           raise failing['push']\n\
        \x20       return super().rpush(*args)\n\
        def analysis(name):\n\
        \x20   sampler = pyabc.sampler.SingleCoreSampler()\n\
        \x20   sampler.redis = Redis(host='127.0.0.1', port=int(sys.argv[2]), password=sys.argv[3])\n\
        \x20   abc = pyabc.ABCSMC(lambda p: {'y': p['mu'] + np.random.randn()},\n\
        \x20       pyabc.Distribution(mu=pyabc.RV('uniform', -5, 10)),\n\
        \x20       lambda x, y: abs(x['y'] - y['y']), population_size=30, sampler=sampler)\n\
        \x20   err, sys.stderr = sys.stderr, io.StringIO()\n\
        \x20   try:\n\
        \x20       history = abc_operator.run(abc, name + '.db', {'y': 2.0}, max_nr_populations=2)\n\
        \x20       outcome = history.max_t + 1\n\
        \x20   except SystemExit as exit:\n\
        \x20       outcome = f'exit {exit.code}'\n\
        \x20   warnings = [l for l in sys.stderr.getvalue().splitlines() if 'warning' in l]\n\
        \x20   sys.stderr = err\n\
        \x20   return {'outcome': outcome, 'warnings': warnings,\n\
        \x20           'records': sampler.redis.llen(abc_operator.GENERATIONS_KEY)}\n\
        out = {}\n\
        failing['push'] = redis.exceptions.ResponseError('WRONGTYPE wrong kind of value')\n\
        out['refused'] = analysis('refused')\n\
        failing['push'] = None\n\
        live_record, abc_operator._live_record = abc_operator._live_record, lambda *a: 1 / 0\n\
        out['broken'] = analysis('broken')\n\
        abc_operator._live_record = live_record\n\
        failing['push'] = redis.exceptions.ConnectionError('Connection refused')\n\
        out['lost'] = analysis('lost')\n\
        print(json.dumps(out))\n";
    let module_dir = crate::support::python::entrypoint().parent().unwrap();
    let port = endpoint.port.to_string();
    let password = endpoint.password.clone().unwrap();
    let out = std::process::Command::new(crate::support::python::python())
        .env("ABC_RESULTS_DIR", dir.path())
        .env("MPLCONFIGDIR", dir.path())
        .args(["-c", script])
        .arg(module_dir)
        .args([&port, &password])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for (name, cause) in [
        ("refused", "ResponseError"),
        ("broken", "ZeroDivisionError"),
    ] {
        let case = &out[name];
        assert_eq!(case["outcome"], 2, "the analysis completes: {out}");
        assert_eq!(case["records"], 0, "{out}");
        let warnings = case["warnings"].as_array().unwrap();
        assert_eq!(warnings.len(), 2, "one line per generation: {out}");
        assert!(
            warnings.iter().all(|w| w.as_str().unwrap().contains(cause)),
            "{out}"
        );
    }
    assert_eq!(out["lost"]["outcome"], "exit 75", "{out}");
    let lost = runs(&dir.path().join("lost.db"));
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0].1, None, "left unfinished, to be resumed");
    drop(redis);
}
