//! Why a run's pods cannot run, decided from their statuses alone: an image the node cannot
//! pull, a container the kubelet cannot create (e.g. a missing Secret key), a container that
//! keeps exiting, a pod no node takes (its placement or requests fit none), pods the API server
//! refuses to make. Without this a run with a typo in its image would only sit in Pending.
//!
//! The same pods give the same problem, byte for byte: the kubelet's back-off durations and
//! restart counts are left out of the message, and `ErrImagePull`/`ImagePullBackOff` (between
//! which the kubelet alternates while it retries) are one problem. So a stuck run's status does
//! not change from one reconcile to the next, and its Event is published once.

use super::pod_index::{RunPod, WatchedContainer};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use std::borrow::Borrow;
use std::time::Duration;

/// A container that exits with an error within this time of starting crashes at start (a
/// missing module, a wrong password): the worker is left to the kubelet's restart back-off,
/// which shows as `CrashLoopBackOff`, rather than replaced, which would only churn pods.
pub const CRASH_AT_START: Duration = Duration::from_secs(60);

/// A container restarted after an error that has been running this long has recovered. Before
/// that it is still crash-looping: the kubelet restarts it between two back-offs, and calling
/// each of those short runs "fine" would make the status flap.
pub const RECOVERED_AFTER: Duration = Duration::from_secs(60);

/// Why one of a run's pods cannot run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodProblem {
    /// What it was seen in: `Pod` (the first such pod by name), or `Deployment` when the
    /// Deployment cannot make its pods at all.
    pub kind: &'static str,
    pub object: String,
    /// The kubelet's reason, as conditions and Events show it: `ImagePullBackOff`,
    /// `InvalidImageName`, `ErrImageNeverPull`, `CreateContainerConfigError`,
    /// `CreateContainerError` or `CrashLoopBackOff`; or the scheduler's, `Unschedulable` (no
    /// node fits the pod's placement or requests: a spot pool's autoscaler may still add one).
    pub reason: String,
    /// What is wrong, naming the pod, the container, and the image or the last exit.
    pub message: String,
}

/// The first problem among `pods` (by pod name, init containers first), or `None` when every
/// pod runs or is on its way (scheduling, pulling, creating its containers). Pods being deleted
/// and finished pods (a master Job's failed attempts: the Job's own status tells) are skipped.
pub fn pod_problem(pods: &[impl Borrow<RunPod>], now: Timestamp) -> Option<PodProblem> {
    let mut pods: Vec<&RunPod> = pods
        .iter()
        .map(Borrow::borrow)
        .filter(|p| !p.deleting)
        .filter(|p| {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            !matches!(phase, Some("Succeeded" | "Failed"))
        })
        .collect();
    pods.sort_by_key(|p| &p.name);
    pods.into_iter().find_map(|pod| {
        let status = pod.status.as_ref()?;
        // A pod waiting for its claim to be bound (the results claim, being provisioned) is on
        // its way; a claim that stays unbound is the run's results problem, said on its own.
        if let Some(scheduler) = status
            .unschedulable
            .as_ref()
            .filter(|m| !m.contains("unbound immediate PersistentVolumeClaims"))
        {
            return Some(PodProblem {
                kind: "Pod",
                object: pod.name.clone(),
                reason: "Unschedulable".into(),
                message: format!(
                    "pod {} cannot be placed on a node: {}",
                    pod.name,
                    scheduler.trim()
                ),
            });
        }
        let containers = status
            .init_container_statuses
            .iter()
            .flatten()
            .chain(status.container_statuses.iter().flatten());
        containers
            .filter_map(|c| container_problem(c, now))
            .next()
            .map(|(reason, what)| PodProblem {
                kind: "Pod",
                object: pod.name.clone(),
                reason: reason.to_string(),
                message: format!("pod {}: {what}", pod.name),
            })
    })
}

impl PodProblem {
    /// An image the node cannot pull (whatever the registry said).
    pub fn is_failed_pull(&self) -> bool {
        self.reason == "ImagePullBackOff"
    }
}

/// `problem` with the run's image pull secrets that do not exist named, when it is a failed
/// pull: the kubelet pulls without a missing one and reports only the registry's refusal.
pub fn name_missing_pull_secrets(problem: &mut PodProblem, missing: &[String], namespace: &str) {
    if !problem.is_failed_pull() || missing.is_empty() {
        return;
    }
    let names: Vec<String> = missing.iter().map(|name| format!("{name:?}")).collect();
    problem.message.push_str(&format!(
        "; spec.imagePullSecrets names {} that {} not exist in namespace {namespace:?}",
        names.join(", "),
        if missing.len() == 1 { "does" } else { "do" }
    ));
}

/// Why `deployment` cannot make its pods at all: the API server refuses them (a priority class
/// or service account that does not exist, a quota used up, Pod Security), as its
/// `ReplicaFailure` condition says. There are no pods to look at then.
pub fn creation_problem(deployment: Option<&Deployment>) -> Option<PodProblem> {
    let deployment = deployment?;
    let failure = deployment
        .status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "ReplicaFailure" && c.status == "True")?;
    let name = deployment.name_any();
    Some(PodProblem {
        kind: "Deployment",
        object: name.clone(),
        reason: failure
            .reason
            .clone()
            .unwrap_or_else(|| "FailedCreate".into()),
        message: format!(
            "Deployment {name} cannot make its pods: {}",
            failure.message.as_deref().unwrap_or("refused").trim()
        ),
    })
}

/// The reason and the description (starting with the container's name) of what keeps one
/// container from running, if anything does.
fn container_problem(c: &WatchedContainer, now: Timestamp) -> Option<(&'static str, String)> {
    let image = &c.image;
    let name = &c.name;
    let state = c.state.as_ref();
    if let Some(waiting) = state.and_then(|s| s.waiting.as_ref()) {
        let kubelet = waiting.message.as_deref().unwrap_or_default().trim();
        return match waiting.reason.as_deref().unwrap_or_default() {
            "ErrImagePull" | "ImagePullBackOff" => Some((
                "ImagePullBackOff",
                format!(
                    "container {name:?} cannot pull image {image:?}: {}",
                    pull_error(kubelet, image)
                ),
            )),
            "InvalidImageName" => Some((
                "InvalidImageName",
                format!("container {name:?} has an invalid image name {image:?}: {kubelet}"),
            )),
            "ErrImageNeverPull" => Some((
                "ErrImageNeverPull",
                format!(
                    "container {name:?}: image {image:?} is not on the node and its pull policy is Never: {kubelet}"
                ),
            )),
            reason @ ("CreateContainerConfigError" | "CreateContainerError") => Some((
                if reason == "CreateContainerConfigError" {
                    "CreateContainerConfigError"
                } else {
                    "CreateContainerError"
                },
                format!("container {name:?} cannot be created: {kubelet}"),
            )),
            // A command that cannot even be started (not in the image): the kubelet alternates
            // between these two as between pull errors; one problem.
            "CrashLoopBackOff" | "RunContainerError" => Some(("CrashLoopBackOff", crash(c))),
            // ContainerCreating, PodInitializing: on its way.
            _ => None,
        };
    }
    // A command that cannot even be started: as RunContainerError above, a problem from its
    // first attempt on (the kubelet shows this exit between its RunContainerError retries).
    if state.and_then(|s| s.terminated.as_ref()).is_some_and(|t| {
        matches!(
            t.reason.as_deref(),
            Some("StartError" | "ContainerCannotRun")
        )
    }) {
        return Some(("CrashLoopBackOff", crash(c)));
    }
    // Between two back-offs a crash-looping container runs (or has just exited) again.
    let failed_before = c.restart_count > 0 && last_exit(c).is_some_and(|t| t.exit_code != 0);
    if !failed_before {
        return None;
    }
    let running_since = state
        .and_then(|s| s.running.as_ref())
        .and_then(|r| r.started_at.as_ref());
    let exited_again = state.and_then(|s| s.terminated.as_ref()).is_some();
    let recovered = running_since.is_some_and(|started| {
        now.duration_since(started.0).as_secs() >= RECOVERED_AFTER.as_secs() as i64
    });
    (exited_again || (running_since.is_some() && !recovered))
        .then(|| ("CrashLoopBackOff", crash(c)))
}

/// The kubelet's pull error without its back-off wrapper (`Back-off pulling image "X": `, which
/// it adds while waiting to retry) and without the `ErrImagePull: ` prefix it adds there, so
/// that both states describe the problem with the same words.
fn pull_error(kubelet: &str, image: &str) -> String {
    let detail = kubelet
        .strip_prefix(&format!("Back-off pulling image {image:?}"))
        .map(|rest| rest.trim_start_matches(':').trim())
        .unwrap_or(kubelet);
    let detail = detail
        .strip_prefix("ErrImagePull:")
        .unwrap_or(detail)
        .trim();
    if detail.is_empty() {
        "the kubelet backs off pulling it".to_string()
    } else {
        detail.to_string()
    }
}

/// How a crash-looping container last ended: reason, exit code and the last line of its
/// termination message (the log's tail, with `FallbackToLogsOnError`).
fn crash(c: &WatchedContainer) -> String {
    match last_exit(c) {
        Some(last) => format!("container {:?} keeps exiting: {}", c.name, exit(last)),
        None => format!("container {:?} keeps exiting", c.name),
    }
}

/// How the newest of `pods` (a master Job's attempts) last failed, e.g. `Error, exit code 1
/// (abc_operator.ResumeError: …)`: the cause a failed master Job does not tell by itself.
pub fn last_failed_exit(pods: &[impl Borrow<RunPod>]) -> Option<String> {
    let newest: &RunPod = pods
        .iter()
        .map(Borrow::borrow)
        .max_by_key(|p: &&RunPod| (p.created.clone(), &p.name))?;
    newest
        .status
        .as_ref()?
        .container_statuses
        .iter()
        .flatten()
        .filter_map(last_exit)
        .find(|t| t.exit_code != 0)
        .map(exit)
}

/// Reason, exit code and the last line of the termination message of one exit.
fn exit(last: &k8s_openapi::api::core::v1::ContainerStateTerminated) -> String {
    let mut message = format!(
        "{}, exit code {}",
        last.reason.as_deref().unwrap_or("Error"),
        last.exit_code
    );
    let last_line = last
        .message
        .as_deref()
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty());
    if let Some(line) = last_line {
        let line: String = line.chars().take(300).collect();
        message.push_str(&format!(" ({line})"));
    }
    message
}

/// The container's most recent exit: now, or before its last restart.
fn last_exit(
    c: &WatchedContainer,
) -> Option<&k8s_openapi::api::core::v1::ContainerStateTerminated> {
    let now = c.state.as_ref().and_then(|s| s.terminated.as_deref());
    let before = c.last_state.as_ref().and_then(|s| s.terminated.as_deref());
    now.or(before)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pod status as the kubelet reports it, from `tests/fixtures/pod-status/`.
    fn fixture(name: &str) -> RunPod {
        let path = format!(
            "{}/tests/fixtures/pod-status/{name}.yaml",
            env!("CARGO_MANIFEST_DIR")
        );
        let yaml = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        serde_yaml::from_str(&yaml).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// Five minutes after the fixtures' pods started.
    fn now() -> Timestamp {
        "2026-01-01T10:05:00Z".parse().unwrap()
    }

    fn problem(name: &str) -> Option<PodProblem> {
        pod_problem(&[fixture(name)], now())
    }

    #[test]
    fn pods_the_api_server_refuses_to_make_are_the_deployments_problem() {
        // The status kube-controller-manager gave a Deployment whose priority class does not
        // exist (captured from the test cluster's).
        let deployment: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "sim-workers"},
            "status": {"conditions": [
                {"type": "Progressing", "status": "True", "reason": "NewReplicaSetCreated",
                 "message": "Created new replica set \"sim-workers-5bbb75cf9b\""},
                {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable",
                 "message": "Deployment does not have minimum availability."},
                {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
                 "message": "pods \"sim-workers-5bbb75cf9b-\" is forbidden: no PriorityClass with name nope was found"}
            ]}
        }))
        .unwrap();
        let p = creation_problem(Some(&deployment)).unwrap();
        assert_eq!(
            (p.kind, p.object.as_str(), p.reason.as_str()),
            ("Deployment", "sim-workers", "FailedCreate")
        );
        assert_eq!(
            p.message,
            "Deployment sim-workers cannot make its pods: pods \"sim-workers-5bbb75cf9b-\" is forbidden: no PriorityClass with name nope was found"
        );
        let mut fine = deployment.clone();
        fine.status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap()
            .pop();
        assert_eq!(creation_problem(Some(&fine)), None);
    }

    #[test]
    fn a_failed_pull_names_the_pull_secrets_that_do_not_exist() {
        let mut p = problem("image-pull-backoff").unwrap();
        let kubelet = p.message.clone();
        name_missing_pull_secrets(&mut p, &["registry-creds".into()], "lab");
        assert_eq!(
            p.message,
            format!(
                "{kubelet}; spec.imagePullSecrets names \"registry-creds\" that does not exist in namespace \"lab\""
            )
        );
        let mut crash = problem("crash-loop-backoff").unwrap();
        let before = crash.clone();
        name_missing_pull_secrets(&mut crash, &["registry-creds".into()], "lab");
        assert_eq!(crash, before, "only a failed pull is about pull secrets");
    }

    #[test]
    fn a_pod_no_node_takes_says_what_the_scheduler_says() {
        let mut waiting_for_its_claim = fixture("unschedulable");
        waiting_for_its_claim.status.as_mut().unwrap().unschedulable = Some(
            "0/1 nodes are available: pod has unbound immediate PersistentVolumeClaims. not found"
                .into(),
        );
        assert_eq!(pod_problem(&[waiting_for_its_claim], now()), None);
        let p = problem("unschedulable").unwrap();
        assert_eq!(p.reason, "Unschedulable");
        assert!(
            p.message.starts_with("pod sim-workers-7d9f8-abcde cannot be placed on a node: 0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector"),
            "{}",
            p.message
        );
    }

    #[test]
    fn pods_that_run_or_are_on_their_way_have_no_problem() {
        for fine in [
            "running",
            "container-creating",
            "restarted-recovered",
            "master-attempt-failed",
        ] {
            assert_eq!(problem(fine), None, "{fine}");
        }
    }

    #[test]
    fn a_missing_image_names_the_image_and_the_kubelets_error() {
        let p = problem("err-image-pull").unwrap();
        assert_eq!(p.reason, "ImagePullBackOff");
        assert_eq!(p.object, "sim-workers-7d9f8-abcde");
        assert_eq!(
            p.message,
            r#"pod sim-workers-7d9f8-abcde: container "worker" cannot pull image "models/gausian:1": rpc error: code = NotFound desc = failed to pull and unpack image "docker.io/models/gausian:1": failed to resolve reference "docker.io/models/gausian:1": not found"#
        );
        // The kubelet alternates between the two while it retries: one problem, one status.
        assert_eq!(problem("image-pull-backoff"), Some(p));
    }

    #[test]
    fn unusable_image_names_and_missing_config_say_what_the_kubelet_said() {
        let invalid = problem("invalid-image-name").unwrap();
        assert_eq!(invalid.reason, "InvalidImageName");
        assert!(invalid.message.contains(r#"container "master" has an invalid image name "Models/Gaussian:1": Failed to apply default image tag"#), "{}", invalid.message);

        let never = problem("err-image-never-pull").unwrap();
        assert_eq!(never.reason, "ErrImageNeverPull");
        assert!(
            never
                .message
                .contains("is not on the node and its pull policy is Never")
        );

        let config = problem("create-container-config-error").unwrap();
        assert_eq!(config.reason, "CreateContainerConfigError");
        assert!(
            config.message.ends_with(
                "cannot be created: couldn't find key password in Secret science/redis-pw"
            ),
            "{}",
            config.message
        );
    }

    #[test]
    fn a_crash_loop_shows_the_last_exit_not_the_back_off() {
        let p = problem("crash-loop-backoff").unwrap();
        assert_eq!(p.reason, "CrashLoopBackOff");
        assert_eq!(
            p.message,
            r#"pod sim-workers-7d9f8-abcde: container "worker" keeps exiting: Error, exit code 1 (ModuleNotFoundError: No module named 'model')"#
        );
        let oom = problem("oom-killed").unwrap();
        assert!(
            oom.message
                .ends_with("keeps exiting: OOMKilled, exit code 137"),
            "{}",
            oom.message
        );
    }

    #[test]
    fn a_command_that_cannot_start_is_a_crash_loop_naming_what_is_missing() {
        let p = problem("start-error").unwrap();
        assert_eq!(p.reason, "CrashLoopBackOff");
        assert!(
            p.message
                .contains(r#"keeps exiting: StartError, exit code 128"#)
                && p.message
                    .contains(r#"exec: "python": executable file not found"#),
            "{}",
            p.message
        );
        // In the back-off between two attempts: the same problem, byte for byte.
        let mut backing_off = fixture("start-error");
        let status = &mut backing_off
            .status
            .as_mut()
            .unwrap()
            .container_statuses
            .as_mut()
            .unwrap()[0];
        let waiting = status.state.as_mut().unwrap().waiting.as_mut().unwrap();
        waiting.reason = Some("CrashLoopBackOff".into());
        waiting.message = Some("back-off 10s restarting failed container=worker".into());
        assert_eq!(pod_problem(&[backing_off], now()), Some(p.clone()));
        // Its very first exit, before any restart: the same problem already.
        let mut first = fixture("start-error");
        let status = &mut first
            .status
            .as_mut()
            .unwrap()
            .container_statuses
            .as_mut()
            .unwrap()[0];
        status.restart_count = 0;
        status.state = status.last_state.take().map(|s| *s);
        assert_eq!(pod_problem(&[first], now()), Some(p));
    }

    #[test]
    fn a_crash_looping_container_between_back_offs_is_still_the_same_problem() {
        // Running again for 5 s after its fourth failure: not recovered yet, and described as
        // in the back-off, so the status does not flap with every restart.
        let between = problem("restarted-just-now").unwrap();
        assert_eq!(Some(between), problem("crash-loop-backoff"));
        // Still up a minute later: recovered.
        let later: Timestamp = "2026-01-01T10:06:00Z".parse().unwrap();
        assert_eq!(pod_problem(&[fixture("restarted-just-now")], later), None);
    }

    #[test]
    fn init_containers_count_and_the_first_pod_by_name_is_reported() {
        let redis = problem("redis-init-image-pull-backoff").unwrap();
        assert_eq!(redis.reason, "ImagePullBackOff");
        assert!(
            redis.message.starts_with(r#"pod sim-redis-5c4b7-qwert: container "write-acl" cannot pull image "redis:7.4-alpine": failed to pull"#),
            "{}",
            redis.message
        );

        let mut second = fixture("crash-loop-backoff");
        second.name = "sim-workers-7d9f8-zzzzz".into();
        let pods = [second, fixture("running"), fixture("err-image-pull")];
        let p = pod_problem(&pods, now()).unwrap();
        assert_eq!(
            (p.object.as_str(), p.reason.as_str()),
            ("sim-workers-7d9f8-abcde", "ImagePullBackOff"),
            "the same pods in any order give the same problem"
        );
    }

    #[test]
    fn a_failed_masters_last_exit_is_its_newest_attempts_with_the_messages_last_line() {
        let mut first = fixture("master-attempt-failed");
        let mut second = first.clone();
        first.created = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            "2026-01-01T10:00:00Z".parse().unwrap(),
        ));
        second.name = "sim-master-a1b2c".into();
        second.created = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            "2026-01-01T10:01:00Z".parse().unwrap(),
        ));
        let terminated = second
            .status
            .as_mut()
            .unwrap()
            .container_statuses
            .as_mut()
            .unwrap()[0]
            .state
            .as_mut()
            .unwrap()
            .terminated
            .as_mut()
            .unwrap();
        terminated.message = Some(
            "Traceback (most recent call last):\n  ...\nResumeError: m.db holds an unfinished run of other observed data\n\n".into(),
        );
        assert_eq!(
            last_failed_exit(&[second, first.clone()]).as_deref(),
            Some(
                "Error, exit code 1 (ResumeError: m.db holds an unfinished run of other observed data)"
            )
        );
        assert_eq!(
            last_failed_exit(&[first]).as_deref(),
            Some("Error, exit code 1")
        );
        assert_eq!(last_failed_exit(&[fixture("running")]), None);
    }

    #[test]
    fn a_pod_being_deleted_is_not_a_problem() {
        let mut pod = fixture("crash-loop-backoff");
        pod.deleting = true;
        assert_eq!(pod_problem(&[pod], now()), None);
    }
}
