//! A hostile Redis (tests/support/hostile_redis.rs): whatever it answers the snapshot read
//! that every live run's poller makes, the read ends with an error naming the problem, within
//! the connection's reply timeout and a bounded buffer, and the process goes on.

use crate::support::hostile_redis::{Hostile, fake_redis};
use abc_operator::protocol::{self, Snapshot};
use std::time::{Duration, Instant};

/// The snapshot read against each hostile server fails, naming the problem, within the reply
/// timeout (10 s) and a bounded buffer; the process goes on (the controller's condition adds
/// the server's address: `decide`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_redis_fails_the_read_with_a_named_error_in_bounded_time_and_memory() {
    let cases = [
        (Hostile::Deep, "nests deeper than 16 levels"),
        (Hostile::Huge, "larger than 32 MiB"),
        (Hostile::WrongType, "snapshot"),
        (Hostile::Malformed, "snapshot"),
        (Hostile::Slow, "timed out"),
        (Hostile::Never, "timed out"),
    ];
    let reads = cases.map(|(hostile, named)| async move {
        let port = fake_redis(hostile).await;
        let endpoint = protocol::Endpoint {
            host: "127.0.0.1".into(),
            port,
            password: Some("any".into()),
        };
        let mut conn = protocol::connect(&endpoint)
            .await
            .unwrap_or_else(|err| panic!("{hostile:?}: the handshake: {err}"));
        let start = Instant::now();
        let err = Snapshot::read(&mut conn)
            .await
            .map(|_| ())
            .expect_err(&format!("{hostile:?}: a snapshot"));
        let took = start.elapsed();
        (hostile, named, err.to_string(), took)
    });
    let outcomes = futures::future::join_all(reads).await;
    let failures: Vec<String> = outcomes
        .iter()
        .filter(|(_, named, err, took)| !err.contains(named) || *took >= Duration::from_secs(15))
        .map(|(hostile, _, err, took)| format!("{hostile:?} after {took:?}: {err}"))
        .collect();
    assert!(
        failures.is_empty(),
        "each error names the problem, within 15 s:\n{}",
        failures.join("\n")
    );
}
