-- Append a batch of SSE events to the replay stream, once per event across all router instances.
--
-- KEYS[1] stream       the events, oldest first (fields: p o c e d s)
-- KEYS[2] served       hash partition -> last offset appended or passed over (the high-water mark)
-- KEYS[3] evicted      hash partition -> newest offset trimmed away (or otherwise lost)
-- KEYS[4] epoch        the bus history these keys belong to
-- KEYS[5] generation   a token made when these keys were started: a Redis that lost its data
--                      (or a new epoch) starts them again with a new one
-- KEYS[6] bytes        the running total of the stream's entries' weights (see weight below),
--                      kept here so every instance trims by the same total
-- ARGV[1] epoch, ARGV[2] max events, ARGV[3] max age in ms (0: none), ARGV[4] number of events,
-- ARGV[5] the generation the writer last wrote to ("" if none in this epoch), ARGV[6] a fresh
-- generation (taken if the keys start again), ARGV[7] "1" if the floor below holds everything
-- the writer had written to this epoch, ARGV[8] number of floor pairs, ARGV[9] max bytes (0:
-- none),
-- then floor pairs of partition, offset: events up to there that the cache does not hold (lost
-- from the writer's memory while Redis was away, or with a history Redis lost), so a resume from
-- before them is truncated,
-- then per event 6 values: partition, offset, cursor, event name, data JSON, scope JSON,
-- then pairs of partition, offset: where the batch ends (rejected records included).
--
-- Returns {1, generation, events appended}; or {0, generation, 0}, having written nothing, when
-- the generation the writer wrote to is gone and ARGV[7] is not "1": the writer calls again with
-- all it had written as the floor, so no cursor from before the loss is answered as complete.
--
-- Offsets are "n" or "ms-seq"; they are compared as pairs of numbers.

local function note_floor(partition, offset)
  local before = redis.call("HGET", KEYS[3], partition)
  if not before or offset_less(before, offset) then
    redis.call("HSET", KEYS[3], partition, offset)
  end
end

-- What an entry weighs against the byte bound: the bytes of its field values (the event's data
-- and scope JSON, its name, cursor and place), as computed the same way when it is added and
-- when it is trimmed, so the total never drifts.
local function weight(fields)
  local total = 0
  for i = 2, #fields, 2 do
    total = total + #fields[i]
  end
  return total
end

local total = 0

local function note_evicted(entry)
  local fields = entry[2]
  total = total - weight(fields)
  local partition, offset
  for i = 1, #fields, 2 do
    if fields[i] == "p" then partition = fields[i + 1] end
    if fields[i] == "o" then offset = fields[i + 1] end
  end
  -- An entry no router wrote (no partition, or an offset of no known form) has no place to
  -- remember; it is trimmed all the same, so that it cannot fail every append after it.
  if partition and offset and string.match(offset, "^%d+-?%d*$") then
    note_floor(partition, offset)
  end
  redis.call("XDEL", KEYS[1], entry[1])
end

local same_epoch = redis.call("GET", KEYS[4]) == ARGV[1]
local generation = same_epoch and redis.call("GET", KEYS[5])
local known, fresh, full_floor = ARGV[5], ARGV[6], ARGV[7] == "1"
if known ~= "" and generation ~= known and not full_floor then
  return {0, generation or "", 0}
end
if not same_epoch then
  redis.call("DEL", KEYS[1], KEYS[2], KEYS[3], KEYS[6])
  redis.call("SET", KEYS[4], ARGV[1])
end
local stored_total = redis.call("GET", KEYS[6])
if stored_total then
  total = tonumber(stored_total)
elseif redis.call("XLEN", KEYS[1]) > 0 then
  -- Entries appended before the total was kept (an older router): weighed once, here.
  for _, entry in ipairs(redis.call("XRANGE", KEYS[1], "-", "+")) do
    total = total + weight(entry[2])
  end
end
if not generation then
  generation = fresh
  redis.call("SET", KEYS[5], generation)
end

local at = 10
for _ = 1, tonumber(ARGV[8]) do
  note_floor(ARGV[at], ARGV[at + 1])
  at = at + 2
end

local appended = 0
local count = tonumber(ARGV[4])
for _ = 1, count do
  local partition, offset = ARGV[at], ARGV[at + 1]
  local served = redis.call("HGET", KEYS[2], partition)
  if not served or offset_less(served, offset) then
    local fields = {"p", partition, "o", offset, "c", ARGV[at + 2], "e", ARGV[at + 3],
      "d", ARGV[at + 4], "s", ARGV[at + 5]}
    redis.call("XADD", KEYS[1], "*", unpack(fields))
    total = total + weight(fields)
    redis.call("HSET", KEYS[2], partition, offset)
    appended = appended + 1
  end
  at = at + 6
end
while at < #ARGV do
  local partition, offset = ARGV[at], ARGV[at + 1]
  local served = redis.call("HGET", KEYS[2], partition)
  if not served or offset_less(served, offset) then
    redis.call("HSET", KEYS[2], partition, offset)
  end
  at = at + 2
end

local max_events = tonumber(ARGV[2])
local excess = redis.call("XLEN", KEYS[1]) - max_events
if excess > 0 then
  for _, entry in ipairs(redis.call("XRANGE", KEYS[1], "-", "+", "COUNT", excess)) do
    note_evicted(entry)
  end
end
local max_age = tonumber(ARGV[3])
if max_age > 0 then
  local now = redis.call("TIME")
  local horizon = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - max_age
  for _, entry in ipairs(redis.call("XRANGE", KEYS[1], "-", "(" .. horizon, "COUNT", 1000)) do
    note_evicted(entry)
  end
end
-- Past the byte bound the oldest go, as past the count, the newest too if it alone is larger
-- (as the memory cache does): each recorded as evicted, so a resume behind it is truncated.
local max_bytes = tonumber(ARGV[9])
if max_bytes > 0 then
  while total > max_bytes do
    local oldest = redis.call("XRANGE", KEYS[1], "-", "+", "COUNT", 100)
    if #oldest == 0 then
      total = 0
      break
    end
    for _, entry in ipairs(oldest) do
      if total <= max_bytes then break end
      note_evicted(entry)
    end
  end
end
if total < 0 then total = 0 end
redis.call("SET", KEYS[6], total)
return {1, generation, appended}
