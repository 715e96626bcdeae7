//! The Helm chart: it lints, and renders what its values say. `helm install` itself, the
//! operator's pod running and its least-privilege RBAC are tested on the real node
//! (tests/real_node.rs).

mod support;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PodSpec, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::Role;
use serde::Deserialize;
use support::cluster::helm;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/abc-operator");

#[test]
fn helm_lint_passes() {
    let out = helm().args(["lint", "--strict", CHART]).output().unwrap();
    assert!(
        out.status.success(),
        "helm lint failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The chart's objects as `helm template` renders them with `values`.
fn render(values: &[&str]) -> Vec<serde_yaml::Value> {
    render_with(&[], values)
}

/// `helm template` with `args` (e.g. `--namespace`, `-f FILE`) and `values`: its objects, or
/// helm's error.
fn try_render(args: &[&str], values: &[&str]) -> Result<Vec<serde_yaml::Value>, String> {
    let mut cmd = helm();
    cmd.args(["template", "abc", CHART]).args(args);
    for value in values {
        cmd.args(["--set", value]);
    }
    let out = cmd.output().unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let rendered = String::from_utf8(out.stdout).unwrap();
    Ok(serde_yaml::Deserializer::from_str(&rendered)
        .map(|doc| serde_yaml::Value::deserialize(doc).unwrap())
        .filter(|doc| !doc.is_null())
        .collect())
}

fn render_with(args: &[&str], values: &[&str]) -> Vec<serde_yaml::Value> {
    try_render(args, values).unwrap_or_else(|e| panic!("helm template: {e}"))
}

/// The rendered object of `kind` whose name ends with `suffix`, as `K`.
fn rendered<K: serde::de::DeserializeOwned>(
    objects: &[serde_yaml::Value],
    kind: &str,
    suffix: &str,
) -> K {
    let object = objects
        .iter()
        .find(|o| {
            o["kind"].as_str() == Some(kind)
                && o["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.ends_with(suffix))
        })
        .unwrap_or_else(|| panic!("the chart renders no {kind} named *{suffix}"));
    serde_yaml::from_value(object.clone()).unwrap()
}

fn controller_pod(objects: &[serde_yaml::Value]) -> PodSpec {
    let deployment: Deployment = rendered(objects, "Deployment", "abc-operator");
    deployment.spec.unwrap().template.spec.unwrap()
}

/// The controller container's args as `helm template` renders them with `values`.
fn rendered_controller_args(values: &[&str]) -> Vec<String> {
    controller_pod(&render(values)).containers[0]
        .args
        .clone()
        .unwrap_or_default()
}

#[test]
fn redis_image_value_sets_the_default_image_of_managed_redis() {
    let args = rendered_controller_args(&["redis.image=registry.local/mirror/redis:7.4"]);
    let flag = args.iter().position(|a| a == "--redis-image");
    assert_eq!(
        flag.and_then(|i| args.get(i + 1)).map(String::as_str),
        Some("registry.local/mirror/redis:7.4"),
        "{args:?}"
    );
    // Unset, the operator keeps its own default.
    let args = rendered_controller_args(&[]);
    assert!(!args.iter().any(|a| a == "--redis-image"), "{args:?}");
}

#[test]
fn two_replicas_elect_a_leader_and_only_the_leader_serves_the_external_metrics_api() {
    let objects = render(&[]);
    let deployment: Deployment = rendered(&objects, "Deployment", "abc-operator");
    assert_eq!(deployment.spec.as_ref().unwrap().replicas, Some(2));
    let pod = controller_pod(&objects);
    let args = &pod.containers[0].args.clone().unwrap();
    let lease = args.iter().position(|a| a == "--lease-name");
    assert_eq!(
        lease.and_then(|i| args.get(i + 1)).map(String::as_str),
        Some("abc-abc-operator"),
        "{args:?}"
    );
    // The elector's identity and the Lease's namespace come from the downward API.
    let env = pod.containers[0].env.clone().unwrap();
    for (name, field) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
    ] {
        let var = env.iter().find(|e| e.name == name).expect(name);
        let from = var.value_from.as_ref().and_then(|v| v.field_ref.as_ref());
        assert_eq!(from.map(|f| f.field_path.as_str()), Some(field));
    }
    // The replicas prefer different nodes.
    let anti = pod.affinity.unwrap().pod_anti_affinity.unwrap();
    let preferred = anti
        .preferred_during_scheduling_ignored_during_execution
        .unwrap();
    assert_eq!(
        preferred[0].pod_affinity_term.topology_key,
        "kubernetes.io/hostname"
    );
    let pdb: PodDisruptionBudget = rendered(&objects, "PodDisruptionBudget", "abc-operator");
    let pdb = pdb.spec.unwrap();
    assert_eq!(
        pdb.min_available,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );
    assert_eq!(
        pdb.selector.unwrap().match_labels,
        deployment.spec.unwrap().selector.match_labels
    );

    let external: Service = rendered(&objects, "Service", "abc-operator");
    let selector = external.spec.unwrap().selector.unwrap();
    assert_eq!(
        selector.get("abc-operator.dev/leader").map(String::as_str),
        Some("true")
    );
    // Prometheus scrapes every replica.
    let metrics: Service = rendered(&objects, "Service", "-metrics");
    assert!(
        !metrics
            .spec
            .unwrap()
            .selector
            .unwrap()
            .contains_key("abc-operator.dev/leader")
    );
}

#[test]
fn the_leader_election_may_touch_its_own_lease_only() {
    let role: Role = rendered(&render(&[]), "Role", "-leader");
    assert_eq!(role.metadata.namespace.as_deref(), Some("default"));
    let rules = role.rules.unwrap();
    let leases: Vec<_> = rules
        .iter()
        .filter(|r| r.resources.as_deref() == Some(&["leases".to_string()][..]))
        .collect();
    for rule in &leases {
        let verbs = &rule.verbs;
        if verbs != &["create"] {
            assert_eq!(
                rule.resource_names.as_deref(),
                Some(&["abc-abc-operator".to_string()][..]),
                "{rule:?}"
            );
        }
        assert!(
            verbs
                .iter()
                .all(|v| ["create", "get", "update"].contains(&v.as_str())),
            "{rule:?}"
        );
    }
    let verbs: Vec<&str> = leases
        .iter()
        .flat_map(|r| r.verbs.iter().map(String::as_str))
        .collect();
    assert!(
        ["create", "get", "update"]
            .iter()
            .all(|v| verbs.contains(v)),
        "{verbs:?}"
    );
}

#[test]
fn one_replica_has_no_disruption_budget() {
    let objects = render(&["replicas=1"]);
    assert!(
        !objects
            .iter()
            .any(|o| o["kind"].as_str() == Some("PodDisruptionBudget")),
        "a PodDisruptionBudget of one replica with minAvailable 1 would block every drain"
    );
}

#[test]
fn values_that_do_not_fit_the_schema_are_refused_naming_the_value() {
    let dir = tempfile::tempdir().unwrap();
    for (values, named) in [
        ("replicas: two\n", "/replicas"),
        // An unknown key, e.g. another chart's name for a value, is a typo: refused.
        ("replicaCount: 2\n", "replicaCount"),
        (
            "metrics:\n  serviceMonitor:\n    enabeld: true\n",
            "enabeld",
        ),
        ("idleReadSeconds: 0\n", "/idleReadSeconds"),
        ("logJson: \"yes\"\n", "/logJson"),
        (
            "metrics:\n  prometheusRule:\n    noProgress:\n      for: 5 minutes\n",
            "/metrics/prometheusRule/noProgress/for",
        ),
    ] {
        let file = dir.path().join("values.yaml");
        std::fs::write(&file, values).unwrap();
        let error = try_render(&["-f", file.to_str().unwrap()], &[])
            .err()
            .unwrap_or_else(|| panic!("helm accepted {values:?}"));
        assert!(
            error.contains("schema") && error.contains(named),
            "{values:?}: {error}"
        );
    }
    // Every value the chart documents, with every optional part on, fits.
    try_render(&[], &MONITORING).unwrap();
    try_render(
        &[],
        &[
            "watchNamespace=science",
            "logJson=true",
            "externalMetrics.tls.secretName=tls",
            "metrics.serviceMonitor.scrapeTimeout=10s",
        ],
    )
    .unwrap();
}

/// The controller as the chart starts it: its own argument parser, fed the rendered args.
#[derive(clap::Parser)]
struct Controller {
    #[command(flatten)]
    args: abc_operator::controller::ControllerArgs,
}

fn parsed_controller_args(values: &[&str]) -> abc_operator::controller::ControllerArgs {
    use clap::Parser;
    let args = rendered_controller_args(values);
    assert_eq!(args.first().map(String::as_str), Some("controller"));
    Controller::try_parse_from(&args)
        .unwrap_or_else(|e| panic!("the controller refuses the chart's args {args:?}: {e}"))
        .args
}

#[test]
fn the_controllers_flags_are_values_and_the_defaults_are_the_controllers() {
    use clap::Parser;
    let args = parsed_controller_args(&[
        "watchNamespace=science",
        "logJson=true",
        "statusProgressSeconds=3",
        "idleReadSeconds=120",
    ]);
    assert_eq!(args.namespace.as_deref(), Some("science"));
    assert!(args.log_json);
    assert_eq!(args.status_progress_seconds, 3);
    assert_eq!(args.idle_read_seconds, 120);

    // The chart's defaults: every namespace, text logs, and the controller's own intervals.
    let chart = parsed_controller_args(&[]);
    let own = Controller::try_parse_from(["controller"]).unwrap().args;
    assert_eq!(chart.namespace, None);
    assert!(!chart.log_json);
    assert_eq!(chart.status_progress_seconds, own.status_progress_seconds);
    assert_eq!(chart.idle_read_seconds, own.idle_read_seconds);
}

/// Every monitoring object on.
const MONITORING: [&str; 4] = [
    "metrics.serviceMonitor.enabled=true",
    "metrics.podMonitor.enabled=true",
    "metrics.prometheusRule.enabled=true",
    "metrics.grafanaDashboard.enabled=true",
];

const MONITORING_KINDS: [&str; 3] = ["ServiceMonitor", "PodMonitor", "PrometheusRule"];

fn is_dashboard(o: &serde_yaml::Value) -> bool {
    o["kind"].as_str() == Some("ConfigMap")
        && o["metadata"]["labels"]["grafana_dashboard"].as_str() == Some("1")
}

fn monitoring_objects(objects: &[serde_yaml::Value]) -> Vec<serde_yaml::Value> {
    objects
        .iter()
        .filter(|o| {
            MONITORING_KINDS.contains(&o["kind"].as_str().unwrap_or_default()) || is_dashboard(o)
        })
        .cloned()
        .collect()
}

#[test]
fn monitoring_is_off_by_default_and_each_part_turns_on_alone() {
    assert!(monitoring_objects(&render(&[])).is_empty());
    for (value, kind) in MONITORING
        .iter()
        .zip(MONITORING_KINDS.iter().chain(["ConfigMap"].iter()))
    {
        let objects = monitoring_objects(&render(&[value]));
        let kinds: Vec<_> = objects
            .iter()
            .map(|o| o["kind"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, [*kind], "{value}");
    }
    // A ServiceMonitor without the Service it scrapes is refused, saying what to do.
    let error = try_render(
        &[],
        &[
            "metrics.serviceMonitor.enabled=true",
            "metrics.service.enabled=false",
        ],
    )
    .unwrap_err();
    assert!(error.contains("metrics.podMonitor"), "{error}");
}

#[test]
fn the_monitors_scrape_every_replicas_metrics_port_and_keep_the_runs_namespace_label() {
    let objects = render(&MONITORING);
    let label_map = |v: &serde_yaml::Value| -> std::collections::BTreeMap<String, String> {
        serde_yaml::from_value(v.clone()).unwrap_or_default()
    };
    let find = |kind: &str| -> serde_yaml::Value {
        objects
            .iter()
            .find(|o| o["kind"].as_str() == Some(kind))
            .cloned()
            .unwrap()
    };
    let selects = |selector: &std::collections::BTreeMap<String, String>,
                   labels: &std::collections::BTreeMap<String, String>| {
        selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    };

    let monitor = find("ServiceMonitor");
    let selector = label_map(&monitor["spec"]["selector"]["matchLabels"]);
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["honorLabels"].as_bool(), Some(true));
    let services: Vec<Service> = objects
        .iter()
        .filter(|o| o["kind"].as_str() == Some("Service"))
        .map(|o| serde_yaml::from_value(o.clone()).unwrap())
        .collect();
    let selected: Vec<&Service> = services
        .iter()
        .filter(|s| {
            let labels = s.metadata.labels.clone().unwrap_or_default();
            selects(&selector, &labels.into_iter().collect())
        })
        .collect();
    // The metrics Service (every replica), not the leader's external metrics Service.
    assert_eq!(selected.len(), 1, "{selector:?}");
    assert_eq!(
        selected[0].metadata.name.as_deref(),
        Some("abc-abc-operator-metrics")
    );
    let ports = selected[0].spec.as_ref().unwrap().ports.clone().unwrap();
    assert!(
        ports
            .iter()
            .any(|p| p.name.as_deref() == endpoint["port"].as_str()),
        "{ports:?}"
    );

    let monitor = find("PodMonitor");
    let selector = label_map(&monitor["spec"]["selector"]["matchLabels"]);
    let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["honorLabels"].as_bool(), Some(true));
    let deployment: Deployment = rendered(&objects, "Deployment", "abc-operator");
    let template = deployment.spec.unwrap().template;
    let pod_labels = template.metadata.unwrap().labels.unwrap();
    assert!(selects(&selector, &pod_labels.into_iter().collect()));
    let container_ports = template.spec.unwrap().containers[0].ports.clone().unwrap();
    assert!(
        container_ports
            .iter()
            .any(|p| p.name.as_deref() == endpoint["port"].as_str() && p.container_port == 8080),
        "{container_ports:?}"
    );
}

/// Registers the Prometheus operator's CRDs (vendored, pinned: the fixture's README) on the
/// kwok cluster, as a cluster with the Prometheus operator has them.
fn register_monitoring_crds() {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/prometheus-operator-crds"
    );
    for plural in ["servicemonitors", "podmonitors", "prometheusrules"] {
        let file = format!("{dir}/monitoring.coreos.com_{plural}.yaml");
        let out = support::cluster::kubectl()
            .args(["apply", "--server-side", "--force-conflicts", "-f", &file])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = support::cluster::kubectl()
            .args([
                "wait",
                "--for=condition=Established",
                &format!("crd/{plural}.monitoring.coreos.com"),
                "--timeout=60s",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `kubectl apply --dry-run=server` of `objects`: whether the API server accepted them, and
/// what it said.
fn dry_run_apply(objects: &[serde_yaml::Value]) -> (bool, String) {
    let yaml: Vec<String> = objects
        .iter()
        .map(|o| serde_yaml::to_string(o).unwrap())
        .collect();
    let mut cmd = support::cluster::kubectl();
    cmd.args(["apply", "--dry-run=server", "-f", "-"]);
    let out = support::cluster::output_with_stdin(cmd, &yaml.join("---\n"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn the_monitoring_objects_are_valid_for_the_prometheus_operators_crds() {
    let client = support::cluster::client().await;
    let ns = support::cluster::TestNamespace::new(&client, "chart-monitoring").await;
    register_monitoring_crds();
    let objects = monitoring_objects(&render_with(&["--namespace", &ns.name], &MONITORING));
    assert_eq!(objects.len(), 4);
    let (ok, said) = dry_run_apply(&objects);
    assert!(ok, "{said}");
    for kind in [
        "servicemonitor.monitoring.coreos.com",
        "podmonitor.monitoring.coreos.com",
        "prometheusrule.monitoring.coreos.com",
        "configmap",
    ] {
        assert!(
            said.lines()
                .any(|l| l.starts_with(&format!("{kind}/")) && l.ends_with("(server dry run)")),
            "{said}"
        );
    }
    // The CRDs' schemas are in force: an interval that is no Prometheus duration is refused.
    let mut wrong = objects
        .iter()
        .find(|o| o["kind"].as_str() == Some("ServiceMonitor"))
        .cloned()
        .unwrap();
    wrong["spec"]["endpoints"][0]["interval"] = "30 seconds".into();
    let (ok, said) = dry_run_apply(&[wrong]);
    assert!(!ok && said.contains("interval"), "{said}");
}

/// The release namespace the rules are rendered for in the promtool tests.
const RELEASE_NS: &str = "monitoring";

/// Labels Prometheus adds to every series it scrapes from the replica `pod` through the
/// chart's ServiceMonitor; with `honorLabels` a series' own labels (a run's `namespace`) win.
fn target_labels(pod: &str) -> Vec<(&str, &str)> {
    vec![
        ("job", "abc-abc-operator-metrics"),
        ("instance", "10.244.0.7:8080"),
        ("namespace", RELEASE_NS),
        ("pod", pod),
        ("service", "abc-abc-operator-metrics"),
        ("container", "abc-operator"),
        ("endpoint", "metrics"),
    ]
}

/// A real controller's `/metrics`, once a run of it has every per-run series: a run with
/// stored generations (epsilon, acceptance rate) and its progress read from its Redis.
async fn real_scrape() -> (String, String) {
    use support::controller::ControllerProcess;
    use support::redis::{push_records, record};
    let s = support::run::setup("chart-scrape", 0, "10m", "0").await;
    // A run stored with a value its type cannot hold (a status time with more than nine
    // fractional digits, which the API server accepts): the controller counts it in
    // abc_operator_reconcile_errors_total{error="unreadable"}, as it would any failed
    // reconcile, so that series is in the scrape too.
    let broken: abc_operator::api::AbcRun = serde_yaml::from_str(
        "metadata: {name: broken}\nspec: {image: i, workers: {replicas: 1}}\n",
    )
    .unwrap();
    s.runs
        .create(&kube::api::PostParams::default(), &broken)
        .await
        .unwrap();
    let condition = r#"{"type":"X","status":"True","reason":"R","message":"m","lastTransitionTime":"2025-01-01T00:00:00.1234567891Z"}"#;
    let out = support::cluster::kubectl()
        .args([
            "patch",
            "abcrun",
            "broken",
            "-n",
            &s.ns.name,
            "--type=merge",
        ])
        .args(["--subresource=status", "-p"])
        .arg(format!(r#"{{"status":{{"conditions":[{condition}]}}}}"#))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let controller = ControllerProcess::start(&s.ns.name);
    let mut conn = support::redis::connect(&s.redis).await;
    push_records(&mut conn, vec![record(0, 2.0), record(1, 1.0)]).await;
    let wanted = [
        "abc_operator_run_phase{",
        "abc_operator_run_epsilon{",
        "abc_operator_run_acceptance_rate{",
        "abc_operator_run_degraded{",
        "abc_operator_run_lost_workers{",
        "abc_operator_run_generation{",
        "abc_operator_run_evaluations{",
        "abc_operator_leader ",
        "abc_operator_reconcile_duration_seconds_bucket{",
        "abc_operator_api_requests_total{",
        "abc_operator_reconcile_errors_total{",
    ];
    let text = support::cluster::eventually(90, "every series of the run", || async {
        let text = controller.metrics().await?;
        let body = text.split("\r\n\r\n").nth(1).unwrap_or(&text).to_string();
        wanted.iter().all(|w| body.contains(w)).then_some(body)
    })
    .await;
    let ns = s.ns.name.clone();
    drop(controller);
    (text, ns)
}

/// The sample of `name` with `labels` in the scrape, or a failure naming what the operator
/// does not export.
fn scraped<'a>(
    samples: &'a [support::promtool::Sample],
    name: &str,
    labels: &[(&str, &str)],
) -> &'a support::promtool::Sample {
    samples
        .iter()
        .find(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(v)))
        .unwrap_or_else(|| {
            panic!("the operator's /metrics has no {name} with {labels:?}: a rule or panel names what it does not export")
        })
}

/// The metric names (`abc_operator_*`) a PromQL expression names.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = vec![];
    let mut rest = expr;
    while let Some(i) = rest.find("abc_operator_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        names.push(name);
    }
    names
}

/// An alert's annotations as Prometheus expands them for `labels` and `value`.
fn expanded(rule: &serde_yaml::Value, labels: &[(&str, &str)], value: &str) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for (k, v) in rule["annotations"].as_mapping().unwrap() {
        let mut text = v.as_str().unwrap().to_string();
        for (label, value) in labels {
            text = text.replace(&format!("{{{{ $labels.{label} }}}}"), value);
        }
        text = text.replace("{{ $value }}", value);
        assert!(
            !text.contains("{{"),
            "an annotation left unexpanded: {text}"
        );
        out.insert(k.as_str().unwrap().into(), text.into());
    }
    out.into()
}

#[tokio::test]
async fn alerts_and_dashboard_hold_against_a_real_controllers_metrics() {
    use serde_json::json;
    use support::promtool;
    let (text, run_ns) = real_scrape().await;
    let samples = promtool::parse_exposition(&text);
    let objects = render_with(&["--namespace", RELEASE_NS], &MONITORING);
    let rule: serde_yaml::Value = objects
        .iter()
        .find(|o| o["kind"].as_str() == Some("PrometheusRule"))
        .cloned()
        .unwrap();
    let groups = rule["spec"]["groups"].clone();
    let rule_of = |alert: &str| -> serde_yaml::Value {
        groups
            .as_sequence()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_sequence().unwrap())
            .find(|r| r["alert"].as_str() == Some(alert))
            .cloned()
            .unwrap_or_else(|| panic!("no alert {alert}"))
    };
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, value: &serde_json::Value| {
        std::fs::write(dir.path().join(name), serde_yaml::to_string(value).unwrap()).unwrap();
    };
    write("rules.yaml", &json!({ "groups": groups }));
    let (ok, said) = promtool::run(dir.path(), &["check", "rules", "rules.yaml"]);
    assert!(ok, "promtool check rules:\n{said}");

    // Every series below is one the real controller exported, with the labels Prometheus adds.
    let leader_a = target_labels("abc-abc-operator-6b7f9c-aaaaa");
    let leader_b = target_labels("abc-abc-operator-6b7f9c-bbbbb");
    let run = [("namespace", run_ns.as_str()), ("run", "sim")];
    let run_series = |name: &str, extra: &[(&str, &str)]| -> String {
        let labels: Vec<(&str, &str)> = run.iter().chain(extra).copied().collect();
        scraped(&samples, name, &labels).series(&leader_a)
    };
    let running = run_series("abc_operator_run_phase", &[("phase", "Running")]);
    let evaluations = run_series("abc_operator_run_evaluations", &[]);
    let generation = run_series("abc_operator_run_generation", &[]);
    let lost = run_series("abc_operator_run_lost_workers", &[]);
    let degraded = run_series("abc_operator_run_degraded", &[]);
    let leader = scraped(&samples, "abc_operator_leader", &[]);
    let series = |s: &str, values: &str| json!({"series": s, "values": values});
    let run_alert = |alert: &str, value: &str| {
        let r = rule_of(alert);
        json!({
            "exp_labels": {"namespace": run_ns, "run": "sim", "severity": "warning"},
            "exp_annotations": expanded(&r, &run, value),
        })
    };
    let test = |inputs: Vec<serde_json::Value>,
                checks: Vec<(&str, &str, Vec<serde_json::Value>)>| {
        json!({
            "interval": "1m",
            "input_series": inputs,
            "alert_rule_test": checks.into_iter().map(|(at, alert, exp)| json!({
                "eval_time": at, "alertname": alert, "exp_alerts": exp
            })).collect::<Vec<_>>(),
        })
    };
    let tests = vec![
        // Running for an hour, the same evaluations and generation throughout: pending once
        // the 30-minute window holds nothing new, firing 5 minutes later.
        test(
            vec![
                series(&running, "1x60"),
                series(&evaluations, "57x60"),
                series(&generation, "2x60"),
            ],
            vec![
                ("20m", "AbcRunNoProgress", vec![]),
                ("34m", "AbcRunNoProgress", vec![]),
                (
                    "36m",
                    "AbcRunNoProgress",
                    vec![run_alert("AbcRunNoProgress", "")],
                ),
            ],
        ),
        // A run that evaluates, and one that moves to its next generation: no alert.
        test(
            vec![
                series(&running, "1x60"),
                series(&evaluations, "0+3x60"),
                series(&generation, "2x60"),
            ],
            vec![
                ("36m", "AbcRunNoProgress", vec![]),
                ("59m", "AbcRunNoProgress", vec![]),
            ],
        ),
        test(
            vec![
                series(&running, "1x60"),
                series(&evaluations, "0x60"),
                series(&generation, "0+1x60"),
            ],
            vec![("59m", "AbcRunNoProgress", vec![])],
        ),
        // Three workers lost within 15 minutes fire at once; two, or three long ago, do not.
        test(
            vec![series(&lost, "0x5 1 2 3x30")],
            vec![
                ("7m", "AbcRunLosingWorkers", vec![]),
                (
                    "9m",
                    "AbcRunLosingWorkers",
                    vec![run_alert("AbcRunLosingWorkers", "3")],
                ),
                ("30m", "AbcRunLosingWorkers", vec![]),
            ],
        ),
        // Degraded for 10 minutes.
        test(
            vec![series(&degraded, "0x5 1x30")],
            vec![
                ("15m", "AbcRunDegraded", vec![]),
                (
                    "17m",
                    "AbcRunDegraded",
                    vec![run_alert("AbcRunDegraded", "")],
                ),
            ],
        ),
        test(
            vec![series(&degraded, "0x40")],
            vec![("30m", "AbcRunDegraded", vec![])],
        ),
        // Two replicas, neither leading, for 5 minutes; then one leading.
        test(
            vec![
                series(&leader.series(&leader_a), "0x10 1x10"),
                series(&leader.series(&leader_b), "0x20"),
            ],
            vec![
                ("4m", "AbcOperatorNoLeader", vec![]),
                (
                    "6m",
                    "AbcOperatorNoLeader",
                    vec![json!({
                        "exp_labels": {"severity": "critical"},
                        "exp_annotations": expanded(&rule_of("AbcOperatorNoLeader"), &[], ""),
                    })],
                ),
                ("15m", "AbcOperatorNoLeader", vec![]),
            ],
        ),
        // Both replicas stop answering scrapes (their series end).
        test(
            vec![
                series(&leader.series(&leader_a), "1x5 _x30"),
                series(&leader.series(&leader_b), "0x5 _x30"),
            ],
            vec![
                ("8m", "AbcOperatorDown", vec![]),
                (
                    "25m",
                    "AbcOperatorDown",
                    vec![json!({
                        "exp_labels": {"namespace": RELEASE_NS, "severity": "critical"},
                        "exp_annotations": expanded(&rule_of("AbcOperatorDown"), &[], ""),
                    })],
                ),
            ],
        ),
    ];
    write(
        "tests.yaml",
        &json!({"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests}),
    );
    let (ok, said) = promtool::run(dir.path(), &["test", "rules", "tests.yaml"]);
    assert!(ok, "promtool test rules:\n{said}");

    // The same tests fail when a rule names a series the operator does not export: the check
    // above can fail.
    let misspelled = serde_json::to_string(&groups)
        .unwrap()
        .replace("abc_operator_run_degraded", "abc_operator_run_is_degraded");
    let misspelled: serde_json::Value = serde_json::from_str(&misspelled).unwrap();
    write("rules.yaml", &json!({ "groups": misspelled }));
    let (ok, said) = promtool::run(dir.path(), &["test", "rules", "tests.yaml"]);
    assert!(!ok && said.contains("AbcRunDegraded"), "{said}");

    // The dashboard: every panel's query parses (promtool check rules) and, over the real
    // scrape, returns data (promtool test rules: each query becomes an alert that must fire),
    // so it names only metrics and labels the operator exports.
    let dashboard = objects.iter().find(|o| is_dashboard(o)).unwrap();
    let json_text = dashboard["data"]["abc-operator.json"].as_str().unwrap();
    let board: serde_json::Value = serde_json::from_str(json_text).unwrap();
    let names: std::collections::BTreeSet<&str> = samples.iter().map(|s| s.name.as_str()).collect();
    let mut queries = vec![];
    for panel in board["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let id = format!("Panel{}{}", panel["id"], target["refId"].as_str().unwrap());
            queries.push((
                id,
                panel["title"].as_str().unwrap().to_string(),
                expr.to_string(),
            ));
        }
    }
    for variable in board["templating"]["list"].as_array().unwrap() {
        if let Some(q) = variable["query"]["query"].as_str() {
            for name in metric_names(q) {
                assert!(
                    names.contains(name.as_str()),
                    "variable {}: {name}",
                    variable["name"]
                );
            }
        }
    }
    for title in [
        "Runs by phase",
        "Epsilon per run",
        "Acceptance rate per run",
        "Workers",
        "Lost workers (repaired)",
        "API requests by verb",
        "Reconciles",
    ] {
        assert!(
            queries.iter().any(|(_, t, _)| t == title),
            "no panel {title}"
        );
    }
    let mut rules = vec![];
    let mut checks = vec![];
    for (id, title, expr) in &queries {
        for name in metric_names(expr) {
            assert!(
                names.contains(name.as_str()),
                "panel {title:?} names {name}, which the operator does not export"
            );
        }
        let expr = expr.replace("$namespace", ".*").replace("$run", ".*");
        rules.push(json!({"alert": id, "expr": format!("count({expr}) > 0")}));
        checks
            .push(json!({"eval_time": "10m", "alertname": id, "exp_alerts": [{"exp_labels": {}}]}));
    }
    write(
        "dashboard-rules.yaml",
        &json!({"groups": [{"name": "dashboard", "rules": rules}]}),
    );
    let (ok, said) = promtool::run(dir.path(), &["check", "rules", "dashboard-rules.yaml"]);
    assert!(ok, "promtool check rules (dashboard):\n{said}");
    // Every scraped series at 1 (a query that filters, like `== 1`, keeps it; a rate is 0,
    // still a sample).
    let inputs: Vec<_> = samples
        .iter()
        .map(|s| series(&s.series(&leader_a), "1x20"))
        .collect();
    write(
        "dashboard-tests.yaml",
        &json!({"rule_files": ["dashboard-rules.yaml"], "evaluation_interval": "1m", "tests": [{
            "interval": "1m", "input_series": inputs, "alert_rule_test": checks,
        }]}),
    );
    let (ok, said) = promtool::run(dir.path(), &["test", "rules", "dashboard-tests.yaml"]);
    assert!(ok, "promtool test rules (dashboard):\n{said}");
}
