-- Fragment: what counter.lua and results.lua both do to a ledger (they include this file).
-- the generation stays recorded while the worker is in it or still owes something in it
local function forget_if_done(ledger)
  if redis.call('HEXISTS', ledger, 'joined') == 0 and redis.call('HEXISTS', ledger, 'claim_max') == 0
      and redis.call('HEXISTS', ledger, 'jobs') == 0 then
    redis.call('HDEL', ledger, 'analysis', 'generation')
  end
end
-- pyABC's DECR n_worker when a worker leaves a generation, once per join (a result script
-- may have left for it already, or released it). A generation whose n_worker is gone is
-- over: pyABC's master deletes its keys once it has read n_worker 0, in a step of its own,
-- and leaving it must not create n_worker again. Returns n_worker after.
local function leave(ledger, n_worker)
  local value = tonumber(redis.call('GET', n_worker) or '')
  if value and redis.call('HEXISTS', ledger, 'joined') == 1 then
    value = redis.call('DECR', n_worker)
  end
  redis.call('HDEL', ledger, 'joined')
  forget_if_done(ledger)
  return value or 0
end
