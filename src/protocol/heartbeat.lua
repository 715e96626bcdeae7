-- KEYS: the ledgers of a worker's processes. Never recreates a ledger a repair deleted.
-- Returns, per ledger, 1 if it was beaten, 0 if it is gone.
-- include: now_ms.lua

local now, alive = now_ms(), {}
for i, ledger in ipairs(KEYS) do
  alive[i] = redis.call('EXISTS', ledger)
  if alive[i] == 1 then redis.call('HSET', ledger, 'heartbeat', now) end
end
return alive
