//! The local run's Redis and what the runner asks of it, in the runner's terms: the one place
//! that knows the APIs of [`super::redis_server`] and [`crate::protocol`].

use super::error::LocalError;
use super::progress::{Figures, FinalCounts};
use super::redis_server::{RedisServer, RedisServerOptions};
use crate::protocol::inference::read_records;
use crate::protocol::{self, Repair, Snapshot, keys};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

/// The run's redis-server (or, with `--keep-redis`, one left running at the end).
pub struct LocalRedis {
    server: RedisServer,
    pub host: String,
    pub port: u16,
    /// The Unix socket it also listens on, for the workers (`ABC_REDIS_SOCKET`), in a private
    /// directory that outlives restarts of the server; `None` where the path would be too
    /// long for a socket.
    pub socket: Option<PathBuf>,
    socket_dir: Option<tempfile::TempDir>,
    /// Started with `--keep-redis` (a restarted server keeps that too).
    keep: bool,
}

/// Longest Unix socket path Linux takes (`sun_path` holds 108 bytes with the final NUL).
const MAX_SOCKET_PATH: usize = 107;

impl LocalRedis {
    /// Starts a password-protected redis-server on 127.0.0.1.
    ///
    /// Called on the runtime's own thread on purpose, although it blocks for up to a few
    /// seconds: a child started from a `spawn_blocking` thread would be tied to that thread's
    /// life by a parent-death signal, and those threads end when idle.
    pub fn start(port: Option<u16>, keep: bool) -> Result<LocalRedis, LocalError> {
        // a private directory (and the socket 0700 in it): only the user reaches the socket
        let socket_dir = tempfile::Builder::new()
            .prefix("abc-redis-socket-")
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir()
            .map_err(|err| LocalError::RedisStart(format!("a directory for its socket: {err}")))?;
        let socket = Some(socket_dir.path().join("redis.sock"))
            .filter(|path| path.as_os_str().len() <= MAX_SOCKET_PATH);
        let options = RedisServerOptions {
            port,
            outlive_parent: keep,
            unix_socket: socket.clone(),
            ..Default::default()
        };
        let server =
            RedisServer::start(options).map_err(|err| LocalError::RedisStart(err.to_string()))?;
        // Only informative here: a local run has a few worker processes, not thousands.
        if let Ok(Some(max_clients)) = server.max_clients()
            && let Some(warning) = protocol::server_config::client_capacity_warning(max_clients)
        {
            tracing::info!(max_clients, "{warning}");
        }
        let endpoint = server.endpoint();
        Ok(LocalRedis {
            host: endpoint.host,
            port: endpoint.port,
            socket,
            socket_dir: Some(socket_dir),
            server,
            keep,
        })
    }

    /// How the server ended, if it died; `None` while it runs.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.server.exit_status()
    }

    /// Starts a server that died again, empty, on the same port with the same password: the
    /// connection that workers and master were given stays valid. Blocks like [`Self::start`],
    /// on the runtime's own thread for the same reason.
    pub fn restart(&mut self) -> Result<(), LocalError> {
        let options = RedisServerOptions {
            port: Some(self.port),
            password: Some(self.server.password().to_string()),
            outlive_parent: self.keep,
            unix_socket: self.socket.clone(),
            ..Default::default()
        };
        self.server = RedisServer::start(options).map_err(|err| LocalError::RedisRestart {
            port: self.port,
            cause: err.to_string(),
        })?;
        Ok(())
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
    pub fn keep(mut self) {
        if let Some(dir) = self.socket_dir.take() {
            let _ = dir.keep();
        }
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

/// The runner's connection (connects again at the next command after Redis restarts or a
/// command times out).
pub type Conn = protocol::Connection;

/// One poll: the progress counters and the ledgers (for heartbeat checks and repairs).
pub async fn snapshot(conn: &mut Conn) -> Result<Snapshot, String> {
    Snapshot::read(conn).await.map_err(|e| e.to_string())
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

/// What the master recorded of generation `t` (the list's last record, where the master pushes
/// it before it starts the next generation); `None` without a record of `t`.
pub async fn figures_of(conn: &mut Conn, recorded: i64, t: i64) -> Option<Figures> {
    let last = read_records(conn, recorded.checked_sub(1)?).await.ok()?;
    last.into_iter()
        .flatten()
        .find(|record| record.t == t)
        .map(|record| Figures::from(&record))
}

/// Repairs the ledgers of a dead worker (found by their `worker` field, one per process);
/// returns those that corrected something. A worker that exited through an exception settles
/// its own ledger, so often there is nothing left to do.
pub async fn repair(conn: &mut Conn, worker_id: &str) -> Result<Vec<Repair>, String> {
    let snapshot = snapshot(conn).await?;
    let mut corrected = Vec::new();
    for ledger in snapshot.ledgers_of(worker_id) {
        match protocol::repair_lost_worker(conn, &ledger.id)
            .await
            .map_err(|e| e.to_string())?
        {
            Some(repair) if repair.corrected() => corrected.push(repair),
            _ => {}
        }
    }
    Ok(corrected)
}

/// Writes the Python worker entrypoint and its Lua scripts into `dir` (the run's temporary
/// folder); returns the entrypoint's path.
pub fn write_worker_files(dir: &std::path::Path) -> Result<PathBuf, LocalError> {
    protocol::write_worker_files(dir).map_err(|(path, cause)| LocalError::Files { path, cause })
}
