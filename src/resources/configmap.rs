//! The ConfigMap holding the operator's Python files: the worker entrypoint, mounted into every
//! worker, and the `abc_operator` module for master scripts, mounted into the master (on its
//! PYTHONPATH).

use super::{BuildError, Component, object_meta};
use crate::api::AbcRun;
use crate::protocol::{MASTER_MODULE, WORKER_ENTRYPOINT};
use k8s_openapi::api::core::v1::{ConfigMap, ConfigMapVolumeSource, Volume, VolumeMount};
use kube::ResourceExt;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::LazyLock;

/// Key (and so file name) of the entrypoint in the ConfigMap.
pub const ENTRYPOINT_KEY: &str = "abc_worker.py";
/// Key (and so file name) of the master module in the ConfigMap.
pub const MASTER_MODULE_KEY: &str = "abc_operator.py";
/// Where workers and the master mount the ConfigMap (read-only).
pub const ENTRYPOINT_DIR: &str = "/etc/abc-operator";
/// The entrypoint's path in a worker container.
pub const ENTRYPOINT_PATH: &str = "/etc/abc-operator/abc_worker.py";

/// Name of the entrypoint ConfigMap.
pub fn worker_entrypoint_name(run: &AbcRun) -> String {
    format!("{}-worker-entrypoint", run.name_any())
}

/// SHA-256 (hex) of the entrypoint, put on the worker pod template so that a new operator
/// version with a new entrypoint rolls the workers (a running worker keeps the code it loaded).
/// Computed once: every reconcile builds the worker Deployment.
pub fn entrypoint_sha256() -> &'static str {
    static SHA256: LazyLock<String> = LazyLock::new(|| {
        Sha256::digest(WORKER_ENTRYPOINT.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    });
    &SHA256
}

/// The ConfigMap (`{run}-worker-entrypoint`, keys [`ENTRYPOINT_KEY`] and [`MASTER_MODULE_KEY`]).
pub fn worker_entrypoint_config_map(run: &AbcRun) -> Result<ConfigMap, BuildError> {
    Ok(ConfigMap {
        metadata: object_meta(run, worker_entrypoint_name(run), Component::Worker)?,
        data: Some(BTreeMap::from([
            (ENTRYPOINT_KEY.to_string(), WORKER_ENTRYPOINT.to_string()),
            (MASTER_MODULE_KEY.to_string(), MASTER_MODULE.to_string()),
        ])),
        ..ConfigMap::default()
    })
}

/// The pod volume of the ConfigMap (files read-only for everybody: pods run as non-root).
pub fn operator_files_volume(run: &AbcRun) -> Volume {
    Volume {
        name: "abc-operator".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: worker_entrypoint_name(run),
            default_mode: Some(0o444),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// Its mount at [`ENTRYPOINT_DIR`], read-only.
pub fn operator_files_mount() -> VolumeMount {
    VolumeMount {
        name: "abc-operator".into(),
        mount_path: ENTRYPOINT_DIR.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
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
        let data = cm.data.unwrap();
        assert_eq!(data[ENTRYPOINT_KEY], WORKER_ENTRYPOINT);
        assert_eq!(data[MASTER_MODULE_KEY], MASTER_MODULE);
        assert_eq!(
            ENTRYPOINT_PATH,
            format!("{ENTRYPOINT_DIR}/{ENTRYPOINT_KEY}")
        );
    }

    #[test]
    fn entrypoint_hash_is_hex() {
        assert_eq!(entrypoint_sha256().len(), 64);
        assert!(entrypoint_sha256().chars().all(|c| c.is_ascii_hexdigit()));
    }
}
