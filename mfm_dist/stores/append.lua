-- mfm-dist: guarded, all-or-nothing append of one batch to a run's event stream.
--
-- The same rules as mfm_dist/stores/guards.py (docs/guards.md), checked and applied in one
-- atomic script so a duplicate or late delivery can never corrupt a history. Nothing is
-- written unless every event of the batch passes.
--
-- KEYS: 1 the run's stream (mfm:{<run_id>}:events), 2 its guard hash, 3 the global run index
--       (sorted set by started_ms). The run's other keys share the stream's prefix and are
--       named from it: <prefix>facts, <prefix>meta, and <prefix>batches (written by earlier
--       versions; deleted when the run completes). The listing indexes are named after key 3
--       (see redis_events.py): <3>:ids (run ids, score 0, for prefix lookups),
--       <3>:op:<op_id>, <3>:phase:<phase>, <3>:label:<key>=<value> (by started_ms).
-- ARGV: 1 the call: '<batch_id>' (append_next: the script assigns the seqs),
--         '<batch_id>=<expected_seq>' (append at that head) or '<batch_id>!<expected_seq>'
--         (append at that head, but the envelopes do not continue the run: no events follow);
--       then two per event: the guard fields as one string, then the body (the canonical
--       envelope without run_id and seq, stored as is). The guard fields are
--       '<kind> <env_state> <env_attempt> <rest>' (env_* '' when absent), where kind is
--         'RS' RunStarted (rest: '<ts_millis> <op_id>'), 'SE' StateEntered ('<state> <attempt>'),
--         'SC' StateCompleted, 'SF' StateFailed ('<state>'), 'RC' RunCompleted
--         ('<ts_millis> <status>'), 'F' fact_recorded domain event ('<payload_id> <fact key>'),
--         'FM' malformed fact_recorded (classified by guards.fact_binding_of), 'C' the
--         run-level run_cancel_requested domain event, 'L' run-level run_submitted with
--         valid labels ('<labels as a JSON object>' — stores.base), 'D' any other domain event
--         (rest '' unless given). Ids and numbers hold no space; a fact key or the labels
--         JSON, the only free text, is the last field and is taken whole.
-- Guard hash fields: head, started, completed, cancel ('1' once a cancel was requested),
--   open_count, open:<state>, next:<state>, done:<state> ('1' once the state's last attempt
--   completed), batch:<batch_id> ('<first_seq>:<count>' of every committed call, for retry
--   de-duplication). Once the run completes only head, started, completed, cancel and
--   open_count are kept: no append is accepted any more, so nothing else is needed.
-- Reply: {'ok', first_seq, n} | {'dup', first_seq, n} (batch already appended) |
--        {'stale', head} | {'position', head} | {'guard', rule, seq, message}
--
-- Cost: one HMGET reads every guard field the batch needs, one XADD per event, one HSET
-- (plus one HDEL when an attempt closes) writes the guard state; facts, the run meta and the
-- listing indexes only when the batch binds a fact, starts, labels or completes the run.

local call, find, sub, match = redis.call, string.find, string.sub, string.match
local stream, guard, runs = KEYS[1], KEYS[2], KEYS[3]
local batch_id, how, expected = match(ARGV[1], '^(%x+)([=!]?)(%d*)$')
if not batch_id then
  return redis.error_reply('ERR mfm append: malformed call ' .. ARGV[1])
end
local n = (#ARGV - 1) / 2
local batch_field = 'batch:' .. batch_id

-- Pass 1: split each event's guard fields and name the guard fields the batch needs.
-- ev holds 7 values per event: kind, ev_state, ev_attempt, env_state, env_attempt, a1, a2
-- (a1, a2: RS op_id, ts | RC status, ts | F fact key, payload id | L labels JSON, '').
local ev = {}
local fields = {'head', 'started', 'completed', 'cancel', 'open_count', batch_field}
local slot = {}  -- state -> index of its open: field in the HMGET reply (next:, done: follow)
local fact_keys, fact_slot = nil, nil
for i = 1, n do
  local kind, env_state, env_attempt, rest = match(ARGV[2 * i], '^(%u+) (%S*) (%d*) (.*)$')
  if not kind then
    return redis.error_reply('ERR mfm append: malformed event ' .. i)
  end
  local ev_state, ev_attempt, a1, a2, state = '', '', '', '', nil
  if kind == 'SE' then
    ev_state, ev_attempt = match(rest, '^(%S+) (%d+)$')
    state = ev_state
  elseif kind == 'SC' or kind == 'SF' then
    ev_state, state = rest, rest
  elseif kind == 'RS' or kind == 'RC' then
    a2, a1 = match(rest, '^(%d+) (%S+)$')
  else  -- a domain event; one attributed to an attempt needs its state's open attempt
    if kind == 'F' then
      a2, a1 = match(rest, '^(%x+) (.*)$')
      if a1 and not (fact_slot and fact_slot[a1]) then
        fact_keys, fact_slot = fact_keys or {}, fact_slot or {}
        fact_keys[#fact_keys + 1] = a1
        fact_slot[a1] = #fact_keys
      end
    elseif kind == 'L' then
      a1 = rest
    end
    if env_state ~= '' then
      state = env_state
    end
  end
  if not (ev_state and a1) then
    return redis.error_reply('ERR mfm append: malformed event ' .. i)
  end
  if state and not slot[state] then
    slot[state] = #fields + 1
    fields[#fields + 1] = 'open:' .. state
    fields[#fields + 1] = 'next:' .. state
    fields[#fields + 1] = 'done:' .. state
  end
  local b = (i - 1) * 7
  ev[b + 1], ev[b + 2], ev[b + 3], ev[b + 4] = kind, ev_state, ev_attempt, env_state
  ev[b + 5], ev[b + 6], ev[b + 7] = env_attempt, a1, a2
end

local g = call('HMGET', guard, unpack(fields))

-- A retried call whose earlier attempt already committed gets the same answer.
local prior = g[6]
if prior then
  local sep = find(prior, ':', 1, true)
  return {'dup', sub(prior, 1, sep - 1), sub(prior, sep + 1)}
end

local head = tonumber(g[1] or '0')
if how ~= '' then
  if head ~= tonumber(expected) then
    return {'stale', tostring(head)}
  end
  if how ~= '=' then
    return {'position', tostring(head)}
  end
end
if n == 0 then
  return {'ok', tostring(head + 1), '0'}
end

local started = g[2] == '1'
local completed = g[3] == '1'
local cancelled = g[4] == '1'
local cancel_new, start_new = false, false
local open_count = tonumber(g[5] or '0')

-- The guard view of each state the batch names, then as the batch changes it.
local open_now, next_now, done_now = {}, {}, {}
for state, at in pairs(slot) do
  open_now[state] = g[at] and tonumber(g[at]) or false
  next_now[state] = tonumber(g[at + 1] or '0')
  done_now[state] = g[at + 2] == '1'
end
local touched, seen, nt = {}, {}, 0  -- states whose open:/next:/done: the batch changes
local next_set, done_set = {}, {}
local new_facts, bound_now = {}, nil
local open_delta = 0

local op_id, started_ms, final_status, ended_ms, labels_json = nil, nil, nil, nil, nil
local seq = head

for i = 1, n do
  local b = (i - 1) * 7
  local kind, ev_state, ev_attempt = ev[b + 1], ev[b + 2], ev[b + 3]
  local env_state, env_attempt, a1, a2 = ev[b + 4], ev[b + 5], ev[b + 6], ev[b + 7]
  seq = head + i

  if completed then
    return {'guard', 'after_run_completed', tostring(seq), 'run already completed'}
  end
  if kind == 'RS' then
    if started or seq ~= 1 then
      return {'guard', 'run_started_not_first', tostring(seq), 'RunStarted only at head 0'}
    end
    started, start_new = true, true
    op_id, started_ms = a1, a2
  elseif not started then
    return {'guard', 'run_not_started', tostring(seq), 'first event must be RunStarted'}
  elseif kind == 'SE' then
    local attempt = tonumber(ev_attempt)
    if cancelled then
      return {'guard', 'run_cancel_requested', tostring(seq), "the run's cancellation was requested"}
    end
    if open_now[ev_state] then
      return {'guard', 'attempt_already_open', tostring(seq), ev_state .. ' already has an open attempt'}
    end
    if done_now[ev_state] then
      return {'guard', 'state_already_completed', tostring(seq), ev_state .. ' already completed'}
    end
    local expected_attempt = next_now[ev_state]
    if attempt ~= expected_attempt then
      return {'guard', 'attempt_out_of_order', tostring(seq),
        ev_state .. ' attempt ' .. ev_attempt .. ' is not the next (' .. tostring(expected_attempt) .. ')'}
    end
    -- Attempt events carry their state and attempt in the envelope (docs/events.md).
    if env_state ~= ev_state or env_attempt ~= tostring(attempt) then
      return {'guard', 'envelope_attribution_mismatch', tostring(seq),
        'envelope state_id/attempt disagree with the event'}
    end
    open_now[ev_state] = attempt
    if not seen[ev_state] then
      seen[ev_state], nt = true, nt + 1
      touched[nt] = ev_state
    end
    open_delta = open_delta + 1
  elseif kind == 'SC' or kind == 'SF' then
    local attempt = open_now[ev_state]
    if not attempt then
      return {'guard', 'terminal_without_open_attempt', tostring(seq), ev_state .. ' has no open attempt'}
    end
    if env_state ~= ev_state or env_attempt ~= tostring(attempt) then
      return {'guard', 'envelope_attribution_mismatch', tostring(seq),
        'envelope state_id/attempt disagree with the event'}
    end
    open_now[ev_state] = false
    next_now[ev_state] = attempt + 1
    next_set[ev_state] = true
    if kind == 'SC' then
      done_now[ev_state] = true
      done_set[ev_state] = true
    end
    if not seen[ev_state] then
      seen[ev_state], nt = true, nt + 1
      touched[nt] = ev_state
    end
    open_delta = open_delta - 1
  elseif kind == 'RC' then
    if open_count + open_delta > 0 then
      return {'guard', 'run_completed_with_open_attempt', tostring(seq), 'an attempt is still open'}
    end
    if cancelled and a1 ~= 'Cancelled' then
      return {'guard', 'run_cancel_requested', tostring(seq),
        'a run whose cancel was requested can only end Cancelled'}
    end
    if (not cancelled) and a1 == 'Cancelled' then
      return {'guard', 'cancel_not_requested', tostring(seq),
        'a run ends Cancelled only after its cancel request'}
    end
    completed = true
    final_status = a1
    ended_ms = a2
  else
    -- Domain event ('D', 'F', 'FM', 'C' or 'L').
    if env_state ~= '' then
      local open = open_now[env_state]
      local open_text = open and tostring(open) or ''
      if env_attempt == '' or open_text ~= env_attempt then
        local shown = env_attempt ~= '' and env_attempt or 'None'
        return {'guard', 'domain_event_outside_attempt', tostring(seq),
          'no open attempt ' .. shown .. ' of ' .. env_state}
      end
    end
    if kind == 'C' then
      if cancelled then
        return {'guard', 'cancel_already_requested', tostring(seq), 'cancellation already requested'}
      end
      cancelled = true
      cancel_new = true
    elseif kind == 'FM' then
      return {'guard', 'fact_malformed', tostring(seq), 'fact_recorded payload must be {key, payload_id, meta}'}
    elseif kind == 'F' then
      if not bound_now then
        bound_now = call('HMGET', sub(stream, 1, -7) .. 'facts', unpack(fact_keys))
      end
      local bound = new_facts[a1] or bound_now[fact_slot[a1]]
      if bound and bound ~= a2 then
        return {'guard', 'fact_conflict', tostring(seq), 'fact key is already bound to a different payload'}
      end
      new_facts[a1] = a2
    elseif kind == 'L' and seq == 2 and env_state == '' then
      labels_json = a1  -- the run's submission labels (only its seq-2 record counts)
    end
  end
end

-- Every event passed: append the whole batch and update the guard state.
for i = 1, n do
  local s = tostring(head + i)
  call('XADD', stream, s .. '-1', 'seq', s, 'body', ARGV[2 * i + 1])
end

local prefix = sub(stream, 1, -7)  -- 'mfm:{<run_id>}:' (the stream key ends in 'events')
local new_head = tostring(seq)
local first = tostring(head + 1)
local open_text = tostring(open_count + open_delta)
if final_status then
  -- A finished run accepts no more appends: keep only the run-level fields, dropping the
  -- per-state fields and the batch ids (a retried RunCompleted now meets the
  -- after_run_completed guard, which callers treat as "already finished").
  call('DEL', guard, prefix .. 'batches')
  if cancelled then
    call('HSET', guard, 'head', new_head, 'started', '1', 'completed', '1', 'cancel', '1',
      'open_count', open_text)
  else
    call('HSET', guard, 'head', new_head, 'started', '1', 'completed', '1', 'open_count', open_text)
  end
else
  local updates = {'head', new_head, batch_field, first .. ':' .. n}
  local k = 4
  if open_delta ~= 0 or start_new then
    updates[k + 1], updates[k + 2] = 'open_count', open_text
    k = k + 2
  end
  if start_new then
    updates[k + 1], updates[k + 2] = 'started', '1'
    k = k + 2
  end
  if cancel_new then
    updates[k + 1], updates[k + 2] = 'cancel', '1'
    k = k + 2
  end
  local closing, c = nil, 0
  for j = 1, nt do
    local state = touched[j]
    if open_now[state] then
      updates[k + 1], updates[k + 2] = 'open:' .. state, tostring(open_now[state])
      k = k + 2
    else
      c = c + 1
      closing = closing or {}
      closing[c] = 'open:' .. state
    end
    if next_set[state] then
      updates[k + 1], updates[k + 2] = 'next:' .. state, tostring(next_now[state])
      k = k + 2
    end
    if done_set[state] then
      updates[k + 1], updates[k + 2] = 'done:' .. state, '1'
      k = k + 2
    end
  end
  call('HSET', guard, unpack(updates))
  if closing then
    call('HDEL', guard, unpack(closing))
  end
end

if next(new_facts) then
  local facts = prefix .. 'facts'
  for key, payload_id in pairs(new_facts) do
    call('HSET', facts, key, payload_id)
  end
end

-- The run listing: the meta hash and the indexes (ix = 1: indexed by this script). The
-- meta hash's head is written here only (the guard hash has the current one).
if op_id or labels_json or final_status then
  local meta = prefix .. 'meta'
  local run_id = sub(prefix, 6, -3)  -- mfm:{<run_id>}:
  if op_id then
    call('HSET', meta, 'op_id', op_id, 'started_ms', started_ms, 'phase', 'Running', 'ix', '1')
    call('ZADD', runs, started_ms, run_id)
    call('ZADD', runs .. ':ids', 0, run_id)
    call('ZADD', runs .. ':op:' .. op_id, started_ms, run_id)
    call('ZADD', runs .. ':phase:Running', started_ms, run_id)
  end
  if labels_json or final_status then
    local score = started_ms or call('HGET', meta, 'started_ms') or '0'
    if labels_json then
      call('HSET', meta, 'labels', labels_json)
      for key, value in pairs(cjson.decode(labels_json)) do
        call('ZADD', runs .. ':label:' .. key .. '=' .. value, score, run_id)
      end
    end
    if final_status then
      call('HSET', meta, 'phase', final_status, 'ended_ms', ended_ms)
      call('ZREM', runs .. ':phase:Running', run_id)
      call('ZADD', runs .. ':phase:' .. final_status, score, run_id)
    end
  end
  call('HSET', meta, 'head', new_head)
end

return {'ok', first, tostring(n)}
