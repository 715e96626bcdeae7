//! What keeps the controller working and honest about it, on a real control plane: an AbcRun
//! that cannot be read is reported on itself and skipped while the others reconcile, and
//! `/readyz` answers ready only once the AbcRun watch has synced.

mod support;

use abc_operator::api::{AbcRun, Phase};
use abc_operator::controller::UNREADABLE_REASON;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, PostParams};
use support::cluster::{self, TestNamespace, events_with_reason, eventually, install_crd, kubectl};
use support::controller::ControllerProcess;

fn run(name: &str) -> AbcRun {
    serde_yaml::from_str(&format!(
        "apiVersion: abc-operator.dev/v1alpha1\nkind: AbcRun\nmetadata: {{name: {name}}}\nspec: {{image: i, workers: {{replicas: 1}}}}\n"
    ))
    .unwrap()
}

/// `kubectl patch abcrun broken --type=merge -p patch`, as a user would; it must be accepted.
fn merge_patch(namespace: &str, extra: &[&str], patch: &str) {
    let out = kubectl()
        .args(["patch", "abcrun", "broken", "-n", namespace, "--type=merge"])
        .args(extra)
        .args(["-p", patch])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the API server refused {patch}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn an_unreadable_run_is_reported_and_skipped_while_the_others_reconcile() {
    install_crd();
    let client = cluster::client().await;
    let ns = TestNamespace::new(&client, "op-unreadable").await;
    let runs: Api<AbcRun> = Api::namespaced(client.clone(), &ns.name);
    for name in ["good", "broken"] {
        runs.create(&PostParams::default(), &run(name))
            .await
            .unwrap();
    }
    // The API server's date-time check takes more than nine fractional digits of a second;
    // Kubernetes' Time type does not. A status writer (a user's `kubectl patch`, another
    // tool) can so store an object that does not deserialize.
    let condition = r#"{"type":"X","status":"True","reason":"R","message":"m","lastTransitionTime":"2025-01-01T00:00:00.1234567891Z"}"#;
    merge_patch(
        &ns.name,
        &["--subresource=status"],
        &format!(r#"{{"status":{{"conditions":[{condition}]}}}}"#),
    );
    assert!(
        runs.get("broken").await.is_err(),
        "the broken run must not deserialize, or this test tests nothing"
    );

    let controller = ControllerProcess::start(&ns.name);
    eventually(90, "the good run Running with its worker", || async {
        let status = runs.get("good").await.ok()?.status?;
        (status.phase == Some(Phase::Running) && status.ready_replicas == 1).then_some(())
    })
    .await;
    let event = eventually(30, "a Warning Event on the broken run", || async {
        events_with_reason(&client, &ns.name, UNREADABLE_REASON)
            .await
            .into_iter()
            .find(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("broken"))
    })
    .await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    let note = event.note.unwrap_or_default();
    assert!(
        note.contains("status.conditions[0].lastTransitionTime"),
        "{note}"
    );
    // Changed and still unreadable: reported again, as a repeat of the same Event (a series
    // of 2 on the first Event, not a second Event).
    merge_patch(&ns.name, &[], r#"{"spec":{"workers":{"replicas":2}}}"#);
    let on_broken = || async {
        events_with_reason(&client, &ns.name, UNREADABLE_REASON)
            .await
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("broken"))
            .collect::<Vec<_>>()
    };
    eventually(30, "the repeat counted on the first Event", || async {
        let events = on_broken().await;
        (events
            .iter()
            .any(|e| e.series.as_ref().is_some_and(|s| s.count == 2)))
        .then_some(())
    })
    .await;
    let events = on_broken().await;
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0].metadata.name, event.metadata.name);
    // Synced (with a run it cannot read among them): ready.
    let readyz = eventually(10, "/readyz to turn ready", || async {
        let answer = controller.get("/readyz").await?;
        answer.contains(" 200 ").then_some(answer)
    })
    .await;
    assert!(readyz.ends_with("ready"), "{readyz}");
    // Skipped: nothing was built for it.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    assert!(
        deployments
            .get_opt("broken-workers")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn readyz_is_not_ready_while_the_abcrun_watch_fails_and_says_why() {
    install_crd();
    let client = cluster::client().await;
    let ns = TestNamespace::new(&client, "op-readyz").await;
    // The controller runs as a user with no permission in its namespace: its watches fail as
    // they do on a cluster without the CRD or the RBAC, and it must not claim to be ready.
    let user = format!("abc-readyz-{}", ns.name);
    // Only its Lease, as the chart's Role allows: it leads, and then its watches fail.
    let role: k8s_openapi::api::rbac::v1::Role = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "lease"},
        "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                   "verbs": ["get", "create", "update"]}]
    }))
    .unwrap();
    let binding: k8s_openapi::api::rbac::v1::RoleBinding =
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "lease"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "lease"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]
        }))
        .unwrap();
    Api::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    Api::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    let controller = ControllerProcess::start_with_env(
        &ns.name,
        &[],
        &[("KUBE_RS_DEBUG_IMPERSONATE_USER", user.as_str())],
    );
    let waiting = eventually(30, "/readyz to say why it is not ready", || async {
        let answer = controller.get("/readyz").await?;
        answer.contains("forbidden").then_some(answer)
    })
    .await;
    assert!(waiting.contains(" 503 "), "{waiting}");
    assert!(waiting.contains("not ready: a watch failed"), "{waiting}");
    assert!(waiting.contains("RBAC"), "{waiting}");
}
