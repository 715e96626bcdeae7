//! One consistent read of a run's Redis: the current generation's counters and every ledger.

use super::ProtocolError;
use super::inference::GENERATIONS;
use super::keys::{
    ALL_ACCEPTED, ANALYSIS_ID, DYNAMIC, GENERATION, IS_LOOK_AHEAD, LEDGER_PREFIX, LEDGER_SET,
    LOST_WORKERS, MASTER_START, MODE, N_ACC, N_EVAL, N_FAIL, N_JOB, N_LOOKAHEAD_EVAL, N_REQ,
    N_WORKER, RESUMED, STATIC, STOP_REQUESTED, generation_key, ledger_key,
};
use super::reply::Fields;
use redis::Value;
use serde::Serialize;
use std::ops::RangeInclusive;
use std::sync::LazyLock;

/// The keys `{name}_{ana}_{t}` of the current generation that the snapshot reads.
const GENERATION_KEYS: [&str; 10] = [
    MODE,
    N_REQ,
    N_ACC,
    N_EVAL,
    N_FAIL,
    N_WORKER,
    N_JOB,
    N_LOOKAHEAD_EVAL,
    ALL_ACCEPTED,
    IS_LOOK_AHEAD,
];

/// Field of the snapshot reply: Redis `TIME` in ms.
const TIME_MS: &str = "time_ms";
/// Field of the snapshot reply: the server's `run_id` (`INFO server`), new at every start.
const RUN_ID: &str = "run_id";
/// Field of the snapshot reply: every ledger, `{id, HGETALL of its hash, ...}`.
const LEDGERS: &str = "ledgers";

/// Reads everything in one atomic script; a key of an unexpected type is reported by name.
/// Returns `{name, value, ...}`: `time_ms`, each key's value under the key's name (a
/// per-generation key under its name without `_{ana}_{t}`; nil where Redis holds none), and
/// `ledgers`.
const SNAPSHOT_LUA: &str = r#"
-- KEYS: analysis_id, the ledger set, the lost-worker counter, the last resume, the last
-- master start, the generation records (only their number is read), the stop request (only
-- whether it exists). ARGV: the ledger key prefix, the generation key's name, then the names
-- of the per-generation keys to read.
local problem = false
local function read(key, want)
  local kind = redis.call('TYPE', key)['ok']
  if kind == 'none' then return false end
  if kind ~= want then
    problem = problem or ('key ' .. key .. ' holds a ' .. kind .. ', where pyABC keeps a ' .. want)
    return false
  end
  if want == 'string' then return redis.call('GET', key) end
  if want == 'set' then return redis.call('SMEMBERS', key) end
  return redis.call('HGETALL', key)
end
local now = redis.call('TIME')
local ana = read(KEYS[1], 'string')
local t = false
if ana then t = read(ARGV[2] .. '_' .. ana, 'string') end
local run_id = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)') or false
local out = {'time_ms', tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000),
  'run_id', run_id,
  KEYS[1], ana, ARGV[2], t}
for i = 3, #ARGV do
  out[#out + 1] = ARGV[i]
  out[#out + 1] = ana and t and read(ARGV[i] .. '_' .. ana .. '_' .. t, 'string') or false
end
local ledgers = {}
for _, id in ipairs(read(KEYS[2], 'set') or {}) do
  local fields = read(ARGV[1] .. id, 'hash')
  if fields and #fields > 0 then
    ledgers[#ledgers + 1] = id
    ledgers[#ledgers + 1] = fields
  end
end
out[#out + 1] = 'ledgers'
out[#out + 1] = ledgers
out[#out + 1] = KEYS[3]
out[#out + 1] = read(KEYS[3], 'string')
out[#out + 1] = KEYS[4]
out[#out + 1] = read(KEYS[4], 'hash') or false
out[#out + 1] = KEYS[5]
out[#out + 1] = read(KEYS[5], 'hash') or false
out[#out + 1] = KEYS[6]
local records = redis.call('TYPE', KEYS[6])['ok']
if records ~= 'none' and records ~= 'list' then
  problem = problem or ('key ' .. KEYS[6] .. ' holds a ' .. records .. ', where abc_operator keeps a list')
end
out[#out + 1] = records == 'list' and redis.call('LLEN', KEYS[6]) or 0
out[#out + 1] = KEYS[7]
out[#out + 1] = redis.call('EXISTS', KEYS[7])
if problem then return redis.error_reply('ABC_NOT_PYABC ' .. problem) end
return out
"#;

static SNAPSHOT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(SNAPSHOT_LUA));

/// The sampler of a generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `RedisEvalParallelSampler`.
    Dynamic,
    /// `RedisStaticSampler`.
    Static,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Dynamic => DYNAMIC,
            Mode::Static => STATIC,
        })
    }
}

/// Evaluations a dynamic worker claimed (INCRBY n_eval) and has not reported in done_ixs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Claim {
    /// The value its INCRBY returned: the highest claimed index.
    pub max_index: i64,
    /// The batch size it claimed.
    pub count: i64,
    /// Failures of this claim already counted in n_fail.
    pub failures: i64,
}

impl Claim {
    /// The claimed evaluation indices (pyABC counts from 1).
    pub fn indices(&self) -> RangeInclusive<i64> {
        (self.max_index - self.count + 1)..=self.max_index
    }
}

/// A worker process's ledger (see the module documentation for the layout).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ledger {
    /// Ledger id: `ABC_WORKER_ID`, or `{ABC_WORKER_ID}-{i}` with several processes.
    pub id: String,
    /// `ABC_WORKER_ID` of the worker (the pod name in a cluster).
    pub worker: Option<String>,
    pub host: Option<String>,
    pub pid: Option<i64>,
    /// Redis time of registration, in ms.
    pub started_ms: Option<i64>,
    /// Redis time of the last heartbeat, in ms.
    pub heartbeat_ms: Option<i64>,
    /// Analysis of the generation the worker is in or owes something to.
    pub analysis_id: Option<String>,
    /// That generation.
    pub generation: Option<i64>,
    /// Counted in that generation's n_worker.
    pub joined: bool,
    /// Unreported dynamic evaluations.
    pub claim: Option<Claim>,
    /// Static jobs held.
    pub jobs: i64,
    /// Name of the pyABC lock it holds.
    pub lock: Option<String>,
}

impl Ledger {
    /// Owes nothing: not in a generation, no claim, no job, no lock.
    pub fn is_idle(&self) -> bool {
        !self.joined && self.claim.is_none() && self.jobs == 0 && self.lock.is_none()
    }

    /// In (or owing something to) generation `t` of analysis `analysis_id`.
    pub fn in_generation(&self, analysis_id: &str, t: i64) -> bool {
        self.analysis_id.as_deref() == Some(analysis_id) && self.generation == Some(t)
    }

    /// Reads a ledger hash (`HGETALL`); its fields come and go, so a missing one is `None`.
    fn parse(id: String, hash: Value) -> Result<Ledger, ProtocolError> {
        let key = ledger_key(&id);
        let hash = Fields::parse(format!("ledger {key}"), hash)?;
        let key = key.as_str();
        let what = |field| std::fmt::from_fn(move |f| write!(f, "ledger {key} field {field}"));
        let get = |field: &'static str| hash.optional_text(field, what(field));
        let int = |field: &'static str| hash.optional_integer(field, what(field));
        let claim = match (int("claim_max")?, int("claim_n")?) {
            (Some(max_index), Some(count)) => Some(Claim {
                max_index,
                count,
                failures: int("claim_fail")?.unwrap_or(0),
            }),
            _ => None,
        };
        Ok(Ledger {
            worker: get("worker")?,
            host: get("host")?,
            pid: int("pid")?,
            started_ms: int("started")?,
            heartbeat_ms: int("heartbeat")?,
            analysis_id: get("analysis")?,
            generation: int("generation")?,
            joined: get("joined")?.is_some(),
            claim,
            jobs: int("jobs")?.unwrap_or(0),
            lock: get("lock_name")?,
            id,
        })
    }
}

/// The state of a run's Redis at one instant (read atomically, in one round trip).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Snapshot {
    /// Redis server time, in ms: the clock of every ledger heartbeat.
    pub time_ms: i64,
    /// The Redis server's `run_id`: a new one means the server restarted (and, without
    /// persistence, lost pyABC's state: the generation in progress is gone).
    pub run_id: Option<String>,
    /// `analysis_id`: the running analysis (none when no master holds the server).
    pub analysis_id: Option<String>,
    /// `generation_{ana}`: the current generation (-1 is the calibration sample).
    pub generation: Option<i64>,
    pub mode: Option<Mode>,
    pub n_req: Option<i64>,
    pub n_acc: Option<i64>,
    pub n_eval: Option<i64>,
    pub n_fail: Option<i64>,
    pub n_worker: Option<i64>,
    pub n_job: Option<i64>,
    pub n_lookahead_eval: Option<i64>,
    pub all_accepted: Option<bool>,
    pub is_look_ahead: Option<bool>,
    /// Every worker ledger, sorted by id.
    pub ledgers: Vec<Ledger>,
    /// Workers repaired on this Redis so far ([`LOST_WORKERS`], counted by the repair script
    /// itself); 0 before the first repair.
    pub lost_workers: i64,
    /// The last resume of a master on this Redis, if any.
    pub resumed: Option<Resumed>,
    /// How the last master start on this Redis went, if a master recorded it.
    pub master_start: Option<MasterStart>,
    /// Generation records the master's `abc_operator` module has written
    /// ([`GENERATIONS`]); only their number is read here, the records themselves only when it
    /// changes.
    pub generations_recorded: i64,
    /// The operator asked the master to end the analysis ([`STOP_REQUESTED`]).
    pub stop_requested: bool,
}

/// The last time a master continued a stored run ([`RESUMED`], written by the `abc_operator`
/// module).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resumed {
    /// The first generation it sampled (the generations before were in its database).
    pub from_generation: i64,
    /// When (the master's clock, RFC 3339): tells one resume from the next.
    pub at: String,
}

/// How a master's start went ([`MASTER_START`], written by the `abc_operator` module each
/// time a master calls its `run`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MasterStart {
    pub outcome: StartOutcome,
    /// Why, in the module's words (e.g. "started a new run in …: no results database there
    /// yet", or a `ResumeError`'s message).
    pub cause: String,
    /// When (the master's clock, RFC 3339): tells one start from the next.
    pub at: String,
    /// The version of the master's `abc_operator` module (none from a module before 0.1.0).
    pub module_version: Option<String>,
}

/// The warning for a master whose `abc_operator` module (`module_version`, from its start
/// record) is not this operator's version (the operator's `ModuleVersionDiffers` Event). A
/// master in the cluster, or under `abc-operator run`, gets the operator's own module; one run
/// elsewhere (a notebook with `abc_operator.connect`, a script of one's own) brings the one
/// installed there, and the two speak through the run's Redis keys, which may change between
/// versions.
pub fn module_version_warning(module_version: Option<&str>) -> Option<String> {
    let theirs = module_version?;
    let ours = env!("CARGO_PKG_VERSION");
    (theirs != ours).then(|| {
        format!(
            "the master's abc_operator module is version {theirs}, the operator is {ours}: \
                 install the module of the operator's release where the master runs \
                 (pip install abc-operator=={ours}, or pip install ./python from its source)"
        )
    })
}

/// What a starting master did with its results database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StartOutcome {
    /// Continued the unfinished run stored there.
    Resumed,
    /// Started a new run (no database, or no unfinished run in it).
    New,
    /// Could not use the database (`ResumeError`); left it unchanged and failed.
    Refused,
}

/// The status field's spelling of the same outcome, and back.
impl From<StartOutcome> for crate::api::MasterStartOutcome {
    fn from(outcome: StartOutcome) -> Self {
        match outcome {
            StartOutcome::Resumed => Self::Resumed,
            StartOutcome::New => Self::New,
            StartOutcome::Refused => Self::Refused,
        }
    }
}

impl From<crate::api::MasterStartOutcome> for StartOutcome {
    fn from(outcome: crate::api::MasterStartOutcome) -> Self {
        use crate::api::MasterStartOutcome as Status;
        match outcome {
            Status::Resumed => Self::Resumed,
            Status::New => Self::New,
            Status::Refused => Self::Refused,
        }
    }
}

impl StartOutcome {
    /// The warning a master start with this outcome deserves, as (reason, message): a results
    /// database it could not use, or a master that started again (after an earlier start, or
    /// after sampling) and did not resume. The operator's Events and `abc-operator run` say
    /// the same.
    pub fn warning(self, cause: &str, started_before: bool) -> Option<(&'static str, String)> {
        match self {
            StartOutcome::Refused => Some((
                "ResumeFailed",
                format!(
                    "the master could not use its results database and fails, leaving it \
                     unchanged: {cause}"
                ),
            )),
            StartOutcome::New if started_before => Some((
                "NotResumed",
                format!(
                    "the master started again but did not resume: {cause}; the generations \
                     sampled before are not continued"
                ),
            )),
            _ => None,
        }
    }
}

/// What a resume means, for the person following the run: the operator's `Resumed` Event and
/// `abc-operator run` say the same.
pub fn resumed_note(from_generation: i64) -> String {
    format!(
        "the master continued the run from generation {from_generation} of its results \
         database (stored generations are not sampled again)"
    )
}

impl Snapshot {
    /// Reads the snapshot.
    pub async fn read<C>(conn: &mut C) -> Result<Snapshot, ProtocolError>
    where
        C: redis::aio::ConnectionLike + Send,
    {
        let reply: Value = SNAPSHOT
            .key(ANALYSIS_ID)
            .key(LEDGER_SET)
            .key(LOST_WORKERS)
            .key(RESUMED)
            .key(MASTER_START)
            .key(GENERATIONS)
            .key(STOP_REQUESTED)
            .arg(LEDGER_PREFIX)
            .arg(GENERATION)
            .arg(&GENERATION_KEYS[..])
            .invoke_async(conn)
            .await?;
        Snapshot::parse(reply)
    }

    fn parse(reply: Value) -> Result<Snapshot, ProtocolError> {
        let mut fields = Fields::parse("the snapshot script's reply", reply)?;
        let mut ledgers = Fields::parse("the snapshot's ledger list", fields.take(LEDGERS)?)?
            .into_entries()
            .map(|(id, hash)| Ledger::parse(id, hash))
            .collect::<Result<Vec<_>, _>>()?;
        ledgers.sort_by(|a, b| a.id.cmp(&b.id));
        let analysis_id = fields.text(ANALYSIS_ID, "key analysis_id")?;
        let ana = analysis_id.as_deref().unwrap_or_default();
        let generation = fields.integer(GENERATION, format_args!("key {GENERATION}_{ana}"))?;
        // Per-generation values exist only with an analysis and a generation. A key's name is
        // formatted only for an error.
        let key = |name: &'static str| {
            std::fmt::from_fn(move |f| {
                write!(
                    f,
                    "key {}",
                    generation_key(name, ana, generation.unwrap_or(0))
                )
            })
        };
        let number = |name: &'static str| fields.integer(name, key(name));
        let flag = |name: &'static str| Ok::<_, ProtocolError>(number(name)?.map(|v| v != 0));
        let mode = match fields.text(MODE, key(MODE))?.as_deref() {
            None => None,
            Some(DYNAMIC) => Some(Mode::Dynamic),
            Some(STATIC) => Some(Mode::Static),
            Some(other) => {
                return Err(ProtocolError::NotPyabc(format!(
                    "{} holds {other:?}, expected {DYNAMIC} or {STATIC}",
                    key(MODE)
                )));
            }
        };
        Ok(Snapshot {
            time_ms: fields.integer(TIME_MS, "Redis TIME")?.unwrap_or(0),
            run_id: fields.text(RUN_ID, "Redis INFO run_id")?,
            analysis_id: analysis_id.clone(),
            generation,
            mode,
            n_req: number(N_REQ)?,
            n_acc: number(N_ACC)?,
            n_eval: number(N_EVAL)?,
            n_fail: number(N_FAIL)?,
            n_worker: number(N_WORKER)?,
            n_job: number(N_JOB)?,
            n_lookahead_eval: number(N_LOOKAHEAD_EVAL)?,
            all_accepted: flag(ALL_ACCEPTED)?,
            is_look_ahead: flag(IS_LOOK_AHEAD)?,
            ledgers,
            lost_workers: fields
                .integer(LOST_WORKERS, format_args!("key {LOST_WORKERS}"))?
                .unwrap_or(0),
            resumed: resumed(fields.take(RESUMED)?)?,
            master_start: master_start(fields.take(MASTER_START)?)?,
            generations_recorded: fields
                .integer(GENERATIONS, format_args!("key {GENERATIONS}"))?
                .unwrap_or(0),
            stop_requested: fields
                .integer(STOP_REQUESTED, format_args!("key {STOP_REQUESTED}"))?
                .is_some_and(|n| n > 0),
        })
    }

    /// Exactly what `abc-redis-manager info` prints (without the newline).
    ///
    /// One deviation: with `analysis_id` set but no `generation_{ana}` yet (the instant
    /// between a master's `set_analysis_id` and its first generation) pyABC's manager
    /// crashes; this prints `No active generation`.
    pub fn info_line(&self) -> String {
        let (Some(_), Some(t)) = (&self.analysis_id, self.generation) else {
            return "No active generation".to_string();
        };
        let py = |value: Option<i64>| value.map_or_else(|| "None".to_string(), |v| v.to_string());
        format!(
            "Workers={} Evaluations={} Acceptances={}/{} (generation {t})",
            py(self.n_worker),
            py(self.n_eval),
            py(self.n_acc),
            py(self.n_req),
        )
    }

    /// Ledgers counted in the current generation's n_worker.
    pub fn joined_current(&self) -> impl Iterator<Item = &Ledger> {
        let current = self.analysis_id.as_deref().zip(self.generation);
        self.ledgers.iter().filter(move |ledger| {
            ledger.joined && current.is_some_and(|(ana, t)| ledger.in_generation(ana, t))
        })
    }
}

/// Reads the [`RESUMED`] hash (nil when no master resumed). A record without both fields is
/// ignored rather than failing the snapshot: it only informs the status.
fn resumed(value: Value) -> Result<Option<Resumed>, ProtocolError> {
    if value == Value::Nil {
        return Ok(None);
    }
    let what = format!("key {RESUMED}");
    let hash = Fields::parse(what.clone(), value)?;
    let from_generation = hash.optional_integer("from_generation", &what)?;
    let at = hash.optional_text("at", &what)?;
    Ok(from_generation
        .zip(at)
        .map(|(from_generation, at)| Resumed {
            from_generation,
            at,
        }))
}

/// Reads the [`MASTER_START`] hash (nil when no master recorded its start). A record with a
/// missing field or an outcome this version does not know is ignored: it only informs.
fn master_start(value: Value) -> Result<Option<MasterStart>, ProtocolError> {
    if value == Value::Nil {
        return Ok(None);
    }
    let what = format!("key {MASTER_START}");
    let hash = Fields::parse(what.clone(), value)?;
    let outcome = match hash.optional_text("outcome", &what)?.as_deref() {
        Some("resumed") => StartOutcome::Resumed,
        Some("new") => StartOutcome::New,
        Some("refused") => StartOutcome::Refused,
        _ => return Ok(None),
    };
    let cause = hash.optional_text("cause", &what)?.unwrap_or_default();
    let module_version = hash.optional_text("module_version", &what)?;
    Ok(hash.optional_text("at", &what)?.map(|at| MasterStart {
        outcome,
        cause,
        at,
        module_version,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    /// A snapshot script reply at Redis time 1700000000.250: every key nil but those in
    /// `values` (by the reply's field name), and these ledgers.
    fn reply(values: &[(&str, &str)], ledgers: &[(&str, &[(&str, &str)])]) -> Value {
        let mut items = vec![
            bulk(TIME_MS),
            Value::Int(1_700_000_000_250),
            bulk(RUN_ID),
            bulk("ed2f8dfb97dd77dd5d3695e316787b00914a87e0"),
        ];
        for name in [
            ANALYSIS_ID,
            GENERATION,
            LOST_WORKERS,
            GENERATIONS,
            STOP_REQUESTED,
        ]
        .into_iter()
        .chain(GENERATION_KEYS)
        {
            let value = values.iter().find(|(field, _)| *field == name);
            items.push(bulk(name));
            items.push(value.map_or(Value::Nil, |(_, v)| bulk(v)));
        }
        let ledgers = ledgers.iter().flat_map(|(id, fields)| {
            let hash = fields.iter().flat_map(|(k, v)| [bulk(k), bulk(v)]);
            [bulk(id), Value::Array(hash.collect())]
        });
        items.push(bulk(LEDGERS));
        items.push(Value::Array(ledgers.collect()));
        items.push(bulk(RESUMED));
        items.push(Value::Nil);
        items.push(bulk(MASTER_START));
        items.push(Value::Nil);
        Value::Array(items)
    }

    #[test]
    fn a_resume_record_needs_both_fields() {
        let hash = |fields: &[(&str, &str)]| {
            Value::Array(
                fields
                    .iter()
                    .flat_map(|(k, v)| [bulk(k), bulk(v)])
                    .collect(),
            )
        };
        assert_eq!(resumed(Value::Nil).unwrap(), None);
        assert_eq!(
            resumed(hash(&[
                ("from_generation", "3"),
                ("at", "2026-12-02T16:05:37Z")
            ]))
            .unwrap(),
            Some(Resumed {
                from_generation: 3,
                at: "2026-12-02T16:05:37Z".into()
            })
        );
        assert_eq!(
            resumed(hash(&[("at", "2026-12-02T16:05:37Z")])).unwrap(),
            None
        );
        let err = resumed(hash(&[("from_generation", "three"), ("at", "x")])).unwrap_err();
        assert!(err.to_string().contains(RESUMED), "{err}");
    }

    #[test]
    fn a_master_start_record_is_read_and_an_unknown_one_ignored() {
        let hash = |fields: &[(&str, &str)]| {
            Value::Array(
                fields
                    .iter()
                    .flat_map(|(k, v)| [bulk(k), bulk(v)])
                    .collect(),
            )
        };
        let at = ("at", "2026-12-02T16:05:37Z");
        let cause = (
            "cause",
            "m.db holds an unfinished run of other observed data",
        );
        assert_eq!(master_start(Value::Nil).unwrap(), None);
        assert_eq!(
            master_start(hash(&[("outcome", "refused"), cause, at])).unwrap(),
            Some(MasterStart {
                outcome: StartOutcome::Refused,
                cause: cause.1.into(),
                at: at.1.into(),
                module_version: None,
            })
        );
        let start = master_start(hash(&[("outcome", "new"), at, ("module_version", "0.0.9")]))
            .unwrap()
            .unwrap();
        assert_eq!(start.module_version.as_deref(), Some("0.0.9"));
        // A newer module's outcome, or a record without its time, informs nobody.
        assert_eq!(
            master_start(hash(&[("outcome", "migrated"), cause, at])).unwrap(),
            None
        );
        assert_eq!(
            master_start(hash(&[("outcome", "new"), cause])).unwrap(),
            None
        );
    }

    #[test]
    fn a_master_module_of_another_version_is_named_and_the_operators_is_not() {
        let warning = module_version_warning(Some("0.0.9")).unwrap();
        assert!(
            warning.contains("0.0.9")
                && warning.contains(&format!("abc-operator=={}", env!("CARGO_PKG_VERSION"))),
            "{warning}"
        );
        assert_eq!(
            module_version_warning(Some(env!("CARGO_PKG_VERSION"))),
            None
        );
        assert_eq!(module_version_warning(None), None);
    }

    /// Generation 1 of analysis `ana`, with `values` on top.
    fn in_generation(values: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        [(ANALYSIS_ID, "ana"), (GENERATION, "1")]
            .into_iter()
            .chain(values.iter().copied())
            .collect()
    }

    #[test]
    fn parses_counters_ledgers_and_info() {
        let values = [
            (ANALYSIS_ID, "ana"),
            (GENERATION, "2"),
            (MODE, "dynamic"),
            (N_REQ, "100"),
            (N_ACC, "40"),
            (N_EVAL, "97"),
            (N_FAIL, "3"),
            (N_WORKER, "2"),
            (N_LOOKAHEAD_EVAL, "0"),
            (ALL_ACCEPTED, "0"),
            (IS_LOOK_AHEAD, "0"),
            (LOST_WORKERS, "3"),
        ];
        let ledgers: [(&str, &[(&str, &str)]); 2] = [
            (
                "w-1",
                &[
                    ("worker", "w"),
                    ("heartbeat", "1699999990000"),
                    ("analysis", "ana"),
                    ("generation", "2"),
                    ("joined", "1"),
                    ("claim_max", "97"),
                    ("claim_n", "2"),
                    ("claim_fail", "1"),
                ],
            ),
            ("w-0", &[("worker", "w"), ("heartbeat", "1700000000000")]),
        ];
        let snap = Snapshot::parse(reply(&values, &ledgers)).unwrap();
        assert_eq!(snap.lost_workers, 3);
        assert_eq!(snap.time_ms, 1_700_000_000_250);
        assert_eq!(
            snap.run_id.as_deref(),
            Some("ed2f8dfb97dd77dd5d3695e316787b00914a87e0")
        );
        assert_eq!(snap.mode, Some(Mode::Dynamic));
        assert_eq!(snap.n_job, None);
        assert_eq!(snap.all_accepted, Some(false));
        assert_eq!(snap.ledgers[0].id, "w-0");
        assert!(snap.ledgers[0].is_idle());
        let claim = snap.ledgers[1].claim.clone().unwrap();
        assert_eq!(claim.indices(), 96..=97);
        assert_eq!(claim.failures, 1);
        assert_eq!(snap.joined_current().count(), 1);
        assert_eq!(
            snap.info_line(),
            "Workers=2 Evaluations=97 Acceptances=40/100 (generation 2)"
        );
    }

    #[test]
    fn info_without_analysis_or_counters() {
        let snap = Snapshot::parse(reply(&[], &[])).unwrap();
        assert_eq!(snap.info_line(), "No active generation");
        assert_eq!(snap.lost_workers, 0, "no repair yet");
        let values = [(ANALYSIS_ID, "ana"), (GENERATION, "-1")];
        let snap = Snapshot::parse(reply(&values, &[])).unwrap();
        assert_eq!(
            snap.info_line(),
            "Workers=None Evaluations=None Acceptances=None/None (generation -1)"
        );
    }

    #[test]
    fn odd_values_are_errors_naming_the_key() {
        let err = Snapshot::parse(reply(&in_generation(&[(N_REQ, "lots")]), &[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("n_req_ana_1") && err.contains("lots"), "{err}");
        let err = Snapshot::parse(reply(&in_generation(&[(MODE, "weird")]), &[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("mode_ana_1"), "{err}");
        let bad_ledger: [(&str, &[(&str, &str)]); 1] = [("x", &[("claim_max", "nine")])];
        let err = Snapshot::parse(reply(&[], &bad_ledger))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("abc_operator:ledger:x") && err.contains("claim_max"),
            "{err}"
        );
        assert!(Snapshot::parse(Value::Int(3)).is_err());
        let err = Snapshot::parse(reply(&[(LOST_WORKERS, "many")], &[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains(LOST_WORKERS) && err.contains("many"), "{err}");
    }

    #[test]
    fn a_field_missing_from_the_reply_is_an_error_naming_it() {
        let Value::Array(items) = reply(&in_generation(&[(N_REQ, "10")]), &[]) else {
            unreachable!()
        };
        for missing in [N_REQ, LEDGERS, LOST_WORKERS] {
            let without: Vec<Value> = items
                .chunks(2)
                .filter(|pair| pair[0] != bulk(missing))
                .flatten()
                .cloned()
                .collect();
            let err = Snapshot::parse(Value::Array(without)).unwrap_err();
            assert!(matches!(err, ProtocolError::ScriptReply { .. }), "{err:?}");
            assert!(
                err.to_string().contains(&format!("no field {missing:?}")),
                "{err}"
            );
        }
    }
}
