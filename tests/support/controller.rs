//! The operator as users run it: the real `abc-operator controller` process, watching one test
//! namespace of the test control plane.

use super::cluster;
use std::process::{Child, Command, ExitStatus, Stdio};

pub struct ControllerProcess {
    child: Child,
    pub metrics_port: u16,
    pub log: std::path::PathBuf,
}

impl ControllerProcess {
    pub fn start(namespace: &str) -> ControllerProcess {
        Self::start_with(namespace, &[])
    }

    /// Starts the controller with extra command-line options.
    pub fn start_with(namespace: &str, extra: &[&str]) -> ControllerProcess {
        Self::start_with_env(namespace, extra, &[])
    }

    /// Starts the controller with extra command-line options and environment.
    pub fn start_with_env(
        namespace: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> ControllerProcess {
        let metrics_port = free_port();
        let log =
            std::env::temp_dir().join(format!("abc-controller-{namespace}-{metrics_port}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_abc-operator"))
            .arg("controller")
            .args(["--namespace", namespace])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .args(extra)
            .env("KUBECONFIG", cluster::kubeconfig())
            .env("RUST_LOG", "info,abc_operator=debug,kube=warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("abc-operator controller starts");
        ControllerProcess {
            child,
            metrics_port,
            log,
        }
    }

    /// The controller's Prometheus metrics text.
    pub async fn metrics(&self) -> Option<String> {
        self.get("/metrics").await
    }

    /// The response (status line, headers and body) of a GET on the metrics port.
    pub async fn get(&self, path: &str) -> Option<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.metrics_port))
            .await
            .ok()?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut body = String::new();
        stream.read_to_string(&mut body).await.ok()?;
        Some(body)
    }

    /// Value of a counter or gauge line that starts with `series`.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let text = self.metrics().await?;
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// Reconciles so far, once none has happened for `quiet` (a run's start-up brings a
    /// burst of watch events, longer or shorter with the machine's load). Panics when the
    /// reconciles never stop for that long within `secs`: a hot loop.
    pub async fn reconciles_once_settled(&self, quiet: std::time::Duration, secs: u64) -> f64 {
        let last = std::cell::Cell::new(f64::NAN);
        let quiet_since = std::cell::Cell::new(tokio::time::Instant::now());
        cluster::eventually(
            secs,
            &format!("reconciles to pause for {quiet:?}"),
            || async {
                let now = self.metric("abc_operator_reconciles_total").await?;
                if now != last.get() {
                    last.set(now);
                    quiet_since.set(tokio::time::Instant::now());
                }
                (quiet_since.get().elapsed() >= quiet).then_some(now)
            },
        )
        .await
    }

    /// Write requests (create, patch, update, delete) the controller has sent to the API
    /// server, from its own request counter; its Lease renewals aside.
    pub async fn writes_sent(&self) -> Option<f64> {
        let text = self.metrics().await?;
        Some(
            text.lines()
                .filter(|l| l.starts_with("abc_operator_api_requests_total{"))
                .filter(|l| !l.contains("resource=\"leases\""))
                .filter(|l| {
                    ["create", "patch", "update", "delete"]
                        .iter()
                        .any(|verb| l.contains(&format!("verb=\"{verb}\"")))
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum(),
        )
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn stop(mut self) {
        self.kill();
    }

    /// Sends `signal`, then waits (at most 20 s, then SIGKILL) for the process to exit. A
    /// graceful shutdown finishes the reconciles in flight and releases the Lease: on a loaded
    /// machine that has taken over 5 s. 20 s stays within the kubelet's default grace (30 s).
    pub fn signal_and_wait(&mut self, signal: nix::sys::signal::Signal) -> ExitStatus {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal);
        for _ in 0..200 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = self.child.kill();
        self.child.wait().unwrap()
    }

    /// The exit status, if the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn kill(&mut self) {
        self.signal_and_wait(nix::sys::signal::Signal::SIGTERM);
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
