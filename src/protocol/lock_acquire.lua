-- KEYS: ledger, lock. ARGV: token, expiry in ms or ''. pyABC's static lock has no expiry:
-- a worker killed holding it would block every static worker forever.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.error_reply('ABC_LEDGER_GONE this worker was declared lost and repaired')
end
local ok
if ARGV[2] ~= '' then
  ok = redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2])
else
  ok = redis.call('SET', KEYS[2], ARGV[1], 'NX')
end
if not ok then return 0 end
redis.call('HSET', KEYS[1], 'lock_name', KEYS[2], 'lock_token', ARGV[1])
return 1
