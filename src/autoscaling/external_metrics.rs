//! The Kubernetes external metrics API (`external.metrics.k8s.io/v1beta1`) over the demand
//! board: what an HPA's `External` metric reads through the API server's aggregation layer.
//!
//! `GET /apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/{metric}?labelSelector=abcrun=NAME`
//! returns an `ExternalMetricValueList` with one item per selected run. Errors are
//! `metav1.Status` objects whose message names the run and the cause; the HPA shows them in
//! its `ScalingActive` condition.

use super::demand::{Demand, DemandBoard, DemandError};
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

pub const GROUP: &str = "external.metrics.k8s.io";
pub const VERSION: &str = "v1beta1";
/// The label an HPA's metric selector uses to pick a run: `abcrun=NAME`.
pub const RUN_SELECTOR_LABEL: &str = "abcrun";

/// The metrics served per run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Evaluations still needed in the current generation (an HPA target: per worker).
    EvaluationsNeeded,
    /// 1 while an analysis is in progress, else 0.
    Active,
}

impl Metric {
    pub const ALL: [Metric; 2] = [Metric::EvaluationsNeeded, Metric::Active];

    pub fn name(self) -> &'static str {
        match self {
            Metric::EvaluationsNeeded => "abcrun_evaluations_needed",
            Metric::Active => "abcrun_active",
        }
    }

    pub fn parse(name: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.name() == name)
    }

    fn value(self, demand: &Demand) -> i64 {
        match self {
            Metric::EvaluationsNeeded => demand.evaluations_needed,
            Metric::Active => demand.active as i64,
        }
    }
}

/// A failed request, answered as a `metav1.Status`.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

impl Failure {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Failure {
        Failure {
            code,
            reason,
            message: message.into(),
        }
    }

    pub fn to_status(&self) -> Value {
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": self.message, "reason": self.reason, "code": self.code,
        })
    }
}

impl From<DemandError> for Failure {
    fn from(err: DemandError) -> Failure {
        match err {
            DemandError::UnknownRun { .. } => Failure::new(404, "NotFound", err.to_string()),
            DemandError::Unavailable { .. } => {
                Failure::new(503, "ServiceUnavailable", err.to_string())
            }
        }
    }
}

/// The API's discovery document (`APIResourceList`).
pub fn resource_list() -> Value {
    let resources: Vec<Value> = Metric::ALL
        .iter()
        .map(|m| {
            json!({"name": m.name(), "singularName": "", "namespaced": true,
                   "kind": "ExternalMetricValueList", "verbs": ["get"]})
        })
        .collect();
    json!({
        "kind": "APIResourceList", "apiVersion": "v1",
        "groupVersion": format!("{GROUP}/{VERSION}"), "resources": resources,
    })
}

/// Which runs a label selector picks.
#[derive(Debug, PartialEq)]
enum RunSelector {
    All,
    In(Vec<String>),
    NotIn(Vec<String>),
}

impl RunSelector {
    fn picks(&self, run: &str) -> bool {
        match self {
            RunSelector::All => true,
            RunSelector::In(names) => names.iter().any(|n| n == run),
            RunSelector::NotIn(names) => !names.iter().any(|n| n == run),
        }
    }
}

/// Parses the selectors an HPA metric selector produces for the `abcrun` label: `abcrun=NAME`,
/// `abcrun==NAME`, `abcrun!=NAME`, `abcrun in (A,B)`, `abcrun notin (A,B)`; empty means all.
fn parse_selector(selector: Option<&str>) -> Result<RunSelector, Failure> {
    let selector = selector.map(str::trim).unwrap_or_default();
    if selector.is_empty() {
        return Ok(RunSelector::All);
    }
    let bad = |why: &str| {
        Failure::new(
            400,
            "BadRequest",
            format!(
                "label selector {selector:?}: {why}; select a run with `{RUN_SELECTOR_LABEL}=NAME`"
            ),
        )
    };
    let set = |list: &str| -> Result<Vec<String>, Failure> {
        let list = list.trim();
        let inner = list
            .strip_prefix('(')
            .and_then(|l| l.strip_suffix(')'))
            .ok_or_else(|| bad("a set needs parentheses"))?;
        Ok(inner.split(',').map(|n| n.trim().to_string()).collect())
    };
    let one = |name: &str| vec![name.trim().to_string()];
    let (key, negated, names) = if let Some((key, list)) = selector.split_once(" notin ") {
        (key, true, set(list)?)
    } else if let Some((key, list)) = selector.split_once(" in ") {
        (key, false, set(list)?)
    } else if selector.contains(',') {
        return Err(bad("only one requirement is supported"));
    } else if let Some((key, name)) = selector.split_once("!=") {
        (key, true, one(name))
    } else if let Some((key, name)) = selector
        .split_once("==")
        .or_else(|| selector.split_once('='))
    {
        (key, false, one(name))
    } else {
        return Err(bad("unsupported requirement"));
    };
    if key.trim() != RUN_SELECTOR_LABEL {
        return Err(bad(&format!("unknown label {:?}", key.trim())));
    }
    if names.iter().any(String::is_empty) {
        return Err(bad("empty run name"));
    }
    Ok(if negated {
        RunSelector::NotIn(names)
    } else {
        RunSelector::In(names)
    })
}

/// The `ExternalMetricValueList` of `metric` for the runs of `namespace` the selector picks.
/// A run named by the selector that is unknown or has no reading fails the request (with the
/// run's name in the message); other runs are not affected since each HPA selects its own run.
pub fn metric_values(
    board: &DemandBoard,
    namespace: &str,
    metric: &str,
    selector: Option<&str>,
    now: Timestamp,
) -> Result<Value, Failure> {
    let metric = Metric::parse(metric).ok_or_else(|| {
        let known: Vec<&str> = Metric::ALL.iter().map(|m| m.name()).collect();
        Failure::new(
            404,
            "NotFound",
            format!(
                "no external metric {metric:?}; abc-operator serves {}",
                known.join(", ")
            ),
        )
    })?;
    let selector = parse_selector(selector)?;
    let runs: Vec<String> = match &selector {
        RunSelector::In(names) => names.clone(),
        _ => board
            .runs_in(namespace)
            .into_iter()
            .filter(|r| selector.picks(r))
            .collect(),
    };
    let mut items = Vec::with_capacity(runs.len());
    for run in runs {
        let demand = board.get(namespace, &run)?;
        items.push(json!({
            "metricName": metric.name(),
            "metricLabels": {RUN_SELECTOR_LABEL: run},
            "timestamp": now.to_string(),
            "value": metric.value(&demand).to_string(),
        }));
    }
    Ok(json!({
        "kind": "ExternalMetricValueList", "apiVersion": format!("{GROUP}/{VERSION}"),
        "metadata": {}, "items": items,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Phase;
    use crate::protocol::Snapshot;

    fn board() -> DemandBoard {
        let board = DemandBoard::default();
        let sampling = Snapshot {
            analysis_id: Some("a".into()),
            generation: Some(1),
            n_req: Some(100),
            n_acc: Some(40),
            n_eval: Some(80),
            ..Snapshot::default()
        };
        board.record("ns", "busy", Phase::Running, Ok(&sampling));
        board.record("ns", "done", Phase::Succeeded, Ok(&Snapshot::default()));
        board.record(
            "ns",
            "broken",
            Phase::Running,
            Err("cannot read the run's Redis: connection refused".into()),
        );
        board
    }

    fn values(list: &Value) -> Vec<(String, String)> {
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["metricLabels"]["abcrun"].as_str().unwrap().to_string(),
                    i["value"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn one_run_by_label() {
        let list = metric_values(
            &board(),
            "ns",
            "abcrun_evaluations_needed",
            Some("abcrun=busy"),
            Timestamp::UNIX_EPOCH,
        )
        .unwrap();
        assert_eq!(list["kind"], "ExternalMetricValueList");
        // 60 missing at an acceptance rate of 0.5.
        assert_eq!(values(&list), [("busy".to_string(), "120".to_string())]);
        let active = metric_values(
            &board(),
            "ns",
            "abcrun_active",
            Some("abcrun in (busy, done)"),
            Timestamp::UNIX_EPOCH,
        )
        .unwrap();
        assert_eq!(
            values(&active),
            [("busy".into(), "1".into()), ("done".into(), "0".into())]
        );
    }

    #[test]
    fn errors_name_the_run_and_cause_and_stay_with_that_run() {
        let b = board();
        let unknown = metric_values(
            &b,
            "ns",
            "abcrun_active",
            Some("abcrun=nope"),
            Timestamp::UNIX_EPOCH,
        )
        .unwrap_err();
        assert_eq!(unknown.code, 404);
        assert!(
            unknown.message.contains("AbcRun ns/nope is not known"),
            "{}",
            unknown.message
        );
        let broken = metric_values(
            &b,
            "ns",
            "abcrun_active",
            Some("abcrun=broken"),
            Timestamp::UNIX_EPOCH,
        )
        .unwrap_err();
        assert_eq!(broken.code, 503);
        assert_eq!(
            broken.message,
            "AbcRun ns/broken: cannot read the run's Redis: connection refused"
        );
        assert_eq!(broken.to_status()["reason"], "ServiceUnavailable");
        // The other runs still answer.
        let others = metric_values(
            &b,
            "ns",
            "abcrun_active",
            Some("abcrun!=broken"),
            Timestamp::UNIX_EPOCH,
        )
        .unwrap();
        assert_eq!(values(&others).len(), 2);
    }

    #[test]
    fn bad_requests_say_what_to_write() {
        let b = board();
        let unknown_metric =
            metric_values(&b, "ns", "cpu", None, Timestamp::UNIX_EPOCH).unwrap_err();
        assert!(
            unknown_metric
                .message
                .contains("abcrun_evaluations_needed, abcrun_active")
        );
        for selector in [
            "app=busy",
            "abcrun",
            "abcrun=a,abcrun=b",
            "abcrun in busy",
            "abcrun=",
        ] {
            let err = metric_values(
                &b,
                "ns",
                "abcrun_active",
                Some(selector),
                Timestamp::UNIX_EPOCH,
            )
            .unwrap_err();
            assert_eq!(err.code, 400, "{selector}");
            assert!(err.message.contains("abcrun=NAME"), "{}", err.message);
        }
        assert_eq!(
            parse_selector(Some("abcrun==x")).unwrap(),
            RunSelector::In(vec!["x".into()])
        );
        assert_eq!(
            parse_selector(Some("abcrun notin (x,y)")).unwrap(),
            RunSelector::NotIn(vec!["x".into(), "y".into()])
        );
    }

    #[test]
    fn discovery_lists_both_metrics() {
        let list = resource_list();
        assert_eq!(list["groupVersion"], "external.metrics.k8s.io/v1beta1");
        assert_eq!(list["resources"].as_array().unwrap().len(), 2);
    }
}
