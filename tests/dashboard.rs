//! Each run's page through the API server's aggregation layer, as `kubectl abc dashboard`
//! fetches it: real API server (authentication, RBAC, the aggregation proxy), real controller
//! process serving `dashboard.abc-operator.dev`, loopback redis-server holding the records a
//! master writes. Whoever may `get` the run sees its page, and a generation stored after a
//! view on its next view; a user who may only reach the aggregated API is refused by the
//! operator; a deleted run's page says so.
//!
//! The APIService `v1alpha1.dashboard.abc-operator.dev` is cluster-wide, so this binary holds
//! the only test that registers it, and removes it at the end.

mod support;

use kube::api::DeleteParams;
use support::aggregation::Registration;
use support::cluster::{eventually, kubectl, output_with_stdin};
use support::controller::{ControllerProcess, free_port};
use support::run::setup;

const APISERVICE: &str = "v1alpha1.dashboard.abc-operator.dev";

/// `kubectl get --raw PATH` as `user` (impersonated; none: the admin): Ok(body) or Err(stderr).
fn raw_as(user: Option<&str>, path: &str) -> Result<String, String> {
    let mut cmd = kubectl();
    cmd.args(["get", "--raw", path]);
    if let Some(user) = user {
        cmd.args(["--as", user]);
    }
    let out = cmd.output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// GET `path` through the API server with `Accept-Encoding: accept`: the response's
/// `Content-Encoding` and its body as received.
async fn fetch(client: &kube::Client, path: &str, accept: &str) -> (Option<String>, Vec<u8>) {
    let request = axum::http::Request::get(path)
        .header(axum::http::header::ACCEPT_ENCODING, accept)
        .body(Vec::new())
        .unwrap();
    let response = client
        .send(request.map(kube::client::Body::from))
        .await
        .unwrap();
    assert_eq!(response.status(), axum::http::StatusCode::OK);
    let encoding = response
        .headers()
        .get(axum::http::header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap().to_string());
    let body = response.into_body().collect_bytes().await.unwrap();
    (encoding, body.to_vec())
}

/// A Role in `namespace` granting `rules` (YAML list) to `user`.
fn grant(namespace: &str, user: &str, rules: &str) {
    let manifest = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: {user}, namespace: {namespace}}}\n\
         rules: {rules}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\n\
         metadata: {{name: {user}, namespace: {namespace}}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: {user}}}\n\
         subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: {user}}}]\n"
    );
    let mut apply = kubectl();
    apply.args(["apply", "-f", "-"]);
    let out = output_with_stdin(apply, &manifest);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_runs_page_is_for_whoever_may_get_the_run() {
    let s = setup("dash", 0, "10m", "0").await;
    let ns = s.ns.name.clone();
    let port = free_port();
    let _controller = ControllerProcess::start_with(
        &ns,
        &[
            "--external-metrics-addr",
            &format!("127.0.0.1:{port}"),
            "--tls-dns-name",
            &format!("abc-operator.{ns}.svc"),
            "--dashboard-apiservice",
            APISERVICE,
        ],
    );
    let registration = Registration::new(
        &s.client,
        &ns,
        port,
        ("dashboard.abc-operator.dev", "v1alpha1", 1000, 15),
    )
    .await;
    registration.available().await;
    let page = format!("/apis/dashboard.abc-operator.dev/v1alpha1/namespaces/{ns}/dashboards/sim");

    let html = eventually(60, "the run's page", || async { raw_as(None, &page).ok() }).await;
    assert!(html.contains("sim"), "the page names its run: {html}");
    assert!(html.contains("id=\"no-records\""), "{html}");

    // A generation the master stores shows on the page viewed before it: a page rendered once
    // is served again only while the run is unchanged (within 25 s: a page kept regardless
    // would be kept for 30).
    let mut conn = support::redis::connect(&s.redis).await;
    support::redis::push_records(&mut conn, vec![support::redis::record(0, 0.25)]).await;
    let html = eventually(25, "the stored generation on the page", || async {
        raw_as(None, &page)
            .ok()
            .filter(|html| !html.contains("id=\"no-records\""))
    })
    .await;
    assert!(html.contains("data-generation=\"0\""), "{html}");

    // A browser accepts gzip and gets the page compressed; a client that does not gets it as
    // text. Both read the same page.
    let compressed = fetch(&s.client, &page, "gzip, deflate, br").await;
    assert_eq!(compressed.0.as_deref(), Some("gzip"));
    assert!(
        compressed.1.len() * 4 < html.len(),
        "{} bytes",
        compressed.1.len()
    );
    let mut opened = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(&compressed.1[..]),
        &mut opened,
    )
    .unwrap();
    let (encoding, text) = fetch(&s.client, &page, "identity").await;
    assert_eq!(encoding, None);
    let text = String::from_utf8(text).unwrap();
    for page in [&opened, &text] {
        assert!(
            page.contains("data-generation=\"0\"") && page.contains("As of 2"),
            "{page}"
        );
    }

    let page_only =
        "[{apiGroups: [dashboard.abc-operator.dev], resources: [dashboards], verbs: [get]}]";
    grant(&ns, "mallory", page_only);
    let refused = raw_as(Some("mallory"), &page).unwrap_err();
    assert!(
        refused.contains("cannot get abcruns") && refused.contains("\"sim\""),
        "the operator refuses a user who may not read the run: {refused}"
    );
    grant(
        &ns,
        "reader",
        "[{apiGroups: [dashboard.abc-operator.dev], resources: [dashboards], verbs: [get]}, \
         {apiGroups: [abc-operator.dev], resources: [abcruns], resourceNames: [sim], verbs: [get]}]",
    );
    let html = raw_as(Some("reader"), &page).unwrap();
    assert!(html.contains("sim"), "{html}");
    let nobody = raw_as(Some("nobody"), &page).unwrap_err();
    assert!(nobody.to_lowercase().contains("forbidden"), "{nobody}");

    let csv = raw_as(None, &format!("{page}?csv=generations")).unwrap();
    assert!(!csv.contains("<html"), "a CSV, not the page: {csv}");

    s.runs
        .delete("sim", &DeleteParams::default())
        .await
        .unwrap();
    let gone = eventually(60, "the deleted run's page", || async {
        raw_as(None, &page)
            .err()
            .filter(|e| e.contains("NotFound") || e.contains("404"))
    })
    .await;
    assert!(!gone.is_empty());
}
