-- mfm-dist: guarded, all-or-nothing append of records to a journal (mfm_dist/journal.py).
--
-- KEYS: 1 entries stream, 2 meta hash (head, created_ms, updated_ms), 3 batches hash,
--       4 journal index (sorted set by created_ms)
-- ARGV: 1 expected_seq, 2 batch_id, 3 journal id, 4 n, then per record: ts_millis, body
-- Reply: {'ok', first_seq, n} | {'dup', first_seq, n} (this batch was appended already: a
--        retried call) | {'stale', head}

local entries, meta, batches, index = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local expected = tonumber(ARGV[1])
local batch_id = ARGV[2]
local journal = ARGV[3]
local n = tonumber(ARGV[4])

local prior = redis.call('HGET', batches, batch_id)
if prior then
  local sep = string.find(prior, ':', 1, true)
  return {'dup', string.sub(prior, 1, sep - 1), string.sub(prior, sep + 1)}
end

local head = tonumber(redis.call('HGET', meta, 'head') or '0')
if head ~= expected then
  return {'stale', tostring(head)}
end
if n == 0 then
  return {'ok', tostring(head + 1), '0'}
end

for i = 1, n do
  local seq = head + i
  redis.call('XADD', entries, tostring(seq) .. '-1', 'seq', tostring(seq), 'body', ARGV[4 + 2 * i])
end
local first_ts = ARGV[5]
local last_ts = ARGV[3 + 2 * n]
if head == 0 then
  redis.call('HSET', meta, 'created_ms', first_ts)
  redis.call('ZADD', index, tonumber(first_ts), journal)
end
redis.call('HSET', meta, 'head', tostring(head + n), 'updated_ms', last_ts)
redis.call('HSET', batches, batch_id, tostring(head + 1) .. ':' .. tostring(n))
return {'ok', tostring(head + 1), tostring(n)}
