//! The pure tail of a reconcile: given the status just computed and the one the run holds,
//! what follows ([`FollowUp`]): whether to write the status, the Events to publish, whether to
//! evict a master whose Redis restarted, whether to keep the run's Redis polled, when to look
//! at the run again and whether its TTL is over. Also every Event the controller publishes is
//! made here ([`Notice`]s), so that each reason has a unit test.

use super::events::Notice;
use super::observe::Observed;
use super::status::DEGRADED;
use crate::api::{AbcRun, AbcRunStatus, Phase};
use crate::protocol::{StartOutcome, inference};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::EventType;
use std::time::Duration;

/// How often a running run is looked at again without a watch event while its Redis is not
/// polled (a managed Redis that is not ready yet).
pub const POLL_RUNNING: Duration = Duration::from_secs(2);
/// How often a running run whose Redis is polled (`progress_poller`) is looked at again
/// without an event or a wake-up from its poller: a safety net only.
pub const POLL_POLLED: Duration = Duration::from_secs(60);
/// How often an idle or finished run is looked at again without a watch event.
pub const POLL_IDLE: Duration = Duration::from_secs(300);
/// Retry interval for problems only the user can fix (a missing Secret): no hot loop.
pub const POLL_PROBLEM: Duration = Duration::from_secs(15);

/// The reasons of the Events the controller publishes, besides the run's phases (`Running`,
/// `Failed`, ...) and its problems (the Degraded condition's reason, e.g. `ImagePullBackOff`).
pub mod reason {
    pub const RESUMED: &str = "Resumed";
    pub const GENERATION_COMPLETED: &str = "GenerationCompleted";
    pub const REDIS_RESTARTED: &str = "RedisRestarted";
    pub const REPAIRED_LOST_WORKER: &str = "RepairedLostWorker";
    pub const WORKER_REPLACED: &str = "WorkerReplaced";
    pub const WORKER_EXPIRED: &str = "WorkerExpired";
    pub const CLEARED_ANALYSIS_LOCK: &str = "ClearedAnalysisLock";
    pub const STOPPING: &str = "Stopping";
    pub const MASTER_POD_KEPT: &str = "MasterPodKept";
    pub const RECONCILE_ERROR: &str = "ReconcileError";
    /// The master start warnings (`protocol::StartOutcome::warning`).
    pub const RESUME_FAILED: &str = "ResumeFailed";
    pub const NOT_RESUMED: &str = "NotResumed";
    /// A master whose `abc_operator` module is not the operator's version
    /// (`protocol::MasterStart::module_version_warning`).
    pub const MODULE_VERSION_DIFFERS: &str = "ModuleVersionDiffers";
    pub use crate::controller::guard::UNREADABLE_REASON as UNREADABLE;
}

/// What one reconcile saw and computed, for [`follow_up`].
pub struct Seen<'a> {
    /// The run, with the status it holds (the one last written, as the cache has it).
    pub run: &'a AbcRun,
    /// The status computed from what was observed.
    pub new: &'a AbcRunStatus,
    pub observed: &'a Observed,
    /// The run's Redis password is missing or unusable: only the user can fix that.
    pub password_problem: bool,
    /// The run's Redis can be polled: it was read (or failed to be) at a known endpoint.
    pub redis_pollable: bool,
    /// How long ago this controller last wrote the run's status (`None`: not since it started).
    pub since_last_write: Option<Duration>,
    /// See `ControllerArgs::status_progress_seconds`.
    pub progress_interval: Duration,
    pub now: Timestamp,
}

/// What follows a reconcile's writes.
#[derive(Clone, Debug, PartialEq)]
pub struct FollowUp {
    /// The run's Redis restarted (another server, with none of pyABC's state): evict its
    /// running master so that the retry resumes from its database ([`redis_restarted_notice`]).
    pub evict_master: bool,
    /// Keep a poller reading the run's Redis (else stop it).
    pub poll_redis: bool,
    pub write_status: bool,
    /// Events to publish once the status is written (none when it is not).
    pub notices: Vec<Notice>,
    /// A problem appearing, published with `notices` unless it was told of the run recently
    /// (`RunMemory::tell`: a problem that flaps is told once).
    pub problem: Option<Notice>,
    /// When to look at the run again.
    pub next: Next,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Look again after this long, or at the next watch event.
    LookAgainIn(Duration),
    /// The run finished longer than its TTL ago: delete it.
    DeleteRun,
}

/// The follow-up of one reconcile.
pub fn follow_up(seen: &Seen) -> FollowUp {
    let Seen { run, new, .. } = *seen;
    let evict_master = run
        .status
        .as_ref()
        .is_some_and(|old| redis_restarted(old, new));
    let held_up = new.phase == Some(Phase::Pending) && seen.observed.pod_problem().is_some();
    let mut next = next_poll(new, seen.password_problem || held_up);
    // A live run's Redis is read by its poller, which wakes the run when something changed;
    // the requeue is then only a safety net.
    let poll_redis = seen.redis_pollable && next == POLL_RUNNING;
    if poll_redis {
        next = POLL_POLLED;
    }
    let write = write_due(
        run.status.as_ref(),
        new,
        seen.since_last_write,
        seen.progress_interval,
    );
    let (notices, problem) = match write {
        StatusWrite::Now => transitions(run, new, seen.observed),
        // Only progress counters changed: they wait; the live figures are in the metrics.
        StatusWrite::After(wait) => {
            next = next.min(wait);
            Default::default()
        }
        StatusWrite::Unchanged => Default::default(),
    };
    // an idle run is looked at when its idle time is over
    if let Some(left) = super::decide::idle_left(run, new, seen.now)
        && !left.is_zero()
    {
        next = next.min(left + Duration::from_secs(1));
    }
    let next = match (run.spec.ttl_seconds_after_finished, finished_at(new)) {
        (Some(ttl), Some(finished)) => match ttl_left(ttl, finished, seen.now) {
            Some(left) => Next::LookAgainIn(left),
            None => Next::DeleteRun,
        },
        _ => Next::LookAgainIn(next),
    };
    FollowUp {
        evict_master,
        poll_redis,
        write_status: write == StatusWrite::Now,
        notices,
        problem,
        next,
    }
}

/// When to look at the run again without a watch event.
fn next_poll(status: &AbcRunStatus, user_problem: bool) -> Duration {
    if user_problem {
        return POLL_PROBLEM;
    }
    match status.phase {
        Some(Phase::Running | Phase::Pending) => POLL_RUNNING,
        _ => POLL_IDLE,
    }
}

/// Events for what a person following the run wants to know, from the status last written to
/// the new one: phase changes, problems appearing, resumes, master starts that did not resume,
/// finished generations. Returns them, the problem apart.
fn transitions(
    run: &AbcRun,
    new: &AbcRunStatus,
    observed: &Observed,
) -> (Vec<Notice>, Option<Notice>) {
    let old = run.status.clone().unwrap_or_default();
    let mut notices = Vec::new();
    let mut problem = None;
    if old.phase != new.phase
        && let Some(phase) = new.phase
    {
        let type_ = if phase == Phase::Failed {
            EventType::Warning
        } else {
            EventType::Normal
        };
        let note = match phase {
            Phase::Failed => new
                .conditions
                .iter()
                .find(|c| c.type_ == DEGRADED)
                .map(|c| c.message.clone())
                .unwrap_or_else(|| "the run failed".into()),
            Phase::Stopped if !run.spec.stop => format!(
                "the run is Stopped: no analysis in its Redis for {} s \
                 (spec.idleTimeoutSeconds); its workers and Redis are given back",
                run.spec.idle_timeout_seconds.unwrap_or_default()
            ),
            other => format!("the run is {other}"),
        };
        notices.push(notice(type_, &phase.to_string(), note));
    }
    // A problem appearing, or another one taking its place, is one Warning named after it
    // (e.g. ImagePullBackOff) and about its pod when it has one; the same problem persisting
    // changes no status, so it is not published again.
    let degraded = |s: &AbcRunStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == DEGRADED && c.status == "True")
            .map(|c| (c.reason.clone(), c.message.clone()))
    };
    if let (before, Some((reason, message))) = (degraded(&old), degraded(new))
        && before.as_ref().map(|b| &b.0) != Some(&reason)
    {
        let mut told = notice(EventType::Warning, &reason, message);
        if let Some(seen_in) = observed.pod_problem().filter(|p| p.reason == reason) {
            told.related = Some(match seen_in.kind {
                "Deployment" => ObjectReference {
                    api_version: Some("apps/v1".into()),
                    kind: Some("Deployment".into()),
                    name: Some(seen_in.object.clone()),
                    namespace: run.metadata.namespace.clone(),
                    ..ObjectReference::default()
                },
                _ => pod_reference(run, &seen_in.object),
            });
        }
        problem = Some(told);
    }
    let resumes = |s: &AbcRunStatus| s.resumes.as_ref().map_or(0, |r| r.count);
    if resumes(new) > resumes(&old)
        && let Some(last) = &new.resumes
    {
        notices.push(unfolded(notice(
            EventType::Normal,
            reason::RESUMED,
            format!(
                "{}; resume {}",
                crate::protocol::resumed_note(last.last_from_generation),
                last.count
            ),
        )));
    }
    if let Some((reason, note)) = master_start_warning(&old, new) {
        notices.push(unfolded(notice(EventType::Warning, reason, note)));
    }
    if let Some(note) = module_version_warning(&old, new) {
        notices.push(unfolded(notice(
            EventType::Warning,
            reason::MODULE_VERSION_DIFFERS,
            note,
        )));
    }
    let generation_of = |s: &AbcRunStatus| s.progress.as_ref().and_then(|p| p.generation);
    if let (Some(before), Some(now)) = (generation_of(&old), generation_of(new))
        && now > before
    {
        // Each generation completes once, with its own note: never folded.
        notices.push(unfolded(notice(
            EventType::Normal,
            reason::GENERATION_COMPLETED,
            format!(
                "generation {before} completed{}; sampling generation {now}",
                figures_of(new, now - 1)
            ),
        )));
    }
    (notices, problem)
}

/// `, epsilon …, acceptance rate …` of generation `t` when the status has its record (in
/// pyABC's own notation, `t: N, eps: …` and `Accepted: a / n = rate`).
fn figures_of(status: &AbcRunStatus, t: i64) -> String {
    let Some(inference) = status
        .inference
        .as_ref()
        .filter(|i| i.generation == Some(t))
    else {
        return String::new();
    };
    let mut figures = String::new();
    if let Some(epsilon) = inference.epsilon {
        figures += &format!(", epsilon {}", inference::python_e(epsilon, 8));
    }
    if let Some(rate) = inference.acceptance_rate {
        figures += &format!(
            ", accepted {} / {} = {}",
            inference.accepted,
            inference.evaluations,
            inference::python_e(rate, 4)
        );
    }
    figures
}

/// The Warning a new master start deserves, if any (reason, note): one that could not use its
/// results database, or a restarted master that started anew instead of resuming (the
/// generations sampled before are not continued).
pub fn master_start_warning(
    old: &AbcRunStatus,
    new: &AbcRunStatus,
) -> Option<(&'static str, String)> {
    let start = new.last_master_start.as_ref()?;
    let before = old.last_master_start.as_ref();
    if before.is_some_and(|b| b.time == start.time) {
        return None;
    }
    let sampled_before = old
        .progress
        .as_ref()
        .is_some_and(|p| p.generation.is_some());
    let (reason, mut note) = StartOutcome::from(start.outcome)
        .warning(&start.cause, before.is_some() || sampled_before)?;
    if reason == reason::NOT_RESUMED {
        note.push_str(" (keep the results on a claim: spec.master.resultsClaimName)");
    }
    Some((reason, note))
}

/// The Warning a new master start whose `abc_operator` module is not the operator's version
/// deserves, once per start.
pub fn module_version_warning(old: &AbcRunStatus, new: &AbcRunStatus) -> Option<String> {
    let start = new.last_master_start.as_ref()?;
    if old
        .last_master_start
        .as_ref()
        .is_some_and(|b| b.time == start.time)
    {
        return None;
    }
    crate::protocol::module_version_warning(start.module_version.as_deref())
}

/// Whether `new` saw a Redis restart that `old` had not.
pub fn redis_restarted(old: &AbcRunStatus, new: &AbcRunStatus) -> bool {
    let restarts = |s: &AbcRunStatus| s.redis.as_ref().map_or(0, |r| r.restarts);
    restarts(new) > restarts(old)
}

/// Whether, and when, a computed status is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusWrite {
    /// Something a user or a client waits for changed (phase, a condition, the generation, a
    /// repair, the replicas an HPA reads): write it now.
    Now,
    /// Only progress counters moved (acceptances, evaluations, busy workers) and the last
    /// write was less than the progress interval ago: write it after this long. During a
    /// generation this bounds the status writes per run to one per interval.
    After(Duration),
    Unchanged,
}

/// Decides [`StatusWrite`] for `new`, given the status last written (`old`, as the run's cache
/// holds it) and how long ago this controller wrote the run's status (`None`: not since it
/// started).
pub fn write_due(
    old: Option<&AbcRunStatus>,
    new: &AbcRunStatus,
    since_last_write: Option<Duration>,
    progress_interval: Duration,
) -> StatusWrite {
    let Some(old) = old else {
        return StatusWrite::Now;
    };
    if old == new {
        return StatusWrite::Unchanged;
    }
    if without_counters(old) != without_counters(new) {
        return StatusWrite::Now;
    }
    match since_last_write {
        Some(since) if since < progress_interval => StatusWrite::After(progress_interval - since),
        _ => StatusWrite::Now,
    }
}

/// `status` without the progress counters that move with every evaluation.
fn without_counters(status: &AbcRunStatus) -> AbcRunStatus {
    let mut status = status.clone();
    if let Some(p) = status.progress.as_mut() {
        p.accepted = 0;
        p.acceptances = None;
        p.evaluations = 0;
        p.failures = 0;
        p.active_workers = 0;
        p.last_progress_time = None;
    }
    status
}

/// The longest a finished run waits for its TTL without being looked at again: a requeue
/// further out (a TTL of years) would overflow the scheduler's clock.
const MAX_TTL_WAIT_SECS: i64 = 86400;

/// How long a run that finished at `finished` waits before `ttlSecondsAfterFinished: ttl`
/// deletes it (at most a day, then it is looked at again), or `None` when it is due now.
pub fn ttl_left(ttl: i64, finished: Timestamp, now: Timestamp) -> Option<Duration> {
    // Negative when the clock that wrote the condition ran ahead of ours.
    let elapsed = now.duration_since(finished).as_secs();
    let left = ttl.saturating_sub(elapsed);
    (left > 0).then(|| Duration::from_secs(left.min(MAX_TTL_WAIT_SECS) as u64 + 1))
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

fn notice(type_: EventType, reason: &str, note: String) -> Notice {
    Notice {
        type_,
        reason: reason.to_string(),
        note,
        related: None,
        fold: true,
    }
}

fn unfolded(notice: Notice) -> Notice {
    Notice {
        fold: false,
        ..notice
    }
}

/// A reference to a pod of the run, as an Event's related object. Without uid: a lost pod may
/// be gone, and repeats about the same pod must give the same reference to fold into one
/// series (`events::series_key`).
fn pod_reference(run: &AbcRun, pod: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(pod.into()),
        namespace: run.metadata.namespace.clone(),
        ..ObjectReference::default()
    }
}

/// A lost worker pod was repaired: one Event per pod (a pod with several worker processes has
/// a ledger for each), saying what each repair corrected.
pub fn lost_worker_notice(run: &AbcRun, pod: &str, repairs: &[String]) -> Notice {
    Notice {
        related: Some(pod_reference(run, pod)),
        ..notice(
            EventType::Warning,
            reason::REPAIRED_LOST_WORKER,
            format!("worker pod {pod} was lost: {}", repairs.join("; ")),
        )
    }
}

/// A worker pod deleted so that its Deployment replaces it: its runtime expired (normal), or it
/// ended or hung (a warning).
pub fn worker_replaced_notice(run: &AbcRun, pod: &str, why: &str, expired: bool) -> Notice {
    let (type_, reason) = if expired {
        (EventType::Normal, reason::WORKER_EXPIRED)
    } else {
        (EventType::Warning, reason::WORKER_REPLACED)
    };
    Notice {
        related: Some(pod_reference(run, pod)),
        ..notice(type_, reason, format!("replacing worker pod {pod}: {why}"))
    }
}

/// A new Redis server has none of pyABC's state: the master's generation is gone. A master
/// that noticed exited with `REDIS_LOST_EXIT_CODE` and its Job retries it; one still running
/// (it may wait for ever on an empty queue) is evicted (`evicted`), which the Job's pod failure
/// policy does not count against `backoffLimit` either. Either way the retry resumes from the
/// database.
pub fn redis_restarted_notice(evicted: &[String]) -> Notice {
    let note = match evicted {
        [] => "the run's Redis restarted and lost the generation in progress; the master's retry \
               resumes from its results database"
            .to_string(),
        pods => format!(
            "the run's Redis restarted and lost the generation in progress; evicted the master \
             ({}) so that its retry resumes from its results database",
            pods.join(", ")
        ),
    };
    notice(EventType::Warning, reason::REDIS_RESTARTED, note)
}

/// pyABC's analysis lock left by a master that died was cleared.
pub fn cleared_lock_notice() -> Notice {
    notice(
        EventType::Normal,
        reason::CLEARED_ANALYSIS_LOCK,
        "the master failed; cleared pyABC's stale analysis_id so its retry can start".into(),
    )
}

/// The run was asked to stop and its master was told.
/// The run builds another master pod than its Job has (a Job's pod template cannot change).
pub fn master_pod_kept_notice(run: &AbcRun) -> Notice {
    let job = crate::resources::master_job_name(run);
    notice(
        EventType::Warning,
        reason::MASTER_POD_KEPT,
        format!(
            "the master's pod changed (spec.master, or a new operator version) but Job {job} keeps              the pod it was made with, as a Job must; to run the master with the new one,              `kubectl delete job {job}`: it is made again and resumes from its database"
        ),
    )
}

pub fn stop_requested_notice() -> Notice {
    notice(
        EventType::Normal,
        reason::STOPPING,
        "asked to stop: the master ends the analysis once the generation being sampled is \
         stored (the workers finish it and are not replaced); then the run is Stopped"
            .into(),
    )
}

/// A failed reconcile. An error about one owned object (`about`: kind and name) is that
/// object's Event: errors about different objects do not fold into one series showing only the
/// first.
pub fn reconcile_error_notice(
    run_namespace: Option<String>,
    message: String,
    about: Option<(&str, &str)>,
) -> Notice {
    Notice {
        related: about.map(|(kind, name)| ObjectReference {
            kind: Some(kind.into()),
            name: Some(name.into()),
            namespace: run_namespace,
            ..ObjectReference::default()
        }),
        ..notice(EventType::Warning, reason::RECONCILE_ERROR, message)
    }
}

/// An AbcRun that does not deserialize, with what to fix (`guard::UnreadableRun::note`).
pub fn unreadable_notice(note: String) -> Notice {
    notice(EventType::Warning, reason::UNREADABLE, note)
}

#[cfg(test)]
#[path = "follow_up_tests.rs"]
mod tests;
