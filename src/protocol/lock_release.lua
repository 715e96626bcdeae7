-- KEYS: ledger, lock. ARGV: token. Not fenced: releasing one's own lock is always right.
redis.call('HDEL', KEYS[1], 'lock_name', 'lock_token')
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
