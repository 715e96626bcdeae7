//! The ConfigMap holding the operator's files: the worker entrypoint and its Lua scripts beside
//! it, mounted into every worker, and the `abc_operator` module for master scripts, mounted
//! into the master (on its PYTHONPATH). One key a file, all in one folder.

use super::{BuildError, Component, object_meta};
use crate::api::AbcRun;
use crate::protocol::{MASTER_MODULE, MASTER_MODULE_FILE, WORKER_ENTRYPOINT_FILE, worker_files};
use k8s_openapi::api::core::v1::{ConfigMap, ConfigMapVolumeSource, Volume, VolumeMount};
use kube::ResourceExt;
use sha2::{Digest, Sha256};
use std::sync::LazyLock;

/// Key (and so file name) of the entrypoint in the ConfigMap.
pub const ENTRYPOINT_KEY: &str = WORKER_ENTRYPOINT_FILE;
/// Key (and so file name) of the master module in the ConfigMap.
pub const MASTER_MODULE_KEY: &str = MASTER_MODULE_FILE;
/// Where workers and the master mount the ConfigMap (read-only).
pub const ENTRYPOINT_DIR: &str = "/etc/abc-operator";
/// The entrypoint's path in a worker container.
pub const ENTRYPOINT_PATH: &str = "/etc/abc-operator/abc_worker.py";

/// Name of the entrypoint ConfigMap.
pub fn worker_entrypoint_name(run: &AbcRun) -> String {
    format!("{}-worker-entrypoint", run.name_any())
}

/// SHA-256 (hex) of the worker's files (the entrypoint and its Lua scripts, with their names),
/// put on the worker pod template so that a new operator version with a new entrypoint or new
/// scripts rolls the workers (a running worker keeps the code it loaded). Computed once: every
/// reconcile builds the worker Deployment.
pub fn entrypoint_sha256() -> &'static str {
    static SHA256: LazyLock<String> = LazyLock::new(|| {
        let mut hash = Sha256::new();
        for (name, text) in worker_files() {
            // lengths first: no two sets of files hash the same bytes
            hash.update((name.len() as u64).to_le_bytes());
            hash.update(name.as_bytes());
            hash.update((text.len() as u64).to_le_bytes());
            hash.update(text.as_bytes());
        }
        hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
    });
    &SHA256
}

/// The ConfigMap (`{run}-worker-entrypoint`, keys [`ENTRYPOINT_KEY`], [`MASTER_MODULE_KEY`] and
/// the file name of each Lua script). Flat, so that every pod's volume projects every key
/// without a list of them: a pod of an older operator version whose container restarts after
/// an upgrade finds the new entrypoint's scripts beside it.
pub fn worker_entrypoint_config_map(run: &AbcRun) -> Result<ConfigMap, BuildError> {
    let data = worker_files()
        .chain([(MASTER_MODULE_KEY, MASTER_MODULE)])
        .map(|(name, text)| (name.to_string(), text.to_string()))
        .collect();
    Ok(ConfigMap {
        metadata: object_meta(run, worker_entrypoint_name(run), Component::Worker)?,
        data: Some(data),
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
    use crate::protocol::WORKER_ENTRYPOINT;
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
        let package = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("python/abc_operator/__init__.py");
        assert_eq!(
            data[MASTER_MODULE_KEY],
            std::fs::read_to_string(package).unwrap(),
            "the master gets the Python package's module byte for byte"
        );
        assert_eq!(
            ENTRYPOINT_PATH,
            format!("{ENTRYPOINT_DIR}/{ENTRYPOINT_KEY}")
        );
    }

    #[test]
    fn every_worker_file_is_a_key_projected_beside_the_entrypoint() {
        let data = worker_entrypoint_config_map(&minimal())
            .unwrap()
            .data
            .unwrap();
        for (name, text) in worker_files() {
            assert_eq!(data[name], text, "{name}");
        }
        assert_eq!(data.len(), worker_files().count() + 1);
        // no items: the volume projects every key, each a file in ENTRYPOINT_DIR
        let source = operator_files_volume(&minimal()).config_map.unwrap();
        assert_eq!(source.items, None);
        assert_eq!(source.default_mode, Some(0o444));
    }

    #[test]
    fn the_config_map_stays_far_below_the_size_limit() {
        // the API server refuses a ConfigMap over 1 MiB
        let data = worker_entrypoint_config_map(&minimal())
            .unwrap()
            .data
            .unwrap();
        let size: usize = data.iter().map(|(key, text)| key.len() + text.len()).sum();
        assert!(size < 256 * 1024, "{size} bytes");
    }

    #[test]
    fn entrypoint_hash_is_hex() {
        assert_eq!(entrypoint_sha256().len(), 64);
        assert!(entrypoint_sha256().chars().all(|c| c.is_ascii_hexdigit()));
    }
}
