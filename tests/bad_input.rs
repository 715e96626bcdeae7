//! Bad input, tried in bulk: random AbcRun specs and manifests (wrong types, huge numbers,
//! empty and unicode names, missing Secrets) through everything that reads a run without a
//! cluster: parsing into the API types, validation, the local runner's manifest loading, the
//! controller's guarded read, the builders and the status computation. Nothing may panic, and
//! every rejection must name the field it is about.
//!
//! Two generators: structured specs (plausible values with their edge cases, through the whole
//! pipeline) and mutated manifests (one known field of a valid manifest set to a random value
//! of any type, which the rejection must then name). The seed is fixed so that a failure
//! replays; `PROPTEST_CASES` scales every group.

use abc_operator::api::{AbcRun, AbcRunStatus, Progress};
use abc_operator::controller::GuardedRun;
use abc_operator::controller::follow_up;
use abc_operator::controller::observe::{MasterState, Observed, PodProblem};
use abc_operator::controller::status;
use abc_operator::local::manifest;
use abc_operator::protocol::Resumed;
use abc_operator::resources::{self, BuildSettings};
use k8s_openapi::jiff::Timestamp;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestRunner};
use serde_json::{Value, json};
use std::path::Path;

/// Cases per group unless `PROPTEST_CASES` says otherwise.
fn runner(default_cases: u32) -> TestRunner {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    TestRunner::new(Config {
        cases,
        rng_seed: RngSeed::Fixed(0xabc),
        failure_persistence: None,
        ..Config::default()
    })
}

// ---- values -------------------------------------------------------------------------------

/// Strings users and tools write by mistake: empty, whitespace, unicode (also multi-byte at
/// the end), control characters, very long ones, and anything else.
fn text() -> BoxedStrategy<String> {
    prop_oneof![
        Just(String::new()),
        Just(" ".to_string()),
        Just("é".to_string()),
        Just("10µ".to_string()),
        Just("名前".to_string()),
        Just("a\u{0}b\nc".to_string()),
        Just("x".repeat(300)),
        Just("-".to_string()),
        "[a-z][-a-z0-9]{0,60}",
        any::<String>(),
    ]
    .boxed()
}

fn edge_i64() -> BoxedStrategy<i64> {
    prop_oneof![
        Just(0i64),
        Just(-1),
        Just(1),
        Just(10_000),
        Just(10_001),
        Just(i64::from(i32::MAX)),
        Just(i64::from(i32::MIN)),
        Just(i64::MAX),
        Just(i64::MIN),
        any::<i64>(),
        -5i64..300,
    ]
    .boxed()
}

fn edge_i32() -> BoxedStrategy<i32> {
    prop_oneof![
        Just(0i32),
        Just(-1),
        Just(1),
        Just(256),
        Just(257),
        Just(10_000),
        Just(10_001),
        Just(65_536),
        Just(i32::MAX),
        Just(i32::MIN),
        any::<i32>(),
    ]
    .boxed()
}

fn runtime() -> BoxedStrategy<String> {
    prop_oneof![
        "[0-9]{0,4}(\\.[0-9]{0,3})?[smhd]",
        "[0-9]{300,400}[smhd]",
        "[0-9]{1,3}[µéa-z ]",
        text(),
    ]
    .boxed()
}

/// Any JSON value: every type, huge and tiny numbers, nesting.
fn any_value() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        edge_i64().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop_oneof![
            Just(1e300),
            Just(-1e300),
            Just(0.5),
            Just(f64::MIN_POSITIVE)
        ]
        .prop_map(Value::from),
        text().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(text(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
    .boxed()
}

// ---- structured specs ---------------------------------------------------------------------

fn secret_ref() -> BoxedStrategy<Value> {
    (text(), prop::option::of(text()))
        .prop_map(|(name, key)| match key {
            Some(key) => json!({"name": name, "key": key}),
            None => json!({"name": name}),
        })
        .boxed()
}

fn env() -> BoxedStrategy<Value> {
    prop::collection::vec(
        (
            text(),
            prop::option::of(text()),
            prop::option::of(secret_ref()),
        )
            .prop_map(|(name, value, from)| {
                let mut var = json!({"name": name});
                if let Some(value) = value {
                    var["value"] = json!(value);
                }
                if let Some(from) = from {
                    var["valueFrom"] = json!({"secretKeyRef": from});
                }
                var
            }),
        0..3,
    )
    .prop_map(Value::from)
    .boxed()
}

fn resources() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        (text(), edge_i64()).prop_map(|(cpu, memory)| json!({
            "requests": {"cpu": cpu},
            "limits": {"memory": memory},
        })),
    ]
    .boxed()
}

fn redis() -> BoxedStrategy<Value> {
    let managed = (
        prop::option::of(text()),
        prop::option::of(secret_ref()),
        resources(),
    )
        .prop_map(|(image, secret, resources)| {
            let mut managed = json!({});
            if let Some(image) = image {
                managed["image"] = json!(image);
            }
            if let Some(secret) = secret {
                managed["passwordSecret"] = secret;
            }
            if !resources.is_null() {
                managed["resources"] = resources;
            }
            managed
        });
    let external = (text(), edge_i32(), secret_ref()).prop_map(
        |(host, port, secret)| json!({"host": host, "port": port, "passwordSecret": secret}),
    );
    (prop::option::of(managed), prop::option::of(external))
        .prop_map(|(managed, external)| {
            let mut redis = json!({});
            if let Some(managed) = managed {
                redis["managed"] = managed;
            }
            if let Some(external) = external {
                redis["external"] = external;
            }
            redis
        })
        .boxed()
}

fn master() -> BoxedStrategy<Value> {
    (
        prop::collection::vec(text(), 0..3),
        prop::collection::vec(text(), 0..2),
        env(),
        edge_i32(),
        prop::option::of(edge_i64()),
        prop::option::of(text()),
    )
        .prop_map(|(command, args, env, backoff, deadline, claim)| {
            let mut master = json!({
                "command": command, "args": args, "env": env, "backoffLimit": backoff,
            });
            if let Some(deadline) = deadline {
                master["activeDeadlineSeconds"] = json!(deadline);
            }
            if let Some(claim) = claim {
                master["resultsClaimName"] = json!(claim);
            }
            master
        })
        .boxed()
}

fn workers() -> BoxedStrategy<Value> {
    (
        edge_i32(),
        runtime(),
        edge_i32(),
        edge_i64(),
        edge_i64(),
        env(),
        resources(),
        prop::collection::btree_map(text(), text(), 0..2),
    )
        .prop_map(
            |(replicas, runtime, processes, grace, heartbeat, env, resources, selector)| {
                let mut workers = json!({
                    "replicas": replicas, "runtime": runtime, "processes": processes,
                    "terminationGracePeriodSeconds": grace, "heartbeatTimeoutSeconds": heartbeat,
                    "env": env, "nodeSelector": selector,
                    "tolerations": [{"key": "spot", "operator": "Exists", "tolerationSeconds": grace}],
                });
                if !resources.is_null() {
                    workers["resources"] = resources;
                }
                workers
            },
        )
        .boxed()
}

/// A whole AbcRun object, as the API server or a manifest would hold it.
fn abc_run() -> BoxedStrategy<Value> {
    let metadata = (
        prop::option::of(text()),
        prop::option::of(text()),
        prop::option::of(text()),
        prop::option::of(edge_i64()),
    )
        .prop_map(|(name, namespace, uid, generation)| {
            let mut meta = json!({});
            for (key, value) in [("name", name), ("namespace", namespace), ("uid", uid)] {
                if let Some(value) = value {
                    meta[key] = json!(value);
                }
            }
            if let Some(generation) = generation {
                meta["generation"] = json!(generation);
            }
            meta
        });
    let spec = (
        text(),
        prop::option::of(prop_oneof![Just("Always".to_string()), text()]),
        workers(),
        redis(),
        prop::option::of(master()),
        any::<bool>(),
        any::<bool>(),
        prop::option::of(edge_i64()),
    )
        .prop_map(
            |(image, pull, workers, redis, master, stop, suspend, ttl)| {
                let mut spec = json!({
                    "image": image, "workers": workers, "redis": redis,
                    "stop": stop, "suspend": suspend,
                });
                if let Some(pull) = pull {
                    spec["imagePullPolicy"] = json!(pull);
                }
                if let Some(master) = master {
                    spec["master"] = master;
                }
                if let Some(ttl) = ttl {
                    spec["ttlSecondsAfterFinished"] = json!(ttl);
                }
                spec
            },
        );
    (metadata, spec)
        .prop_map(|(metadata, spec)| {
            json!({
                "apiVersion": "abc-operator.dev/v1alpha1", "kind": "AbcRun",
                "metadata": metadata, "spec": spec,
            })
        })
        .boxed()
}

/// What a reconcile may observe, including a missing password Secret and pod problems.
fn observed() -> BoxedStrategy<Observed> {
    let master = prop::option::of(prop_oneof![
        Just(MasterState::Pending),
        Just(MasterState::Running),
        Just(MasterState::Succeeded),
        text().prop_map(MasterState::Failed),
    ]);
    let progress = prop::option::of(
        (
            prop::option::of(text()),
            prop::option::of(edge_i64()),
            edge_i64(),
            edge_i64(),
            edge_i64(),
        )
            .prop_map(
                |(analysis_id, generation, accepted, required, evaluations)| Progress {
                    analysis_id,
                    generation,
                    accepted,
                    required,
                    evaluations,
                    ..Progress::default()
                },
            ),
    );
    let problem = || {
        prop::option::of(
            (text(), text(), text()).prop_map(|(object, reason, message)| PodProblem {
                kind: "Pod",
                object,
                reason,
                message,
            }),
        )
    };
    let missing_secret = prop::option::of(text().prop_map(|name| {
        format!("Secret {name:?} with the Redis password does not exist in namespace \"n\"")
    }));
    (
        (
            any::<bool>(),
            missing_secret,
            edge_i32(),
            edge_i32(),
            edge_i32(),
        ),
        (text(), master, progress, edge_i64()),
        (
            problem(),
            problem(),
            problem(),
            proptest::option::of((edge_i64(), text())),
            proptest::option::of(text()),
        ),
    )
        .prop_map(
            |(
                (redis_ready, redis_problem, replicas, ready, desired),
                (selector, master, progress, lost_workers),
                (worker_pod_problem, master_pod_problem, redis_pod_problem, resumed, idle_since),
            )| Observed {
                redis_ready,
                redis_problem,
                workers_replicas: replicas,
                workers_ready: ready,
                workers_desired: desired,
                selector,
                master,
                progress,
                lost_workers,
                worker_pod_problem,
                master_pod_problem,
                redis_pod_problem,
                redis_run_id: None,
                master_start: None,
                master_exit: None,
                results: None,
                results_problem: None,
                records: None,
                stop: None,
                analysis: None,
                idle_since,
                resumed: resumed.map(|(from_generation, at)| Resumed {
                    from_generation,
                    at,
                }),
            },
        )
        .boxed()
}

fn timestamp() -> BoxedStrategy<Timestamp> {
    prop_oneof![
        Just(Timestamp::MIN),
        Just(Timestamp::MAX),
        (-10_000_000_000i64..10_000_000_000).prop_map(|s| Timestamp::from_second(s).unwrap()),
    ]
    .boxed()
}

// ---- checks -------------------------------------------------------------------------------

/// Builds and computes status twice (the second time from the first status, as the next
/// reconcile does) for a run that parsed; rejections must name the field.
fn through_builders_and_status(run: &AbcRun, observed: &Observed, now: Timestamp) {
    match run.spec.validate() {
        Ok(()) => {}
        Err(err) => assert!(err.to_string().contains("spec."), "{err}"),
    }
    let settings = BuildSettings::default();
    for password in [None, Some("pw")] {
        if let Err(err) = resources::build(run, password, &settings) {
            let message = err.to_string();
            assert!(
                ["name", "namespace", "uid", "password"]
                    .iter()
                    .any(|field| message.contains(field)),
                "{message}"
            );
        }
    }
    let _ = resources::redis_host_port_for_operator(run);
    let _ = resources::worker_selector(run);
    let _ = manifest::cluster_only_notes(run);
    let first = status::compute(run, observed, now);
    let mut next = run.clone();
    next.status = Some(first.clone());
    let second = status::compute(&next, observed, now);
    assert_eq!(
        first, second,
        "an unchanged run must get an unchanged status"
    );
    check_ttl(run, &second, now);
}

fn check_ttl(run: &AbcRun, status: &AbcRunStatus, now: Timestamp) {
    if let (Some(ttl), Some(finished)) = (
        run.spec.ttl_seconds_after_finished,
        follow_up::finished_at(status),
    ) {
        let _ = follow_up::ttl_left(ttl, finished, now);
    }
}

/// The last field name of a path such as `spec.master.command`.
fn last_key(path: &[&str]) -> String {
    path.last().unwrap().to_string()
}

fn set(value: &mut Value, path: &[&str], new: Value) {
    let mut at = value;
    for key in path {
        at = &mut at[*key];
    }
    *at = new;
}

/// Every field of the manifest a user writes (and the ones around them).
const PATHS: &[&[&str]] = &[
    &["apiVersion"],
    &["kind"],
    &["metadata"],
    &["metadata", "name"],
    &["metadata", "namespace"],
    &["metadata", "labels"],
    &["spec"],
    &["spec", "image"],
    &["spec", "imagePullPolicy"],
    &["spec", "workers"],
    &["spec", "workers", "replicas"],
    &["spec", "workers", "runtime"],
    &["spec", "workers", "processes"],
    &["spec", "workers", "terminationGracePeriodSeconds"],
    &["spec", "workers", "heartbeatTimeoutSeconds"],
    &["spec", "workers", "resources"],
    &["spec", "workers", "nodeSelector"],
    &["spec", "workers", "tolerations"],
    &["spec", "workers", "env"],
    &["spec", "redis"],
    &["spec", "redis", "managed"],
    &["spec", "redis", "managed", "image"],
    &["spec", "redis", "managed", "passwordSecret"],
    &["spec", "redis", "managed", "passwordSecret", "name"],
    &["spec", "redis", "external"],
    &["spec", "redis", "external", "host"],
    &["spec", "redis", "external", "port"],
    &["spec", "master"],
    &["spec", "master", "command"],
    &["spec", "master", "args"],
    &["spec", "master", "env"],
    &["spec", "master", "backoffLimit"],
    &["spec", "master", "activeDeadlineSeconds"],
    &["spec", "master", "resultsClaimName"],
    &["spec", "master", "volumes"],
    &["spec", "master", "volumeMounts"],
    &["spec", "master", "affinity"],
    &["spec", "workers", "envFrom"],
    &["spec", "workers", "priorityClassName"],
    &["spec", "workers", "topologySpreadConstraints"],
    &["spec", "redis", "managed", "podLabels"],
    &["spec", "redis", "managed", "serviceAccountName"],
    &["spec", "imagePullSecrets"],
    &["spec", "stop"],
    &["spec", "suspend"],
    &["spec", "idleTimeoutSeconds"],
    &["spec", "ttlSecondsAfterFinished"],
];

/// A valid manifest in which every parent of `path` exists, so that a rejection after
/// changing `path` can only be about `path`.
fn valid_manifest(path: &[&str]) -> Value {
    let redis = if path.contains(&"external") {
        json!({"external": {"host": "redis.example", "passwordSecret": {"name": "s"}}})
    } else {
        json!({"managed": {"image": "redis:7", "passwordSecret": {"name": "s"}}})
    };
    json!({
        "apiVersion": "abc-operator.dev/v1alpha1",
        "kind": "AbcRun",
        "metadata": {"name": "gaussian", "namespace": "n", "uid": "u-1"},
        "spec": {
            "image": "abc-example-gaussian:0.1.0",
            "workers": {"replicas": 2, "runtime": "10m"},
            "redis": redis,
            "master": {"command": ["python", "gaussian.py"]},
        },
    })
}

// ---- the tests ----------------------------------------------------------------------------

/// Structured specs through the API types, validation, the builders, the status and the
/// manifest loader.
#[test]
fn random_specs_never_panic_and_rejections_name_the_field() {
    runner(2000)
        .run(
            &(abc_run(), observed(), timestamp()),
            |(object, observed, now)| {
                let guarded: GuardedRun =
                    serde_json::from_value(object.clone()).expect("metadata always reads");
                let run = match guarded.0 {
                    Ok(run) => run,
                    // Only numbers out of the API types' range are unreadable here.
                    Err(unreadable) => {
                        assert!(unreadable.field.starts_with("spec."), "{unreadable:?}");
                        return Ok(());
                    }
                };
                through_builders_and_status(&run, &observed, now);
                // The same object as a manifest file.
                let yaml = serde_yaml::to_string(&object).unwrap();
                match manifest::parse(Path::new("m.yaml"), &yaml) {
                    Ok(parsed) => assert_eq!(parsed.spec, run.spec),
                    Err(err) => {
                        let message = err.to_string();
                        assert!(message.contains("spec."), "{message}");
                    }
                }
                Ok(())
            },
        )
        .unwrap();
}

/// One field of a valid manifest set to a random value of any type: loading it from a file
/// either works or names that field; so does the controller's guarded read.
#[test]
fn mutated_manifests_never_panic_and_rejections_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("abcrun.yaml");
    runner(3000)
        .run(
            &(prop::sample::select(PATHS), any_value(), observed()),
            |(path, value, observed)| {
                let mut object = valid_manifest(path);
                set(&mut object, path, value);
                let field = last_key(path);

                let guarded: Result<GuardedRun, _> = serde_json::from_value(object.clone());
                match guarded.map(|g| g.0) {
                    Ok(Ok(run)) => through_builders_and_status(&run, &observed, Timestamp::now()),
                    Ok(Err(unreadable)) => {
                        assert!(
                            unreadable.note().contains(&field),
                            "{field}: {unreadable:?}"
                        )
                    }
                    // Unreadable metadata: no object to report on, and it says which field.
                    Err(err) => assert!(err.to_string().contains(&field), "{field}: {err}"),
                }

                std::fs::write(&file, serde_yaml::to_string(&object).unwrap()).unwrap();
                if let Err(err) = manifest::load(&file) {
                    let message = err.to_string();
                    assert!(message.contains(&field), "{field}: {message}");
                }
                Ok(())
            },
        )
        .unwrap();
}

/// Text that is not a manifest at all, and valid manifests cut short.
#[test]
fn random_text_never_panics_the_manifest_loader() {
    let valid = serde_yaml::to_string(&valid_manifest(&[])).unwrap();
    runner(1000)
        .run(
            &prop_oneof![
                any::<String>(),
                (0..valid.len()).prop_map(move |end| valid[..end].to_string()),
            ],
            |text| {
                let _ = manifest::parse(Path::new("m.yaml"), &text);
                Ok(())
            },
        )
        .unwrap();
}

/// TTLs and clocks far apart: the wait is bounded and never panics.
#[test]
fn any_ttl_and_clock_give_a_bounded_wait() {
    runner(1000)
        .run(
            &(edge_i64(), timestamp(), timestamp()),
            |(ttl, finished, now)| {
                if let Some(wait) = follow_up::ttl_left(ttl, finished, now) {
                    assert!(wait.as_secs() <= 86_401, "{wait:?}");
                    // The scheduler adds the wait to its clock.
                    assert!(std::time::Instant::now().checked_add(wait).is_some());
                }
                Ok(())
            },
        )
        .unwrap();
}
