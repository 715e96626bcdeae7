//! The worker entrypoint through real runs: its ledgers follow pyABC's counters, heartbeats,
//! the runtime limit while idle, SIGTERM, and fencing of a worker declared lost.

use crate::support::cluster::eventually;
use crate::support::python::{manager, master, worker};
use crate::support::redis::{connect, server, snapshot, wait_for};
use crate::{ledger, run_to_end, subdir};
use abc_operator::protocol::{self, Heartbeat, Ledger, repair_lost_worker, stop};
use nix::sys::signal::Signal;
use redis::AsyncCommands;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledgers_follow_pyabc_counters_through_real_runs() {
    let redis = server();
    let endpoint = redis.endpoint();
    let mut conn = connect(&redis).await;
    let root = tempfile::tempdir().unwrap();
    let env = [
        ("ABC_TEST_MODEL_SLEEP", "0.002"),
        ("ABC_HEARTBEAT_SECONDS", "1"),
    ];
    let mut a = worker(
        &endpoint,
        "a",
        &[env[0], env[1], ("ABC_WORKER_PROCESSES", "2")],
        root.path(),
    );
    let mut b = worker(&endpoint, "b", &env, root.path());
    let snap = wait_for(
        &mut conn,
        Duration::from_secs(180),
        "three registered ledgers",
        |s| s.ledgers.len() == 3,
    )
    .await;
    let ids: Vec<&str> = snap.ledgers.iter().map(|l| l.id.as_str()).collect();
    assert_eq!(ids, ["a-0", "a-1", "b"]);
    assert_eq!(snap.ledgers_of("a").count(), 2);
    assert!(snap.ledgers.iter().all(Ledger::is_idle));

    // A dynamic run with failures and batches, then one with look-ahead sampling.
    for look_ahead in ["0", "1"] {
        let dir = subdir(&root, &format!("look-ahead-{look_ahead}"));
        let mut m = master(
            &endpoint,
            &[
                ("PROTO_POPULATION", "60"),
                ("PROTO_GENERATIONS", "3"),
                ("PROTO_BATCH_SIZE", "2"),
                ("PROTO_FAIL_RATE", "0.1"),
                ("PROTO_LOOK_AHEAD", look_ahead),
            ],
            &dir,
        );
        let seen = run_to_end(&mut conn, &mut m).await;
        assert!(
            seen.generations.len() >= 3,
            "saw generations {:?}",
            seen.generations
        );
        // the invariants were checked while workers were inside generations and owed indices
        assert!(
            seen.busy > 10 && seen.claims > 10,
            "busy {} claims {}",
            seen.busy,
            seen.claims
        );
        // Quiet: the master's stop() removed the analysis; nobody owes anything.
        let snap = wait_for(&mut conn, Duration::from_secs(20), "idle ledgers", |s| {
            s.ledgers.len() == 3 && s.ledgers.iter().all(Ledger::is_idle)
        })
        .await;
        assert_eq!(snap.analysis_id, None);
        assert_eq!(snap.info_line(), "No active generation");
        assert_eq!(snap.info_line(), manager(&endpoint, "info"));
    }

    // pyABC's stop message: every worker process leaves, and no ledger is left behind.
    assert_eq!(stop(&mut conn).await.unwrap(), 3);
    assert!(
        a.wait(Duration::from_secs(30)).success(),
        "{}",
        a.log_tail()
    );
    assert!(
        b.wait(Duration::from_secs(30)).success(),
        "{}",
        b.log_tail()
    );
    assert!(snapshot(&mut conn).await.ledgers.is_empty());
    let members: Vec<String> = conn.smembers(protocol::keys::LEDGER_SET).await.unwrap();
    assert!(members.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entrypoint_heartbeat_runtime_sigterm_and_fencing() {
    let redis = server();
    let endpoint = redis.endpoint();
    let mut conn = connect(&redis).await;
    let root = tempfile::tempdir().unwrap();
    let hb = ("ABC_HEARTBEAT_SECONDS", "1");
    let mut expiring = worker(
        &endpoint,
        "expiring",
        &[hb, ("ABC_WORKER_RUNTIME", "6s")],
        root.path(),
    );
    let mut terminated = worker(&endpoint, "terminated", &[hb], root.path());
    let mut hung = worker(&endpoint, "hung", &[hb], root.path());
    let first = wait_for(&mut conn, Duration::from_secs(180), "three ledgers", |s| {
        s.ledgers.len() == 3
    })
    .await;

    // Heartbeats advance on the Redis clock.
    let later = wait_for(
        &mut conn,
        Duration::from_secs(10),
        "a newer heartbeat",
        |s| {
            s.ledgers.len() == 3
                && ledger(s, "terminated").heartbeat_ms > ledger(&first, "terminated").heartbeat_ms
        },
    )
    .await;
    let three_seconds = Heartbeat::from_timeout_seconds(3);
    assert_eq!(three_seconds.stale_ledgers(&later).count(), 0);

    // A stopped (hung) process goes stale; the others do not.
    hung.signal(Signal::SIGSTOP);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(stale_after_3s(&mut conn).await, ["hung"]);

    // Declared lost and repaired, it must not come back: it exits 3 at its next heartbeat.
    let repair = repair_lost_worker(&mut conn, "hung")
        .await
        .unwrap()
        .unwrap();
    assert!(!repair.corrected());
    hung.signal(Signal::SIGCONT);
    assert_eq!(
        hung.wait(Duration::from_secs(15)).code(),
        Some(3),
        "{}",
        hung.log_tail()
    );
    assert!(
        snapshot(&mut conn)
            .await
            .ledgers
            .iter()
            .all(|l| l.id != "hung")
    );

    // SIGTERM while idle: exit 0, ledger removed.
    terminated.signal(Signal::SIGTERM);
    assert_eq!(
        terminated.wait(Duration::from_secs(15)).code(),
        Some(0),
        "{}",
        terminated.log_tail()
    );

    // pyABC ignores its runtime while idle; the entrypoint does not.
    assert_eq!(
        expiring.wait(Duration::from_secs(30)).code(),
        Some(0),
        "{}",
        expiring.log_tail()
    );
    // Its own words say why it left (no wall-clock bound here: this machine may be loaded).
    assert!(expiring.log().contains("runtime 6s over while idle"));
    assert!(snapshot(&mut conn).await.ledgers.is_empty());
}

/// The heartbeat is the supervisor's: it beats for each worker process that runs, whatever
/// its model does with the GIL, and for none that is stopped. A process stopped on its own
/// goes stale while its sibling does not; declared lost and repaired, it is ended by the
/// supervisor when it runs again (it must not touch the counters), and the worker's exit code
/// says so (3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_supervisor_beats_only_for_worker_processes_that_run() {
    let redis = server();
    let endpoint = redis.endpoint();
    let mut conn = connect(&redis).await;
    let root = tempfile::tempdir().unwrap();
    let mut pair = worker(
        &endpoint,
        "pair",
        &[
            ("ABC_HEARTBEAT_SECONDS", "1"),
            ("ABC_WORKER_PROCESSES", "2"),
        ],
        root.path(),
    );
    let registered = wait_for(&mut conn, Duration::from_secs(180), "two ledgers", |s| {
        s.ledgers.len() == 2
    })
    .await;
    let stopped = ledger(&registered, "pair-1").pid.unwrap();
    assert_ne!(i64::from(pair.pid()), stopped, "a process of its own");

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(stopped as i32), Signal::SIGSTOP).unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(stale_after_3s(&mut conn).await, ["pair-1"]);

    repair_lost_worker(&mut conn, "pair-1")
        .await
        .unwrap()
        .unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(stopped as i32), Signal::SIGCONT).unwrap();
    eventually(15, "the supervisor ending the repaired process", || async {
        pair.log()
            .contains("pair-1 repaired by the operator")
            .then_some(())
    })
    .await;
    pair.signal(Signal::SIGTERM);
    assert_eq!(
        pair.wait(Duration::from_secs(15)).code(),
        Some(3),
        "{}",
        pair.log_tail()
    );
    assert!(snapshot(&mut conn).await.ledgers.is_empty());
}

/// The ids of the ledgers a 3 s heartbeat timeout finds stale now.
async fn stale_after_3s(conn: &mut abc_operator::protocol::Connection) -> Vec<String> {
    Heartbeat::from_timeout_seconds(3)
        .stale_ledgers(&snapshot(conn).await)
        .map(|l| l.id.clone())
        .collect()
}

/// pyABC's master deletes a generation's keys once it reads n_worker 0, in a step of its own.
/// A worker that joins in between (a late `start`) must not bring n_worker back, nor leave it
/// at -1 when it leaves; one that joined in time leaves a deleted generation without a trace.
/// Driven through the entrypoint's own Redis client, as pyABC's worker loop calls it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_the_master_deleted_is_neither_joined_nor_left_at_minus_one() {
    let redis = server();
    let endpoint = redis.endpoint();
    let mut conn = connect(&redis).await;
    let body = r#"
admin.mset({'analysis_id': 'a', 'generation_a': 2, 'n_worker_a_2': 0})
joined = r.incr('n_worker_a_2')
admin.delete('n_worker_a_2')  # the master, after it read n_worker 0 before the join
left = r.decr('n_worker_a_2')
late = r.incr('n_worker_a_2')  # a late start: the generation is over
print(joined, left, late, admin.exists('n_worker_a_2'), w.STATE.in_generation,
      sorted(k.decode() for k in admin.hkeys(w.STATE.ledger_key)))
"#;
    assert_eq!(
        drive_ledger_client(&endpoint, "late", body),
        "1 0 0 0 False ['heartbeat', 'host', 'pid', 'process', 'started', 'worker']",
        "joined as worker 1; leaving and a late join change no counter; the ledger owes nothing"
    );
    let snap = snapshot(&mut conn).await;
    assert_eq!(snap.n_worker, None);
}

/// A dynamic evaluation costs a worker one round trip: the script that reports it also claims
/// the next one where pyABC's loop is about to (pyABC's own client makes 5; 8 in the
/// calibration sample). Counted on the server: the worker's scripts against the evaluations
/// the master's history records, calibration sample included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dynamic_evaluation_costs_the_worker_one_round_trip() {
    let redis = server();
    let endpoint = redis.endpoint();
    let mut conn = connect(&redis).await;
    let root = tempfile::tempdir().unwrap();
    let _w = worker(
        &endpoint,
        "w",
        &[("ABC_HEARTBEAT_SECONDS", "600")],
        root.path(),
    );
    wait_subscribed(&mut conn, 1).await;
    let scripts_before = command_calls(&mut conn, "evalsha").await;
    let mut m = master(
        &endpoint,
        &[("PROTO_POPULATION", "40"), ("PROTO_GENERATIONS", "2")],
        root.path(),
    );
    assert!(
        m.wait(Duration::from_secs(300)).success(),
        "{}",
        m.log_tail()
    );
    let scripts = command_calls(&mut conn, "evalsha").await - scripts_before;
    // "DONE max_t=1 evaluations=[40, 129, 111] ...": one figure per generation
    let log = m.log();
    let listed = log
        .split("evaluations=[")
        .nth(1)
        .and_then(|rest| rest.split(']').next())
        .unwrap_or_else(|| panic!("no evaluations in the master's log: {log}"));
    let evaluations: Vec<i64> = listed
        .split(',')
        .map(|n| n.trim().parse().unwrap())
        .collect();
    assert_eq!(evaluations.len(), 3, "calibration and 2 generations: {log}");
    // per generation the worker also joins, makes its first claim and (where its last result
    // script could not) leaves
    let per_generation = 3 * evaluations.len() as i64;
    let total: i64 = evaluations.iter().sum();
    assert!(
        scripts <= total + per_generation + 5,
        "{scripts} scripts for {total} evaluations ({evaluations:?})"
    );
}

/// Driven through the entrypoint's own Redis client, as pyABC's worker loop calls it: a
/// claim the result script made ahead is what pyABC's next INCRBY n_eval gets, with no round
/// trip of its own; one pyABC leaves without taking (a SIGTERM during the result script) is
/// given back like a lost worker's: its index done, counted as failed, so the master waits
/// for nothing and a calibration sample still fills up. Once the worker is leaving (here: its
/// runtime over), nothing is claimed ahead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_made_ahead_is_taken_by_pyabc_or_given_back() {
    let redis = server();
    let endpoint = redis.endpoint();
    let body = r#"
generation(0, 10, all_accepted=1)

r.incr('n_worker_a_0')
first = r.incr('n_eval_a_0', 1)
accept(0, first)
# pyABC's loop in the calibration sample, answered by the result script (the INFO calls count)
before = commands()
checks = [int(r.get(k)) for k in ('n_acc_a_0', 'n_req_a_0', 'n_eval_a_0', 'n_fail_a_0', 'n_req_a_0')]
same = r.get('analysis_id') == b'a'
second = r.incr('n_eval_a_0', 1)
served = commands() - before
accept(0, second)
r.decr('n_worker_a_0')  # a SIGTERM during the result script: pyABC leaves instead of claiming
r.incr('n_worker_a_0')
third = r.incr('n_eval_a_0', 1)
w.STATE.deadline = 0  # runtime over: pyABC's loop leaves at its next check
accept(0, third)
r.decr('n_worker_a_0')
print(first, second, third, checks, same, served, admin.get('n_eval_a_0').decode(),
      admin.get('n_fail_a_0').decode(), [int(i) for i in admin.lrange('done_ixs_a_0', 0, -1)],
      admin.get('n_worker_a_0').decode(), sorted(k.decode() for k in admin.hkeys(w.STATE.ledger_key)))
"#;
    assert_eq!(
        drive_ledger_client(&endpoint, "ahead", body),
        "1 2 4 [1, 10, 1, 0, 10] True 1 4 1 [1, 2, 3, 4] 0 \
         ['heartbeat', 'host', 'pid', 'process', 'started', 'worker']",
        "claims 1 and 2 taken, pyABC's reads answered with no command (only the INFO), claim 3 \
         given back as done and failed, nothing claimed after 4 once leaving; the ledger owes \
         nothing"
    );
}

/// A worker's last result script of a generation also leaves it, where pyABC's loop is about
/// to end (n_acc reached n_req; in the calibration sample, as many evaluations claimed as
/// required): pyABC's closing checks and its `DECR n_worker` cost no round trip, and the
/// master, which sleeps 100 ms whenever it finds a worker still in the generation, finds none
/// a round trip sooner. A worker leaves once per join: a second DECR changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workers_last_result_of_a_generation_also_leaves_it() {
    let redis = server();
    let endpoint = redis.endpoint();
    let body = r#"
def closing_checks(t, all_accepted):
    # pyABC's loop condition, then its leaving, counted in commands (the INFO calls count)
    before = commands()
    acc, req = int(r.get(f'n_acc_a_{t}')), int(r.get(f'n_req_a_{t}'))
    if acc < req and all_accepted:
        assert int(r.get(f'n_eval_a_{t}')) - int(r.get(f'n_fail_a_{t}')) >= int(r.get(f'n_req_a_{t}'))
    left = r.decr(f'n_worker_a_{t}')
    return commands() - before, left

# calibration: another worker claims the second evaluation while this one simulates the first
generation(0, 2, all_accepted=1)
r.incr('n_worker_a_0')
first = r.incr('n_eval_a_0', 1)
admin.incr('n_eval_a_0')
accept(0, first)
calibration = closing_checks(0, True)
# a generation: this worker claims both evaluations (the second one ahead) and accepts both
generation(1, 2)
r.incr('n_worker_a_1')
accept(1, r.incr('n_eval_a_1', 1))
int(r.get('n_acc_a_1')) < int(r.get('n_req_a_1')) and r.get('analysis_id')  # pyABC's loop
accept(1, r.incr('n_eval_a_1', 1))
last = closing_checks(1, False)
again = r.decr('n_worker_a_1')  # a second leave
print(calibration, last, again, admin.get('n_worker_a_0').decode(),
      admin.get('n_worker_a_1').decode(), w.STATE.in_generation,
      sorted(k.decode() for k in admin.hkeys(w.STATE.ledger_key)))
"#;
    assert_eq!(
        drive_ledger_client(&endpoint, "leaves", body),
        "(1, 0) (1, 0) 0 0 0 False ['heartbeat', 'host', 'pid', 'process', 'started', 'worker']",
        "pyABC's closing checks and its DECR answered with no command (only the INFO), n_worker \
         back to 0 once each time; a second leave changes nothing; the ledger owes nothing"
    );
}

/// The result that gives a generation its n-th acceptance also releases the other workers
/// whose running evaluations cannot change the sample (all their indices above every index
/// reported: pyABC's master keeps the n accepted of the lowest indices), so that the master
/// finds n_worker 0 at its first look instead of sleeping 100 ms. Their own leaving then
/// changes nothing. A worker evaluating a lower index, or one in n_worker without a ledger
/// (a plain pyABC worker), keeps everyone in the generation; so does a master that did not
/// say it waits only for the evaluations that matter (pyABC's `wait_for_all_samples`, or its
/// sampler class used directly: no `abc_operator:early_release`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generations_last_acceptance_releases_workers_whose_evaluations_cannot_matter() {
    let redis = server();
    let endpoint = redis.endpoint();
    let body = r#"
counter = admin.register_script(w.COUNTER_LUA)
results = admin.register_script(w.RESULTS_LUA)
other = w.LEDGER_PREFIX + 'other'
admin.register_script(w.REGISTER_LUA)(keys=[other, w.LEDGER_SET], args=['other', 'o', 0, 'h', 2])

def other_joins_and_claims(t):
    counter(keys=[other, f'n_worker_a_{t}'], args=['join', 1, 'a', t])
    return counter(keys=[other, f'n_eval_a_{t}'], args=['claim', 1, 'a', t])

def other_reports(t, ix):
    # the other worker's result script: a rejected particle, its index done
    results(keys=[other], args=['dynamic', 'a', t, '1', 3, 'RPUSH', f'done_ixs_a_{t}', ix])

def n_worker(t):
    return int(admin.get(f'n_worker_a_{t}'))

def case(t, other_first, plain_worker=False, early_release=True):
    """n_req 1: this worker's acceptance completes the generation while the other worker
    still evaluates; returns n_worker after it, and after the other worker's result."""
    generation(t, 1)
    if early_release:
        admin.set(w.EARLY_RELEASE, 'a')  # what abc_operator's sampler writes
    else:
        admin.delete(w.EARLY_RELEASE)
    if plain_worker:
        admin.incr(f'n_worker_a_{t}')
    if other_first:
        other_ix = other_joins_and_claims(t)
    r.incr(f'n_worker_a_{t}')
    mine = r.incr(f'n_eval_a_{t}', 1)
    if not other_first:
        other_ix = other_joins_and_claims(t)
    accept(t, mine)
    after_mine = n_worker(t)
    other_reports(t, other_ix)
    return after_mine, n_worker(t), admin.hexists(other, 'joined')

print(case(0, other_first=False), case(1, other_first=True),
      case(2, other_first=False, plain_worker=True),
      case(3, other_first=False, early_release=False))
"#;
    assert_eq!(
        drive_ledger_client(&endpoint, "releases", body),
        "(0, 0, False) (1, 0, False) (2, 1, False) (1, 0, False)",
        "a worker evaluating a later index is released with the last acceptance (n_worker 0 at \
         once), and its own leaving changes nothing; one evaluating an earlier index, a \
         worker without a ledger, or a master that may wait for all samples, keeps n_worker \
         above 0 until it leaves"
    );
}

/// After a short evaluation the result script is sent ahead: pyABC's next simulation starts
/// before its reply, with the index of the claim that script makes (a `ClaimIndex`, read
/// when pyABC first computes with it). Meanwhile another user of the process' command
/// connection (the runtime limit's settling) shares it, reading the unread reply first. Where the script sent ahead claims nothing (the other workers
/// completed the generation), the simulation pyABC started all the same is dropped: its
/// failure and its report reach Redis never, and pyABC's loop then ends on what the script
/// read. Within a few acceptances of a generation's end the worker waits for each reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_sent_ahead_lets_the_next_simulation_start_before_its_reply() {
    let redis = server();
    let endpoint = redis.endpoint();
    let body = r#"
def report(highest, t=0):
    # pyABC's result pipeline: an accepted particle, its index done
    p = r.pipeline()
    p.incr(f'n_acc_a_{t}', 1)
    p.rpush(f'queue_a_{t}', repr(highest - 0))
    p.rpush(f'done_ixs_a_{t}', *range(highest - 1 + 1, highest + 1))
    p.execute()

def checks(t=0):
    return int(r.get(f'n_acc_a_{t}')) < int(r.get(f'n_req_a_{t}')) and r.get('analysis_id') == b'a'

generation(0, 10)

r.incr('n_worker_a_0')
first = r.incr('n_eval_a_0', 1)
report(first)  # the first result of the generation: its reply read at once, claims 2
checks()
second = r.incr('n_eval_a_0', 1)
report(second)  # sent ahead, claims 3
checks()
third = r.incr('n_eval_a_0', 1)
unread = isinstance(third, w.ClaimIndex) and third.value is None
beat = w.redis.StrictRedis(connection_pool=w.STATE.pool).exists(w.STATE.ledger_key)
admin.incrby('n_acc_a_0', 7)  # other workers' acceptances: complete with this one
report(third)  # sent ahead: claims nothing, leaves the generation
before = commands()
go_on = checks()  # answered as the last claiming reply read: pyABC goes on
fourth = r.incr('n_eval_a_0', 1)
r.incr('n_fail_a_0', 1)  # that simulation failed (pyABC's catch)
report(fourth)
ends = not checks()
left = r.decr('n_worker_a_0')
dropped = commands() - before
owes = sorted(k.decode() for k in admin.hkeys(w.STATE.ledger_key))
# near the end of a generation (2 of 3 acceptances to go) the worker waits for the reply
generation(1, 3)
r.incr('n_worker_a_1')
report(r.incr('n_eval_a_1', 1), 1)
checks(1)
report(r.incr('n_eval_a_1', 1), 1)
checks(1)
near_the_end = type(r.incr('n_eval_a_1', 1)).__name__
print(first, second, int(third), unread, beat, go_on, ends, left, dropped, near_the_end,
      [admin.get(f'{k}_a_0').decode() for k in ('n_eval', 'n_acc', 'n_fail', 'n_worker')],
      [int(i) for i in admin.lrange('done_ixs_a_0', 0, -1)],
      [v.decode() for v in admin.lrange('queue_a_0', 0, -1)], owes)
"#;
    assert_eq!(
        drive_ledger_client(&endpoint, "sent-ahead", body),
        "1 2 3 True 1 True True 0 1 int ['3', '10', '0', '0'] [1, 2, 3] ['1', '2', '3'] \
         ['heartbeat', 'host', 'pid', 'process', 'started', 'worker']",
        "claims 1-3 reported once each; another command ran while a reply was unread; the \
         simulation started ahead of a claim that was not made sent nothing (only the INFO) \
         and left no trace; the ledger owes nothing; near a generation's end no reply is \
         left unread"
    );
}

/// A worker whose generation the master cleared under it (pyABC's `wait_for_all_samples`
/// clears a generation once it reads n_worker 0, e.g. after `abc-redis-manager
/// reset-workers`, or a master restarted over it) leaves that generation quietly instead of
/// failing in pyABC's loop on a value that is gone: its late report creates none of the
/// generation's keys again, its ledger owes nothing, and it works on the next generation.
/// pyABC's own dynamic loop, wrapped as the entrypoint wraps it, with a model that clears its
/// generation while it simulates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_generation_was_cleared_under_it_leaves_it_quietly() {
    let redis = server();
    let endpoint = redis.endpoint();
    let body = r#"
import time
import cloudpickle
import pyabc
from pyabc.population import SampleFactory

def simulate_one_clearing(t):
    def simulate_one():
        import redis
        client = redis.StrictRedis(host=host, port=port, password=password)
        # the master clears the generation while this evaluation runs
        client.delete(*client.keys(f'*_a_{t}'))
        return pyabc.population.Particle(m=0, parameter=pyabc.Parameter(x=1.0), weight=1.0,
                                         sum_stat={}, distance=0.0, accepted=True)
    return simulate_one

def simulate_one():
    return pyabc.population.Particle(m=0, parameter=pyabc.Parameter(x=1.0), weight=1.0,
                                     sum_stat={}, distance=0.0, accepted=True)

def work(t, model):
    generation(t, 2)
    admin.mset({f'sample_simulate_accept_a_{t}': cloudpickle.dumps((model, SampleFactory())),
                f'max_n_eval_look_ahead_a_{t}': 'inf'})
    kill_handler = w.cli.KillHandler()
    w.leaving_a_cleared_generation(w.work_on_population_dynamic)(
        analysis_id='a', t=t, redis=r, catch=True, start_time=time.time(),
        max_runtime_s=100, kill_handler=kill_handler)
    return kill_handler.exit

exit_allowed = work(0, simulate_one_clearing(0))
left_behind = sorted(k.decode() for k in admin.keys('*_a_0'))
owes = sorted(k.decode() for k in admin.hkeys(w.STATE.ledger_key))
work(1, simulate_one)
print(exit_allowed, left_behind, owes, w.STATE.in_generation,
      [admin.get(f'{k}_a_1').decode() for k in ('n_acc', 'n_eval', 'n_worker')])
"#;
    assert_eq!(
        drive_ledger_client(&endpoint, "cleared", body),
        "True [] ['heartbeat', 'host', 'pid', 'process', 'started', 'worker'] False \
         ['2', '2', '0']",
        "left the cleared generation without recreating a key of it, owing nothing; then \
         sampled the next generation to its end"
    );
}

/// Each worker process holds at most the documented number of Redis connections (pyABC's
/// subscription and one for commands), and each worker's supervisor one (the heartbeat),
/// idle and after generations of work with heartbeats racing the commands: 10,000 worker
/// processes on one Redis are that many times 10,000 clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_processes_hold_at_most_the_documented_connections() {
    use abc_operator::protocol::server_config::{
        WORKER_CONNECTIONS_PER_PROCESS, WORKER_CONNECTIONS_PER_SUPERVISOR,
    };
    let redis = server();
    let endpoint = redis.endpoint();
    let mut conn = connect(&redis).await;
    let root = tempfile::tempdir().unwrap();
    let ours = clients(&mut conn).await.len();
    let env = [
        ("ABC_TEST_MODEL_SLEEP", "0.001"),
        // beats that often collide with the worker's own commands
        ("ABC_HEARTBEAT_SECONDS", "0.05"),
    ];
    let _a = worker(
        &endpoint,
        "a",
        &[env[0], env[1], ("ABC_WORKER_PROCESSES", "2")],
        root.path(),
    );
    let _b = worker(&endpoint, "b", &env, root.path());
    let (workers, processes) = (2, 3);
    wait_for(&mut conn, Duration::from_secs(180), "three ledgers", |s| {
        s.ledgers.len() == processes
    })
    .await;
    let limit = ours
        + processes * WORKER_CONNECTIONS_PER_PROCESS as usize
        + workers * WORKER_CONNECTIONS_PER_SUPERVISOR as usize;
    let idle = workers_settled(&mut conn, limit).await;
    assert!(idle.len() > ours, "the workers are connected: {idle:#?}");

    let mut m = master(
        &endpoint,
        &[("PROTO_POPULATION", "60"), ("PROTO_GENERATIONS", "3")],
        root.path(),
    );
    let seen = run_to_end(&mut conn, &mut m).await;
    assert!(seen.busy > 10, "workers were inside generations");
    // The master's connections close with it; the workers' must not have grown.
    workers_settled(&mut conn, limit).await;
}

/// `CLIENT LIST`, one line per client.
async fn clients(conn: &mut abc_operator::protocol::Connection) -> Vec<String> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(conn)
        .await
        .unwrap();
    list.lines().map(String::from).collect()
}

/// The client list once it has at most `limit` clients (closed connections take Redis a
/// moment to notice); panics with the list after 10 s.
async fn workers_settled(
    conn: &mut abc_operator::protocol::Connection,
    limit: usize,
) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let list = clients(conn).await;
        if list.len() <= limit {
            return list;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} clients, at most {limit} expected: {list:#?}",
            list.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `start` messages that reach a worker while it is busy count once: every repair publishes
/// one, and with thousands of workers each would otherwise re-enter a finished generation
/// once per repair. Here a hundred arrive at once at an idle worker, with no analysis in
/// Redis, so each one it handles costs exactly one `GET analysis_id`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_start_messages_is_handled_once() {
    let redis = server();
    let endpoint = redis.endpoint();
    let mut conn = connect(&redis).await;
    let root = tempfile::tempdir().unwrap();
    let _w = worker(
        &endpoint,
        "w",
        &[("ABC_HEARTBEAT_SECONDS", "600")],
        root.path(),
    );
    wait_for(&mut conn, Duration::from_secs(180), "a ledger", |s| {
        s.ledgers.len() == 1
    })
    .await;
    wait_subscribed(&mut conn, 1).await;
    let gets_before = command_calls(&mut conn, "get").await;
    let mut burst = redis::pipe();
    for _ in 0..100 {
        burst.publish("abc_msg_pubsub", "start").ignore();
    }
    let _: () = burst.query_async(&mut conn).await.unwrap();
    // handled: no GET for 2 s (handling all 100 one by one takes milliseconds)
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut seen = (
        command_calls(&mut conn, "get").await,
        std::time::Instant::now(),
    );
    while seen.1.elapsed() < Duration::from_secs(2) {
        assert!(std::time::Instant::now() < deadline, "GETs never stopped");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = command_calls(&mut conn, "get").await;
        if now != seen.0 {
            seen = (now, std::time::Instant::now());
        }
    }
    let handled = seen.0 - gets_before;
    assert!(
        (1..=10).contains(&handled),
        "{handled} GETs for 100 start messages"
    );
}

async fn wait_subscribed(conn: &mut abc_operator::protocol::Connection, workers: i64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, n): (String, i64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg("abc_msg_pubsub")
            .query_async(conn)
            .await
            .unwrap();
        if n >= workers {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{n} subscribed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `body` (Python) after loading the entrypoint as `w`, with a registered ledger `id`
/// (`w.STATE`), `admin`, a plain client, `r`, the entrypoint's `LedgerRedis` as pyABC's
/// worker loop gets it, `commands()` (Redis' command count) and `generation(t, n_req,
/// all_accepted=0)`, which sets up generation t of analysis 'a'; returns what it printed,
/// trimmed.
fn drive_ledger_client(
    endpoint: &abc_operator::protocol::Endpoint,
    id: &str,
    body: &str,
) -> String {
    let script = format!(
        r#"
import importlib.util, sys
spec = importlib.util.spec_from_file_location('abc_worker', sys.argv[1])
w = importlib.util.module_from_spec(spec)
spec.loader.exec_module(w)
host, port, password = sys.argv[2], int(sys.argv[3]), sys.argv[4]
w.STATE = w.State('{id}')
w.STATE.pool = w.Config({{'ABC_REDIS_HOST': host, 'ABC_REDIS_PORT': str(port),
                         'ABC_REDIS_PASSWORD': password}}).pool()
admin = w.redis.StrictRedis(host=host, port=port, password=password)
admin.register_script(w.REGISTER_LUA)(
    keys=[w.STATE.ledger_key, w.LEDGER_SET], args=['{id}', '{id}', 0, 'h', 1])
r = w.LedgerRedis(host=host, port=port, password=password)
commands = lambda: admin.info('stats')['total_commands_processed']

def accept(t, ix):
    """pyABC's result pipeline of an accepted particle at index ix (batch size 1; its
    particle left out of the queue)."""
    p = r.pipeline()
    p.incr(f'n_acc_a_{{t}}', 1)
    p.rpush(f'done_ixs_a_{{t}}', ix)
    p.execute()

def generation(t, n_req, all_accepted=0):
    """Generation t of analysis 'a' as pyABC's master starts it (dynamic, batch size 1)."""
    admin.mset({{'analysis_id': 'a', 'generation_a': t, f'mode_a_{{t}}': 'dynamic',
                f'n_worker_a_{{t}}': 0, f'n_eval_a_{{t}}': 0, f'n_fail_a_{{t}}': 0,
                f'n_acc_a_{{t}}': 0, f'n_req_a_{{t}}': n_req, f'is_look_ahead_a_{{t}}': 0,
                f'all_accepted_a_{{t}}': all_accepted, f'batch_size_a_{{t}}': 1}})

{body}"#
    );
    let out = crate::support::python::python_script(
        &script,
        &[
            crate::support::python::entrypoint().as_os_str(),
            endpoint.host.as_ref(),
            endpoint.port.to_string().as_ref(),
            endpoint.password.as_deref().unwrap_or("").as_ref(),
        ],
    );
    String::from_utf8_lossy(&out).trim().to_string()
}

/// Calls of `command` Redis has run so far (`INFO commandstats`).
async fn command_calls(conn: &mut abc_operator::protocol::Connection, command: &str) -> i64 {
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    let prefix = format!("cmdstat_{command}:calls=");
    stats
        .lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |calls| calls.parse().unwrap())
}
