-- Note that the bus deleted a partition's records up to an offset before any router read them:
-- recorded as evicted, so a resume from before it is truncated (see RedisReplayCache.forget).
--
-- KEYS as for redis_append.lua (stream, served, evicted, epoch, generation, bytes); the
-- generation is left as it is.
-- ARGV[1] epoch, ARGV[2] partition, ARGV[3] offset ("n" or "ms-seq", compared as pairs).

if redis.call("GET", KEYS[4]) ~= ARGV[1] then
  redis.call("DEL", KEYS[1], KEYS[2], KEYS[3], KEYS[6])
  redis.call("SET", KEYS[4], ARGV[1])
end

local before = redis.call("HGET", KEYS[3], ARGV[2])
if not before or offset_less(before, ARGV[3]) then
  redis.call("HSET", KEYS[3], ARGV[2], ARGV[3])
end
