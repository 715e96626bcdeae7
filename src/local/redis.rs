//! The local run's Redis and what the runner asks of it, in the runner's terms: the one place
//! that knows the APIs of [`crate::redis_server`] and [`crate::protocol`].

use super::error::LocalError;
use super::progress::{FinalCounts, Observation};
use crate::protocol::{self, Repair, Snapshot, keys};
use crate::redis_server::{RedisServer, RedisServerOptions};

/// The run's redis-server (or, with `--keep-redis`, one left running at the end).
pub struct LocalRedis {
    server: RedisServer,
    pub host: String,
    pub port: u16,
}

impl LocalRedis {
    /// Starts a password-protected redis-server on 127.0.0.1.
    ///
    /// Called on the runtime's own thread on purpose, although it blocks for up to a few
    /// seconds: a child started from a `spawn_blocking` thread would be tied to that thread's
    /// life by a parent-death signal, and those threads end when idle.
    pub fn start(port: Option<u16>, keep: bool) -> Result<LocalRedis, LocalError> {
        let options = RedisServerOptions {
            port,
            outlive_parent: keep,
            ..Default::default()
        };
        let server =
            RedisServer::start(options).map_err(|err| LocalError::RedisStart(err.to_string()))?;
        let endpoint = server.endpoint();
        Ok(LocalRedis {
            host: endpoint.host,
            port: endpoint.port,
            server,
        })
    }

    /// Only for the environment of children and the 0600 connection file; never logged.
    pub fn password(&self) -> &str {
        self.server.password()
    }

    /// The redis-server's process id (for `--json` consumers).
    pub fn pid(&self) -> Option<u32> {
        self.server.pid()
    }

    /// Leaves the server running after the runner exits (`--keep-redis`).
    pub fn keep(self) {
        self.server.detach();
    }

    /// Stops the server now.
    pub fn stop(mut self) {
        if let Err(err) = self.server.stop() {
            tracing::warn!(%err, "could not stop redis-server cleanly");
        }
    }

    pub async fn connect(&self) -> Result<Conn, LocalError> {
        protocol::connect(&self.server.endpoint())
            .await
            .map_err(|err| LocalError::Redis(err.to_string()))
    }
}

/// The runner's connection (reconnects by itself if Redis restarts or a command times out).
pub type Conn = redis::aio::ConnectionManager;

/// One poll: the progress counters and the ledgers (for heartbeat checks).
pub async fn observe(conn: &mut Conn) -> Result<(Observation, Snapshot), String> {
    let snapshot = Snapshot::read(conn).await.map_err(|e| e.to_string())?;
    let obs = Observation {
        analysis_id: snapshot.analysis_id.clone(),
        generation: snapshot.generation,
        accepted: snapshot.n_acc.unwrap_or(0),
        required: snapshot.n_req.unwrap_or(0),
        evaluations: snapshot.n_eval.unwrap_or(0),
        failures: snapshot.n_fail.unwrap_or(0),
        in_generation: snapshot.n_worker.unwrap_or(0),
        workers: 0,
    };
    Ok((obs, snapshot))
}

/// The counters of a generation that ended (pyABC 0.13 leaves them in Redis); `None` if gone.
pub async fn final_counts(
    conn: &mut Conn,
    analysis_id: &str,
    t: i64,
) -> Result<Option<FinalCounts>, String> {
    let names = [keys::N_ACC, keys::N_REQ, keys::N_EVAL, keys::N_FAIL];
    let keys: Vec<String> = names
        .iter()
        .map(|name| keys::generation_key(name, analysis_id, t))
        .collect();
    let values: Vec<Option<i64>> = redis::cmd("MGET")
        .arg(&keys)
        .query_async(conn)
        .await
        .map_err(|e| e.to_string())?;
    let [Some(accepted), Some(required), Some(evaluations), failures] = values[..] else {
        return Ok(None);
    };
    Ok(Some(FinalCounts {
        accepted,
        required,
        evaluations,
        failures: failures.unwrap_or(0),
    }))
}

/// The ledger ids of a worker: its id, or `{id}-{i}` per process (see the entrypoint).
pub fn ledger_ids(worker_id: &str, processes: u32) -> Vec<String> {
    if processes <= 1 {
        vec![worker_id.to_string()]
    } else {
        (0..processes).map(|i| format!("{worker_id}-{i}")).collect()
    }
}

/// Repairs the ledgers of a dead worker; returns those that corrected something. A worker that
/// exited through an exception settles its own ledger, so often there is nothing left to do.
pub async fn repair(
    conn: &mut Conn,
    worker_id: &str,
    processes: u32,
) -> Result<Vec<Repair>, String> {
    let mut corrected = Vec::new();
    for id in ledger_ids(worker_id, processes) {
        match protocol::repair_lost_worker(conn, &id)
            .await
            .map_err(|e| e.to_string())?
        {
            Some(repair) if repair.corrected() => corrected.push(repair),
            _ => {}
        }
    }
    Ok(corrected)
}

/// A short account of a repair for a progress line (the JSON event carries all of it).
pub fn describe(repair: &Repair) -> String {
    let mut parts = Vec::new();
    if repair.left_generation {
        parts.push("n_worker -1".to_string());
    }
    if let Some(indices) = &repair.indices {
        let n = indices.end() - indices.start() + 1;
        let which = if n == 1 {
            format!("evaluation {}", indices.start())
        } else {
            format!("evaluations {}..={}", indices.start(), indices.end())
        };
        parts.push(format!(
            "{which} given up (n_fail +{})",
            repair.failures_added
        ));
    }
    if repair.jobs_returned > 0 {
        parts.push(format!("{} static job(s) returned", repair.jobs_returned));
    }
    if repair.lock_released {
        parts.push("static worker lock released".to_string());
    }
    let generation = match repair.generation {
        Some(-1) => " in the calibration sample".to_string(),
        Some(t) => format!(" in generation {t}"),
        None => String::new(),
    };
    format!("{}{generation}: {}", repair.ledger_id, parts.join(", "))
}

/// The Python worker entrypoint to write next to the run.
pub fn worker_entrypoint() -> &'static str {
    protocol::WORKER_ENTRYPOINT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repairs_are_described_briefly() {
        let repair = Repair {
            ledger_id: "local-2".into(),
            analysis_id: Some("a-long-uuid".into()),
            generation: Some(3),
            left_generation: true,
            indices: Some(97..=97),
            failures_added: 1,
            jobs_returned: 0,
            lock_released: false,
            stale: false,
            lost_workers: 1,
        };
        assert_eq!(
            describe(&repair),
            "local-2 in generation 3: n_worker -1, evaluation 97 given up (n_fail +1)"
        );
    }

    #[test]
    fn ledger_ids_follow_the_entrypoint() {
        assert_eq!(ledger_ids("local-1", 1), vec!["local-1"]);
        assert_eq!(
            ledger_ids("local-1-r2", 2),
            vec!["local-1-r2-0", "local-1-r2-1"]
        );
        assert!(worker_entrypoint().contains("f'{config.worker_id}-{i}'"));
    }
}
