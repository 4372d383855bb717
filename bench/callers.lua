-- wrk script: every request from another client, named by X-Forwarded-For (the service trusts
-- it from loopback): callers OFFSET, OFFSET + 1, ... modulo COUNT, as addresses 10.x.y.z.
-- wrk URL -s callers.lua -- OFFSET COUNT
local offset, count, sent = 0, 100000, 0

function init(args)
  offset = tonumber(args[1] or "0")
  count = tonumber(args[2] or "100000")
end

function request()
  local caller = (offset + sent) % count
  sent = sent + 1
  local address = string.format("10.%d.%d.%d",
    math.floor(caller / 65536) % 256, math.floor(caller / 256) % 256, caller % 256)
  return wrk.format(nil, nil, { ["X-Forwarded-For"] = address })
end
