//! `kubectl abc results RUN`: a consistent copy of the run's pyABC database on this machine,
//! during or after the run, through a short-lived pod that mounts the run's results claim.
//! How and why so: `abc_operator::results_copy`, which holds every decision made here.

use abc_operator::resources::RESULTS_DIR;
use abc_operator::results_copy::{
    self as copy, COPY_CONTAINER, DbFile, HELPFUL, Meter, NEEDED, PodStart, Report, Right,
    format_bytes,
};
use anyhow::{Context as _, anyhow, bail};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Event, PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::api::{Api, AttachParams, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use sha2::{Digest, Sha256};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::signal::unix::{Signal, SignalKind, signal};

#[derive(clap::Args)]
pub struct ResultsArgs {
    /// The AbcRun.
    name: String,
    /// Where to write the copy: a file (replaced if it exists) or a folder (default: the
    /// database's own file name, in the current folder).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// The database to copy when the claim holds several (a file name in its root folder).
    #[arg(long)]
    file: Option<String>,
    /// Seconds to wait for the copy pod to start before saying why it does not.
    #[arg(long, default_value_t = 120)]
    wait: u64,
    /// Seconds the copy pod lives at most (its activeDeadlineSeconds): the longest a copy may
    /// take, and how long a pod left behind by a killed plugin keeps running.
    #[arg(long, default_value_t = 1800, value_parser = clap::value_parser!(i64).range(60..))]
    deadline: i64,
}

pub async fn results(args: ResultsArgs, cluster: &super::ClusterArgs) -> anyhow::Result<()> {
    let (client, namespace) = super::kubernetes(cluster).await?;
    // the rights first: a missing one is named, not met as a 403 halfway
    let granted = check_rights(&client, &namespace).await?;
    let name = &args.name;
    let run = super::abc_run(&client, &namespace, name).await?;
    let claim = copy::claim_of(&run)?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let masters = pods
        .list(&ListParams::default().labels(&copy::master_selector(name)))
        .await?
        .items;
    let node = copy::master_node(&masters);
    if granted.contains(&HELPFUL[0]) {
        let found = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &namespace)
            .get_opt(&claim)
            .await?;
        copy::check_claim(&run, &claim, found.as_ref())?;
        if let Some(found) = &found {
            copy::check_single_pod_access(&claim, found, node.as_deref())?;
        }
    }
    let events = granted
        .contains(&HELPFUL[1])
        .then(|| Api::<Event>::namespaced(client.clone(), &namespace));

    remove_finished_copy_pods(&pods, name).await;
    // From here on Ctrl-C and SIGTERM delete the copy pod before the plugin ends.
    let mut signals = Signals::new();
    let pod = pods
        .create(
            &PostParams::default(),
            &copy::copy_pod(&run, &claim, node.as_deref(), args.deadline),
        )
        .await
        .context("cannot create the copy pod")?
        .name_any();
    match &node {
        Some(node) => eprintln!("copy pod {pod} on node {node}, beside the master"),
        None => eprintln!("copy pod {pod} (the master is not running)"),
    }
    let copy = Copy {
        pods: &pods,
        pod: &pod,
        claim: &claim,
        args: &args,
        events: events.as_ref(),
    };
    let outcome = tokio::select! {
        outcome = copy.run() => outcome,
        signal = signals.recv() => Err(anyhow!("{signal}: stopped the copy")),
    };
    delete_copy_pod(&pods, &pod, &namespace, args.deadline).await;
    let (report, output) = outcome?;
    println!("{}", copy::summary_line(name, &report, &output));
    Ok(())
}

/// SIGINT (Ctrl-C) and SIGTERM, caught from the moment this is made (one that arrives before
/// `recv` is kept for it).
struct Signals {
    int: Signal,
    term: Signal,
}

impl Signals {
    fn new() -> Signals {
        Signals {
            int: signal(SignalKind::interrupt()).expect("a SIGINT handler can be installed"),
            term: signal(SignalKind::terminate()).expect("a SIGTERM handler can be installed"),
        }
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "interrupted",
            _ = self.term.recv() => "terminated",
        }
    }
}

/// Asks the API server which of [`NEEDED`] and [`HELPFUL`] the user has in `namespace`; fails
/// naming the needed ones that are missing, returns the granted ones. A review that cannot be
/// made (an API server that refuses it) counts as granted: the request itself will tell.
async fn check_rights(client: &Client, namespace: &str) -> anyhow::Result<Vec<Right>> {
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let ask = |right: Right| {
        let reviews = reviews.clone();
        async move {
            let review = SelfSubjectAccessReview {
                spec: SelfSubjectAccessReviewSpec {
                    resource_attributes: Some(ResourceAttributes {
                        namespace: Some(namespace.into()),
                        verb: Some(right.verb.into()),
                        group: Some(right.group.into()),
                        resource: Some(right.resource.into()),
                        subresource: (!right.subresource.is_empty())
                            .then(|| right.subresource.into()),
                        ..ResourceAttributes::default()
                    }),
                    ..SelfSubjectAccessReviewSpec::default()
                },
                ..SelfSubjectAccessReview::default()
            };
            let allowed = match reviews.create(&PostParams::default(), &review).await {
                Ok(answer) => answer.status.is_none_or(|s| s.allowed),
                Err(_) => true,
            };
            (right, allowed)
        }
    };
    let answers = futures::future::join_all(NEEDED.into_iter().chain(HELPFUL).map(ask)).await;
    let missing: Vec<Right> = answers
        .iter()
        .filter(|(right, allowed)| !allowed && NEEDED.contains(right))
        .map(|(right, _)| *right)
        .collect();
    if !missing.is_empty() {
        return Err(copy::missing_rights(namespace, &missing).into());
    }
    Ok(answers
        .into_iter()
        .filter(|(_, allowed)| *allowed)
        .map(|(right, _)| right)
        .collect())
}

/// Copy pods of the run that ended (their plugin was killed, the pod's deadline passed): only
/// their objects are left. Running ones may be another user's copy in progress.
async fn remove_finished_copy_pods(pods: &Api<Pod>, run: &str) {
    let Ok(list) = pods
        .list(&ListParams::default().labels(&copy::copy_selector(run)))
        .await
    else {
        return;
    };
    for pod in list.items {
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            let _ = pods.delete(&pod.name_any(), &DeleteParams::default()).await;
        }
    }
}

/// Deletes the copy pod; best effort, bounded, and saying what is left when it fails.
async fn delete_copy_pod(pods: &Api<Pod>, pod: &str, namespace: &str, deadline: i64) {
    let params = DeleteParams {
        grace_period_seconds: Some(1),
        ..DeleteParams::default()
    };
    let deleted = tokio::time::timeout(Duration::from_secs(15), pods.delete(pod, &params)).await;
    let error = match deleted {
        Ok(Ok(_)) => return,
        Ok(Err(kube::Error::Api(status))) if status.code == 404 => return,
        Ok(Err(err)) => err.to_string(),
        Err(_) => "no answer within 15 s".to_string(),
    };
    eprintln!(
        "could not delete the copy pod {pod} ({error}): it ends by itself within {deadline} s, or: kubectl delete pod {pod} -n {namespace}"
    );
}

/// One copy through the running pod `pod`.
struct Copy<'a> {
    pods: &'a Api<Pod>,
    pod: &'a str,
    claim: &'a str,
    args: &'a ResultsArgs,
    events: Option<&'a Api<Event>>,
}

impl Copy<'_> {
    async fn run(&self) -> anyhow::Result<(Report, PathBuf)> {
        self.wait_until_running().await?;
        let listing = self
            .exec(&["list", RESULTS_DIR])
            .await
            .context("cannot list the databases on the claim")?;
        let files: Vec<DbFile> = serde_json::from_slice(&listing)
            .context("the copy pod's list of databases is not JSON")?;
        let db = copy::choose_database(&files, self.args.file.as_deref(), self.claim)?;
        eprintln!(
            "backing up {} ({}) from the claim {} in the copy pod",
            db.name,
            format_bytes(db.size),
            self.claim
        );
        let in_pod = copy::copy_path(&db.name);
        let limit = (self.args.deadline / 2).to_string();
        let source = format!("{RESULTS_DIR}/{}", db.name);
        let report = self
            .exec(&["backup", &source, &in_pod, &limit])
            .await
            .with_context(|| format!("cannot back up {}", db.name))?;
        let report: Report = serde_json::from_slice(&report)
            .context("the copy pod's report of its backup is not JSON")?;
        if report.rolled_back {
            eprintln!(
                "a master killed inside a transaction left a hot journal: rolled it back first (as the master's next start would)"
            );
        }
        if report.restarts > 0 {
            eprintln!(
                "the master committed {} time(s) during the backup: the copy holds its last committed state",
                report.restarts
            );
        }
        let output = match &self.args.output {
            Some(path) if path.is_dir() => path.join(&db.name),
            Some(path) => path.clone(),
            None => PathBuf::from(&db.name),
        };
        self.stream(&in_pod, &report, &output).await?;
        Ok((report, output))
    }

    /// Waits until the copy pod runs, saying why it waits; fails at once when waiting cannot
    /// help, and after `--wait` seconds with the last reason (the scheduler's message, or the
    /// pod's last Warning Event).
    async fn wait_until_running(&self) -> anyhow::Result<()> {
        let pod = self.pod;
        let deadline = Instant::now() + Duration::from_secs(self.args.wait);
        let by_name = ListParams::default().fields(&format!("metadata.name={pod}"));
        let mut said = String::new();
        loop {
            let found = self.pods.list(&by_name).await?.items.into_iter().next();
            let Some(found) = found else {
                bail!("the copy pod {pod} is gone (deleted by someone else?)");
            };
            let why = match copy::pod_start(&found) {
                PodStart::Running => return Ok(()),
                PodStart::Failed(why) => bail!("the copy pod {pod} cannot start: {why}"),
                PodStart::Waiting(why) => why,
            };
            if Instant::now() > deadline {
                let warning = self.last_warning(&why).await.unwrap_or_default();
                bail!(
                    "the copy pod {pod} did not start within {} s: {why}{warning}",
                    self.args.wait
                );
            }
            if why != said {
                eprintln!("waiting for the copy pod: {why}");
                said = why;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// The copy pod's last Warning Event, when Events may be read (a volume that does not
    /// attach or mount says so only there), unless `said` has its message already.
    async fn last_warning(&self, said: &str) -> Option<String> {
        let events = self.events?;
        let params =
            ListParams::default().fields(&format!("involvedObject.name={},type=Warning", self.pod));
        let list = events.list(&params).await.ok()?;
        let last = list
            .items
            .into_iter()
            .max_by_key(|e| e.last_timestamp.clone().map(|t| t.0))?;
        let message = last.message.unwrap_or_default().trim().to_string();
        if said.contains(&message) {
            return None;
        }
        Some(format!(
            " (last Warning {}: {message})",
            last.reason.unwrap_or_default()
        ))
    }

    fn attach() -> AttachParams {
        AttachParams {
            max_stdout_buf_size: Some(1 << 20),
            ..AttachParams::default().container(COPY_CONTAINER)
        }
    }

    /// Runs the script's subcommand `args` in the pod; its stdout, or what its stderr and exit
    /// say went wrong.
    async fn exec(&self, args: &[&str]) -> anyhow::Result<Vec<u8>> {
        let mut process = self
            .pods
            .exec(self.pod, copy::script_command(args), &Self::attach())
            .await?;
        let status = process.take_status().expect("a new exec has its status");
        let stdout = process.stdout().expect("stdout is attached");
        let stderr = process.stderr().expect("stderr is attached");
        let (out, err) = tokio::join!(read_all(stdout), read_all(stderr));
        if let Some(failure) = exec_failure(status.await, &err.unwrap_or_default()) {
            bail!("{failure}");
        }
        Ok(out?)
    }

    /// Streams the pod's copy `in_pod` into `output`, checking it against the pod's `report`:
    /// written to a temporary file beside `output` and renamed only once size and sha256
    /// match, so `output` is never a partial copy (and is left alone when the copy fails).
    async fn stream(&self, in_pod: &str, report: &Report, output: &Path) -> anyhow::Result<()> {
        let folder = match output.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let part = tempfile::Builder::new()
            .prefix(".abc-results-")
            .suffix(".part")
            .tempfile_in(folder)
            .with_context(|| format!("cannot write in {}", folder.display()))?;
        let mut file = tokio::fs::File::from_std(part.as_file().try_clone()?);
        let mut process = self
            .pods
            .exec(
                self.pod,
                copy::script_command(&["stream", in_pod]),
                &Self::attach(),
            )
            .await?;
        let status = process.take_status().expect("a new exec has its status");
        let stdout = process.stdout().expect("stdout is attached");
        let stderr = process.stderr().expect("stderr is attached");
        let mut meter = Meter::new(report.size, std::io::stderr().is_terminal(), Instant::now());
        let arrived = async {
            let copied = receive(stdout, &mut file, report.size, &mut meter).await?;
            file.sync_all().await?;
            anyhow::Ok(copied)
        };
        let (received, err) = tokio::join!(arrived, read_all(stderr));
        if let Some(text) = meter.finish() {
            let _ = std::io::stderr().write_all(text.as_bytes());
        }
        let (copied, sha256) = received?;
        if let Some(failure) = exec_failure(status.await, &err.unwrap_or_default()) {
            bail!("streaming the copy failed: {failure}");
        }
        if copied != report.size || sha256 != report.sha256 {
            bail!(
                "the copy arrived damaged ({copied} bytes, sha256 {sha256}; the pod's copy has {} bytes, sha256 {}): {} was left as it was",
                report.size,
                report.sha256,
                output.display()
            );
        }
        part.persist(output)
            .with_context(|| format!("cannot write {}", output.display()))?;
        Ok(())
    }
}

/// Writes what `from` sends into `to` (at most `size` bytes), with progress on stderr; the
/// bytes received and their sha256. `from` is dropped at the end, also an early one, which
/// ends an exec that sends it (none is left blocked on a full pipe).
async fn receive(
    mut from: impl AsyncRead + Unpin,
    to: &mut (impl AsyncWrite + Unpin),
    size: u64,
    meter: &mut Meter,
) -> anyhow::Result<(u64, String)> {
    let mut hash = Sha256::new();
    let mut copied: u64 = 0;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        copied += n as u64;
        if copied > size {
            bail!("the copy pod sent more than the {size} bytes of its copy");
        }
        hash.update(&buf[..n]);
        to.write_all(&buf[..n]).await?;
        if let Some(text) = meter.update(copied, Instant::now()) {
            let _ = std::io::stderr().write_all(text.as_bytes());
        }
    }
    to.flush().await?;
    Ok((copied, hex(&hash.finalize())))
}

async fn read_all(mut reader: impl AsyncRead + Unpin) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    reader.read_to_end(&mut out).await?;
    Ok(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What went wrong with an exec, from its status and stderr, or `None` when it succeeded. A
/// Python error's last line says it best (`sys.exit(message)` prints only that).
fn exec_failure(status: Option<Status>, stderr: &[u8]) -> Option<String> {
    let status = status.unwrap_or_default();
    if status.status.as_deref() == Some("Success") {
        return None;
    }
    let stderr = String::from_utf8_lossy(stderr);
    let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
    Some(match (last, status.message, status.reason) {
        (Some(line), _, _) => line.trim().to_string(),
        (None, Some(message), _) => message,
        (None, None, Some(reason)) => reason,
        (None, None, None) => {
            "the command in the copy pod ended without an exit status or error output".into()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(yaml: &str) -> Option<Status> {
        Some(serde_yaml::from_str(yaml).unwrap())
    }

    #[test]
    fn an_exec_fails_with_the_last_line_of_its_stderr_or_its_status() {
        assert_eq!(exec_failure(status("status: Success"), b"warning\n"), None);
        let traceback = b"Traceback (most recent call last):\n  File x\nsqlite3.DatabaseError: file is not a database\n\n";
        let failed = "status: Failure\nmessage: 'command terminated with non-zero exit code: error executing command [python], exit code 1'\nreason: NonZeroExitCode\n";
        assert_eq!(
            exec_failure(status(failed), traceback).as_deref(),
            Some("sqlite3.DatabaseError: file is not a database")
        );
        assert!(
            exec_failure(status(failed), b"")
                .unwrap()
                .contains("exit code 1")
        );
        for nothing in [None, status("{}")] {
            assert!(
                exec_failure(nothing, b"")
                    .unwrap()
                    .contains("without an exit status")
            );
        }
    }

    #[tokio::test]
    async fn what_arrives_is_written_counted_and_hashed_and_too_much_is_refused() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut meter = Meter::new(data.len() as u64, false, Instant::now());
        let mut written = Vec::new();
        let (copied, sha256) = receive(&data[..], &mut written, data.len() as u64, &mut meter)
            .await
            .unwrap();
        assert_eq!((copied, written.len()), (300_000, 300_000));
        assert_eq!(written, data);
        assert_eq!(sha256, hex(&Sha256::digest(&data)));
        let mut meter = Meter::new(10, false, Instant::now());
        let err = receive(&data[..], &mut Vec::new(), 10, &mut meter)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("more than the 10 bytes"), "{err}");
    }

    #[test]
    fn sha256_is_printed_as_sha256sum_does() {
        assert_eq!(
            hex(&Sha256::digest(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
