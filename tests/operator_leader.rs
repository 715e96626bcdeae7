//! Two replicas of the controller for one namespace, as the chart runs them: exactly one leads
//! (the Lease names it, its pod carries the leader label the external metrics Service
//! selects); when it dies the other takes over, and a worker lost during the failover is
//! repaired exactly once; a leader stopped with SIGTERM hands over without waiting for its
//! Lease to expire; a leader whose Lease was taken stops at once.

mod support;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use nix::sys::signal::Signal;
use std::time::Instant;
use support::cluster::eventually;
use support::controller::ControllerProcess;
use support::run::{Setup, master_finishes, setup};

/// The Lease's default name (`--lease-name`).
const LEASE: &str = "abc-operator";
const LEADER_LABEL: &str = "abc-operator.dev/leader";
/// The Lease's duration: a standby waits this long for a leader that stopped renewing.
const LEASE_SECONDS: i64 = 10;

/// A replica: the controller process with the identity the chart's downward API gives it, and
/// its pod (on kwok: a pod without a process) for the leader label.
async fn replica(s: &Setup, name: &str) -> ControllerProcess {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "abc-operator"}},
        "spec": {"containers": [{"name": "abc-operator", "image": "abc-operator"}]}
    }))
    .unwrap();
    pods(s).create(&PostParams::default(), &pod).await.unwrap();
    ControllerProcess::start_with_env(
        &s.ns.name,
        &[],
        &[("POD_NAME", name), ("POD_NAMESPACE", &s.ns.name)],
    )
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn pods(s: &Setup) -> Api<Pod> {
    Api::namespaced(s.client.clone(), &s.ns.name)
}

fn leases(s: &Setup) -> Api<Lease> {
    Api::namespaced(s.client.clone(), &s.ns.name)
}

async fn holder(s: &Setup) -> Option<String> {
    let lease = leases(s).get_opt(LEASE).await.ok()??;
    lease.spec?.holder_identity.filter(|h| !h.is_empty())
}

/// Waits until `who` holds the Lease (any replica if `None`); the holder.
async fn wait_for_holder(s: &Setup, secs: u64, who: Option<&str>) -> String {
    let what = format!("{} to hold the Lease", who.unwrap_or("a replica"));
    eventually(secs, &what, || async {
        holder(s)
            .await
            .filter(|h| who.is_none_or(|who| who == h.as_str()))
    })
    .await
}

async fn labelled_leader(s: &Setup, pod: &str) -> bool {
    let pod = pods(s).get(pod).await.unwrap();
    pod.metadata.labels.unwrap_or_default().get(LEADER_LABEL) == Some(&"true".to_string())
}

/// Waits until `leader` leads and `standby` stands by, as each says itself (`/readyz`, the
/// leader gauge) and as the external metrics Service would select them (the label).
async fn wait_until_one_leads(
    s: &Setup,
    leader: (&str, &ControllerProcess),
    standby: (&str, &ControllerProcess),
) {
    eventually(60, "one leader and one standby", || async {
        let standing_by = standby.1.get("/readyz").await?;
        (standing_by.starts_with("HTTP/1.0 200") || standing_by.starts_with("HTTP/1.1 200"))
            .then_some(())?;
        standing_by
            .contains(&format!("standing by, {} leads", leader.0))
            .then_some(())?;
        (standby.1.metric("abc_operator_leader ").await? == 0.0).then_some(())?;
        (leader.1.metric("abc_operator_leader ").await? == 1.0).then_some(())?;
        (labelled_leader(s, leader.0).await && !labelled_leader(s, standby.0).await).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_killed_leader_is_replaced_and_a_worker_lost_meanwhile_is_repaired_once() {
    let s = setup("ld-kill", 3, "10m", "0.2").await;
    let mut a = replica(&s, "replica-a").await;
    let mut b = replica(&s, "replica-b").await;
    let _kubelet = s.kubelet();
    // Generations long enough that a worker deleted during the failover is inside one.
    let mut master = s.master(100, 2);

    let first = wait_for_holder(&s, 60, None).await;
    let (leader, standby, second) = match first.as_str() {
        "replica-a" => (&mut a, &mut b, "replica-b"),
        "replica-b" => (&mut b, &mut a, "replica-a"),
        other => panic!("the Lease names {other:?}, not a replica"),
    };
    wait_until_one_leads(&s, (&first, leader), (second, standby)).await;
    let victim = s.worker_inside_a_generation().await;

    // The leader dies without a word, and a worker is lost before anyone leads again.
    leader.signal_and_wait(Signal::SIGKILL);
    let killed = Instant::now();
    let gone = DeleteParams {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    pods(&s).delete(&victim, &gone).await.unwrap();

    wait_for_holder(&s, 30, Some(second)).await;
    eprintln!(
        "failover after SIGKILL of the leader: {:.1} s",
        killed.elapsed().as_secs_f64()
    );
    assert!(standby.exited().is_none(), "the new leader runs");
    eventually(
        30,
        "the leader label on the new leader's pod only",
        || async {
            (labelled_leader(&s, second).await && !labelled_leader(&s, &first).await).then_some(())
        },
    )
    .await;

    assert!(
        master_finishes(&mut master, 240).await,
        "the run did not complete after the failover"
    );
    let repairs = eventually(60, "a RepairedLostWorker event", || async {
        let events = s.events("RepairedLostWorker").await;
        (!events.is_empty()).then_some(events)
    })
    .await;
    let repairs_of_victim: u32 = repairs
        .iter()
        .filter(|e| e.message.as_deref().unwrap_or_default().contains(&victim))
        .map(|e| e.count.unwrap_or(1).max(1) as u32)
        .sum();
    assert_eq!(
        repairs_of_victim, 1,
        "the lost worker must be repaired exactly once: {repairs:?}"
    );
    assert_eq!(
        s.runs
            .get("sim")
            .await
            .unwrap()
            .status
            .unwrap()
            .lost_workers,
        1
    );
}

#[tokio::test]
async fn a_leader_stopped_with_sigterm_hands_over_without_waiting_for_expiry() {
    let s = setup("ld-term", 0, "10m", "0").await;
    let mut a = replica(&s, "replica-a").await;
    let mut b = replica(&s, "replica-b").await;
    let first = wait_for_holder(&s, 60, None).await;
    let (leader, standby, second) = if first == "replica-a" {
        (&mut a, &mut b, "replica-b")
    } else {
        (&mut b, &mut a, "replica-a")
    };
    wait_until_one_leads(&s, (&first, leader), (second, standby)).await;

    let renewed = leases(&s)
        .get(LEASE)
        .await
        .unwrap()
        .spec
        .unwrap()
        .renew_time;
    let status = leader.signal_and_wait(Signal::SIGTERM);
    assert!(
        status.success(),
        "a leader stopped with SIGTERM exits cleanly: {status}; its log ends:\n{}",
        last_lines(&leader.logs(), 20)
    );
    wait_for_holder(&s, 30, Some(second)).await;

    // Taken over before the old leader's last renewal we saw could have expired: it was
    // released, not waited out.
    let taken = leases(&s).get(LEASE).await.unwrap().spec.unwrap();
    let (renewed, acquired) = (renewed.unwrap().0, taken.acquire_time.unwrap().0);
    assert!(
        acquired < renewed + k8s_openapi::jiff::SignedDuration::from_secs(LEASE_SECONDS),
        "the standby waited for the Lease to expire (renewed {renewed}, taken over {acquired})"
    );
    assert!(
        !labelled_leader(&s, &first).await,
        "the stopped leader's pod keeps the leader label"
    );
}

#[tokio::test]
async fn a_leader_whose_lease_is_taken_stops_at_once() {
    let s = setup("ld-lost", 0, "10m", "0").await;
    let mut only = replica(&s, "replica-a").await;
    wait_for_holder(&s, 60, Some("replica-a")).await;

    // Another replica takes the Lease (as one would that saw it expire); a renewal in between
    // makes the replace a conflict: read again.
    eventually(30, "the Lease taken by another replica", || async {
        let mut lease = leases(&s).get(LEASE).await.ok()?;
        let spec = lease.spec.as_mut()?;
        spec.holder_identity = Some("replica-z".into());
        spec.renew_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
            k8s_openapi::jiff::Timestamp::now(),
        ));
        leases(&s)
            .replace(LEASE, &PostParams::default(), &lease)
            .await
            .ok()
    })
    .await;

    let status = eventually(30, "the replaced leader to exit", || {
        let exited = only.exited();
        async move { exited }
    })
    .await;
    assert!(
        !status.success(),
        "a lost leadership is a failure: {status}"
    );
    assert!(
        only.logs().contains("replica-z"),
        "the log names the new holder:\n{}",
        only.logs()
    );
    assert_eq!(holder(&s).await.as_deref(), Some("replica-z"));
}
