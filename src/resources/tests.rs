//! Properties of every object a run owns together: labels, owner references, the password
//! only through its Secret, locked-down pods, what an external Redis leaves out, refused runs.

use super::test_support::{PASSWORD, minimal, run};
use super::*;
use k8s_openapi::api::core::v1::{Container, PodSpec};
use kube::Resource;

fn all_objects(owned: &Owned) -> Vec<(String, serde_json::Value)> {
    let mut out = Vec::new();
    fn push<K: Resource<DynamicType = ()> + serde::Serialize>(
        out: &mut Vec<(String, serde_json::Value)>,
        obj: &K,
    ) {
        out.push((
            format!(
                "{}/{}",
                K::kind(&()),
                obj.meta().name.clone().unwrap_or_default()
            ),
            serde_json::to_value(obj).unwrap(),
        ));
    }
    if let Some(s) = &owned.secret {
        push(&mut out, s);
    }
    push(&mut out, &owned.config_map);
    if let Some(d) = &owned.redis_deployment {
        push(&mut out, d);
    }
    if let Some(s) = &owned.redis_service {
        push(&mut out, s);
    }
    if let Some(n) = &owned.network_policy {
        push(&mut out, n);
    }
    push(&mut out, &owned.workers);
    if let Some(j) = &owned.master_job {
        push(&mut out, j);
    }
    out
}

fn pod_specs(owned: &Owned) -> Vec<&PodSpec> {
    let mut specs = Vec::new();
    if let Some(d) = &owned.redis_deployment {
        specs.push(d.spec.as_ref().unwrap().template.spec.as_ref().unwrap());
    }
    specs.push(
        owned
            .workers
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap(),
    );
    if let Some(j) = &owned.master_job {
        specs.push(j.spec.as_ref().unwrap().template.spec.as_ref().unwrap());
    }
    specs
}

fn with_master() -> AbcRun {
    run("image: models/gaussian:1\nmaster:\n  command: [python, gaussian.py]\n")
}

#[test]
fn managed_run_owns_everything_with_labels_and_owner_reference() {
    let owned = build(&with_master(), Some(PASSWORD), &BuildSettings::default()).unwrap();
    let objects = all_objects(&owned);
    let kinds: Vec<&str> = objects.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "Secret/gaussian-redis-password",
            "ConfigMap/gaussian-worker-entrypoint",
            "Deployment/gaussian-redis",
            "Service/gaussian-redis",
            "NetworkPolicy/gaussian-redis",
            "Deployment/gaussian-workers",
            "Job/gaussian-master",
        ]
    );
    for (what, obj) in objects {
        let meta = &obj["metadata"];
        assert_eq!(meta["namespace"], "science", "{what}");
        assert_eq!(meta["labels"]["abc-operator.dev/run"], "gaussian", "{what}");
        assert_eq!(
            meta["labels"]["app.kubernetes.io/managed-by"], "abc-operator",
            "{what}"
        );
        assert_eq!(
            meta["labels"]["app.kubernetes.io/name"], "abc-run",
            "{what}"
        );
        assert!(
            meta["labels"]["abc-operator.dev/component"].is_string(),
            "{what}"
        );
        let owners = meta["ownerReferences"].as_array().unwrap();
        assert_eq!(owners.len(), 1, "{what}");
        assert_eq!(owners[0]["kind"], "AbcRun");
        assert_eq!(owners[0]["apiVersion"], "abc-operator.dev/v1alpha1");
        assert_eq!(owners[0]["name"], "gaussian");
        assert_eq!(owners[0]["uid"], "0b5e2c3a-1111-2222-3333-444455556666");
        assert_eq!(owners[0]["controller"], true);
    }
}

#[test]
fn password_is_never_a_literal_outside_its_secret() {
    let owned = build(&with_master(), Some(PASSWORD), &BuildSettings::default()).unwrap();
    for (what, obj) in all_objects(&owned) {
        let text = obj.to_string();
        if what.starts_with("Secret/") {
            continue;
        }
        assert!(!text.contains(PASSWORD), "{what} contains the password");
    }
    // Every password env var comes from the Secret.
    for spec in pod_specs(&owned) {
        let containers = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten());
        for c in containers {
            for var in c.env.iter().flatten() {
                if var.name.contains("PASSWORD") || var.name == "REDISCLI_AUTH" {
                    assert!(
                        var.value.is_none(),
                        "{} of {} is a literal",
                        var.name,
                        c.name
                    );
                    let key = var
                        .value_from
                        .as_ref()
                        .unwrap()
                        .secret_key_ref
                        .as_ref()
                        .unwrap();
                    assert_eq!(key.name, "gaussian-redis-password");
                    assert_eq!(key.key, "password");
                }
            }
        }
    }
}

fn assert_locked_down(spec: &PodSpec, c: &Container) {
    let pod = spec.security_context.as_ref().unwrap();
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(pod.run_as_non_root, Some(true), "{}", c.name);
    assert!(pod.run_as_user.unwrap() > 0, "{}", c.name);
    assert_eq!(
        pod.seccomp_profile.as_ref().unwrap().type_,
        "RuntimeDefault"
    );
    assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
    assert_eq!(sc.read_only_root_filesystem, Some(true), "{}", c.name);
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_string()][..]),
        "{}",
        c.name
    );
    assert!(
        sc.capabilities.as_ref().unwrap().add.is_none(),
        "{}",
        c.name
    );
    assert_ne!(sc.privileged, Some(true));
    assert_eq!(
        spec.automount_service_account_token,
        Some(false),
        "{}",
        c.name
    );
}

#[test]
fn every_container_is_non_root_read_only_without_capabilities() {
    let owned = build(&with_master(), Some(PASSWORD), &BuildSettings::default()).unwrap();
    let specs = pod_specs(&owned);
    assert_eq!(specs.len(), 3);
    for spec in specs {
        for c in spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
        {
            assert_locked_down(spec, c);
        }
    }
}

#[test]
fn external_redis_builds_no_redis_secret_or_network_policy() {
    let run = run(
        "image: img\nredis:\n  external:\n    host: redis.shared.svc\n    port: 6380\n    passwordSecret: {name: shared-redis, key: pw}\n",
    );
    let owned = build(&run, None, &BuildSettings::default()).unwrap();
    assert!(owned.secret.is_none());
    assert!(owned.redis_deployment.is_none());
    assert!(owned.redis_service.is_none());
    assert!(owned.network_policy.is_none());
    assert!(owned.master_job.is_none());
    // A password handed in by mistake is not used anywhere.
    let with_password = build(&run, Some(PASSWORD), &BuildSettings::default()).unwrap();
    assert_eq!(with_password, owned);
}

#[test]
fn managed_redis_with_own_secret_needs_no_generated_password() {
    let run = run("image: img\nredis:\n  managed:\n    passwordSecret: {name: mine}\n");
    let owned = build(&run, None, &BuildSettings::default()).unwrap();
    assert!(owned.secret.is_none());
    assert!(owned.redis_deployment.is_some());
}

#[test]
fn generated_password_is_required() {
    assert_eq!(
        build(&minimal(), None, &BuildSettings::default()),
        Err(BuildError::MissingPassword("gaussian".into()))
    );
}

#[test]
fn building_twice_gives_the_same_objects() {
    let a = build(&with_master(), Some(PASSWORD), &BuildSettings::default()).unwrap();
    let b = build(&with_master(), Some(PASSWORD), &BuildSettings::default()).unwrap();
    assert_eq!(a, b);
    assert_eq!(
        serde_json::to_string(&a.workers).unwrap(),
        serde_json::to_string(&b.workers).unwrap()
    );
}

#[test]
fn run_without_namespace_uid_or_with_a_bad_name_is_refused() {
    let mut run = minimal();
    run.metadata.namespace = None;
    assert!(matches!(
        build(&run, Some(PASSWORD), &BuildSettings::default()),
        Err(BuildError::MissingNamespace(_))
    ));
    let mut run = minimal();
    run.metadata.uid = None;
    assert!(matches!(
        build(&run, Some(PASSWORD), &BuildSettings::default()),
        Err(BuildError::MissingUid(_))
    ));
    for bad in [
        "a".repeat(57),
        "1run".into(),
        "run.v2".into(),
        "Run".into(),
        "run-".into(),
    ] {
        let mut run = minimal();
        run.metadata.name = Some(bad.clone());
        assert_eq!(
            build(&run, Some(PASSWORD), &BuildSettings::default()),
            Err(BuildError::InvalidName(bad))
        );
    }
    let mut run = minimal();
    run.metadata.name = Some("a".repeat(56));
    assert!(build(&run, Some(PASSWORD), &BuildSettings::default()).is_ok());
}

#[test]
fn crd_refuses_the_names_the_builders_refuse() {
    let crd = crate::api::crd_yaml();
    assert!(crd.contains(&format!("self.metadata.name.size() <= {MAX_RUN_NAME_LEN}")));
}
