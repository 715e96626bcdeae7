//! A real control plane for integration tests, as envtest gives Go operators.
//!
//! `make test` starts one (tools/cluster.sh) and exports `ABC_TEST_KUBECONFIG`; a test run by
//! hand reuses the one `make cluster` started, or starts its own that dies with the test process.
//! Each test gets a fresh namespace, deleted when it ends.

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn crate_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Directory of the control-plane binaries (kubectl, helm, ...).
pub fn tools_bin() -> PathBuf {
    if let Ok(dir) = std::env::var("ABC_TOOLS_BIN") {
        return dir.into();
    }
    let out = Command::new(crate_root().join("tools/build.sh"))
        .output()
        .expect("tools/build.sh runs");
    assert!(
        out.status.success(),
        "building the control plane failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn kubectl_ok(kubeconfig: &Path) -> bool {
    Command::new(tools_bin().join("kubectl"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["get", "--raw", "/readyz"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// The two test clusters. Both are real control planes; they differ in their node:
/// - `Kwok`: a fake node whose pods run nothing (the tests play kubelet where they need
///   processes); cheap, so also for scale.
/// - `RealNode`: one real kubelet node with containerd, kube-proxy and cluster DNS, whose pods
///   run the project's images (tools/node.sh). One per machine: every test that needs it
///   shares it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cluster {
    Kwok,
    RealNode,
}

impl Cluster {
    /// The kubeconfig of this cluster: the one `make test` started (exported in `env`), the
    /// one `make cluster`/`make cluster-real` started, or one of its own that dies with the
    /// test process.
    pub fn kubeconfig(self) -> &'static Path {
        static KWOK: OnceLock<PathBuf> = OnceLock::new();
        static REAL_NODE: OnceLock<PathBuf> = OnceLock::new();
        let (cell, env, flags): (_, _, &[&str]) = match self {
            Cluster::Kwok => (&KWOK, "ABC_TEST_KUBECONFIG", &[]),
            Cluster::RealNode => (&REAL_NODE, "ABC_REAL_NODE_KUBECONFIG", &["--real-node"]),
        };
        cell.get_or_init(|| {
            if let Ok(path) = std::env::var(env) {
                return path.into();
            }
            let shared = crate_root()
                .join("target")
                .join(shared_dir_name(self))
                .join("kubeconfig");
            if shared.exists() && kubectl_ok(&shared) {
                return shared;
            }
            let pid = std::process::id();
            let dir = crate_root().join(format!("target/{}-{pid}", shared_dir_name(self)));
            let status = Command::new(crate_root().join("tools/cluster.sh"))
                .arg("up")
                .arg(&dir)
                .args(["--owner-pid", &pid.to_string()])
                .args(flags)
                .status()
                .expect("tools/cluster.sh runs");
            assert!(
                status.success(),
                "starting the {self:?} test cluster failed (see above)"
            );
            dir.join("kubeconfig")
        })
    }

    /// A `kubectl` command against this cluster.
    pub fn kubectl(self) -> Command {
        let mut cmd = Command::new(tools_bin().join("kubectl"));
        cmd.arg("--kubeconfig").arg(self.kubeconfig());
        cmd
    }

    /// Applies `crds/abcrun.yaml` as a user would and waits until the API serves it.
    pub fn install_crd(self) {
        let crd = crate_root().join("crds/abcrun.yaml");
        let out = self
            .kubectl()
            .args(["apply", "--server-side", "--force-conflicts", "-f"])
            .arg(&crd)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "CRD rejected: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = self
            .kubectl()
            .args([
                "wait",
                "--for=condition=Established",
                "crd/abcruns.abc-operator.dev",
                "--timeout=60s",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "CRD not established: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `helm` against this cluster, with its caches and config kept out of the user's.
    pub fn helm(self) -> Command {
        let mut cmd = helm();
        cmd.env("KUBECONFIG", self.kubeconfig());
        cmd
    }

    /// A client for this cluster.
    pub async fn client(self) -> Client {
        let path = self.kubeconfig().to_path_buf();
        let kubeconfig = Kubeconfig::read_from(&path).expect("the test kubeconfig is readable");
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("the test kubeconfig is valid");
        Client::try_from(config).expect("a client can be built")
    }
}

fn shared_dir_name(cluster: Cluster) -> &'static str {
    match cluster {
        Cluster::Kwok => "testenv",
        Cluster::RealNode => "testenv-real",
    }
}

/// `helm` for commands that need no cluster (lint, template).
pub fn helm() -> Command {
    let mut cmd = Command::new(tools_bin().join("helm"));
    // helm keeps caches and config under HOME; keep them out of the user's.
    let home = std::env::temp_dir().join("abc-operator-helm-home");
    cmd.env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
    cmd
}

/// Runs `cmd` with `input` on its standard input; its output.
pub fn output_with_stdin(mut cmd: Command, input: &str) -> std::process::Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// The Events in `namespace` with `reason`.
pub async fn events_with_reason(
    client: &Client,
    namespace: &str,
    reason: &str,
) -> Vec<k8s_openapi::api::events::v1::Event> {
    Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), namespace)
        .list(&kube::api::ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect()
}

/// The Events in `namespace` with `reason`, once there are at least `count` (bounded wait).
/// The controller publishes a reconcile's Events after it wrote the status, so a test that
/// saw the status change must wait for them.
pub async fn events_published(
    client: &Client,
    namespace: &str,
    reason: &str,
    count: usize,
) -> Vec<k8s_openapi::api::events::v1::Event> {
    let what = format!("{count} {reason} Event(s)");
    eventually(30, &what, || async {
        let events = events_with_reason(client, namespace, reason).await;
        (events.len() >= count).then_some(events)
    })
    .await
}

/// The kubeconfig of the kwok test cluster.
pub fn kubeconfig() -> &'static Path {
    Cluster::Kwok.kubeconfig()
}

/// A `kubectl` command against the kwok test cluster.
pub fn kubectl() -> Command {
    Cluster::Kwok.kubectl()
}

/// Applies `crds/abcrun.yaml` to the kwok test cluster.
pub fn install_crd() {
    Cluster::Kwok.install_crd()
}

/// A client for the kwok test cluster.
pub async fn client() -> Client {
    Cluster::Kwok.client().await
}

/// The labels of a namespace whose pods must meet the Pod Security Standard `restricted`,
/// enforced by the API server's PodSecurity admission (on by default).
pub const RESTRICTED_LABELS: [(&str, &str); 2] = [
    ("pod-security.kubernetes.io/enforce", "restricted"),
    ("pod-security.kubernetes.io/enforce-version", "latest"),
];

/// A namespace that exists for one test and is deleted when it is dropped.
pub struct TestNamespace {
    pub name: String,
    cluster: Cluster,
}

impl TestNamespace {
    /// A namespace on the kwok cluster.
    pub async fn new(client: &Client, prefix: &str) -> TestNamespace {
        Self::on(Cluster::Kwok, client, prefix).await
    }

    /// A namespace on `cluster`, which `client` talks to. On the real node it enforces the
    /// Pod Security Standard `restricted` (as many clusters do for users' namespaces): the API
    /// server refuses every pod of the test that does not meet it.
    pub async fn on(cluster: Cluster, client: &Client, prefix: &str) -> TestNamespace {
        let suffix: u32 = rand::random::<u32>() % 1_000_000;
        let name = format!("{prefix}-{suffix:06}");
        let labels: serde_json::Map<String, serde_json::Value> = match cluster {
            Cluster::RealNode => RESTRICTED_LABELS
                .iter()
                .map(|(key, value)| (key.to_string(), (*value).into()))
                .collect(),
            Cluster::Kwok => serde_json::Map::new(),
        };
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "labels": labels }
        }))
        .unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("test namespace can be created");
        // The ServiceAccount admission plugin refuses pods until the namespace's default
        // ServiceAccount exists; wait for the controller-manager to create it.
        let sa: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(client.clone(), &name);
        for _ in 0..150 {
            if sa.get_opt("default").await.ok().flatten().is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        TestNamespace { name, cluster }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // Drop cannot await (and the client's runtime may be the one blocked here): kubectl.
        let _ = self
            .cluster
            .kubectl()
            .args(["delete", "namespace", &self.name, "--wait=false"])
            .output();
    }
}

/// Polls `check` every 100 ms until it returns `Some`, or panics with `what` after `secs`.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    eventually_explained(secs, what, check, String::new).await
}

/// As [`eventually`], with what `explain` tells of the state things were left in added to
/// the panic message (a timeout alone does not say whether a run hung or was slow).
pub async fn eventually_explained<T, F, Fut>(
    secs: u64,
    what: &str,
    mut check: F,
    explain: impl FnOnce() -> String,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {secs} s waiting for {what}\n{}", explain());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
