-- KEYS: ledger, pyABC counter. ARGV: op, amount (negative for DECRBY), analysis, generation.
-- The counter change pyABC asked for, and its shadow in the ledger. On the hot path (a claim,
-- once per batch) it makes 4 calls: EXISTS, INCRBY, GET mode, one HSET.
-- include: leave.lua

local ledger = KEYS[1]
if redis.call('EXISTS', ledger) == 0 then
  return redis.error_reply('ABC_LEDGER_GONE this worker was declared lost and repaired')
end
local op, amount = ARGV[1], tonumber(ARGV[2])
-- A claim results.lua made ahead that pyABC's loop did not take (it left the generation
-- instead): given back as a lost worker's would be, its indices done and counted as failed,
-- so that the master waits for none of them and the calibration sample still fills up.
if op == 'unclaim' then
  local max, count = tonumber(redis.call('HGET', ledger, 'claim_max') or ''),
    tonumber(redis.call('HGET', ledger, 'claim_n') or '')
  redis.call('HDEL', ledger, 'claim_max', 'claim_n', 'claim_fail')
  forget_if_done(ledger)
  if not (max and count) or redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
  local g = ARGV[3] .. '_' .. ARGV[4]
  for s = max - count + 1, max, 1000 do
    local chunk = {}
    for i = s, math.min(s + 999, max) do chunk[#chunk + 1] = i end
    redis.call('RPUSH', 'done_ixs_' .. g, unpack(chunk))
  end
  redis.call('INCRBY', 'n_fail_' .. g, count)
  return count
end
if op == 'leave' then return leave(ledger, KEYS[2]) end
-- A worker that joins a generation whose n_worker is gone (a late `start`, after the master
-- deleted its keys) would create n_worker again: nobody joins it.
if op == 'join' and redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
local value = redis.call('INCRBY', KEYS[2], amount)
if op == 'count' then return value end
local here = {'analysis', ARGV[3], 'generation', ARGV[4]}
if op == 'join' then
  redis.call('HSET', ledger, 'joined', '1', unpack(here))
elseif op == 'claim' then
  -- a dynamic worker owns indices value-amount+1..value until it reports them in
  -- done_ixs; static evaluations are only counted and owe nothing
  if redis.call('GET', 'mode_' .. ARGV[3] .. '_' .. ARGV[4]) == 'dynamic' then
    redis.call('HSET', ledger, 'claim_max', value, 'claim_n', amount, 'claim_fail', 0, unpack(here))
  else
    redis.call('HSET', ledger, unpack(here))
  end
elseif op == 'fail' then
  redis.call('HSET', ledger, unpack(here))
  -- already in n_fail: a repair must not count these again
  if redis.call('HEXISTS', ledger, 'claim_max') == 1 then
    redis.call('HINCRBY', ledger, 'claim_fail', amount)
  end
elseif op == 'job' then
  redis.call('HSET', ledger, unpack(here))
  -- n_job -1 takes a job, +1 gives it back
  if redis.call('HINCRBY', ledger, 'jobs', -amount) <= 0 then
    redis.call('HDEL', ledger, 'jobs')
    forget_if_done(ledger)
  end
end
return value
