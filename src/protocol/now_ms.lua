-- Fragment (register.lua and heartbeat.lua include it): Redis `TIME` in milliseconds, one
-- clock for all.
local function now_ms()
  local t = redis.call('TIME')
  return t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000))
end
