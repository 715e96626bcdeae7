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
