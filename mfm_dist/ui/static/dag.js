/* The drawn run graph (drawn on the server: mfm_dist/ui/graph_svg.py). Recolours it from
   the live statuses — a state's box by its class, a group's bar and count line with the
   server's arithmetic (bar_stops, count_line) — and reports clicks on its boxes.
   Plain JS, no build step. */
(function () {
  "use strict";
  var ORDER = "CSRTFP";
  function expand(ranges) {
    var out = [];
    (ranges || []).forEach(function (r) { for (var k = 0; k < r[1]; k++) out.push(r[0] + k); });
    return out;
  }
  function fmt(n) { return n.toLocaleString("en-US"); }
  function countLine(c, total) {
    var parts = [fmt((c.C || 0) + (c.S || 0)) + "/" + fmt(total) + " done"];
    [["R", "running"], ["T", "retrying"], ["F", "failed"]].forEach(function (p) {
      if (c[p[0]]) parts.push(fmt(c[p[0]]) + " " + p[1]);
    });
    return parts.join(" · ");
  }
  /* svg: the drawing (or null); groups: box key -> [start, count] ranges of its states;
     onState(index, box element), onGroup(indices, box element): clicks. */
  window.mfmDag = function (svg, groups, onState, onGroup) {
    if (!svg) return { apply: function () {}, boxOf: function () { return null; } };
    var singles = [], boxes = [], byIndex = {};
    svg.querySelectorAll("g.n").forEach(function (g) {
      var i = +g.dataset.i; singles.push([g, i]); byIndex[i] = g;
    });
    svg.querySelectorAll("g.grp").forEach(function (g) {
      var bar = g.querySelector("g.bar"), segs = bar.querySelectorAll("rect");
      var width = 0; segs.forEach(function (r) { width += +r.getAttribute("width"); });
      boxes.push({ el: g, members: expand(groups[g.dataset.box]), segs: segs, width: width,
                   text: g.querySelector("text.gc") });
    });
    svg.addEventListener("click", function (e) {
      var g = e.target.closest("g.n, g.grp"); if (!g) return;
      if (g.classList.contains("n")) onState(+g.dataset.i, g);
      else {
        var box = boxes.find(function (b) { return b.el === g; });
        if (box) onGroup(box.members, g);
      }
    });
    function apply(statuses) {
      singles.forEach(function (pair) {
        var letter = statuses.charAt(pair[1]) || "P", g = pair[0];
        if (!g.classList.contains(letter)) {
          var sel = g.classList.contains("sel");
          g.setAttribute("class", "n " + letter + (sel ? " sel" : ""));
        }
      });
      boxes.forEach(function (b) {
        var c = {}, total = b.members.length, seen = 0;
        b.members.forEach(function (i) { var l = statuses.charAt(i) || "P"; c[l] = (c[l] || 0) + 1; });
        for (var k = 0; k < ORDER.length; k++) {
          var x0 = total ? Math.round(b.width * seen / total) : 0;
          seen += c[ORDER.charAt(k)] || 0;
          var x1 = total ? Math.round(b.width * seen / total) : 0, r = b.segs[k];
          if (r) { r.setAttribute("x", x0); r.setAttribute("width", x1 - x0); }
        }
        if (b.text) b.text.textContent = countLine(c, total);
      });
    }
    return { apply: apply, boxOf: function (i) { return byIndex[i] || null; } };
  };
})();
