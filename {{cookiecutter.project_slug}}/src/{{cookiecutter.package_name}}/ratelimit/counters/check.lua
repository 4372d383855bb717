-- Decide every limit of one request in one round trip, atomically, on the Redis clock.
--
-- KEYS[i]   the counter of limit i (all of one caller's keys share a hash tag: one slot)
-- ARGV      deadline, strategy, nonce, exact_max, lease seconds, n, then amount, window seconds,
--           cost, flags for each of the n limits; an empty nonce is a peek: every limit's state,
--           read only (the quota endpoint). With the moving window, a limit of more than
--           exact_max hits is counted by the sliding window counter instead: a moving window
--           keeps one entry per hit. Flags: 1 shadow (counted, never refusing), 2 concurrency
--           (a sorted set of the requests in flight, by lease expiry: at most `amount`).
-- returns   {all allowed (1/0), now ms, then per limit: allowed, remaining, reset ms}, or
--           {-1, now ms} when the call runs after its deadline (ms on this server's clock, put
--           there by storage.py when it writes the call; 0: none): its caller has given up on it
--           by then (a stalled Redis runs its backlog late), so it counts nothing and takes no
--           slot, or the request would be counted twice.
--
-- All or nothing: a request refused by one enforced limit consumes none of the others; a
-- shadow limit that would refuse is not counted (as it would not be if it refused), the
-- others are. A concurrency slot is the member `<nonce>:<i>`, released by slots.lua when
-- the response is done, its lease renewed by slots.lua meanwhile, so that the slots of an
-- instance that died expire within one lease. "reset" is when
-- the limit frees capacity again (the oldest hit leaving a moving window, the end of a fixed
-- window, the weighted count falling low enough in a sliding window counter); for GCRA, when
-- a refused request would fit, or when an admitted one's bucket is full again.
local deadline, configured, nonce = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local exact_max, lease = tonumber(ARGV[4]), math.ceil(tonumber(ARGV[5]) * 1000)
local n = tonumber(ARGV[6])
local peek = nonce == ''
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
if deadline > 0 and now > deadline then
  return {-1, now}
end

local limits, all_allowed = {}, 1
for i = 1, n do
  local amount = tonumber(ARGV[3 + 4 * i])
  local window = tonumber(ARGV[4 + 4 * i]) * 1000
  local cost = tonumber(ARGV[5 + 4 * i])
  local flags = tonumber(ARGV[6 + 4 * i])
  local shadow = flags % 2 == 1
  local key = KEYS[i]
  local strategy = configured
  if flags >= 2 then
    strategy = 'concurrency'
  elseif strategy == 'moving-window' and amount > exact_max then
    strategy = 'sliding-window-counter'
  end
  -- state: the sliding window counter's current key, or GCRA's new arrival time
  local count, reset, state
  if strategy == 'concurrency' then
    -- the requests in flight: members whose lease has not expired
    if peek then
      count = redis.call('ZCOUNT', key, '(' .. now, '+inf')
    else
      redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
      count = redis.call('ZCARD', key)
    end
    reset = now + 1000 -- a slot is usually free again within a second: Retry-After 1
  elseif strategy == 'moving-window' then
    local oldest
    if peek then -- the hits still in the window, the expired ones left for the next check
      local since = '(' .. (now - window)
      count = redis.call('ZCOUNT', key, since, '+inf')
      oldest = redis.call('ZRANGEBYSCORE', key, since, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
    else
      redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
      count = redis.call('ZCARD', key)
      oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    end
    reset = (oldest[2] and tonumber(oldest[2]) or now) + window
  elseif strategy == 'fixed-window' then
    count = tonumber(redis.call('GET', key) or '0')
    local ttl = redis.call('PTTL', key)
    reset = now + (ttl > 0 and ttl or window)
  elseif strategy == 'sliding-window-counter' then
    -- this window's count plus the previous one's, weighted by how much of the previous
    -- window still overlaps the sliding window
    local index = math.floor(now / window)
    state = key .. ':' .. index
    local current = tonumber(redis.call('GET', state) or '0')
    local previous = tonumber(redis.call('GET', key .. ':' .. (index - 1)) or '0')
    local into = now - index * window
    count = math.floor(previous * (window - into) / window) + current
    reset = (index + 1) * window
    if count + cost > amount then
      if current + cost <= amount and previous > 0 then
        -- within this window, once enough of the previous one has slid out
        local needed = count + cost - amount
        reset = now + math.ceil(needed * window / previous)
      else
        -- next window, once enough of this one has slid out
        local share = current > 0 and (1 - (amount - cost) / current) or 0
        reset = (index + 1) * window + math.ceil(math.max(share, 0) * window)
      end
    end
  elseif strategy == 'gcra' then
    -- A token bucket of `amount` tokens refilled over `window`, as the generic cell rate
    -- algorithm: the key holds the theoretical arrival time (TAT) of the next request, in ms.
    local interval = window / amount
    local tat = math.max(tonumber(redis.call('GET', key) or '0'), now)
    state = math.ceil(tat + interval * cost)
    -- tokens in use; "count + cost <= amount" below is then "state - now <= window"
    count = math.ceil((tat - now) / interval)
    -- A peek tells what the next request would be told (the quota endpoint's promise):
    -- admitted, its bucket is full again at the new TAT; refused, it fits once that is
    -- within one window.
    if count + cost > amount then
      reset = state - window
    else
      reset = state
    end
  end
  local allowed = count + cost <= amount and 1 or 0
  if allowed == 0 and not shadow then all_allowed = 0 end
  limits[i] = {key, amount, window, cost, count, reset, allowed, state, strategy}
end

if all_allowed == 1 and not peek then
  for i = 1, n do
    local key, amount, window, cost, count, reset, allowed, state, strategy = unpack(limits[i])
    if allowed == 0 then
      -- a shadow limit that would have refused: not counted, as if it had refused
    elseif strategy == 'concurrency' then
      redis.call('ZADD', key, now + lease, nonce .. ':' .. i)
      redis.call('PEXPIRE', key, lease)
    elseif strategy == 'moving-window' then
      for j = 1, cost do
        redis.call('ZADD', key, now, nonce .. ':' .. i .. ':' .. j)
      end
      redis.call('PEXPIRE', key, window)
      if count == 0 then limits[i][6] = now + window end
    elseif strategy == 'fixed-window' then
      redis.call('INCRBY', key, cost)
      if count == 0 then redis.call('PEXPIRE', key, window) end
    elseif strategy == 'sliding-window-counter' then
      redis.call('INCRBY', state, cost)
      redis.call('PEXPIRE', state, 2 * window)
    else -- gcra: the bucket is full again, and the key useless, once the TAT has passed
      redis.call('SET', key, state, 'PX', math.max(state - now, 1))
    end
  end
end

local result = {all_allowed, now}
for i = 1, n do
  local key, amount, window, cost, count, reset, allowed = unpack(limits[i])
  local used = count + ((all_allowed == 1 and allowed == 1 and not peek) and cost or 0)
  table.insert(result, allowed)
  table.insert(result, math.max(amount - used, 0))
  table.insert(result, reset)
end
return result
