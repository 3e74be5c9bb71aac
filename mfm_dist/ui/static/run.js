/* The run page: live graph, state details, timeline, events, verify/replay. Plain JS. */
(function () {
  "use strict";
  var root = document.getElementById("run");
  var runId = root.dataset.run;
  var phase = root.dataset.phase;
  var api = "/api/runs/" + encodeURIComponent(runId);
  var NAMES = { P: "pending", R: "running", T: "retrying", C: "completed", S: "skipped", F: "failed" };
  var graphData = JSON.parse(document.getElementById("graph-data").textContent);
  /* State ids come as a common prefix and each state's rest; index lists as [start, count]. */
  var ids = graphData.rests.map(function (r) { return r.charAt(0) === "<" ? r : graphData.prefix + r; });
  var codesNow = graphData.codes || {};
  var cells = [], indexOf = new Map(), selected = [];
  function expand(ranges) {
    var out = [];
    ranges.forEach(function (r) { for (var k = 0; k < r[1]; k++) out.push(r[0] + k); });
    return out;
  }
  document.querySelectorAll("#graph .cells").forEach(function (box, g) {
    var idx = expand(graphData.rows[g]), kids = box.children;
    for (var k = 0; k < kids.length; k++) { cells[idx[k]] = kids[k]; indexOf.set(kids[k], idx[k]); }
  });
  /* Tooltips are made on demand: 10,000 title attributes would slow the first render. */
  document.getElementById("graph").addEventListener("mouseover", function (e) {
    var c = e.target; if (!indexOf.has(c)) return;
    var i = indexOf.get(c), letter = c.className.charAt(0);
    c.title = ids[i] + " — " + NAMES[letter] + (codesNow[i] ? ": " + codesNow[i] : "");
  });
  var dag = window.mfmDag(document.getElementById("dag"), graphData.groups || {},
    function (i) { showState(ids[i], i); },
    function (members, box) { showGroup(members, box); });

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    if (attrs) Object.keys(attrs).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function get(url) {
    return fetch(url, { credentials: "same-origin" }).then(function (r) {
      return r.json().then(function (body) {
        if (!r.ok) { var e = new Error((body.error && body.error.code) || r.status); e.body = body; throw e; }
        return body;
      });
    });
  }
  function when(ms) { return ms == null ? "" : new Date(ms).toISOString().replace("T", " ").slice(0, 23); }
  function dur(ms) {
    if (ms == null) return "";
    if (ms < 1000) return ms + " ms";
    var s = ms / 1000; if (s < 60) return s.toFixed(1) + " s";
    var m = Math.floor(s / 60); if (m < 60) return m + "m " + String(Math.floor(s % 60)).padStart(2, "0") + "s";
    return Math.floor(m / 60) + "h " + String(m % 60).padStart(2, "0") + "m";
  }
  function pre(value) { return el("pre", { "class": "json" }, JSON.stringify(value, null, 2)); }

  /* -- live graph ------------------------------------------------------------------------ */
  function applyLive(live) {
    var s = live.statuses;
    codesNow = live.error_codes || {};
    for (var i = 0; i < s.length && i < cells.length; i++) {
      var c = cells[i]; if (!c) continue;
      var letter = s.charAt(i);
      if (c.className.charAt(0) !== letter) {
        c.className = letter + (selected.indexOf(c) >= 0 ? " sel" : "");
        c.removeAttribute("title");
      }
    }
    dag.apply(s);
    Object.keys(live.counts).forEach(function (k) {
      var b = document.querySelector('[data-count="' + k + '"]'); if (b) b.textContent = live.counts[k];
    });
    document.getElementById("head").textContent = live.head_seq;
    var badge = document.getElementById("phase");
    badge.textContent = live.phase; badge.className = "phase " + live.phase.toLowerCase();
    root.dataset.phase = live.phase; root.dataset.head = live.head_seq;
  }
  function poll() {
    get(api + "/live").then(function (live) {
      applyLive(live);
      if (live.phase !== "Running") { finished(live); return; }
      setTimeout(poll, 1000);
    }).catch(function () { setTimeout(poll, 2000); });
  }
  function finished(live) {
    /* The run ended while this page watched it: show its end in place. */
    phase = live.phase;
    var durEl = document.getElementById("duration");
    if (durEl && live.ended_ms) durEl.textContent = dur(live.ended_ms - +durEl.dataset.started);
    if (live.error && !document.getElementById("run-error")) {
      var p = el("p", { "class": "run-error", id: "run-error" });
      if (live.failed_state) {
        p.appendChild(document.createTextNode("failed at "));
        p.appendChild(stateLink(live.failed_state));
        p.appendChild(document.createTextNode(": "));
      }
      p.appendChild(el("code", { "class": "code" }, live.error.code));
      p.appendChild(document.createTextNode(" " + live.error.message));
      root.appendChild(p);
    }
    // Tabs read while the run was running are read again when next shown.
    var current = document.querySelector("#tabs a.on");
    loaded = {};
    if (current && current.dataset.tab !== "graph") showTab(current.dataset.tab);
  }
  if (phase === "Running") setTimeout(poll, 1000);
  var durEl = document.getElementById("duration");
  if (phase === "Running" && durEl) {
    setInterval(function () {
      if (root.dataset.phase === "Running") durEl.textContent = dur(Date.now() - +durEl.dataset.started) + "+";
    }, 1000);
  }

  /* -- state detail ---------------------------------------------------------------------- */
  var detail = document.getElementById("detail"), body = document.getElementById("detail-body");
  function select(elements) {
    selected.forEach(function (e) { e.classList.remove("sel"); });
    selected = elements.filter(function (e) { return e; });
    selected.forEach(function (e) { e.classList.add("sel"); });
  }
  /* A state by id (and its canonical index, when known): its square and its box are marked. */
  function showState(stateId, i) {
    if (i === undefined || i === null) i = ids.indexOf(stateId);
    select(i >= 0 ? [cells[i], dag.boxOf(i)] : []);
    detail.classList.remove("hidden");
    body.textContent = "loading " + stateId + " …";
    get(api + "/states/" + encodeURIComponent(stateId)).then(renderState).catch(function (e) {
      body.textContent = "error: " + e.message;
    });
  }
  /* A group of the drawing: its states by status, the unfinished and failed ones first. */
  function showGroup(members, box) {
    select([box]);
    detail.classList.remove("hidden");
    body.textContent = "";
    var rank = { F: 0, T: 1, R: 2, P: 3, S: 4, C: 5 };
    function letterOf(i) { var c = cells[i]; return c ? c.className.charAt(0) : "P"; }
    var counts = {};
    members.forEach(function (i) { var l = letterOf(i); counts[l] = (counts[l] || 0) + 1; });
    body.appendChild(el("h2", { id: "detail-group" }, members.length.toLocaleString("en-US") + " states"));
    var p = el("p", { id: "group-counts" });
    "CSRTFP".split("").forEach(function (l) {
      if (counts[l]) p.appendChild(el("span", { "class": "st " + NAMES[l] }, counts[l].toLocaleString("en-US") + " " + NAMES[l] + "  "));
    });
    body.appendChild(p);
    var shown = members.slice().sort(function (a, b) { return rank[letterOf(a)] - rank[letterOf(b)] || a - b; }).slice(0, 200);
    var list = el("div", { "class": "group-list" });
    shown.forEach(function (i) {
      var row = el("div"); row.appendChild(el("i", { "class": "dot " + letterOf(i) }));
      row.appendChild(stateLink(ids[i]));
      if (codesNow[i]) { row.appendChild(document.createTextNode(" ")); row.appendChild(el("code", { "class": "code" }, codesNow[i])); }
      list.appendChild(row);
    });
    body.appendChild(list);
    if (members.length > shown.length) body.appendChild(el("p", { "class": "muted" }, "and " + (members.length - shown.length).toLocaleString("en-US") + " more (every state is a square below)"));
  }
  function stateLink(sid) {
    var a = el("a", { href: "#", "class": "state-link", "data-state": sid });
    a.appendChild(el("code", null, sid)); return a;
  }
  function renderState(d) {
    body.textContent = "";
    body.appendChild(el("h2", { id: "detail-state" }, d.state_id));
    var st = d.status || {};
    var p = el("p");
    p.appendChild(el("span", { "class": "st " + (st.status || ""), id: "detail-status" }, st.status || "unknown"));
    if (st.detail) p.appendChild(document.createTextNode(" — " + st.detail));
    body.appendChild(p);
    if (st.last_error_code) {
      var e = el("p", { "class": "run-error" });
      e.appendChild(el("code", { "class": "code", id: "detail-error-code" }, st.last_error_code));
      e.appendChild(document.createTextNode(" " + (st.last_error_message || "")));
      body.appendChild(e);
    }
    [["predecessors", d.predecessors], ["successors", d.successors]].forEach(function (pair) {
      if (!pair[1].length) return;
      var q = el("p"); q.appendChild(el("span", { "class": "muted" }, pair[0] + ": "));
      pair[1].slice(0, 30).forEach(function (sid) { q.appendChild(stateLink(sid)); q.appendChild(document.createTextNode(" ")); });
      if (pair[1].length > 30) q.appendChild(document.createTextNode("… " + (pair[1].length - 30) + " more"));
      body.appendChild(q);
    });
    body.appendChild(el("h3", null, "Attempts"));
    if (!d.attempts.length) body.appendChild(el("p", { "class": "muted" }, "not entered yet"));
    else {
      var t = el("table", { "class": "grid-table" });
      var h = el("tr"); ["#", "entered", "took", "outcome", "worker", "error"].forEach(function (x) { h.appendChild(el("th", null, x)); });
      t.appendChild(h);
      d.attempts.forEach(function (a) {
        var r = el("tr");
        r.appendChild(el("td", null, a.attempt));
        r.appendChild(el("td", null, when(a.entered_ms)));
        r.appendChild(el("td", null, a.closed_ms != null ? dur(a.closed_ms - a.entered_ms) : "running"));
        r.appendChild(el("td", null, a.outcome));
        r.appendChild(el("td", null, a.worker || ""));
        var ec = el("td"); if (a.error) ec.appendChild(el("code", { "class": "code" }, a.error.code));
        r.appendChild(ec); t.appendChild(r);
      });
      body.appendChild(t);
    }
    body.appendChild(el("h3", null, "Delta against its base"));
    if (d.delta_error) body.appendChild(el("p", { "class": "warn" }, "not shown: " + d.delta_error.code));
    else if (!d.delta) body.appendChild(el("p", { "class": "muted" }, "no completed attempt"));
    else {
      var dl = el("p", { "class": "muted" }, "base " + d.delta.base_snapshot_id.slice(0, 12) + " → " + d.delta.snapshot_id.slice(0, 12));
      body.appendChild(dl);
      var keys = Object.keys(d.delta.writes);
      if (!keys.length && !d.delta.deletes.length) body.appendChild(el("p", { "class": "muted" }, "no change"));
      if (keys.length) { body.appendChild(el("div", { "class": "muted" }, "written")); body.appendChild(pre(d.delta.writes)); }
      if (Object.keys(d.delta.before).length) { body.appendChild(el("div", { "class": "muted" }, "before")); body.appendChild(pre(d.delta.before)); }
      if (d.delta.deletes.length) { body.appendChild(el("div", { "class": "delta-del" }, "removed: " + d.delta.deletes.join(", "))); }
    }
    body.appendChild(el("h3", null, "Facts bound (" + d.facts.length + ")"));
    d.facts.forEach(function (f) {
      body.appendChild(el("div", null, f.key + "  (seq " + f.seq + ", attempt " + f.attempt + ")"));
      if (f.payload !== undefined && f.payload !== null) body.appendChild(pre(f.payload));
    });
    if (d.events.length) {
      body.appendChild(el("h3", null, "Domain events (" + d.events.length + ")"));
      d.events.slice(0, 100).forEach(function (ev) {
        body.appendChild(el("div", null, "seq " + ev.seq + " · " + ev.name + (ev.payload_ref ? " (payload " + ev.payload_ref.slice(0, 12) + ")" : "")));
        if (ev.payload !== null && ev.payload !== undefined) body.appendChild(pre(ev.payload));
      });
    }
  }
  document.getElementById("graph").addEventListener("click", function (e) {
    var c = e.target; if (!indexOf.has(c)) return;
    showState(ids[indexOf.get(c)], indexOf.get(c));
  });
  document.addEventListener("click", function (e) {
    var a = e.target.closest(".state-link"); if (!a) return;
    e.preventDefault();
    showState(a.dataset.state);
  });
  document.getElementById("detail-close").addEventListener("click", function () {
    detail.classList.add("hidden"); select([]);
  });

  /* -- tabs ---------------------------------------------------------------------------------- */
  var loaded = {};
  function showTab(name) {
    document.querySelectorAll("#tabs a").forEach(function (a) { a.classList.toggle("on", a.dataset.tab === name); });
    document.querySelectorAll(".tab").forEach(function (s) { s.classList.toggle("hidden", s.id !== "tab-" + name); });
    if (!loaded[name]) { loaded[name] = true; if (name === "timeline") loadTimeline(); if (name === "events") loadEvents(1); }
  }
  document.getElementById("tabs").addEventListener("click", function (e) {
    var a = e.target.closest("a[data-tab]"); if (!a) return;
    e.preventDefault(); history.replaceState(null, "", "#" + a.dataset.tab); showTab(a.dataset.tab);
  });
  if (location.hash && document.getElementById("tab-" + location.hash.slice(1))) showTab(location.hash.slice(1));

  /* -- events -------------------------------------------------------------------------------- */
  var PAGE = 100, evFrom = 1, evHead = 0;
  function summary(e) {
    var ev = e.event, kind = Object.keys(ev)[0], inner = ev[kind];
    if (kind === "Kernel") { var name = Object.keys(inner)[0]; return [name, inner[name], true]; }
    return [inner.name, inner.payload !== undefined && inner.payload !== null ? inner.payload : { payload_ref: inner.payload_ref }, false];
  }
  function loadEvents(from) {
    fetch(api + "/events?from=" + from + "&limit=" + PAGE, { credentials: "same-origin" }).then(function (r) {
      evHead = +(r.headers.get("X-Head-Seq") || 0); return r.json();
    }).then(function (rows) {
      evFrom = from;
      var tb = document.querySelector("#events tbody"); tb.textContent = "";
      rows.forEach(function (e) {
        var s = summary(e), r = el("tr", { "data-seq": e.seq });
        r.appendChild(el("td", { "class": "num" }, e.seq));
        r.appendChild(el("td", null, when(e.ts_millis)));
        r.appendChild(el("td", { "class": s[2] ? "ev-kernel" : "" }, s[0]));
        r.appendChild(el("td", null, e.state_id || ""));
        r.appendChild(el("td", { "class": "num" }, e.attempt == null ? "" : e.attempt));
        var det = s[1], text = det;
        if (s[0] === "StateFailed" && det && det.error) text = det.error.code + ": " + det.error.message;
        else if (typeof det === "object") text = JSON.stringify(det).replace(/([0-9a-f]{12})[0-9a-f]{52}/g, "$1…");
        r.appendChild(el("td", { "class": "details" }, text));
        tb.appendChild(r);
      });
      var last = rows.length ? rows[rows.length - 1].seq : from - 1;
      document.getElementById("ev-range").textContent = rows.length ? from + "–" + last + " of " + evHead : "no events";
      document.getElementById("ev-prev").disabled = from <= 1;
      document.getElementById("ev-next").disabled = last >= evHead;
    });
  }
  document.getElementById("ev-prev").addEventListener("click", function () { loadEvents(Math.max(1, evFrom - PAGE)); });
  document.getElementById("ev-next").addEventListener("click", function () { loadEvents(evFrom + PAGE); });

  /* -- verify / replay ------------------------------------------------------------------------- */
  function check(what) {
    var out = document.getElementById("verify-result");
    out.textContent = what + " …";
    get(api + "/" + what).then(function (res) {
      out.textContent = "";
      var head = el("p", { id: what + "-outcome", "class": res.ok ? "ok" : "bad" },
        what === "verify" ? (res.ok ? "verified" : "NOT VERIFIED (" + res.violations.length + " violations)")
                          : (res.ok ? "replay matches (" + res.states.length + " states)" : "REPLAY DIVERGED"));
      out.appendChild(head); out.appendChild(pre(res));
    }).catch(function (e) { out.textContent = what + " failed: " + e.message; });
  }
  document.getElementById("do-verify").addEventListener("click", function () { check("verify"); });
  document.getElementById("do-replay").addEventListener("click", function () { check("replay"); });

  /* -- timeline -------------------------------------------------------------------------------- */
  var SVGNS = "http://www.w3.org/2000/svg";
  function svg(tag, attrs) { var e = document.createElementNS(SVGNS, tag); Object.keys(attrs).forEach(function (k) { e.setAttribute(k, attrs[k]); }); return e; }
  var COLORS = { completed: "#2e9e5b", failed: "#d9443a", open: "#2f7fe0", orphan: "#8a6fb0" };
  function loadTimeline() {
    var box = document.getElementById("timeline"); box.textContent = "loading …";
    get(api + "/attempts").then(function (d) {
      box.textContent = "";
      var rows = d.attempts, t0 = d.started_ms, t1 = d.ended_ms || d.now_ms;
      rows.forEach(function (a) { if (a.retry_at_ms && a.retry_at_ms > t1) t1 = a.retry_at_ms; });
      var lanes = {}, order = [], slots = [];
      rows.forEach(function (a) {
        var end = a.closed_ms == null ? t1 : a.closed_ms, lane;
        if (a.worker) lane = a.worker;
        else {
          var k = 0; while (k < slots.length && slots[k] > a.entered_ms) k++;
          slots[k] = end; lane = "slot " + (k + 1);
        }
        if (!lanes[lane]) { lanes[lane] = []; order.push(lane); }
        lanes[lane].push(a);
      });
      order.sort();
      var LH = 18, LEFT = 170, W = Math.max(700, box.clientWidth - LEFT - 20), H = order.length * LH + 30;
      var span = Math.max(1, t1 - t0), sx = function (t) { return LEFT + (t - t0) / span * W; };
      var s = svg("svg", { width: LEFT + W + 10, height: H, id: "timeline-svg" });
      var defs = svg("defs", {}), pat = svg("pattern", { id: "hatch", width: 6, height: 6, patternUnits: "userSpaceOnUse", patternTransform: "rotate(45)" });
      pat.appendChild(svg("rect", { width: 3, height: 6, fill: "#f0a030" })); defs.appendChild(pat); s.appendChild(defs);
      for (var k = 0; k <= 4; k++) {
        var x = LEFT + W * k / 4;
        s.appendChild(svg("line", { x1: x, x2: x, y1: 0, y2: H - 18, stroke: "#e3e7ec" }));
        var lab = svg("text", { x: x, y: H - 4, "font-size": 11, fill: "#6b7682", "text-anchor": k === 0 ? "start" : (k === 4 ? "end" : "middle") });
        lab.textContent = "+" + dur(Math.round(span * k / 4)); s.appendChild(lab);
      }
      order.forEach(function (lane, li) {
        var y = li * LH + 2;
        var name = svg("text", { x: 4, y: y + 12, "font-size": 11, fill: "#1d232b" }); name.textContent = lane; s.appendChild(name);
        lanes[lane].forEach(function (a) {
          var end = a.closed_ms == null ? t1 : a.closed_ms;
          var kind = a.error_code === "orphan_attempt_recovered" ? "orphan" : a.outcome;
          var r = svg("rect", { x: sx(a.entered_ms), y: y, width: Math.max(1.5, sx(end) - sx(a.entered_ms)), height: LH - 5, fill: COLORS[kind] || "#999", "class": "bar bar-" + kind });
          var tt = svg("title", {}); tt.textContent = a.state_id + " #" + a.attempt + " " + kind + (a.error_code ? " (" + a.error_code + ")" : "") + " · " + dur(end - a.entered_ms);
          r.appendChild(tt); s.appendChild(r);
          if (a.retry_at_ms && a.closed_ms != null && a.retry_at_ms > a.closed_ms) {
            var b = svg("rect", { x: sx(a.closed_ms), y: y + 3, width: Math.max(1, sx(a.retry_at_ms) - sx(a.closed_ms)), height: LH - 11, fill: "url(#hatch)", "class": "backoff" });
            var bt = svg("title", {}); bt.textContent = "backoff before retrying " + a.state_id; b.appendChild(bt); s.appendChild(b);
          }
        });
      });
      box.appendChild(s);
      box.appendChild(el("p", { "class": "muted" }, rows.length + " attempts on " + order.length + " lanes over " + dur(span)));
    }).catch(function (e) { box.textContent = "error: " + e.message; });
  }
})();
