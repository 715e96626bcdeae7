//! Status of an AbcRun, computed from observed state only (never from what was just written),
//! so that the same cluster state always gives the same status and an unchanged run is not
//! written to.

use crate::api::{AbcRun, AbcRunStatus, Phase, Progress};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// What the controller saw of a run's parts in one reconcile.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    /// The Redis Deployment has a ready replica (always true for an external Redis that answered).
    pub redis_ready: bool,
    /// Why Redis is not usable, when it is not (missing Secret, unreachable, wrong password...).
    pub redis_problem: Option<String>,
    /// Worker pods that exist / are ready (from the worker Deployment's status).
    pub workers_replicas: i32,
    pub workers_ready: i32,
    /// Worker replicas the run asks for now (0 while stopped or suspended).
    pub workers_desired: i32,
    /// Label selector of the worker pods.
    pub selector: String,
    /// The master Job, if the run has one.
    pub master: Option<MasterState>,
    /// Progress read from Redis, when Redis answered.
    pub progress: Option<Progress>,
    /// Workers repaired so far: the larger of the previous status and the count the repair
    /// script keeps in the run's Redis (`protocol::keys::LOST_WORKERS`).
    pub lost_workers: i64,
}

/// State of the master Job.
#[derive(Clone, Debug, PartialEq)]
pub enum MasterState {
    /// Not created yet or no pod running.
    Pending,
    Running,
    Succeeded,
    /// Failed for good (backoff limit or deadline), with the Job's reason.
    Failed(String),
}

/// Condition types, as users see them in `kubectl describe`.
pub const REDIS_READY: &str = "RedisReady";
pub const WORKERS_READY: &str = "WorkersReady";
pub const MASTER_RUNNING: &str = "MasterRunning";
pub const DEGRADED: &str = "Degraded";

/// The phase a run is in, given what was observed.
pub fn phase(run: &AbcRun, observed: &Observed) -> Phase {
    match &observed.master {
        Some(MasterState::Succeeded) => return Phase::Succeeded,
        Some(MasterState::Failed(_)) => return Phase::Failed,
        _ => {}
    }
    if run.spec.suspend {
        return Phase::Suspended;
    }
    if run.spec.stop {
        return Phase::Stopped;
    }
    let master_ok = !matches!(observed.master, Some(MasterState::Pending));
    if observed.redis_ready && observed.workers_ready > 0 && master_ok {
        Phase::Running
    } else {
        Phase::Pending
    }
}

/// The full status for `observed`, keeping transition times of conditions whose status did not
/// change (so a steady run produces a byte-identical status).
pub fn compute(run: &AbcRun, observed: &Observed, now: Timestamp) -> AbcRunStatus {
    let previous = run.status.clone().unwrap_or_default();
    let generation = run.metadata.generation;
    let phase = phase(run, observed);

    let mut conditions = Vec::new();
    let mut push = |type_: &str, ok: bool, reason: &str, message: String| {
        conditions.push(condition(
            &previous.conditions,
            type_,
            ok,
            reason,
            message,
            generation,
            now,
        ));
    };
    // RedisReady says whether Redis runs (its pod is ready, or the external one answered);
    // whether the operator can read it is Degraded's business.
    match (observed.redis_ready, &observed.redis_problem) {
        (true, _) => push(REDIS_READY, true, "RedisReady", "Redis is ready".into()),
        (false, Some(problem)) => push(REDIS_READY, false, "RedisUnavailable", problem.clone()),
        (false, None) => push(
            REDIS_READY,
            false,
            "RedisStarting",
            "waiting for the Redis pod to become ready".into(),
        ),
    }
    push(
        WORKERS_READY,
        observed.workers_desired > 0 && observed.workers_ready >= observed.workers_desired,
        if observed.workers_ready >= observed.workers_desired {
            "AllReady"
        } else {
            "Scaling"
        },
        format!(
            "{}/{} worker pods ready",
            observed.workers_ready, observed.workers_desired
        ),
    );
    if let Some(master) = &observed.master {
        let (ok, reason, message) = match master {
            MasterState::Pending => (
                false,
                "Pending",
                "the master Job has no running pod yet".to_string(),
            ),
            MasterState::Running => (true, "Running", "the master is sampling".to_string()),
            MasterState::Succeeded => (
                false,
                "Succeeded",
                "the master finished successfully".to_string(),
            ),
            MasterState::Failed(why) => (false, "Failed", format!("the master failed: {why}")),
        };
        push(MASTER_RUNNING, ok, reason, message);
    }
    let degraded = observed
        .redis_problem
        .clone()
        .or_else(|| match &observed.master {
            Some(MasterState::Failed(why)) => Some(format!("the master failed: {why}")),
            _ => None,
        });
    match degraded {
        Some(why) => push(DEGRADED, true, "Problem", why),
        None => push(DEGRADED, false, "Healthy", "no problem found".into()),
    }

    let progress = observed.progress.clone().map(|mut p| {
        p.acceptances = Some(format!("{}/{}", p.accepted, p.required));
        // Progress time moves only when generation or acceptances move.
        let same = previous.progress.as_ref().is_some_and(|old| {
            old.generation == p.generation
                && old.accepted == p.accepted
                && old.analysis_id == p.analysis_id
        });
        p.last_progress_time = if same {
            previous
                .progress
                .as_ref()
                .and_then(|old| old.last_progress_time.clone())
        } else {
            Some(now.to_string())
        };
        p
    });

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
        // Keep the last progress seen when Redis is briefly unreachable or the run is over.
        progress: progress.or(previous.progress),
        lost_workers: observed.lost_workers,
    }
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

/// When the run finished (the transition time of its final phase), for `ttlSecondsAfterFinished`.
pub fn finished_at(status: &AbcRunStatus) -> Option<Timestamp> {
    if !status.phase.is_some_and(Phase::is_finished) {
        return None;
    }
    // Degraded or MasterRunning flip when a run ends; the latest transition is the end.
    status
        .conditions
        .iter()
        .map(|c| c.last_transition_time.0)
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(yaml: &str) -> AbcRun {
        serde_yaml::from_str(&format!(
            "apiVersion: abc-operator.dev/v1alpha1\nkind: AbcRun\nmetadata: {{name: r, namespace: n, generation: 3}}\nspec: {yaml}"
        ))
        .unwrap()
    }

    fn healthy() -> Observed {
        Observed {
            redis_ready: true,
            workers_replicas: 2,
            workers_ready: 2,
            workers_desired: 2,
            selector: "abc-operator.dev/run=r".into(),
            master: Some(MasterState::Running),
            ..Observed::default()
        }
    }

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
            phase(&run("{image: i, stop: true}"), &healthy()),
            Phase::Stopped
        );
        assert_eq!(
            phase(&run("{image: i, suspend: true}"), &healthy()),
            Phase::Suspended
        );
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
