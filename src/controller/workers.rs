//! Which worker pods to replace and which workers' ledgers to repair, decided from observed
//! state only: the run's worker pods (read after the Redis snapshot, so a ledger whose pod is
//! missing from the list really lost its pod) and the snapshot's ledgers.

use super::pod_index::{RunPod, WatchedContainer};
use super::pod_problems::CRASH_AT_START;
use crate::protocol::{Heartbeat, Ledger};
use std::borrow::Borrow;
use std::collections::BTreeMap;

/// Name of the worker container in worker pods.
pub const WORKER_CONTAINER: &str = "worker";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkerAction {
    /// The worker process is gone without releasing its ledger: repair the counters.
    Repair {
        ledger_id: String,
        worker: String,
        reason: String,
    },
    /// The pod's worker process has ended (runtime over, crash) or hangs: delete the pod so
    /// the ReplicaSet replaces it at once, instead of the kubelet restarting it with back-off.
    Replace {
        pod: String,
        reason: String,
        expired: bool,
    },
}

/// The actions for one reconcile at `now_ms` (Redis time). `heartbeat` declares a worker whose
/// pod exists but whose ledger stopped beating (a hung process, a lost network) lost.
pub fn decide(
    pods: &[impl Borrow<RunPod>],
    ledgers: &[Ledger],
    now_ms: i64,
    heartbeat: Heartbeat,
) -> Vec<WorkerAction> {
    let by_name: BTreeMap<String, &RunPod> = pods
        .iter()
        .map(|p| (p.borrow().name.clone(), p.borrow()))
        .collect();
    let mut actions = Vec::new();
    let mut replaced = std::collections::BTreeSet::new();

    for ledger in ledgers {
        let worker = ledger.worker_id().to_string();
        let lost = match by_name.get(&worker) {
            None => Some("its pod is gone".to_string()),
            Some(pod) => match worker_status(pod) {
                Some(status) if ended_after(status, ledger) => Some(format!(
                    "its container ended ({})",
                    termination(status).unwrap_or_else(|| "terminated".into())
                )),
                _ if heartbeat.is_stale(ledger, now_ms) => {
                    let reason =
                        format!("no heartbeat for over {} s", heartbeat.timeout().as_secs());
                    if replaced.insert(worker.clone()) {
                        actions.push(WorkerAction::Replace {
                            pod: worker.clone(),
                            reason: reason.clone(),
                            expired: false,
                        });
                    }
                    Some(reason)
                }
                _ => None,
            },
        };
        if let Some(reason) = lost {
            actions.push(WorkerAction::Repair {
                ledger_id: ledger.id.clone(),
                worker,
                reason,
            });
        }
    }

    for (name, pod) in &by_name {
        if pod.deleting || replaced.contains(name) {
            continue;
        }
        let Some(status) = worker_status(pod) else {
            continue;
        };
        let ended = status
            .state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .is_some()
            || status.restart_count > 0;
        if ended {
            let expired = last_exit_code(status) == Some(0);
            if !expired && crashed_at_start(status) {
                // A new pod would crash the same way at once: leave it to the kubelet's
                // restart back-off, which the run's status reports (pod_problems).
                continue;
            }
            let reason = if expired {
                "its runtime is over".to_string()
            } else {
                termination(status).unwrap_or_else(|| "its worker exited".into())
            };
            actions.push(WorkerAction::Replace {
                pod: name.clone(),
                reason,
                expired,
            });
        }
    }
    actions
}

fn worker_status(pod: &RunPod) -> Option<&WatchedContainer> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    statuses
        .iter()
        .find(|c| c.name == WORKER_CONTAINER)
        .or_else(|| statuses.first())
}

/// The container this ledger's process ran in has ended since the ledger was written: now
/// (terminated) or earlier (restarted, the old process's ledger left behind).
fn ended_after(status: &WatchedContainer, ledger: &Ledger) -> bool {
    if status
        .state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .is_some()
    {
        return true;
    }
    let Some(last) = status
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
    else {
        return false;
    };
    match (last.finished_at.as_ref(), ledger.started_ms) {
        (Some(finished), Some(started)) => finished.0.as_millisecond() >= started,
        // Without times, a restarted container means the ledger may be the old process's;
        // the heartbeat decides.
        _ => false,
    }
}

/// The container's last run ended with an error within [`CRASH_AT_START`] of starting. Without
/// both times (never from a kubelet) it did not: replacing is the safe default.
fn crashed_at_start(status: &WatchedContainer) -> bool {
    let state = status.state.as_ref().and_then(|s| s.terminated.as_ref());
    let last = status
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref());
    let Some(ended) = state.or(last) else {
        return false;
    };
    // The command could not be started at all (the kubelet gives no start time then).
    if ended.reason.as_deref() == Some("StartError") {
        return true;
    }
    match (&ended.started_at, &ended.finished_at) {
        (Some(started), Some(finished)) => {
            finished.0.duration_since(started.0).as_secs() < CRASH_AT_START.as_secs() as i64
        }
        _ => false,
    }
}

fn last_exit_code(status: &WatchedContainer) -> Option<i32> {
    let state = status.state.as_ref().and_then(|s| s.terminated.as_ref());
    let last = status
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref());
    state.or(last).map(|t| t.exit_code)
}

fn termination(status: &WatchedContainer) -> Option<String> {
    let state = status.state.as_ref().and_then(|s| s.terminated.as_ref());
    let last = status
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref());
    state.or(last).map(|t| {
        format!(
            "exit code {}{}",
            t.exit_code,
            t.reason
                .as_ref()
                .map(|r| format!(", {r}"))
                .unwrap_or_default()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::liveness_test_support::ledger as liveness_ledger;

    fn pod(name: &str, container_status: serde_json::Value) -> RunPod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "status": {"containerStatuses": [container_status]}
        }))
        .unwrap()
    }

    fn running(name: &str) -> RunPod {
        pod(
            name,
            serde_json::json!({"name": "worker", "image": "i", "imageID": "", "ready": true,
            "restartCount": 0, "state": {"running": {}}}),
        )
    }

    fn exited(name: &str, code: i32) -> RunPod {
        pod(
            name,
            serde_json::json!({"name": "worker", "image": "i", "imageID": "", "ready": false,
            "restartCount": 0, "state": {"terminated": {"exitCode": code}}}),
        )
    }

    fn ledger(id: &str, worker: &str, heartbeat_ms: i64) -> Ledger {
        Ledger {
            analysis_id: Some("a".into()),
            generation: Some(0),
            joined: true,
            ..liveness_ledger(id, Some(worker), Some(0), Some(heartbeat_ms))
        }
    }

    /// The default heartbeat timeout.
    fn minute() -> Heartbeat {
        Heartbeat::from_timeout_seconds(60)
    }

    #[test]
    fn live_workers_are_left_alone() {
        assert!(
            decide(
                &[running("w1")],
                &[ledger("w1", "w1", 1000)],
                2000,
                minute()
            )
            .is_empty()
        );
    }

    #[test]
    fn a_ledger_without_its_pod_is_repaired() {
        let ledgers = [ledger("w1-0", "w1", 1000), ledger("w1-1", "w1", 1000)];
        let actions = decide(&[running("w2")], &ledgers, 2000, minute());
        let repaired: Vec<_> = actions
            .iter()
            .filter_map(|a| match a {
                WorkerAction::Repair { ledger_id, .. } => Some(ledger_id.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            repaired,
            ["w1-0", "w1-1"],
            "every process of the lost pod is repaired"
        );
    }

    #[test]
    fn an_expired_worker_is_replaced_and_a_crashed_one_repaired_too() {
        let actions = decide(
            &[exited("w1", 0), exited("w2", 137)],
            &[ledger("w2", "w2", 1000)],
            2000,
            minute(),
        );
        assert!(actions.contains(&WorkerAction::Replace {
            pod: "w1".into(),
            reason: "its runtime is over".into(),
            expired: true
        }));
        assert!(
            actions
                .iter()
                .any(|a| matches!(a, WorkerAction::Repair { ledger_id, .. } if ledger_id == "w2"))
        );
        assert!(actions.iter().any(
            |a| matches!(a, WorkerAction::Replace { pod, expired: false, .. } if pod == "w2")
        ));
    }

    /// A worker whose last run started at `started` and exited with `code` at `finished`
    /// (seconds), restarted by the kubelet since.
    fn restarted(name: &str, code: i32, started: i64, finished: i64) -> RunPod {
        let time = |s: i64| {
            k8s_openapi::jiff::Timestamp::from_second(s)
                .unwrap()
                .to_string()
        };
        pod(
            name,
            serde_json::json!({"name": "worker", "image": "i", "imageID": "", "ready": true,
            "restartCount": 1, "state": {"running": {"startedAt": time(finished + 1)}},
            "lastState": {"terminated": {"exitCode": code,
                "startedAt": time(started), "finishedAt": time(finished)}}}),
        )
    }

    #[test]
    fn a_worker_crashing_at_start_is_left_to_the_kubelets_back_off() {
        // Replacing it would only make a new pod crash the same way, without back-off.
        assert!(decide(&[restarted("w1", 1, 1000, 1003)], &[], 2000, minute()).is_empty());
        // One that crashed after working for a while is replaced at once, as before...
        let crashed_later = decide(&[restarted("w2", 137, 1000, 1600)], &[], 2000, minute());
        assert!(matches!(
            crashed_later.as_slice(),
            [WorkerAction::Replace { pod, expired: false, .. }] if pod == "w2"
        ));
        // ...and so is one whose runtime is over, however short.
        let expired = decide(&[restarted("w3", 0, 1000, 1003)], &[], 2000, minute());
        assert!(matches!(
            expired.as_slice(),
            [WorkerAction::Replace { expired: true, .. }]
        ));
        // A command that could not even start crashes at start, whatever the start time says.
        let mut never_started = restarted("w4", 128, 0, 1003);
        let status = &mut never_started
            .status
            .as_mut()
            .unwrap()
            .container_statuses
            .as_mut()
            .unwrap()[0];
        status
            .last_state
            .as_mut()
            .unwrap()
            .terminated
            .as_mut()
            .unwrap()
            .reason = Some("StartError".into());
        assert!(decide(&[never_started], &[], 2000, minute()).is_empty());
    }

    #[test]
    fn a_silent_worker_is_repaired_and_replaced_after_the_timeout() {
        let ledgers = [ledger("w1", "w1", 1000)];
        let actions = decide(&[running("w1")], &ledgers, 1000 + 61_000, minute());
        assert_eq!(actions.len(), 2, "{actions:?}");
        assert!(decide(&[running("w1")], &ledgers, 1000 + 59_000, minute()).is_empty());
    }

    #[test]
    fn healthy_workers_beating_at_their_period_are_never_lost_at_the_shortest_timeout() {
        let run = crate::resources::test_support::run(
            "image: i\nworkers: {heartbeatTimeoutSeconds: 5}\n",
        );
        let deployment = crate::resources::worker_deployment(&run).unwrap();
        let container = &deployment.spec.unwrap().template.spec.unwrap().containers[0];
        let period_ms: i64 =
            crate::resources::test_support::env_value(container, "ABC_HEARTBEAT_SECONDS")
                .unwrap()
                .parse::<i64>()
                .unwrap()
                * 1000;
        let heartbeat = Heartbeat::from_timeout_seconds(run.spec.workers.heartbeat_timeout_seconds);
        // Seen just before its next beat, and with that beat missed entirely.
        for age_ms in [period_ms, 2 * period_ms] {
            let ledgers = [ledger("w1", "w1", 100_000)];
            let actions = decide(&[running("w1")], &ledgers, 100_000 + age_ms, heartbeat);
            assert!(actions.is_empty(), "age {age_ms} ms: {actions:?}");
        }
    }
}
