//! The master Job: the user's script running `ABCSMC.run` against the run's Redis.
//!
//! A Job's pod template is immutable once created: this builder is deterministic (same spec,
//! same template) so re-applying an unchanged run is a no-op. A changed `spec.master` cannot
//! be applied to an existing Job: the controller keeps the Job's template and says so
//! ([`POD_TEMPLATE_ANNOTATION`]).

use super::{
    BuildError, Component, ENTRYPOINT_DIR, POD_UID, container_security_context, env,
    hardened_pod_spec, object_meta, operator_files_mount, operator_files_volume, pod_metadata,
    redis_env, tmp_mount, tmp_volume, with_pod_settings,
};
use crate::api::{AbcRun, MASTER_RUNNING, Phase};
use crate::protocol::worker_env;
use crate::protocol::{REDIS_LOST_EXIT_CODE, RESUME_REFUSED_EXIT_CODE};
use k8s_openapi::api::batch::v1::{
    Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement,
    PodFailurePolicyOnPodConditionsPattern, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, PersistentVolumeClaimVolumeSource, PodSpec, PodTemplateSpec,
    Volume, VolumeMount,
};
use kube::ResourceExt;
use std::collections::BTreeMap;

/// Where the master's results volume is mounted (`ABC_RESULTS_DIR`).
pub const RESULTS_DIR: &str = "/results";

/// Name of the master Job.
pub fn master_job_name(run: &AbcRun) -> String {
    format!("{}-master", run.name_any())
}

/// A stopped run whose master did not end by itself (one that cannot be asked to stop, see
/// `controller::decide::stop_stage`): its Job is suspended, which ends its pod. Not a Job that
/// has finished (its MasterRunning condition says so), which has nothing left to end.
fn master_to_end(run: &AbcRun) -> bool {
    let Some(status) = &run.status else {
        return false;
    };
    status.phase == Some(Phase::Stopped)
        && !status.conditions.iter().any(|c| {
            c.type_ == MASTER_RUNNING && matches!(c.reason.as_str(), "Succeeded" | "Failed")
        })
}

/// The master Job (`{run}-master`), or `None` when `spec.master` is unset.
///
/// `restartPolicy: Never` with `backoffLimit` retries; `suspend` follows `spec.suspend`;
/// a pod disrupted by the cluster (eviction, preemption, node drain) does not count against
/// `backoffLimit`.
pub fn master_job(run: &AbcRun) -> Result<Option<Job>, BuildError> {
    let Some(master) = &run.spec.master else {
        return Ok(None);
    };
    let ours = [
        redis_env(run),
        vec![
            env("ABC_RESULTS_DIR", RESULTS_DIR),
            // `import abc_operator` (new-or-resume); a user's PYTHONPATH goes after it.
            env("PYTHONPATH", ENTRYPOINT_DIR),
            env("PYTHONUNBUFFERED", "1"),
            env("HOME", "/tmp"),
            env("MPLCONFIGDIR", "/tmp"),
        ],
    ]
    .concat();
    let results = match super::results_claim_name(run) {
        Some(claim_name) => Volume {
            name: "results".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name,
                read_only: None,
            }),
            ..Volume::default()
        },
        None => Volume {
            name: "results".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
    };
    let container = Container {
        name: MASTER_CONTAINER.into(),
        image: Some(run.spec.image.clone()),
        image_pull_policy: run.spec.image_pull_policy.clone(),
        command: Some(master.command.clone()),
        args: (!master.args.is_empty()).then(|| master.args.clone()),
        env: Some(worker_env::merge(ours, master.env.iter().cloned())),
        resources: master.resources.clone(),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "results".into(),
                mount_path: RESULTS_DIR.into(),
                ..VolumeMount::default()
            },
            operator_files_mount(),
            tmp_mount(),
        ]),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        security_context: Some(container_security_context()),
        ..Container::default()
    };
    let mut meta = object_meta(run, master_job_name(run), Component::Master)?;
    let template = PodTemplateSpec {
        metadata: Some(pod_metadata(
            meta.labels.clone(),
            BTreeMap::new(),
            &master.pod.placement,
        )),
        spec: Some(with_pod_settings(
            run,
            PodSpec {
                restart_policy: Some("Never".into()),
                ..hardened_pod_spec(
                    POD_UID,
                    vec![container],
                    vec![results, operator_files_volume(run), tmp_volume()],
                )
            },
            &master.pod,
        )),
    };
    meta.annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(POD_TEMPLATE_ANNOTATION.into(), sha256_of(&template));
    Ok(Some(Job {
        spec: Some(JobSpec {
            backoff_limit: Some(master.backoff_limit),
            active_deadline_seconds: master.active_deadline_seconds,
            // its stored generations are kept
            suspend: Some(run.spec.suspend || master_to_end(run)),
            pod_failure_policy: Some(PodFailurePolicy {
                rules: vec![
                    PodFailurePolicyRule {
                        action: "Ignore".into(),
                        on_pod_conditions: Some(vec![PodFailurePolicyOnPodConditionsPattern {
                            type_: "DisruptionTarget".into(),
                            status: Some("True".into()),
                        }]),
                        on_exit_codes: None,
                    },
                    // The abc_operator module's exit when the run's Redis went away: not the
                    // master's fault; its retry resumes.
                    on_master_exit("Ignore", REDIS_LOST_EXIT_CODE),
                    // Its exit when the results database cannot be continued: every retry
                    // would meet the same database.
                    on_master_exit("FailJob", RESUME_REFUSED_EXIT_CODE),
                ],
            }),
            template,
            ..JobSpec::default()
        }),
        metadata: meta,
        ..Job::default()
    }))
}

/// The hash of the pod template the master Job was built with, on the Job. A Job's pod template
/// cannot change once the Job exists: the controller applies an existing Job with the template
/// it has and, when this hash says the run now builds another one (`spec.master` changed, or a
/// new operator version builds it differently), says so.
pub const POD_TEMPLATE_ANNOTATION: &str = "abc-operator.dev/pod-template-sha256";

fn sha256_of(template: &PodTemplateSpec) -> String {
    use sha2::{Digest, Sha256};
    // Typed structs with sorted maps: the same template always gives the same bytes.
    let bytes = serde_json::to_vec(template).unwrap_or_default();
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The master Job's one container.
const MASTER_CONTAINER: &str = "master";

/// A pod failure policy rule for one exit code of the master container.
fn on_master_exit(action: &str, exit_code: i32) -> PodFailurePolicyRule {
    PodFailurePolicyRule {
        action: action.into(),
        on_pod_conditions: None,
        on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
            container_name: Some(MASTER_CONTAINER.into()),
            operator: "In".into(),
            values: vec![exit_code],
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::test_support::{env_value, master as job, minimal, run};

    #[test]
    fn no_master_no_job() {
        assert!(master_job(&minimal()).unwrap().is_none());
    }

    #[test]
    fn runs_the_users_command_once_with_redis_and_results_dir() {
        let job = job(
            "image: img\nmaster:\n  command: [python, gaussian.py]\n  args: [--pop, '100']\n  backoffLimit: 0\n  activeDeadlineSeconds: 3600\n",
        );
        assert_eq!(job.metadata.name.as_deref(), Some("gaussian-master"));
        let spec = job.spec.unwrap();
        assert_eq!(spec.backoff_limit, Some(0));
        assert_eq!(spec.active_deadline_seconds, Some(3600));
        assert_eq!(spec.suspend, Some(false));
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        let c = &pod.containers[0];
        assert_eq!(c.command.as_ref().unwrap(), &["python", "gaussian.py"]);
        assert_eq!(c.args.as_ref().unwrap(), &["--pop", "100"]);
        assert_eq!(
            env_value(c, "ABC_REDIS_HOST").as_deref(),
            Some("gaussian-redis")
        );
        assert_eq!(
            env_value(c, "ABC_RESULTS_DIR").as_deref(),
            Some(RESULTS_DIR)
        );
        assert!(
            c.env
                .as_ref()
                .unwrap()
                .iter()
                .all(|e| e.name != "ABC_WORKER_ID")
        );
        let mount = c
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.mount_path == RESULTS_DIR);
        assert!(mount.is_some());
    }

    #[test]
    fn the_master_can_import_the_abc_operator_module() {
        let job = job("image: img\nmaster:\n  command: [python, gaussian.py]\n");
        let pod = job.spec.unwrap().template.spec.unwrap();
        let c = &pod.containers[0];
        assert_eq!(env_value(c, "PYTHONPATH").as_deref(), Some(ENTRYPOINT_DIR));
        // With a PYTHONPATH of the user's, still first.
        let with_theirs = self::job(
            "image: img\nmaster:\n  command: [m]\n  env: [{name: PYTHONPATH, value: /models}]\n",
        );
        let theirs = &with_theirs.spec.unwrap().template.spec.unwrap().containers[0];
        assert_eq!(
            env_value(theirs, "PYTHONPATH"),
            Some(format!("{ENTRYPOINT_DIR}:/models"))
        );
        let mount = c
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == ENTRYPOINT_DIR)
            .expect("the module is mounted");
        assert_eq!(mount.read_only, Some(true));
        let volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount.name)
            .unwrap();
        let config_map = volume.config_map.as_ref().unwrap();
        // The ConfigMap the run owns, which holds the module under its file name.
        let owned = crate::resources::worker_entrypoint_config_map(&run("image: img")).unwrap();
        assert_eq!(Some(&config_map.name), owned.metadata.name.as_ref());
        assert!(owned.data.unwrap().contains_key("abc_operator.py"));
    }

    #[test]
    fn results_live_on_the_runs_claim_unless_told_otherwise() {
        let volume = |yaml: &str| {
            let pod = job(yaml).spec.unwrap().template.spec.unwrap();
            pod.volumes
                .unwrap()
                .into_iter()
                .find(|v| v.name == "results")
                .unwrap()
        };
        let claim_of = |v: Volume| v.persistent_volume_claim.map(|c| c.claim_name);
        let made = volume("image: i\nmaster: {command: [m]}\n");
        assert_eq!(claim_of(made).as_deref(), Some("gaussian-results"));
        let own = volume("image: i\nmaster: {command: [m], resultsClaimName: abc-results}\n");
        assert_eq!(claim_of(own).as_deref(), Some("abc-results"));
        let ephemeral = volume("image: i\nmaster: {command: [m], results: {volume: EmptyDir}}\n");
        assert!(ephemeral.empty_dir.is_some());
    }

    #[test]
    fn suspended_run_holds_the_job() {
        let job = job("image: i\nsuspend: true\nmaster: {command: [m]}\n");
        assert_eq!(job.spec.unwrap().suspend, Some(true));
    }

    #[test]
    fn a_stopped_runs_master_still_running_is_ended_and_a_finished_one_left_alone() {
        let stopped = |master_reason: &str| {
            let mut run = crate::resources::test_support::in_phase(
                run("image: i\nstop: true\nmaster: {command: [m]}\n"),
                Phase::Stopped,
            );
            run.status.as_mut().unwrap().conditions =
                vec![serde_yaml::from_str(&format!(
                "{{type: MasterRunning, status: 'False', reason: {master_reason}, message: m, \
                 lastTransitionTime: '2026-12-06T22:00:00Z'}}"
            ))
            .unwrap()];
            master_job(&run).unwrap().unwrap().spec.unwrap().suspend
        };
        assert_eq!(stopped("Running"), Some(true));
        assert_eq!(stopped("Succeeded"), Some(false));
        assert_eq!(stopped("Failed"), Some(false));
        let stopping = job("image: i\nstop: true\nmaster: {command: [m]}\n");
        assert_eq!(stopping.spec.unwrap().suspend, Some(false));
    }

    #[test]
    fn disruptions_and_a_lost_redis_do_not_use_up_retries_and_a_refused_database_fails_at_once() {
        let job = job("image: i\nmaster: {command: [m]}\n");
        let spec = job.spec.unwrap();
        let container = spec.template.spec.as_ref().unwrap().containers[0]
            .name
            .clone();
        let rules = spec.pod_failure_policy.unwrap().rules;
        assert_eq!(rules[0].action, "Ignore");
        assert_eq!(
            rules[0].on_pod_conditions.as_ref().unwrap()[0].type_,
            "DisruptionTarget"
        );
        let on_exit = |code: i32| {
            let rule = rules
                .iter()
                .find(|r| {
                    r.on_exit_codes.as_ref().is_some_and(|e| {
                        e.operator == "In"
                            && e.values == [code]
                            && e.container_name.as_ref() == Some(&container)
                    })
                })
                .unwrap_or_else(|| panic!("no rule for the master's exit code {code}"));
            rule.action.as_str()
        };
        assert_eq!(on_exit(75), "Ignore");
        assert_eq!(on_exit(65), "FailJob");
    }

    #[test]
    fn users_cannot_redirect_the_results_or_the_redis() {
        let job = job(
            "image: i\nmaster:\n  command: [m]\n  env: [{name: ABC_RESULTS_DIR, value: /elsewhere}, {name: ABC_REDIS_HOST, value: x}, {name: SEED, value: '1'}]\n",
        );
        let c = &job.spec.unwrap().template.spec.unwrap().containers[0];
        assert_eq!(
            env_value(c, "ABC_RESULTS_DIR").as_deref(),
            Some(RESULTS_DIR)
        );
        assert_eq!(
            env_value(c, "ABC_REDIS_HOST").as_deref(),
            Some("gaussian-redis")
        );
        assert_eq!(env_value(c, "SEED").as_deref(), Some("1"));
    }
}
