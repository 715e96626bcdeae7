//! What every reconcile shares ([`Context`]) and how one fails ([`Error`]).

use super::cache;
use super::events::EventPublisher;
use super::guard::GuardedRun;
use super::memory::RunMemory;
use super::progress_poller::Pollers;
use super::redis_access::RedisAccess;
use crate::autoscaling::DemandBoard;
use crate::metrics::Metrics;
use kube::Client;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use std::sync::Arc;
use std::time::Duration;

/// Errors of one reconcile; each names the step that failed and what a user or operator can
/// act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("AbcRun has no namespace (the CRD is namespaced; is the CRD from crds/ installed?)")]
    NotNamespaced,
    #[error("building the run's objects failed: {0}")]
    Build(#[source] crate::resources::BuildError),
    #[error("applying {kind} {name:?} failed: {source}")]
    Apply {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("{step} failed: {source}")]
    Kube {
        /// What the controller was doing, e.g. "writing the run's status".
        step: &'static str,
        #[source]
        source: kube::Error,
    },
}

impl Error {
    /// Short label for the error metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::NotNamespaced => "not_namespaced",
            Error::Build(_) => "build",
            Error::Apply { .. } => "apply",
            Error::Kube { .. } => "kube",
        }
    }

    /// The error of an API request made for `step`.
    pub fn kube(step: &'static str) -> impl FnOnce(kube::Error) -> Error {
        move |source| Error::Kube { step, source }
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    /// Publishes the run's Events; one for all reconciles, so that repeats fold into series.
    pub events: EventPublisher,
    pub metrics: Arc<Metrics>,
    /// Each run's demand, for the autoscaling endpoints.
    pub demand: Arc<DemandBoard>,
    /// What the builders take from the operator's options.
    pub build_settings: crate::resources::BuildSettings,
    /// The runs, as their watch sees them.
    pub runs: Store<GuardedRun>,
    /// The run's objects and pods, as the watches see them.
    pub caches: cache::Caches,
    /// What is remembered of each run between reconciles.
    pub memory: RunMemory,
    /// See `ControllerArgs::status_progress_seconds`.
    pub progress_interval: Duration,
    pub redis: Arc<RedisAccess>,
    /// Reads each live run's Redis between reconciles.
    pub pollers: Pollers,
}

impl Context {
    /// Forgets everything kept of the run `uid`: what is remembered of it, its metric series
    /// and demand (unless a run created again under its name uses them), its Redis connection
    /// and its poller.
    pub fn forget(&self, uid: &str) {
        if let Some((namespace, name)) = self.memory.forget(uid) {
            self.metrics.forget_run(&namespace, &name);
            self.demand.forget(&namespace, &name);
        }
        self.redis.forget(uid);
        self.pollers.stop(uid);
        self.metrics.remembered_runs.set(self.memory.len() as i64);
    }

    /// Remembers the run being reconciled (see [`RunMemory::remember`]).
    pub fn remember(&self, run: &crate::api::AbcRun) {
        self.memory.remember(run);
        self.metrics.remembered_runs.set(self.memory.len() as i64);
    }

    /// Forgets every remembered run that the runs' store does not hold (any more): runs
    /// deleted while their watch was down, or while a reconcile of them was under way.
    pub fn forget_gone_runs(&self) {
        let present: std::collections::HashSet<String> = self
            .runs
            .state()
            .iter()
            .filter_map(|run| run.uid())
            .collect();
        for uid in self.memory.uids() {
            if !present.contains(&uid) {
                self.forget(&uid);
            }
        }
    }

    /// Whether the runs' store still holds this very run (not one created again under its
    /// name).
    pub fn still_there(&self, run: &GuardedRun) -> bool {
        let Some(namespace) = run.namespace() else {
            return false;
        };
        self.runs
            .get(&ObjectRef::new(&run.name_any()).within(&namespace))
            .is_some_and(|stored| stored.uid() == run.uid())
    }
}
