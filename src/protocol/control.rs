//! What `abc-redis-manager stop` and `reset-workers` do, and clearing a dead master's lock.

use super::ProtocolError;
use super::keys::{ANALYSIS_ID, GENERATION, MSG, N_WORKER, STOP, STOP_REQUESTED};
use super::reply::{Fields, text};
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

/// Asks the master to end the analysis once the generation it samples is stored
/// ([`STOP_REQUESTED`]: a master that runs through `abc_operator.run` reads it after each
/// generation). Workers are not told: they are needed to finish that generation.
pub async fn request_stop<C>(conn: &mut C) -> Result<(), ProtocolError>
where
    C: redis::aio::ConnectionLike + Send,
{
    Ok(redis::cmd("SET")
        .arg(STOP_REQUESTED)
        .arg(1)
        .query_async(conn)
        .await?)
}

static RESET_WORKERS: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
-- KEYS: analysis_id. ARGV: the names of the generation and n_worker keys.
-- Returns {name, value, ...}: the analysis and generation reset, under their keys' names.
local ana = redis.call('GET', KEYS[1])
if not ana then return false end
local t = redis.call('GET', ARGV[1] .. '_' .. ana)
if not t then return false end
redis.call('SET', ARGV[2] .. '_' .. ana .. '_' .. t, 0)
return {KEYS[1], ana, ARGV[1], t}
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
    let reply: Value = RESET_WORKERS
        .key(ANALYSIS_ID)
        .arg(GENERATION)
        .arg(N_WORKER)
        .invoke_async(conn)
        .await?;
    if reply == Value::Nil {
        return Ok(None);
    }
    let fields = Fields::parse("the reset-workers script's reply", reply)?;
    let ana = fields
        .text(ANALYSIS_ID, "key analysis_id")?
        .unwrap_or_default();
    let what = format!("key generation_{ana}");
    let t = fields.integer(GENERATION, &what)?.unwrap_or(0);
    Ok(Some((ana, t)))
}

static CLEAR_ANALYSIS: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
-- KEYS: analysis_id. ARGV: the generation key's name. Returns the analysis id cleared.
local ana = redis.call('GET', KEYS[1])
if not ana then return false end
redis.call('DEL', KEYS[1], ARGV[1] .. '_' .. ana)
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
    let reply: Value = CLEAR_ANALYSIS
        .key(ANALYSIS_ID)
        .arg(GENERATION)
        .invoke_async(conn)
        .await?;
    let cleared = text(&reply, "key analysis_id")?;
    if let Some(ana) = &cleared {
        tracing::info!(analysis_id = %ana, "cleared the analysis lock of a dead master");
    }
    Ok(cleared)
}
