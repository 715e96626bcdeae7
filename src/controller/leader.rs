//! Leader election: of the operator's replicas, only the holder of a `coordination.k8s.io/v1`
//! Lease runs the controller (reconciles, repairs lost workers, serves the external metrics
//! API); the others stand by, serve `/metrics`, `/healthz` and `/readyz`, and take over when the
//! leader stops renewing.
//!
//! Our own, small, rather than a crate: kube 5 has none built in; `kube-leader-election` needs
//! kube 4 (a second kube in the build); `kube-lease-manager` (kube 5) lets a standby sleep until
//! the recorded expiry, so a lease released on SIGTERM is not taken over any sooner, and it
//! does not tell a leader whose renewals keep failing that it may no longer lead. Both matter
//! here: a rolling update or `kubectl delete pod` should hand over at once, and two leaders
//! would reconcile the same runs.
//!
//! The scheme is client-go's: writes are optimistic (a replace guarded by the resourceVersion
//! just read, so of two candidates exactly one wins); a standby judges expiry by how long *it*
//! has seen the Lease unchanged, on its own monotonic clock, so clock skew between nodes does
//! not matter; the leader gives up when it has not renewed for [`RENEW_DEADLINE`], shorter
//! than [`LEASE_DURATION`], so it has stopped before anyone else may start. Its process then
//! exits non-zero and restarts as a candidate: nothing of the old leadership lives on.
//!
//! A crashed leader is replaced within `LEASE_DURATION` plus two [`RETRY_PERIOD`]s (the standby
//! sees the last renewal at most one period late, and looks again at most one period after
//! expiry): under 15 s. A leader stopped with SIGTERM releases the Lease; the standby takes it
//! at its next look, within one period.

use crate::metrics::Metrics;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use std::time::{Duration, Instant};

/// How long a Lease stays held without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(10);
/// The leader stops leading when it has not renewed for this long.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(7);
/// How often the leader renews and a standby looks at the Lease.
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);

// A leader notices a missed deadline at most one period late: it must have stopped before a
// standby may take over. And a crashed leader is replaced within 15 s (see the module docs).
const _: () = assert!(RENEW_DEADLINE.as_secs() + RETRY_PERIOD.as_secs() < LEASE_DURATION.as_secs());
const _: () = assert!(LEASE_DURATION.as_secs() + 2 * RETRY_PERIOD.as_secs() < 15);

/// Label of the leader's pod: the external metrics API's Service selects it, because only the
/// leader's demand board is fed (by its reconciles) and only the leader publishes its serving
/// CA into the APIService.
pub const LEADER_LABEL: &str = "abc-operator.dev/leader";

const FIELD_MANAGER: &str = "abc-operator";

/// Options of the leader election.
#[derive(clap::Args, Debug)]
pub struct LeaderArgs {
    /// Name of the Lease the replicas of one installation elect their leader with. It lives in
    /// the pod's namespace (`POD_NAMESPACE`), else in the watched namespace, else in `default`.
    #[arg(long, env = "ABC_LEASE_NAME", default_value = "abc-operator")]
    pub lease_name: String,
}

/// Why a leader stopped leading.
#[derive(Debug, thiserror::Error)]
pub enum LeadershipLost {
    #[error(
        "the Lease {lease} is now held by {holder:?}; stopping so that only one replica reconciles"
    )]
    TakenOver { lease: String, holder: String },
    #[error(
        "could not renew the Lease {lease} for {}s ({last_error}); stopping before another replica may take over (can the operator update leases.coordination.k8s.io in its namespace?)",
        RENEW_DEADLINE.as_secs()
    )]
    NotRenewed { lease: String, last_error: String },
}

/// Runs `work` (the controller) while this replica leads. Waits as a standby until the Lease is
/// free; returns `Ok` when `work` ends (SIGTERM), after releasing the Lease, and an error as soon
/// as the leadership is lost (`work` is dropped at once).
pub async fn lead(
    mut elector: Elector,
    metrics: &Metrics,
    shutdown: Shutdown,
    work: impl std::future::Future<Output = ()>,
) -> Result<(), LeadershipLost> {
    // A label left by an earlier process of this pod (one that lost the Lease) must go before
    // the external metrics Service sends it requests again.
    elector.label_own_pod(false).await;
    tokio::select! {
        () = elector.acquire(metrics) => {}
        () = shutdown => {
            tracing::info!("stopped while standing by");
            return Ok(());
        }
    }
    metrics.set_leading();
    elector.label_own_pod(true).await;
    let outcome = tokio::select! {
        () = work => Ok(()),
        lost = elector.hold() => Err(lost),
    };
    if outcome.is_ok() {
        elector.release().await;
    }
    outcome
}

/// One replica's side of the election.
pub struct Elector {
    leases: Api<Lease>,
    name: String,
    /// `namespace/name`, for logs and errors.
    lease: String,
    identity: String,
    /// This process's pod, to label it while it leads (unset outside a pod).
    own_pod: Option<Api<Pod>>,
    seen: Observation,
    /// The Lease as this replica last wrote it, while it holds it.
    held: Option<Lease>,
}

impl Elector {
    /// The elector of this process: identity `POD_NAME` in a pod (a restarted container of the
    /// same pod may take its own unexpired Lease back: its old process is gone), else
    /// `HOSTNAME-PID`.
    pub fn new(client: &kube::Client, args: &LeaderArgs, watched_namespace: Option<&str>) -> Self {
        let pod_name = std::env::var("POD_NAME").ok().filter(|n| !n.is_empty());
        let pod_namespace = std::env::var("POD_NAMESPACE")
            .ok()
            .filter(|n| !n.is_empty());
        let namespace = pod_namespace
            .clone()
            .or(watched_namespace.map(str::to_owned))
            .unwrap_or_else(|| "default".into());
        let identity = pod_name.clone().unwrap_or_else(|| {
            let host = nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "localhost".into());
            format!("{host}-{}", std::process::id())
        });
        let own_pod = match (pod_name, pod_namespace) {
            (Some(_), Some(ns)) => Some(Api::namespaced(client.clone(), &ns)),
            _ => None,
        };
        Elector {
            leases: Api::namespaced(client.clone(), &namespace),
            name: args.lease_name.clone(),
            lease: format!("{namespace}/{}", args.lease_name),
            identity,
            own_pod,
            seen: Observation::default(),
            held: None,
        }
    }

    /// Waits until this replica holds the Lease.
    async fn acquire(&mut self, metrics: &Metrics) {
        tracing::info!(lease = %self.lease, identity = %self.identity, "seeking the leadership");
        let mut last_leader = None;
        loop {
            match self.try_acquire().await {
                Ok(Attempt::Acquired { previous }) => {
                    tracing::info!(lease = %self.lease, identity = %self.identity, ?previous, "leading");
                    if let Some(previous) = previous.filter(|p| *p != self.identity) {
                        // A leader that stopped renewing may still run: its pod no longer
                        // receives the external metrics API's requests.
                        self.label_pod(&previous, false).await;
                    }
                    return;
                }
                Ok(Attempt::HeldBy(leader)) => {
                    if last_leader.as_ref() != Some(&leader) {
                        tracing::info!(lease = %self.lease, %leader, "standing by");
                        metrics.set_standby(leader.clone());
                        last_leader = Some(leader);
                    }
                }
                Err(err) => {
                    tracing::warn!(lease = %self.lease, error = %err, "cannot read or write the Lease; retrying (the operator needs get, create and update on leases.coordination.k8s.io in its namespace)");
                    metrics.set_waiting(format!(
                        "cannot read or write the Lease {}: {err}; check the operator's RBAC (get, create and update on leases in its namespace: the chart's Role)",
                        self.lease
                    ));
                }
            }
            tokio::time::sleep(RETRY_PERIOD).await;
        }
    }

    async fn try_acquire(&mut self) -> Result<Attempt, kube::Error> {
        let Some(current) = self.leases.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(held_by(&self.identity, None, Timestamp::now())),
            };
            return match self.leases.create(&post_params(), &lease).await {
                Ok(created) => {
                    self.held = Some(created);
                    Ok(Attempt::Acquired { previous: None })
                }
                // Another candidate created it first: look again next time.
                Err(err) if is_conflict(&err) => Ok(Attempt::HeldBy("another replica".into())),
                Err(err) => Err(err),
            };
        };
        let unchanged_for = self.seen.unchanged_for(&current, Instant::now());
        let previous = current
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.clone());
        if let Holder::Other(leader) = holder(current.spec.as_ref(), &self.identity, unchanged_for)
        {
            return Ok(Attempt::HeldBy(leader));
        }
        let mut lease = current;
        lease.spec = Some(held_by(
            &self.identity,
            lease.spec.as_ref(),
            Timestamp::now(),
        ));
        match self
            .leases
            .replace(&self.name, &post_params(), &lease)
            .await
        {
            Ok(written) => {
                self.held = Some(written);
                Ok(Attempt::Acquired { previous })
            }
            // Another candidate wrote in between (the resourceVersion no longer matched).
            Err(err) if is_conflict(&err) => Ok(Attempt::HeldBy(
                previous.unwrap_or_else(|| "another replica".into()),
            )),
            Err(err) => Err(err),
        }
    }

    /// Renews the Lease every [`RETRY_PERIOD`] until the leadership is lost.
    async fn hold(&mut self) -> LeadershipLost {
        let mut renewed_at = Instant::now();
        let mut last_error = String::from("no answer");
        loop {
            tokio::time::sleep(RETRY_PERIOD).await;
            let left = RENEW_DEADLINE.saturating_sub(renewed_at.elapsed());
            match tokio::time::timeout(left, self.renew()).await {
                Ok(Ok(Renewal::Renewed)) => renewed_at = Instant::now(),
                Ok(Ok(Renewal::NotYet)) => {}
                Ok(Ok(Renewal::Lost(holder))) => {
                    return LeadershipLost::TakenOver {
                        lease: self.lease.clone(),
                        holder,
                    };
                }
                Ok(Err(err)) => {
                    tracing::warn!(lease = %self.lease, error = %err, "renewing the Lease failed; retrying");
                    last_error = err.to_string();
                }
                Err(_) => last_error = "the API server did not answer in time".into(),
            }
            if renewed_at.elapsed() >= RENEW_DEADLINE {
                return LeadershipLost::NotRenewed {
                    lease: self.lease.clone(),
                    last_error,
                };
            }
        }
    }

    async fn renew(&mut self) -> Result<Renewal, kube::Error> {
        let Some(mut lease) = self.held.clone() else {
            return Ok(Renewal::Lost("nobody".into()));
        };
        lease.spec = Some(held_by(
            &self.identity,
            lease.spec.as_ref(),
            Timestamp::now(),
        ));
        match self
            .leases
            .replace(&self.name, &post_params(), &lease)
            .await
        {
            Ok(written) => {
                self.held = Some(written);
                Ok(Renewal::Renewed)
            }
            Err(err) if is_conflict(&err) => {
                // Someone else wrote the Lease since: if it still names us (say, a label was
                // added), renew from what is there now; otherwise it is someone else's.
                let current = self.leases.get_opt(&self.name).await?;
                let spec = current.as_ref().and_then(|l| l.spec.as_ref());
                match holder(spec, &self.identity, Duration::ZERO) {
                    Holder::Me => {
                        self.held = current;
                        Ok(Renewal::NotYet)
                    }
                    Holder::Other(other) => Ok(Renewal::Lost(other)),
                    Holder::Nobody => Ok(Renewal::Lost("nobody".into())),
                }
            }
            Err(err) => Err(err),
        }
    }

    /// Gives the Lease up, so that a standby takes over at its next look instead of after expiry.
    async fn release(&mut self) {
        self.label_own_pod(false).await;
        let Some(mut lease) = self.held.take() else {
            return;
        };
        lease.spec = lease.spec.as_ref().map(|s| released(s, Timestamp::now()));
        match self
            .leases
            .replace(&self.name, &post_params(), &lease)
            .await
        {
            Ok(_) => tracing::info!(lease = %self.lease, "released the leadership"),
            Err(err) => {
                tracing::warn!(lease = %self.lease, error = %err, "could not release the Lease; a standby takes over when it expires")
            }
        }
    }

    async fn label_own_pod(&self, leader: bool) {
        if self.own_pod.is_some() {
            self.label_pod(&self.identity.clone(), leader).await;
        }
    }

    /// Sets or removes [`LEADER_LABEL`] on a pod of the operator's namespace (outside a pod,
    /// there is none to label).
    async fn label_pod(&self, pod: &str, leader: bool) {
        let Some(pods) = &self.own_pod else {
            return;
        };
        let value = if leader { Some("true") } else { None };
        let patch = serde_json::json!({"metadata": {"labels": {LEADER_LABEL: value}}});
        match pods
            .patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => tracing::debug!(%pod, leader, "labelled the pod"),
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(err) => {
                tracing::error!(%pod, leader, error = %err, "cannot label the pod; the external metrics API's Service selects the leader by this label (the operator needs patch on pods in its namespace)")
            }
        }
    }
}

enum Attempt {
    Acquired { previous: Option<String> },
    HeldBy(String),
}

enum Renewal {
    Renewed,
    /// The Lease is still ours but changed under us; renewed at the next period.
    NotYet,
    Lost(String),
}

/// Who holds a Lease, as one candidate sees it.
#[derive(Debug, PartialEq)]
enum Holder {
    Me,
    Other(String),
    /// No Lease, a released one, or one its holder has not renewed for its duration.
    Nobody,
}

/// `unchanged_for`: how long this process has seen the Lease unchanged (its own clock).
fn holder(spec: Option<&LeaseSpec>, identity: &str, unchanged_for: Duration) -> Holder {
    let Some(spec) = spec else {
        return Holder::Nobody;
    };
    match spec.holder_identity.as_deref() {
        None | Some("") => Holder::Nobody,
        Some(h) if h == identity => Holder::Me,
        Some(h) => {
            let duration = spec
                .lease_duration_seconds
                .map_or(LEASE_DURATION, |s| Duration::from_secs(s.max(0) as u64));
            if unchanged_for >= duration {
                Holder::Nobody
            } else {
                Holder::Other(h.to_owned())
            }
        }
    }
}

/// The Lease as `identity` writes it to take or renew it at `now`.
fn held_by(identity: &str, current: Option<&LeaseSpec>, now: Timestamp) -> LeaseSpec {
    let renewing = current.and_then(|c| c.holder_identity.as_deref()) == Some(identity);
    let transitions = current.and_then(|c| c.lease_transitions).unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(identity.to_owned()),
        lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
        acquire_time: if renewing {
            current.and_then(|c| c.acquire_time.clone())
        } else {
            Some(MicroTime(now))
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if renewing || current.is_none() {
            transitions
        } else {
            transitions + 1
        }),
        ..Default::default()
    }
}

/// The Lease as its holder leaves it when it stops: no holder (as client-go writes it, with a
/// duration of one second for tools that only look at expiry).
fn released(current: &LeaseSpec, now: Timestamp) -> LeaseSpec {
    LeaseSpec {
        holder_identity: None,
        lease_duration_seconds: Some(1),
        renew_time: Some(MicroTime(now)),
        ..current.clone()
    }
}

/// Since when this process has seen the Lease in its current version.
#[derive(Default)]
struct Observation {
    resource_version: Option<String>,
    since: Option<Instant>,
}

impl Observation {
    fn unchanged_for(&mut self, lease: &Lease, now: Instant) -> Duration {
        if self.since.is_none() || self.resource_version != lease.metadata.resource_version {
            self.resource_version = lease.metadata.resource_version.clone();
            self.since = Some(now);
        }
        now.saturating_duration_since(self.since.unwrap_or(now))
    }
}

fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    }
}

fn is_conflict(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 409)
}

/// SIGTERM or Ctrl-C, shared by the standby and the controller's graceful shutdown.
pub type Shutdown = futures::future::Shared<futures::future::BoxFuture<'static, ()>>;

/// SIGTERM or Ctrl-C, listened for from this call on: a listener made later (when the
/// controller first runs, once this replica leads) would miss a signal that came in between,
/// and the process would wait for the kubelet's SIGKILL.
pub fn shutdown_signal() -> Shutdown {
    use futures::FutureExt;
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate()).ok();
    let interrupt = signal(SignalKind::interrupt()).ok();
    async move {
        let received = |listener: Option<tokio::signal::unix::Signal>| async move {
            match listener {
                Some(mut listener) => {
                    listener.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = received(term) => {}
            () = received(interrupt) => {}
        }
    }
    .boxed()
    .shared()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).unwrap()
    }

    fn held(holder: &str) -> LeaseSpec {
        held_by(holder, None, at(100))
    }

    #[test]
    fn a_lease_is_free_when_absent_released_or_unrenewed_for_its_duration() {
        assert_eq!(holder(None, "b", Duration::ZERO), Holder::Nobody);
        let released = released(&held("a"), at(101));
        assert_eq!(holder(Some(&released), "b", Duration::ZERO), Holder::Nobody);
        let a = held("a");
        assert_eq!(
            holder(Some(&a), "b", LEASE_DURATION - Duration::from_millis(1)),
            Holder::Other("a".into())
        );
        assert_eq!(holder(Some(&a), "b", LEASE_DURATION), Holder::Nobody);
        // The holder's own Lease is its own, however long ago it renewed (it will now).
        assert_eq!(holder(Some(&a), "a", LEASE_DURATION * 2), Holder::Me);
    }

    #[test]
    fn the_duration_written_in_the_lease_counts_not_ours() {
        let mut long = held("a");
        long.lease_duration_seconds = Some(60);
        assert_eq!(
            holder(Some(&long), "b", Duration::from_secs(30)),
            Holder::Other("a".into())
        );
    }

    #[test]
    fn renewing_keeps_the_acquisition_and_taking_over_counts_a_transition() {
        let first = held_by("a", None, at(100));
        assert_eq!(first.lease_transitions, Some(0));
        assert_eq!(first.acquire_time, Some(MicroTime(at(100))));
        assert_eq!(first.lease_duration_seconds, Some(10));

        let renewed = held_by("a", Some(&first), at(102));
        assert_eq!(renewed.acquire_time, Some(MicroTime(at(100))));
        assert_eq!(renewed.renew_time, Some(MicroTime(at(102))));
        assert_eq!(renewed.lease_transitions, Some(0));

        let taken = held_by("b", Some(&renewed), at(115));
        assert_eq!(taken.holder_identity.as_deref(), Some("b"));
        assert_eq!(taken.acquire_time, Some(MicroTime(at(115))));
        assert_eq!(taken.lease_transitions, Some(1));

        let after_release = held_by("a", Some(&released(&taken, at(120))), at(121));
        assert_eq!(after_release.lease_transitions, Some(2));
    }

    #[test]
    fn expiry_is_measured_from_when_this_process_saw_the_lease_change() {
        let mut seen = Observation::default();
        let lease = |version: &str| Lease {
            metadata: ObjectMeta {
                resource_version: Some(version.into()),
                ..Default::default()
            },
            spec: None,
        };
        let t0 = Instant::now();
        assert_eq!(seen.unchanged_for(&lease("1"), t0), Duration::ZERO);
        assert_eq!(
            seen.unchanged_for(&lease("1"), t0 + Duration::from_secs(4)),
            Duration::from_secs(4)
        );
        // A renewal (a new version) starts the count again, whatever its renewTime says.
        assert_eq!(
            seen.unchanged_for(&lease("2"), t0 + Duration::from_secs(5)),
            Duration::ZERO
        );
        assert_eq!(
            seen.unchanged_for(&lease("2"), t0 + Duration::from_secs(8)),
            Duration::from_secs(3)
        );
    }
}
