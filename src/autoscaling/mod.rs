//! Autoscaling on ABC demand: each run's demand (evaluations still needed, analysis active),
//! served to an HPA through the Kubernetes external metrics API (TLS, behind the API server's
//! aggregation layer) and to KEDA's metrics-api scaler as JSON on the metrics port.

pub mod auth;
pub mod demand;
pub mod external_metrics;
pub mod tls;

pub use demand::{Demand, DemandBoard, DemandError};

use auth::{Authorizer, Caller, RequestHeaderConfig};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use external_metrics::Failure;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Options of the external metrics API (`abc-operator controller`).
#[derive(clap::Args, Debug, Clone)]
pub struct ExternalMetricsArgs {
    /// Serve the external metrics API (HTTPS) on this address; off when not given.
    #[arg(long, env = "ABC_EXTERNAL_METRICS_ADDR")]
    pub external_metrics_addr: Option<SocketAddr>,
    /// Serving certificate (PEM); without it, one is generated at start.
    #[arg(long, env = "ABC_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// Key of the serving certificate (PEM).
    #[arg(long, env = "ABC_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
    /// DNS names of the generated certificate: the Service in front of the operator,
    /// `NAME.NAMESPACE.svc` (repeat for more).
    #[arg(
        long = "tls-dns-name",
        env = "ABC_TLS_DNS_NAMES",
        value_delimiter = ','
    )]
    pub tls_dns_names: Vec<String>,
    /// APIService whose caBundle is set to the generated certificate's CA.
    #[arg(long, env = "ABC_APISERVICE")]
    pub apiservice: Option<String>,
    /// The runs' pages' APIService (`dashboard.abc-operator.dev`), served on the same address;
    /// its caBundle is set like `--apiservice`'s.
    #[arg(long, env = "ABC_DASHBOARD_APISERVICE")]
    pub dashboard_apiservice: Option<String>,
}

/// Why the external metrics API cannot be served; each names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum AutoscalingError {
    #[error("the aggregation layer's client settings: {0}")]
    RequestHeader(String),
    #[error("serving certificate: {0}")]
    Certificate(String),
    #[error("{0}")]
    ApiService(String),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Serves the external metrics API until the process ends. Setup problems (no aggregation
/// layer, a missing APIService) are logged and retried: the controller keeps running.
pub async fn serve_external_metrics(
    client: kube::Client,
    args: ExternalMetricsArgs,
    board: Arc<DemandBoard>,
    pages: crate::dashboard::server::Pages,
) {
    let Some(addr) = args.external_metrics_addr else {
        return std::future::pending().await;
    };
    loop {
        match serve_once(&client, &args, addr, board.clone(), pages.clone()).await {
            Ok(()) => return,
            Err(err) => {
                tracing::error!(error = %err, %addr, "cannot serve the external metrics API; retrying in 30 s");
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
        }
    }
}

async fn serve_once(
    client: &kube::Client,
    args: &ExternalMetricsArgs,
    addr: SocketAddr,
    board: Arc<DemandBoard>,
    pages: crate::dashboard::server::Pages,
) -> Result<(), AutoscalingError> {
    let requestheader = Arc::new(RequestHeaderConfig::load(client).await?);
    let cert = match (&args.tls_cert_file, &args.tls_key_file) {
        (Some(cert), Some(key)) => tls::ServingCert::from_files(cert, key)?,
        _ => tls::ServingCert::generate(&args.tls_dns_names)?,
    };
    if let Some(ca) = &cert.generated_ca_pem {
        for apiservice in [&args.apiservice, &args.dashboard_apiservice]
            .into_iter()
            .flatten()
        {
            tls::publish_ca_bundle(client, apiservice, ca).await?;
            tracing::info!(
                apiservice,
                "set the APIService caBundle to the generated CA"
            );
        }
    }
    let config = server_config(cert, &requestheader)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| AutoscalingError::Listen { addr, source })?;
    tracing::info!(%addr, "serving the external metrics API (external.metrics.k8s.io/v1beta1)");
    let authorizer = Arc::new(Authorizer::new(client.clone()));
    let api = ExternalMetricsApi {
        board,
        requestheader: requestheader.clone(),
        authorizer: authorizer.clone(),
    };
    let pages = crate::dashboard::server::routes(pages, requestheader.clone(), authorizer);
    let router = external_metrics_router(api).merge(pages);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!(error = %err, "accepting a connection failed");
                continue;
            }
        };
        let (acceptor, router, requestheader) =
            (acceptor.clone(), router.clone(), requestheader.clone());
        tokio::spawn(async move {
            let stream = match acceptor.accept(tcp).await {
                Ok(stream) => stream,
                Err(err) => {
                    tracing::debug!(%peer, error = %err, "TLS handshake failed");
                    return;
                }
            };
            let caller = match stream.get_ref().1.peer_certificates() {
                Some([cert, ..]) if requestheader.is_proxy(cert) => Caller::AggregationLayer,
                _ => Caller::Unauthenticated,
            };
            let service =
                hyper_util::service::TowerToHyperService::new(router.layer(Extension(caller)));
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(err) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await
            {
                tracing::debug!(%peer, error = %err, "external metrics connection ended");
            }
        });
    }
}

/// TLS that asks for (but does not require) a client certificate from the aggregation
/// layer's CA; requests without one get a clear 401 instead of a failed handshake.
fn server_config(
    cert: tls::ServingCert,
    requestheader: &RequestHeaderConfig,
) -> Result<rustls::ServerConfig, AutoscalingError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in &requestheader.client_ca {
        roots.add(ca.clone())?;
    }
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(|e| AutoscalingError::RequestHeader(format!("client CA: {e}")))?;
    Ok(rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(cert.chain, cert.key)?)
}

#[derive(Clone)]
struct ExternalMetricsApi {
    board: Arc<DemandBoard>,
    requestheader: Arc<RequestHeaderConfig>,
    authorizer: Arc<Authorizer>,
}

fn external_metrics_router(api: ExternalMetricsApi) -> Router {
    let base = format!(
        "/apis/{}/{}",
        external_metrics::GROUP,
        external_metrics::VERSION
    );
    Router::new()
        .route(&base, get(discovery))
        .route(
            &format!("{base}/namespaces/{{namespace}}/{{metric}}"),
            get(values),
        )
        .fallback(|| async {
            status_response(&Failure::new(404, "NotFound", "not served by abc-operator"))
        })
        .with_state(api)
}

fn status_code(failure: &Failure) -> StatusCode {
    StatusCode::from_u16(failure.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn status_response(failure: &Failure) -> Response {
    (status_code(failure), Json(failure.to_status())).into_response()
}

fn unauthenticated() -> Failure {
    Failure::new(
        401,
        "Unauthorized",
        "this API is served through the Kubernetes API server: `kubectl get --raw /apis/external.metrics.k8s.io/v1beta1/namespaces/NS/abcrun_evaluations_needed?labelSelector=abcrun%3DNAME`",
    )
}

async fn discovery(Extension(caller): Extension<Caller>) -> Response {
    if caller != Caller::AggregationLayer {
        return status_response(&unauthenticated());
    }
    Json(external_metrics::resource_list()).into_response()
}

#[derive(serde::Deserialize)]
struct ValuesQuery {
    #[serde(rename = "labelSelector")]
    label_selector: Option<String>,
}

async fn values(
    State(api): State<ExternalMetricsApi>,
    Extension(caller): Extension<Caller>,
    Path((namespace, metric)): Path<(String, String)>,
    Query(query): Query<ValuesQuery>,
    headers: HeaderMap,
) -> Response {
    let user = match (caller, api.requestheader.user(&headers)) {
        (Caller::AggregationLayer, Some(user)) => user,
        _ => return status_response(&unauthenticated()),
    };
    match api.authorizer.may_read(&user, &namespace, &metric).await {
        Ok(true) => {}
        Ok(false) => {
            return status_response(&Failure::new(
                403,
                "Forbidden",
                format!(
                    "{} cannot list {metric} in {}/{} in namespace {namespace:?}",
                    user.name,
                    external_metrics::GROUP,
                    external_metrics::VERSION
                ),
            ));
        }
        Err(problem) => return status_response(&Failure::new(500, "InternalError", problem)),
    }
    let answer = external_metrics::metric_values(
        &api.board,
        &namespace,
        &metric,
        query.label_selector.as_deref(),
        k8s_openapi::jiff::Timestamp::now(),
    );
    match answer {
        Ok(list) => Json(list).into_response(),
        Err(failure) => {
            tracing::debug!(
                namespace,
                metric,
                error = failure.message,
                "external metric request failed"
            );
            status_response(&failure)
        }
    }
}

/// KEDA's metrics-api scaler endpoint on the (plain HTTP) metrics port:
/// `GET /demand/{namespace}/{run}` → `{"evaluationsNeeded": N, "active": true, ...}`.
pub fn demand_routes(board: Arc<DemandBoard>) -> Router {
    Router::new()
        .route("/demand/{namespace}/{run}", get(demand_json))
        .with_state(board)
}

async fn demand_json(
    State(board): State<Arc<DemandBoard>>,
    Path((namespace, run)): Path<(String, String)>,
) -> Response {
    match board.get(&namespace, &run) {
        Ok(demand) => Json(demand).into_response(),
        Err(err) => {
            let failure = Failure::from(err);
            let body = Json(serde_json::json!({"error": failure.message}));
            (status_code(&failure), body).into_response()
        }
    }
}
