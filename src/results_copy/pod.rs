//! The copy pod: the run's image with the claim mounted, locked down as the master's pod is,
//! on the master's node while the master runs; and how its start is read.

use crate::api::{AbcRun, COMPONENT_LABEL, RUN_LABEL};
use crate::resources::{
    Component, MANAGED_BY_LABEL, NAME_LABEL, POD_UID, RESULTS_DIR, container_security_context, env,
    hardened_pod_spec, tmp_mount, tmp_volume,
};
use k8s_openapi::api::core::v1::{
    Affinity, Container, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    PersistentVolumeClaimVolumeSource, Pod, PodSpec, ResourceRequirements, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};
use std::collections::BTreeMap;

/// Label of a copy pod: the run it copies from. Not [`RUN_LABEL`]: the controller watches the
/// pods that carry that one, and has nothing to do with a copy.
pub const COPY_OF_LABEL: &str = "abc-operator.dev/results-copy-of";
/// The copy pod's one container.
pub const COPY_CONTAINER: &str = "copy";
/// [`MANAGED_BY_LABEL`] of a copy pod.
const MANAGED_BY: &str = "kubectl-abc";
/// Env var holding the script (see [`script_command`]).
const SCRIPT_ENV: &str = "ABC_RESULTS_COPY_SCRIPT";
/// The copy pod's own writable folder (its `/tmp` emptyDir), where the copy is made.
const COPY_FOLDER: &str = "/tmp";

/// Label selector of the copy pods of `run`.
pub fn copy_selector(run: &str) -> String {
    format!("{COPY_OF_LABEL}={run}")
}

/// `python -c` of the script (kept in the container's env, so that no exec carries it in its
/// URL) with `args`.
pub fn script_command(args: &[&str]) -> Vec<String> {
    let boot = format!("import os; exec(os.environ[{SCRIPT_ENV:?}])");
    ["python", "-c", boot.as_str()]
        .into_iter()
        .chain(args.iter().copied())
        .map(str::to_string)
        .collect()
}

/// Where the pod makes the copy of the database `name`.
pub fn copy_path(name: &str) -> String {
    format!("{COPY_FOLDER}/{name}")
}

/// The copy pod of `run`, mounting `claim` at [`RESULTS_DIR`], pinned to `node` (the master's,
/// when its pod runs), ending by itself after `deadline_seconds` (its main process sleeps that
/// long, and `activeDeadlineSeconds` stops it in any case).
///
/// As the master's pod: the run's image and pull policy, uid [`POD_UID`], RuntimeDefault
/// seccomp, no service account token, read-only root file system, no capabilities, a writable
/// `/tmp`. The claim is mounted read-write (see the module's documentation). Owned (not
/// controlled) by the run, so that deleting the run also deletes a pod left behind.
pub fn copy_pod(run: &AbcRun, claim: &str, node: Option<&str>, deadline_seconds: i64) -> Pod {
    let name = run.name_any();
    let labels = BTreeMap::from([
        (COPY_OF_LABEL.to_string(), name.clone()),
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
        (NAME_LABEL.to_string(), "abc-results-copy".to_string()),
    ]);
    let owner = run.uid().map(|uid| OwnerReference {
        api_version: AbcRun::api_version(&()).into_owned(),
        kind: AbcRun::kind(&()).into_owned(),
        name: name.clone(),
        uid,
        controller: None,
        block_owner_deletion: None,
    });
    let container = Container {
        name: COPY_CONTAINER.into(),
        image: Some(run.spec.image.clone()),
        image_pull_policy: run.spec.image_pull_policy.clone(),
        command: Some(script_command(&["wait", &deadline_seconds.to_string()])),
        env: Some(vec![
            env(SCRIPT_ENV, super::SCRIPT),
            env("HOME", "/tmp"),
            env("PYTHONDONTWRITEBYTECODE", "1"),
        ]),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), Quantity("50m".into())),
                ("memory".to_string(), Quantity("64Mi".into())),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".to_string(),
                Quantity("256Mi".into()),
            )])),
            ..ResourceRequirements::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "results".into(),
                mount_path: RESULTS_DIR.into(),
                ..VolumeMount::default()
            },
            tmp_mount(),
        ]),
        security_context: Some(container_security_context()),
        ..Container::default()
    };
    let results = Volume {
        name: "results".into(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: claim.into(),
            read_only: None,
        }),
        ..Volume::default()
    };
    let mut spec = PodSpec {
        restart_policy: Some("Never".into()),
        active_deadline_seconds: Some(deadline_seconds),
        // The script leaves at once on SIGTERM.
        termination_grace_period_seconds: Some(5),
        affinity: node.map(on_node),
        ..hardened_pod_spec(POD_UID, vec![container], vec![results, tmp_volume()])
    };
    if let Some(security) = spec.security_context.as_mut() {
        // The master's mount made the volume's root right: no walk over every file at each copy.
        security.fs_group_change_policy = Some("OnRootMismatch".into());
    }
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}-results-copy-")),
            namespace: run.namespace(),
            labels: Some(labels),
            owner_references: owner.map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        ..Pod::default()
    }
}

/// A required node affinity to the node named `node` (its name, not a label that may differ).
fn on_node(node: &str) -> Affinity {
    Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_fields: Some(vec![NodeSelectorRequirement {
                        key: "metadata.name".into(),
                        operator: "In".into(),
                        values: Some(vec![node.into()]),
                    }]),
                    ..NodeSelectorTerm::default()
                }],
            }),
            ..NodeAffinity::default()
        }),
        ..Affinity::default()
    }
}

/// Label selector of the run's master pods.
pub fn master_selector(run: &str) -> String {
    format!(
        "{RUN_LABEL}={run},{COMPONENT_LABEL}={}",
        Component::Master.as_str()
    )
}

/// The node of the run's master pod that holds the claim now: one placed on a node, not
/// finished and not being deleted (a starting pod has its volume attached already).
pub fn master_node(pods: &[Pod]) -> Option<String> {
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            matches!(phase, Some("Running" | "Pending"))
        })
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .next()
}

/// How far the copy pod is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodStart {
    /// Its container runs: the copy can begin.
    Running,
    /// Not yet, and why (the scheduler's message, the container's waiting reason).
    Waiting(String),
    /// It will not start, and why.
    Failed(String),
}

/// Waiting reasons of a container that does not get better by waiting.
const HOPELESS: [&str; 6] = [
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

pub fn pod_start(pod: &Pod) -> PodStart {
    let Some(status) = pod.status.as_ref() else {
        return PodStart::Waiting("not yet seen by the scheduler".into());
    };
    if let Some(phase @ ("Succeeded" | "Failed")) = status.phase.as_deref() {
        let why = [status.reason.as_deref(), status.message.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(": ");
        return PodStart::Failed(format!("it ended ({phase}) {why}").trim().to_string());
    }
    if let Some(unscheduled) = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
    {
        let message = unscheduled
            .message
            .clone()
            .or_else(|| unscheduled.reason.clone())
            .unwrap_or_default();
        return PodStart::Waiting(format!("not scheduled: {message}"));
    }
    let container = status
        .container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == COPY_CONTAINER);
    let state = container.and_then(|c| c.state.as_ref());
    if state.is_some_and(|s| s.running.is_some()) {
        return PodStart::Running;
    }
    if let Some(waiting) = state.and_then(|s| s.waiting.as_ref()) {
        let reason = waiting.reason.clone().unwrap_or_default();
        let text = match &waiting.message {
            Some(message) => format!("{reason}: {message}"),
            None => reason.clone(),
        };
        if HOPELESS.contains(&reason.as_str()) {
            return PodStart::Failed(text);
        }
        return PodStart::Waiting(text);
    }
    if let Some(done) = state.and_then(|s| s.terminated.as_ref()) {
        return PodStart::Failed(format!(
            "its container ended: {} (exit code {})",
            done.reason.as_deref().unwrap_or("terminated"),
            done.exit_code
        ));
    }
    PodStart::Waiting(status.phase.clone().unwrap_or_else(|| "Pending".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::test_support::run;

    const MASTER: &str = "image: models/gaussian:1\nimagePullPolicy: IfNotPresent\nmaster:\n  command: [python, m.py]\n";

    fn pod(yaml: &str) -> Pod {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn the_copy_pod_is_locked_down_like_the_masters_and_mounts_the_claim() {
        let run = run(MASTER);
        let copy = copy_pod(&run, "gaussian-results", None, 1800);
        let master = crate::resources::master_job(&run).unwrap().unwrap();
        let master = master.spec.unwrap().template.spec.unwrap();
        let spec = copy.spec.clone().unwrap();
        let mut security = spec.security_context.clone().unwrap();
        assert_eq!(
            security.fs_group_change_policy.take().as_deref(),
            Some("OnRootMismatch")
        );
        assert_eq!(Some(security), master.security_context);
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert_eq!(spec.enable_service_links, Some(false));
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert_eq!(spec.active_deadline_seconds, Some(1800));
        assert_eq!(spec.affinity, None);
        let c = &spec.containers[0];
        assert_eq!(c.image.as_deref(), Some("models/gaussian:1"));
        assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
        assert_eq!(c.security_context, master.containers[0].security_context);
        let command = c.command.clone().unwrap();
        assert_eq!(command[..2], ["python", "-c"]);
        assert_eq!(command[3..], ["wait", "1800"]);
        let mounts = c.volume_mounts.clone().unwrap();
        let results = mounts.iter().find(|m| m.mount_path == RESULTS_DIR).unwrap();
        assert_eq!(
            results.read_only, None,
            "read-write: a hot journal is rolled back"
        );
        assert!(mounts.iter().any(|m| m.mount_path == "/tmp"));
        let volumes = spec.volumes.unwrap();
        let claim = volumes
            .iter()
            .find(|v| v.name == results.name)
            .and_then(|v| v.persistent_volume_claim.clone())
            .unwrap();
        assert_eq!(claim.claim_name, "gaussian-results");
        let tmp = volumes.iter().find(|v| v.name == "tmp").unwrap();
        assert!(tmp.empty_dir.is_some());
    }

    #[test]
    fn the_copy_pod_is_labelled_for_itself_and_owned_not_controlled_by_the_run() {
        let copy = copy_pod(&run(MASTER), "c", None, 60);
        let meta = copy.metadata;
        assert_eq!(
            meta.generate_name.as_deref(),
            Some("gaussian-results-copy-")
        );
        assert_eq!(meta.namespace.as_deref(), Some("science"));
        let labels = meta.labels.unwrap();
        assert_eq!(labels[COPY_OF_LABEL], "gaussian");
        assert!(
            !labels.contains_key(RUN_LABEL),
            "the controller watches pods with the run label"
        );
        let owner = &meta.owner_references.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("AbcRun", "gaussian")
        );
        assert_eq!(owner.controller, None);
        assert_eq!(
            copy_selector("gaussian"),
            "abc-operator.dev/results-copy-of=gaussian"
        );
    }

    #[test]
    fn the_copy_pod_goes_to_the_masters_node_by_name() {
        let copy = copy_pod(&run(MASTER), "c", Some("node-7"), 60);
        let affinity = copy.spec.unwrap().affinity.unwrap();
        let terms = affinity
            .node_affinity
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .unwrap()
            .node_selector_terms;
        let field = &terms[0].match_fields.as_ref().unwrap()[0];
        assert_eq!(field.key, "metadata.name");
        assert_eq!(field.operator, "In");
        assert_eq!(field.values.as_deref(), Some(&["node-7".to_string()][..]));
    }

    #[test]
    fn the_script_travels_in_the_env_and_each_command_names_a_subcommand() {
        let copy = copy_pod(&run(MASTER), "c", None, 60);
        let c = &copy.spec.unwrap().containers[0];
        let script = crate::resources::test_support::env_value(c, SCRIPT_ENV).unwrap();
        assert_eq!(script, super::super::SCRIPT);
        let command = script_command(&["list", RESULTS_DIR]);
        assert!(command[2].contains(SCRIPT_ENV), "{command:?}");
        assert!(command[2].len() < 100, "no script in an exec's URL");
        assert_eq!(command[3..], ["list", "/results"]);
        assert_eq!(copy_path("gaussian.db"), "/tmp/gaussian.db");
    }

    #[test]
    fn the_masters_node_is_that_of_its_placed_unfinished_pod() {
        let pods = [
            pod(
                "metadata: {name: old}\nspec: {containers: [], nodeName: n1}\nstatus: {phase: Failed}\n",
            ),
            pod(
                "metadata: {name: gone, deletionTimestamp: '2026-01-01T00:00:00Z'}\nspec: {containers: [], nodeName: n2}\nstatus: {phase: Running}\n",
            ),
            pod(
                "metadata: {name: now}\nspec: {containers: [], nodeName: n3}\nstatus: {phase: Running}\n",
            ),
        ];
        assert_eq!(master_node(&pods).as_deref(), Some("n3"));
        assert_eq!(master_node(&pods[..2]), None);
        let unplaced =
            pod("metadata: {name: p}\nspec: {containers: []}\nstatus: {phase: Pending}\n");
        assert_eq!(master_node(&[unplaced]), None);
        assert_eq!(
            master_selector("gaussian"),
            "abc-operator.dev/run=gaussian,abc-operator.dev/component=master"
        );
    }

    #[test]
    fn a_pods_start_says_the_schedulers_message_and_gives_up_on_what_waiting_cannot_fix() {
        let unscheduled = pod(
            "metadata: {name: p}\nstatus:\n  phase: Pending\n  conditions: [{type: PodScheduled, status: 'False', reason: Unschedulable, message: '0/1 nodes are available: 1 node(s) were unschedulable.'}]\n",
        );
        assert_eq!(
            pod_start(&unscheduled),
            PodStart::Waiting(
                "not scheduled: 0/1 nodes are available: 1 node(s) were unschedulable.".into()
            )
        );
        let pulling = pod(
            "metadata: {name: p}\nstatus:\n  phase: Pending\n  containerStatuses: [{name: copy, image: i, imageID: '', ready: false, restartCount: 0, state: {waiting: {reason: ImagePullBackOff, message: 'Back-off pulling image \"i\"'}}}]\n",
        );
        assert_eq!(
            pod_start(&pulling),
            PodStart::Failed("ImagePullBackOff: Back-off pulling image \"i\"".into())
        );
        let creating = pod(
            "metadata: {name: p}\nstatus:\n  phase: Pending\n  containerStatuses: [{name: copy, image: i, imageID: '', ready: false, restartCount: 0, state: {waiting: {reason: ContainerCreating}}}]\n",
        );
        assert_eq!(
            pod_start(&creating),
            PodStart::Waiting("ContainerCreating".into())
        );
        let running = pod(
            "metadata: {name: p}\nstatus:\n  phase: Running\n  containerStatuses: [{name: copy, image: i, imageID: '', ready: true, restartCount: 0, state: {running: {}}}]\n",
        );
        assert_eq!(pod_start(&running), PodStart::Running);
        let expired = pod(
            "metadata: {name: p}\nstatus: {phase: Failed, reason: DeadlineExceeded, message: 'Pod was active on the node longer than the specified deadline'}\n",
        );
        let PodStart::Failed(why) = pod_start(&expired) else {
            panic!("an ended pod does not start");
        };
        assert!(why.contains("DeadlineExceeded"), "{why}");
    }
}
