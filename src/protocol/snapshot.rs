//! One consistent read of a run's Redis: the current generation's counters and every ledger.

use super::keys::{LEDGER_PREFIX, LEDGER_SET, LOST_WORKERS};
use super::{ProtocolError, integer, text};
use redis::Value;
use serde::Serialize;
use std::ops::RangeInclusive;
use std::sync::LazyLock;

/// Reads everything in one atomic script; a key of an unexpected type is reported by name.
const SNAPSHOT_LUA: &str = r#"
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
local ana = read('analysis_id', 'string')
local t = false
if ana then t = read('generation_' .. ana, 'string') end
local out = {now[1], now[2], ana, t}
local names = {'mode', 'n_req', 'n_acc', 'n_eval', 'n_fail', 'n_worker', 'n_job',
  'n_lookahead_eval', 'all_accepted', 'is_look_ahead'}
for i, name in ipairs(names) do
  out[4 + i] = ana and t and read(name .. '_' .. ana .. '_' .. t, 'string') or false
end
local ledgers = {}
for _, id in ipairs(read(KEYS[1], 'set') or {}) do
  local fields = read(ARGV[1] .. id, 'hash')
  if fields and #fields > 0 then ledgers[#ledgers + 1] = {id, fields} end
end
out[15] = ledgers
out[16] = read(KEYS[2], 'string')
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
            Mode::Dynamic => super::keys::DYNAMIC,
            Mode::Static => super::keys::STATIC,
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

    fn parse(id: String, fields: &[Value]) -> Result<Ledger, ProtocolError> {
        let what = |field: &str| format!("ledger {LEDGER_PREFIX}{id} field {field}");
        let mut map = std::collections::HashMap::new();
        for pair in fields.chunks(2) {
            if let [name, value] = pair {
                let name = text(name, &what("name"))?.unwrap_or_default();
                let value = text(value, &what(&name))?.unwrap_or_default();
                map.insert(name, value);
            }
        }
        let get = |field: &str| map.get(field).map(String::as_str);
        let int = |field: &str| integer(get(field), &what(field));
        let claim = match (int("claim_max")?, int("claim_n")?) {
            (Some(max_index), Some(count)) => Some(Claim {
                max_index,
                count,
                failures: int("claim_fail")?.unwrap_or(0),
            }),
            _ => None,
        };
        Ok(Ledger {
            worker: get("worker").map(str::to_string),
            host: get("host").map(str::to_string),
            pid: int("pid")?,
            started_ms: int("started")?,
            heartbeat_ms: int("heartbeat")?,
            analysis_id: get("analysis").map(str::to_string),
            generation: int("generation")?,
            joined: get("joined").is_some(),
            claim,
            jobs: int("jobs")?.unwrap_or(0),
            lock: get("lock_name").map(str::to_string),
            id,
        })
    }
}

/// The state of a run's Redis at one instant (read atomically, in one round trip).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Snapshot {
    /// Redis server time, in ms: the clock of every ledger heartbeat.
    pub time_ms: i64,
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
}

impl Snapshot {
    /// Reads the snapshot.
    pub async fn read<C>(conn: &mut C) -> Result<Snapshot, ProtocolError>
    where
        C: redis::aio::ConnectionLike + Send,
    {
        let reply: Value = SNAPSHOT
            .key(LEDGER_SET)
            .key(LOST_WORKERS)
            .arg(LEDGER_PREFIX)
            .invoke_async(conn)
            .await?;
        Snapshot::parse(reply)
    }

    fn parse(reply: Value) -> Result<Snapshot, ProtocolError> {
        let Value::Array(items) = reply else {
            return Err(ProtocolError::NotPyabc(format!("snapshot reply {reply:?}")));
        };
        if items.len() < 14 {
            return Err(ProtocolError::NotPyabc("short snapshot reply".into()));
        }
        let field = |i: usize, what: &str| text(&items[i], what);
        let seconds = integer(field(0, "TIME")?.as_deref(), "TIME")?.unwrap_or(0);
        let micros = integer(field(1, "TIME")?.as_deref(), "TIME")?.unwrap_or(0);
        let analysis_id = field(2, "key analysis_id")?;
        let ana = analysis_id.clone().unwrap_or_default();
        let generation = integer(
            field(3, &format!("key generation_{ana}"))?.as_deref(),
            &format!("key generation_{ana}"),
        )?;
        let t = generation.map(|t| t.to_string()).unwrap_or_default();
        let key = |name: &str| format!("key {name}_{ana}_{t}");
        let number = |i: usize, name: &str| -> Result<Option<i64>, ProtocolError> {
            integer(field(i, &key(name))?.as_deref(), &key(name))
        };
        let flag = |i: usize, name: &str| -> Result<Option<bool>, ProtocolError> {
            Ok(number(i, name)?.map(|v| v != 0))
        };
        let mode = match field(4, &key("mode"))?.as_deref() {
            None => None,
            Some("dynamic") => Some(Mode::Dynamic),
            Some("static") => Some(Mode::Static),
            Some(other) => {
                return Err(ProtocolError::NotPyabc(format!(
                    "{} holds {other:?}, expected dynamic or static",
                    key("mode")
                )));
            }
        };
        let mut ledgers = Vec::new();
        if let Some(Value::Array(entries)) = items.get(14) {
            for entry in entries {
                if let Value::Array(pair) = entry
                    && let [id, Value::Array(fields)] = pair.as_slice()
                {
                    let id = text(id, "ledger id")?.unwrap_or_default();
                    ledgers.push(Ledger::parse(id, fields)?);
                }
            }
        }
        ledgers.sort_by(|a, b| a.id.cmp(&b.id));
        let what = format!("key {LOST_WORKERS}");
        let lost_workers = match items.get(15) {
            Some(value) => integer(text(value, &what)?.as_deref(), &what)?.unwrap_or(0),
            None => 0,
        };
        Ok(Snapshot {
            time_ms: seconds * 1000 + micros / 1000,
            analysis_id,
            generation,
            mode,
            n_req: number(5, "n_req")?,
            n_acc: number(6, "n_acc")?,
            n_eval: number(7, "n_eval")?,
            n_fail: number(8, "n_fail")?,
            n_worker: number(9, "n_worker")?,
            n_job: number(10, "n_job")?,
            n_lookahead_eval: number(11, "n_lookahead_eval")?,
            all_accepted: flag(12, "all_accepted")?,
            is_look_ahead: flag(13, "is_look_ahead")?,
            ledgers,
            lost_workers,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn reply(values: &[Option<&str>], ledgers: Vec<Value>) -> Value {
        let mut items: Vec<Value> = vec![bulk("1700000000"), bulk("250000")];
        items.extend(values.iter().map(|v| v.map_or(Value::Nil, bulk)));
        items.push(Value::Array(ledgers));
        Value::Array(items)
    }

    fn ledger(id: &str, fields: &[(&str, &str)]) -> Value {
        let flat = fields
            .iter()
            .flat_map(|(k, v)| [bulk(k), bulk(v)])
            .collect();
        Value::Array(vec![bulk(id), Value::Array(flat)])
    }

    #[test]
    fn parses_counters_ledgers_and_info() {
        let values = [
            Some("ana"),
            Some("2"),
            Some("dynamic"),
            Some("100"),
            Some("40"),
            Some("97"),
            Some("3"),
            Some("2"),
            None,
            Some("0"),
            Some("0"),
            Some("0"),
        ];
        let ledgers = vec![
            ledger(
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
            ledger("w-0", &[("worker", "w"), ("heartbeat", "1700000000000")]),
        ];
        let Value::Array(mut items) = reply(&values, ledgers) else {
            unreachable!()
        };
        items.push(bulk("3"));
        let snap = Snapshot::parse(Value::Array(items)).unwrap();
        assert_eq!(snap.lost_workers, 3);
        assert_eq!(snap.time_ms, 1_700_000_000_250);
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
        let none = [None; 12];
        let snap = Snapshot::parse(reply(&none, vec![])).unwrap();
        assert_eq!(snap.info_line(), "No active generation");
        assert_eq!(snap.lost_workers, 0, "no repair yet");
        let mut values = [None; 12];
        values[0] = Some("ana");
        values[1] = Some("-1");
        let snap = Snapshot::parse(reply(&values, vec![])).unwrap();
        assert_eq!(
            snap.info_line(),
            "Workers=None Evaluations=None Acceptances=None/None (generation -1)"
        );
    }

    #[test]
    fn odd_values_are_errors_naming_the_key() {
        let mut values = [None; 12];
        values[0] = Some("ana");
        values[1] = Some("1");
        values[3] = Some("lots");
        let err = Snapshot::parse(reply(&values, vec![]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("n_req_ana_1") && err.contains("lots"), "{err}");
        values[3] = None;
        values[2] = Some("weird");
        let err = Snapshot::parse(reply(&values, vec![]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("mode_ana_1"), "{err}");
        let bad_ledger = ledger("x", &[("claim_max", "nine")]);
        let err = Snapshot::parse(reply(&[None; 12], vec![bad_ledger]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("abc_operator:ledger:x") && err.contains("claim_max"),
            "{err}"
        );
        assert!(Snapshot::parse(Value::Int(3)).is_err());
        let Value::Array(mut items) = reply(&[None; 12], vec![]) else {
            unreachable!()
        };
        items.push(bulk("many"));
        let err = Snapshot::parse(Value::Array(items))
            .unwrap_err()
            .to_string();
        assert!(err.contains(LOST_WORKERS) && err.contains("many"), "{err}");
    }
}
