//! Status of an AbcRun, computed from observed state only (never from what was just written),
//! so that the same cluster state always gives the same status and an unchanged run is not
//! written to.

use super::observe::{MasterState, Observed, StopStage};
use crate::api::{
    AbcRun, AbcRunStatus, InferenceStatus, MasterStartOutcome, MasterStartStatus, ParameterStatus,
    Phase, Progress, RedisInstance, Resumes,
};
use crate::protocol::inference::{GenerationRecord, QUANTILES};
use crate::protocol::{MasterStart, Resumed};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

pub use crate::api::{DEGRADED, MASTER_RUNNING, REDIS_READY, WORKERS_READY};

/// The phase a run is in, given what was observed.
pub fn phase(run: &AbcRun, observed: &Observed) -> Phase {
    let before = run.status.as_ref().and_then(|s| s.phase);
    match &observed.master {
        // a master that ended because the run was asked to stop ended a stopped run; one that
        // had succeeded before stays succeeded
        Some(MasterState::Succeeded)
            if observed.stop.is_some() && before != Some(Phase::Succeeded) =>
        {
            return Phase::Stopped;
        }
        Some(MasterState::Succeeded) => return Phase::Succeeded,
        Some(MasterState::Failed(_)) => return Phase::Failed,
        _ => {}
    }
    if run.spec.suspend {
        return Phase::Suspended;
    }
    if observed.stop == Some(StopStage::Stopped) {
        return Phase::Stopped;
    }
    let master_ok = !matches!(observed.master, Some(MasterState::Pending));
    if observed.redis_ready && observed.workers_ready > 0 && master_ok {
        Phase::Running
    } else {
        Phase::Pending
    }
}

/// A condition's verdict: whether it holds, why, and the message a user reads.
struct Verdict {
    ok: bool,
    reason: String,
    message: String,
}

fn verdict(ok: bool, reason: &str, message: impl Into<String>) -> Verdict {
    Verdict {
        ok,
        reason: reason.to_string(),
        message: message.into(),
    }
}

/// The full status for `observed`, keeping transition times of conditions whose status did not
/// change (so a steady run produces a byte-identical status).
pub fn compute(run: &AbcRun, observed: &Observed, now: Timestamp) -> AbcRunStatus {
    let previous = run.status.clone().unwrap_or_default();
    let generation = run.metadata.generation;
    let phase = phase(run, observed);
    let redis = redis_instance(previous.redis.clone(), observed.redis_run_id.as_deref());
    let last_master_start = observed
        .master_start
        .as_ref()
        .map(master_start_status)
        .or(previous.last_master_start.clone());

    let verdicts = [
        Some((REDIS_READY, redis_ready(run, observed, redis.as_ref()))),
        Some((WORKERS_READY, workers_ready(observed))),
        master_running(observed, last_master_start.as_ref()).map(|v| (MASTER_RUNNING, v)),
        Some((
            DEGRADED,
            degraded_condition(observed, last_master_start.as_ref()),
        )),
    ];
    let conditions = verdicts
        .into_iter()
        .flatten()
        .map(|(type_, v)| {
            condition(
                &previous.conditions,
                type_,
                v.ok,
                &v.reason,
                v.message,
                generation,
                now,
            )
        })
        .collect();

    AbcRunStatus {
        phase: Some(phase),
        conditions,
        observed_generation: generation,
        replicas: observed.workers_replicas,
        ready_replicas: observed.workers_ready,
        selector: Some(observed.selector.clone()),
        workers: Some(format!(
            "{}/{}",
            observed.workers_ready, observed.workers_desired
        )),
        progress: progress(previous.progress, observed, now),
        lost_workers: observed.lost_workers,
        resumes: resumes(previous.resumes, observed.resumed.as_ref()),
        redis,
        last_master_start,
        results: observed.results.clone(),
        inference: inference(run, previous.inference, observed),
        idle_since: idle_since(run, observed, now),
    }
}

/// Since when the run's Redis has held no analysis, for a run with `idleTimeoutSeconds`: kept
/// while it stays so (or is not read), gone when a master samples.
fn idle_since(run: &AbcRun, observed: &Observed, now: Timestamp) -> Option<String> {
    run.spec.idle_timeout_seconds?;
    let known = observed.idle_since.clone();
    match observed.analysis {
        Some(true) => None,
        Some(false) => known.or_else(|| Some(now.to_string())),
        None => known,
    }
}

/// Parameters whose marginal the status shows (the records hold more).
pub const STATUS_PARAMETERS: usize = 8;

/// Why a run that has stored a generation has no figures.
pub const NO_RECORDS: &str = "the master records no generations (it does not run its analysis \
    through abc_operator.run), so the status shows execution only";

/// The inference figures: the latest record read in this reconcile, else those held. A run
/// sampling generation 1 or later has stored generation 0, whose record the `abc_operator`
/// module writes before the next generation starts: none means the master does not record.
fn inference(
    run: &AbcRun,
    previous: Option<InferenceStatus>,
    observed: &Observed,
) -> Option<InferenceStatus> {
    let mut inference = match &observed.records {
        Some(read) => {
            let mut figures = read
                .latest()
                .map(figures_of)
                .or(previous)
                .unwrap_or_default();
            figures.generations = read.recorded;
            figures.records_config_map = Some(crate::resources::records_config_map_name(run));
            figures.message = read
                .problem
                .as_ref()
                .map(|p| format!("some generation records could not be read: {p}"));
            Some(figures)
        }
        None => previous,
    };
    let sampling_later = observed
        .progress
        .as_ref()
        .and_then(|p| p.generation)
        .is_some_and(|t| t >= 1);
    if sampling_later && inference.as_ref().is_none_or(|i| i.generations == 0) {
        inference.get_or_insert_default().message = Some(NO_RECORDS.into());
    }
    inference
}

/// The status' figures of one generation record.
pub fn figures_of(record: &GenerationRecord) -> InferenceStatus {
    let quantile = |q: &[Option<f64>], i: usize| q.get(i).copied().flatten();
    InferenceStatus {
        generation: Some(record.t),
        epsilon: record.epsilon,
        acceptance_rate: record.acceptance_rate,
        effective_sample_size: record.ess,
        evaluations: record.evaluations,
        accepted: record.accepted,
        wall_time_seconds: record.wall_time_seconds,
        time: Some(record.time.clone()),
        parameters: record
            .parameters
            .iter()
            .take(STATUS_PARAMETERS)
            .map(|p| ParameterStatus {
                name: p.name.clone(),
                mean: p.mean,
                sd: p.sd,
                q05: quantile(&p.quantiles, 0),
                q95: quantile(&p.quantiles, QUANTILES.len() - 1),
            })
            .collect(),
        parameters_total: record.parameters_total as i64,
        ..InferenceStatus::default()
    }
}

/// The progress read from Redis, with its acceptances and the time it last moved.
fn progress(previous: Option<Progress>, observed: &Observed, now: Timestamp) -> Option<Progress> {
    // Redis without an analysis (pyABC clears its keys when a run ends, and between
    // generations) does not wipe the progress seen last: a finished run keeps where it ended.
    let had_progress = previous.as_ref().is_some_and(|p| p.generation.is_some());
    let progress = observed
        .progress
        .clone()
        .filter(|p| p.generation.is_some() || !had_progress);
    let progress = progress.map(|mut p| {
        p.acceptances = Some(format!("{}/{}", p.accepted, p.required));
        // Progress time moves only when generation or acceptances move.
        let same = previous.as_ref().is_some_and(|old| {
            old.generation == p.generation
                && old.accepted == p.accepted
                && old.analysis_id == p.analysis_id
        });
        p.last_progress_time = if same {
            previous
                .as_ref()
                .and_then(|old| old.last_progress_time.clone())
        } else {
            Some(now.to_string())
        };
        p
    });

    // Keep the last progress seen when Redis is briefly unreachable or the run is over.
    progress.or(previous)
}

/// RedisReady says whether Redis runs (its pod is ready, or the external one answered);
/// whether the operator can read it is Degraded's business.
fn redis_ready(run: &AbcRun, observed: &Observed, redis: Option<&RedisInstance>) -> Verdict {
    let master_finished = observed
        .master
        .as_ref()
        .is_some_and(MasterState::is_finished);
    match (
        observed.redis_ready,
        &observed.redis_problem,
        &observed.redis_pod_problem,
    ) {
        (false, _, _) if master_finished && run.spec.redis.external.is_none() => verdict(
            false,
            "ScaledDown",
            "the master has finished; the run's Redis is scaled to zero",
        ),
        (true, _, _) if redis_lost(redis, observed) => verdict(
            false,
            "RedisLost",
            format!(
                "the run's Redis restarted ({} restart(s) so far) and lost the generation in \
                 progress; waiting for the master to start again on it and resume from its \
                 results database",
                redis.map_or(0, |r| r.restarts)
            ),
        ),
        (true, _, _) => verdict(true, "RedisReady", "Redis is ready"),
        (false, Some(problem), _) => verdict(false, "RedisUnavailable", problem.clone()),
        (false, None, Some(pod)) => verdict(false, &pod.reason, pod.message.clone()),
        (false, None, None) => verdict(
            false,
            "RedisStarting",
            "waiting for the Redis pod to become ready",
        ),
    }
}

fn workers_ready(observed: &Observed) -> Verdict {
    match &observed.worker_pod_problem {
        // Also with enough ready workers: a rollout of a new image is stuck.
        Some(pod) if observed.workers_desired > 0 => {
            verdict(false, &pod.reason, pod.message.clone())
        }
        // Nothing to be ready (not "AllReady"); one message whatever is still shutting down,
        // so that a scale-down rewrites nothing.
        _ if observed.workers_desired == 0 => verdict(
            false,
            "ScaledDown",
            "no worker pods are wanted: the run is finished, stopped or suspended, or scaled to 0",
        ),
        _ => verdict(
            observed.workers_ready >= observed.workers_desired,
            if observed.workers_ready >= observed.workers_desired {
                "AllReady"
            } else {
                "Scaling"
            },
            format!(
                "{}/{} worker pods ready",
                observed.workers_ready, observed.workers_desired
            ),
        ),
    }
}

/// MasterRunning, for a run with a master.
fn master_running(
    observed: &Observed,
    last_master_start: Option<&MasterStartStatus>,
) -> Option<Verdict> {
    let master = observed.master.as_ref()?;
    Some(match (master, &observed.master_pod_problem) {
        (MasterState::Pending | MasterState::Running, Some(pod)) => {
            verdict(false, &pod.reason, pod.message.clone())
        }
        (MasterState::Pending, None) => {
            verdict(false, "Pending", "the master Job has no running pod yet")
        }
        (MasterState::Running, None) => verdict(true, "Running", "the master is sampling"),
        (MasterState::Succeeded, _) => {
            verdict(false, "Succeeded", "the master finished successfully")
        }
        (MasterState::Failed(why), _) => verdict(
            false,
            "Failed",
            master_failure(why, last_master_start, observed),
        ),
    })
}

/// Degraded: true with the problem found, if any.
fn degraded_condition(
    observed: &Observed,
    last_master_start: Option<&MasterStartStatus>,
) -> Verdict {
    match degraded(observed, last_master_start) {
        Some((reason, why)) => verdict(true, &reason, why),
        None => verdict(false, "Healthy", "no problem found"),
    }
}

/// The run's Redis restarted and lost pyABC's state, and no master has started on the new
/// server yet: none recorded its start there, and no analysis is in progress (a master
/// without the `abc_operator` module records nothing, but sampling again sets one). Until
/// then no generation can progress.
fn redis_lost(redis: Option<&RedisInstance>, observed: &Observed) -> bool {
    let restarted = redis.is_some_and(|r| r.restarts > 0);
    let master_due = matches!(
        observed.master,
        Some(MasterState::Pending | MasterState::Running)
    );
    let sampling = observed
        .progress
        .as_ref()
        .is_some_and(|p| p.analysis_id.is_some());
    restarted
        && master_due
        && observed.redis_run_id.is_some()
        && observed.master_start.is_none()
        && !sampling
}

fn master_start_status(start: &MasterStart) -> MasterStartStatus {
    MasterStartStatus {
        outcome: start.outcome.into(),
        cause: start.cause.clone(),
        time: start.at.clone(),
        module_version: start.module_version.clone(),
    }
}

/// Why the master Job failed, with the cause where it is known: the database its last start
/// refused, else its container's last exit.
fn master_failure(
    job_reason: &str,
    start: Option<&MasterStartStatus>,
    observed: &Observed,
) -> String {
    match (start, &observed.master_exit) {
        (Some(start), _) if start.outcome == MasterStartOutcome::Refused => format!(
            "the master failed ({job_reason}): it could not use its results database: {}",
            start.cause
        ),
        (_, Some(exit)) => format!("the master failed ({job_reason}); its last exit: {exit}"),
        _ => format!("the master failed: {job_reason}"),
    }
}

/// Counts a new Redis server (another `run_id` than the one last read) as a restart.
fn redis_instance(previous: Option<RedisInstance>, run_id: Option<&str>) -> Option<RedisInstance> {
    let Some(run_id) = run_id else {
        return previous;
    };
    match previous {
        Some(p) if p.run_id == run_id => Some(p),
        Some(p) => Some(RedisInstance {
            run_id: run_id.to_string(),
            restarts: p.restarts + 1,
        }),
        None => Some(RedisInstance {
            run_id: run_id.to_string(),
            restarts: 0,
        }),
    }
}

/// Counts a resume Redis holds that the status has not counted yet (told apart by its time).
fn resumes(previous: Option<Resumes>, seen: Option<&Resumed>) -> Option<Resumes> {
    let Some(seen) = seen else { return previous };
    let counted = previous.as_ref().is_some_and(|p| p.last_time == seen.at);
    if counted {
        return previous;
    }
    Some(Resumes {
        count: previous.map_or(0, |p| p.count) + 1,
        last_from_generation: seen.from_generation,
        last_time: seen.at.clone(),
    })
}

/// The reason and message of the run's Degraded condition, if something is wrong. A finished
/// master ends the run, so pod problems matter only while it has not.
fn degraded(
    observed: &Observed,
    last_master_start: Option<&MasterStartStatus>,
) -> Option<(String, String)> {
    if let Some(problem) = &observed.redis_problem {
        return Some(("RedisUnavailable".into(), problem.clone()));
    }
    match &observed.master {
        Some(MasterState::Failed(why)) => {
            let message = master_failure(why, last_master_start, observed);
            return Some(("MasterFailed".into(), message));
        }
        Some(MasterState::Succeeded) => return None,
        _ => {}
    }
    if let Some(problem) = &observed.results_problem {
        return Some(problem.clone());
    }
    let pod = observed.pod_problem()?;
    if observed.workers_desired == 0 && observed.worker_pod_problem.as_ref() == Some(pod) {
        // Workers scaled to zero (stopped, suspended): their last pods are going away.
        return None;
    }
    Some((pod.reason.clone(), pod.message.clone()))
}

fn condition(
    previous: &[Condition],
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::follow_up::{master_start_warning, redis_restarted};
    use crate::controller::observe::{ClusterView, PodProblem};
    use crate::controller::records::RecordsRead;
    use crate::controller::test_support::{healthy, record, run, start};
    use crate::protocol::StartOutcome;
    use k8s_openapi::api::core::v1::PersistentVolumeClaim;

    #[test]
    fn phase_follows_the_master_and_the_parts() {
        let r = run("{image: i, master: {command: [python, m.py]}}");
        assert_eq!(phase(&r, &healthy()), Phase::Running);
        let mut o = healthy();
        o.workers_ready = 0;
        assert_eq!(phase(&r, &o), Phase::Pending);
        o.master = Some(MasterState::Succeeded);
        assert_eq!(phase(&r, &o), Phase::Succeeded);
        o.master = Some(MasterState::Failed("BackoffLimitExceeded".into()));
        assert_eq!(phase(&r, &o), Phase::Failed);
        assert_eq!(
            phase(&run("{image: i, suspend: true}"), &healthy()),
            Phase::Suspended
        );
    }

    #[test]
    fn a_run_asked_to_stop_runs_until_it_has_stopped_and_a_master_ending_then_stopped_it() {
        let r = run("{image: i, stop: true, master: {command: [python, m.py]}}");
        let mut o = healthy();
        o.stop = Some(StopStage::Stopping);
        assert_eq!(phase(&r, &o), Phase::Running);
        o.stop = Some(StopStage::Stopped);
        assert_eq!(phase(&r, &o), Phase::Stopped);
        o.master = Some(MasterState::Succeeded);
        assert_eq!(phase(&r, &o), Phase::Stopped, "ended by the stop");
        let succeeded_before = crate::resources::test_support::in_phase(r, Phase::Succeeded);
        assert_eq!(phase(&succeeded_before, &o), Phase::Succeeded);
        o.master = Some(MasterState::Failed("BackoffLimitExceeded".into()));
        assert_eq!(phase(&succeeded_before, &o), Phase::Failed);
    }

    #[test]
    fn an_idle_run_says_since_when_until_a_master_samples() {
        let at = |s| Timestamp::from_second(s).unwrap();
        let mut r = run("{image: i, idleTimeoutSeconds: 600}");
        let idle = Observed {
            analysis: Some(false),
            ..healthy()
        };
        let first = compute(&r, &idle, at(1000));
        assert_eq!(first.idle_since, Some(at(1000).to_string()));
        r.status = Some(first.clone());
        let idle = Observed {
            idle_since: first.idle_since.clone(),
            ..idle
        };
        assert_eq!(compute(&r, &idle, at(2000)).idle_since, first.idle_since);
        let unread = Observed {
            analysis: None,
            ..idle.clone()
        };
        assert_eq!(compute(&r, &unread, at(2000)).idle_since, first.idle_since);
        let sampling = Observed {
            analysis: Some(true),
            ..healthy()
        };
        assert_eq!(compute(&r, &sampling, at(2000)).idle_since, None);
        let no_timeout = run("{image: i}");
        assert_eq!(compute(&no_timeout, &idle, at(1000)).idle_since, None);
    }

    #[test]
    fn steady_state_gives_an_identical_status() {
        let mut r = run("{image: i}");
        let observed = Observed {
            progress: Some(Progress {
                generation: Some(1),
                accepted: 5,
                required: 10,
                ..Default::default()
            }),
            ..healthy()
        };
        let first = compute(&r, &observed, Timestamp::from_second(1000).unwrap());
        r.status = Some(first.clone());
        let second = compute(&r, &observed, Timestamp::from_second(2000).unwrap());
        assert_eq!(
            first, second,
            "a later reconcile of the same state must not change status"
        );
        assert_eq!(
            second.progress.unwrap().acceptances.as_deref(),
            Some("5/10")
        );
    }

    #[test]
    fn missing_secret_is_a_condition_not_an_error() {
        let r = run("{image: i}");
        let observed = Observed {
            redis_ready: false,
            redis_problem: Some("Secret \"pw\" not found".into()),
            ..healthy()
        };
        let status = compute(&r, &observed, Timestamp::from_second(1).unwrap());
        let degraded = status
            .conditions
            .iter()
            .find(|c| c.type_ == DEGRADED)
            .unwrap();
        assert_eq!(degraded.status, "True");
        assert!(degraded.message.contains("not found"));
        assert_eq!(status.phase, Some(Phase::Pending));
    }

    fn image_pull_problem(pod: &str) -> PodProblem {
        PodProblem {
            kind: "Pod",
            object: pod.into(),
            reason: "ImagePullBackOff".into(),
            message: format!(
                "pod {pod}: container \"worker\" cannot pull image \"models/gausian:1\": not found"
            ),
        }
    }

    fn condition_of<'a>(status: &'a AbcRunStatus, type_: &str) -> &'a Condition {
        status.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn a_pod_problem_is_a_stable_condition_with_the_kubelets_reason() {
        let mut r = run("{image: models/gausian:1, master: {command: [python, m.py]}}");
        let observed = Observed {
            workers_ready: 0,
            master: Some(MasterState::Pending),
            worker_pod_problem: Some(image_pull_problem("sim-workers-1")),
            ..healthy()
        };
        let first = compute(&r, &observed, Timestamp::from_second(1000).unwrap());
        let workers = condition_of(&first, WORKERS_READY);
        assert_eq!(
            (workers.status.as_str(), workers.reason.as_str()),
            ("False", "ImagePullBackOff")
        );
        assert!(workers.message.contains("\"models/gausian:1\": not found"));
        let degraded = condition_of(&first, DEGRADED);
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "ImagePullBackOff")
        );
        assert_eq!(degraded.message, workers.message);
        assert_eq!(first.phase, Some(Phase::Pending));

        // The same problem a reconcile later: byte for byte the same status, so no write.
        r.status = Some(first.clone());
        let second = compute(&r, &observed, Timestamp::from_second(1015).unwrap());
        assert_eq!(
            serde_json::to_string(&first).unwrap(),
            serde_json::to_string(&second).unwrap()
        );
    }

    #[test]
    fn the_masters_pod_problem_is_the_masters_condition() {
        let r = run("{image: i, master: {command: [python, m.py]}}");
        let observed = Observed {
            master: Some(MasterState::Pending),
            master_pod_problem: Some(PodProblem {
                kind: "Pod",
                object: "r-master-abcde".into(),
                reason: "CreateContainerConfigError".into(),
                message: "pod r-master-abcde: container \"master\" cannot be created: couldn't find key password in Secret n/pw".into(),
            }),
            ..healthy()
        };
        let status = compute(&r, &observed, Timestamp::from_second(1).unwrap());
        let master = condition_of(&status, MASTER_RUNNING);
        assert_eq!(
            (master.status.as_str(), master.reason.as_str()),
            ("False", "CreateContainerConfigError")
        );
        assert!(master.message.contains("couldn't find key password"));
        assert_eq!(
            condition_of(&status, DEGRADED).reason,
            "CreateContainerConfigError"
        );
        assert_eq!(condition_of(&status, WORKERS_READY).status, "True");
    }

    #[test]
    fn workers_scaled_to_zero_are_no_problem_while_they_go() {
        let r = run("{image: i, stop: true}");
        let observed = Observed {
            workers_desired: 0,
            worker_pod_problem: Some(image_pull_problem("sim-workers-1")),
            master: None,
            ..healthy()
        };
        let status = compute(&r, &observed, Timestamp::from_second(1).unwrap());
        assert_eq!(condition_of(&status, DEGRADED).status, "False");
    }

    #[test]
    fn a_finished_run_keeps_where_it_ended_after_pyabc_clears_redis() {
        let mut r = run("{image: i, master: {command: [python, m.py]}}");
        let sampling = Observed {
            progress: Some(Progress {
                analysis_id: Some("a".into()),
                generation: Some(5),
                accepted: 200,
                required: 200,
                evaluations: 900,
                ..Default::default()
            }),
            ..healthy()
        };
        r.status = Some(compute(
            &r,
            &sampling,
            Timestamp::from_second(1000).unwrap(),
        ));
        // pyABC deleted its keys; then the master's Job completed and Redis went away.
        let cleared = Observed {
            progress: Some(Progress::default()),
            ..healthy()
        };
        let finished = Observed {
            redis_ready: false,
            workers_ready: 0,
            workers_replicas: 0,
            workers_desired: 0,
            master: Some(MasterState::Succeeded),
            progress: None,
            ..healthy()
        };
        for observed in [cleared, finished] {
            let status = compute(&r, &observed, Timestamp::from_second(2000).unwrap());
            let progress = status.progress.clone().unwrap();
            assert_eq!(
                (
                    progress.generation,
                    progress.acceptances.as_deref(),
                    progress.evaluations
                ),
                (Some(5), Some("200/200"), 900),
                "{observed:?}"
            );
            r.status = Some(status);
        }
        let status = r.status.unwrap();
        assert_eq!(status.phase, Some(Phase::Succeeded));
        let redis = condition_of(&status, REDIS_READY);
        assert_eq!(
            (redis.status.as_str(), redis.reason.as_str()),
            ("False", "ScaledDown")
        );
        let workers = condition_of(&status, WORKERS_READY);
        assert_eq!(
            (workers.status.as_str(), workers.reason.as_str()),
            ("False", "ScaledDown"),
            "a finished run's workers are not AllReady: {}",
            workers.message
        );
        assert_eq!(condition_of(&status, DEGRADED).status, "False");
    }

    #[test]
    fn each_resume_is_counted_once() {
        let mut r = run("{image: i, master: {command: [python, m.py]}}");
        let resumed = |t: i64, at: &str| Observed {
            resumed: Some(Resumed {
                from_generation: t,
                at: at.into(),
            }),
            ..healthy()
        };
        let mut counts = Vec::new();
        // Seen on every read; a second resume; Redis lost (the record with it); a third.
        for observed in [
            resumed(3, "t1"),
            resumed(3, "t1"),
            resumed(5, "t2"),
            healthy(),
            resumed(5, "t3"),
        ] {
            let status = compute(&r, &observed, Timestamp::from_second(1).unwrap());
            let resumes = status.resumes.clone().unwrap_or_default();
            counts.push((resumes.count, resumes.last_from_generation));
            r.status = Some(status);
        }
        assert_eq!(counts, [(1, 3), (1, 3), (2, 5), (2, 5), (3, 5)]);
    }

    #[test]
    fn a_new_redis_server_is_counted_once_as_a_restart() {
        let mut r = run("{image: i}");
        let read = |run_id: Option<&str>| Observed {
            redis_run_id: run_id.map(str::to_string),
            ..healthy()
        };
        let mut seen = Vec::new();
        // First sight, the same server, unreachable for a while, a new one, the new one again.
        for observed in [
            read(Some("a")),
            read(Some("a")),
            read(None),
            read(Some("b")),
            read(Some("b")),
        ] {
            let status = compute(&r, &observed, Timestamp::from_second(1).unwrap());
            let old = r.status.clone().unwrap_or_default();
            let redis = status.redis.clone().unwrap();
            seen.push((redis.run_id, redis.restarts, redis_restarted(&old, &status)));
            r.status = Some(status);
        }
        let want = [
            ("a", 0, false),
            ("a", 0, false),
            ("a", 0, false),
            ("b", 1, true),
            ("b", 1, false),
        ];
        assert_eq!(seen, want.map(|(id, n, new)| (id.to_string(), n, new)));
    }

    #[test]
    fn a_lost_redis_is_a_condition_until_the_master_starts_again_on_the_new_one() {
        let mut r = run("{image: i, master: {command: [python, m.py]}}");
        let sampling = |run_id: &str| Observed {
            redis_run_id: Some(run_id.into()),
            progress: Some(Progress {
                analysis_id: Some("a".into()),
                generation: Some(3),
                ..Default::default()
            }),
            ..healthy()
        };
        // A new server, empty: pyABC's analysis is gone with the old one.
        let lost = Observed {
            progress: Some(Progress::default()),
            ..sampling("b")
        };
        // The master started on it and recorded so (before its analysis begins).
        let restarted = Observed {
            master_start: start(StartOutcome::Resumed, "continued run 1", "t2"),
            ..lost.clone()
        };
        let mut seen = Vec::new();
        for observed in [
            sampling("a"),
            lost.clone(),
            lost.clone(),
            restarted,
            sampling("b"),
        ] {
            let status = compute(&r, &observed, Timestamp::from_second(1).unwrap());
            let redis = condition_of(&status, REDIS_READY);
            seen.push((redis.status.clone(), redis.reason.clone(), status.phase));
            r.status = Some(status);
        }
        let ready = (
            "True".to_string(),
            "RedisReady".to_string(),
            Some(Phase::Running),
        );
        let lost_ = (
            "False".to_string(),
            "RedisLost".to_string(),
            Some(Phase::Running),
        );
        assert_eq!(
            seen,
            [ready.clone(), lost_.clone(), lost_, ready.clone(), ready]
        );

        // A master without the module records nothing: its new analysis tells instead.
        let mut r = run("{image: i, master: {command: [python, m.py]}}");
        r.status = Some(compute(
            &r,
            &sampling("a"),
            Timestamp::from_second(1).unwrap(),
        ));
        r.status = Some(compute(&r, &lost, Timestamp::from_second(2).unwrap()));
        let status = compute(&r, &sampling("b"), Timestamp::from_second(3).unwrap());
        assert_eq!(condition_of(&status, REDIS_READY).reason, "RedisReady");
        // A finished master needs no Redis: nothing is lost.
        let finished = Observed {
            master: Some(MasterState::Succeeded),
            ..lost
        };
        let status = compute(&r, &finished, Timestamp::from_second(4).unwrap());
        assert_ne!(condition_of(&status, REDIS_READY).reason, "RedisLost");
    }

    #[test]
    fn a_refused_database_is_one_warning_and_the_failed_runs_cause() {
        let mut r = run("{image: i, master: {command: [python, m.py]}}");
        let cause = "sqlite:///results/m.db holds an unfinished run (id 1) of other observed data";
        let refused = Observed {
            master_start: start(StartOutcome::Refused, cause, "t1"),
            ..healthy()
        };
        let old = r.status.clone().unwrap_or_default();
        let status = compute(&r, &refused, Timestamp::from_second(1).unwrap());
        let (reason, note) = master_start_warning(&old, &status).unwrap();
        assert_eq!(reason, "ResumeFailed");
        assert!(note.contains(cause), "{note}");
        r.status = Some(status.clone());
        let again = compute(&r, &refused, Timestamp::from_second(2).unwrap());
        assert_eq!(
            master_start_warning(&status, &again),
            None,
            "published once"
        );
        r.status = Some(again);

        // The Job gives up; Redis is no longer read, the status keeps the cause.
        let failed = Observed {
            master: Some(MasterState::Failed("BackoffLimitExceeded".into())),
            master_exit: Some("Error, exit code 1".into()),
            ..healthy()
        };
        let status = compute(&r, &failed, Timestamp::from_second(3).unwrap());
        assert_eq!(status.phase, Some(Phase::Failed));
        for type_ in [MASTER_RUNNING, DEGRADED] {
            let message = &condition_of(&status, type_).message;
            assert!(
                message.contains("BackoffLimitExceeded") && message.contains(cause),
                "{type_}: {message}"
            );
        }
    }

    #[test]
    fn a_failed_master_without_a_recorded_start_names_its_last_exit() {
        let r = run("{image: i, master: {command: [python, m.py]}}");
        let failed = Observed {
            master: Some(MasterState::Failed("BackoffLimitExceeded".into())),
            master_exit: Some(
                "Error, exit code 1 (ModuleNotFoundError: No module named 'model')".into(),
            ),
            ..healthy()
        };
        let status = compute(&r, &failed, Timestamp::from_second(1).unwrap());
        assert_eq!(
            condition_of(&status, DEGRADED).message,
            "the master failed (BackoffLimitExceeded); its last exit: Error, exit code 1 \
             (ModuleNotFoundError: No module named 'model')"
        );
    }

    #[test]
    fn the_latest_record_read_is_the_inference_and_stays_when_redis_is_gone() {
        let r = run("{image: i, master: {command: [m]}}");
        let read = RecordsRead {
            recorded: 3,
            records: vec![record(1), record(2)],
            problem: None,
        };
        let observed = Observed {
            records: Some(read),
            ..healthy()
        };
        let status = compute(&r, &observed, Timestamp::from_second(1).unwrap());
        let inference = status.inference.clone().unwrap();
        assert_eq!((inference.generations, inference.generation), (3, Some(2)));
        assert_eq!(inference.epsilon, record(2).epsilon);
        assert_eq!(inference.acceptance_rate, Some(0.25));
        assert_eq!(inference.effective_sample_size, Some(90.0));
        assert_eq!(inference.parameters[0].name, "mu");
        assert_eq!(inference.parameters[0].q95, Some(1.2));
        assert_eq!(
            inference.records_config_map.as_deref(),
            Some("r-generations")
        );
        assert_eq!(inference.message, None);

        // Nothing read (Redis unchanged or gone): the figures stay.
        let mut later = r.clone();
        later.status = Some(status);
        let again = compute(&later, &healthy(), Timestamp::from_second(2).unwrap());
        assert_eq!(again.inference, Some(inference));
    }

    #[test]
    fn a_master_that_records_nothing_is_told_once_it_stored_a_generation() {
        let r = run("{image: i, master: {command: [m]}}");
        let at = |t: i64| Observed {
            progress: Some(Progress {
                generation: Some(t),
                ..Progress::default()
            }),
            ..healthy()
        };
        let now = Timestamp::from_second(1).unwrap();
        assert_eq!(
            compute(&r, &at(0), now).inference,
            None,
            "still sampling the first"
        );
        let told = compute(&r, &at(1), now).inference.unwrap();
        assert_eq!(told.message.as_deref(), Some(NO_RECORDS));
        assert_eq!(told.epsilon, None);
    }

    #[test]
    fn a_results_claim_left_unbound_is_the_runs_problem_after_a_grace() {
        let r = run("{image: i, master: {command: [m]}}");
        let claim: PersistentVolumeClaim = serde_yaml::from_str(
            "metadata: {name: r-results, creationTimestamp: '1970-01-01T00:00:00Z'}\nspec: {}\nstatus: {phase: Pending}",
        )
        .unwrap();
        let view = ClusterView {
            results_claim: Some(claim.into()),
            ..ClusterView::default()
        };
        let owned =
            crate::resources::build(&r_with_uid(&r), Some("pw"), &Default::default()).unwrap();
        let observe_at = |s: i64| {
            let now = Timestamp::from_second(s).unwrap();
            let observed = crate::controller::observe::observe(
                &r,
                &view,
                &Default::default(),
                &crate::controller::observe::RedisReading::NotRead,
                &owned,
                now,
            );
            compute(&r, &observed, now)
        };
        let early = observe_at(10);
        assert_eq!(condition_of(&early, DEGRADED).status, "False");
        assert_eq!(
            early.results.unwrap().claim_phase.as_deref(),
            Some("Pending")
        );
        let late = observe_at(120);
        let degraded = condition_of(&late, DEGRADED);
        assert_eq!(degraded.reason, "ResultsClaimPending");
        assert!(
            degraded.message.contains("r-results")
                && degraded.message.contains("default StorageClass"),
            "{}",
            degraded.message
        );
    }

    fn r_with_uid(r: &AbcRun) -> AbcRun {
        let mut r = r.clone();
        r.metadata.uid = Some("u".into());
        r
    }

    #[test]
    fn a_new_run_shows_its_empty_progress_until_the_first_generation() {
        let r = run("{image: i}");
        let observed = Observed {
            progress: Some(Progress::default()),
            ..healthy()
        };
        let status = compute(&r, &observed, Timestamp::from_second(1).unwrap());
        assert_eq!(status.progress.unwrap().acceptances.as_deref(), Some("0/0"));
    }

    #[test]
    fn progress_time_moves_only_with_progress() {
        let mut r = run("{image: i}");
        let p = |acc| {
            Some(Progress {
                generation: Some(0),
                accepted: acc,
                required: 10,
                ..Default::default()
            })
        };
        let s1 = compute(
            &r,
            &Observed {
                progress: p(1),
                ..healthy()
            },
            Timestamp::from_second(10).unwrap(),
        );
        r.status = Some(s1.clone());
        let s2 = compute(
            &r,
            &Observed {
                progress: p(2),
                ..healthy()
            },
            Timestamp::from_second(20).unwrap(),
        );
        assert_ne!(
            s1.progress.unwrap().last_progress_time,
            s2.progress.unwrap().last_progress_time
        );
    }
}
