-- Release or renew concurrency slots (check.lua takes them), one key (a caller's) per call.
--
-- KEYS[1]   the concurrency counter of one caller on one route
-- ARGV      lease seconds (0: release), then the members (slots) of requests in flight
-- returns   how many of those slots were still held
--
-- Renewing uses ZADD XX: a slot that expired meanwhile (the instance was stalled longer than a
-- lease) is not taken back behind the other callers' backs.
local lease = math.ceil(tonumber(ARGV[1]) * 1000)
if lease == 0 then
  return redis.call('ZREM', KEYS[1], unpack(ARGV, 2))
end
local clock = redis.call('TIME')
local expiry = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000) + lease
local held = 0
for i = 2, #ARGV do
  held = held + redis.call('ZADD', KEYS[1], 'XX', 'CH', expiry, ARGV[i])
end
if held > 0 then
  redis.call('PEXPIRE', KEYS[1], lease)
end
return held
