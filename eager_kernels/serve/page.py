"""The server's own page (GET /): a prompt box and the EAGer settings; it sends the prompt
to the server's chat completions API with `eager.return_tree` and draws the paths it gets
back with the tree view's renderer (eager_kernels/viewer.js, as `eager-kernels generate
--html` does for a file). A link such as /?prompt=Hi&max_paths=4 fills the form and
generates on load."""
from __future__ import annotations

import html
import json

from .. import viz

_FORM = """
<h1>eager-kernels serve</h1>
<div class="meta">Model <b>{model}</b>. The prompt goes to <code>POST /v1/chat/completions</code> with
<code>"eager": {{"return_tree": true}}</code>; the tree below is drawn from the response.</div>
<form class="ask" id="ask">
 <textarea id="prompt" name="prompt" placeholder="Ask something">A farmer has 17 sheep and buys 25 more. How many sheep does he have?</textarea>
 <div class="row">
  <label>policy <select id="policy"><option value="paper"{paper}>paper</option><option value="seed"{seed}>seed</option></select></label>
  <label>max paths (M) <input id="max_paths" type="number" min="1" max="{max_paths_limit}" value="{max_paths}"></label>
  <label>max tokens <input id="max_tokens" type="number" min="1" value="48"></label>
  <label>temperature <input id="temperature" type="number" min="0" step="0.1" placeholder="policy's"></label>
  <label>theta <input id="theta" type="number" min="0" step="0.1" placeholder="policy's"></label>
  <label>seed <input id="seed" type="number" value="0"></label>
  <label>API key <input id="api_key" type="password" placeholder="if the server needs one"></label>
  <button type="submit" id="go">Generate</button>
 </div>
 <div class="error" id="error"></div>
</form>
<div id="view"></div>
"""

_SCRIPT = """
var MODEL = %s, RAMP = %s;
function num(id) { var v = document.getElementById(id).value; return v === "" ? null : Number(v); }
document.getElementById("ask").addEventListener("submit", function (ev) {
  ev.preventDefault();
  var err = document.getElementById("error"), go = document.getElementById("go");
  err.textContent = ""; go.disabled = true; go.textContent = "Generating…";
  var prompt = document.getElementById("prompt").value;
  var eager = {return_tree: true, policy: document.getElementById("policy").value, max_paths: num("max_paths")};
  if (num("theta") !== null) eager.theta = num("theta");
  var body = {model: MODEL, messages: [{role: "user", content: prompt}], max_tokens: num("max_tokens"),
              seed: num("seed"), eager: eager};
  if (num("temperature") !== null) body.temperature = num("temperature");
  var headers = {"Content-Type": "application/json"}, key = document.getElementById("api_key").value;
  if (key) headers["Authorization"] = "Bearer " + key;
  fetch("/v1/chat/completions", {method: "POST", headers: headers, body: JSON.stringify(body)})
    .then(function (r) { return r.json().then(function (j) { return [r.status, j]; }); })
    .then(function (res) {
      var status = res[0], j = res[1];
      if (status !== 200) throw new Error((j.error && j.error.message) || ("HTTP " + status));
      var paths = j.eager.tree, best = null;
      paths.forEach(function (p) { if (best === null || p.score > paths[best].score) best = p.index; });
      var ents = [];
      paths.forEach(function (p) { p.entropies.forEach(function (e) { if (e !== null) ents.push(e); }); });
      var mean = ents.length ? ents.reduce(function (a, b) { return a + b; }, 0) / ents.length : null;
      renderEager({title: "EAGer tree: " + MODEL, ramp: RAMP,
        config: "policy " + j.eager.policy + " · M = " + j.eager.max_paths + " · seed " + j.eager.seed,
        stats: j.usage.completion_tokens + " tokens generated on " + j.eager.paths_explored + " paths; " +
               j.eager.branch_events + " branch events",
        prompts: [{index: 0, text: prompt, branch_events: j.eager.branch_events, mean_entropy: mean,
                   answer: best, paths: paths}]}, document.getElementById("view"));
    })
    .catch(function (e) { err.textContent = String(e.message || e); })
    .then(function () { go.disabled = false; go.textContent = "Generate"; });
});
// A link can carry the form: /?prompt=...&policy=...&max_paths=...&max_tokens=...&theta=...
// fills it and generates at once.
(function () {
  var q = new URLSearchParams(location.search);
  ["prompt", "policy", "max_paths", "max_tokens", "temperature", "theta", "seed"].forEach(function (k) {
    if (q.has(k)) document.getElementById(k).value = q.get(k);
  });
  if (q.has("prompt")) document.getElementById("ask").requestSubmit();
})();
"""


def index_page(settings) -> str:
    """The page GET / serves, for the server's Settings."""
    form = _FORM.format(model=html.escape(settings.model_name), max_paths=settings.max_paths,
                        max_paths_limit=settings.max_paths_limit,
                        paper=" selected" if settings.policy == "paper" else "",
                        seed=" selected" if settings.policy == "seed" else "")
    script = _SCRIPT % (json.dumps(settings.model_name), json.dumps([list(c) for c in viz.RAMP]))
    return viz.page(form, title=f"eager-kernels serve: {settings.model_name}", script=script.replace("</", "<\\/"))
