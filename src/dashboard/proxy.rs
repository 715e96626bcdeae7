//! `kubectl abc dashboard RUN`: the run's page on a loopback port of the user's machine,
//! fetched through the Kubernetes API server with the user's own credentials (see `server`):
//! whoever may `get` the run sees its page, nobody else, and nothing but the API server is
//! reached.

use super::server::{GROUP, RESOURCE, VERSION};
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{Response, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use std::net::SocketAddr;

/// The API server path of a run's page.
pub fn page_path(namespace: &str, name: &str) -> String {
    format!("/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{RESOURCE}/{name}")
}

#[derive(Clone)]
struct Upstream {
    client: kube::Client,
    path: String,
}

/// Serves the page of `namespace/name` on `addr` (loopback) until the process ends; calls
/// `ready` with the bound address once it listens.
pub async fn serve(
    client: kube::Client,
    namespace: &str,
    name: &str,
    addr: SocketAddr,
    ready: impl FnOnce(SocketAddr),
) -> std::io::Result<()> {
    let upstream = Upstream {
        client,
        path: page_path(namespace, name),
    };
    let router = axum::Router::new()
        .route("/", get(forward))
        .with_state(upstream);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    ready(listener.local_addr()?);
    axum::serve(listener, router).await
}

async fn forward(State(up): State<Upstream>, RawQuery(query): RawQuery) -> impl IntoResponse {
    let uri = match query {
        Some(q) => format!("{}?{q}", up.path),
        None => up.path.clone(),
    };
    let request = match axum::http::Request::get(&uri).body(Vec::new()) {
        Ok(request) => request,
        Err(err) => return plain(StatusCode::BAD_REQUEST, err.to_string()),
    };
    let response = match up.client.send(request.map(kube::client::Body::from)).await {
        Ok(response) => response,
        Err(err) => {
            return plain(
                StatusCode::BAD_GATEWAY,
                format!("the Kubernetes API server did not answer: {err}"),
            );
        }
    };
    let status = response.status();
    let headers = response.headers().clone();
    let body = match response.into_body().collect_bytes().await {
        Ok(body) => body,
        Err(err) => return plain(StatusCode::BAD_GATEWAY, err.to_string()),
    };
    if status == StatusCode::FORBIDDEN || status == StatusCode::SERVICE_UNAVAILABLE {
        // The API server's own refusal (RBAC, or the operator not serving the page) is JSON;
        // say it plainly.
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        return plain(status, message);
    }
    let mut out = Response::builder().status(status);
    for name in [
        header::CONTENT_TYPE,
        header::CONTENT_DISPOSITION,
        header::CONTENT_SECURITY_POLICY,
    ] {
        if let Some(value) = headers.get(&name) {
            out = out.header(name, value);
        }
    }
    out.body(Body::from(body))
        .unwrap_or_else(|err| plain(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()))
}

fn plain(status: StatusCode, text: String) -> Response<Body> {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}
