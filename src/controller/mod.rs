//! The Kubernetes controller for AbcRuns (being wired; see the next commit).

/// Options of `abc-operator controller`.
#[derive(clap::Args, Debug)]
pub struct ControllerArgs {
    /// Address of the metrics, health and readiness endpoints.
    #[arg(long, default_value = "0.0.0.0:8080", env = "ABC_METRICS_ADDR")]
    pub metrics_addr: std::net::SocketAddr,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "ABC_WATCH_NAMESPACE")]
    pub namespace: Option<String>,
}

/// Runs the controller until SIGTERM or Ctrl-C.
pub async fn run(_args: ControllerArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
