//! The exact, once-only repair of a lost worker.

use super::keys::{LEDGER_SET, LOST_WORKERS, ledger_key};
use super::reply::Fields;
use super::{ProtocolError, REPAIR_LUA};
use redis::Value;
use serde::Serialize;
use std::ops::RangeInclusive;
use std::sync::LazyLock;

/// The repair Lua script, `repair.lua`. The worker entrypoint runs the same file (on its
/// own ledger at exit), which ships beside it, so worker and operator can never disagree on it.
pub fn repair_script_source() -> &'static str {
    REPAIR_LUA
}

static REPAIR: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(repair_script_source()));

/// What a repair corrected (for an Event, a log line, a metric).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Repair {
    /// The ledger repaired.
    pub ledger_id: String,
    /// Analysis of the generation the worker was in, if any.
    pub analysis_id: Option<String>,
    /// That generation.
    pub generation: Option<i64>,
    /// n_worker was decremented: the worker had joined and not left.
    pub left_generation: bool,
    /// Claimed evaluation indices pushed to done_ixs.
    pub indices: Option<RangeInclusive<i64>>,
    /// Added to n_fail: the claimed evaluations minus failures already counted.
    pub failures_added: i64,
    /// Added to n_job: static jobs the worker held.
    pub jobs_returned: i64,
    /// pyABC's static lock, held by the dead worker, was deleted.
    pub lock_released: bool,
    /// The ledger belonged to an analysis or generation no longer running: only deleted.
    pub stale: bool,
    /// Workers repaired on this Redis so far, this one included if it corrected something
    /// (the repair script counts in [`LOST_WORKERS`] in the same atomic step).
    pub lost_workers: i64,
}

impl Repair {
    /// Whether any pyABC counter or lock changed (a lost worker, counted in
    /// [`LOST_WORKERS`]; `start` was published if work was given back).
    pub fn corrected(&self) -> bool {
        self.left_generation
            || self.indices.is_some()
            || self.jobs_returned > 0
            || self.lock_released
    }
}

impl std::fmt::Display for Repair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "worker {}", self.ledger_id)?;
        if let (Some(ana), Some(t)) = (&self.analysis_id, self.generation) {
            write!(f, " (analysis {ana}, generation {t})")?;
        }
        if !self.corrected() {
            return f.write_str(if self.stale {
                ": ledger of a finished generation removed"
            } else {
                ": owed nothing, ledger removed"
            });
        }
        let mut parts = Vec::new();
        if self.left_generation {
            parts.push("n_worker -1".to_string());
        }
        if let Some(indices) = &self.indices {
            parts.push(format!(
                "indices {}..={} marked done, n_fail +{}",
                indices.start(),
                indices.end(),
                self.failures_added
            ));
        }
        if self.jobs_returned > 0 {
            parts.push(format!("n_job +{}", self.jobs_returned));
        }
        if self.lock_released {
            parts.push("static worker lock released".into());
        }
        write!(f, ": {}", parts.join(", "))
    }
}

/// Gives back what a dead worker owed, atomically and once: decrements n_worker if it had
/// joined (never below 0), pushes its unreported indices to done_ixs and counts them as failed
/// (minus failures already counted), returns its static jobs to n_job, releases pyABC's static
/// lock if it held it, deletes the ledger, publishes `start` if it gave work back (indices or
/// jobs) so that live workers re-enter, and counts the lost worker in [`LOST_WORKERS`] (all in
/// one step, so no crash can lose the count).
/// Counters of a ledger's analysis or generation that is no longer running are left alone
/// (the ledger is only deleted). Without a ledger (already repaired, or never a worker) it
/// does nothing and returns `None`.
///
/// Only call it for a worker known dead (pod gone, container terminated, heartbeat expired):
/// a live worker whose ledger is repaired exits instead of counting twice.
pub async fn repair_lost_worker<C>(
    conn: &mut C,
    ledger_id: &str,
) -> Result<Option<Repair>, ProtocolError>
where
    C: redis::aio::ConnectionLike + Send,
{
    let reply: Value = REPAIR
        .key(ledger_key(ledger_id))
        .key(LEDGER_SET)
        .key(LOST_WORKERS)
        .arg(ledger_id)
        .invoke_async(conn)
        .await?;
    let repair = parse(ledger_id, reply)?;
    if let Some(repair) = &repair {
        if repair.corrected() {
            tracing::info!(%repair, "repaired lost worker");
        } else {
            tracing::debug!(%repair, "removed ledger");
        }
    }
    Ok(repair)
}

/// Reads the repair script's reply, `nil` or `{name, value, ...}` (the script says which
/// names).
fn parse(ledger_id: &str, reply: Value) -> Result<Option<Repair>, ProtocolError> {
    if reply == Value::Nil {
        return Ok(None);
    }
    let fields = Fields::parse("the repair script's reply", reply)?;
    let what = |name: &str| format!("field {name} of the repair script's reply");
    let number =
        |name: &str| Ok::<_, ProtocolError>(fields.integer(name, what(name))?.unwrap_or(0));
    let (first, last) = (number("first_index")?, number("last_index")?);
    // The repair has happened by now: an odd recorded generation is reported as unknown
    // rather than as an error (the ledger it came from is gone).
    let generation = fields
        .text("generation", what("generation"))?
        .and_then(|t| t.parse().ok());
    Ok(Some(Repair {
        ledger_id: ledger_id.to_string(),
        analysis_id: fields.text("analysis", what("analysis"))?,
        generation,
        left_generation: number("left_generation")? == 1,
        indices: (last > 0).then_some(first..=last),
        failures_added: number("failures_added")?,
        jobs_returned: number("jobs_returned")?,
        lock_released: number("lock_released")? == 1,
        stale: number("stale")? == 1,
        lost_workers: number("lost_workers")?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_is_the_file_the_worker_ships() {
        let source = repair_script_source();
        let shipped = super::super::WORKER_LUA
            .iter()
            .find(|(name, _)| *name == "repair.lua")
            .map(|(_, text)| *text);
        assert_eq!(shipped, Some(source));
        assert!(source.contains("redis.call('DEL', KEYS[1])"));
        assert!(source.contains("'abc_msg_pubsub', 'start'"));
        // the operator runs the file as it is: an include would be left unread
        assert!(!source.contains("-- include:"));
    }

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn parses_and_describes() {
        assert_eq!(parse("w", Value::Nil).unwrap(), None);
        let mut items = vec![
            bulk("analysis"),
            bulk("ana"),
            bulk("generation"),
            bulk("-1"),
        ];
        for (name, value) in [
            ("left_generation", 1),
            ("first_index", 19),
            ("last_index", 20),
            ("failures_added", 1),
            ("jobs_returned", 0),
            ("lock_released", 0),
            ("stale", 0),
            ("lost_workers", 4),
        ] {
            items.extend([bulk(name), Value::Int(value)]);
        }
        let repair = parse("w", Value::Array(items.clone())).unwrap().unwrap();
        assert_eq!(repair.lost_workers, 4);
        assert_eq!(repair.generation, Some(-1));
        assert_eq!(repair.indices, Some(19..=20));
        assert!(repair.corrected());
        assert_eq!(
            repair.to_string(),
            "worker w (analysis ana, generation -1): n_worker -1, indices 19..=20 marked done, n_fail +1"
        );
        assert!(parse("w", Value::Int(1)).is_err());
        // a reply without a field: the error names it
        items.truncate(items.len() - 2);
        let err = parse("w", Value::Array(items)).unwrap_err().to_string();
        assert!(err.contains("no field \"lost_workers\""), "{err}");
    }
}
