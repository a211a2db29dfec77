// INOS node dashboard.  Plain browser JavaScript: no build step, no library, no CDN.
//
// The token: taken from the URL fragment (#token=..., which browsers never send to the server),
// or from the login form; kept in sessionStorage (this tab only) and removed from the visible URL.
// Every data call sends it as "Authorization: Bearer <token>".  The two long-lived streams (job
// events as SSE, boids frames as binary) are read with fetch() + a stream reader, because
// EventSource and WebSocket cannot send that header, and a token in a query string would reach
// access logs.
//
// Everything remote (peer names, capsule names, errors) is inserted with textContent, never as HTML.
"use strict";

(() => {
  const KEY = "inos.dashboard.token";
  const MAX_JOB_ROWS = 200;
  const $ = (id) => document.getElementById(id);
  const SVG = "http://www.w3.org/2000/svg";

  const state = {
    token: null,
    node: null,              // GET /v1/node
    peers: [],               // GET /v1/peers
    names: new Map(),        // peer id -> name
    jobs: new Map(),         // job id -> row data
    stop: null,              // AbortController of this session's loops
    boidsOn: true,
    boidsStop: null,         // AbortController of the boids stream
  };

  class Unauthorized extends Error {}

  // ------------------------------------------------------------------ small helpers
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") node.className = v;
      else if (k.startsWith("data-")) node.setAttribute(k, v);
      else node[k] = v;
    }
    for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return node;
  }
  function svg(tag, attrs = {}, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }
  const suffix = (id) => (id ? id.slice(-6) : "");
  const fmt = (n) => (typeof n === "number" ? n.toLocaleString("en-US") : String(n ?? "–"));
  const mib = (n) => `${(n / 1048576).toFixed(1)} MiB`;
  const sleep = (ms, signal) => new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => { clearTimeout(t); resolve(); }, { once: true });
  });
  function peerLabel(id) {
    if (!id) return "";
    if (id === "local") return "this node";
    const name = id === state.node?.peer_id ? state.node.name : state.names.get(id);
    return `${name || "?"} …${suffix(id)}`;
  }
  function locality(executor) {
    if (!executor) return "–";
    if (executor.includes(",")) return "replicated";
    return executor === "local" ? "local" : "remote";
  }
  function setStatus(s, text) {
    const node = $("status");
    node.dataset.state = s;
    node.textContent = text || s;
  }

  // ------------------------------------------------------------------ the token and the API
  function takeToken() {
    const m = location.hash.match(/(?:^#|&)token=([^&]*)/);
    if (m) {
      sessionStorage.setItem(KEY, decodeURIComponent(m[1]));
      history.replaceState(null, "", location.pathname + location.search);  // the token leaves the URL
    }
    return sessionStorage.getItem(KEY);
  }

  async function api(path, opts = {}) {
    const resp = await fetch(path, {
      ...opts,
      cache: "no-store",
      headers: { ...(opts.headers || {}), Authorization: `Bearer ${state.token}` },
    });
    if (resp.status === 401) throw new Unauthorized("the token was refused");
    return resp;
  }

  async function getJSON(path, signal) {
    const resp = await api(path, { signal });
    if (!resp.ok) {
      const err = new Error(`${path}: HTTP ${resp.status}`);
      err.status = resp.status;
      throw err;
    }
    return resp.json();
  }

  function showLogin(message) {
    state.stop?.abort();
    state.boidsStop?.abort();
    $("main").hidden = true;
    $("logout").hidden = true;
    $("login").hidden = false;
    $("login-error").hidden = !message;
    $("login-error").textContent = message || "";
    setStatus("login", "no token");
    $("token-input").focus();
  }

  function failed(err) {
    if (err instanceof Unauthorized) {
      sessionStorage.removeItem(KEY);
      showLogin("The node refused that token.");
      return true;
    }
    return err?.name === "AbortError";
  }

  // a loop that runs fn every ms until the session stops (errors are shown, then retried)
  async function every(ms, fn, signal) {
    while (!signal.aborted) {
      try {
        await fn(signal);
      } catch (err) {
        if (failed(err)) return;
        setStatus("offline", `offline: ${err.message}`);
      }
      await sleep(ms, signal);
    }
  }

  // ------------------------------------------------------------------ this node and its peers
  async function refreshNode(signal) {
    state.node = await getJSON("/v1/node", signal);
    $("node-name").textContent = state.node.name || "node";
    $("node-id").textContent = `${state.node.peer_id} · ${state.node.version || ""}`;
    document.title = `INOS ${state.node.name || "node"} …${suffix(state.node.peer_id)}`;
  }

  async function refreshPeers(signal) {
    const doc = await getJSON("/v1/peers", signal);
    state.peers = doc.peers || [];
    for (const p of state.peers) if (p.name) state.names.set(p.peer_id, p.name);
    drawGraph();
    drawPeerTable();
    relabelJobs();
  }

  function drawGraph() {
    const g = $("graph");
    g.replaceChildren();
    const W = 440, H = 300, cx = W / 2, cy = H / 2;
    const peers = [...state.peers].sort((a, b) => a.peer_id.localeCompare(b.peer_id));
    const r = Math.min(W, H) / 2 - 36;
    const spots = peers.map((p, i) => {
      const a = (2 * Math.PI * i) / Math.max(1, peers.length) - Math.PI / 2 + Math.PI / Math.max(1, peers.length);
      return { p, x: cx + r * Math.cos(a) * 1.35, y: cy + r * Math.sin(a) };
    });
    for (const { p, x, y } of spots) {
      g.append(svg("line", { x1: cx, y1: cy, x2: x, y2: y, class: p.connected ? "connected" : "known" }));
    }
    for (const { p, x, y } of spots) {
      const load = typeof p.load === "number" ? p.load : 0;
      const hue = 130 - Math.min(1, load) * 130;  // green (idle) to red (busy)
      const node = svg("g", { "data-peer-id": p.peer_id });
      node.append(svg("title", {}, `${p.peer_id}\n${(p.addresses || []).join("\n")}`));
      node.append(svg("circle", { cx: x, cy: y, r: 11, fill: `hsl(${hue} 60% 40%)` }));
      node.append(svg("text", { x, y: y + 25 }, `${p.name || "?"} …${suffix(p.peer_id)}`));
      g.append(node);
    }
    const me = svg("g", { "data-peer-id": state.node?.peer_id || "" });
    me.append(svg("circle", { cx, cy, r: 16, class: "self" }));
    me.append(svg("text", { x: cx, y: cy + 32 }, `${state.node?.name || "this node"} …${suffix(state.node?.peer_id)}`));
    g.append(me);
    $("peers-count").textContent = `${peers.filter((p) => p.connected).length} connected, ${peers.length} known`;
  }

  function drawPeerTable() {
    const rows = state.peers.map((p) => el("tr", { "data-peer-id": p.peer_id },
      el("td", {}, p.name || "?"),
      el("td", { class: "mono", title: p.peer_id }, `…${suffix(p.peer_id)}`),
      el("td", {}, el("span", { class: `badge ${p.connected ? "connected" : "known"}` },
        p.connected ? (p.verified ? "connected ✓" : "connected") : "known")),
      el("td", { class: "num" }, typeof p.load === "number" ? p.load.toFixed(2) : "–"),
      el("td", { class: "num" }, typeof p.rtt_ms === "number" ? `${p.rtt_ms.toFixed(1)} ms` : "–"),
      el("td", { class: "num" }, `${p.successes ?? 0} / ${p.failures ?? 0}`)));
    $("peers").tBodies[0].replaceChildren(...rows);
  }

  // ------------------------------------------------------------------ the job stream
  function upsertJob(id, changes) {
    const job = { ...(state.jobs.get(id) || { job_id: id, ts: Date.now() }), ...changes };
    state.jobs.set(id, job);
    const tbody = $("jobs").tBodies[0];
    let row = tbody.querySelector(`tr[data-job-id="${CSS.escape(id)}"]`);
    const fresh = !row;
    if (fresh) {
      row = el("tr", { "data-job-id": id, class: "new" });
      tbody.prepend(row);
      while (tbody.rows.length > MAX_JOB_ROWS) {
        state.jobs.delete(tbody.lastElementChild.dataset.jobId);
        tbody.lastElementChild.remove();
      }
    }
    const status = job.status || "queued";
    const where = job.served_for ? "served" : locality(job.executor);
    const executor = job.served_for ? `for ${peerLabel(job.served_for)}`
      : (job.executor || "").split(",").filter(Boolean).map(peerLabel).join(", ");
    row.replaceChildren(
      el("td", { class: "dim" }, new Date(job.ts).toLocaleTimeString()),
      el("td", { class: "mono", title: job.error || "" }, id),
      el("td", { class: "mono" }, job.capsule || ""),
      el("td", {}, where),
      el("td", {}, executor),
      el("td", {}, el("span", { class: `badge ${status}`, title: job.error || "" }, status)),
      el("td", { class: "num" }, job.cost === undefined ? "" : fmt(job.cost)),
      el("td", { class: "num" }, job.latency_ms === undefined ? "" : `${fmt(job.latency_ms)} ms`),
      el("td", {}, job.verified === undefined ? "" : job.verified ? "receipt ✓" : (where === "local" ? "local" : "–")),
    );
  }

  function relabelJobs() {
    for (const [id, job] of state.jobs) if (job.executor || job.served_for) upsertJob(id, {});
  }

  function onJobEvent(name, ev) {
    if (name === "subscribed") {
      setStatus("live", "live");
      $("jobs-state").textContent = "live";
      return;
    }
    if (!ev.job_id) return;
    const ts = ev.ts_ms || Date.now();
    if (name === "submitted") upsertJob(ev.job_id, { capsule: ev.capsule, status: "queued", ts });
    else if (name === "finished") {
      upsertJob(ev.job_id, { status: ev.status, executor: ev.executor, cost: ev.cost, latency_ms: ev.latency_ms,
                             verified: ev.verified, error: ev.error });
    } else if (name === "served") {
      upsertJob(`${ev.job_id}@${suffix(ev.requester)}`, { capsule: ev.capsule, status: ev.status,
                                                          served_for: ev.requester, ts });
    } else upsertJob(ev.job_id, { status: name, executor: ev.executor });
  }

  async function loadRecentJobs(signal) {
    const doc = await getJSON("/v1/jobs?limit=50", signal);
    for (const r of [...(doc.jobs || [])].reverse()) {
      upsertJob(r.job_id, {
        capsule: r.capsule, status: r.status, executor: r.executor, cost: r.cost, ts: r.submitted_ms,
        latency_ms: r.finished_ms ? r.finished_ms - r.submitted_ms : undefined,
        verified: r.finished_ms ? r.receipt !== null : undefined, error: r.error,
      });
    }
  }

  async function jobStream(signal) {
    while (!signal.aborted) {
      try {
        await loadRecentJobs(signal);
        const resp = await api("/v1/events", { signal, headers: { Accept: "text/event-stream" } });
        if (!resp.ok) throw new Error(`events: HTTP ${resp.status}`);
        const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += value;
          let cut;
          while ((cut = buf.indexOf("\n\n")) >= 0) {
            const block = buf.slice(0, cut);
            buf = buf.slice(cut + 2);
            let name = "message", data = "";
            for (const line of block.split("\n")) {
              if (line.startsWith("event:")) name = line.slice(6).trim();
              else if (line.startsWith("data:")) data += line.slice(5).trim();
            }
            if (data) onJobEvent(name, JSON.parse(data));
          }
        }
      } catch (err) {
        if (failed(err)) return;
      }
      setStatus("reconnecting", "reconnecting");
      $("jobs-state").textContent = "reconnecting";
      await sleep(2000, signal);
    }
  }

  // ------------------------------------------------------------------ vital signs
  function kv(pairs) {
    const dl = el("dl", { class: "kv" });
    for (const [k, v] of pairs) dl.append(el("dt", {}, k), el("dd", {}, v));
    return dl;
  }
  function bar(fraction, hot) {
    const f = Math.max(0, Math.min(1, fraction || 0));
    const fill = el("span");
    fill.style.width = `${(f * 100).toFixed(1)}%`;  // CSSOM, not a style attribute: allowed by the CSP
    return el("div", { class: `bar${hot && f > 0.8 ? " hot" : ""}` }, fill);
  }

  async function refreshVitals(signal) {
    const v = await getJSON("/v1/vitals", signal);
    const jobs = v.jobs || {}, arena = v.arena || {}, rates = v.epoch_rates || {};
    const used = arena.size ? arena.used / arena.size : 0;
    const epochs = el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "epoch"), el("th", { class: "num" }, "counter"),
      el("th", { class: "num" }, "per second"))), el("tbody", {}, ...Object.entries(v.epochs || {}).map(([name, value]) =>
      el("tr", { "data-epoch": name, "data-rate": name in rates ? String(rates[name]) : "" },
        el("td", { class: "mono" }, name), el("td", { class: "num" }, fmt(value)),
        el("td", { class: "num" }, name in rates ? rates[name].toFixed(1) : "…")))));
    const units = el("p", {}, ...(v.units || []).map((u) => el("span", {
      class: `badge ${u.state === "running" ? "running-unit" : "bad"}`,
      title: `${u.handled ?? 0} handled, ${u.restarts ?? 0} restarts`,
    }, `${u.unit}: ${u.state}${u.restarts ? ` (${u.restarts} restarts)` : ""}`), " "));
    $("vitals").replaceChildren(
      kv([["load", `${((v.load || 0) * 100).toFixed(0)} %`]]), bar(v.load, true),
      kv([
        ["jobs", `${fmt(jobs.running)} running, ${fmt(jobs.waiting)} waiting (limit ${fmt(jobs.limit)})`],
        ["engine", `${fmt(jobs.completed)} completed, ${fmt(jobs.failed)} failed`],
        ["served for peers", `${fmt(v.served?.total)} (${fmt(v.served?.running)} now)`],
        ["arena", `${arena.name || ""}: ${mib(arena.used || 0)} of ${mib(arena.size || 0)}, ${fmt(arena.blocks)} blocks, ${fmt(arena.processes)} processes`],
      ]),
      bar(used, true), epochs, el("h3", { class: "dim" }, "units"), units,
      kv([["uptime", `${Math.round(v.uptime_s || 0)} s`]]),
    );
    if (v.boids) $("boids-info").textContent = `${fmt(v.boids.count)} boids · ${fmt(v.boids.viewers)} viewer(s)`;
  }

  // ------------------------------------------------------------------ balances and supply
  async function refreshLedger(signal) {
    if (!state.node) await refreshNode(signal);
    let supply, balance;
    try {
      supply = await getJSON("/v1/ledger/supply", signal);
      balance = await getJSON(`/v1/ledger/balance/${encodeURIComponent(state.node.did)}`, signal);
    } catch (err) {
      if (err.status === 404) {
        $("ledger").replaceChildren(el("p", { class: "dim", "data-ledger": "none" }, "no ledger (dev network)"),
          kv([["did", state.node.did || "–"]]));
        return;
      }
      throw err;
    }
    const rows = (doc) => Object.entries(doc).filter(([, v]) => typeof v !== "object").map(([k, v]) => [k, fmt(v)]);
    $("ledger").replaceChildren(
      el("h3", { class: "dim" }, "this node's account"), kv(rows(balance)),
      el("h3", { class: "dim" }, "supply"), kv(rows(supply)),
    );
  }

  // ------------------------------------------------------------------ the boids showcase
  const boids = { frame: null, drawn: 0, received: 0 };

  class ByteQueue {  // the bytes received and not yet parsed
    constructor() { this.buf = new Uint8Array(64 * 1024); this.len = 0; }
    push(chunk) {
      if (this.len + chunk.length > this.buf.length) {
        const bigger = new Uint8Array(Math.max(this.buf.length * 2, this.len + chunk.length));
        bigger.set(this.buf.subarray(0, this.len));
        this.buf = bigger;
      }
      this.buf.set(chunk, this.len);
      this.len += chunk.length;
    }
    take(n) {
      const out = this.buf.slice(0, n);
      this.buf.copyWithin(0, n, this.len);
      this.len -= n;
      return out;
    }
  }

  function parseFrame(bytes) {
    const dv = new DataView(bytes.buffer, bytes.byteOffset, 16);
    const n = dv.getUint32(8, true);
    return {
      number: dv.getUint32(4, true), n,
      x: new Uint16Array(bytes.buffer, 16, n), y: new Uint16Array(bytes.buffer, 16 + 2 * n, n),
      z: new Uint8Array(bytes.buffer, 16 + 4 * n, n), heading: new Uint8Array(bytes.buffer, 16 + 5 * n, n),
    };
  }

  async function boidsStream(signal) {
    while (!signal.aborted) {
      try {
        const resp = await api("/v1/boids/stream", { signal });
        if (!resp.ok) throw new Error(`boids: HTTP ${resp.status}`);
        const reader = resp.body.getReader();
        const q = new ByteQueue();
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          q.push(value);
          while (q.len >= 16) {
            const head = new DataView(q.buf.buffer, 0, 16);
            if (head.getUint32(0, true) !== 0x44494f42) throw new Error("boids: not a BOID frame");  // "BOID"
            const need = 16 + 6 * head.getUint32(8, true);
            if (q.len < need) break;
            boids.frame = parseFrame(q.take(need));
            boids.received += 1;
          }
        }
      } catch (err) {
        if (failed(err)) return;
        $("boids-info").textContent = `showcase paused: ${err.message}`;
      }
      await sleep(3000, signal);
    }
  }

  function drawBoids() {
    const f = boids.frame;
    const canvas = $("boids");
    if (f && f.number !== boids.drawn) {
      boids.drawn = f.number;
      const ctx = canvas.getContext("2d");
      const W = canvas.width, H = canvas.height;
      ctx.fillStyle = "#05070d";
      ctx.fillRect(0, 0, W, H);
      const sx = W / 65535, sy = H / 65535;
      // one path per depth band: far boids small and dark, near ones large and bright
      for (let band = 0; band < 6; band++) {
        const lo = band * 43, hi = lo + 43;
        const size = 2 + band * 0.55;
        ctx.beginPath();
        for (let i = 0; i < f.n; i++) {
          const z = f.z[i];
          if (z < lo || z >= hi) continue;
          const x = f.x[i] * sx, y = f.y[i] * sy;
          const a = (f.heading[i] / 255) * 2 * Math.PI - Math.PI;
          const c = Math.cos(a), s = Math.sin(a);
          ctx.moveTo(x + c * size * 1.6, y + s * size * 1.6);
          ctx.lineTo(x - c * size - s * size * 0.7, y - s * size + c * size * 0.7);
          ctx.lineTo(x - c * size + s * size * 0.7, y - s * size - c * size * 0.7);
          ctx.closePath();
        }
        ctx.fillStyle = `hsl(${195 - band * 12} 85% ${35 + band * 8}%)`;
        ctx.fill();
      }
      canvas.dataset.frames = String(boids.received);
      canvas.dataset.frame = String(f.number);
    }
    requestAnimationFrame(drawBoids);
  }

  function startBoids() {
    state.boidsStop?.abort();
    if (!state.boidsOn || !state.stop || state.stop.signal.aborted || document.hidden) return;
    state.boidsStop = new AbortController();
    boidsStream(state.boidsStop.signal);
  }

  // ------------------------------------------------------------------ the session
  async function start() {
    state.stop?.abort();
    state.stop = new AbortController();
    const signal = state.stop.signal;
    $("login").hidden = true;
    $("main").hidden = false;
    $("logout").hidden = false;
    setStatus("starting", "connecting");
    try {
      await refreshNode(signal);
    } catch (err) {
      if (failed(err)) return;
      setStatus("offline", `offline: ${err.message}`);
    }
    every(2000, refreshPeers, signal);
    every(2000, refreshVitals, signal);
    every(5000, refreshLedger, signal);
    jobStream(signal);
    startBoids();
  }

  function init() {
    $("login-form").addEventListener("submit", (e) => {
      e.preventDefault();
      state.token = $("token-input").value.trim();
      $("token-input").value = "";
      sessionStorage.setItem(KEY, state.token);
      start();
    });
    $("logout").addEventListener("click", () => {
      sessionStorage.removeItem(KEY);
      state.token = null;
      showLogin("");
    });
    $("boids-toggle").addEventListener("click", () => {
      state.boidsOn = !state.boidsOn;
      $("boids-toggle").textContent = state.boidsOn ? "pause" : "resume";
      if (state.boidsOn) startBoids(); else state.boidsStop?.abort();
    });
    // nobody watching: stop the stream, so that the node stops stepping the flock
    document.addEventListener("visibilitychange", () => (document.hidden ? state.boidsStop?.abort() : startBoids()));
    window.addEventListener("hashchange", () => { if (takeToken()) { state.token = sessionStorage.getItem(KEY); start(); } });
    requestAnimationFrame(drawBoids);
    state.token = takeToken();
    if (state.token) start(); else showLogin("");
  }

  init();
})();
