//! Key and channel names of pyABC 0.13.0 (`pyabc/sampler/redis_eps/cmd.py`), and the keys of the
//! operator's worker ledger.
//!
//! The operator's own Lua scripts (snapshot, reset-workers, the analysis lock) get these names
//! as KEYS and ARGV rather than spelling them. The worker entrypoint's scripts spell them, as
//! pyABC's Python does; so does the repair script, which the entrypoint and the operator share
//! as one text, so that the two can never act on different keys.
//!
//! One more key of the `abc_operator` module is not here: the list of the run's generation
//! records, `abc_operator:generations`, is [`super::inference::GENERATIONS`], defined beside
//! the record it holds.

/// `analysis_id`: the id of the current analysis; its existence marks the server as busy.
pub const ANALYSIS_ID: &str = "analysis_id";
/// `generation_{ana}`: the current generation index t (the calibration sample is t = -1).
pub const GENERATION: &str = "generation";
/// `mode_{ana}_{t}`: [`DYNAMIC`] or [`STATIC`].
pub const MODE: &str = "mode";
/// Value of [`MODE`] for `RedisStaticSampler`.
pub const STATIC: &str = "static";
/// Value of [`MODE`] for `RedisEvalParallelSampler`.
pub const DYNAMIC: &str = "dynamic";
/// `queue_{ana}_{t}`: pickled accepted samples, RPUSHed by workers, BLPOPed by the master.
pub const QUEUE: &str = "queue";
/// `done_ixs_{ana}_{t}`: indices of finished evaluations (dynamic mode).
pub const DONE_IXS: &str = "done_ixs";
/// The pub/sub channel of start and stop messages.
pub const MSG: &str = "abc_msg_pubsub";
/// Message on [`MSG`]: workers read the current generation and join it.
pub const START: &str = "start";
/// Message on [`MSG`]: idle workers exit.
pub const STOP: &str = "stop";
/// `all_accepted_{ana}_{t}`: `1` in the calibration sample, where every particle is accepted.
pub const ALL_ACCEPTED: &str = "all_accepted";
/// `sample_simulate_accept_{ana}_{t}`: the cloudpickled model (simulate_one, sample_factory).
pub const SSA: &str = "sample_simulate_accept";
/// `is_look_ahead_{ana}_{t}`: `1` while the generation is sampled ahead with a preliminary proposal.
pub const IS_LOOK_AHEAD: &str = "is_look_ahead";
/// `max_n_eval_look_ahead_{ana}_{t}`: evaluation cap of look-ahead sampling.
pub const MAX_N_EVAL_LOOK_AHEAD: &str = "max_n_eval_look_ahead";
/// `batch_size_{ana}_{t}`: evaluations a dynamic worker claims at once.
pub const BATCH_SIZE: &str = "batch_size";
/// `n_eval_{ana}_{t}`: evaluations claimed (INCRBY before simulating).
pub const N_EVAL: &str = "n_eval";
/// `n_acc_{ana}_{t}`: accepted particles.
pub const N_ACC: &str = "n_acc";
/// `n_req_{ana}_{t}`: particles required (population size).
pub const N_REQ: &str = "n_req";
/// `n_fail_{ana}_{t}`: failed evaluations.
pub const N_FAIL: &str = "n_fail";
/// `n_worker_{ana}_{t}`: workers inside the generation.
pub const N_WORKER: &str = "n_worker";
/// `n_lookahead_eval_{ana}_{t}`: look-ahead evaluations.
pub const N_LOOKAHEAD_EVAL: &str = "n_lookahead_eval";
/// `n_job_{ana}_{t}`: jobs left (static mode).
pub const N_JOB: &str = "n_job";
/// The Redis lock static workers take around a job (`redis.lock('worker')`, no expiry).
pub const STATIC_WORKER_LOCK: &str = "worker";

/// The analysis whose master waits only for the evaluations that can change its sample
/// (pyABC's default, not `wait_for_all_samples`), written by the `abc_operator` module's
/// sampler (`EARLY_RELEASE_KEY` in python/abc_operator/__init__.py): only there may the worker
/// whose result completes a generation take the other workers out of it (the worker's
/// `lua/results.lua`).
pub const EARLY_RELEASE: &str = "abc_operator:early_release";
/// The last resume of a master (a hash: `from_generation`, `at`), written by the `abc_operator`
/// module (`RESUME_KEY` in python/abc_operator/__init__.py) when it continues a stored run.
pub const RESUMED: &str = "abc_operator:resumed";
/// How the last master start went (a hash: `outcome` `resumed`, `new` or `refused`, `cause`,
/// `at`), written by the `abc_operator` module (`START_KEY` in python/abc_operator/__init__.py).
pub const MASTER_START: &str = "abc_operator:master_start";
/// A stop was asked of the run (`spec.stop`, `kubectl abc stop`): set by the operator, read by
/// the `abc_operator` module (`STOP_KEY` in python/abc_operator/__init__.py), whose master ends
/// the analysis once the generation it samples is stored, and starts none while it is set.
pub const STOP_REQUESTED: &str = "abc_operator:stop";
/// Set of the ids of every worker ledger.
pub const LEDGER_SET: &str = "abc_operator:ledgers";
/// Prefix of a worker's ledger hash: `abc_operator:ledger:{id}`.
pub const LEDGER_PREFIX: &str = "abc_operator:ledger:";
/// Workers repaired on this Redis so far: INCRed by the repair script itself, in the same atomic
/// step as the correction, only when it corrected something. Per Redis rather than per
/// analysis: a run owns its Redis (pyABC holds one analysis at a time on it) and counts lost
/// workers over its whole life, across the analyses its master runs, so one key read in the
/// snapshot is the run's count, with nothing to sum or scan.
pub const LOST_WORKERS: &str = "abc_operator:lost_workers";

/// Appends ids to a variable name exactly like pyABC's `idfy`:
/// `idfy("n_eval", ["abc", "3"])` is `n_eval_abc_3`.
pub fn idfy<I, A>(var: &str, args: I) -> String
where
    I: IntoIterator<Item = A>,
    A: std::fmt::Display,
{
    let mut key = var.to_string();
    for arg in args {
        key.push('_');
        key.push_str(&arg.to_string());
    }
    key
}

/// `{var}_{ana}_{t}`, the form of every per-generation key.
pub fn generation_key(var: &str, analysis_id: &str, t: i64) -> String {
    format!("{var}_{analysis_id}_{t}")
}

/// The ledger hash of a worker id.
pub fn ledger_key(ledger_id: &str) -> String {
    format!("{LEDGER_PREFIX}{ledger_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idfy_matches_pyabc() {
        assert_eq!(idfy(N_EVAL, ["abc123", "3"]), "n_eval_abc123_3");
        assert_eq!(idfy(GENERATION, ["abc"]), "generation_abc");
        assert_eq!(idfy::<[&str; 0], &str>(ANALYSIS_ID, []), "analysis_id");
        assert_eq!(generation_key(N_WORKER, "a-b", -1), "n_worker_a-b_-1");
        assert_eq!(ledger_key("pod-1"), "abc_operator:ledger:pod-1");
    }

    #[test]
    fn the_master_module_agrees_on_its_key_and_exit_code() {
        use super::super::{MASTER_MODULE, REDIS_LOST_EXIT_CODE, RESUME_REFUSED_EXIT_CODE};
        for line in [
            format!("RESUME_KEY = \"{RESUMED}\""),
            format!("START_KEY = \"{MASTER_START}\""),
            format!("EARLY_RELEASE_KEY = \"{EARLY_RELEASE}\""),
            format!("REDIS_LOST_EXIT_CODE = {REDIS_LOST_EXIT_CODE}"),
            format!("RESUME_REFUSED_EXIT_CODE = {RESUME_REFUSED_EXIT_CODE}"),
        ] {
            assert!(MASTER_MODULE.contains(&line), "{line}");
        }
        let worker_line = format!("EARLY_RELEASE = '{EARLY_RELEASE}'");
        assert!(super::super::WORKER_ENTRYPOINT.contains(&worker_line));
    }

    #[test]
    fn the_result_script_writes_out_the_same_keys() {
        let (_, results) = super::super::WORKER_LUA
            .iter()
            .find(|(name, _)| *name == "results.lua")
            .unwrap();
        for key in [
            format!("redis.call('GET', '{EARLY_RELEASE}')"),
            format!("redis.call('SCARD', '{LEDGER_SET}')"),
            format!("redis.call('SMEMBERS', '{LEDGER_SET}')"),
            format!("local key = '{LEDGER_PREFIX}' .. id"),
        ] {
            assert!(results.contains(&key), "{key}");
        }
    }
}
