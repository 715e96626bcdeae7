//! Connections to each run's Redis, kept across reconciles (one reconnecting connection per
//! run), with a short timeout so one unreachable Redis never holds up other runs. Each
//! connection hears pyABC's messages where its Redis allows it ([`Publications`]): the run's
//! poller waits on them.

use crate::protocol::inference::{GenerationRecord, read_records};
use crate::protocol::{self, Connection, Endpoint, ProtocolError, Publications, Repair, Snapshot};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Default)]
pub struct RedisAccess {
    /// Keyed by run uid; a connection to another endpoint than asked for (a changed Secret or
    /// address) is replaced. Looked up on every poll of every run (a thousand times a second at
    /// 1,000 runs): a plain lock held for a map lookup and a comparison, never across an await.
    connections: Mutex<HashMap<String, Connection>>,
    /// Keyed by run uid too; outlives a connection replaced for a new endpoint, so a poller
    /// keeps hearing the run through it.
    publications: Mutex<HashMap<String, Arc<Publications>>>,
}

impl RedisAccess {
    async fn connection(
        &self,
        run_uid: &str,
        endpoint: &Endpoint,
    ) -> Result<Connection, ProtocolError> {
        if let Some(conn) = self.connections.lock().unwrap().get(run_uid)
            && conn.endpoint() == endpoint
        {
            return Ok(conn.clone());
        }
        let publications = self.publications(run_uid);
        let conn = timeout(
            endpoint,
            protocol::connect_listening(endpoint, &publications),
        )
        .await?;
        self.connections
            .lock()
            .unwrap()
            .insert(run_uid.to_string(), conn.clone());
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

    /// Asks the run's master to end the analysis after the generation it samples.
    pub async fn request_stop(
        &self,
        run_uid: &str,
        endpoint: &Endpoint,
    ) -> Result<(), ProtocolError> {
        let mut conn = self.connection(run_uid, endpoint).await?;
        timeout(endpoint, protocol::request_stop(&mut conn)).await
    }

    /// Publishes pyABC's `stop` to the run's workers.
    pub async fn stop(&self, run_uid: &str, endpoint: &Endpoint) -> Result<i64, ProtocolError> {
        let mut conn = self.connection(run_uid, endpoint).await?;
        timeout(endpoint, protocol::stop(&mut conn)).await
    }

    /// The run's generation records from index `from` on.
    pub async fn records(
        &self,
        run_uid: &str,
        endpoint: &Endpoint,
        from: i64,
    ) -> Result<Vec<Result<GenerationRecord, ProtocolError>>, ProtocolError> {
        let mut conn = self.connection(run_uid, endpoint).await?;
        timeout(endpoint, read_records(&mut conn, from)).await
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

    /// What the run's connection hears on pyABC's channel (whichever connection it has now
    /// or gets later).
    pub fn publications(&self, run_uid: &str) -> Arc<Publications> {
        self.publications
            .lock()
            .unwrap()
            .entry(run_uid.to_string())
            .or_default()
            .clone()
    }

    pub fn forget(&self, run_uid: &str) {
        self.connections.lock().unwrap().remove(run_uid);
        self.publications.lock().unwrap().remove(run_uid);
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
