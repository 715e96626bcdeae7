//! What every owned pod and container shares: a locked-down security context, a writable
//! `/tmp`, and the Redis connection as env.

use super::{password_secret_ref, redis_host_port};
use crate::api::AbcRun;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, PodSecurityContext,
    PodSpec, SeccompProfile, SecretKeySelector, SecurityContext, Volume, VolumeMount,
};

/// Pod security context of every owned pod: non-root `uid`, RuntimeDefault seccomp.
fn pod_security_context(uid: i64) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(uid),
        run_as_group: Some(uid),
        fs_group: Some(uid),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    }
}

/// The pod spec every owned pod starts from: non-root `uid`, no service account token (no
/// owned pod talks to the API server), no service links (their variables would leak other
/// services' addresses into the user's model).
pub(crate) fn hardened_pod_spec(
    uid: i64,
    containers: Vec<Container>,
    volumes: Vec<Volume>,
) -> PodSpec {
    PodSpec {
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(pod_security_context(uid)),
        containers,
        volumes: Some(volumes),
        ..PodSpec::default()
    }
}

/// A writable `/tmp` (Python and pyABC need one; the root file system is read-only).
pub(crate) fn tmp_volume() -> Volume {
    Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}

pub(crate) fn tmp_mount() -> VolumeMount {
    VolumeMount {
        name: "tmp".into(),
        mount_path: "/tmp".into(),
        ..VolumeMount::default()
    }
}

/// Security context of every owned container: no privilege escalation, read-only root file
/// system, no capabilities.
pub(crate) fn container_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    }
}

pub(crate) fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

/// The Redis password as env, from the Secret it lives in (never a literal).
pub(super) fn password_env(run: &AbcRun, name: &str) -> EnvVar {
    let secret = password_secret_ref(run);
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.name,
                key: secret.key,
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
    }
}

/// Redis connection env of workers and master: host, port, password (from the Secret).
pub(super) fn redis_env(run: &AbcRun) -> Vec<EnvVar> {
    let (host, port) = redis_host_port(run);
    vec![
        env("ABC_REDIS_HOST", host),
        env("ABC_REDIS_PORT", port.to_string()),
        password_env(run, "ABC_REDIS_PASSWORD"),
    ]
}
