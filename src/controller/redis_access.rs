//! Connections to each run's Redis, kept across reconciles (a reconnecting connection manager
//! per run), with a short timeout so one unreachable Redis never holds up other runs.

use crate::api::AbcRun;
use crate::protocol::{self, ProtocolError, Snapshot};
use kube::ResourceExt;
use redis::aio::ConnectionManager;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::Mutex;

const TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Default)]
pub struct RedisAccess {
    /// Keyed by run uid; the address and password are part of the entry so a changed Secret or
    /// address opens a new connection.
    connections: Mutex<HashMap<String, (String, ConnectionManager)>>,
}

impl RedisAccess {
    async fn connection(&self, run: &AbcRun, host: &str, port: u16, password: &str) -> Result<ConnectionManager, ProtocolError> {
        let uid = run.uid().unwrap_or_default();
        let target = format!("{host}:{port}:{}", fingerprint(password));
        if let Some((t, conn)) = self.connections.lock().await.get(&uid) {
            if *t == target {
                return Ok(conn.clone());
            }
        }
        let conn = tokio::time::timeout(TIMEOUT, protocol::connect(host, port, Some(password)))
            .await
            .map_err(|_| ProtocolError::Timeout(format!("{host}:{port}")))??;
        self.connections.lock().await.insert(uid, (target, conn.clone()));
        Ok(conn)
    }

    pub async fn snapshot(&self, run: &AbcRun, host: &str, port: u16, password: &str) -> Result<Snapshot, ProtocolError> {
        let mut conn = self.connection(run, host, port, password).await?;
        tokio::time::timeout(TIMEOUT, protocol::snapshot(&mut conn))
            .await
            .map_err(|_| ProtocolError::Timeout(format!("{host}:{port}")))?
    }

    /// Deletes a stale `analysis_id`; true when there was one.
    pub async fn clear_stale_analysis_lock(&self, run: &AbcRun, host: &str, port: u16) -> Result<bool, ProtocolError> {
        let uid = run.uid().unwrap_or_default();
        let conn = self.connections.lock().await.get(&uid).map(|(_, c)| c.clone());
        let Some(mut conn) = conn else {
            return Err(ProtocolError::Timeout(format!("{host}:{port}")));
        };
        protocol::clear_stale_analysis_lock(&mut conn).await
    }

    pub fn forget(&self, run: &AbcRun) {
        if let Ok(mut map) = self.connections.try_lock() {
            map.remove(&run.uid().unwrap_or_default());
        }
    }
}

/// A short hash, so the cache key changes with the password without holding it twice.
fn fingerprint(password: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(password.as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}
