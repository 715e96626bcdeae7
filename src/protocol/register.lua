-- A worker process registers its ledger. KEYS: ledger, ledger set. ARGV: id, worker,
-- process, host, pid.
-- include: now_ms.lua

if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local now = now_ms()
redis.call('HSET', KEYS[1], 'worker', ARGV[2], 'process', ARGV[3], 'host', ARGV[4],
  'pid', ARGV[5], 'started', now, 'heartbeat', now)
redis.call('SADD', KEYS[2], ARGV[1])
return 1
