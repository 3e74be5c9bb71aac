-- mfm-dist: guarded, all-or-nothing append of one batch to a run's event stream.
--
-- The same rules as mfm_dist/stores/guards.py (docs/events.md, docs/storage.md), checked and
-- applied in one atomic script so a duplicate or late delivery can never corrupt
-- a history. Nothing is written unless every event of the batch passes.
--
-- KEYS: 1 stream, 2 guard hash, 3 facts hash, 4 batches hash, 5 run meta hash,
--       6 global run index (sorted set by started_ms); the listing indexes are named
--       after it (see redis_events.py): <6>:ids (run ids, score 0, for prefix lookups),
--       <6>:op:<op_id>, <6>:phase:<phase>, <6>:label:<key>=<value> (by started_ms)
-- ARGV: 1 mode ('append' | 'next'), 2 expected_seq ('' for 'next'),
--       3 positions_ok ('1' | '0'), 4 batch_id, 5 run_id, 6 n,
--       then 9 fields per event:
--         kind ('RS' RunStarted, 'SE' StateEntered, 'SC' StateCompleted, 'SF' StateFailed,
--               'RC' RunCompleted, 'D' domain event, 'F' fact_recorded domain event,
--               'FM' malformed fact_recorded — classified by guards.fact_binding_of,
--               'C' the run-level run_cancel_requested domain event,
--               'L' run-level run_submitted with valid labels — stores.base),
--         ev_state, ev_attempt, env_state, env_attempt ('' when absent),
--         a1, a2 (RS: op_id, '' | RC: status, '' | F: fact key, payload id |
--                 L: the labels as a JSON object, ''),
--         ts_millis, body (canonical envelope without run_id and seq)
-- Guard hash fields: head, started, completed, cancel ('1' once a cancel was requested),
--   open_count, open:<state>, next:<state>, done:<state> ('1' once the state's last
--   attempt completed).
-- Reply: {'ok', first_seq, n} | {'dup', first_seq, n} (batch already appended) |
--        {'stale', head} | {'position', head} | {'guard', rule, seq, message}

local stream, guard, facts, batches, meta, runs = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local mode = ARGV[1]
local batch_id = ARGV[4]
local run_id = ARGV[5]
local n = tonumber(ARGV[6])
local FIELDS = 9

-- A retried call whose earlier attempt already committed gets the same answer.
local prior = redis.call('HGET', batches, batch_id)
if prior then
  local sep = string.find(prior, ':', 1, true)
  return {'dup', string.sub(prior, 1, sep - 1), string.sub(prior, sep + 1)}
end

local head = tonumber(redis.call('HGET', guard, 'head') or '0')
if mode == 'append' then
  if head ~= tonumber(ARGV[2]) then
    return {'stale', tostring(head)}
  end
  if ARGV[3] ~= '1' then
    return {'position', tostring(head)}
  end
end
if n == 0 then
  return {'ok', tostring(head + 1), '0'}
end

local started = redis.call('HGET', guard, 'started') == '1'
local completed = redis.call('HGET', guard, 'completed') == '1'
local cancelled = redis.call('HGET', guard, 'cancel') == '1'
local cancel_new = false
local open_count = tonumber(redis.call('HGET', guard, 'open_count') or '0')

local open_now, open_loaded, next_now, next_loaded = {}, {}, {}, {}
local done_now, done_loaded = {}, {}
local open_changed, next_changed, done_changed = {}, {}, {}
local new_facts = {}
local open_delta = 0

local function open_of(state)
  if not open_loaded[state] then
    local v = redis.call('HGET', guard, 'open:' .. state)
    open_now[state] = v and tonumber(v) or false
    open_loaded[state] = true
  end
  return open_now[state]
end

local function next_of(state)
  if not next_loaded[state] then
    next_now[state] = tonumber(redis.call('HGET', guard, 'next:' .. state) or '0')
    next_loaded[state] = true
  end
  return next_now[state]
end

local function done_of(state)
  if not done_loaded[state] then
    done_now[state] = redis.call('HGET', guard, 'done:' .. state) == '1'
    done_loaded[state] = true
  end
  return done_now[state]
end

local function violation(rule, seq, message)
  return {'guard', rule, tostring(seq), message}
end

-- Envelope attribution must agree with the event's own state and attempt.
-- Attempt events must carry their state and attempt in the envelope (docs/events.md#serialized-shapes).
local function attribution_ok(env_state, env_attempt, state, attempt)
  return env_state == state and env_attempt == tostring(attempt)
end

local op_id, started_ms, final_status, ended_ms, labels_json = nil, nil, nil, nil, nil

for i = 1, n do
  local b = 6 + (i - 1) * FIELDS
  local kind, ev_state, ev_attempt = ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
  local env_state, env_attempt = ARGV[b + 4], ARGV[b + 5]
  local a1, a2, ts = ARGV[b + 6], ARGV[b + 7], ARGV[b + 8]
  local seq = head + i

  if completed then
    return violation('after_run_completed', seq, 'run already completed')
  end
  if kind == 'RS' then
    if started or seq ~= 1 then
      return violation('run_started_not_first', seq, 'RunStarted only at head 0')
    end
    started = true
    op_id, started_ms = a1, ts
  elseif not started then
    return violation('run_not_started', seq, 'first event must be RunStarted')
  elseif kind == 'SE' then
    local attempt = tonumber(ev_attempt)
    if cancelled then
      return violation('run_cancel_requested', seq, "the run's cancellation was requested")
    end
    if open_of(ev_state) then
      return violation('attempt_already_open', seq, ev_state .. ' already has an open attempt')
    end
    if done_of(ev_state) then
      return violation('state_already_completed', seq, ev_state .. ' already completed')
    end
    local expected_attempt = next_of(ev_state)
    if attempt ~= expected_attempt then
      return violation('attempt_out_of_order', seq,
        ev_state .. ' attempt ' .. ev_attempt .. ' is not the next (' .. tostring(expected_attempt) .. ')')
    end
    if not attribution_ok(env_state, env_attempt, ev_state, attempt) then
      return violation('envelope_attribution_mismatch', seq,
        'envelope state_id/attempt disagree with the event')
    end
    open_now[ev_state] = attempt
    open_changed[ev_state] = true
    open_delta = open_delta + 1
  elseif kind == 'SC' or kind == 'SF' then
    local attempt = open_of(ev_state)
    if not attempt then
      return violation('terminal_without_open_attempt', seq, ev_state .. ' has no open attempt')
    end
    if not attribution_ok(env_state, env_attempt, ev_state, attempt) then
      return violation('envelope_attribution_mismatch', seq,
        'envelope state_id/attempt disagree with the event')
    end
    open_now[ev_state] = false
    open_changed[ev_state] = true
    next_now[ev_state] = attempt + 1
    next_loaded[ev_state] = true
    next_changed[ev_state] = true
    if kind == 'SC' then
      done_now[ev_state] = true
      done_loaded[ev_state] = true
      done_changed[ev_state] = true
    end
    open_delta = open_delta - 1
  elseif kind == 'RC' then
    if open_count + open_delta > 0 then
      return violation('run_completed_with_open_attempt', seq, 'an attempt is still open')
    end
    if cancelled and a1 ~= 'Cancelled' then
      return violation('run_cancel_requested', seq,
        'a run whose cancel was requested can only end Cancelled')
    end
    if (not cancelled) and a1 == 'Cancelled' then
      return violation('cancel_not_requested', seq,
        'a run ends Cancelled only after its cancel request')
    end
    completed = true
    final_status = a1
    ended_ms = ts
  else
    -- Domain event ('D', 'F' or 'FM').
    if env_state ~= '' then
      local open = open_of(env_state)
      local open_text = open and tostring(open) or ''
      if env_attempt == '' or open_text ~= env_attempt then
        local shown = env_attempt ~= '' and env_attempt or 'None'
        return violation('domain_event_outside_attempt', seq,
          'no open attempt ' .. shown .. ' of ' .. env_state)
      end
    end
    if kind == 'C' then
      if cancelled then
        return violation('cancel_already_requested', seq, 'cancellation already requested')
      end
      cancelled = true
      cancel_new = true
    end
    if kind == 'FM' then
      return violation('fact_malformed', seq, 'fact_recorded payload must be {key, payload_id, meta}')
    end
    if kind == 'F' then
      local bound = new_facts[a1] or redis.call('HGET', facts, a1)
      if bound and bound ~= a2 then
        return violation('fact_conflict', seq, 'fact key is already bound to a different payload')
      end
      new_facts[a1] = a2
    end
    if kind == 'L' and seq == 2 and env_state == '' then
      labels_json = a1  -- the run's submission labels (only its seq-2 record counts)
    end
  end
end

-- Every event passed: append the whole batch and update the guard state.
for i = 1, n do
  local b = 6 + (i - 1) * FIELDS
  local seq = head + i
  redis.call('XADD', stream, tostring(seq) .. '-1', 'seq', tostring(seq), 'body', ARGV[b + 9])
end

local new_head = head + n
local updates = {'head', tostring(new_head), 'open_count', tostring(open_count + open_delta)}
if started then
  table.insert(updates, 'started')
  table.insert(updates, '1')
end
if completed then
  table.insert(updates, 'completed')
  table.insert(updates, '1')
end
if cancel_new then
  table.insert(updates, 'cancel')
  table.insert(updates, '1')
end
for state, _ in pairs(open_changed) do
  if open_now[state] then
    table.insert(updates, 'open:' .. state)
    table.insert(updates, tostring(open_now[state]))
  else
    redis.call('HDEL', guard, 'open:' .. state)
  end
end
for state, _ in pairs(next_changed) do
  table.insert(updates, 'next:' .. state)
  table.insert(updates, tostring(next_now[state]))
end
for state, _ in pairs(done_changed) do
  table.insert(updates, 'done:' .. state)
  table.insert(updates, '1')
end
redis.call('HSET', guard, unpack(updates))

for key, payload_id in pairs(new_facts) do
  redis.call('HSET', facts, key, payload_id)
end

local first = tostring(head + 1)
if final_status then
  -- A finished run accepts no more appends, so retry de-duplication is no longer needed:
  -- drop the batch ids instead of keeping one per append forever (a retried RunCompleted
  -- now meets the after_run_completed guard, which callers treat as "already finished").
  redis.call('DEL', batches)
else
  redis.call('HSET', batches, batch_id, first .. ':' .. tostring(n))
end

-- The run listing: the meta hash and the indexes (ix = 1: indexed by this script).
if op_id then
  redis.call('HSET', meta, 'op_id', op_id, 'started_ms', started_ms, 'phase', 'Running', 'ix', '1')
  redis.call('ZADD', runs, started_ms, run_id)
  redis.call('ZADD', runs .. ':ids', 0, run_id)
  redis.call('ZADD', runs .. ':op:' .. op_id, started_ms, run_id)
  redis.call('ZADD', runs .. ':phase:Running', started_ms, run_id)
end
if labels_json or final_status then
  local score = started_ms or redis.call('HGET', meta, 'started_ms') or '0'
  if labels_json then
    redis.call('HSET', meta, 'labels', labels_json)
    for key, value in pairs(cjson.decode(labels_json)) do
      redis.call('ZADD', runs .. ':label:' .. key .. '=' .. value, score, run_id)
    end
  end
  if final_status then
    redis.call('HSET', meta, 'phase', final_status, 'ended_ms', ended_ms)
    redis.call('ZREM', runs .. ':phase:Running', run_id)
    redis.call('ZADD', runs .. ':phase:' .. final_status, score, run_id)
  end
end
redis.call('HSET', meta, 'head', tostring(new_head))

return {'ok', first, tostring(n)}
