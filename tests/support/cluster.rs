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

/// The kubeconfig of the test control plane, started on first use if none runs.
pub fn kubeconfig() -> &'static Path {
    static KUBECONFIG: OnceLock<PathBuf> = OnceLock::new();
    KUBECONFIG.get_or_init(|| {
        if let Ok(path) = std::env::var("ABC_TEST_KUBECONFIG") {
            return path.into();
        }
        let shared = crate_root().join("target/testenv/kubeconfig");
        if shared.exists() && kubectl_ok(&shared) {
            return shared;
        }
        let pid = std::process::id();
        let dir = crate_root().join(format!("target/testenv-{pid}"));
        let status = Command::new(crate_root().join("tools/cluster.sh"))
            .arg("up")
            .arg(&dir)
            .args(["--owner-pid", &pid.to_string()])
            .status()
            .expect("tools/cluster.sh runs");
        assert!(
            status.success(),
            "starting the test control plane failed (see above)"
        );
        dir.join("kubeconfig")
    })
}

/// A `kubectl` command against the test control plane.
pub fn kubectl() -> Command {
    let mut cmd = Command::new(tools_bin().join("kubectl"));
    cmd.arg("--kubeconfig").arg(kubeconfig());
    cmd
}

/// Applies `crds/abcrun.yaml` as a user would and waits until the API serves it.
pub fn install_crd() {
    let crd = crate_root().join("crds/abcrun.yaml");
    let out = kubectl()
        .args(["apply", "--server-side", "--force-conflicts", "-f"])
        .arg(&crd)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "CRD rejected: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = kubectl()
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

/// A client for the test control plane.
pub async fn client() -> Client {
    let path = kubeconfig().to_path_buf();
    let kubeconfig = Kubeconfig::read_from(&path).expect("the test kubeconfig is readable");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("the test kubeconfig is valid");
    Client::try_from(config).expect("a client can be built")
}

/// A namespace that exists for one test and is deleted when it is dropped.
pub struct TestNamespace {
    pub name: String,
}

impl TestNamespace {
    pub async fn new(client: &Client, prefix: &str) -> TestNamespace {
        let suffix: u32 = rand::random::<u32>() % 1_000_000;
        let name = format!("{prefix}-{suffix:06}");
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": { "name": name }
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
        TestNamespace { name }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // Drop cannot await (and the client's runtime may be the one blocked here): kubectl.
        let _ = kubectl()
            .args(["delete", "namespace", &self.name, "--wait=false"])
            .output();
    }
}

/// Polls `check` every 100 ms until it returns `Some`, or panics with `what` after `secs`.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
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
            panic!("timed out after {secs} s waiting for {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
