-- floodgate: decide every check of one request together, and charge them only if every
-- enforced check fits. One script call is one atomic decision.
--
-- KEYS[i]        the state of check i: `{prefix}:policy:key`.
-- ARGV[1]        the time in microseconds since the UNIX epoch, or "" to read Redis's clock.
-- ARGV[5i - 3]   check i's algorithm: "gcra" or "window".
-- ARGV[5i - 2]   its cost.
-- ARGV[5i - 1]   "1" if its refusal refuses the request, "0" for a dry run.
-- ARGV[5i]       gcra: the emission interval in nanoseconds; window: the window in microseconds.
-- ARGV[5i + 1]   gcra: the tolerance (burst × emission) in nanoseconds; window: the limit.
--
-- Reply: four integers per check, in order: allowed (1 or 0), remaining, reset_after and
-- retry_after in microseconds, rounded up.
--
-- State is a string per key, written with its TTL in one SET … PX:
--   gcra    "g:<tat µs>:<ns past it>"                 the theoretical arrival time
--   window  "w:<start µs>:<previous>:<current>"       the current window and both counts
--
-- Numbers are doubles, exact for integers below 2^53. Absolute times are whole microseconds
-- (~1.8e15 today, exact); durations of a token bucket are nanoseconds, so that rates above
-- one per microsecond keep their precision and decisions are those of gcra.rs; a window is
-- counted in microseconds, so limit × window stays exact up to 2^53 (2.5 million per hour).

-- Redis < 5 replicates scripts verbatim unless told otherwise, and refuses writes after
-- TIME; from Redis 5 on, effects are replicated and this is a no-op.
if redis.replicate_commands then
  redis.replicate_commands()
end

-- How much longer than its state needs a key lives. Expiry runs on Redis's clock, and with
-- the client's clock replicas can be milliseconds apart: a key must not expire before every
-- replica sees its state as fresh, nor while a request that read the clock is on its way.
-- A fresh key changes no decision, so the margin costs only memory.
local TTL_MARGIN_MS = 1000

local now
if ARGV[1] == '' then
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000000 + tonumber(time[2])
else
  now = tonumber(ARGV[1])
end

-- Integer division of integers a ≥ 0, b > 0. fmod is exact, so these are too.
local function div_floor(a, b)
  return (a - math.fmod(a, b)) / b
end

local function div_ceil(a, b)
  local rest = math.fmod(a, b)
  if rest == 0 then
    return a / b
  end
  return (a - rest) / b + 1
end

local function integer(value)
  return string.format('%.0f', value)
end

-- The state `value` of `key` as the captures of `pattern`, or nil when there is none. State of
-- the other algorithm (a policy that changed algorithm) counts as none: the key starts afresh.
local function parse(key, value, tag, pattern)
  if not value or string.sub(value, 1, 2) ~= tag .. ':' then
    return nil
  end
  local a, b, c = string.match(value, pattern)
  if not a then
    error('floodgate: ' .. key .. ' does not hold floodgate rate-limit state; delete the key')
  end
  return tonumber(a), tonumber(b), tonumber(c)
end

-- GCRA, as gcra.rs: a check of cost k fits iff max(TAT, now) + k·e − now ≤ τ.
-- Returns allowed, remaining, reset_after (ns), retry_after (ns), new state, TTL (ms).
local function gcra(key, value, emission, tolerance, cost)
  local ahead_now = 0 -- max(TAT, now) − now: a TAT in the past is a full bucket.
  local tat_us, tat_ns = parse(key, value, 'g', '^g:(%-?%d+):(%d+)$')
  if tat_us then
    local ahead = (tat_us - now) * 1000 + tat_ns
    if ahead > 0 then
      ahead_now = ahead
    end
  end
  local ahead = ahead_now + cost * emission
  if ahead > tolerance then
    local remaining = div_floor(tolerance - math.min(ahead_now, tolerance), emission)
    return false, remaining, ahead_now, ahead - tolerance
  end
  -- The new TAT, now + ahead, split into whole microseconds and the nanoseconds past them.
  local ns = math.fmod(ahead, 1000)
  local state = 'g:' .. integer(now + (ahead - ns) / 1000) .. ':' .. integer(ns)
  -- Fresh again (equivalent to no key) once the TAT has passed.
  local ttl = div_ceil(ahead, 1000000) + TTL_MARGIN_MS
  return true, div_floor(tolerance - ahead, emission), ahead, 0, state, ttl
end

-- The weighted two-window counter, as window.rs, in microseconds.
-- Returns allowed, remaining, reset_after (µs), retry_after (µs), new state, TTL (ms).
local function window(key, value, width, limit, cost)
  -- `start` is the current window's start in microseconds from now (negative: in the past).
  local start, previous, current = 0, 0, 0
  local start_us, stored_previous, stored_current =
    parse(key, value, 'w', '^w:(%-?%d+):(%d+):(%d+)$')
  if start_us then
    start, previous, current = start_us - now, stored_previous, stored_current
  end
  -- Roll forward by whole windows; the previous count is the last window's, or zero.
  local elapsed = -start
  if elapsed >= width then
    local windows = div_floor(elapsed, width)
    if windows == 1 then
      previous = current
    else
      previous = 0
    end
    current = 0
    start = start + windows * width
  end
  -- Both counts zero is an absent key: its window starts now.
  if previous == 0 and current == 0 then
    start = 0
  end
  -- A start ahead of now (written by a client whose clock runs ahead) counts as now: the
  -- window never moves back, and the check is decided at its start.
  local at = math.max(start, 0)
  elapsed = at - start
  -- Everything scaled by the width to stay in whole numbers: the previous window's count
  -- still in the window is weight / width.
  local weight = previous * (width - elapsed)
  local function reset_after()
    local ends = at
    if current > 0 then
      ends = start + 2 * width
    elseif previous > 0 then
      ends = start + width
    end
    return math.max(ends - at, 0)
  end
  local room = limit - current - cost
  if room >= 0 and weight <= room * width then
    current = current + cost
    local state = 'w:' .. integer(now + start) .. ':' .. integer(previous) .. ':'
      .. integer(current)
    -- Fresh again once both counts have slid out: two windows after this one started.
    local ttl = div_ceil(start + 2 * width, 1000) + TTL_MARGIN_MS
    return true, room - div_ceil(weight, width), reset_after(), 0, state, ttl
  end
  local remaining = math.max(limit - current - div_ceil(weight, width), 0)
  -- The earliest offset into a window whose previous count is `count` at which
  -- count·(width − offset)/width ≤ space.
  local function offset_for(count, space)
    if count <= space then
      return 0
    end
    return width - div_floor(space * width, count)
  end
  local wait
  if room >= 0 then
    -- It fits in this window once enough of the previous one has slid out.
    wait = math.max(offset_for(previous, room) - elapsed, 0)
  else
    -- Next window, where this window's count is the previous one.
    wait = (width - elapsed) + offset_for(current, math.max(limit - cost, 0))
  end
  return false, remaining, reset_after(), math.max(wait, 1)
end

local reply = {}
local charges = {} -- key → new state, for the checks that fit
local ttls = {}
local written = {} -- keys in the order first charged
local fits = true

for i, key in ipairs(KEYS) do
  local base = 5 * i - 3
  local algorithm = ARGV[base]
  local cost = tonumber(ARGV[base + 1])
  local enforced = ARGV[base + 2] == '1'
  local first = tonumber(ARGV[base + 3])
  local second = tonumber(ARGV[base + 4])
  -- A key checked twice in one request sees its own earlier charge.
  local value = charges[key] or redis.call('GET', key)
  local allowed, remaining, reset, retry, state, ttl
  if algorithm == 'gcra' then
    allowed, remaining, reset, retry, state, ttl = gcra(key, value, first, second, cost)
    reset, retry = div_ceil(reset, 1000), div_ceil(retry, 1000)
  elseif algorithm == 'window' then
    allowed, remaining, reset, retry, state, ttl = window(key, value, first, second, cost)
  else
    error('floodgate: unknown algorithm ' .. tostring(algorithm))
  end
  if allowed then
    if not charges[key] then
      table.insert(written, key)
    end
    charges[key] = state
    ttls[key] = ttl
  elseif enforced then
    fits = false
  end
  table.insert(reply, allowed and 1 or 0)
  table.insert(reply, remaining)
  table.insert(reply, reset)
  table.insert(reply, retry)
end

-- All or nothing: a refused enforced check charges no check of the request.
if fits then
  for _, key in ipairs(written) do
    redis.call('SET', key, charges[key], 'PX', integer(ttls[key]))
  end
end

return reply
