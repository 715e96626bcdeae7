//! Each run's page on a cluster, served by the operator through the Kubernetes API server.
//!
//! The page is an aggregated API, `dashboard.abc-operator.dev/v1alpha1`, beside the external
//! metrics API on the same TLS server: `GET /apis/dashboard.abc-operator.dev/v1alpha1/
//! namespaces/NS/dashboards/RUN` (`kubectl abc dashboard RUN` forwards a loopback port to it).
//! Why through the API server:
//! - it authenticates the user as for any request (their kubeconfig, OIDC, tokens), and
//!   forwards only what it authenticated, with the user's name and groups, over a client
//!   certificate the operator checks (the same delegated authentication as the external
//!   metrics API);
//! - the user needs no port-forward rights in the operator's namespace and no Service exposed;
//! - the page answers only a user who may `get` the AbcRun (a SubjectAccessReview, cached
//!   10 s); the API server itself first checks `get dashboards` in the run's namespace, which
//!   the chart grants to the `view` role.
//!
//! What a page view costs: no Redis read. The status comes from the runs watch the controller
//! keeps anyway; the generation records from the run's records ConfigMap, read once per new
//! generation (cached per run by the number of records the status says there are; entries not
//! viewed for [`UNVIEWED_FOR`] are dropped, so memory is bounded by the runs being watched).
//! The rendered page (about a millisecond of CPU) is served again while the run is unchanged
//! (same resourceVersion, same query), for at most [`REUSE_FOR`]: the pages of runs not viewed
//! in that time take no memory. It is kept gzip-compressed ([`super::gzip`]) and served so to
//! whoever accepts gzip (browsers, and the API server's proxy itself).
//!
//! The Service in front of the operator selects the leader, whose watches are current; after a
//! failover the next page view goes to the new leader, which serves it from the same API
//! objects (nothing of a page lives only in one replica's memory).

use super::gzip::GzipTemplate;
use super::page::{self, PageData, PageOptions, Plot};
use crate::api::AbcRun;
use crate::autoscaling::auth::{Authorizer, Caller, RequestHeaderConfig};
use crate::autoscaling::external_metrics::Failure;
use crate::controller::GuardedRun;
use crate::protocol::inference::GenerationRecord;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use k8s_openapi::api::authorization::v1::ResourceAttributes;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use kube::runtime::reflector::{ObjectRef, Store};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// API group and version of the pages.
pub const GROUP: &str = "dashboard.abc-operator.dev";
pub const VERSION: &str = "v1alpha1";
/// The resource a page is, as the API server authorizes it (`get dashboards`).
pub const RESOURCE: &str = "dashboards";
/// How long a run's records stay cached without a page view.
pub const UNVIEWED_FOR: Duration = Duration::from_secs(600);
/// How often a live page reloads.
pub const REFRESH_SECONDS: u32 = 5;
/// The longest a rendered page is served again: its execution chart's line to "now" moves on
/// at least this often while the run's status stays the same.
pub const REUSE_FOR: Duration = Duration::from_secs(30);

/// What serving pages needs: the runs as the controller's watch holds them, and a client to
/// read records ConfigMaps.
#[derive(Clone)]
pub struct Pages {
    runs: Store<GuardedRun>,
    client: kube::Client,
    records: Arc<Mutex<HashMap<String, CachedRecords>>>,
    /// Per run (uid): the last page or CSV rendered.
    rendered: Arc<Mutex<HashMap<String, RenderedFor>>>,
}

/// A rendered response and what it was rendered for.
struct RenderedFor {
    resource_version: Option<String>,
    query: Option<String>,
    rendered: Rendered,
    at: Instant,
}

struct CachedRecords {
    /// The number of records the run's status said there were when they were read.
    generations: i64,
    records: Arc<Vec<GenerationRecord>>,
    viewed: Instant,
}

impl Pages {
    pub fn new(runs: Store<GuardedRun>, client: kube::Client) -> Pages {
        Pages {
            runs,
            client,
            records: Arc::default(),
            rendered: Arc::default(),
        }
    }

    /// What was rendered for this version of the run and this query, if recent enough.
    fn rendered(&self, run: &AbcRun, query: Option<&str>) -> Option<Rendered> {
        let mut rendered = self.rendered.lock().unwrap_or_else(|e| e.into_inner());
        rendered.retain(|_, r| r.at.elapsed() < REUSE_FOR);
        let kept = rendered.get(run.metadata.uid.as_deref()?)?;
        (kept.resource_version == run.metadata.resource_version && kept.query.as_deref() == query)
            .then(|| kept.rendered.clone())
    }

    fn keep_rendered(&self, run: &AbcRun, query: Option<&str>, rendered: &Rendered) {
        let Some(uid) = run.metadata.uid.clone() else {
            return;
        };
        let kept = RenderedFor {
            resource_version: run.metadata.resource_version.clone(),
            query: query.map(str::to_owned),
            rendered: rendered.clone(),
            at: Instant::now(),
        };
        let mut all = self.rendered.lock().unwrap_or_else(|e| e.into_inner());
        all.insert(uid, kept);
    }

    /// The run as the runs watch holds it (shared, not copied: a page served again reads only
    /// its version).
    fn run(&self, namespace: &str, name: &str) -> Option<Arc<GuardedRun>> {
        self.runs.get(&ObjectRef::new(name).within(namespace))
    }

    /// The run's records, read from its ConfigMap only when the status counts other ones than
    /// those cached.
    async fn records(&self, run: &AbcRun) -> Result<Arc<Vec<GenerationRecord>>, kube::Error> {
        let uid = run.metadata.uid.clone().unwrap_or_default();
        let generations = run
            .status
            .as_ref()
            .and_then(|s| s.inference.as_ref())
            .map_or(0, |i| i.generations);
        {
            let mut cache = self.records.lock().unwrap_or_else(|e| e.into_inner());
            cache.retain(|_, c| c.viewed.elapsed() < UNVIEWED_FOR);
            if let Some(cached) = cache.get_mut(&uid)
                && cached.generations == generations
            {
                cached.viewed = Instant::now();
                return Ok(cached.records.clone());
            }
        }
        let records = if generations == 0 {
            Vec::new()
        } else {
            let namespace = run.metadata.namespace.as_deref().unwrap_or_default();
            let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
            let name = crate::resources::records_config_map_name(run);
            let data = api
                .get_opt(&name)
                .await?
                .and_then(|cm| cm.data)
                .unwrap_or_default();
            // keys sort by generation (`gen-00007.json`)
            data.values()
                .filter_map(|text| GenerationRecord::parse(text.as_bytes()).ok())
                .collect()
        };
        let records = Arc::new(records);
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                uid,
                CachedRecords {
                    generations,
                    records: records.clone(),
                    viewed: Instant::now(),
                },
            );
        Ok(records)
    }
}

/// The pages' routes, for the aggregated API server.
pub fn routes(
    pages: Pages,
    requestheader: Arc<RequestHeaderConfig>,
    authorizer: Arc<Authorizer>,
) -> Router {
    let base = format!("/apis/{GROUP}/{VERSION}");
    Router::new()
        .route(&base, get(discovery))
        .route(
            &format!("{base}/namespaces/{{namespace}}/{RESOURCE}/{{name}}"),
            get(serve_page),
        )
        .with_state(Served {
            pages,
            requestheader,
            authorizer,
        })
}

#[derive(Clone)]
struct Served {
    pages: Pages,
    requestheader: Arc<RequestHeaderConfig>,
    authorizer: Arc<Authorizer>,
}

/// What the API server's discovery asks of an aggregated API.
async fn discovery(Extension(caller): Extension<Caller>) -> Response {
    if caller != Caller::AggregationLayer {
        return failure(&unauthenticated());
    }
    Json(serde_json::json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": format!("{GROUP}/{VERSION}"),
        "resources": [{
            "name": RESOURCE,
            "singularName": "dashboard",
            "namespaced": true,
            "kind": "Dashboard",
            "verbs": ["get"],
        }],
    }))
    .into_response()
}

/// The query of a page: `csv=generations|posterior`, `parameter=NAME` (repeated).
#[derive(serde::Deserialize, Default)]
pub struct PageQuery {
    pub csv: Option<String>,
    #[serde(default)]
    pub parameter: Vec<String>,
}

async fn serve_page(
    State(served): State<Served>,
    Extension(caller): Extension<Caller>,
    Path((namespace, name)): Path<(String, String)>,
    query: axum::extract::RawQuery,
    headers: HeaderMap,
) -> Response {
    let user = match (caller, served.requestheader.user(&headers)) {
        (Caller::AggregationLayer, Some(user)) => user,
        _ => return failure(&unauthenticated()),
    };
    let may_get = ResourceAttributes {
        group: Some(crate::api::GROUP.into()),
        resource: Some("abcruns".into()),
        verb: Some("get".into()),
        namespace: Some(namespace.clone()),
        name: Some(name.clone()),
        ..ResourceAttributes::default()
    };
    match served.authorizer.may(&user, may_get).await {
        Ok(true) => {}
        Ok(false) => {
            return failure(&Failure::new(
                403,
                "Forbidden",
                format!(
                    "{} cannot get abcruns.{} {name:?} in namespace {namespace:?}: the page of \
                     a run is for whoever may read the run",
                    user.name,
                    crate::api::GROUP
                ),
            ));
        }
        Err(problem) => return failure(&Failure::new(500, "InternalError", problem)),
    }
    let raw_query = query.0;
    let query = parse_query(raw_query.as_deref());
    let guarded = served.pages.run(&namespace, &name);
    let Some(run) = guarded.as_deref().and_then(|g| g.0.as_ref().ok()) else {
        let data = PageData {
            namespace: Some(namespace),
            name,
            status: Default::default(),
            records: Vec::new(),
            gone: true,
            now: k8s_openapi::jiff::Timestamp::now(),
        };
        return (
            StatusCode::NOT_FOUND,
            html(page::page(&data, &PageOptions::default())),
        )
            .into_response();
    };
    let now = k8s_openapi::jiff::Timestamp::now();
    let gzip = super::gzip::accepts_gzip(
        headers
            .get(header::ACCEPT_ENCODING)
            .and_then(|v| v.to_str().ok()),
    );
    if let Some(rendered) = served.pages.rendered(run, raw_query.as_deref()) {
        return rendered.response(now, gzip);
    }
    let records = match served.pages.records(run).await {
        Ok(records) => records,
        Err(err) => {
            return failure(&Failure::new(
                503,
                "ServiceUnavailable",
                format!("reading the run's generation records: {err}"),
            ));
        }
    };
    let data = PageData {
        namespace: Some(namespace),
        name,
        status: run.status.clone().unwrap_or_default(),
        records: records.as_ref().clone(),
        gone: false,
        now,
    };
    let rendered = render(&data, &query).compressed();
    served
        .pages
        .keep_rendered(run, raw_query.as_deref(), &rendered);
    rendered.response(now, gzip)
}

/// A page or CSV file as rendered: a page still without the time it is served at.
#[derive(Clone)]
pub struct Rendered {
    status: StatusCode,
    body: Body,
}

#[derive(Clone)]
enum Body {
    Page(page::Template),
    Gzipped(GzipTemplate),
    Csv { file: String, text: Bytes },
    Problem(String),
}

impl Rendered {
    /// The same, its page compressed to be kept (see [`GzipTemplate`]).
    pub fn compressed(self) -> Rendered {
        match self.body {
            Body::Page(template) => Rendered {
                status: self.status,
                body: Body::Gzipped(GzipTemplate::of(&template)),
            },
            _ => self,
        }
    }

    /// The response, served at `now` to a client that accepts `gzip` or not.
    pub fn response(&self, now: k8s_openapi::jiff::Timestamp, gzip: bool) -> Response {
        let Rendered { status, body } = self;
        let vary = [(header::VARY, "accept-encoding")];
        match body {
            Body::Page(template) => (*status, html(template.fill(now))).into_response(),
            Body::Gzipped(template) if gzip => (
                *status,
                [(header::CONTENT_ENCODING, "gzip")],
                vary,
                html(template.gzip(now)),
            )
                .into_response(),
            Body::Gzipped(template) => (*status, vary, html(template.fill(now))).into_response(),
            Body::Csv { file, text } => (
                *status,
                [
                    (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
                    (
                        header::CONTENT_DISPOSITION,
                        format!("attachment; filename=\"{file}\""),
                    ),
                ],
                text.clone(),
            )
                .into_response(),
            Body::Problem(text) => (*status, text.clone()).into_response(),
        }
    }
}

/// The page or one of its CSV files, for `query`, served at `data.now`.
pub fn respond(data: &PageData, query: &PageQuery) -> Response {
    render(data, query).response(data.now, false)
}

/// The page or one of its CSV files, for `query`.
pub fn render(data: &PageData, query: &PageQuery) -> Rendered {
    let finished = data
        .status
        .phase
        .is_some_and(crate::api::Phase::is_finished);
    let body = match query.csv.as_deref() {
        Some(which) => {
            let plot = match which {
                "generations" => Plot::Generations,
                "posterior" => Plot::Posterior,
                other => {
                    return Rendered {
                        status: StatusCode::BAD_REQUEST,
                        body: Body::Problem(format!(
                            "no CSV {other:?}: csv=generations or csv=posterior"
                        )),
                    };
                }
            };
            Body::Csv {
                file: format!("{}-{which}.csv", data.name),
                text: page::csv(data, plot).into(),
            }
        }
        None => {
            let options = PageOptions {
                parameters: query.parameter.clone(),
                refresh_seconds: (!finished && !data.gone).then_some(REFRESH_SECONDS),
            };
            Body::Page(page::template(data, &options))
        }
    };
    Rendered {
        status: StatusCode::OK,
        body,
    }
}

/// `csv=…&parameter=a&parameter=b`, repeated keys kept (axum's Query keeps only one).
pub fn parse_query(raw: Option<&str>) -> PageQuery {
    let mut query = PageQuery::default();
    for pair in raw.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value);
        match key {
            "csv" => query.csv = Some(value),
            "parameter" => query.parameter.push(value),
            _ => {}
        }
    }
    query
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn html(body: impl IntoResponse) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // the page needs nothing from elsewhere: no script, no style or image from another
            // origin (a parameter name that slipped through escaping could load nothing)
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'",
            ),
        ],
        body,
    )
}

fn unauthenticated() -> Failure {
    Failure::new(
        401,
        "Unauthorized",
        "this page is served through the Kubernetes API server: `kubectl abc dashboard RUN`",
    )
}

fn failure(failure: &Failure) -> Response {
    let code = StatusCode::from_u16(failure.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, Json(failure.to_status())).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_keeps_every_selected_parameter_and_decodes_them() {
        let q = parse_query(Some("parameter=mu&parameter=log%20sigma&csv=posterior&x=1"));
        assert_eq!(q.parameter, ["mu", "log sigma"]);
        assert_eq!(q.csv.as_deref(), Some("posterior"));
        assert_eq!(parse_query(Some("parameter=a%2")).parameter, ["a%2"]);
        assert!(parse_query(None).parameter.is_empty());
    }
}
