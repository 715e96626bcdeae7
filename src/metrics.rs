//! Prometheus metrics of the controller, and the HTTP endpoint serving them with liveness and
//! readiness.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunLabels {
    pub namespace: String,
    pub run: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub namespace: String,
    pub run: String,
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiRequestLabels {
    /// `watch`, `read` (get or list), `create`, `patch`, `update` or `delete`.
    pub verb: String,
    /// The plural resource, e.g. `deployments`, `leases`, `abcruns`.
    pub resource: String,
}

/// Every metric the controller exports (prefix `abc_operator_`).
pub struct Metrics {
    pub registry: Registry,
    pub reconciles: Counter,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Histogram,
    /// Requests the controller sent to the Kubernetes API server: what it costs the cluster.
    pub api_requests: Family<ApiRequestLabels, Counter>,
    /// 1 for the run's current phase, 0 for the others it has had.
    pub run_phase: Family<PhaseLabels, Gauge>,
    pub workers_desired: Family<RunLabels, Gauge>,
    pub workers_ready: Family<RunLabels, Gauge>,
    pub generation: Family<RunLabels, Gauge>,
    pub accepted: Family<RunLabels, Gauge>,
    pub required: Family<RunLabels, Gauge>,
    pub evaluations: Family<RunLabels, Gauge>,
    pub active_workers: Family<RunLabels, Gauge>,
    /// `status.lostWorkers`: counted in the run's Redis by the repair itself, so it survives
    /// controller restarts (a gauge that only grows).
    pub lost_workers: Family<RunLabels, Gauge>,
    /// 1 while the run's `Degraded` condition is True (something keeps it from making
    /// progress: the condition's reason and message say what), else 0.
    pub degraded: Family<RunLabels, Gauge>,
    /// The autoscaling demand (see [`crate::autoscaling::Demand`]).
    pub evaluations_needed: Family<RunLabels, Gauge>,
    pub analysis_active: Family<RunLabels, Gauge>,
    /// The latest stored generation's figures (`status.inference`), as the master recorded them.
    pub inference_generation: Family<RunLabels, Gauge>,
    pub epsilon: Family<RunLabels, FloatGauge>,
    pub acceptance_rate: Family<RunLabels, FloatGauge>,
    pub effective_sample_size: Family<RunLabels, FloatGauge>,
    /// 1 while this replica holds the leader Lease (reconciles), 0 while it stands by.
    pub leader: Gauge,
    /// Runs the controller keeps something of in memory (see `controller::memory`): the runs
    /// it has reconciled and not seen deleted. Falls back when runs are deleted.
    pub remembered_runs: Gauge,
    readiness: Mutex<Readiness>,
}

/// A gauge of a real number.
pub type FloatGauge = Gauge<f64, AtomicU64>;

/// Whether the controller's watches have synced (what `/readyz` answers), and if not, why.
#[derive(Clone, Debug, PartialEq)]
pub enum Readiness {
    /// Another replica leads (named); this one is ready to take over.
    Standby(String),
    /// The first list of AbcRuns has not arrived yet.
    Starting,
    /// A watch failed before the first list arrived: why, for the user.
    Waiting(String),
    /// The AbcRun watch has synced: every run is known and being reconciled.
    Ready,
}

impl Readiness {
    /// The `/readyz` answer: 200 once ready, else 503 with the reason.
    pub fn answer(&self) -> (u16, String) {
        match self {
            Readiness::Ready => (200, "ready".into()),
            Readiness::Standby(leader) => (200, format!("ready: standing by, {leader} leads")),
            Readiness::Starting => (
                503,
                "not ready: waiting for the first list of AbcRuns".into(),
            ),
            Readiness::Waiting(why) => (503, format!("not ready: {why}")),
        }
    }
}

impl Metrics {
    /// Counts one request to the API server.
    pub fn count_api_request(&self, method: &str, path: &str, query: Option<&str>) {
        let watch =
            query.is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
        let verb = match method {
            "GET" if watch => "watch",
            "GET" => "read",
            "POST" => "create",
            "PATCH" => "patch",
            "PUT" => "update",
            "DELETE" => "delete",
            _ => "other",
        };
        self.api_requests
            .get_or_create(&ApiRequestLabels {
                verb: verb.into(),
                resource: resource_of(path).into(),
            })
            .inc();
    }
}

/// The resource a request path names: `/api/v1/namespaces/ns/pods/p` and `/api/v1/pods` give
/// `pods`, `/apis/apps/v1/namespaces/ns/deployments` gives `deployments`.
fn resource_of(path: &str) -> &str {
    let mut parts = path.trim_matches('/').split('/');
    let rest: Vec<&str> = match parts.next() {
        // /api/VERSION/...
        Some("api") => parts.skip(1).collect(),
        // /apis/GROUP/VERSION/...
        Some("apis") => parts.skip(2).collect(),
        _ => return "other",
    };
    match rest.as_slice() {
        ["namespaces", _, resource, ..] => resource,
        [resource, ..] => resource,
        [] => "other",
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("abc_operator");
        let reconciles = Counter::default();
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        let reconcile_duration = Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]);
        registry.register("reconciles", "Reconciles of AbcRuns", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Failed reconciles, by error",
            reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of a reconcile",
            reconcile_duration.clone(),
        );
        let mut m = Metrics {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            api_requests: Family::default(),
            run_phase: Family::default(),
            workers_desired: Family::default(),
            workers_ready: Family::default(),
            generation: Family::default(),
            accepted: Family::default(),
            required: Family::default(),
            evaluations: Family::default(),
            active_workers: Family::default(),
            lost_workers: Family::default(),
            degraded: Family::default(),
            evaluations_needed: Family::default(),
            analysis_active: Family::default(),
            inference_generation: Family::default(),
            epsilon: Family::default(),
            acceptance_rate: Family::default(),
            effective_sample_size: Family::default(),
            leader: Gauge::default(),
            remembered_runs: Gauge::default(),
            readiness: Mutex::new(Readiness::Starting),
        };
        let r = &mut m.registry;
        r.register(
            "api_requests",
            "Requests sent to the Kubernetes API server, by verb and resource",
            m.api_requests.clone(),
        );
        r.register(
            "leader",
            "1 while this replica holds the leader Lease and reconciles",
            m.leader.clone(),
        );
        r.register(
            "remembered_runs",
            "AbcRuns the controller keeps state of in memory (reconciled, not seen deleted)",
            m.remembered_runs.clone(),
        );
        r.register(
            "run_phase",
            "Phase of each AbcRun (1 = current)",
            m.run_phase.clone(),
        );
        r.register(
            "run_workers_desired",
            "Worker pods an AbcRun asks for",
            m.workers_desired.clone(),
        );
        r.register(
            "run_workers_ready",
            "Ready worker pods of an AbcRun",
            m.workers_ready.clone(),
        );
        r.register(
            "run_generation",
            "Current pyABC generation",
            m.generation.clone(),
        );
        r.register(
            "run_accepted",
            "Accepted particles in the current generation",
            m.accepted.clone(),
        );
        r.register(
            "run_required",
            "Particles required in the current generation",
            m.required.clone(),
        );
        r.register(
            "run_evaluations",
            "Evaluations in the current generation",
            m.evaluations.clone(),
        );
        r.register(
            "run_active_workers",
            "Workers inside the current generation",
            m.active_workers.clone(),
        );
        r.register(
            "run_stored_generation",
            "The latest generation the master stored (and recorded)",
            m.inference_generation.clone(),
        );
        r.register(
            "run_epsilon",
            "Acceptance threshold of the latest stored generation (pyABC's eps)",
            m.epsilon.clone(),
        );
        r.register(
            "run_acceptance_rate",
            "Accepted particles per evaluation in the latest stored generation",
            m.acceptance_rate.clone(),
        );
        r.register(
            "run_effective_sample_size",
            "Effective sample size of the latest stored generation",
            m.effective_sample_size.clone(),
        );
        r.register(
            "run_lost_workers",
            "Lost workers found and repaired",
            m.lost_workers.clone(),
        );
        r.register(
            "run_degraded",
            "1 while the AbcRun's Degraded condition is True",
            m.degraded.clone(),
        );
        r.register(
            "run_evaluations_needed",
            "Evaluations still needed in the current generation (estimate)",
            m.evaluations_needed.clone(),
        );
        r.register(
            "run_analysis_active",
            "1 while an analysis is in progress",
            m.analysis_active.clone(),
        );
        m
    }
}

impl Metrics {
    /// Marks the controller ready: its AbcRun watch has synced. It stays ready (the watch
    /// retries on its own and the reconciles go on from what it knows).
    pub fn set_ready(&self) {
        *self.lock_readiness() = Readiness::Ready;
    }

    /// Marks a replica that stands by: ready (it can take over), while `leader` reconciles.
    pub fn set_standby(&self, leader: String) {
        self.leader.set(0);
        *self.lock_readiness() = Readiness::Standby(leader);
    }

    /// Marks the replica that has just become the leader: ready again once its AbcRun watch
    /// has synced.
    pub fn set_leading(&self) {
        self.leader.set(1);
        *self.lock_readiness() = Readiness::Starting;
    }

    /// Records why the controller is not ready yet (a failed watch); ignored once ready.
    pub fn set_waiting(&self, why: String) {
        let mut readiness = self.lock_readiness();
        if *readiness != Readiness::Ready {
            *readiness = Readiness::Waiting(why);
        }
    }

    pub fn readiness(&self) -> Readiness {
        self.lock_readiness().clone()
    }

    fn lock_readiness(&self) -> std::sync::MutexGuard<'_, Readiness> {
        // The state is a plain value, valid even if a holder panicked.
        self.readiness
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts timing a reconcile; the duration is recorded when the guard drops.
    pub fn reconcile_started(&self) -> ReconcileTimer<'_> {
        self.reconciles.inc();
        ReconcileTimer {
            metrics: self,
            start: Instant::now(),
        }
    }

    /// Forgets a deleted run's series so they do not linger.
    pub fn forget_run(&self, namespace: &str, run: &str) {
        let labels = RunLabels {
            namespace: namespace.into(),
            run: run.into(),
        };
        for family in [
            &self.workers_desired,
            &self.workers_ready,
            &self.generation,
            &self.accepted,
            &self.required,
            &self.evaluations,
            &self.active_workers,
            &self.evaluations_needed,
            &self.analysis_active,
            &self.lost_workers,
            &self.degraded,
            &self.inference_generation,
        ] {
            family.remove(&labels);
        }
        for family in [
            &self.epsilon,
            &self.acceptance_rate,
            &self.effective_sample_size,
        ] {
            family.remove(&labels);
        }
        for phase in crate::api::Phase::ALL {
            self.run_phase.remove(&PhaseLabels {
                namespace: namespace.into(),
                run: run.into(),
                phase: phase.to_string(),
            });
        }
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .reconcile_duration
            .observe(self.start.elapsed().as_secs_f64());
    }
}

/// Serves `/metrics`, `/healthz`, `/readyz` and the routes of `extra` until the process ends.
pub async fn serve(
    addr: std::net::SocketAddr,
    metrics: Arc<Metrics>,
    extra: axum::Router,
) -> std::io::Result<()> {
    use axum::{Router, http::StatusCode, routing::get};
    let m = metrics.clone();
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = m.clone();
                async move { m.encode() }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let m = metrics.clone();
                async move {
                    let (code, body) = m.readiness().answer();
                    (
                        StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                        body,
                    )
                }
            }),
        )
        .merge(extra);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz and /demand");
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_requests_are_counted_by_verb_and_resource() {
        let m = Metrics::default();
        m.count_api_request(
            "GET",
            "/api/v1/namespaces/ns/pods",
            Some("labelSelector=x&watch=true"),
        );
        m.count_api_request(
            "PATCH",
            "/apis/apps/v1/namespaces/ns/deployments/d",
            Some("fieldManager=f"),
        );
        m.count_api_request(
            "PUT",
            "/apis/coordination.k8s.io/v1/namespaces/ns/leases/l",
            None,
        );
        m.count_api_request("GET", "/apis/abc-operator.dev/v1alpha1/abcruns", None);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &m.registry).unwrap();
        for series in [
            r#"abc_operator_api_requests_total{verb="watch",resource="pods"} 1"#,
            r#"abc_operator_api_requests_total{verb="patch",resource="deployments"} 1"#,
            r#"abc_operator_api_requests_total{verb="update",resource="leases"} 1"#,
            r#"abc_operator_api_requests_total{verb="read",resource="abcruns"} 1"#,
        ] {
            assert!(text.contains(series), "{series} missing in:\n{text}");
        }
    }

    #[test]
    fn run_series_are_exported_and_forgotten() {
        let m = Metrics::default();
        let labels = RunLabels {
            namespace: "n".into(),
            run: "r".into(),
        };
        m.generation.get_or_create(&labels).set(3);
        m.epsilon.get_or_create(&labels).set(0.25);
        let text = m.encode();
        for series in [
            r#"abc_operator_run_generation{namespace="n",run="r"} 3"#,
            r#"abc_operator_run_epsilon{namespace="n",run="r"} 0.25"#,
        ] {
            assert!(text.contains(series), "{series} missing in:\n{text}");
        }
        m.forget_run("n", "r");
        assert!(!m.encode().contains(r#"run="r""#));
    }

    #[test]
    fn readiness_says_why_until_ready_and_then_stays_ready() {
        let m = Metrics::default();
        assert_eq!(m.readiness().answer().0, 503);
        m.set_waiting("listing AbcRuns failed: 404".into());
        assert_eq!(
            m.readiness().answer(),
            (503, "not ready: listing AbcRuns failed: 404".into())
        );
        m.set_ready();
        m.set_waiting("a later watch error".into());
        assert_eq!(m.readiness().answer(), (200, "ready".into()));
    }

    #[test]
    fn a_standby_is_ready_and_a_new_leader_waits_for_its_watch() {
        let m = Metrics::default();
        m.set_standby("pod-a".into());
        assert_eq!(
            m.readiness().answer(),
            (200, "ready: standing by, pod-a leads".into())
        );
        assert!(m.encode().contains("abc_operator_leader 0"));
        m.set_leading();
        assert_eq!(m.readiness().answer().0, 503);
        assert!(m.encode().contains("abc_operator_leader 1"));
    }
}
