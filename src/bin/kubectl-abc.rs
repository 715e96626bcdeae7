//! `kubectl abc info|reset-workers NAME`: pyABC's `abc-redis-manager`, for AbcRuns;
//! `kubectl abc stop NAME`: the run's `spec.stop`; `kubectl abc results NAME`: a copy of the
//! run's pyABC database (`kubectl_abc/results.rs`).
//!
//! It reaches a run's Redis through the API server (a port-forward to the managed Redis pod)
//! with the password from the run's Secret, so no shell on the Redis host and no exposed port
//! are needed; `--redis redis://:PASSWORD@HOST:PORT` talks to any pyABC Redis directly.

#[path = "kubectl_abc/results.rs"]
mod results;

use abc_operator::api::{AbcRun, COMPONENT_LABEL, Phase, RUN_LABEL};
use abc_operator::protocol::{self, Endpoint};
use abc_operator::resources;
use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, ResourceExt};

#[derive(Parser)]
#[command(
    name = "kubectl abc",
    version,
    about = "Watch and steer pyABC runs (AbcRuns)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Talk to this pyABC Redis directly: redis://:PASSWORD@HOST:PORT
    #[arg(long, global = true, env = "ABC_REDIS_URL")]
    redis: Option<String>,
}

/// Which cluster and namespace, as kubectl's own flags say it.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ClusterArgs {
    /// Namespace of the run (default: the kubeconfig context's).
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long, global = true)]
    context: Option<String>,
    /// The kubeconfig file to use (default: $KUBECONFIG, else ~/.kube/config, else the pod's
    /// service account).
    #[arg(long, global = true)]
    kubeconfig: Option<std::path::PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// What `abc-redis-manager info` shows (`-o wide|json`: the full snapshot with ledgers).
    Info {
        name: Option<String>,
        #[arg(short, long, value_enum, default_value = "line")]
        output: Output,
    },
    /// Stop the run for good (its `spec.stop`): the master ends the analysis once the
    /// generation being sampled is stored, the workers finish it, then the run is Stopped.
    /// With --redis: pyABC's stop (the workers leave at the end of the current generation).
    Stop { name: Option<String> },
    /// pyABC's reset-workers (set the worker count of the generation to 0). The operator repairs
    /// lost workers by itself; this is the manual fallback pyABC documents.
    ResetWorkers { name: Option<String> },
    /// Copy the run's pyABC database to this machine, consistent also while the master writes
    /// it (SQLite's online backup, in a short-lived pod that mounts the run's results claim).
    Results(results::ResultsArgs),
    /// Serve the run's page (epsilon, acceptance rate, posterior, workers) on a loopback port,
    /// fetched through the Kubernetes API server with your credentials: whoever may get the
    /// run may see it.
    Dashboard {
        name: String,
        /// Port on 127.0.0.1 [default: a free one].
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Line,
    Wide,
    Json,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("kubectl abc: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let name = match cli.command {
        Command::Results(args) => return results::results(args, &cli.cluster).await,
        Command::Dashboard { name, port } => {
            return dashboard(&name, &cli.cluster, port).await;
        }
        Command::Stop { name: Some(name) } if cli.redis.is_none() => {
            return stop_run(&name, &cli.cluster).await;
        }
        Command::Info { ref name, .. }
        | Command::Stop { ref name }
        | Command::ResetWorkers { ref name } => name.clone(),
    };
    let (mut conn, _forward) = match (&cli.redis, &name) {
        (Some(url), _) => (connect_url(url).await?, None),
        (None, Some(name)) => {
            let (conn, forward) = connect_run(name, &cli.cluster).await?;
            (conn, forward)
        }
        (None, None) => bail!(
            "name an AbcRun (kubectl abc info NAME) or pass --redis redis://:PASSWORD@HOST:PORT"
        ),
    };
    match cli.command {
        Command::Info { output, .. } => {
            let snapshot = protocol::Snapshot::read(&mut conn).await?;
            match output {
                Output::Line => println!("{}", snapshot.info_line()),
                Output::Json => println!("{}", serde_json::to_string_pretty(&snapshot)?),
                Output::Wide => {
                    println!("{}", snapshot.info_line());
                    println!("{}", serde_yaml::to_string(&snapshot)?);
                }
            }
        }
        Command::Stop { .. } => {
            protocol::stop(&mut conn).await?;
            println!(
                "asked the workers to leave at the end of the current generation (pyABC's stop)"
            );
        }
        Command::ResetWorkers { .. } => {
            protocol::reset_workers(&mut conn).await?;
            println!("reset the worker count of the current generation to 0");
        }
        Command::Results(_) | Command::Dashboard { .. } => {
            unreachable!("handled above: no Redis involved")
        }
    }
    Ok(())
}

async fn connect_url(url: &str) -> anyhow::Result<protocol::Connection> {
    let info: redis::ConnectionInfo = url
        .parse()
        .with_context(|| format!("--redis {url:?} is not a redis:// URL"))?;
    let (host, port) = match info.addr() {
        redis::ConnectionAddr::Tcp(host, port) => (host.clone(), *port),
        other => bail!("--redis must be a TCP address, got {other:?}"),
    };
    let password = info.redis_settings().password().map(str::to_string);
    Ok(protocol::connect(&Endpoint {
        host,
        port,
        password,
    })
    .await?)
}

/// A client of the kubeconfig's cluster, and `namespace` or the kubeconfig's.
async fn kubernetes(cluster: &ClusterArgs) -> anyhow::Result<(Client, String)> {
    let options = KubeConfigOptions {
        context: cluster.context.clone(),
        ..KubeConfigOptions::default()
    };
    let context = || match &cluster.context {
        Some(context) => format!("no usable kubeconfig context {context:?}"),
        None => "no usable kubeconfig".to_string(),
    };
    let config = match (&cluster.kubeconfig, &cluster.context) {
        (Some(path), _) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read the kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .with_context(context)?
        }
        // A context names an entry of a kubeconfig: $KUBECONFIG's, else ~/.kube/config.
        (None, Some(_)) => Config::from_kubeconfig(&options)
            .await
            .with_context(context)?,
        (None, None) => Config::infer().await.with_context(context)?,
    };
    let client = Client::try_from(config).context("cannot reach the Kubernetes API")?;
    let namespace = cluster
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    Ok((client, namespace))
}

/// The AbcRun `name`, or an error saying it is not there.
async fn abc_run(client: &Client, namespace: &str, name: &str) -> anyhow::Result<AbcRun> {
    Api::<AbcRun>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await?
        .with_context(|| format!("no AbcRun {name:?} in namespace {namespace:?}"))
}

/// `kubectl abc stop RUN`: sets the run's `spec.stop` (what the operator does with it is in
/// the AbcRun's documentation), unless the run has finished or was asked already.
async fn stop_run(name: &str, cluster: &ClusterArgs) -> anyhow::Result<()> {
    let (client, namespace) = kubernetes(cluster).await?;
    let run = abc_run(&client, &namespace, name).await?;
    let phase = run.status.as_ref().and_then(|s| s.phase);
    if let Some(phase) = phase.filter(|p| p.is_finished()) {
        println!("AbcRun {namespace}/{name} has already finished ({phase}): nothing to stop");
        return Ok(());
    }
    if run.spec.stop {
        println!(
            "AbcRun {namespace}/{name} was already asked to stop; `kubectl get abc {name} -w` \
             shows it Stopped once nothing samples"
        );
        return Ok(());
    }
    let patch = serde_json::json!({"spec": {"stop": true}});
    Api::<AbcRun>::namespaced(client, &namespace)
        .patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .with_context(|| format!("setting spec.stop of AbcRun {namespace}/{name}"))?;
    println!(
        "asked AbcRun {namespace}/{name} to stop: its master ends the analysis once the \
         generation being sampled is stored (its workers finish it); `kubectl get abc {name} -w` \
         shows it Stopped"
    );
    Ok(())
}

/// Connects to a run's Redis: external directly, managed through a port-forward to its pod.
async fn connect_run(
    name: &str,
    cluster: &ClusterArgs,
) -> anyhow::Result<(protocol::Connection, Option<tokio::task::JoinHandle<()>>)> {
    let (client, namespace) = kubernetes(cluster).await?;
    let run = abc_run(&client, &namespace, name).await?;
    let reference = resources::password_secret_ref(&run);
    let secret = Api::<Secret>::namespaced(client.clone(), &namespace)
        .get_opt(&reference.name)
        .await?
        .with_context(|| {
            format!(
                "the run's password Secret {:?} does not exist",
                reference.name
            )
        })?;
    let password = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&reference.key))
        .and_then(|v| String::from_utf8(v.0.clone()).ok())
        .with_context(|| format!("Secret {:?} has no key {:?}", reference.name, reference.key))?;

    if run.spec.redis.external.is_some() {
        let (host, port) = resources::redis_host_port_for_operator(&run)?;
        return Ok((
            protocol::connect(&Endpoint {
                host,
                port,
                password: Some(password),
            })
            .await?,
            None,
        ));
    }
    let phase = run.status.as_ref().and_then(|s| s.phase);
    if resources::finished(&run) {
        bail!(no_redis(name, phase));
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let selector = format!("{RUN_LABEL}={name},{COMPONENT_LABEL}=redis");
    let pod = pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .into_iter()
        .find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .with_context(|| no_redis(name, phase))?;
    let (port, forward) = port_forward(pods, pod.name_any(), 6379).await?;
    let endpoint = Endpoint {
        host: "127.0.0.1".into(),
        port,
        password: Some(password),
    };
    Ok((protocol::connect(&endpoint).await?, Some(forward)))
}

/// Why a run's managed Redis cannot be reached, for a run in `phase`. A finished run
/// (Succeeded, Failed or Stopped) has freed its Redis for good: there is nothing live to read or
/// stop, and what it left is in its status and its database.
fn no_redis(name: &str, phase: Option<Phase>) -> String {
    match phase {
        Some(phase) if phase.is_finished() => format!(
            "the run {name:?} has ended ({phase}): its Redis was freed when it ended, so there \
             is nothing live to read or stop. Its last generation is in its status (kubectl \
             describe abc {name}); its database: kubectl abc results {name}"
        ),
        Some(phase) => format!(
            "the run {name:?} ({phase}) has no running Redis pod yet: its RedisReady condition \
             says why (kubectl describe abc {name})"
        ),
        None => format!(
            "the run {name:?} has no running Redis pod yet: the operator has not reconciled it \
             (is the operator running?)"
        ),
    }
}

/// Forwards a local loopback port to `pod_port` of the pod through the API server.
async fn port_forward(
    pods: Api<Pod>,
    pod: String,
    pod_port: u16,
) -> anyhow::Result<(u16, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let task = tokio::spawn(async move {
        while let Ok((mut local, _)) = listener.accept().await {
            let pods = pods.clone();
            let pod = pod.clone();
            tokio::spawn(async move {
                let Ok(mut forwarder) = pods.portforward(&pod, &[pod_port]).await else {
                    return;
                };
                let Some(mut remote) = forwarder.take_stream(pod_port) else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut local, &mut remote).await;
            });
        }
    });
    Ok((port, task))
}

/// `kubectl abc dashboard RUN`: the run's page on a loopback port until Ctrl-C.
async fn dashboard(name: &str, cluster: &ClusterArgs, port: u16) -> anyhow::Result<()> {
    let (client, namespace) = kubernetes(cluster).await?;
    abc_run(&client, &namespace, name).await?;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let serving = abc_operator::dashboard::proxy::serve(client, &namespace, name, addr, |at| {
        println!("the page of {namespace}/{name}: http://{at}/  (Ctrl-C to stop)");
    });
    tokio::select! {
        served = serving => served.with_context(|| format!("serving on {addr}"))?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finished_run_is_said_to_have_ended_not_to_start_later() {
        for phase in [Phase::Succeeded, Phase::Failed, Phase::Stopped] {
            let said = no_redis("gaussian", Some(phase));
            assert!(said.contains(&format!("has ended ({phase})")), "{said}");
            assert!(said.contains("kubectl abc results gaussian"), "{said}");
            assert!(!said.contains("yet"), "{said}");
        }
        for phase in [Phase::Pending, Phase::Running, Phase::Suspended] {
            let said = no_redis("gaussian", Some(phase));
            assert!(said.contains("no running Redis pod yet"), "{said}");
            assert!(said.contains("RedisReady"), "{said}");
        }
        assert!(no_redis("gaussian", None).contains("not reconciled"));
    }

    #[test]
    fn context_and_kubeconfig_are_global_flags_as_in_kubectl() {
        let cli = Cli::try_parse_from([
            "kubectl-abc",
            "--context",
            "lab",
            "info",
            "gaussian",
            "--kubeconfig",
            "lab.yaml",
            "-n",
            "science",
        ])
        .unwrap();
        assert_eq!(cli.cluster.context.as_deref(), Some("lab"));
        assert_eq!(
            cli.cluster.kubeconfig.as_deref(),
            Some(std::path::Path::new("lab.yaml"))
        );
        assert_eq!(cli.cluster.namespace.as_deref(), Some("science"));
    }

    #[tokio::test]
    async fn the_context_picks_the_cluster_and_its_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\ncurrent-context: a\n\
             clusters:\n- {name: a, cluster: {server: 'https://127.0.0.1:1'}}\n\
             - {name: b, cluster: {server: 'https://127.0.0.1:2'}}\n\
             users:\n- {name: u, user: {token: t}}\n\
             contexts:\n- {name: a, context: {cluster: a, user: u, namespace: one}}\n\
             - {name: b, context: {cluster: b, user: u, namespace: two}}\n",
        )
        .unwrap();
        let cluster = |context: Option<&str>| ClusterArgs {
            namespace: None,
            context: context.map(str::to_string),
            kubeconfig: Some(path.clone()),
        };
        let (_, namespace) = kubernetes(&cluster(None)).await.unwrap();
        assert_eq!(namespace, "one");
        let (_, namespace) = kubernetes(&cluster(Some("b"))).await.unwrap();
        assert_eq!(namespace, "two");
        let Err(error) = kubernetes(&cluster(Some("c"))).await else {
            panic!("a context the kubeconfig does not have was taken");
        };
        assert!(format!("{error:#}").contains("\"c\""), "{error:#}");
    }
}
