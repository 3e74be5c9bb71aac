-- mfm-dist: index one run recorded before the listing indexes existed (run once per run by
-- RedisEventStore, at the first listing after an upgrade). Idempotent; a run already
-- indexed by append.lua (meta field ix = 1) is left alone.
--
-- KEYS: 1 run meta hash, 2 global run index (the listing indexes are named after it)
-- ARGV: 1 run_id, 2 labels as a JSON object ('' when the run has none),
--       3 ended_ms of its RunCompleted ('' while it runs)
-- Reply: 1 indexed now, 0 nothing to do

local meta, runs = KEYS[1], KEYS[2]
local run_id, labels_json, ended_ms = ARGV[1], ARGV[2], ARGV[3]
local m = redis.call('HMGET', meta, 'op_id', 'started_ms', 'phase', 'ix')
if not m[1] or not m[2] or m[4] == '1' then
  return 0
end
local op_id, score, phase = m[1], m[2], m[3] or 'Running'
redis.call('ZADD', runs, score, run_id)
redis.call('ZADD', runs .. ':ids', 0, run_id)
redis.call('ZADD', runs .. ':op:' .. op_id, score, run_id)
-- The phase is read here, atomically with appends: a run completing meanwhile (append.lua
-- moves it between the phase indexes itself) lands in the right one either way.
if phase ~= 'Running' then
  redis.call('ZREM', runs .. ':phase:Running', run_id)
end
redis.call('ZADD', runs .. ':phase:' .. phase, score, run_id)
if labels_json ~= '' and redis.call('HEXISTS', meta, 'labels') == 0 then
  redis.call('HSET', meta, 'labels', labels_json)
  for key, value in pairs(cjson.decode(labels_json)) do
    redis.call('ZADD', runs .. ':label:' .. key .. '=' .. value, score, run_id)
  end
end
if ended_ms ~= '' then
  redis.call('HSETNX', meta, 'ended_ms', ended_ms)
end
redis.call('HSET', meta, 'ix', '1')
return 1
