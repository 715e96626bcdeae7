//! The environment of workers and master, the same in a pod and in a local run: the settings
//! the worker entrypoint takes from `spec.workers`, the names the operator owns, and how a
//! user's `env` merges with the operator's.

use super::Heartbeat;
use crate::api::WorkersSpec;
use k8s_openapi::api::core::v1::EnvVar;
use std::ffi::{OsStr, OsString};

/// Names the operator owns in worker and master processes: the Redis connection, the worker's
/// identity (its ledger ids) and the results folder must stay the operator's: the CRD refuses
/// a user's entry with one of these names ([`crate::api::AbcRunSpec::validate`] too, for a
/// local run). Other names of ours (e.g. `ABC_HEARTBEAT_SECONDS`) a user may override.
pub const RESERVED: [&str; 6] = [
    "ABC_REDIS_HOST",
    "ABC_REDIS_PORT",
    "ABC_REDIS_PASSWORD",
    "ABC_REDIS_SOCKET",
    "ABC_WORKER_ID",
    "ABC_RESULTS_DIR",
];

/// The entrypoint's settings from `spec.workers`: runtime, processes per worker, pyABC's
/// `--catch`, and the heartbeat period, derived from the heartbeat timeout
/// ([`Heartbeat::period`]).
pub fn worker_settings(workers: &WorkersSpec) -> [(&'static str, String); 4] {
    let heartbeat = Heartbeat::from_timeout_seconds(workers.heartbeat_timeout_seconds);
    [
        ("ABC_WORKER_RUNTIME", workers.runtime.clone()),
        ("ABC_WORKER_PROCESSES", workers.processes.to_string()),
        ("ABC_WORKER_CATCH", workers.catch.to_string()),
        (
            "ABC_HEARTBEAT_SECONDS",
            heartbeat.period().as_secs().to_string(),
        ),
    ]
}

/// An environment entry as a platform spells it: a container's `EnvVar`, or a name and a
/// value for a local process.
pub trait EnvEntry: Clone {
    fn env_name(&self) -> &OsStr;
    /// The literal value (a container's `valueFrom` has none the operator can read).
    fn literal(&self) -> Option<&OsStr>;
    /// This entry with `value` instead.
    fn with_literal(&self, value: OsString) -> Self;
}

impl EnvEntry for EnvVar {
    fn env_name(&self) -> &OsStr {
        OsStr::new(&self.name)
    }
    fn literal(&self) -> Option<&OsStr> {
        match (&self.value, &self.value_from) {
            (value, None) => Some(OsStr::new(value.as_deref().unwrap_or_default())),
            _ => None,
        }
    }
    fn with_literal(&self, value: OsString) -> Self {
        EnvVar {
            name: self.name.clone(),
            value: Some(value.to_string_lossy().into_owned()),
            value_from: None,
        }
    }
}

impl EnvEntry for (OsString, OsString) {
    fn env_name(&self) -> &OsStr {
        &self.0
    }
    fn literal(&self) -> Option<&OsStr> {
        Some(&self.1)
    }
    fn with_literal(&self, value: OsString) -> Self {
        (self.0.clone(), value)
    }
}

/// `ours` followed by the user's env, one entry per name (a container's env is a list-map keyed
/// by name: duplicates break server-side apply). A user's entry replaces one of ours with the
/// same name, except the [`RESERVED`] ones, which are dropped (the CRD refuses them; this is
/// for a run admitted without its rules), and `PYTHONPATH`, which goes after ours: ours holds
/// what the operator's processes import (the `abc_operator` module, a local run's model
/// folder). Among the user's own duplicates the last wins, as it would in the process.
pub fn merge<E: EnvEntry>(mut ours: Vec<E>, user: impl IntoIterator<Item = E>) -> Vec<E> {
    for var in user {
        if RESERVED
            .iter()
            .any(|name| OsStr::new(name) == var.env_name())
        {
            continue;
        }
        match ours.iter_mut().find(|v| v.env_name() == var.env_name()) {
            Some(existing) if var.env_name() == OsStr::new("PYTHONPATH") => {
                if let (Some(first), Some(then)) = (existing.literal(), var.literal()) {
                    let mut joined = first.to_os_string();
                    if !then.is_empty() {
                        joined.push(":");
                        joined.push(then);
                    }
                    *existing = existing.with_literal(joined);
                }
            }
            Some(existing) => *existing = var,
            None => ours.push(var),
        }
    }
    ours
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str, value: &str) -> (OsString, OsString) {
        (name.into(), value.into())
    }

    #[test]
    fn users_override_ours_except_the_reserved_names() {
        let merged = merge(
            vec![
                pair("ABC_REDIS_HOST", "r"),
                pair("ABC_HEARTBEAT_SECONDS", "5"),
            ],
            [
                pair("ABC_REDIS_HOST", "evil"),
                pair("ABC_HEARTBEAT_SECONDS", "2"),
                pair("MODEL", "a"),
                pair("MODEL", "b"),
            ],
        );
        assert_eq!(
            merged,
            [
                pair("ABC_REDIS_HOST", "r"),
                pair("ABC_HEARTBEAT_SECONDS", "2"),
                pair("MODEL", "b"),
            ]
        );
    }

    #[test]
    fn a_users_pythonpath_comes_after_ours() {
        let ours = || vec![pair("PYTHONPATH", "/etc/abc-operator")];
        assert_eq!(
            merge(ours(), [pair("PYTHONPATH", "/models:/lib")]),
            [pair("PYTHONPATH", "/etc/abc-operator:/models:/lib")]
        );
        assert_eq!(merge(ours(), [pair("PYTHONPATH", "")]), ours());
        assert_eq!(
            merge(vec![], [pair("PYTHONPATH", "/models")]),
            [pair("PYTHONPATH", "/models")]
        );
    }
}
