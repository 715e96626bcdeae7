//! `kubectl abc`: the same answers as pyABC's `abc-redis-manager`, for a Redis URL or an AbcRun.

mod support;

use abc_operator::api::AbcRun;
use kube::api::{Api, ListParams, PostParams};
use redis::AsyncCommands;
use std::process::Command;
use support::cluster::{self, TestNamespace, eventually};

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

/// `kubectl abc stop RUN` is the run's `spec.stop`, said once; the Redis is not touched.
#[tokio::test]
async fn stop_asks_the_run_to_stop_once() {
    cluster::install_crd();
    let client = cluster::client().await;
    let ns = TestNamespace::new(&client, "abc-stop").await;
    let run: AbcRun = serde_yaml::from_str(
        "apiVersion: abc-operator.dev/v1alpha1\nkind: AbcRun\nmetadata: {name: sim}\nspec: {image: i}\n",
    )
    .unwrap();
    let runs = Api::<AbcRun>::namespaced(client.clone(), &ns.name);
    runs.create(&PostParams::default(), &run).await.unwrap();

    let (ok, said, err) = kubectl_abc(&["stop", "sim", "-n", &ns.name]);
    assert!(ok, "{err}");
    assert!(said.contains("asked AbcRun"), "{said}");
    assert!(runs.get("sim").await.unwrap().spec.stop);
    let (ok, said, _) = kubectl_abc(&["stop", "sim", "-n", &ns.name]);
    assert!(ok && said.contains("already asked to stop"), "{said}");
    let (ok, _, err) = kubectl_abc(&["stop", "missing", "-n", &ns.name]);
    assert!(!ok && err.contains("no AbcRun \"missing\""), "{err}");
}

/// `kubectl abc results` on the kwok cluster, as `user` (impersonated) when given.
fn kubectl_abc_results(user: Option<&str>, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kubectl-abc"));
    cmd.arg("results")
        .args(args)
        .env("KUBECONFIG", cluster::kubeconfig());
    if let Some(user) = user {
        cmd.env("KUBE_RS_DEBUG_IMPERSONATE_USER", user);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

/// Applies `yaml` (one or more objects) in `ns`.
fn apply(ns: &str, yaml: &str) {
    let mut cmd = cluster::kubectl();
    cmd.args(["apply", "-n", ns, "-f", "-"]);
    let out = cluster::output_with_stdin(cmd, yaml);
    assert!(
        out.status.success(),
        "kubectl apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn run_yaml(name: &str, master: &str) -> String {
    format!(
        "apiVersion: abc-operator.dev/v1alpha1\nkind: AbcRun\nmetadata: {{name: {name}}}\nspec:\n  image: i\n{master}"
    )
}

/// A claim `name` bound to a hostPath volume made for it (kwok's node mounts nothing).
fn bound_claim(ns: &str, name: &str) {
    let volume = format!("{ns}-{name}");
    apply(
        ns,
        &format!(
            "apiVersion: v1\nkind: PersistentVolume\nmetadata: {{name: {volume}}}\nspec:\n  \
             capacity: {{storage: 1Gi}}\n  accessModes: [ReadWriteOnce]\n  storageClassName: ''\n  \
             hostPath: {{path: /nonexistent/{volume}}}\n  claimRef: {{namespace: {ns}, name: {name}}}\n---\n\
             apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: {name}}}\nspec:\n  \
             accessModes: [ReadWriteOnce]\n  storageClassName: ''\n  volumeName: {volume}\n  \
             resources: {{requests: {{storage: 1Gi}}}}\n"
        ),
    );
}

async fn copy_pods(client: &kube::Client, ns: &str, run: &str) -> Vec<String> {
    Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&abc_operator::results_copy::copy_selector(run)))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.metadata.name)
        .collect()
}

#[tokio::test]
async fn results_names_what_keeps_a_copy_from_being_made() {
    cluster::install_crd();
    let client = cluster::client().await;
    let ns = TestNamespace::new(&client, "abc-results").await;
    let master = "  master:\n    command: [python, m.py]\n";
    apply(&ns.name, &run_yaml("no-master", ""));
    apply(
        &ns.name,
        &run_yaml(
            "ephemeral",
            &format!("{master}    results: {{volume: EmptyDir}}\n"),
        ),
    );
    // No operator on this cluster: the claim it would make does not exist.
    apply(&ns.name, &run_yaml("unmade", master));
    apply(
        &ns.name,
        &run_yaml("own", &format!("{master}    resultsClaimName: mine\n")),
    );
    apply(
        &ns.name,
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: unbound}\nspec:\n  accessModes: [ReadWriteOnce]\n  storageClassName: ''\n  resources: {requests: {storage: 1Gi}}\n",
    );
    apply(
        &ns.name,
        &run_yaml(
            "pending",
            &format!("{master}    resultsClaimName: unbound\n"),
        ),
    );
    for (run, expected) in [
        ("missing", "no AbcRun \"missing\""),
        ("no-master", "has no master"),
        ("ephemeral", "no copy is possible"),
        ("unmade", "the operator makes it"),
        (
            "own",
            "\"mine\" (spec.master.resultsClaimName) does not exist",
        ),
        ("pending", "\"unbound\" is Pending"),
    ] {
        let (ok, _, err) = kubectl_abc_results(None, &[run, "-n", &ns.name]);
        assert!(!ok, "{run}: the copy must fail");
        assert!(
            err.contains(expected),
            "{run}: {expected:?} missing in {err:?}"
        );
    }
    assert!(copy_pods(&client, &ns.name, "pending").await.is_empty());
}

#[tokio::test]
async fn results_says_which_rights_are_missing_and_needs_no_more() {
    cluster::install_crd();
    let client = cluster::client().await;
    let ns = TestNamespace::new(&client, "abc-results-rights").await;
    let role = |rules: &str| {
        format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: copier}}\nrules:\n{rules}---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: copier}}\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: copier}}\n\
             subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}}]\n"
        )
    };
    apply(
        &ns.name,
        &role(
            "- {apiGroups: [abc-operator.dev], resources: [abcruns], verbs: [get]}\n\
             - {apiGroups: [''], resources: [pods], verbs: [list, create]}\n",
        ),
    );
    let (ok, _, err) = kubectl_abc_results(Some("alice"), &["gaussian", "-n", &ns.name]);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "you may not delete pods, get pods/exec, create pods/exec in namespace \"{}\": ask",
            ns.name
        )),
        "{err}"
    );
    // The rights docs/operations.md lists, and nothing more: the copy goes on (to the run).
    apply(
        &ns.name,
        &role(
            "- {apiGroups: [abc-operator.dev], resources: [abcruns], verbs: [get]}\n\
             - {apiGroups: [''], resources: [pods], verbs: [list, create, delete]}\n\
             - {apiGroups: [''], resources: [pods/exec], verbs: [get, create]}\n",
        ),
    );
    let (ok, _, err) = kubectl_abc_results(Some("alice"), &["gaussian", "-n", &ns.name]);
    assert!(!ok);
    assert!(err.contains("no AbcRun \"gaussian\""), "{err}");
}

#[tokio::test]
async fn results_reports_why_the_copy_pod_does_not_start_and_leaves_no_pod_also_after_ctrl_c() {
    cluster::install_crd();
    let client = cluster::client().await;
    let ns = TestNamespace::new(&client, "abc-results-pod").await;
    bound_claim(&ns.name, "results");
    apply(
        &ns.name,
        &run_yaml(
            "gaussian",
            "  master:\n    command: [python, m.py]\n    resultsClaimName: results\n",
        ),
    );
    // A master pod placed on a node that has gone: the copy pod must go there too.
    apply(
        &ns.name,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: gaussian-master-x\n  labels: {abc-operator.dev/run: gaussian, abc-operator.dev/component: master}\n\
         spec:\n  nodeName: gone-node\n  containers: [{name: master, image: i}]\n",
    );
    eventually(30, "the claim bound", || async {
        let claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
            Api::namespaced(client.clone(), &ns.name);
        let phase = claims.get("results").await.ok()?.status?.phase?;
        (phase == "Bound").then_some(())
    })
    .await;
    let (ok, _, err) = kubectl_abc_results(None, &["gaussian", "-n", &ns.name, "--wait", "5"]);
    assert!(!ok);
    assert!(
        err.contains("on node gone-node, beside the master")
            && err.contains("did not start within 5 s: not scheduled: 0/1 nodes are available"),
        "{err}"
    );
    assert!(
        copy_pods(&client, &ns.name, "gaussian").await.is_empty(),
        "the copy pod is deleted after a failure"
    );

    // Ctrl-C while it waits: the copy pod is deleted too.
    let mut waiting = Command::new(env!("CARGO_BIN_EXE_kubectl-abc"))
        .args(["results", "gaussian", "-n", &ns.name, "--wait", "120"])
        .env("KUBECONFIG", cluster::kubeconfig())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(waiting.stderr.take().unwrap());
    let mut said = String::new();
    while !said.contains("not scheduled") {
        let mut line = String::new();
        let n = std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
        assert!(n > 0, "kubectl abc results ended before waiting: {said}");
        said.push_str(&line);
    }
    assert_eq!(copy_pods(&client, &ns.name, "gaussian").await.len(), 1);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(waiting.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert!(!waiting.wait().unwrap().success());
    assert!(rest.contains("interrupted: stopped the copy"), "{rest}");
    assert!(
        copy_pods(&client, &ns.name, "gaussian").await.is_empty(),
        "the copy pod is deleted after Ctrl-C"
    );

    // Without a master pod it goes to the fake node, which runs nothing: the exec fails, and
    // the pod is deleted all the same.
    Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), &ns.name)
        .delete("gaussian-master-x", &kube::api::DeleteParams::default())
        .await
        .unwrap();
    let (ok, _, err) = kubectl_abc_results(None, &["gaussian", "-n", &ns.name, "--wait", "60"]);
    assert!(!ok, "no copy without a real node");
    assert!(err.contains("the master is not running"), "{err}");
    assert!(
        copy_pods(&client, &ns.name, "gaussian").await.is_empty(),
        "the copy pod is deleted after a failure: {err}"
    );
}
