-- The repair of a lost worker's ledger, run by the worker on its own ledger (at exit, and for
-- a predecessor with its id at start) and by the operator for a worker known dead
-- (src/protocol/repair.rs includes this file): both run this same text.
-- KEYS: ledger hash, ledger set, lost-worker counter. ARGV: ledger id.
-- Gives back what a dead worker owes, once: deleting the ledger is part of the repair.
-- Returns nil without a ledger, else {name, value, ...} with the names analysis,
-- generation, left_generation, first_index, last_index, failures_added, jobs_returned,
-- lock_released, stale, lost_workers (both callers read them by name).
local raw = redis.call('HGETALL', KEYS[1])
if #raw == 0 then
  redis.call('SREM', KEYS[2], ARGV[1])
  return false
end
local f = {}
for i = 1, #raw, 2 do f[raw[i]] = raw[i + 1] end
local ana, t = f['analysis'], f['generation']
local left, first, last, failed, jobs, unlocked, stale = 0, 0, 0, 0, 0, 0, 0
local function key(name) return name .. '_' .. ana .. '_' .. t end
-- pyABC counters are only corrected while they exist: INCRBY must never create one
local function exists(name) return redis.call('EXISTS', key(name)) == 1 end
if ana and t then
  local current = redis.call('GET', 'analysis_id')
  local current_t = current and tonumber(redis.call('GET', 'generation_' .. current) or '')
  local ledger_t = tonumber(t)
  -- live: the current analysis, and its current generation or (look-ahead) the one before
  if current == ana and current_t and ledger_t and ledger_t >= current_t - 1 then
    if f['joined'] and exists('n_worker') then
      if (tonumber(redis.call('GET', key('n_worker'))) or 0) > 0 then
        redis.call('DECR', key('n_worker'))
        left = 1
      end
    end
    local max, count = tonumber(f['claim_max'] or ''), tonumber(f['claim_n'] or '')
    if max and count and count > 0 and exists('n_eval') then
      first, last = max - count + 1, max
      for s = first, last, 1000 do
        local chunk = {}
        for i = s, math.min(s + 999, last) do chunk[#chunk + 1] = i end
        redis.call('RPUSH', key('done_ixs'), unpack(chunk))
      end
      -- pyABC treats the lost evaluations like failed ones
      failed = count - math.max(0, math.min(count, tonumber(f['claim_fail'] or '0') or 0))
      if failed > 0 then redis.call('INCRBY', key('n_fail'), failed) end
    end
    local held = tonumber(f['jobs'] or '0') or 0
    if held > 0 and exists('n_job') then
      redis.call('INCRBY', key('n_job'), held)
      jobs = held
    end
  else
    stale = 1
  end
end
if f['lock_name'] and f['lock_token'] and redis.call('GET', f['lock_name']) == f['lock_token'] then
  redis.call('DEL', f['lock_name'])
  unlocked = 1
end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
local lost
if left == 1 or last > 0 or jobs > 0 or unlocked == 1 then
  -- counted here, in the same step as the correction, so that no crash of whoever runs the
  -- repair can lose or double a lost worker
  lost = redis.call('INCR', KEYS[3])
else
  lost = tonumber(redis.call('GET', KEYS[3]) or '0') or 0
end
if last > 0 or jobs > 0 then
  -- work was given back: live workers that left re-enter the generation to do it (they join
  -- only on a message). Not after a bare n_worker -1: the generation may be ending, and a
  -- static master that saw n_worker 0 deletes the generation's keys under a worker joining
  -- then, whose leaving makes n_worker -1.
  redis.call('PUBLISH', 'abc_msg_pubsub', 'start')
end
return {'analysis', ana or false, 'generation', t or false, 'left_generation', left,
  'first_index', first, 'last_index', last, 'failures_added', failed, 'jobs_returned', jobs,
  'lock_released', unlocked, 'stale', stale, 'lost_workers', lost}
