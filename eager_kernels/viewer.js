// The EAGer tree view (eager_kernels/viz.py): renderEager(data, element) draws the view data
// of viz.view_data, or the paths the server's API returns for a request that asks for the
// tree: per prompt, its paths merged into a tree (shared tokens once, a ◆ mark at each
// split), tokens coloured by entropy, path labels, hover details.
"use strict";

function renderEager(data, root) {
  var ramp = data.ramp;

  function colour(v, vmax) {
    var x = vmax > 0 ? Math.min(Math.max(v / vmax, 0), 1) : 0;
    var pos = x * (ramp.length - 1), i = Math.min(Math.floor(pos), ramp.length - 2), f = pos - i;
    var c = [0, 1, 2].map(function (k) { return Math.round(ramp[i][k] + (ramp[i + 1][k] - ramp[i][k]) * f); });
    return "rgb(" + c.join(",") + ")";
  }
  function fmt(x, d) { return (x === null || x === undefined) ? "n/a" : x.toFixed(d); }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  // One scale for the page: 0 to the largest entropy or threshold, rounded up to a half nat.
  var vmax = 1;
  data.prompts.forEach(function (p) {
    p.paths.forEach(function (q) {
      q.entropies.concat(q.thresholds).forEach(function (v) { if (v !== null && v > vmax) vmax = v; });
    });
  });
  vmax = Math.ceil(vmax * 2) / 2;

  root.textContent = "";
  root.appendChild(el("h1", "", data.title));
  if (data.config) root.appendChild(el("div", "meta", data.config));
  if (data.stats) root.appendChild(el("div", "meta", data.stats));
  var legend = el("div", "legend");
  legend.appendChild(el("span", "", "entropy (nats): 0"));
  var bar = el("div", "bar");
  bar.style.background = "linear-gradient(90deg," +
    [0, 1, 2, 3, 4, 5, 6, 7, 8].map(function (i) { return colour(vmax * i / 8, vmax); }).join(",") + ")";
  legend.appendChild(bar);
  legend.appendChild(el("span", "", String(vmax)));
  var sample = el("span", "");
  var hotSample = el("span", "sample hot", "\u00a0outlined\u00a0");
  hotSample.style.outline = "1.5px solid #1f4e9a";
  sample.appendChild(hotSample);
  sample.appendChild(document.createTextNode(" entropy above the threshold in force"));
  legend.appendChild(sample);
  legend.appendChild(el("span", "", "◆ branch point"));
  legend.appendChild(el("span", "", "★ answer (best log-probability per token)"));
  root.appendChild(legend);

  function buildTree(paths) {  // a trie of the paths' tokens; the root stands for the prompt
    var top = {kids: new Map(), paths: [], ends: []};
    paths.forEach(function (p) {
      var node = top;
      top.paths.push(p.index);
      p.token_ids.forEach(function (id, t) {
        var kid = node.kids.get(id);
        if (!kid) {
          kid = {id: id, text: p.tokens[t], step: t, e: p.entropies[t], th: p.thresholds[t],
                 lp: p.token_logprobs[t], kids: new Map(), paths: [], ends: []};
          node.kids.set(id, kid);
        }
        kid.paths.push(p.index);
        node = kid;
      });
      node.ends.push(p.index);
    });
    return top;
  }

  function tokenEl(n) {
    var s = el("span", "tok", n.text);
    if (n.th !== null && n.e !== null && n.e > n.th) s.classList.add("hot");
    s.style.background = colour(n.e || 0, vmax);
    s.style.color = (n.e || 0) / vmax > 0.62 ? "#fff" : "#111";
    s.dataset.p = " " + n.paths.join(" ") + " ";
    var p = n.lp === null ? null : Math.exp(n.lp);
    s.title = "entropy " + fmt(n.e, 3) + " nats (threshold " + fmt(n.th, 3) + ")\np " + fmt(p, 3) +
      " (log-prob " + fmt(n.lp, 3) + ")\nstep " + n.step + " · token id " + n.id;
    return s;
  }

  function forkEl(n) {
    var kids = Array.from(n.kids.values()), first = kids[0];
    var cands = kids.map(function (k) {
      return JSON.stringify(k.text) + " p " + (k.lp === null ? "n/a" : Math.exp(k.lp).toFixed(3));
    }).join(", ");
    var f = el("div", "fork", "◆ branch: " + kids.length + " ways at step " + first.step);
    f.title = "branch at step " + first.step + ": entropy " + fmt(first.e, 3) + " > threshold " +
      fmt(first.th, 3) + "\nchildren: " + cands;
    return f;
  }

  function leafEl(q, answer) {
    var star = q.index === answer ? "★ answer · " : "";
    var s = el("span", q.index === answer ? "leaf answer" : "leaf",
      star + "path " + q.index + " · score " + fmt(q.score, 3) + " · " + q.finished + " · " +
      q.token_ids.length + " tokens" + (q.stage !== "init" ? " · " + q.stage : ""));
    s.dataset.path = q.index;
    s.title = "log-probability " + fmt(q.logprob, 3) + "; branched at steps " +
      (q.branch_steps.length ? q.branch_steps.join(", ") : "none");
    return s;
  }

  function kidsEl(nodes, paths, answer) {
    var box = el("div", "kids");
    nodes.forEach(function (k) {
      var kid = el("div", "kid");
      segment(k, paths, answer).forEach(function (e) { kid.appendChild(e); });
      box.appendChild(kid);
    });
    return box;
  }

  function segment(n, paths, answer) {  // tokens down to the next split or end, then the subtrees
    var seg = el("div", "seg");
    for (;;) {
      if (seg.childNodes.length) seg.appendChild(document.createElement("wbr"));
      seg.appendChild(tokenEl(n));
      n.ends.forEach(function (i) { seg.appendChild(leafEl(paths[i], answer)); });
      if (n.kids.size !== 1 || n.ends.length) break;
      n = n.kids.values().next().value;
    }
    var out = [seg];
    if (n.kids.size > 1) out.push(forkEl(n));
    if (n.kids.size) out.push(kidsEl(Array.from(n.kids.values()), paths, answer));
    return out;
  }

  data.prompts.forEach(function (pr) {
    var box = el("div", "prompt");
    box.dataset.prompt = pr.index;
    box.appendChild(el("h2", "", "Prompt " + pr.index));
    if (pr.text !== null && pr.text !== undefined) box.appendChild(el("div", "ptext", pr.text));
    var th = [];
    pr.paths.forEach(function (q) { q.thresholds.forEach(function (v) { if (v !== null) th.push(v); }); });
    var thNote = th.length ? "threshold " + Math.min.apply(null, th).toFixed(3) + " to " +
      Math.max.apply(null, th).toFixed(3) + " nats" : "thresholds not recorded";
    box.appendChild(el("div", "meta", pr.paths.length + " paths · " + pr.branch_events + " branch events · " +
      thNote + (pr.mean_entropy === null ? "" : " · mean entropy " + pr.mean_entropy.toFixed(3))));
    var stages = [];
    pr.paths.forEach(function (q) { if (stages.indexOf(q.stage) < 0) stages.push(q.stage); });
    stages.forEach(function (stage) {  // a budget stage is a fresh tree
      if (stages.length > 1) box.appendChild(el("div", "meta", "stage " + stage));
      var top = buildTree(pr.paths.filter(function (q) { return q.stage === stage; }));
      var kids = Array.from(top.kids.values());
      if (kids.length > 1) {
        box.appendChild(forkEl(top));
        box.appendChild(kidsEl(kids, pr.paths, pr.answer));
      } else {
        kids.forEach(function (k) {
          var kid = el("div", "kid");
          segment(k, pr.paths, pr.answer).forEach(function (e) { kid.appendChild(e); });
          box.appendChild(kid);
        });
      }
    });
    root.appendChild(box);
  });

  // Hovering a path's label lights its tokens; #path=N in the address lights path N.
  root.querySelectorAll(".leaf").forEach(function (leaf) {
    var box = leaf.closest(".prompt"), key = " " + leaf.dataset.path + " ";
    leaf.mark = function (on) {
      box.querySelectorAll(".tok").forEach(function (t) {
        if (t.dataset.p.indexOf(key) >= 0) t.classList.toggle("on", on);
      });
    };
    leaf.addEventListener("mouseenter", function () { leaf.mark(true); });
    leaf.addEventListener("mouseleave", function () { leaf.mark(false); });
  });
  var m = /^#path=(\d+)$/.exec(location.hash);
  if (m) root.querySelectorAll('.leaf[data-path="' + m[1] + '"]').forEach(function (l) { l.mark(true); });
}
