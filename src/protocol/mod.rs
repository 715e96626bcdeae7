//! pyABC Redis protocol: key names, snapshots, stop/reset, worker ledger and repair.
//!
//! Speaks the protocol of pyabc 0.13.0's Redis samplers (`pyabc/sampler/redis_eps`): the
//! keys of [`keys`], the `abc_msg_pubsub` channel, and the manager's `info`, `stop` and
//! `reset-workers`. On top of it, the worker ledger: pyABC keeps no record of what a worker
//! owes, so a worker killed inside a generation leaves the master waiting forever. Workers
//! started through [`WORKER_ENTRYPOINT`] record it, and [`repair_lost_worker`] gives it back.
//!
//! # Worker ledger layout
//!
//! One Redis hash per worker process, `abc_operator:ledger:{id}` ([`keys::ledger_key`]), and
//! the set `abc_operator:ledgers` ([`keys::LEDGER_SET`]) of every id. `{id}` is
//! `ABC_WORKER_ID` (the pod name, or a local id), `{id}-{i}` with several processes. Fields:
//!
//! | field | set when | meaning |
//! |---|---|---|
//! | `worker`, `process`, `host`, `pid` | registration | `ABC_WORKER_ID`, process index, host name, pid |
//! | `started`, `heartbeat` | registration; `heartbeat` every `ABC_HEARTBEAT_SECONDS` | Redis `TIME` in ms (one clock for all) |
//! | `analysis`, `generation` | with `joined`, a claim or a job; removed when none is left | the generation `{ana}`, `{t}` the worker is in or owes something to |
//! | `joined` | `1` from its `INCR n_worker_{ana}_{t}` to its `DECR` (made by its last result script of the generation where that script sees pyABC's loop end, or by the result that completes the generation when no evaluation the worker still runs can change the sample; a worker leaves once per join) | the worker counts in n_worker |
//! | `claim_max`, `claim_n` | from `INCRBY n_eval_{ana}_{t} k` (dynamic mode; mostly made ahead by the previous result script, where pyABC's loop was about to) to its result pipeline | it owns indices `claim_max-claim_n+1 ..= claim_max`, not yet in done_ixs |
//! | `claim_fail` | `INCR n_fail` during the claim | failures of the claim already counted in n_fail |
//! | `jobs` | `DECR n_job` (+1), `INCR n_job` or a result (-1), static mode | static jobs held |
//! | `lock_name`, `lock_token` | while holding pyABC's static `redis.lock('worker')` | the lock has no expiry: a dead holder blocks every static worker |
//!
//! Each field changes in the same Lua script as the pyABC counter it shadows (the result
//! pipeline runs as one script too), so the ledger is right whenever the worker dies. Every
//! one of those scripts refuses to touch a counter once the ledger is gone: a repaired worker
//! that was only hung exits instead of counting twice. Idle ledgers (registered, owing
//! nothing) are normal; a worker that exits normally removes its own.
//!
//! A repair that corrected something also INCRs `abc_operator:lost_workers`
//! ([`keys::LOST_WORKERS`]) in the same script, so the count of lost workers survives a crash
//! of whoever ran the repair (it is in [`Snapshot::lost_workers`] and [`Repair::lost_workers`]);
//! a second call for the same worker finds no ledger and counts nothing.
//!
//! The repair script, `repair.lua`, ships beside the entrypoint (the worker also runs it on its
//! own ledger at exit and for a predecessor with its id at start); [`repair_lost_worker`] runs
//! the same file.
//! It corrects counters only for the current analysis, in its current generation or the one
//! before (look-ahead sampling starts t+1 while the master still collects t), and only
//! counters that still exist; any other ledger is stale and just deleted.
//!
//! For callers: repair a worker known dead (pod deleted, heartbeat older than the timeout,
//! see [`Heartbeat`]); one pod's ledgers are [`Snapshot::ledgers_of`] its name. A
//! restarted container (same pod name, so same ids) repairs its predecessor's ledgers itself
//! when it starts, so a container restart needs no repair from outside (one would race with
//! the new process and fence it). Ids must be unique among live workers.

mod connection;
mod control;
mod frame;
pub mod inference;
pub mod keys;
mod liveness;
mod progress;
mod repair;
mod reply;
pub mod server_config;
mod snapshot;
pub mod worker_env;

pub use connection::{Connection, Publications, connect, connect_listening};
pub use control::{clear_stale_analysis_lock, request_stop, reset_workers, stop};
pub use liveness::Heartbeat;
#[cfg(test)]
pub(crate) use liveness::test_support as liveness_test_support;
pub use repair::{Repair, repair_lost_worker, repair_script_source};
pub use snapshot::{
    Claim, Ledger, MasterStart, Mode, Resumed, Snapshot, StartOutcome, module_version_warning,
    resumed_note,
};

use redis::{ErrorKind, RedisError};
use std::path::{Path, PathBuf};

/// The worker entrypoint the operator ships (mounted from a ConfigMap, or written to a file by
/// the local runner and run with the image's python), with its Lua scripts beside it
/// ([`worker_files`]).
pub const WORKER_ENTRYPOINT: &str = include_str!("abc_worker.py");
/// The entrypoint's file name.
pub const WORKER_ENTRYPOINT_FILE: &str = "abc_worker.py";
/// The repair script (`repair.lua`), which both the worker and [`repair_lost_worker`] run.
const REPAIR_LUA: &str = include_str!("repair.lua");
/// The worker ledger's Lua scripts (file name, text), one a file in `src/protocol`, each saying
/// at its top what it takes and returns. They ship beside the entrypoint (the same folder, as
/// in the source tree), which reads them from there when it starts. A line
/// `-- include: other.lua` stands for the text of that file (the fragments two scripts
/// share): the entrypoint's `lua_script` reads them so, and so does the bench
/// (`bench/shipped.py`).
pub const WORKER_LUA: [(&str, &str); 9] = [
    ("counter.lua", include_str!("counter.lua")),
    ("heartbeat.lua", include_str!("heartbeat.lua")),
    ("leave.lua", include_str!("leave.lua")),
    ("lock_acquire.lua", include_str!("lock_acquire.lua")),
    ("lock_release.lua", include_str!("lock_release.lua")),
    ("now_ms.lua", include_str!("now_ms.lua")),
    ("register.lua", include_str!("register.lua")),
    ("repair.lua", REPAIR_LUA),
    ("results.lua", include_str!("results.lua")),
];

/// Every file of the worker as it ships, side by side in one folder, as (file name, text):
/// the entrypoint and its Lua scripts.
pub fn worker_files() -> impl Iterator<Item = (&'static str, &'static str)> {
    std::iter::once((WORKER_ENTRYPOINT_FILE, WORKER_ENTRYPOINT)).chain(WORKER_LUA)
}

/// Writes [`worker_files`] into `dir` (the local runner's temporary folder); returns the
/// entrypoint's path, or the path it could not write and why.
pub fn write_worker_files(dir: &Path) -> Result<PathBuf, (PathBuf, std::io::Error)> {
    for (name, text) in worker_files() {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|cause| (path, cause))?;
    }
    Ok(dir.join(WORKER_ENTRYPOINT_FILE))
}

/// The `abc_operator` Python module for master scripts: a sampler from the run's environment
/// and "new or resume" against the results database (mounted next to the entrypoint). Its one
/// source is the Python package's `__init__.py` (`pip install ./python`), shipped as the
/// single file [`MASTER_MODULE_FILE`], so a master gets the same bytes whether the operator,
/// `abc-operator run` or pip put it there.
pub const MASTER_MODULE: &str = include_str!("../../python/abc_operator/__init__.py");
/// The master module's file name where it ships (beside the entrypoint, on `PYTHONPATH`).
pub const MASTER_MODULE_FILE: &str = "abc_operator.py";

/// Writes [`MASTER_MODULE`] into `dir` as [`MASTER_MODULE_FILE`] (the local runner's folder);
/// returns its path, or the path it could not write and why.
pub fn write_master_module(dir: &Path) -> Result<PathBuf, (PathBuf, std::io::Error)> {
    let path = dir.join(MASTER_MODULE_FILE);
    std::fs::write(&path, MASTER_MODULE).map_err(|cause| (path.clone(), cause))?;
    Ok(path)
}
/// The exit code of a master whose Redis went away mid-run ([`MASTER_MODULE`]'s
/// `REDIS_LOST_EXIT_CODE`): started again without counting as a failure, it resumes.
pub const REDIS_LOST_EXIT_CODE: i32 = 75;
/// The exit code of a master whose results database cannot be continued ([`MASTER_MODULE`]'s
/// `RESUME_REFUSED_EXIT_CODE`, sysexits' EX_DATAERR): a retry would meet the same database,
/// so the master Job fails at once instead of retrying `backoffLimit` times.
pub const RESUME_REFUSED_EXIT_CODE: i32 = 65;

/// The protocol's constants another program needs, as JSON: the bench reads them from
/// `bench/constants.json`, which `tests/crd_drift.rs` keeps equal to this.
pub fn constants_json() -> String {
    let value = serde_json::json!({
        "keys": {
            "early_release": keys::EARLY_RELEASE,
            "generations": inference::GENERATIONS,
            "ledger_prefix": keys::LEDGER_PREFIX,
            "ledger_set": keys::LEDGER_SET,
            "lost_workers": keys::LOST_WORKERS,
        },
        "redis_server": {
            "config_lines": server_config::config_lines(),
            "max_clients": server_config::max_clients(),
            "max_worker_processes": server_config::MAX_WORKER_PROCESSES,
            "reserved_clients": server_config::RESERVED_CLIENTS,
            "tcp_backlog": server_config::TCP_BACKLOG,
            "worker_connections_per_process": server_config::WORKER_CONNECTIONS_PER_PROCESS,
            "worker_connections_per_supervisor": server_config::WORKER_CONNECTIONS_PER_SUPERVISOR,
        },
    });
    let mut text = serde_json::to_string_pretty(&value).expect("plain JSON");
    text.push('\n');
    text
}

/// Where a run's Redis is. The password is never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub password: Option<String>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Length of a generated Redis password (alphanumeric: about 190 bits).
pub const GENERATED_PASSWORD_LEN: usize = 32;

/// A fresh random Redis password (alphanumeric, so it needs no quoting anywhere: a Secret, a
/// redis.conf, a URL), for the managed Redis of a run and for a local run's redis-server.
pub fn generate_password() -> String {
    use rand::Rng;
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(GENERATED_PASSWORD_LEN)
        .map(char::from)
        .collect()
}

/// Errors talking to a run's Redis, each naming its cause.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("{server} rejected the password ({detail}); check the run's Redis password Secret")]
    WrongPassword { server: String, detail: String },
    #[error("{server} requires a password and none was given")]
    PasswordRequired { server: String },
    #[error(
        "cannot reach {server}: {detail}; check that Redis runs and that host and port are right"
    )]
    Unreachable { server: String, detail: String },
    #[error("{server} did not answer like a Redis server ({detail}); check host and port")]
    NotRedis { server: String, detail: String },
    #[error("this Redis does not hold pyABC 0.13 sampler data as expected: {0}")]
    NotPyabc(String),
    #[error(
        "{reply} {detail}: the script and the code reading it disagree (a bug in abc-operator, \
         or a server that only looks like Redis)"
    )]
    ScriptReply { reply: String, detail: String },
    #[error("Redis command failed: {0}")]
    Redis(RedisError),
}

impl ProtocolError {
    /// Sorts a client error into a cause the user can act on.
    pub(crate) fn from_redis(err: RedisError, server: &str) -> ProtocolError {
        let server = server.to_string();
        let detail = err.detail().unwrap_or_default().to_string();
        match err.code() {
            Some("WRONGPASS") => return ProtocolError::WrongPassword { server, detail },
            Some("NOAUTH") => return ProtocolError::PasswordRequired { server },
            Some("WRONGTYPE") => {
                return ProtocolError::NotPyabc(format!(
                    "a key has another type than pyABC gives it ({detail})"
                ));
            }
            Some("ABC_NOT_PYABC") => return ProtocolError::NotPyabc(detail),
            _ => {}
        }
        match err.kind() {
            ErrorKind::AuthenticationFailed => ProtocolError::WrongPassword {
                server,
                detail: err.to_string(),
            },
            ErrorKind::Parse => ProtocolError::NotRedis {
                server,
                detail: err.to_string(),
            },
            _ if err.is_io_error()
                || err.is_timeout()
                || err.is_connection_refusal()
                || err.is_connection_dropped() =>
            {
                ProtocolError::Unreachable {
                    server,
                    detail: err.to_string(),
                }
            }
            _ => ProtocolError::Redis(err),
        }
    }
}

impl From<RedisError> for ProtocolError {
    fn from(err: RedisError) -> Self {
        ProtocolError::from_redis(err, "Redis")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_debug_hides_password() {
        let endpoint = Endpoint {
            host: "h".into(),
            port: 1,
            password: Some("s3cret".into()),
        };
        assert!(!format!("{endpoint:?}").contains("s3cret"));
        assert_eq!(endpoint.to_string(), "h:1");
    }

    #[test]
    fn every_lua_file_ships_and_every_include_is_shipped() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/protocol");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.ends_with(".lua"))
            .collect();
        on_disk.sort();
        let shipped: Vec<&str> = WORKER_LUA.iter().map(|(name, _)| *name).collect();
        assert_eq!(
            on_disk, shipped,
            "src/protocol's Lua files are WORKER_LUA's"
        );
        for (name, text) in WORKER_LUA {
            for line in text.lines() {
                if let Some(included) = line.strip_prefix("-- include: ") {
                    assert!(
                        shipped.contains(&included.trim()),
                        "{name} includes {included}, which is not shipped"
                    );
                }
            }
            // each file is a script the entrypoint names, or a fragment a script includes
            assert!(
                WORKER_ENTRYPOINT.contains(&format!("'{name}'"))
                    || WORKER_LUA
                        .iter()
                        .any(|(_, text)| text.contains(&format!("-- include: {name}\n"))),
                "nothing reads {name}"
            );
        }
        let files: Vec<_> = worker_files().collect();
        assert_eq!(files[0], (WORKER_ENTRYPOINT_FILE, WORKER_ENTRYPOINT));
        assert!(files.contains(&("repair.lua", REPAIR_LUA)));
    }

    #[test]
    fn worker_files_are_written_where_the_entrypoint_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let entrypoint = write_worker_files(dir.path()).unwrap();
        assert_eq!(entrypoint, dir.path().join(WORKER_ENTRYPOINT_FILE));
        for (path, text) in worker_files() {
            assert_eq!(
                std::fs::read_to_string(dir.path().join(path)).unwrap(),
                text
            );
        }
    }

    /// The package's `__init__.py` as it is in the checkout now.
    fn package_module() -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/abc_operator/__init__.py");
        std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
    }

    #[test]
    fn the_local_runner_ships_the_python_package_module_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_master_module(dir.path()).unwrap();
        assert_eq!(path, dir.path().join("abc_operator.py"));
        assert_eq!(std::fs::read_to_string(path).unwrap(), package_module());
    }

    #[test]
    fn the_master_module_has_the_crate_version() {
        let version_line = format!("\n__version__ = \"{}\"\n", env!("CARGO_PKG_VERSION"));
        assert!(
            MASTER_MODULE.contains(&version_line),
            "python/abc_operator/__init__.py's __version__ must be Cargo.toml's version \
             ({version_line:?}): the package and the operator ship one module"
        );
        let pyproject = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("python/pyproject.toml"),
        )
        .unwrap();
        assert!(
            pyproject.contains("version = { attr = \"abc_operator.__version__\" }"),
            "the package's version is the module's"
        );
    }

    #[test]
    fn generated_passwords_are_long_random_and_plain() {
        let a = generate_password();
        let b = generate_password();
        assert_eq!(a.len(), GENERATED_PASSWORD_LEN);
        assert_ne!(a, b);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
    }
}
