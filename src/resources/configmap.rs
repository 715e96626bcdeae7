//! The ConfigMap holding the operator's worker entrypoint, mounted into every worker.

use super::{BuildError, Component, object_meta};
use crate::api::AbcRun;
use crate::protocol::WORKER_ENTRYPOINT;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Key (and so file name) of the entrypoint in the ConfigMap.
pub const ENTRYPOINT_KEY: &str = "abc_worker.py";
/// Where workers mount the ConfigMap (read-only).
pub const ENTRYPOINT_DIR: &str = "/etc/abc-operator";
/// The entrypoint's path in a worker container.
pub const ENTRYPOINT_PATH: &str = "/etc/abc-operator/abc_worker.py";

/// Name of the entrypoint ConfigMap.
pub fn worker_entrypoint_name(run: &AbcRun) -> String {
    format!("{}-worker-entrypoint", run.name_any())
}

/// SHA-256 (hex) of the entrypoint, put on the worker pod template so that a new operator
/// version with a new entrypoint rolls the workers (a running worker keeps the code it loaded).
pub fn entrypoint_sha256() -> String {
    Sha256::digest(WORKER_ENTRYPOINT.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The entrypoint ConfigMap (`{run}-worker-entrypoint`, key [`ENTRYPOINT_KEY`]).
pub fn worker_entrypoint_config_map(run: &AbcRun) -> Result<ConfigMap, BuildError> {
    Ok(ConfigMap {
        metadata: object_meta(run, worker_entrypoint_name(run), Component::Worker)?,
        data: Some(BTreeMap::from([(
            ENTRYPOINT_KEY.to_string(),
            WORKER_ENTRYPOINT.to_string(),
        )])),
        ..ConfigMap::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::test_support::minimal;

    #[test]
    fn holds_the_entrypoint_the_workers_run() {
        let cm = worker_entrypoint_config_map(&minimal()).unwrap();
        assert_eq!(
            cm.metadata.name.as_deref(),
            Some("gaussian-worker-entrypoint")
        );
        assert_eq!(cm.data.unwrap()[ENTRYPOINT_KEY], WORKER_ENTRYPOINT);
        assert_eq!(
            ENTRYPOINT_PATH,
            format!("{ENTRYPOINT_DIR}/{ENTRYPOINT_KEY}")
        );
    }

    #[test]
    fn entrypoint_hash_is_stable_hex() {
        assert_eq!(entrypoint_sha256(), entrypoint_sha256());
        assert_eq!(entrypoint_sha256().len(), 64);
    }
}
