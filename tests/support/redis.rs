//! A throwaway password-protected redis-server and connections to it.

use abc_operator::local::redis_server::{RedisServer, RedisServerOptions};
use abc_operator::protocol::Connection;
use abc_operator::protocol::{self, Snapshot};
use std::time::{Duration, Instant};

/// A fresh redis-server on a free loopback port.
pub fn server() -> RedisServer {
    RedisServer::start(RedisServerOptions::default())
        .expect("redis-server starts (is it installed?)")
}

/// A connection through the product's `protocol::connect`.
pub async fn connect(server: &RedisServer) -> Connection {
    protocol::connect(&server.endpoint())
        .await
        .expect("connect to the test redis-server")
}

pub async fn snapshot(conn: &mut Connection) -> Snapshot {
    Snapshot::read(conn).await.expect("snapshot")
}

/// Polls snapshots until `done` holds, panicking with the last one after `timeout`.
pub async fn wait_for(
    conn: &mut Connection,
    timeout: Duration,
    what: &str,
    mut done: impl FnMut(&Snapshot) -> bool,
) -> Snapshot {
    let deadline = Instant::now() + timeout;
    loop {
        let snap = snapshot(conn).await;
        if done(&snap) {
            return snap;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last snapshot: {snap:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A generation record as the `abc_operator` module writes it (one parameter, `mu`).
pub fn record(t: i64, epsilon: f64) -> String {
    serde_json::json!({
        "t": t, "epsilon": epsilon, "accepted": 100, "evaluations": 400 + t,
        "acceptance_rate": 100.0 / (400 + t) as f64, "ess": 90.5, "wall_time_seconds": 1.5,
        "time": "2026-12-06T18:00:00+00:00", "parameters_total": 1,
        "parameters": [{"name": "mu", "mean": 1.0, "sd": 0.1,
            "quantiles": [0.8, 0.9, 1.0, 1.1, 1.2],
            "histogram": {"low": 0.5, "high": 1.5, "weights": [0.5, 0.5]}}]
    })
    .to_string()
}

/// Appends `texts` to the run's generation records, as the master does after storing each.
pub async fn push_records(conn: &mut Connection, texts: Vec<String>) {
    redis::cmd("RPUSH")
        .arg(abc_operator::protocol::inference::GENERATIONS)
        .arg(texts)
        .query_async::<()>(conn)
        .await
        .unwrap()
}
