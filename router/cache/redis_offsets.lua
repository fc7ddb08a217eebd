-- Shared by the cache's scripts, which redis.py loads with this file in front of each.
-- Offsets are "n" or "ms-seq" (Kafka offsets, Redis stream ids); they compare as pairs of
-- numbers, a missing second number before any.

local function offset_less(a, b)
  local a1, a2 = string.match(a, "^(%d+)-?(%d*)$")
  local b1, b2 = string.match(b, "^(%d+)-?(%d*)$")
  a1, b1 = tonumber(a1), tonumber(b1)
  if a1 ~= b1 then return a1 < b1 end
  return (tonumber(a2) or -1) < (tonumber(b2) or -1)
end
