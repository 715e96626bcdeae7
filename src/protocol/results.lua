-- KEYS: ledger. ARGV: 'dynamic' or 'static'; for dynamic results the analysis and the
-- generation, else '' twice; '1' where the worker may claim ahead, else '0'; then pyABC's
-- result pipeline, each command as its argument count and its arguments. Runs the pipeline
-- (INCRBY n_acc, RPUSH queue, RPUSH done_ixs) and closes the claim (dynamic) or the held job
-- (static) in the same step. For dynamic results it also reads what pyABC's loop checks next
-- and, where that loop is about to claim its next evaluation, claims it here (see
-- LedgerRedis in abc_worker.py); where pyABC's loop ends instead, it leaves the generation.
-- Returns {pipeline replies, reads, claim, left}: reads in the order of abc_worker.py's
-- _read_keys, claim {its highest index, batch size} or {}, left {n_worker after leaving} or {}.
--
-- Key names written out here: abc_operator:early_release (the abc_operator module's
-- EARLY_RELEASE_KEY), the ledger set abc_operator:ledgers and the ledger prefix
-- abc_operator:ledger: (src/protocol/keys.rs, whose tests check this file).
-- include: leave.lua

-- pyABC's master keeps, of the accepted particles, the n of the lowest indices, and once it
-- has n it waits only for the indices up to the n-th of them (and no longer than n_worker
-- is above 0), sleeping 100 ms per look. An evaluation still running whose indices are all
-- above every index already reported can change nothing of that sample. When the result
-- that gives a generation its n-th acceptance arrives and every other worker in the
-- generation runs only such evaluations, or none, they are released: they leave the
-- generation here (n_worker -1 each, their 'joined' dropped, so that their own leaving
-- changes nothing), and the master finds n_worker 0 at its first look instead of sleeping.
-- All or none: with one evaluation that matters still running the master waits anyway.
-- Scans the ledgers once per generation, and only where at most 1,000 are registered (the
-- SCARD below): it reads each of them, inside Redis (4 ms for 1,000, releasing them all).
local function release_others(ledger, ana, t, g)
  -- only for a master that waits for the evaluations that matter, not for all of them
  -- (pyABC's wait_for_all_samples): its sampler, from the abc_operator module, says so
  if redis.call('GET', 'abc_operator:early_release') ~= ana then return end
  local n_worker = tonumber(redis.call('GET', 'n_worker_' .. g) or '')
  local n_eval = tonumber(redis.call('GET', 'n_eval_' .. g) or '')
  local mine = redis.call('HEXISTS', ledger, 'joined')
  if not (n_worker and n_eval) or n_worker <= mine
      or redis.call('SCARD', 'abc_operator:ledgers') > 1000 then
    return
  end
  local others, lowest, running = {}, n_eval + 1, 0
  for _, id in ipairs(redis.call('SMEMBERS', 'abc_operator:ledgers')) do
    local key = 'abc_operator:ledger:' .. id
    local f = redis.call('HMGET', key, 'analysis', 'generation', 'joined', 'claim_max', 'claim_n')
    if f[1] == ana and f[2] == t then
      if f[3] and key ~= ledger then others[#others + 1] = key end
      local max, n = tonumber(f[4] or ''), tonumber(f[5] or '')
      if max and n then
        lowest, running = math.min(lowest, max - n + 1), running + n
      end
    end
  end
  -- the running indices must be the highest claimed (n_eval - lowest + 1 of them), and
  -- n_worker only workers with a ledger (not a plain pyABC worker)
  if running ~= n_eval - lowest + 1 or #others + mine ~= n_worker then return end
  for _, key in ipairs(others) do
    redis.call('HDEL', key, 'joined')
    forget_if_done(key)
  end
  redis.call('DECRBY', 'n_worker_' .. g, #others)
end
local ledger = KEYS[1]
if redis.call('EXISTS', ledger) == 0 then
  return redis.error_reply('ABC_LEDGER_GONE this worker was declared lost and repaired')
end
local replies, i, added = {}, 5, {}
if ARGV[1] == 'dynamic' and ARGV[2] ~= ''
    and redis.call('EXISTS', 'n_req_' .. ARGV[2] .. '_' .. ARGV[3]) == 0 then
  -- the master cleared the generation (wait_for_all_samples does once n_worker is 0): a
  -- late report must not create its keys again; pyABC's loop leaves it on the reads below
  i = #ARGV + 1
end
while i <= #ARGV do
  local n, name, key = tonumber(ARGV[i]), string.upper(ARGV[i + 1]), ARGV[i + 2]
  if name == 'INCRBY' then
    replies[#replies + 1] = redis.call('INCRBY', key, ARGV[i + 3])
    added[key] = tonumber(ARGV[i + 3])
  elseif name == 'RPUSH' then
    -- in chunks: Lua's unpack is limited by its stack
    local last = i + n
    for s = i + 3, last, 1000 do
      replies[#replies + 1] = redis.call('RPUSH', key, unpack(ARGV, s, math.min(s + 999, last)))
    end
  else
    return redis.error_reply('ABC_LEDGER unexpected command in a result pipeline: ' .. name)
  end
  i = i + n + 1
end
local reads, claim, left = {}, {}, {}
if ARGV[1] == 'dynamic' then
  redis.call('HDEL', ledger, 'claim_max', 'claim_n', 'claim_fail')
  if ARGV[2] ~= '' then
    local ana, t = ARGV[2], ARGV[3]
    local g = ana .. '_' .. t
    local v = redis.call('MGET', 'analysis_id', 'n_acc_' .. g, 'n_req_' .. g,
      'is_look_ahead_' .. g, 'n_eval_' .. g, 'n_fail_' .. g, 'all_accepted_' .. g,
      'batch_size_' .. g)
    reads = {v[1], v[2], v[3], v[4]}
    -- pyABC's loop (work_on_population_dynamic, pyabc 0.13.0) claims its next evaluation
    -- when the analysis is still the current one, n_acc < n_req and, in the calibration
    -- sample (all_accepted), n_eval - n_fail < n_req. Not in look-ahead sampling, which has
    -- a bound and a counter of its own: there pyABC's loop claims by itself.
    local n_acc, n_req, batch = tonumber(v[2]), tonumber(v[3]), tonumber(v[8])
    -- pyABC's loop condition, on the values its next check reads
    local more = n_acc and n_req and n_acc < n_req
    if more and v[7] == '1' then
      more = (tonumber(v[5]) or 0) - (tonumber(v[6]) or 0) < n_req
    end
    if more and ARGV[4] == '1' and v[1] == ana and v[4] == '0' and batch then
      local max = redis.call('INCRBY', 'n_eval_' .. g, batch)
      redis.call('HSET', ledger, 'claim_max', max, 'claim_n', batch, 'claim_fail', 0,
        'analysis', ana, 'generation', t)
      reads[5], reads[6], claim = v[5], v[6], {max, batch}
    elseif n_acc and n_req and not more then
      -- this result gave the generation its n-th acceptance
      local added_acc = added['n_acc_' .. g]
      if added_acc and n_acc - added_acc < n_req and n_acc >= n_req and v[4] == '0' then
        release_others(ledger, ana, t, g)
      end
      -- the loop ends at that check and leaves the generation (DECR n_worker, as
      -- counter.lua's 'leave'): left here, in the same step as the generation's last result
      -- of this worker, so that the master, which sleeps 100 ms whenever it finds a worker
      -- still in the generation, finds none sooner
      reads[5], reads[6] = v[5], v[6]
      left = {leave(ledger, 'n_worker_' .. g)}
    end
  end
elseif redis.call('HINCRBY', ledger, 'jobs', -1) <= 0 then
  redis.call('HDEL', ledger, 'jobs')
end
return {replies, reads, claim, left}
