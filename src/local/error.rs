//! The one error type of the local runner. Every message says what to do about it.

use std::path::PathBuf;

const INSTALL_HINT: &str = "pass --python PATH or set ABC_PYTHON to a python that has pyabc, \
     e.g. `python3 -m venv .venv && .venv/bin/pip install -r python/requirements.txt`";

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error(
        "cannot serve the run's page on {addr}: {cause}; pass another --dashboard-port, or 0 for none"
    )]
    Dashboard {
        addr: std::net::SocketAddr,
        cause: std::io::Error,
    },

    #[error("cannot read the manifest {path}: {cause}")]
    ManifestRead {
        path: PathBuf,
        cause: std::io::Error,
    },

    #[error("{path} is not a valid AbcRun manifest: {cause}")]
    ManifestParse {
        path: PathBuf,
        cause: serde_yaml::Error,
    },

    #[error("{path}: expected apiVersion abc-operator.dev/v1alpha1 and kind AbcRun, found {found}")]
    ManifestKind { path: PathBuf, found: String },

    #[error("{path}: {cause}")]
    InvalidSpec {
        path: PathBuf,
        cause: crate::api::SpecError,
    },

    #[error("python interpreter {python} (from {origin}) cannot be run: {reason}; {INSTALL_HINT}")]
    PythonNotFound {
        python: String,
        origin: &'static str,
        reason: String,
    },

    #[error("python interpreter {python} (from {origin}) lacks {missing}; {INSTALL_HINT}")]
    PythonLacksPyabc {
        python: String,
        origin: &'static str,
        missing: String,
    },

    #[error(
        "python interpreter {python} (from {origin}) failed to check for pyabc: {detail}; {INSTALL_HINT}"
    )]
    PythonBroken {
        python: String,
        origin: &'static str,
        detail: String,
    },

    #[error("cannot create {path}: {cause}")]
    Files {
        path: PathBuf,
        cause: std::io::Error,
    },

    #[error("cannot start redis-server: {0}")]
    RedisStart(String),

    #[error(
        "the run's redis-server died and cannot be started again on 127.0.0.1:{port}, the port \
         the workers and the master were given: {cause}; the run stops; the generations stored so far \
         stay in its results folder"
    )]
    RedisRestart { port: u16, cause: String },

    #[error(
        "the run's redis-server on 127.0.0.1:{port} died again ({last}) after {restarts} restarts, \
         each of which cost the generation in progress; the run stops (is something killing it, \
         e.g. the OOM killer?); the generations stored so far stay in its results folder"
    )]
    RedisKeepsDying {
        port: u16,
        restarts: u32,
        last: String,
    },

    #[error("cannot talk to the run's Redis: {0}")]
    Redis(String),

    #[error("cannot start {what} ({program}): {cause}")]
    Spawn {
        what: String,
        program: String,
        cause: std::io::Error,
    },

    #[error(
        "worker {worker} failed {failures} times in a row soon after starting (last: {last_exit}); \
         restarting it will not help. Its log is {log}; last lines:\n{tail}"
    )]
    WorkersCrashLoop {
        worker: String,
        failures: u32,
        last_exit: String,
        log: PathBuf,
        tail: String,
    },
}
