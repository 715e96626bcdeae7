//! The run's Redis: where it is (managed or external), and the managed one's one-replica
//! Deployment and Service.
//!
//! # How the password reaches redis-server
//!
//! Redis has no "read the password from a file or env" option, and anything on the command line
//! of redis-server (`--requirepass ...`) is readable by every process of the node through
//! `/proc/*/cmdline` and shows up in `ps`. So an init container (same image, whose shell is all
//! it needs) gets the password as env from the Secret and writes an ACL file for the `default`
//! user into an in-memory emptyDir:
//!
//! ```text
//! user default on #<sha256 of the password> ~* &* +@all
//! ```
//!
//! `printf` is a shell builtin (no process, no argv) and the password reaches `sha256sum` on
//! stdin, so it is on no command line; the file holds only its SHA-256, which also needs no
//! quoting whatever characters a user-provided password has. redis-server then starts with
//! `--aclfile`. Clients authenticate with `AUTH <password>` as usual (pyABC, the entrypoint,
//! the operator). The password is not in the main container's argv either; only its readiness
//! probe's `redis-cli` reads it, from `REDISCLI_AUTH`.
//!
//! A changed password (a user's own `passwordSecret` edited) takes effect when the Redis pod
//! restarts; the generated one never changes.

use super::{
    BuildError, BuildSettings, Component, REDIS_PORT, container_security_context, finished,
    hardened_pod_spec, namespace, object_meta, password_env, placed, pod_metadata, selector_labels,
};
use crate::api::{AbcRun, ManagedRedis, default_redis_port};
use crate::protocol::server_config;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, ExecAction, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, Service, ServicePort, ServiceSpec, TCPSocketAction, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use std::collections::BTreeMap;

/// The managed Redis of the run (the default when `spec.redis.external` is unset), or `None`
/// for an external one.
pub fn managed_redis(run: &AbcRun) -> Option<ManagedRedis> {
    match &run.spec.redis.external {
        Some(_) => None,
        None => Some(run.spec.redis.managed.clone().unwrap_or_default()),
    }
}

/// Name of the managed Redis' Service (also its Deployment's and NetworkPolicy's name).
pub fn redis_service_name(run: &AbcRun) -> String {
    format!("{}-redis", run.name_any())
}

/// Redis host and port as the run's pods see them (same namespace: the Service's short name).
pub fn redis_host_port(run: &AbcRun) -> (String, i32) {
    match &run.spec.redis.external {
        Some(external) => (external.host.clone(), external.port),
        None => (redis_service_name(run), REDIS_PORT),
    }
}

/// Redis host and port as the operator sees them from its own namespace: the managed Redis'
/// Service as `{service}.{namespace}.svc`; an external host without a dot (a Service in the
/// run's namespace, as the run's pods resolve it) qualified the same way; any other external
/// host (a DNS name or an address) unchanged.
pub fn redis_host_port_for_operator(run: &AbcRun) -> Result<(String, u16), BuildError> {
    let namespace = namespace(run)?;
    let (host, port) = redis_host_port(run);
    let host = if host.contains('.') || host.contains(':') {
        host
    } else {
        format!("{host}.{namespace}.svc")
    };
    let port = u16::try_from(port).unwrap_or(default_redis_port() as u16);
    Ok((host, port))
}

/// The Redis image of a managed Redis when neither `spec.redis.managed.image` nor the
/// operator's `--redis-image` says otherwise.
pub const DEFAULT_REDIS_IMAGE: &str = "redis:7.4-alpine";
/// uid (and gid) Redis runs as (the `redis` user of the official images).
pub const REDIS_UID: i64 = 999;

const CONFIG_DIR: &str = "/config";
const ACL_FILE: &str = "/config/users.acl";
const DATA_DIR: &str = "/data";
const PORT_NAME: &str = "redis";

/// Writes the ACL file from `REDIS_PASSWORD` without putting the password on any command line
/// (see the module docs).
const WRITE_ACL_SCRIPT: &str = r#"set -eu
umask 077
hash="$(printf '%s' "$REDIS_PASSWORD" | sha256sum | cut -d ' ' -f 1)"
printf 'user default on #%s ~* &* +@all\n' "$hash" > /config/users.acl
"#;

/// Ready when an authenticated PING answers: proves the ACL file took the password.
const READINESS_SCRIPT: &str = "redis-cli -h 127.0.0.1 -p 6379 ping | grep -qx PONG";

/// Name of the managed Redis' Deployment (same as its Service).
pub fn redis_deployment_name(run: &AbcRun) -> String {
    redis_service_name(run)
}

/// Requests of the Redis container when `spec.redis.managed.resources` is unset: a Redis with
/// no requests is the first pod evicted under node pressure, which would lose the run's state.
fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity("100m".into())),
            ("memory".to_string(), Quantity("128Mi".into())),
        ])),
        ..ResourceRequirements::default()
    }
}

/// The managed Redis' Deployment, or `None` for an external Redis.
///
/// One replica, `Recreate` (two Redis pods behind the Service would split the run's state),
/// no persistence (`--save ""`, `--appendonly no`: pyABC's state is per run and ephemeral),
/// `/data` an emptyDir, and clients for 10,000 worker processes ([`server_config`]).
pub fn redis_deployment(
    run: &AbcRun,
    settings: &BuildSettings,
) -> Result<Option<Deployment>, BuildError> {
    let Some(managed) = managed_redis(run) else {
        return Ok(None);
    };
    let image = managed
        .image
        .clone()
        .filter(|image| !image.is_empty())
        .unwrap_or_else(|| settings.default_redis_image.clone());
    let config_mount = VolumeMount {
        name: "config".into(),
        mount_path: CONFIG_DIR.into(),
        ..VolumeMount::default()
    };
    let init = Container {
        name: "write-acl".into(),
        image: Some(image.clone()),
        command: Some(vec!["sh".into(), "-c".into(), WRITE_ACL_SCRIPT.into()]),
        env: Some(vec![password_env(run, "REDIS_PASSWORD")]),
        volume_mounts: Some(vec![config_mount.clone()]),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), Quantity("10m".into())),
                ("memory".to_string(), Quantity("16Mi".into())),
            ])),
            ..ResourceRequirements::default()
        }),
        security_context: Some(container_security_context()),
        ..Container::default()
    };
    let redis = Container {
        name: "redis".into(),
        image: Some(image),
        command: Some(
            [
                "redis-server",
                "--port",
                "6379",
                "--aclfile",
                ACL_FILE,
                "--dir",
                DATA_DIR,
                "--save",
                "",
                "--appendonly",
                "no",
            ]
            .map(String::from)
            .into_iter()
            .chain(server_config::command_line_options())
            .collect(),
        ),
        env: Some(vec![password_env(run, "REDISCLI_AUTH")]),
        ports: Some(vec![ContainerPort {
            name: Some(PORT_NAME.into()),
            container_port: REDIS_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(Probe {
            exec: Some(ExecAction {
                command: Some(vec!["sh".into(), "-c".into(), READINESS_SCRIPT.into()]),
            }),
            period_seconds: Some(5),
            timeout_seconds: Some(3),
            failure_threshold: Some(3),
            ..Probe::default()
        }),
        liveness_probe: Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::String(PORT_NAME.into()),
                host: None,
            }),
            initial_delay_seconds: Some(5),
            period_seconds: Some(10),
            timeout_seconds: Some(3),
            failure_threshold: Some(6),
            ..Probe::default()
        }),
        resources: Some(managed.resources.clone().unwrap_or_else(default_resources)),
        volume_mounts: Some(vec![
            config_mount,
            VolumeMount {
                name: "data".into(),
                mount_path: DATA_DIR.into(),
                ..VolumeMount::default()
            },
        ]),
        security_context: Some(container_security_context()),
        ..Container::default()
    };
    let selector = selector_labels(run, Component::Redis);
    let meta = object_meta(run, redis_deployment_name(run), Component::Redis)?;
    Ok(Some(Deployment {
        spec: Some(DeploymentSpec {
            // Nothing needs Redis once the run has finished: pyABC's state is per generation
            // and the results are in the master's database.
            replicas: Some(if finished(run) { 0 } else { 1 }),
            revision_history_limit: Some(2),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".into()),
                rolling_update: None,
            }),
            template: PodTemplateSpec {
                metadata: Some(pod_metadata(
                    meta.labels.clone(),
                    BTreeMap::new(),
                    &managed.pod,
                )),
                spec: Some(placed(
                    run,
                    PodSpec {
                        init_containers: Some(vec![init]),
                        ..hardened_pod_spec(
                            REDIS_UID,
                            vec![redis],
                            vec![
                                Volume {
                                    name: "config".into(),
                                    empty_dir: Some(EmptyDirVolumeSource {
                                        medium: Some("Memory".into()),
                                        size_limit: Some(Quantity("1Mi".into())),
                                    }),
                                    ..Volume::default()
                                },
                                Volume {
                                    name: "data".into(),
                                    empty_dir: Some(EmptyDirVolumeSource::default()),
                                    ..Volume::default()
                                },
                            ],
                        )
                    },
                    &managed.pod,
                )),
            },
            ..DeploymentSpec::default()
        }),
        metadata: meta,
        ..Deployment::default()
    }))
}

/// The managed Redis' Service (`{run}-redis`, port 6379), or `None` for an external Redis.
pub fn redis_service(run: &AbcRun) -> Result<Option<Service>, BuildError> {
    if managed_redis(run).is_none() {
        return Ok(None);
    }
    Ok(Some(Service {
        metadata: object_meta(run, redis_service_name(run), Component::Redis)?,
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(run, Component::Redis)),
            ports: Some(vec![ServicePort {
                name: Some(PORT_NAME.into()),
                port: REDIS_PORT,
                target_port: Some(IntOrString::String(PORT_NAME.into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Phase;
    use crate::resources::test_support::{in_phase, minimal, run};

    fn pod(run: &AbcRun) -> PodSpec {
        redis_deployment(run, &BuildSettings::default())
            .unwrap()
            .unwrap()
            .spec
            .unwrap()
            .template
            .spec
            .unwrap()
    }

    #[test]
    fn password_is_on_no_command_line() {
        let pod = pod(&minimal());
        for c in pod
            .containers
            .iter()
            .chain(pod.init_containers.iter().flatten())
        {
            let argv = [
                c.command.clone().unwrap_or_default(),
                c.args.clone().unwrap_or_default(),
            ]
            .concat()
            .join(" ");
            assert!(!argv.contains("requirepass"), "{}: {argv}", c.name);
            // The password only appears as a variable the shell expands inside a builtin.
            if argv.contains("REDIS_PASSWORD") {
                assert!(argv.contains(r#"printf '%s' "$REDIS_PASSWORD" | sha256sum"#));
            }
        }
        let redis = &pod.containers[0];
        let argv = redis.command.as_ref().unwrap();
        let aclfile = argv.iter().position(|a| a == "--aclfile").unwrap();
        assert_eq!(argv[aclfile + 1], ACL_FILE);
        assert!(WRITE_ACL_SCRIPT.contains("> /config/users.acl"));
    }

    #[test]
    fn runs_as_redis_user_with_ephemeral_data_and_authenticated_readiness() {
        let pod = pod(&minimal());
        let sc = pod.security_context.as_ref().unwrap();
        assert_eq!(sc.run_as_user, Some(REDIS_UID));
        let redis = &pod.containers[0];
        assert_eq!(redis.image.as_deref(), Some(DEFAULT_REDIS_IMAGE));
        assert!(
            redis
                .volume_mounts
                .as_ref()
                .unwrap()
                .iter()
                .any(|m| m.mount_path == "/data")
        );
        let env = redis.env.as_ref().unwrap();
        assert!(
            env.iter()
                .any(|e| e.name == "REDISCLI_AUTH" && e.value_from.is_some())
        );
        let readiness = redis
            .readiness_probe
            .as_ref()
            .unwrap()
            .exec
            .as_ref()
            .unwrap();
        assert!(
            readiness
                .command
                .as_ref()
                .unwrap()
                .join(" ")
                .contains("redis-cli")
        );
        assert!(redis.liveness_probe.as_ref().unwrap().tcp_socket.is_some());
        let volumes = pod.volumes.unwrap();
        assert!(volumes.iter().all(|v| v.empty_dir.is_some()));
        // The ACL file (a password hash) lives in memory only.
        let config = volumes.iter().find(|v| v.name == "config").unwrap();
        assert_eq!(
            config.empty_dir.as_ref().unwrap().medium.as_deref(),
            Some("Memory")
        );
    }

    #[test]
    fn configured_for_ten_thousand_worker_processes() {
        let pod = pod(&minimal());
        let argv = pod.containers[0].command.clone().unwrap();
        let value = |option: &str| {
            let at = argv.iter().position(|a| a == option).unwrap();
            argv[at + 1].clone()
        };
        assert_eq!(
            value("--maxclients"),
            server_config::max_clients().to_string()
        );
        assert_eq!(value("--tcp-backlog"), "4096");
        assert_eq!(value("--timeout"), "0");
    }

    #[test]
    fn one_replica_recreated_never_two() {
        let spec = redis_deployment(&minimal(), &BuildSettings::default())
            .unwrap()
            .unwrap()
            .spec
            .unwrap();
        assert_eq!(spec.replicas, Some(1));
        assert_eq!(spec.strategy.unwrap().type_.as_deref(), Some("Recreate"));
    }

    #[test]
    fn a_finished_run_scales_the_managed_redis_to_zero() {
        for (phase, want) in [
            (Phase::Running, 1),
            (Phase::Stopped, 0),
            (Phase::Succeeded, 0),
            (Phase::Failed, 0),
        ] {
            let run = in_phase(minimal(), phase);
            let spec = redis_deployment(&run, &BuildSettings::default())
                .unwrap()
                .unwrap()
                .spec
                .unwrap();
            assert_eq!(spec.replicas, Some(want), "{phase}");
        }
    }

    #[test]
    fn image_and_resources_come_from_the_spec() {
        let run = run(
            "image: i\nredis:\n  managed:\n    image: redis:7.2\n    resources: {limits: {memory: 1Gi}}\n",
        );
        let redis = &pod(&run).containers[0];
        assert_eq!(redis.image.as_deref(), Some("redis:7.2"));
        let resources = redis.resources.as_ref().unwrap();
        assert_eq!(
            resources.limits.as_ref().unwrap()["memory"],
            Quantity("1Gi".into())
        );
        assert!(resources.requests.is_none());
    }

    #[test]
    fn the_operators_redis_image_applies_unless_the_run_names_one() {
        // An air-gapped cluster mirrors Redis under its own name and tells the operator once.
        let mirrored = BuildSettings {
            default_redis_image: "mirror.example/redis:7.4".into(),
        };
        let images = |run: &AbcRun| {
            let spec = redis_deployment(run, &mirrored)
                .unwrap()
                .unwrap()
                .spec
                .unwrap()
                .template
                .spec
                .unwrap();
            [&spec.init_containers.unwrap()[0], &spec.containers[0]]
                .map(|c| c.image.clone().unwrap_or_default())
        };
        assert_eq!(images(&minimal()), ["mirror.example/redis:7.4"; 2]);
        let own = run("image: i\nredis:\n  managed: {image: redis:7.2}\n");
        assert_eq!(images(&own), ["redis:7.2"; 2], "the run's own image wins");
        let empty = run("image: i\nredis:\n  managed: {image: \"\"}\n");
        assert_eq!(images(&empty), ["mirror.example/redis:7.4"; 2]);
    }

    #[test]
    fn service_selects_the_redis_pod_on_6379() {
        let run = minimal();
        let svc = redis_service(&run).unwrap().unwrap();
        assert_eq!(svc.metadata.name.as_deref(), Some("gaussian-redis"));
        let spec = svc.spec.unwrap();
        assert_eq!(spec.ports.unwrap()[0].port, 6379);
        let pod_labels = redis_deployment(&run, &BuildSettings::default())
            .unwrap()
            .unwrap()
            .spec
            .unwrap()
            .template
            .metadata
            .unwrap()
            .labels
            .unwrap();
        for (k, v) in spec.selector.unwrap() {
            assert_eq!(pod_labels[&k], v);
        }
    }

    #[test]
    fn external_redis_has_no_deployment_or_service() {
        let run = run("image: i\nredis:\n  external: {host: h, passwordSecret: {name: s}}\n");
        assert!(
            redis_deployment(&run, &BuildSettings::default())
                .unwrap()
                .is_none()
        );
        assert!(redis_service(&run).unwrap().is_none());
    }

    #[test]
    fn operator_reaches_redis_by_qualified_service_name() {
        assert_eq!(
            redis_host_port_for_operator(&minimal()).unwrap(),
            ("gaussian-redis.science.svc".to_string(), 6379)
        );
        let short =
            run("image: i\nredis:\n  external: {host: shared, passwordSecret: {name: s}}\n");
        assert_eq!(
            redis_host_port_for_operator(&short).unwrap(),
            ("shared.science.svc".to_string(), 6379)
        );
        let fqdn = run(
            "image: i\nredis:\n  external: {host: redis.example.org, port: 7000, passwordSecret: {name: s}}\n",
        );
        assert_eq!(
            redis_host_port_for_operator(&fqdn).unwrap(),
            ("redis.example.org".to_string(), 7000)
        );
    }
}
