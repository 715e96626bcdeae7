//! The `abc_operator` module's master against a Redis that goes away: the Gaussian example's
//! master (examples/gaussian/gaussian.py, `abc_operator.run`) with a worker through the
//! shipped entrypoint.

use crate::support::python::{example_master, python_script, worker};
use crate::support::redis::{connect, server};
use crate::support::results_db::generation_records;
use abc_operator::protocol::REDIS_LOST_EXIT_CODE;
use abc_operator::protocol::inference::{GENERATIONS, GenerationRecord};
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
