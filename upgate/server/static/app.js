// upgate approvals page. Every piece of text from the server (proposals, diffs, reasons,
// answers) is untrusted and is put on the page as text nodes only: no innerHTML anywhere.
"use strict";

const $ = (id) => document.getElementById(id);
let csrf = "";
let current = null;      // the cycle shown: {cycle_id, shownHash}
let stream = null;       // the EventSource of the shown cycle

// el("td", {class: "x"}, "text", child) builds an element; strings become text nodes.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null) node.setAttribute(k, String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function showError(text) {
  $("error").textContent = text || "";
  $("error").hidden = !text;
}

async function api(method, path, body) {
  const headers = {"Accept": "application/json"};
  if (method !== "GET") { headers["Content-Type"] = "application/json"; headers["X-CSRF-Token"] = csrf; }
  const res = await fetch(path, {method, headers, credentials: "same-origin",
                                 body: body === undefined ? undefined : JSON.stringify(body)});
  let data = null;
  try { data = await res.json(); } catch (e) { data = null; }
  if (!res.ok) {
    const detail = data && data.detail ? (typeof data.detail === "string" ? data.detail
                                          : JSON.stringify(data.detail)) : res.statusText;
    const err = new Error(detail); err.status = res.status; throw err;
  }
  return data;
}

// --- session ---------------------------------------------------------------------------

function setSession(me) {
  csrf = me ? me.csrf : "";
  $("login-form").hidden = !!me;
  $("whoami").hidden = !me;
  $("logout").hidden = !me;
  $("whoami").textContent = me ? `${me.name} (${me.roles.join(", ")})` : "";
}

async function boot() {
  try { setSession(await api("GET", "/api/me")); await loadLists(); }
  catch (e) { setSession(null); }
  const wanted = new URLSearchParams(location.search).get("cycle");
  if (csrf && wanted) await openCycle(wanted);
}

$("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  try {
    setSession(await api("POST", "/api/login", {name: $("login-name").value,
                                                token: $("login-token").value}));
    $("login-token").value = "";
    showError("");
    await loadLists();
    const wanted = new URLSearchParams(location.search).get("cycle");
    if (wanted) await openCycle(wanted);
  } catch (e) { showError(`login refused: ${e.message}`); }
});

$("logout").addEventListener("click", async () => {
  try { await api("POST", "/api/logout"); } catch (e) { /* already out */ }
  setSession(null); $("conversation").hidden = true;
});

$("verify").addEventListener("click", async () => {
  const r = await api("GET", "/api/verify");
  $("verify-result").textContent = r.ok ? `ledger OK: ${r.entries} entries, chain intact`
                                        : `ledger BROKEN: ${r.problems.join("; ")}`;
});

// --- lists -----------------------------------------------------------------------------

async function loadLists() {
  const [inbox, cycles] = await Promise.all([api("GET", "/api/inbox"), api("GET", "/api/cycles")]);
  $("inbox").replaceChildren(...inbox.map((r) => {
    const score = r.baseline_score == null ? "" :
      ` ${r.baseline_score.toFixed(2)} → ${r.candidate_score.toFixed(2)}`;
    const li = el("li", {class: "waiting", "data-cycle": r.cycle_id},
                  el("strong", {}, r.cycle_id), el("br"), `${r.kind}, by ${r.requester}${score}`);
    li.addEventListener("click", () => openCycle(r.cycle_id));
    return li;
  }));
  if (!inbox.length) $("inbox").replaceChildren(el("li", {}, "nothing waits for you"));
  await loadBatches();
  $("cycles").replaceChildren(...cycles.map((c) => {
    const li = el("li", {"data-cycle": c.cycle_id}, c.cycle_id, el("br"),
                  `${c.outcome} ${c.recipe || ""}`);
    li.addEventListener("click", () => openCycle(c.cycle_id));
    return li;
  }));
}

// --- the stop button: running batches, stopped with a reason (recorded) -----------------

let runningBatch = null;

async function loadBatches() {
  const batches = await api("GET", "/api/batches");
  runningBatch = (batches.find((b) => b.status === "running") || {}).batch_id || null;
  $("batches").replaceChildren(...batches.map((b) =>
    el("li", {"data-batch": b.batch_id}, el("strong", {}, b.batch_id), el("br"),
       `${b.status}${b.detail ? ": " + b.detail : ""}`)));
  if (!batches.length) $("batches").replaceChildren(el("li", {}, "no batch running or held"));
  $("stop-form").hidden = !runningBatch;
}

$("stop-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  if (!runningBatch) return;
  try {
    const r = await api("POST", `/api/batches/${encodeURIComponent(runningBatch)}/stop`,
                        {reason: $("stop-reason").value});
    $("stop-result").textContent = `stop pressed on ${r.batch_id} by ${r.stopped_by}: ` +
      `${r.sandboxes_killed} sandbox(es) killed; it stops before its next step`;
    $("stop-reason").value = "";
    showError("");
  } catch (e) { showError(`stop refused: ${e.message}`); }
  await loadBatches();
});

// --- one cycle as a conversation -------------------------------------------------------

function msg(who, cls, ...children) {
  return el("div", {class: `msg ${cls}`}, el("div", {class: "who"}, who), ...children);
}

function kv(obj) {
  return el("table", {}, ...Object.entries(obj || {}).map(([k, v]) =>
    el("tr", {}, el("th", {}, k), el("td", {}, show(v)))));
}

// A value as text: model references as one line each, other objects as JSON.
function show(v) {
  if (v === null || typeof v !== "object") return v === null ? "" : v;
  const refs = Object.values(v);
  if (refs.length && refs.every((r) => r && typeof r === "object" && "prompt_hash" in r)) {
    return el("ul", {}, ...refs.map((r) => el("li", {}, madeBy(r))));
  }
  return JSON.stringify(v);
}

function fmt(x) { return typeof x === "number" ? x.toFixed(3) : String(x); }

function deltaRows(title, rows) {
  return el("table", {class: "slices"},
    el("tr", {}, el("th", {}, title), el("th", {}, "n"), el("th", {}, "baseline"),
       el("th", {}, "candidate"), el("th", {}, "delta"), el("th", {}, "95% interval")),
    ...rows.map(([name, d]) => el("tr", {}, el("td", {}, name), el("td", {}, d.n),
      el("td", {}, fmt(d.baseline_mean)), el("td", {}, fmt(d.candidate_mean)),
      el("td", {class: d.delta < 0 ? "neg" : "pos"}, fmt(d.delta)),
      el("td", {}, `${fmt(d.ci_low)} .. ${fmt(d.ci_high)}`))));
}

function madeBy(ref) {
  return ref ? `${ref.agent}: ${ref.model} at ${ref.endpoint}, prompt ${ref.prompt} ${String(ref.prompt_hash).slice(0, 12)}` : "";
}

function renderPacket(view, packet) {
  const out = [];
  const p = view.proposal || packet.proposal || {};
  out.push(msg(`proposer · ${madeBy(p.made_by)}`, "agent",
    el("p", {}, el("strong", {}, `I propose ${p.recipe} (${p.kind} change, risk ${p.risk}).`)),
    el("p", {}, "Why: ", p.rationale), el("p", {}, "Expected effect: ", p.expected_effect),
    kv(p.args)));
  const c = packet.candidate || {};
  out.push(msg(`coder · ${madeBy((view.candidate || {}).made_by)}`, "agent",
    el("p", {}, `Candidate ${String(c.content_hash).slice(0, 16)}: ${c.description || ""}`),
    Object.keys(c.artifacts || {}).length ? kv(c.artifacts) : null,
    el("pre", {class: "diff"}, c.diff || "(no diff)")));
  const comp = packet.comparison;
  const checks = el("table", {class: "checks"}, ...(packet.checks || []).map((k) =>
    el("tr", {}, el("td", {class: k.passed ? "pass" : "fail"}, k.passed ? "pass" : "FAIL"),
       el("td", {}, k.name), el("td", {}, k.detail))));
  const findings = el("table", {class: "findings"}, ...(packet.findings || []).map((f) =>
    el("tr", {}, el("td", {class: f.triggered ? "fail" : "pass"}, f.triggered ? "triggered" : "clear"),
       el("td", {}, `${f.name} [${f.severity}]`), el("td", {}, el("pre", {}, f.evidence)))));
  out.push(msg("critic", "agent",
    el("p", {}, el("strong", {}, `Verdict: ${packet.verdict}`)),
    el("ul", {}, ...(packet.reasons || []).map((r) => el("li", {}, r))),
    comp ? el("h4", {}, "Visible against hidden") : null,
    comp ? deltaRows("split", [["overall", comp.overall], ...Object.entries(comp.by_split || {})]) : null,
    comp ? el("h4", {}, "Per slice") : null,
    comp ? deltaRows("slice", Object.entries(comp.per_slice || {})) : null,
    comp ? el("img", {class: "plot", alt: "per-slice deltas and intervals",
                      src: `/api/evidence/${view.shownHash}/plot.svg`}) : null,
    el("h4", {}, "Checks and probes"), checks,
    el("h4", {}, "Detectors, with their evidence"), findings,
    el("h4", {}, "Tests"),
    kv({baseline: packet.tests_baseline, candidate: packet.tests_candidate})));
  out.push(msg("lineage and time", "agent", kv(packet.versions),
    kv({"cycle started": view.started_at, "approval requested": (view.pending || {}).requested_at,
        "packet created": packet.created_at, "requested by": view.requester,
        "revisions": view.revisions})));
  return out;
}

// Time per node from the ledger; tokens and sandbox seconds from the meter's records.
function renderCost(c) {
  const secs = (x) => (x === null || x === undefined ? "not metered" : `${x.toFixed(1)} s`);
  const rows = Object.entries(c.per_node_s || {}).map(([node, s]) =>
    el("tr", {}, el("td", {}, node), el("td", {}, secs(s))));
  return msg("time and cost", "agent cost",
    kv({"wall time": secs(c.wall_s),
        "model tokens": c.tokens === null ? "not metered" : c.tokens,
        "sandbox wall time": secs(c.sandbox_s), "sandbox CPU time": secs(c.sandbox_cpu_s)}),
    el("h4", {}, "Wall time per node"), el("table", {class: "per-node"}, ...rows),
    c.metered ? null : el("p", {class: "note"},
      "Tokens and sandbox seconds are metered for cycles a batch runs."));
}

function renderAnswer(a) {
  return msg(`answer · ${a.model ? a.model.model : "model"} (from the evidence packet only)`, "answer",
    el("p", {class: "answer"}, a.answer),
    el("p", {class: "cites"}, "Cites: ", ...(a.cites.length ? a.cites.map((c) => el("span", {class: "cite"}, c)) : ["nothing"])),
    el("p", {class: "note"}, a.note),
    ...Object.entries(a.excerpts || {}).map(([k, v]) =>
      el("details", {}, el("summary", {}, `packet section: ${k}`), el("pre", {}, v))));
}

function renderChat(view) {
  const items = [];
  for (const e of view.timeline) {
    if (e.node === "chat" && e.event === "question") items.push(msg(e.detail.person, "human", e.detail.question));
    if (e.node === "chat" && e.event === "answer") {
      items.push(renderAnswer({...e.detail, excerpts: {}, note: e.detail.grounded ? `cites the packet's ${e.detail.cites.join(", ")} section` : "the packet does not hold the answer"}));
    }
  }
  $("chat").replaceChildren(...items);
}

function renderTimeline(view) {
  $("timeline").replaceChildren(...view.timeline.map((e) =>
    el("li", {}, `${e.at.slice(11, 19)} ${e.node}/${e.event} ${JSON.stringify(e.detail).slice(0, 160)}`)));
}

async function openCycle(cycleId) {
  showError("");
  const view = await api("GET", `/api/cycles/${encodeURIComponent(cycleId)}`);
  const hash = view.pending ? view.pending.evidence_hash : (view.verdict || {}).evidence_hash;
  current = {cycle_id: cycleId, shownHash: hash};
  view.shownHash = hash;
  $("conversation").hidden = false;
  $("cycle-title").textContent = `Cycle ${cycleId}`;
  $("outcome").textContent = view.outcome;
  $("cycle-reason").textContent = view.reason || "";
  $("evidence-hash").textContent = hash || "(none yet)";
  $("decision-result").textContent = "";
  $("decision-result").className = "";
  $("decide").hidden = !view.pending;
  const parts = [];
  if (hash) {
    const ev = await api("GET", `/api/evidence/${hash}`);
    parts.push(...renderPacket(view, ev.packet));
  }
  if (view.deployment) parts.push(msg("deploy", "agent", kv(view.deployment)));
  if (view.monitor) parts.push(msg("monitor", "agent", kv(view.monitor)));
  if (view.cost) parts.push(renderCost(view.cost));
  $("messages").replaceChildren(...parts);
  renderChat(view);
  renderTimeline(view);
  follow(cycleId, view.timeline.length ? view.timeline[view.timeline.length - 1].seq : 0);
  history.replaceState(null, "", `?cycle=${encodeURIComponent(cycleId)}`);
}

async function refreshView() {
  const view = await api("GET", `/api/cycles/${encodeURIComponent(current.cycle_id)}`);
  $("outcome").textContent = view.outcome;
  $("decide").hidden = !view.pending;
  renderTimeline(view);
  if (view.deployment) $("messages").append(msg("deploy", "agent", kv(view.deployment)));
}

function follow(cycleId, after) {
  if (stream) stream.close();
  $("live").replaceChildren();
  $("progress").replaceChildren();
  stream = new EventSource(`/api/cycles/${encodeURIComponent(cycleId)}/events?after=${after}`);
  stream.addEventListener("node", (ev) => {
    const e = JSON.parse(ev.data);
    $("live").append(el("li", {}, `${e.at.slice(11, 19)} ${e.node}: ${e.event}`));
  });
  stream.addEventListener("progress", (ev) => showProgress(JSON.parse(ev.data)));
  stream.addEventListener("end", () => {
    stream.close(); $("progress").replaceChildren(); refreshView(); loadLists();
  });
}

// One bar per long step of a node (training epochs and steps, eval cases, image builds),
// updated in place; the detail comes from the sandbox and is shown as text only.
function showProgress(p) {
  const key = `${p.node}/${p.kind}`;
  let row = [...$("progress").children].find((r) => r.dataset.key === key);
  if (!row) {
    row = el("div", {class: "bar", "data-key": key}, el("span", {class: "what"}),
             el("progress", {}), el("span", {class: "count"}));
    $("progress").append(row);
  }
  const [what, bar, count] = row.children;
  what.textContent = `${p.node}: ${p.kind}`;
  if (p.total) { bar.max = p.total; bar.value = Math.min(p.done, p.total); }
  else bar.removeAttribute("value");
  count.textContent = `${p.done}${p.total ? "/" + p.total : ""} ${p.detail || ""}`;
}

$("ask-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const q = $("question").value.trim();
  if (!q || !current) return;
  $("chat").append(msg("you", "human", q));
  $("ask-button").disabled = true;
  try {
    const a = await api("POST", `/api/cycles/${encodeURIComponent(current.cycle_id)}/ask`,
                        {question: q, evidence_hash: current.shownHash});
    $("chat").append(renderAnswer(a));
    $("question").value = "";
  } catch (e) { $("chat").append(msg("service", "answer", `No answer: ${e.message}`)); }
  finally { $("ask-button").disabled = false; }
});

async function decide(action) {
  const result = $("decision-result");
  result.className = ""; result.textContent = `${action}: sending…`;
  try {
    const view = await api("POST", `/api/cycles/${encodeURIComponent(current.cycle_id)}/decision`,
                           {action, reason: $("reason").value, evidence_hash: current.shownHash});
    result.className = "done";
    const d = view.deployment;
    result.textContent = `${action}: outcome ${view.outcome}` +
      (d ? `, deployed ${d.branch || `${d.alias} -> ${d.version_name}`}` : "");
    $("outcome").textContent = view.outcome;
    $("cycle-reason").textContent = view.reason || "";
    $("decide").hidden = !view.pending;
    renderTimeline(view);
    await loadLists();
    if (view.pending) await openCycle(current.cycle_id);  // changes made: a new packet to review
  } catch (e) {
    result.className = "refused";
    result.textContent = `refused: ${e.message}`;
  }
}

$("approve").addEventListener("click", () => decide("approve"));
$("reject").addEventListener("click", () => decide("reject"));
$("request-changes").addEventListener("click", () => decide("request_changes"));

boot();
