//! What `abc-redis-manager stop` and `reset-workers` do, and clearing a dead master's lock.

use super::keys::{MSG, STOP};
use super::{ProtocolError, integer, text};
use redis::Value;
use std::sync::LazyLock;

/// Asks workers to leave (they do so when idle, i.e. after the current generation): pyABC's
/// `abc-redis-manager stop`. Returns how many subscribers got the message.
pub async fn stop<C>(conn: &mut C) -> Result<i64, ProtocolError>
where
    C: redis::aio::ConnectionLike + Send,
{
    Ok(redis::cmd("PUBLISH")
        .arg(MSG)
        .arg(STOP)
        .query_async(conn)
        .await?)
}

static RESET_WORKERS: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local ana = redis.call('GET', 'analysis_id')
if not ana then return false end
local t = redis.call('GET', 'generation_' .. ana)
if not t then return false end
redis.call('SET', 'n_worker_' .. ana .. '_' .. t, 0)
return {ana, t}
"#,
    )
});

/// pyABC's `abc-redis-manager reset-workers`: sets the current generation's n_worker to 0.
/// Returns the (analysis, generation) reset, or `None` without an active generation.
///
/// A blunt tool: it also forgets live workers, and in the calibration sample it does not
/// unblock the master. [`super::repair_lost_worker`] is the exact fix.
pub async fn reset_workers<C>(conn: &mut C) -> Result<Option<(String, i64)>, ProtocolError>
where
    C: redis::aio::ConnectionLike + Send,
{
    let reply: Value = RESET_WORKERS.prepare_invoke().invoke_async(conn).await?;
    match reply {
        Value::Nil => Ok(None),
        Value::Array(items) if items.len() == 2 => {
            let ana = text(&items[0], "key analysis_id")?.unwrap_or_default();
            let what = format!("key generation_{ana}");
            let t = integer(text(&items[1], &what)?.as_deref(), &what)?.unwrap_or(0);
            Ok(Some((ana, t)))
        }
        other => Err(ProtocolError::NotPyabc(format!(
            "unexpected reset reply {other:?}"
        ))),
    }
}

static CLEAR_ANALYSIS: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local ana = redis.call('GET', 'analysis_id')
if not ana then return false end
redis.call('DEL', 'analysis_id', 'generation_' .. ana)
return ana
"#,
    )
});

/// Deletes `analysis_id` (and `generation_{ana}`) like the master's own `stop()` does, so that
/// a retried master does not fail with "The server seems busy with an analysis already" after
/// its predecessor died. Workers still in that analysis's generation leave it at their next
/// check. Returns the analysis id cleared. Only call it when no master is running.
pub async fn clear_stale_analysis_lock<C>(conn: &mut C) -> Result<Option<String>, ProtocolError>
where
    C: redis::aio::ConnectionLike + Send,
{
    let reply: Value = CLEAR_ANALYSIS.prepare_invoke().invoke_async(conn).await?;
    let cleared = text(&reply, "key analysis_id")?;
    if let Some(ana) = &cleared {
        tracing::info!(analysis_id = %ana, "cleared the analysis lock of a dead master");
    }
    Ok(cleared)
}
