// The hub's dashboard: one static page, no build step, nothing fetched from outside the hub.
// Every figure comes from the HTTP API (docs/api.md) with the token kept in this browser's
// localStorage; live progress comes from the server-sent event streams, read with fetch so
// the token travels in the Authorization header, never in a URL.
"use strict";

const TOKEN_KEY = "morag-hub-token";
const STATES = ["queued", "assigned", "running", "completed", "failed", "cancelled", "timed_out"];
const FINAL = new Set(["completed", "failed", "cancelled", "timed_out"]);

// ---- small helpers ------------------------------------------------------------------------

/** Builds an element; text children become text nodes (never HTML). */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const $ = (sel) => document.querySelector(sel);

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function pct(v) {
  return v === null || v === undefined ? "–" : `${Math.round(v)} %`;
}

function duration(ms) {
  if (ms === null || ms === undefined || ms < 0) return "–";
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.round(s % 60)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

function when(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return d.toLocaleString();
}

function jobDuration(job) {
  if (!job.started_at) return null;
  const end = job.finished_at ? Date.parse(job.finished_at) : Date.now();
  return end - Date.parse(job.started_at);
}

function clock(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  const hh = Math.floor(s / 3600), mm = Math.floor((s % 3600) / 60), ss = s % 60;
  const two = (n) => String(n).padStart(2, "0");
  return hh ? `${two(hh)}:${two(mm)}:${two(ss)}` : `${two(mm)}:${two(ss)}`;
}

function badge(text, kind) {
  return h("span", { class: `badge ${kind || text}` }, text);
}

function progressBar(percent, stage) {
  const p = Math.max(0, Math.min(100, Number(percent) || 0));
  const fill = h("div", { class: "fill" });
  fill.style.width = `${p}%`;
  return h("div", {
    class: "progress", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100,
    "aria-valuenow": Math.round(p), title: stage || "",
  }, fill, h("span", { class: "label" }, `${Math.round(p)} %${stage ? " · " + stage : ""}`));
}

// ---- the API ------------------------------------------------------------------------------

class Unauthorized extends Error {}

function token() {
  return localStorage.getItem(TOKEN_KEY) || "";
}

async function api(path, options = {}) {
  const headers = Object.assign({ Authorization: `Bearer ${token()}` }, options.headers || {});
  const r = await fetch(path, Object.assign({}, options, { headers }));
  if (r.status === 401) throw new Unauthorized(await errorText(r));
  if (!r.ok) throw new Error(await errorText(r));
  return r;
}

async function errorText(r) {
  try {
    const v = await r.json();
    return v.error || `${r.status} ${r.statusText}`;
  } catch (_) {
    return `${r.status} ${r.statusText}`;
  }
}

const getJson = async (path) => (await api(path)).json();
const postJson = async (path) => (await api(path, { method: "POST" })).json();
const putJson = async (path, body) => (await api(path, {
  method: "PUT", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
})).json();

/** Ask for an agent's policy field by field (blank: the default) and set it. */
async function editPolicy(a) {
  const p = a.policy || {};
  const ask = (what, now) => {
    const v = window.prompt(`${a.id}: ${what} (blank: the default)`, now == null ? "" : String(now));
    if (v === null) throw new Error("cancelled");
    return v.trim();
  };
  const list = (v) => (v ? v.split(",").map((s) => s.trim()).filter(Boolean) : undefined);
  const next = {};
  const queues = list(ask("queues it may serve, comma-separated", (p.queues || []).join(",")));
  if (queues) next.queues = queues;
  const types = list(ask("content types it may take (audio, video, image)", (p.content_types || []).join(",")));
  if (types) next.content_types = types;
  const cap = ask("the most it counts as: cpu, gpu or hybrid", p.capability);
  if (cap) next.capability = cap;
  const max = ask("jobs at once", p.max_concurrent);
  if (max) next.max_concurrent = Number(max);
  await putJson(`/api/v1/agents/${encodeURIComponent(a.id)}/policy`, next);
}

/** What the policy says and what it cut from the agent's claims. */
function policyCell(a) {
  const p = a.policy || {};
  const parts = [];
  if (p.queues) parts.push(`queues ${p.queues.join(", ")}`);
  if (p.content_types) parts.push(`types ${p.content_types.join(", ")}`);
  if (p.capability) parts.push(`at most ${p.capability}`);
  if (p.max_concurrent) parts.push(`${p.max_concurrent} at once`);
  const out = [h("div", { class: "muted policy" }, `policy: ${parts.length ? parts.join(" · ") : "default"}`)];
  if (a.claimed) {
    out.push(h("div", { class: "warn clipped" },
      `clipped (${a.claimed.clipped.join(", ")}): claimed ${a.claimed.capability}, ` +
      `${a.claimed.queues.join(", ") || "no queue"}, ${a.claimed.max_concurrent_tasks} at once`));
  }
  return out;
}

/**
 * Reads a server-sent event stream until it ends or `signal` aborts; calls `onEvent(kind,
 * data, id)` per event. Resolves when the server ends the stream.
 */
async function readEvents(path, signal, onEvent) {
  const r = await api(path, { signal, headers: { Accept: "text/event-stream" } });
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf = (buf + value).replace(/\r\n?/g, "\n");
    let at;
    while ((at = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, at);
      buf = buf.slice(at + 2);
      let kind = "message", data = "", id = null;
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") kind = val;
        else if (field === "data") data += (data ? "\n" : "") + val;
        else if (field === "id") id = val;
      }
      if (!data) continue;
      let parsed;
      try { parsed = JSON.parse(data); } catch (_) { continue; }
      onEvent(kind, parsed, id);
    }
  }
}

/** Downloads an artifact with the token and hands it to the browser as a file. */
async function download(url, name) {
  const blob = await (await api(url)).blob();
  const href = URL.createObjectURL(blob);
  const a = h("a", { href, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(href), 60_000);
}

// ---- page state ---------------------------------------------------------------------------

let view = null; // { stop() } of the page on screen
let liveStream = null; // AbortController of the all-jobs stream
const listeners = new Set(); // callbacks for every job event

function showError(where, e) {
  if (e instanceof Unauthorized) return logout(e.message);
  where.replaceChildren(h("p", { class: "error", role: "alert" }, e.message || String(e)));
}

function startLive() {
  if (liveStream) return;
  liveStream = new AbortController();
  const ctl = liveStream;
  const indicator = $("#live");
  const loop = async () => {
    while (!ctl.signal.aborted) {
      try {
        indicator.textContent = "live";
        indicator.className = "live on";
        await readEvents("/api/v1/events", ctl.signal, (kind, data) => {
          for (const f of listeners) f(kind, data);
        });
      } catch (e) {
        if (e instanceof Unauthorized) return logout(e.message);
      }
      if (ctl.signal.aborted) return;
      indicator.textContent = "reconnecting";
      indicator.className = "live off";
      await new Promise((r) => setTimeout(r, 2000));
    }
  };
  indicator.hidden = false;
  loop();
}

function stopLive() {
  if (liveStream) liveStream.abort();
  liveStream = null;
  $("#live").hidden = true;
}

function logout(message) {
  localStorage.removeItem(TOKEN_KEY);
  stopLive();
  if (view) view.stop();
  view = null;
  $("#main").replaceChildren();
  $("#nav").hidden = true;
  $("#logout").hidden = true;
  $("#login").hidden = false;
  $("#login-error").textContent = message || "";
  $("#token").focus();
}

async function login(ev) {
  ev.preventDefault();
  const given = $("#token").value.trim();
  localStorage.setItem(TOKEN_KEY, given);
  try {
    await getJson("/api/v1/overview");
  } catch (e) {
    localStorage.removeItem(TOKEN_KEY);
    $("#login-error").textContent = e instanceof Unauthorized
      ? `The hub refused this token: ${e.message}`
      : `Could not reach the hub: ${e.message}`;
    return;
  }
  $("#token").value = "";
  $("#login-error").textContent = "";
  route();
}

/** Runs `load` now and every `ms`, and on job events when `onEvent` says so. */
function poller(load, ms) {
  // One load at a time, so an older answer never paints over a newer one.
  let timer = null, stopped = false, pending = null, busy = false, again = false;
  const run = async () => {
    if (stopped) return;
    if (busy) { again = true; return; }
    busy = true;
    clearTimeout(timer);
    try { await load(); } finally {
      busy = false;
      if (!stopped) {
        if (again) { again = false; run(); } else timer = setTimeout(run, ms);
      }
    }
  };
  run();
  return {
    soon() { // coalesce bursts of events into one reload
      if (pending || stopped) return;
      pending = setTimeout(() => { pending = null; run(); }, 250);
    },
    stop() { stopped = true; clearTimeout(timer); clearTimeout(pending); },
  };
}

// ---- overview -----------------------------------------------------------------------------

function overviewPanel() {
  const box = h("section", { id: "overview", class: "panel" }, h("h2", {}, "Hub"));
  const body = h("div", {}, h("p", {}, "Loading…"));
  box.append(body);
  const load = async () => {
    try {
      const o = await getJson("/api/v1/overview");
      body.replaceChildren(renderOverview(o));
    } catch (e) { showError(body, e); }
  };
  return { el: box, load };
}

function renderOverview(o) {
  const hr = o.last_hour;
  const card = (label, value, cls) => h("div", { class: `card ${cls || ""}` },
    h("div", { class: "value" }, value), h("div", { class: "label" }, label));
  const cards = h("div", { class: "cards" },
    card("queued", o.jobs.queued, "queued"),
    card("running", o.jobs.running + o.jobs.assigned, "running"),
    card("completed, last hour", hr.completed, "completed"),
    card("failed, last hour", hr.failed, hr.failed ? "failed" : ""),
    card("jobs per minute", hr.completed_per_minute.toFixed(2)),
    card("agents connected", `${o.agents.connected} / ${o.agents.known}`),
  );
  const max = Math.max(1, ...hr.bars.map((b) => b.completed + b.failed + b.cancelled));
  const chart = h("div", { class: "chart", title: "jobs finished per 5 minutes, last hour" },
    hr.bars.map((b) => {
      const col = h("div", { class: "col", title: `${new Date(b.start).toLocaleTimeString()}: ${b.completed} completed, ${b.failed} failed, ${b.cancelled} cancelled, ${b.submitted} submitted` });
      for (const [k, n] of [["failed", b.failed], ["cancelled", b.cancelled], ["completed", b.completed]]) {
        if (!n) continue;
        const seg = h("div", { class: `seg ${k}` });
        seg.style.height = `${(n / max) * 100}%`;
        col.append(seg);
      }
      return col;
    }));
  const queues = o.queues.length
    ? h("table", { class: "queues" },
      h("thead", {}, h("tr", {}, h("th", {}, "queue"), h("th", {}, "waiting"), h("th", {}, "running"))),
      h("tbody", {}, o.queues.map((q) => h("tr", {}, h("td", {}, q.queue), h("td", {}, q.queued), h("td", {}, q.running)))))
    : h("p", { class: "muted" }, "No queue has work.");
  return h("div", { class: "overview" }, cards,
    h("div", { class: "split" },
      h("div", {}, h("h3", {}, "Finished in the last hour"), chart,
        h("p", { class: "legend" }, badge("completed"), " ", badge("failed"), " ", badge("cancelled"))),
      h("div", {}, h("h3", {}, "Queue depth"), queues)));
}

// ---- agents -------------------------------------------------------------------------------

function agentsPanel() {
  const box = h("section", { id: "agents", class: "panel" }, h("h2", {}, "Agents"));
  const body = h("div", {}, h("p", {}, "Loading…"));
  box.append(body);
  let running = new Map(); // job id -> agent id
  const load = async () => {
    try {
      const v = await getJson("/api/v1/agents");
      running = new Map();
      for (const a of v.agents) for (const r of a.running) running.set(r.job_id, a.id);
      body.replaceChildren(renderAgents(v.agents, load));
    } catch (e) { showError(body, e); }
  };
  return { el: box, load, agentOf: (jobId) => running.get(jobId) };
}

function agentState(a) {
  if (!a.connected) return badge("offline");
  if (a.drained) return badge("drained");
  if (a.draining) return badge("draining");
  if (a.health && !a.health.healthy) return badge("unhealthy");
  // Connected to another hub on the same database: its health is known there.
  if (!a.health) return badge("at another hub", "elsewhere");
  return badge("healthy");
}

function gpuCell(a) {
  const live = (a.health && a.health.gpus) || [];
  const known = (a.hardware && a.hardware.gpus) || [];
  if (!live.length && !known.length) return h("span", { class: "muted" }, "no GPU (CPU)");
  const rows = (live.length ? live : known).map((g) => {
    const total = g.memory_total_bytes;
    const used = g.memory_used_bytes ?? (g.memory_free_bytes != null && total ? total - g.memory_free_bytes : null);
    const parts = [`#${g.index} ${g.name}`];
    if (g.utilization != null) parts.push(`${Math.round(g.utilization)} % busy`);
    parts.push(used != null ? `${bytes(used)} / ${bytes(total)}` : bytes(total));
    if (g.temperature_c != null) parts.push(`${Math.round(g.temperature_c)} °C`);
    if (g.in_use) parts.push(`used · ${g.running_tasks} running`);
    else if (g.not_used_reason) parts.push(`not used: ${g.not_used_reason}`);
    return h("div", { class: "gpu" }, parts.join(" · "));
  });
  return h("div", {}, rows);
}

function renderAgents(agents, reload) {
  if (!agents.length) {
    return h("p", { class: "muted" }, "No agent has registered yet. Enroll one with a join token (`morag-hub token create`).");
  }
  const rows = agents.map((a) => {
    const hl = a.health;
    const conn = a.connection;
    const drainBtn = h("button", {
      type: "button", class: "drain",
      onclick: async (ev) => {
        ev.target.disabled = true;
        try { await postJson(`/api/v1/agents/${encodeURIComponent(a.id)}/${a.drained ? "undrain" : "drain"}`); }
        catch (e) { alert(e.message); }
        reload();
      },
    }, a.drained ? "Undrain" : "Drain");
    const policyBtn = h("button", {
      type: "button", class: "policy",
      onclick: async (ev) => {
        ev.target.disabled = true;
        try { await editPolicy(a); }
        catch (e) { if (e.message !== "cancelled") alert(e.message); }
        reload();
      },
    }, "Policy");
    return h("tr", { dataset: { agent: a.id } },
      h("td", {}, h("strong", {}, a.name || a.id), h("div", { class: "muted" }, a.id), h("div", { class: "muted" }, `${a.hostname} · v${a.version}`)),
      h("td", { class: "state" }, agentState(a), hl && hl.warnings.length ? h("div", { class: "warn" }, hl.warnings.join("; ")) : null),
      h("td", {}, a.capability, h("div", { class: "muted" }, a.queues.join(", ")), h("div", { class: "muted" }, a.content_types.join(", ")), ...policyCell(a)),
      h("td", {}, gpuCell(a)),
      h("td", {}, hl ? `CPU ${pct(hl.cpu_usage)} · mem ${pct(hl.memory_usage)}` : "–"),
      h("td", {}, conn ? `quality ${Math.round(conn.quality * 100)} % · RTT ${conn.latency_ms == null ? "–" : conn.latency_ms.toFixed(1) + " ms"}` : h("span", { class: "muted" }, a.connected && a.hub ? `via hub ${a.hub}` : `last seen ${when(a.last_seen_at)}`)),
      h("td", { class: "running" }, `${a.running.length} / ${a.max_concurrent_tasks}`,
        a.running.map((r) => h("div", {}, h("a", { href: `#/jobs/${r.job_id}` }, r.job_id.slice(0, 12) + "…"), r.device ? ` on ${r.device}` : ""))),
      h("td", {}, drainBtn, policyBtn));
  });
  return h("table", { class: "agents" },
    h("thead", {}, h("tr", {}, ["agent", "state", "capability · queues", "GPU", "load", "connection · RTT", "jobs", ""].map((t) => h("th", {}, t)))),
    h("tbody", {}, rows));
}

// ---- jobs list ----------------------------------------------------------------------------

function jobsPanel(agentOf) {
  const box = h("section", { id: "jobs", class: "panel" }, h("h2", {}, "Jobs"));
  const filter = { state: "", queue: "", text: "" };
  const stateSel = h("select", { id: "filter-state", "aria-label": "state" },
    h("option", { value: "" }, "any state"), STATES.map((s) => h("option", { value: s }, s)));
  const queueIn = h("input", { id: "filter-queue", placeholder: "queue", "aria-label": "queue", size: 12 });
  const textIn = h("input", { id: "filter-text", placeholder: "id or file name", "aria-label": "search", size: 16 });
  const body = h("div", {}, h("p", {}, "Loading…"));
  let jobs = [];
  const rows = new Map(); // job id -> row parts, for live progress
  const draw = () => {
    const t = filter.text.toLowerCase();
    const shown = jobs.filter((j) => !t || j.id.includes(t) || j.input.name.toLowerCase().includes(t));
    rows.clear();
    if (!shown.length) { body.replaceChildren(h("p", { class: "muted" }, "No jobs match.")); return; }
    body.replaceChildren(h("table", { class: "jobs" },
      h("thead", {}, h("tr", {}, ["job", "state", "type · input", "queue", "agent", "progress", "duration", "error", ""].map((x) => h("th", {}, x)))),
      h("tbody", {}, shown.map((j) => jobRow(j)))));
  };
  const jobRow = (j) => {
    const bar = h("td", { class: "bar" }, progressBar(j.state === "completed" ? 100 : j.progress?.percent, j.state === "completed" ? "done" : j.progress?.stage));
    const cancel = FINAL.has(j.state) ? null : h("button", {
      type: "button", class: "cancel",
      onclick: async (ev) => {
        ev.target.disabled = true;
        try { await postJson(`/api/v1/jobs/${j.id}/cancel`); } catch (e) { alert(e.message); }
        panel.soon();
      },
    }, "Cancel");
    const tr = h("tr", { dataset: { job: j.id, state: j.state } },
      h("td", {}, h("a", { href: `#/jobs/${j.id}` }, j.id.slice(0, 16) + "…")),
      h("td", { class: "state" }, badge(j.state)),
      h("td", {}, `${j.content_type} · `, j.input.name, h("div", { class: "muted" }, bytes(j.input.size))),
      h("td", {}, j.queue),
      h("td", {}, j.agent_id || agentOf(j.id) || h("span", { class: "muted" }, "–")),
      bar,
      h("td", {}, duration(jobDuration(j))),
      h("td", { class: "error" }, j.error || ""),
      h("td", {}, cancel));
    rows.set(j.id, { tr, bar });
    return tr;
  };
  const load = async () => {
    const q = new URLSearchParams({ limit: "200" });
    if (filter.state) q.set("state", filter.state);
    if (filter.queue) q.set("queue", filter.queue);
    try {
      jobs = (await getJson(`/api/v1/jobs?${q}`)).jobs;
      draw();
    } catch (e) { showError(body, e); }
  };
  stateSel.addEventListener("change", () => { filter.state = stateSel.value; panel.soon(); });
  queueIn.addEventListener("change", () => { filter.queue = queueIn.value.trim(); panel.soon(); });
  textIn.addEventListener("input", () => { filter.text = textIn.value.trim(); draw(); });
  box.append(h("div", { class: "filters" }, stateSel, queueIn, textIn), body);
  let panel = null;
  return {
    el: box,
    load,
    attach(p) { panel = p; },
    onEvent(kind, ev) {
      if (kind === "progress") {
        const r = rows.get(ev.job_id);
        if (r) r.bar.replaceChildren(progressBar(ev.data.percent, ev.data.stage));
        return;
      }
      panel && panel.soon();
    },
  };
}

// ---- the main page ------------------------------------------------------------------------

function dashboard(which) {
  const main = $("#main");
  const ov = overviewPanel();
  const ag = agentsPanel();
  const jb = jobsPanel(ag.agentOf);
  const parts = { overview: [ov, ag, jb], agents: [ag], jobs: [ag, jb] }[which];
  main.replaceChildren(...parts.filter((p) => p !== ag || which !== "jobs").map((p) => p.el));
  const pollers = [];
  if (parts.includes(ov)) pollers.push(poller(ov.load, 5000));
  pollers.push(poller(ag.load, 2000));
  let jobsPoll = null;
  if (parts.includes(jb)) {
    jobsPoll = poller(jb.load, 5000);
    jb.attach(jobsPoll);
    pollers.push(jobsPoll);
  }
  const onEvent = (kind, ev) => {
    if (jobsPoll) jb.onEvent(kind, ev);
  };
  listeners.add(onEvent);
  return {
    stop() {
      listeners.delete(onEvent);
      for (const p of pollers) p.stop();
    },
  };
}

// ---- one job ------------------------------------------------------------------------------

function eventSummary(kind, d) {
  switch (kind) {
    case "assigned": return `attempt ${d.attempt} to ${d.agent_id}`;
    case "progress": return `${Math.round(d.percent)} %${d.stage ? " · " + d.stage : ""}${d.message ? " · " + d.message : ""}`;
    case "requeued": return `queued again: ${d.reason || ""}`;
    case "cancel_requested": return `cancel sent to ${d.agent_id}`;
    case "cancelled": return d.latency_ms != null ? `after ${d.latency_ms} ms${d.acknowledged === false ? " (not acknowledged)" : ""}` : (d.reason || "");
    case "completed": return d.reused_from ? `the result of ${d.reused_from} (same content and options)` : `${d.artifacts} artifacts`;
    case "queued": return d.joined_to ? `follows ${d.joined_to} (same content and options)` : "";
    case "handed_over": return `${d.from} was cancelled: its work goes on here`;
    case "released": return d.reason || "";
    case "live_reset": return d.reason || "the live transcript starts over";
    case "failed": case "timed_out": return d.error || d.reason || "";
    case "stale_report": return `ignored ${d.report} from old attempt ${d.attempt_id}`;
    default: return "";
  }
}

function jobPage(id) {
  const main = $("#main");
  const head = h("div", {});
  const attempts = h("div", {});
  const result = h("div", { id: "result" });
  // The transcript as it is decoded, until the result replaces it.
  const live = h("ol", { id: "live-transcript", class: "segments live" });
  const timeline = h("ol", { id: "timeline", class: "timeline" });
  main.replaceChildren(h("section", { class: "panel", id: "job", dataset: { job: id } },
    h("p", {}, h("a", { href: "#/jobs" }, "← all jobs")),
    head,
    h("h3", {}, "Attempts"), attempts,
    h("h3", {}, "Result"), result,
    h("h3", {}, "Events"), timeline));
  const ctl = new AbortController();
  let job = null, progress = null, shownResult = false, lastSeq = 0, asked = 0;
  const blobs = [];

  const drawHead = () => {
    const p = job.state === "completed" ? { percent: 100, stage: "done" } : (progress || job.progress || { percent: 0, stage: job.state });
    const cancel = FINAL.has(job.state) ? null : h("button", {
      type: "button", class: "cancel", id: "job-cancel",
      onclick: async (ev) => {
        ev.target.disabled = true;
        try { await postJson(`/api/v1/jobs/${id}/cancel`); } catch (e) { alert(e.message); }
        reload();
      },
    }, "Cancel job");
    const dl = (k, v) => [h("dt", {}, k), h("dd", {}, v ?? "–")];
    head.replaceChildren(...[
      h("h2", {}, job.input.name, " ", h("span", { id: "job-state", dataset: { state: job.state } }, badge(job.state))),
      h("div", { id: "job-progress" }, progressBar(p.percent, p.stage)),
      cancel,
      h("dl", { class: "facts" },
        dl("job", job.id), dl("type", job.content_type), dl("queue", `${job.queue} · ${job.priority} · GPU ${job.gpu}`),
        dl("input", `${bytes(job.input.size)} · blake3 ${job.input.blake3.slice(0, 16)}…`),
        dl("options", Object.entries(job.options).map(([k, v]) => `${k}=${v}`).join(", ") || "–"),
        dl("reference", job.external_ref),
        job.reused_from ? dl("reused", h("span", { id: "job-reused" }, "the result of ",
          h("a", { href: `#/jobs/${job.reused_from}` }, job.reused_from), " (same content and options: no agent work)")) : null,
        job.joined_to && !FINAL.has(job.state) ? dl("follows", h("span", { id: "job-follows" },
          h("a", { href: `#/jobs/${job.joined_to}` }, job.joined_to), " (same content and options: completes with it)")) : null,
        dl("created", when(job.created_at)), dl("started", when(job.started_at)), dl("finished", when(job.finished_at)),
        dl("duration", h("span", { id: "job-duration" }, duration(jobDuration(job)))),
        dl("attempts", `${job.attempt_count} of at most ${job.max_attempts}`),
        job.error ? dl("error", h("span", { class: "error" }, job.error)) : null),
    ].filter(Boolean));
    attempts.replaceChildren(job.attempts.length
      ? h("table", {}, h("thead", {}, h("tr", {}, ["#", "agent", "device", "dispatched", "started", "finished", "outcome", "error"].map((t) => h("th", {}, t)))),
        h("tbody", {}, job.attempts.map((a) => h("tr", {},
          h("td", {}, a.number), h("td", {}, a.agent_id), h("td", {}, a.device || "—"), h("td", {}, when(a.dispatched_at)), h("td", {}, when(a.started_at)),
          h("td", {}, when(a.finished_at)), h("td", {}, badge(a.outcome)), h("td", { class: "error" }, a.error || "")))))
      : h("p", { class: "muted" }, "Not dispatched yet."));
  };

  const drawResult = async () => {
    const arts = h("ul", { class: "artifacts" }, job.artifacts.map((a) => h("li", {},
      h("button", { type: "button", class: "download", onclick: () => download(a.url, a.name).catch((e) => alert(e.message)) }, a.name),
      ` ${a.media_type} · ${bytes(a.size)}`)));
    const parts = [h("h4", {}, "Artifacts"), arts];
    if (job.content_type === "audio") {
      try {
        const doc = await getJson(`/api/v1/jobs/${id}/result`);
        parts.unshift(transcript(doc));
      } catch (e) { parts.unshift(h("p", { class: "error" }, e.message)); }
    }
    const images = job.artifacts.filter((a) => a.media_type.startsWith("image/"));
    if (images.length) {
      const strip = h("div", { class: "thumbs", id: "thumbnails" });
      parts.unshift(strip);
      for (const a of images) {
        api(a.url).then((r) => r.blob()).then((b) => {
          const src = URL.createObjectURL(b);
          blobs.push(src);
          strip.append(h("figure", {}, h("img", { src, alt: a.name }), h("figcaption", {}, a.name)));
        }).catch(() => {});
      }
    }
    result.replaceChildren(...parts);
  };

  const reload = async () => {
    const mine = ++asked;
    let fresh;
    try {
      fresh = await getJson(`/api/v1/jobs/${id}`);
    } catch (e) { return showError(head, e); }
    if (mine !== asked || ctl.signal.aborted) return; // a newer reload is on its way
    job = fresh;
    drawHead();
    if (job.state === "completed" && !shownResult) {
      shownResult = true;
      await drawResult();
    } else if (job.state !== "completed" && !shownResult) {
      if (FINAL.has(job.state)) {
        result.replaceChildren(h("p", { class: "muted" }, `No result: the job is ${job.state}.`));
      } else if (!result.contains(live)) {
        result.replaceChildren(h("p", { class: "muted", id: "live-note" }, "Not finished yet. The transcript as it is decoded:"), live);
      }
    }
  };

  const follow = async () => {
    // The job's own stream replays its history, then follows it live until it ends.
    while (!ctl.signal.aborted) {
      try {
        await readEvents(`/api/v1/jobs/${id}/events?after=${lastSeq}`, ctl.signal, (kind, ev) => {
          lastSeq = Math.max(lastSeq, ev.seq || 0);
          if (kind === "segment") {
            if (shownResult) return;
            for (const s of ev.data.segments || []) {
              if (!(s.text || "").trim()) continue;
              live.append(h("li", {}, h("span", { class: "time" }, `[${clock(s.start)}]`), " ", s.text.trim()));
            }
            return;
          }
          if (kind === "live_reset") live.replaceChildren();
          timeline.append(h("li", { dataset: { kind } }, h("time", {}, when(ev.at)), " ", badge(kind, "event"), " ", eventSummary(kind, ev.data)));
          if (kind === "progress") {
            progress = ev.data;
            if (job && !FINAL.has(job.state)) $("#job-progress").replaceChildren(progressBar(ev.data.percent, ev.data.stage));
          } else {
            reload();
          }
        });
        await reload(); // the stream ended: the job is final, or the hub went away
        if (job && FINAL.has(job.state)) return;
      } catch (e) {
        if (e instanceof Unauthorized) return logout(e.message);
      }
      if (ctl.signal.aborted) return;
      await new Promise((r) => setTimeout(r, 2000));
    }
  };
  reload().then(() => follow());
  const tick = setInterval(() => {
    const el = document.getElementById("job-duration");
    if (el && job && !FINAL.has(job.state)) el.textContent = duration(jobDuration(job));
  }, 1000);
  return {
    stop() {
      ctl.abort();
      clearInterval(tick);
      for (const b of blobs) URL.revokeObjectURL(b);
    },
  };
}

function transcript(doc) {
  const segs = doc.segments || [];
  const lines = segs.map((s) => h("li", {},
    h("span", { class: "time" }, `[${clock(s.start)}]`), " ",
    s.speaker ? h("span", { class: "speaker" }, `[${s.speaker}] `) : null,
    s.text.trim()));
  return h("div", { id: "transcript" },
    h("p", { class: "muted" }, `${segs.length} segments · language ${doc.metadata?.language ?? "?"} · ${doc.processing_time?.toFixed?.(2) ?? "?"} s`),
    segs.length ? h("ol", { class: "segments" }, lines) : h("p", {}, doc.transcript || "(no speech)"));
}

// ---- routing ------------------------------------------------------------------------------

function route() {
  if (!token()) return logout("");
  $("#login").hidden = true;
  $("#nav").hidden = false;
  $("#logout").hidden = false;
  startLive();
  if (view) view.stop();
  const hash = location.hash.replace(/^#\/?/, "");
  const m = hash.match(/^jobs\/(job_[0-9a-f]{32})$/);
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("here", a.getAttribute("href") === `#/${hash.split("/")[0]}` && !m);
  }
  if (m) view = jobPage(m[1]);
  else if (hash === "agents") view = dashboard("agents");
  else if (hash === "jobs") view = dashboard("jobs");
  else view = dashboard("overview");
}

$("#login-form").addEventListener("submit", login);
$("#logout").addEventListener("click", () => logout("Logged out."));
window.addEventListener("hashchange", route);
route();
