-- mfm-dist: guarded, all-or-nothing append of one batch to a run's event stream.
--
-- The same rules as mfm_dist/stores/guards.py (docs/guards.md), checked and applied in one
-- atomic script so a duplicate or late delivery can never corrupt a history. Nothing is
-- written unless every event of the batch passes.
--
-- KEYS: 1 the run's stream (mfm:{<run_id>}:events), 2 its guard hash, 3 the global run index
--       (sorted set by started_ms). The run's other keys share the stream key's prefix and
--       are named from it: <prefix>facts, <prefix>meta, and <prefix>batches (written by
--       earlier versions; deleted when the run completes). The listing indexes are named after
--       key 3 (see redis_events.py): <3>:ids (run ids, score 0, for prefix lookups),
--       <3>:op:<op_id>, <3>:phase:<phase>, <3>:label:<key>=<value> (by started_ms).
-- ARGV: 1 the call: 'batch:<batch_id>' (32 hex digits; append_next: the script assigns the
--         seqs), 'batch:<batch_id>=<expected_seq>' (append at that head) or
--         'batch:<batch_id>!<expected_seq>' (at that head, but the envelopes do not continue
--         the run: no events follow);
--       then two per event: its guard fields as one string, then its body (the canonical
--       envelope without run_id and seq, stored as is). The guard fields are
--       '<kind> <env_state> <env_attempt> <rest>' (env_* '' when absent), where kind is
--         'RS' RunStarted (rest: '<ts_millis> <op_id>'), 'SE' StateEntered
--         ('<state> <attempt>'), 'SC' StateCompleted, 'SF' StateFailed ('<state>'),
--         'RC' RunCompleted ('<ts_millis> <status>'), 'F' fact_recorded domain event
--         ('<payload_id> <fact key>'), 'FM' malformed fact_recorded (classified by
--         guards.fact_binding_of), 'C' the run-level run_cancel_requested domain event,
--         'L' run-level run_submitted with valid labels ('<labels as a JSON object>' —
--         stores.base), 'D' any other domain event (rest '').
--       Ids and numbers hold no space and numbers are canonical decimals (attempts are
--       compared as text); a fact key or the labels JSON, the only free text, is the last
--       field and is taken whole.
-- Guard hash fields: head, started (the layout version, '1', once RunStarted is in),
--   completed, cancel ('1' once a cancel was requested),
--   open_count, open:<state> (its open attempt), next:<state> (its next attempt number),
--   done:<state> ('1' once the state's last attempt completed), batch:<batch_id>
--   ('<first_seq>:<count>' of every committed call: a retried call finds its batch).
--   Once the run completes only head, started, completed, cancel and open_count are kept:
--   no append is accepted any more, so nothing else is needed.
-- Reply: {'ok', first_seq, n} | {'dup', first_seq, n} (batch already appended) |
--        {'stale', head} | {'position', head} | {'guard', rule, seq, message} |
--        {'layout', version} (the guard hash was written by another layout: nothing done)
--
-- Cost (docs/storage.md#redis): one HMGET reads every guard field the batch needs, one XADD
-- per event and one HSET (plus one HDEL when an attempt closes) write; the facts, the run meta
-- and the listing indexes are touched only when the batch binds a fact, starts, labels or
-- completes the run. The hot path avoids number/string conversions (each costs about as
-- much as a table) and builds no table it does not need.

local call, match = redis.call, string.match
local stream, guard = KEYS[1], KEYS[2]
local batch_field, how, expected = ARGV[1], '', nil
if #batch_field > 38 then  -- 'batch:' and 32 hex digits, then '=<seq>' or '!<seq>'
  how, expected = string.sub(batch_field, 39, 39), tonumber(string.sub(batch_field, 40))
  batch_field = string.sub(batch_field, 1, 38)
end
local n = (#ARGV - 1) / 2

-- Pass 1: split each event's guard fields and name the guard fields the batch needs: always
-- head, the batch id, started and completed; cancel and open_count for the kinds that read
-- or change them; a state's open: for each event naming the state, and its next: and done:
-- for a StateEntered.
-- Each event's values: kind, ev_state, ev_attempt, env_state, env_attempt, a1, a2 (a1, a2:
-- RS op_id, ts | RC status, ts | F fact key, payload id | L labels JSON); the first event's
-- are kept in locals (most batches have one event), the others' 7 apiece in ev.
local k1, s1, t1, es1, et1, x1, y1 = nil, nil, nil, nil, nil, nil, nil
local ev = nil
local fields = {'head', batch_field, 'started', 'completed', false, false, false, false}
local nf = 4
local slot = {}  -- state -> index in g of its open: field
local nslot = nil  -- state -> index in g of its next: field (done: follows), StateEntered only
local need_cancel, need_count = false, false
local fact_keys, fact_slot = nil, nil
for i = 1, n do
  local kind, env_state, env_attempt, rest = match(ARGV[2 * i], '^(%u+) (%S*) (%d*) (.*)$')
  if not kind then
    return redis.error_reply('ERR mfm append: malformed event ' .. i)
  end
  local ev_state, ev_attempt, a1, a2, state = '', '', '', '', nil
  if kind == 'D' then
    if env_state ~= '' then
      state = env_state  -- attributed to an attempt: needs its state's open attempt
    end
  elseif kind == 'SE' then
    ev_state, ev_attempt = match(rest, '^(%S+) (%d+)$')
    state = ev_state
    need_cancel, need_count = true, true
    if ev_state then
      nslot = nslot or {}
      if not nslot[ev_state] then
        nslot[ev_state] = nf + 1
        fields[nf + 1], fields[nf + 2] = 'next:' .. ev_state, 'done:' .. ev_state
        nf = nf + 2
      end
    end
  elseif kind == 'SC' or kind == 'SF' then
    ev_state, state = rest, rest
    need_count = true
  elseif kind == 'RS' or kind == 'RC' then
    a2, a1 = match(rest, '^(%d+) (%S+)$')
    need_count = true
    need_cancel = need_cancel or kind == 'RC'
  else
    if kind == 'F' then
      a2, a1 = match(rest, '^(%x+) (.*)$')
      if a1 and not (fact_slot and fact_slot[a1]) then
        fact_keys, fact_slot = fact_keys or {}, fact_slot or {}
        fact_keys[#fact_keys + 1] = a1
        fact_slot[a1] = #fact_keys
      end
    elseif kind == 'L' then
      a1 = rest
    elseif kind == 'C' then
      need_cancel = true
    end
    if env_state ~= '' then
      state = env_state
    end
  end
  if not (ev_state and a1) then
    return redis.error_reply('ERR mfm append: malformed event ' .. i)
  end
  if state and not slot[state] then
    nf = nf + 1
    slot[state], fields[nf] = nf, 'open:' .. state
  end
  if i == 1 then
    k1, s1, t1, es1, et1, x1, y1 = kind, ev_state, ev_attempt, env_state, env_attempt, a1, a2
  else
    local b = (i - 2) * 7
    ev = ev or {}
    ev[b + 1], ev[b + 2], ev[b + 3], ev[b + 4] = kind, ev_state, ev_attempt, env_state
    ev[b + 5], ev[b + 6], ev[b + 7] = env_attempt, a1, a2
  end
end
local ci, oi = nil, nil  -- indexes in g of cancel and open_count, when fetched
if need_cancel then
  nf = nf + 1
  ci, fields[nf] = nf, 'cancel'
end
if need_count then
  nf = nf + 1
  oi, fields[nf] = nf, 'open_count'
end

-- g: the guard fields, false where absent.
local g = call('HMGET', guard, unpack(fields, 1, nf))

-- The guard hash's layout: 'started' holds its version ('1', this script's). A hash written
-- by a later, incompatible layout is refused, never misread (a rolling upgrade's old worker).
if g[3] and g[3] ~= '1' then
  return {'layout', g[3]}
end

-- A retried call whose earlier attempt already committed gets the same answer.
local prior = g[2]
if prior then
  local sep = string.find(prior, ':', 1, true)
  return {'dup', string.sub(prior, 1, sep - 1), string.sub(prior, sep + 1)}
end

local head = tonumber(g[1] or '0')
if how ~= '' then
  if head ~= expected then
    return {'stale', g[1] or '0'}
  end
  if how ~= '=' then
    return {'position', g[1] or '0'}
  end
end
if n == 0 then
  return {'ok', tostring(head + 1), '0'}
end

local started, completed = g[3] == '1', g[4] == '1'
local cancelled = ci ~= nil and g[ci] == '1'  -- read only by the kinds that fetch it
local start_new, cancel_new = false, false
-- What the batch changes, per state: open_now (attempt text, or false once closed),
-- next_now (next attempt text), done_now (true once completed).
local open_now, next_now, done_now = nil, nil, nil
local new_facts, bound_now = nil, nil
local open_delta = 0
local op_id, started_ms, final_status, ended_ms, labels_json = nil, nil, nil, nil, nil

for i = 1, n do
  local kind, ev_state, ev_attempt, env_state, env_attempt, a1, a2 = k1, s1, t1, es1, et1, x1, y1
  if i > 1 then
    local b = (i - 2) * 7
    kind, ev_state, ev_attempt, env_state = ev[b + 1], ev[b + 2], ev[b + 3], ev[b + 4]
    env_attempt, a1, a2 = ev[b + 5], ev[b + 6], ev[b + 7]
  end
  local seq = head + i

  if completed then
    return {'guard', 'after_run_completed', tostring(seq), 'run already completed'}
  end
  if kind == 'RS' then
    if started or seq ~= 1 then
      return {'guard', 'run_started_not_first', tostring(seq), 'RunStarted only at head 0'}
    end
    if env_state ~= '' or env_attempt ~= '' then
      return {'guard', 'envelope_attribution_mismatch', tostring(seq),
        'run-level events carry no state_id/attempt'}
    end
    started, start_new = true, true
    op_id, started_ms = a1, a2
  elseif not started then
    return {'guard', 'run_not_started', tostring(seq), 'first event must be RunStarted'}
  elseif kind == 'SE' then
    if cancelled then
      return {'guard', 'run_cancel_requested', tostring(seq), "the run's cancellation was requested"}
    end
    local open = g[slot[ev_state]]
    if open_now and open_now[ev_state] ~= nil then
      open = open_now[ev_state]
    end
    if open then
      return {'guard', 'attempt_already_open', tostring(seq), ev_state .. ' already has an open attempt'}
    end
    local at = nslot[ev_state]
    if (done_now and done_now[ev_state]) or g[at + 1] == '1' then
      return {'guard', 'state_already_completed', tostring(seq), ev_state .. ' already completed'}
    end
    local expected_attempt = next_now and next_now[ev_state] or g[at] or '0'
    if ev_attempt ~= expected_attempt then
      return {'guard', 'attempt_out_of_order', tostring(seq),
        ev_state .. ' attempt ' .. ev_attempt .. ' is not the next (' .. expected_attempt .. ')'}
    end
    -- Attempt events carry their state and attempt in the envelope (docs/events.md).
    if env_state ~= ev_state or env_attempt ~= ev_attempt then
      return {'guard', 'envelope_attribution_mismatch', tostring(seq),
        'envelope state_id/attempt disagree with the event'}
    end
    open_now = open_now or {}
    open_now[ev_state] = ev_attempt
    open_delta = open_delta + 1
  elseif kind == 'SC' or kind == 'SF' then
    local attempt = g[slot[ev_state]]
    if open_now and open_now[ev_state] ~= nil then
      attempt = open_now[ev_state]
    end
    if not attempt then
      return {'guard', 'terminal_without_open_attempt', tostring(seq), ev_state .. ' has no open attempt'}
    end
    if env_state ~= ev_state or env_attempt ~= attempt then
      return {'guard', 'envelope_attribution_mismatch', tostring(seq),
        'envelope state_id/attempt disagree with the event'}
    end
    open_now = open_now or {}
    open_now[ev_state] = false
    next_now = next_now or {}
    next_now[ev_state] = tostring(tonumber(attempt) + 1)
    if kind == 'SC' then
      done_now = done_now or {}
      done_now[ev_state] = true
    end
    open_delta = open_delta - 1
  elseif kind == 'RC' then
    if env_state ~= '' or env_attempt ~= '' then
      return {'guard', 'envelope_attribution_mismatch', tostring(seq),
        'run-level events carry no state_id/attempt'}
    end
    if tonumber(g[oi] or '0') + open_delta > 0 then
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
    final_status, ended_ms = a1, a2
  else
    -- Domain event ('D', 'F', 'FM', 'C' or 'L').
    if env_state == '' and env_attempt ~= '' then
      return {'guard', 'envelope_attribution_mismatch', tostring(seq),
        'envelope names an attempt but no state_id'}
    end
    if env_state ~= '' then
      local open = g[slot[env_state]]
      if open_now and open_now[env_state] ~= nil then
        open = open_now[env_state]
      end
      if env_attempt == '' or open ~= env_attempt then
        local shown = env_attempt ~= '' and env_attempt or 'None'
        return {'guard', 'domain_event_outside_attempt', tostring(seq),
          'no open attempt ' .. shown .. ' of ' .. env_state}
      end
    end
    if kind == 'C' then
      if cancelled then
        return {'guard', 'cancel_already_requested', tostring(seq), 'cancellation already requested'}
      end
      cancelled, cancel_new = true, true
    elseif kind == 'FM' then
      return {'guard', 'fact_malformed', tostring(seq), 'fact_recorded payload must be {key, payload_id, meta}'}
    elseif kind == 'F' then
      local payload_id = a2
      if not bound_now then
        bound_now = call('HMGET', string.sub(stream, 1, -7) .. 'facts', unpack(fact_keys))
        new_facts = {}
      end
      local bound = new_facts[a1] or bound_now[fact_slot[a1]]
      if bound and bound ~= payload_id then
        return {'guard', 'fact_conflict', tostring(seq), 'fact key is already bound to a different payload'}
      end
      new_facts[a1] = payload_id
    elseif kind == 'L' and seq == 2 and env_state == '' then
      labels_json = a1  -- the run's submission labels (only its seq-2 record counts)
    end
  end
end

-- Every event passed: append the whole batch and update the guard state.
local first = tostring(head + 1)
local new_head = first
for i = 1, n do
  if i > 1 then
    new_head = tostring(head + i)
  end
  call('XADD', stream, new_head .. '-1', 'seq', new_head, 'body', ARGV[2 * i + 1])
end
local count = n == 1 and '1' or tostring(n)

local prefix = nil  -- 'mfm:{<run_id>}:', for the run's other keys (rarely needed)
if final_status then
  -- A finished run accepts no more appends: keep only the run-level fields, dropping the
  -- per-state fields and the batch ids (a retried RunCompleted now meets the
  -- after_run_completed guard, which callers treat as "already finished").
  prefix = string.sub(stream, 1, -7)
  local open_count = tostring(tonumber(g[oi] or '0') + open_delta)
  call('DEL', guard, prefix .. 'batches')
  if cancelled then
    call('HSET', guard, 'head', new_head, 'started', '1', 'completed', '1', 'cancel', '1',
      'open_count', open_count)
  else
    call('HSET', guard, 'head', new_head, 'started', '1', 'completed', '1', 'open_count', open_count)
  end
elseif not (open_now or start_new or cancel_new) then
  call('HSET', guard, 'head', new_head, batch_field, first .. ':' .. count)
else
  local updates = {'head', new_head, batch_field, first .. ':' .. count}
  local k = 4
  if open_delta ~= 0 or start_new then
    updates[k + 1], updates[k + 2] = 'open_count', tostring(tonumber(g[oi] or '0') + open_delta)
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
  for state, open in pairs(open_now or {}) do
    if open then
      updates[k + 1], updates[k + 2] = 'open:' .. state, open
      k = k + 2
    else
      c = c + 1
      closing = closing or {}
      closing[c] = 'open:' .. state
    end
  end
  for state, value in pairs(next_now or {}) do
    updates[k + 1], updates[k + 2] = 'next:' .. state, value
    k = k + 2
  end
  for state, _ in pairs(done_now or {}) do
    updates[k + 1], updates[k + 2] = 'done:' .. state, '1'
    k = k + 2
  end
  call('HSET', guard, unpack(updates))
  if closing then
    call('HDEL', guard, unpack(closing))
  end
end

if new_facts then
  prefix = prefix or string.sub(stream, 1, -7)
  local facts = prefix .. 'facts'
  for key, payload_id in pairs(new_facts) do
    call('HSET', facts, key, payload_id)
  end
end

-- The run listing: the meta hash and the indexes (ix = 1: indexed by this script). The meta
-- hash's head is written only here, when the meta hash is written anyway (listings read the
-- guard hash's); it is exact once the run has completed.
if op_id or labels_json or final_status then
  prefix = prefix or string.sub(stream, 1, -7)
  local meta, runs = prefix .. 'meta', KEYS[3]
  local run_id = string.sub(prefix, 6, -3)  -- mfm:{<run_id>}:
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

return {'ok', first, count}
