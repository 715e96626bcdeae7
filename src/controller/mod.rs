//! The Kubernetes controller for AbcRuns: watches runs and what they own, reconciles them
//! level-triggered, and serves metrics and health.

mod apply;
mod cache;
mod context;
mod decide;
mod events;
pub mod follow_up;
mod guard;
mod leader;
mod memory;
pub mod observe;
mod owned;
mod pod_index;
mod pod_problems;
mod progress_poller;
mod reconcile;
pub mod records;
mod redis_access;
pub mod status;
#[cfg(test)]
mod test_support;
mod workers;

pub use guard::{GuardedRun, UNREADABLE_REASON, UnreadableRun};
pub use observe::master_state;

use context::{Context, Error};
use redis_access::RedisAccess;

use crate::autoscaling::DemandBoard;
use crate::metrics::{ErrorLabels, Metrics};
use futures::StreamExt;
use futures::TryStreamExt;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::Reporter;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, Resource, ResourceExt};
use std::sync::Arc;
use std::time::Duration;

/// Options of `abc-operator controller`.
#[derive(clap::Args, Debug)]
pub struct ControllerArgs {
    /// Address of the metrics, health and readiness endpoints.
    #[arg(long, default_value = "0.0.0.0:8080", env = "ABC_METRICS_ADDR")]
    pub metrics_addr: std::net::SocketAddr,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "ABC_WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "ABC_LOG_JSON")]
    pub log_json: bool,
    /// Image of a managed Redis whose run sets no `spec.redis.managed.image` (e.g. a copy in
    /// an air-gapped cluster's own registry).
    #[arg(long, env = "ABC_REDIS_IMAGE", default_value = crate::resources::DEFAULT_REDIS_IMAGE)]
    pub redis_image: String,
    /// Shortest time between two status writes of a run whose only change is its progress
    /// counters (acceptances, evaluations, busy workers); phase, generation, conditions and
    /// repairs are written at once. The live figures are in the metrics meanwhile.
    #[arg(long, env = "ABC_STATUS_PROGRESS_SECONDS", default_value_t = 10)]
    pub status_progress_seconds: u64,
    /// How often the Redis of a run without an analysis in it is read. A master's start is
    /// heard at once all the same (Redis 6 or later); this bounds how late workers coming and
    /// going show in the status of such a run. A Redis older than 6 is read every 5 s.
    #[arg(long, env = "ABC_IDLE_READ_SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_read_seconds: u64,
    #[command(flatten)]
    pub external_metrics: crate::autoscaling::ExternalMetricsArgs,
    #[command(flatten)]
    pub leader: leader::LeaderArgs,
}

/// Reconciles running at once. kube's default is unbounded: a controller starting with 1,000
/// runs then sends thousands of applies at the same moment, the API server queues them (API
/// Priority and Fairness) with the leader's Lease renewals among them, and the leader, not
/// renewing in time, stops (measured: three exits in two minutes at 1,000 runs). Bounded, the
/// burst drains at the API server's pace and a renewal waits behind a few dozen requests at
/// most. Not lower: a reconcile whose Redis does not answer holds its slot for the 3 s timeout.
const RECONCILE_CONCURRENCY: u16 = 32;

/// Runs the controller until SIGTERM or Ctrl-C.
pub async fn run(args: ControllerArgs) -> anyhow::Result<()> {
    init_tracing(args.log_json);
    // listened for from the start, through standing by, leading and the controller's shutdown
    let shutdown = leader::shutdown_signal();
    let metrics = Arc::new(Metrics::default());
    let client = counted_client(metrics.clone()).await.map_err(|e| {
        anyhow::anyhow!("cannot reach the Kubernetes API (in cluster, or through KUBECONFIG): {e}")
    })?;
    // An AbcRun that does not deserialize is reported and skipped, not a failed watch.
    let runs: Api<GuardedRun> = api(&client, args.namespace.as_deref());

    let demand = Arc::new(DemandBoard::default());
    let ns = args.namespace.as_deref();
    let (caches, owned_streams, pods) = cache::Caches::new(&client, ns);
    let reporter = Reporter {
        controller: "abc-operator".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let (wake, woken) = futures::channel::mpsc::unbounded();
    let (runs_store, runs_writer) = reflector::store();
    let pages = crate::dashboard::server::Pages::new(runs_store.clone(), client.clone());
    let redis = Arc::new(RedisAccess::default());
    let ctx = Arc::new(Context {
        client: client.clone(),
        events: events::EventPublisher::new(client.clone(), reporter),
        metrics: metrics.clone(),
        demand: demand.clone(),
        build_settings: crate::resources::BuildSettings {
            default_redis_image: args.redis_image.clone(),
        },
        runs: runs_store.clone(),
        caches,
        memory: Default::default(),
        progress_interval: Duration::from_secs(args.status_progress_seconds),
        redis: redis.clone(),
        pollers: progress_poller::Pollers::new(
            wake,
            runs_store.clone(),
            redis,
            Duration::from_secs(args.idle_read_seconds),
        ),
    });
    // The runs' own watch, as Controller::new would make it, but storing runs without their
    // managed fields (kilobytes per run that nothing reads), and forgetting what is kept of a
    // run when it is deleted (a plain `kubectl delete` deletes in the background: the run is
    // gone at once, never seen with a deletion timestamp) or found gone after a relist.
    let forgetting = ctx.clone();
    let runs_watch = watcher::watcher(
        runs,
        watcher::Config::default()
            .any_semantic()
            .page_size(cache::LIST_PAGE_SIZE),
    )
    .modify(|run: &mut GuardedRun| run.meta_mut().managed_fields = None)
    .reflect(runs_writer)
    .inspect_ok(move |event| match event {
        watcher::Event::Delete(run) => forgetting.forget(&run.uid().unwrap_or_default()),
        watcher::Event::InitDone => forgetting.forget_gone_runs(),
        _ => {}
    })
    .applied_objects();
    // The watches that fill the caches also trigger reconciles: a change of an owned object
    // (e.g. a Deployment's ready replicas), or of any pod of a run (workers, master, Redis:
    // their statuses are the run's status, and a gone worker pod is a lost worker).
    let controller = owned_streams
        .owned_by(
            Controller::for_stream(runs_watch, runs_store.clone()).with_config(
                kube::runtime::controller::Config::default().concurrency(RECONCILE_CONCURRENCY),
            ),
        )
        // The pods belong to a ReplicaSet or a Job, not to the run: map them by label.
        .watches_stream(pods, |pod: pod_index::WatchedPod| {
            Some(ObjectRef::<GuardedRun>::new(pod.run.as_ref()?).within(&pod.namespace()?))
        })
        // A live run's poller wakes it when its Redis changed.
        .reconcile_on(woken)
        .graceful_shutdown_on(shutdown.clone());

    // Ready once the AbcRun watch has listed every run (not when the process starts): until
    // then /readyz says what it waits for, e.g. a CRD that is not installed.
    let ready_metrics = metrics.clone();
    tokio::spawn(async move {
        // The store's readiness wakes only its latest waiter (the controller's own runner, in
        // kube 5), so this one asks again every second instead of waiting to be woken.
        loop {
            match tokio::time::timeout(Duration::from_secs(1), runs_store.wait_until_ready()).await
            {
                Ok(Ok(())) => break,
                Ok(Err(_)) => return,
                Err(_) => continue,
            }
        }
        ready_metrics.set_ready();
        tracing::info!("AbcRun watch synced: ready");
    });
    let watch_metrics = metrics.clone();
    let controller = controller
        .run(reconcile_guarded, error_policy, ctx)
        .for_each(move |result| {
            match result {
                Err(kube::runtime::controller::Error::QueueError(err)) => {
                    tracing::warn!(error = %err, "a watch failed; it is retried");
                    watch_metrics.set_waiting(watch_failure(&err));
                }
                Err(err) => tracing::debug!(error = %err, "reconcile ended with an error"),
                Ok(_) => {}
            }
            futures::future::ready(())
        });

    tracing::info!("abc-operator controller started");
    let server = crate::metrics::serve(
        args.metrics_addr,
        metrics.clone(),
        crate::autoscaling::demand_routes(demand.clone()),
    );
    let elector = leader::Elector::new(&client, &args.leader, ns);
    // Only the leader serves the external metrics API: its demand board is the one fed.
    let external_metrics =
        crate::autoscaling::serve_external_metrics(client, args.external_metrics, demand, pages);
    let leading = async {
        tokio::select! {
            _ = controller => tracing::info!("controller stopped"),
            () = external_metrics => {}
        }
    };
    tokio::select! {
        result = leader::lead(elector, &metrics, shutdown, leading) => result?,
        result = server => result.map_err(|e| anyhow::anyhow!("metrics endpoint on {}: {e}", args.metrics_addr))?,
    }
    Ok(())
}

/// The default client, counting every request it sends in the metrics: the controller's cost
/// to the API server, which `make bench` and the steady-state test read.
async fn counted_client(metrics: Arc<Metrics>) -> Result<Client, kube::Error> {
    let config = kube::Config::infer()
        .await
        .map_err(kube::Error::InferConfig)?;
    let count =
        tower::util::MapRequestLayer::new(move |request: hyper::Request<kube::client::Body>| {
            metrics.count_api_request(
                request.method().as_str(),
                request.uri().path(),
                request.uri().query(),
            );
            request
        });
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&count)
        .build())
}

/// An Api over all namespaces, or one when the controller is limited to it.
fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Why the controller is not ready after a failed watch, with what to do about it.
fn watch_failure(err: &watcher::Error) -> String {
    let code = match err {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => Some(status.code),
        watcher::Error::WatchError(status) => Some(status.code),
        _ => None,
    };
    let hint = match code {
        Some(404) => {
            "; is the AbcRun CRD installed? (`kubectl apply -f crds/abcrun.yaml`, or the chart)"
        }
        Some(401 | 403) => {
            "; the operator may not list and watch it: check its ServiceAccount's RBAC (the chart's ClusterRole)"
        }
        _ => "",
    };
    format!("a watch failed: {err}{hint}")
}

/// Reconciles a run that deserializes; reports one that does not on the object and skips it
/// until it changes.
async fn reconcile_guarded(run: Arc<GuardedRun>, ctx: Arc<Context>) -> Result<Action, Error> {
    match &run.0 {
        Ok(readable) => {
            let result = reconcile::reconcile(Arc::new(readable.clone()), ctx.clone()).await;
            // Deleted while this reconcile ran, after its delete event was handled: what the
            // reconcile kept of the run is forgotten now.
            if !ctx.still_there(&run) {
                ctx.forget(&run.uid().unwrap_or_default());
            }
            result
        }
        Err(unreadable) => {
            tracing::warn!(run = %run.name_any(), namespace = ?run.namespace(), field = %unreadable.field, error = %unreadable.error, "skipping an AbcRun that cannot be read");
            ctx.metrics
                .reconcile_errors
                .get_or_create(&ErrorLabels {
                    error: "unreadable".into(),
                })
                .inc();
            ctx.publish(
                run.as_ref(),
                follow_up::unreadable_notice(unreadable.note()),
            )
            .await;
            Ok(Action::await_change())
        }
    }
}

fn error_policy(run: Arc<GuardedRun>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconcile_errors
        .get_or_create(&ErrorLabels {
            error: err.metric_label().into(),
        })
        .inc();
    tracing::warn!(run = %run.name_any(), namespace = ?run.namespace(), error = %err, "reconcile failed");
    let about = match err {
        Error::Apply { kind, name, .. } => Some((kind.as_str(), name.as_str())),
        _ => None,
    };
    let notice = follow_up::reconcile_error_notice(run.namespace(), err.to_string(), about);
    tokio::spawn(async move { ctx.publish(run.as_ref(), notice).await });
    Action::requeue(Duration::from_secs(10))
}

fn init_tracing(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,kube=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(crate::logging::colour_on_stderr())
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list_failed(code: u16) -> watcher::Error {
        watcher::Error::InitialListFailed(kube::Error::Api(
            kube::core::Status::failure("the server said no", "Reason")
                .with_code(code)
                .boxed(),
        ))
    }

    #[test]
    fn a_failed_watch_says_what_to_check() {
        let missing_crd = watch_failure(&list_failed(404));
        assert!(
            missing_crd.contains("the server said no")
                && missing_crd.contains("is the AbcRun CRD installed?"),
            "{missing_crd}"
        );
        assert!(watch_failure(&list_failed(403)).contains("RBAC"));
        let other = watch_failure(&list_failed(500));
        assert!(!other.contains("CRD") && !other.contains("RBAC"), "{other}");
    }
}
