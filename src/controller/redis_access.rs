//! Connections to each run's Redis, kept across reconciles (a reconnecting connection manager
//! per run), with a short timeout so one unreachable Redis never holds up other runs.

use crate::protocol::{self, Endpoint, ProtocolError, Repair, Snapshot};
use redis::aio::ConnectionManager;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::Mutex;

const TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Default)]
pub struct RedisAccess {
    /// Keyed by run uid; the endpoint is part of the entry so a changed Secret or address opens
    /// a new connection.
    connections: Mutex<HashMap<String, (String, ConnectionManager)>>,
}

impl RedisAccess {
    async fn connection(
        &self,
        run_uid: &str,
        endpoint: &Endpoint,
    ) -> Result<ConnectionManager, ProtocolError> {
        let target = format!(
            "{endpoint}:{}",
            fingerprint(endpoint.password.as_deref().unwrap_or_default())
        );
        if let Some((t, conn)) = self.connections.lock().await.get(run_uid)
            && *t == target
        {
            return Ok(conn.clone());
        }
        let conn = timeout(endpoint, protocol::connect(endpoint)).await?;
        self.connections
            .lock()
            .await
            .insert(run_uid.to_string(), (target, conn.clone()));
        Ok(conn)
    }

    pub async fn snapshot(
        &self,
        run_uid: &str,
        endpoint: &Endpoint,
    ) -> Result<Snapshot, ProtocolError> {
        let mut conn = self.connection(run_uid, endpoint).await?;
        timeout(endpoint, Snapshot::read(&mut conn)).await
    }

    pub async fn repair(
        &self,
        run_uid: &str,
        endpoint: &Endpoint,
        ledger_id: &str,
    ) -> Result<Option<Repair>, ProtocolError> {
        let mut conn = self.connection(run_uid, endpoint).await?;
        timeout(endpoint, protocol::repair_lost_worker(&mut conn, ledger_id)).await
    }

    /// Publishes pyABC's `stop` to the run's workers.
    pub async fn stop(&self, run_uid: &str, endpoint: &Endpoint) -> Result<i64, ProtocolError> {
        let mut conn = self.connection(run_uid, endpoint).await?;
        timeout(endpoint, protocol::stop(&mut conn)).await
    }

    /// Deletes a stale `analysis_id`; returns it when there was one.
    pub async fn clear_stale_analysis_lock(
        &self,
        run_uid: &str,
        endpoint: &Endpoint,
    ) -> Result<Option<String>, ProtocolError> {
        let mut conn = self.connection(run_uid, endpoint).await?;
        timeout(endpoint, protocol::clear_stale_analysis_lock(&mut conn)).await
    }

    pub fn forget(&self, run_uid: &str) {
        if let Ok(mut map) = self.connections.try_lock() {
            map.remove(run_uid);
        }
    }
}

/// Bounds a Redis call so one unreachable Redis never holds up a reconcile for long.
async fn timeout<T>(
    endpoint: &Endpoint,
    call: impl std::future::Future<Output = Result<T, ProtocolError>>,
) -> Result<T, ProtocolError> {
    tokio::time::timeout(TIMEOUT, call)
        .await
        .unwrap_or_else(|_| {
            Err(ProtocolError::Unreachable {
                server: format!("Redis at {endpoint}"),
                detail: "no answer within 3 s".into(),
            })
        })
}

/// A short hash, so the cache key changes with the password without holding it twice.
pub(super) fn fingerprint(password: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(password.as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}
