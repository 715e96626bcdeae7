//! `kubectl abc`: the same answers as pyABC's `abc-redis-manager`, for a Redis URL or an AbcRun.

mod support;

use abc_operator::api::AbcRun;
use kube::api::{Api, PostParams};
use redis::AsyncCommands;
use std::process::Command;
use support::cluster::{self, TestNamespace};

fn kubectl_abc(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kubectl-abc"))
        .args(args)
        .env("KUBECONFIG", cluster::kubeconfig())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

/// A generation in progress, written as pyABC's master and workers write it.
async fn write_generation(conn: &mut abc_operator::protocol::Connection) {
    let ana = "3f1c";
    let _: () = conn.set("analysis_id", ana).await.unwrap();
    let _: () = conn.set(format!("generation_{ana}"), 2).await.unwrap();
    for (key, value) in [
        ("mode", "dynamic"),
        ("n_req", "100"),
        ("n_acc", "37"),
        ("n_eval", "412"),
        ("n_fail", "3"),
        ("n_worker", "4"),
    ] {
        let _: () = conn.set(format!("{key}_{ana}_2"), value).await.unwrap();
    }
}

#[tokio::test]
async fn info_prints_what_abc_redis_manager_prints() {
    let server = support::redis::server();
    let endpoint = server.endpoint();
    let url = format!("redis://:{}@127.0.0.1:{}", server.password(), server.port());
    for state in ["empty", "sampling"] {
        if state == "sampling" {
            write_generation(&mut support::redis::connect(&server).await).await;
        }
        let (ok, ours, err) = kubectl_abc(&["info", "--redis", &url]);
        assert!(ok, "kubectl abc info failed: {err}");
        let theirs = support::python::manager(&endpoint, "info");
        assert_eq!(
            ours,
            theirs.trim(),
            "kubectl abc info differs from abc-redis-manager info ({state})"
        );
    }
    let (ok, json, _) = kubectl_abc(&["info", "--redis", &url, "-o", "json"]);
    assert!(ok);
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["n_acc"], 37);

    let (ok, _, _) = kubectl_abc(&["reset-workers", "--redis", &url]);
    assert!(ok);
    let n: i64 = support::redis::connect(&server)
        .await
        .get("n_worker_3f1c_2")
        .await
        .unwrap();
    assert_eq!(
        n, 0,
        "reset-workers sets the generation's worker count to 0, as pyABC's does"
    );

    let wrong = format!("redis://:wrong@127.0.0.1:{}", server.port());
    let (ok, _, err) = kubectl_abc(&["info", "--redis", &wrong]);
    assert!(!ok);
    assert!(
        err.contains("password"),
        "a wrong password must be named as the cause: {err}"
    );
}

#[tokio::test]
async fn info_finds_an_abcrun_redis_and_its_password() {
    cluster::install_crd();
    let client = cluster::client().await;
    let ns = TestNamespace::new(&client, "abc-cli").await;
    let server = support::redis::server();
    write_generation(&mut support::redis::connect(&server).await).await;
    support::run::create_password_secret(&client, &ns.name, "pw", server.password()).await;
    let run: AbcRun = serde_yaml::from_str(&format!(
        "apiVersion: abc-operator.dev/v1alpha1\nkind: AbcRun\nmetadata: {{name: ext}}\nspec:\n  image: i\n  redis: {{external: {{host: 127.0.0.1, port: {}, passwordSecret: {{name: pw}}}}}}\n",
        server.port()
    ))
    .unwrap();
    Api::<AbcRun>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &run)
        .await
        .unwrap();

    let (ok, line, err) = kubectl_abc(&["info", "ext", "-n", &ns.name]);
    assert!(ok, "{err}");
    assert_eq!(
        line,
        support::python::manager(&server.endpoint(), "info").trim()
    );
    let (ok, _, err) = kubectl_abc(&["info", "missing", "-n", &ns.name]);
    assert!(!ok);
    assert!(err.contains("no AbcRun \"missing\""), "{err}");
}
