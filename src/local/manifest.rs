//! Reading an AbcRun manifest for a local run: the same types and checks as on a cluster, plus
//! notes on the fields a local run cannot honour.

use super::error::LocalError;
use crate::api::{AbcRun, GROUP};
use k8s_openapi::api::core::v1::EnvVar;
use std::path::{Path, PathBuf};

/// A parsed, validated manifest and the folder the master runs in.
#[derive(Debug)]
pub struct Manifest {
    pub run: AbcRun,
    /// Its folder: the master's working directory, and on the workers' PYTHONPATH.
    pub dir: PathBuf,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Types {
    api_version: Option<String>,
    kind: Option<String>,
}

/// Reads, parses and validates a manifest.
pub fn load(path: &Path) -> Result<Manifest, LocalError> {
    let text = std::fs::read_to_string(path).map_err(|cause| LocalError::ManifestRead {
        path: path.to_path_buf(),
        cause,
    })?;
    let run = parse(path, &text)?;
    let path = std::path::absolute(path).map_err(|cause| LocalError::ManifestRead {
        path: path.to_path_buf(),
        cause,
    })?;
    let dir = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    Ok(Manifest { run, dir })
}

/// Parses and validates manifest text (`path` only names it in errors).
pub fn parse(path: &Path, text: &str) -> Result<AbcRun, LocalError> {
    let parse_error = |cause| LocalError::ManifestParse {
        path: path.to_path_buf(),
        cause,
    };
    // The derived AbcRun type does not keep apiVersion and kind, so they are read on their own:
    // a Deployment or an AbcRun of another version must not be run as if it were this one.
    let types: Types = serde_yaml::from_str(text).map_err(parse_error)?;
    let expected_api = format!("{GROUP}/v1alpha1");
    if types.api_version.as_deref() != Some(expected_api.as_str())
        || types.kind.as_deref() != Some("AbcRun")
    {
        let found = format!(
            "apiVersion {:?}, kind {:?}",
            types.api_version.unwrap_or_default(),
            types.kind.unwrap_or_default()
        );
        return Err(LocalError::ManifestKind {
            path: path.to_path_buf(),
            found,
        });
    }
    let run: AbcRun = serde_yaml::from_str(text).map_err(parse_error)?;
    run.spec
        .validate()
        .map_err(|cause| LocalError::InvalidSpec {
            path: path.to_path_buf(),
            cause,
        })?;
    Ok(run)
}

/// Fields that only mean something on a cluster, as one note each (shown as warnings).
pub fn cluster_only_notes(run: &AbcRun) -> Vec<String> {
    let spec = &run.spec;
    let mut notes = Vec::new();
    if spec.redis.external.is_some() {
        notes.push(
            "spec.redis.external is ignored locally: the run uses its own redis-server".to_string(),
        );
    }
    if spec.suspend {
        notes.push("spec.suspend is ignored locally".to_string());
    }
    if spec.stop {
        notes.push("spec.stop is ignored locally; press Ctrl-C to stop a local run".to_string());
    }
    if spec.idle_timeout_seconds.is_some() {
        notes.push("spec.idleTimeoutSeconds is ignored locally".to_string());
    }
    let master_env = spec
        .master
        .as_ref()
        .map(|m| m.env.as_slice())
        .unwrap_or_default();
    for (field, env) in [
        ("spec.workers.env", spec.workers.env.as_slice()),
        ("spec.master.env", master_env),
    ] {
        for var in env.iter().filter(|v| v.value_from.is_some()) {
            notes.push(format!(
                "{field} {} uses valueFrom, which a local run cannot resolve: left unset",
                var.name
            ));
        }
    }
    notes
}

/// The literal `name=value` pairs of an env list (valueFrom entries are skipped, see above).
pub fn literal_env(env: &[EnvVar]) -> Vec<(String, String)> {
    env.iter()
        .filter(|v| v.value_from.is_none())
        .map(|v| (v.name.clone(), v.value.clone().unwrap_or_default()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "apiVersion: abc-operator.dev/v1alpha1\nkind: AbcRun\nmetadata: {name: g}\n\
        spec:\n  image: img\n  master:\n    command: [python, m.py]\n    env:\n    - {name: A, value: '1'}\n    \
        - name: S\n      valueFrom: {secretKeyRef: {name: s, key: k}}\n";

    #[test]
    fn the_example_manifest_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/gaussian/abcrun.yaml");
        let manifest = load(&path).unwrap();
        assert_eq!(manifest.run.metadata.name.as_deref(), Some("gaussian"));
        assert!(manifest.run.spec.master.is_some());
        assert!(manifest.dir.ends_with("examples/gaussian"));
        assert!(cluster_only_notes(&manifest.run).is_empty());
    }

    #[test]
    fn bad_runtime_names_the_field() {
        let text = GOOD.replace(
            "  image: img\n",
            "  image: img\n  workers: {runtime: abc}\n",
        );
        let err = parse(Path::new("m.yaml"), &text).unwrap_err().to_string();
        assert!(
            err.contains("m.yaml")
                && err.contains("spec.workers.runtime")
                && err.contains("\"abc\""),
            "{err}"
        );
    }

    #[test]
    fn wrong_kind_and_bad_yaml_are_rejected() {
        let err = parse(
            Path::new("m.yaml"),
            &GOOD.replace("kind: AbcRun", "kind: Pod"),
        )
        .unwrap_err();
        assert!(matches!(err, LocalError::ManifestKind { .. }), "{err}");
        let err = parse(Path::new("m.yaml"), "spec: [").unwrap_err();
        assert!(matches!(err, LocalError::ManifestParse { .. }), "{err}");
    }

    #[test]
    fn env_from_secrets_is_noted_and_skipped() {
        let run = parse(Path::new("m.yaml"), GOOD).unwrap();
        let notes = cluster_only_notes(&run);
        assert!(
            notes.iter().any(|n| n.contains("spec.master.env S")),
            "{notes:?}"
        );
        let env = literal_env(&run.spec.master.unwrap().env);
        assert_eq!(env, vec![("A".to_string(), "1".to_string())]);
    }
}
