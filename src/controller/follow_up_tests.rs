//! The follow-up of a reconcile, from fixtures: each rule, and every Event the controller
//! publishes.

use super::*;
use crate::api::{Progress, RedisInstance, Resumes};
use crate::controller::observe::{MasterState, PodProblem};
use crate::controller::status::compute;
use crate::controller::test_support::{healthy, record, run, start};
use crate::protocol::{MasterStart, StartOutcome};
use std::collections::BTreeSet;

const MASTER: &str = "{image: i, master: {command: [python, m.py]}}";

fn at(second: i64) -> Timestamp {
    Timestamp::from_second(second).unwrap()
}

/// The follow-up of `run` (holding the status last written) once `observed` is seen at `now`,
/// with a Redis that can be polled and a status last written `since` seconds ago.
fn follow(run: &AbcRun, observed: &Observed, now: Timestamp, since: Option<u64>) -> FollowUp {
    let new = compute(run, observed, now);
    follow_up(&Seen {
        run,
        new: &new,
        observed,
        password_problem: false,
        redis_pollable: true,
        since_last_write: since.map(Duration::from_secs),
        progress_interval: Duration::from_secs(10),
        now,
    })
}

/// `run` with the status `observed` gives at `now`, as if written.
fn written(mut run: AbcRun, observed: &Observed, now: Timestamp) -> AbcRun {
    run.status = Some(compute(&run, observed, now));
    run
}

fn reasons(follow: &FollowUp) -> Vec<String> {
    follow
        .problem
        .iter()
        .chain(&follow.notices)
        .map(|n| n.reason.clone())
        .collect()
}

#[test]
fn a_new_run_is_written_at_once_and_a_steady_one_not_at_all() {
    let r = run(MASTER);
    let first = follow(&r, &healthy(), at(1), None);
    assert!(first.write_status);
    assert_eq!(reasons(&first), ["Running"]);
    let steady = follow(&written(r, &healthy(), at(1)), &healthy(), at(2), Some(1));
    assert!(!steady.write_status);
    assert!(steady.notices.is_empty() && steady.problem.is_none());
}

#[test]
fn a_live_run_is_polled_and_looked_at_again_only_as_a_safety_net() {
    let r = written(run(MASTER), &healthy(), at(1));
    let live = follow(&r, &healthy(), at(2), Some(1));
    assert!(live.poll_redis);
    assert_eq!(live.next, Next::LookAgainIn(POLL_POLLED));

    // Its Redis not readable yet (a managed Redis starting): looked at again soon instead.
    let new = compute(&r, &healthy(), at(2));
    let unpolled = follow_up(&Seen {
        redis_pollable: false,
        ..seen(&r, &new, &healthy())
    });
    assert!(!unpolled.poll_redis);
    assert_eq!(unpolled.next, Next::LookAgainIn(POLL_RUNNING));
}

fn seen<'a>(run: &'a AbcRun, new: &'a AbcRunStatus, observed: &'a Observed) -> Seen<'a> {
    Seen {
        run,
        new,
        observed,
        password_problem: false,
        redis_pollable: true,
        since_last_write: Some(Duration::from_secs(1)),
        progress_interval: Duration::from_secs(10),
        now: at(2),
    }
}

#[test]
fn progress_alone_is_written_after_the_interval_and_looked_at_again_then() {
    let progress = |accepted| Observed {
        progress: Some(Progress {
            generation: Some(1),
            accepted,
            required: 10,
            ..Default::default()
        }),
        ..healthy()
    };
    let r = written(run(MASTER), &progress(2), at(1));
    let counted = follow(&r, &progress(5), at(4), Some(3));
    assert!(!counted.write_status);
    assert_eq!(counted.next, Next::LookAgainIn(Duration::from_secs(7)));
}

#[test]
fn what_only_the_user_can_fix_is_looked_at_less_often_and_not_polled() {
    let r = run("{image: i}");
    let missing_secret = Observed {
        redis_ready: false,
        redis_problem: Some("Secret \"pw\" not found".into()),
        ..healthy()
    };
    let new = compute(&r, &missing_secret, at(1));
    let secret_missing = follow_up(&Seen {
        password_problem: true,
        redis_pollable: false,
        ..seen(&r, &new, &missing_secret)
    });
    assert_eq!(secret_missing.next, Next::LookAgainIn(POLL_PROBLEM));
    assert!(!secret_missing.poll_redis);

    // A pending run whose pods cannot start (a missing image): the pods' events wake it.
    let no_image = Observed {
        workers_ready: 0,
        worker_pod_problem: Some(image_pull_problem()),
        ..healthy()
    };
    let held_up = follow(&r, &no_image, at(1), None);
    assert_eq!(held_up.next, Next::LookAgainIn(POLL_PROBLEM));
}

fn image_pull_problem() -> PodProblem {
    PodProblem {
        kind: "Pod",
        object: "r-workers-1".into(),
        reason: "ImagePullBackOff".into(),
        message: "cannot pull image \"i\"".into(),
    }
}

#[test]
fn a_stopping_run_is_followed_like_a_running_one_and_a_stopped_one_rarely() {
    let r = run("{image: i, stop: true}");
    let stage = |stop| Observed {
        stop: Some(stop),
        ..healthy()
    };
    use crate::controller::observe::StopStage;
    assert_eq!(
        follow(&r, &stage(StopStage::Stopping), at(1), None).next,
        Next::LookAgainIn(POLL_POLLED)
    );
    assert_eq!(
        follow(&r, &stage(StopStage::Stopped), at(1), None).next,
        Next::LookAgainIn(POLL_IDLE)
    );
}

#[test]
fn a_finished_run_is_deleted_once_its_ttl_is_over() {
    let r = run("{image: i, ttlSecondsAfterFinished: 60, master: {command: [python, m.py]}}");
    let succeeded = Observed {
        master: Some(MasterState::Succeeded),
        ..healthy()
    };
    let r = written(r, &succeeded, at(1000));
    assert_eq!(
        follow(&r, &succeeded, at(1020), Some(20)).next,
        Next::LookAgainIn(Duration::from_secs(41))
    );
    assert_eq!(
        follow(&r, &succeeded, at(1060), Some(60)).next,
        Next::DeleteRun
    );
    // Without a TTL it stays.
    let kept = written(run(MASTER), &succeeded, at(1000));
    assert_eq!(
        follow(&kept, &succeeded, at(99_000), Some(60)).next,
        Next::LookAgainIn(POLL_IDLE)
    );
}

#[test]
fn a_new_redis_server_evicts_the_master_once() {
    let on = |run_id: &str| Observed {
        redis_run_id: Some(run_id.into()),
        ..healthy()
    };
    let r = written(run(MASTER), &on("a"), at(1));
    let restarted = follow(&r, &on("b"), at(2), Some(1));
    assert!(restarted.evict_master);
    let r = written(r, &on("b"), at(2));
    assert!(!follow(&r, &on("b"), at(3), Some(1)).evict_master);
    assert_eq!(
        r.status.unwrap().redis,
        Some(RedisInstance {
            run_id: "b".into(),
            restarts: 1
        })
    );
}

#[test]
fn a_problem_appearing_is_one_warning_about_its_pod_and_not_told_while_it_stays() {
    let r = written(run("{image: i}"), &healthy(), at(1));
    let no_image = Observed {
        worker_pod_problem: Some(image_pull_problem()),
        ..healthy()
    };
    let appearing = follow(&r, &no_image, at(2), Some(1));
    let problem = appearing.problem.expect("a problem Warning");
    assert_eq!(problem.reason, "ImagePullBackOff");
    assert_eq!(problem.type_, EventType::Warning);
    assert_eq!(
        problem.related.and_then(|p| p.name).as_deref(),
        Some("r-workers-1")
    );
    let r = written(r, &no_image, at(2));
    assert_eq!(follow(&r, &no_image, at(3), Some(1)).problem, None);
}

#[test]
fn a_failed_run_is_a_warning_with_its_cause() {
    let r = written(run(MASTER), &healthy(), at(1));
    let failed = Observed {
        master: Some(MasterState::Failed("BackoffLimitExceeded".into())),
        ..healthy()
    };
    let failing = follow(&r, &failed, at(2), Some(1));
    let phase = failing
        .notices
        .iter()
        .find(|n| n.reason == "Failed")
        .expect("a Failed Event");
    assert_eq!(phase.type_, EventType::Warning);
    assert!(
        phase.note.contains("BackoffLimitExceeded"),
        "{}",
        phase.note
    );
}

#[test]
fn each_resume_and_each_generation_is_its_own_event() {
    let sampling = |generation, resumed_at: Option<&str>| Observed {
        progress: Some(Progress {
            generation: Some(generation),
            ..Default::default()
        }),
        resumed: resumed_at.map(|at| crate::protocol::Resumed {
            from_generation: 3,
            at: at.into(),
        }),
        ..healthy()
    };
    let r = written(run(MASTER), &sampling(2, None), at(1));
    let resuming = follow(&r, &sampling(3, Some("t1")), at(2), Some(1));
    let resumed = resuming
        .notices
        .iter()
        .find(|n| n.reason == "Resumed")
        .unwrap();
    assert!(
        resumed.note.contains("generation 3") && resumed.note.contains("resume 1"),
        "{}",
        resumed.note
    );
    let generation = resuming
        .notices
        .iter()
        .find(|n| n.reason == "GenerationCompleted")
        .unwrap();
    assert_eq!(
        generation.note,
        "generation 2 completed; sampling generation 3"
    );
    assert!(!resumed.fold && !generation.fold);
    assert_eq!(
        r.status.as_ref().unwrap().resumes,
        None::<Resumes>,
        "nothing resumed before"
    );
}

#[test]
fn a_completed_generation_says_its_epsilon_and_acceptance_rate_as_pyabc_logs_them() {
    let sampling = |generation| Observed {
        progress: Some(Progress {
            generation: Some(generation),
            ..Default::default()
        }),
        ..healthy()
    };
    let r = written(run(MASTER), &sampling(2), at(1));
    let observed = Observed {
        records: Some(crate::controller::records::RecordsRead {
            recorded: 3,
            records: vec![record(2)],
            problem: None,
        }),
        ..sampling(3)
    };
    let notices = follow(&r, &observed, at(2), Some(1)).notices;
    let generation = notices
        .iter()
        .find(|n| n.reason == "GenerationCompleted")
        .unwrap();
    assert_eq!(
        generation.note,
        "generation 2 completed, epsilon 3.33333333e-01, accepted 100 / 400 = 2.5000e-01; \
         sampling generation 3"
    );
}

#[test]
fn a_refused_database_is_a_resume_failed_warning() {
    let r = written(run(MASTER), &healthy(), at(1));
    let refused = Observed {
        master_start: start(StartOutcome::Refused, "other observed data", "t1"),
        ..healthy()
    };
    let refusing = follow(&r, &refused, at(2), Some(1));
    let warning = refusing
        .notices
        .iter()
        .find(|n| n.reason == "ResumeFailed")
        .unwrap();
    assert!(warning.note.contains("other observed data"));
}

/// Every Event the controller can publish, from the fixtures above and the constructors.
fn every_notice() -> Vec<Notice> {
    let mut notices = Vec::new();
    let master = run(MASTER);
    // Every phase, entered from another.
    for (observed, r) in [
        (
            Observed {
                workers_ready: 0,
                ..healthy()
            },
            master.clone(),
        ),
        (healthy(), master.clone()),
        (
            Observed {
                master: Some(MasterState::Succeeded),
                ..healthy()
            },
            master.clone(),
        ),
        (
            Observed {
                master: Some(MasterState::Failed("x".into())),
                ..healthy()
            },
            master.clone(),
        ),
        (
            Observed {
                stop: Some(crate::controller::observe::StopStage::Stopped),
                ..healthy()
            },
            run("{image: i, stop: true}"),
        ),
        (healthy(), run("{image: i, suspend: true}")),
    ] {
        notices.extend(follow(&r, &observed, at(1), None).notices);
    }
    let sampled = written(
        master.clone(),
        &Observed {
            progress: Some(Progress {
                generation: Some(1),
                ..Default::default()
            }),
            redis_run_id: Some("a".into()),
            ..healthy()
        },
        at(1),
    );
    let eventful = Observed {
        progress: Some(Progress {
            generation: Some(2),
            ..Default::default()
        }),
        resumed: Some(crate::protocol::Resumed {
            from_generation: 2,
            at: "t1".into(),
        }),
        master_start: start(StartOutcome::New, "no results database there yet", "t1"),
        worker_pod_problem: Some(image_pull_problem()),
        redis_run_id: Some("a".into()),
        ..healthy()
    };
    let follow_up = follow(&sampled, &eventful, at(2), Some(1));
    notices.extend(follow_up.problem);
    notices.extend(follow_up.notices);
    let refused = Observed {
        master_start: start(StartOutcome::Refused, "other data", "t2").map(|s| MasterStart {
            module_version: Some("0.0.9".into()),
            ..s
        }),
        ..healthy()
    };
    notices.extend(follow(&sampled, &refused, at(2), Some(1)).notices);
    notices.extend([
        redis_restarted_notice(&[]),
        redis_restarted_notice(&["r-master-x".into()]),
        lost_worker_notice(&master, "r-workers-1", &["repaired 1 claim".into()]),
        worker_replaced_notice(&master, "r-workers-1", "its runtime expired", true),
        worker_replaced_notice(&master, "r-workers-1", "it exited", false),
        cleared_lock_notice(),
        stop_requested_notice(),
        master_pod_kept_notice(&master),
        reconcile_error_notice(Some("n".into()), "boom".into(), Some(("Job", "r-master"))),
        unreadable_notice("spec.workers.replicas: invalid type".into()),
    ]);
    notices
}

#[test]
fn every_event_reason_the_controller_publishes_has_a_case_here() {
    let published: BTreeSet<String> = every_notice().into_iter().map(|n| n.reason).collect();
    // The phases.
    for phase in Phase::ALL {
        assert!(
            published.contains(&phase.to_string()),
            "no case publishes {phase}"
        );
    }
    // The reasons named in the code: `reason::NAME` anywhere in the controller, NAME's value
    // read from the `reason` module.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/controller");
    let follow_up = std::fs::read_to_string(dir.join("follow_up.rs")).unwrap();
    let value_of = |name: &str| -> String {
        if name == "UNREADABLE" {
            return crate::controller::guard::UNREADABLE_REASON.to_string();
        }
        let line = follow_up
            .lines()
            .find(|l| {
                l.trim_start()
                    .starts_with(&format!("pub const {name}: &str = "))
            })
            .unwrap_or_else(|| panic!("reason::{name} is not a constant of the reason module"));
        line.split('"').nth(1).unwrap().to_string()
    };
    let mut named = BTreeSet::new();
    for file in std::fs::read_dir(&dir).unwrap() {
        let path = file.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap();
        if name == "follow_up_tests.rs" {
            continue;
        }
        let code = std::fs::read_to_string(&path).unwrap();
        for (i, _) in code.match_indices("reason::") {
            let name: String = code[i + "reason::".len()..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || *c == '_')
                .collect();
            if !name.is_empty() {
                named.insert(value_of(&name));
            }
        }
        // Every Event is made here, so that it has a case: nowhere else builds a Notice.
        if !["follow_up.rs", "events.rs"].contains(&name) {
            assert!(
                !code.contains("Notice {"),
                "{name} builds a Notice of its own"
            );
        }
    }
    assert!(named.len() >= 10, "{named:?}");
    let missing: Vec<&String> = named.difference(&published).collect();
    assert!(missing.is_empty(), "no case publishes {missing:?}");
    // A problem is published under the Degraded condition's reason.
    assert!(published.contains("ImagePullBackOff"));
}
#[test]
fn ttl_waits_what_is_left_at_most_a_day_and_survives_any_ttl_and_clock() {
    let finished: Timestamp = "2025-01-01T00:00:00Z".parse().unwrap();
    let later = |secs: i64| finished + k8s_openapi::jiff::SignedDuration::from_secs(secs);
    let secs = |d: std::time::Duration| d.as_secs();
    assert_eq!(ttl_left(60, finished, later(20)).map(secs), Some(41));
    assert_eq!(ttl_left(60, finished, later(60)), None);
    assert_eq!(ttl_left(0, finished, finished), None);
    // A TTL of centuries, also with a condition written by a clock ahead of ours.
    assert_eq!(
        ttl_left(i64::MAX, finished, later(-5)).map(secs),
        Some(86401)
    );
    assert_eq!(
        ttl_left(i64::MAX, finished, later(20)).map(secs),
        Some(86401)
    );
}

#[test]
fn only_a_restarted_master_that_started_anew_is_a_warning() {
    let mut r = run("{image: i, master: {command: [python, m.py]}}");
    let new_run = |at: &str| Observed {
        master_start: start(
            StartOutcome::New,
            "started a new run in m.db: no results database there yet",
            at,
        ),
        ..healthy()
    };
    let mut warnings = Vec::new();
    let generation_2 = Observed {
        progress: Some(Progress {
            analysis_id: Some("a".into()),
            generation: Some(2),
            ..Default::default()
        }),
        ..new_run("t1")
    };
    // The first start; sampling; the master killed, its retry finds no database.
    for observed in [new_run("t1"), generation_2, new_run("t2")] {
        let old = r.status.clone().unwrap_or_default();
        let status = compute(&r, &observed, Timestamp::from_second(1).unwrap());
        warnings.push(master_start_warning(&old, &status).map(|(reason, _)| reason));
        r.status = Some(status);
    }
    assert_eq!(warnings, [None, None, Some("NotResumed")]);
}

#[test]
fn a_master_module_of_another_version_is_warned_of_once_per_start() {
    let mut r = run("{image: i}");
    let started = |at: &str, version: &str| Observed {
        master_start: start(StartOutcome::New, "no results database there yet", at).map(|s| {
            MasterStart {
                module_version: Some(version.into()),
                ..s
            }
        }),
        ..healthy()
    };
    let ours = env!("CARGO_PKG_VERSION");
    let mut warnings = Vec::new();
    // An old module starts (and is seen twice), then the master is started again with the
    // operator's.
    for observed in [
        started("t1", "0.0.9"),
        started("t1", "0.0.9"),
        started("t2", ours),
    ] {
        let old = r.status.clone().unwrap_or_default();
        let status = compute(&r, &observed, Timestamp::from_second(1).unwrap());
        warnings.push(module_version_warning(&old, &status).is_some());
        r.status = Some(status);
    }
    assert_eq!(warnings, [true, false, false]);
    let status = r.status.unwrap();
    assert_eq!(
        status.last_master_start.unwrap().module_version.as_deref(),
        Some(ours),
        "the status reports the module's version"
    );
}

#[test]
fn progress_counters_are_written_at_a_bounded_rate_and_the_rest_at_once() {
    use std::time::Duration;
    let r = run("{image: i}");
    let at = |progress: Option<Progress>, master: MasterState| {
        compute(
            &r,
            &Observed {
                progress,
                master: Some(master),
                ..healthy()
            },
            Timestamp::from_second(10).unwrap(),
        )
    };
    let progress = |generation, accepted| {
        Some(Progress {
            generation: Some(generation),
            accepted,
            evaluations: accepted * 3,
            required: 10,
            ..Default::default()
        })
    };
    let written = at(progress(1, 2), MasterState::Running);
    let interval = Duration::from_secs(10);
    let due = |new: &AbcRunStatus, since: Option<u64>| {
        write_due(
            Some(&written),
            new,
            since.map(Duration::from_secs),
            interval,
        )
    };
    assert_eq!(write_due(None, &written, None, interval), StatusWrite::Now);
    assert_eq!(due(&written, Some(1)), StatusWrite::Unchanged);
    let counted = at(progress(1, 5), MasterState::Running);
    assert_eq!(
        due(&counted, Some(3)),
        StatusWrite::After(Duration::from_secs(7))
    );
    assert_eq!(due(&counted, Some(10)), StatusWrite::Now);
    // A controller that has not written the run since it started writes at once.
    assert_eq!(due(&counted, None), StatusWrite::Now);
    // A new generation, a finished master: at once.
    assert_eq!(
        due(&at(progress(2, 0), MasterState::Running), Some(1)),
        StatusWrite::Now
    );
    assert_eq!(
        due(&at(progress(1, 2), MasterState::Succeeded), Some(1)),
        StatusWrite::Now
    );
}

#[test]
fn an_idle_run_is_looked_at_when_its_idle_time_is_over() {
    let r = run("{image: i, idleTimeoutSeconds: 30}");
    let idle = Observed {
        analysis: Some(false),
        ..healthy()
    };
    let follow_up = follow(&r, &idle, at(1), None);
    assert_eq!(follow_up.next, Next::LookAgainIn(Duration::from_secs(31)));
}
