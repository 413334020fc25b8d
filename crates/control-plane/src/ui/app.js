// weft's web view: read-only, same-origin GETs of /fleet and /edges every
// few seconds. Every value is set with textContent or an attribute, never
// parsed as HTML. data-* attributes carry the raw values so a test can
// compare the page with the API's JSON.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const REFRESH_MS = 3000;
const WINDOW_S = 600;

function el(tag, attrs, text) {
  const e = tag === "svg" || tag.startsWith("svg:")
    ? document.createElementNS(SVG, tag.replace("svg:", ""))
    : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

function peer(p) {
  if (!p) return "";
  return p.identity !== undefined ? p.identity : p.address;
}

// "frontend.demo.serviceaccount…" → "demo/frontend"; addresses as they are.
function short(name) {
  const m = /^([^.]+)\.([^.]+)\.serviceaccount\.identity\./.exec(name);
  return m ? m[2] + "/" + m[1] : name;
}

function date(unix) {
  return unix > 0 ? new Date(unix * 1000).toISOString().replace(".000Z", "Z") : "unknown";
}

function left(seconds) {
  if (seconds <= 0) return "EXPIRED";
  const d = Math.floor(seconds / 86400), h = Math.floor((seconds % 86400) / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  return d > 0 ? `${d}d ${h}h` : h > 0 ? `${h}h ${m}m` : `${m}m ${seconds % 60}s`;
}

// The shipped alert rules' thresholds: anchor < 60 d; issuer < 30 d and
// < 7 d; a leaf (a day's life, renewed at about two thirds) < 1 h.
const DAY = 86400;
const LIMITS = { anchor: [0, 60 * DAY], issuer: [7 * DAY, 30 * DAY], leaf: [3600, 3600] };

function urgency(kind, seconds) {
  const [bad, warn] = LIMITS[kind];
  return seconds <= 0 || seconds < bad ? "bad" : seconds < warn ? "warn" : "";
}

function fill(tableId, rows) {
  const body = document.querySelector(`#${tableId} tbody`);
  body.replaceChildren(...rows);
}

function proxies(fleet) {
  const b = fleet.bundle;
  document.getElementById("bundle").textContent = b
    ? `Trust bundle generation ${b.generation}: ${b.anchors.length} anchor(s); issuer sha256 ${b.issuer_sha256.slice(0, 16)}…`
      + (fleet.issuer_refused ? ` — a replacement was refused: ${fleet.issuer_refused}` : "")
    : "No trust bundle in force yet.";
  fill("proxies", fleet.proxies.map((p) => {
    const gen = p.bundle ? p.bundle.generation : "";
    const tr = el("tr", {
      "data-workload": p.workload, "data-identity": p.identity, "data-state": p.state,
      "data-generation": gen, "data-not-after": p.not_after,
      class: p.state === "connected" ? "" : "stale",
    });
    tr.append(
      el("td", {}, p.workload),
      el("td", {}, p.identity),
      el("td", {}, p.state),
      el("td", { class: p.bundle_current ? "" : "warn" }, `${gen}${p.bundle_current ? "" : " (old)"}`),
      el("td", { class: urgency("leaf", p.expires_in_s) }, `${date(p.not_after)} (${left(p.expires_in_s)})`),
    );
    return tr;
  }));
}

function edges(view) {
  fill("edges", view.edges.map((e) => {
    const tr = el("tr", {
      "data-client": peer(e.client), "data-server": peer(e.server), "data-workload": e.workload,
      "data-mtls": e.mtls, "data-connections": e.connections, "data-requests": e.requests,
      class: e.mtls ? "mtls-edge" : "plaintext",
    });
    const tls = e.mtls ? "mTLS" : `plaintext (${e.no_tls_reason || "no TLS"})`;
    const rate = e.success_rate === null || e.success_rate === undefined
      ? "–" : `${(e.success_rate * 100).toFixed(1)}%`;
    tr.append(
      el("td", { title: peer(e.client) }, short(peer(e.client))),
      el("td", { title: peer(e.server) }, short(peer(e.server))),
      el("td", {}, e.workload),
      el("td", { class: e.mtls ? "mtls" : "plain" }, tls),
      el("td", {}, e.connections), el("td", {}, e.requests), el("td", {}, rate),
    );
    return tr;
  }));
  const unmeshed = view.unmeshed_workloads || [];
  document.getElementById("unmeshed").textContent = unmeshed.length
    ? `Declared but without a connected proxy: ${unmeshed.join(", ")}` : "";
  graph(view.edges);
}

// Nodes on a circle, one line per edge: mTLS solid green, plaintext dashed red.
function graph(list) {
  const svg = document.getElementById("graph");
  const names = [...new Set(list.flatMap((e) => [peer(e.client), peer(e.server)]))].sort();
  const w = +svg.getAttribute("width"), h = +svg.getAttribute("height");
  const r = Math.min(w, h) / 2 - 50;
  const at = new Map(names.map((n, i) => {
    const a = (2 * Math.PI * i) / Math.max(names.length, 1) - Math.PI / 2;
    return [n, [w / 2 + r * Math.cos(a), h / 2 + r * Math.sin(a)]];
  }));
  const parts = [];
  for (const e of list) {
    const [x1, y1] = at.get(peer(e.client)), [x2, y2] = at.get(peer(e.server));
    parts.push(el("svg:line", {
      x1, y1, x2, y2, "stroke-width": 2,
      stroke: e.mtls ? "#1a7f37" : "#c62828", "stroke-dasharray": e.mtls ? "" : "6 4",
      "data-client": peer(e.client), "data-server": peer(e.server), "data-mtls": e.mtls,
    }));
  }
  for (const [n, [x, y]] of at) {
    parts.push(el("svg:circle", { cx: x, cy: y, r: 6, fill: "#1d2330" }));
    parts.push(el("svg:text", { x: x + 9, y: y + 4 }, short(n)));
  }
  svg.replaceChildren(...parts);
}

// Anchors, the issuer and each leaf, soonest first, with a bar each.
function expiry(fleet) {
  const now = fleet.now, items = [];
  const b = fleet.bundle;
  if (b) {
    b.anchors.forEach((sha, i) => items.push(
      { kind: "anchor", name: sha, notAfter: (b.anchor_not_after || [])[i] || 0 }));
    items.push({ kind: "issuer", name: b.issuer_sha256, notAfter: b.issuer_not_after || 0 });
  }
  for (const p of fleet.proxies) items.push({ kind: "leaf", name: p.identity, notAfter: p.not_after });
  items.sort((a, z) => a.notAfter - z.notAfter || a.name.localeCompare(z.name));
  fill("expiry", items.map((it) => {
    const tr = el("tr", { "data-kind": it.kind, "data-name": it.name, "data-not-after": it.notAfter });
    tr.append(
      el("td", {}, it.kind), el("td", {}, it.kind === "leaf" ? it.name : `sha256 ${it.name}`),
      el("td", {}, date(it.notAfter)),
      el("td", { class: urgency(it.kind, it.notAfter - now) }, left(it.notAfter - now)),
    );
    return tr;
  }));
  timeline(items, now);
}

// One row per kind on a shared axis from now to the latest expiry.
function timeline(items, now) {
  const svg = document.getElementById("timeline");
  const w = +svg.getAttribute("width"), kinds = ["anchor", "issuer", "leaf"];
  svg.setAttribute("height", 22 * kinds.length + 20);
  const end = Math.max(now + 1, ...items.map((i) => i.notAfter));
  const x = (t) => 70 + ((w - 80) * (Math.max(t, now) - now)) / (end - now);
  const parts = [];
  kinds.forEach((k, row) => {
    const y = 10 + row * 22;
    parts.push(el("svg:text", { x: 0, y: y + 11 }, k));
    for (const it of items.filter((i) => i.kind === k)) {
      const cls = urgency(k, it.notAfter - now);
      parts.push(el("svg:rect", {
        x: 70, y, width: Math.max(2, x(it.notAfter) - 70), height: 14, "fill-opacity": 0.35,
        fill: cls === "bad" ? "#c62828" : cls === "warn" ? "#b26a00" : "#1a7f37",
        "data-kind": k, "data-not-after": it.notAfter,
      }));
    }
  });
  parts.push(el("svg:text", { x: w - 170, y: 22 * kinds.length + 16 }, `latest: ${date(end)}`));
  svg.replaceChildren(...parts);
}

async function get(path) {
  const r = await fetch(path, { headers: { accept: "application/json" } });
  if (!r.ok) throw new Error(`${path}: ${r.status} ${(await r.text()).trim()}`);
  return r.json();
}

async function refresh() {
  const status = document.getElementById("status");
  try {
    const [fleet, view] = await Promise.all([get("/fleet"), get(`/edges?since=${WINDOW_S}`)]);
    proxies(fleet);
    edges(view);
    expiry(fleet);
    status.textContent = `updated ${date(fleet.now)}: ${fleet.proxies.length} proxies, ${view.edges.length} edges`;
    status.setAttribute("data-loaded", "true");
    status.className = "";
  } catch (e) {
    status.textContent = `cannot read the control plane: ${e.message}`;
    status.className = "bad";
  }
}

// The tap pane: GET /tap streams one JSON event a line; the newest
// TAP_ROWS are kept. `?tap=NS/NAME&seconds=N` in the page's URL starts one.
const TAP_ROWS = 200;

function tapRow(t) {
  const what = t.kind === "req" ? `${t.method || ""} ${t.authority || ""}${t.path || ""}`
    : t.kind === "rsp" ? `:status=${t.status} latency=${t.latency_us}µs`
    : `duration=${t.latency_us}µs response-length=${t.response_bytes || 0}B`
      + (t.grpc_status !== undefined ? ` grpc-status=${t.grpc_status}` : "");
  const tr = el("tr", {
    "data-tap": t.kind, "data-src": t.src, "data-dst": t.dst, "data-tls": t.tls,
    "data-client-id": t.client_id || "", class: t.tls === "true" ? "" : "plaintext",
  });
  tr.append(
    el("td", {}, `${t.kind} ${t.id}`), el("td", {}, t.src), el("td", {}, t.dst),
    el("td", { class: t.tls === "true" ? "mtls" : "plain" }, t.tls === "true" ? "mTLS" : t.tls),
    el("td", {}, t.client_id ? short(t.client_id) : ""), el("td", {}, what),
  );
  return tr;
}

async function tap(workload, seconds) {
  const status = document.getElementById("tap-status");
  const body = document.querySelector("#tap tbody");
  body.replaceChildren();
  status.textContent = `tapping ${workload} for ${seconds} s…`;
  status.setAttribute("data-state", "running");
  let events = 0;
  try {
    const q = new URLSearchParams({ workload, seconds: String(seconds) });
    const r = await fetch(`/tap?${q}`);
    if (!r.ok) throw new Error(`${r.status} ${(await r.text()).trim()}`);
    const reader = r.body.getReader(), text = new TextDecoder();
    let rest = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      rest += text.decode(value, { stream: true });
      const lines = rest.split("\n");
      rest = lines.pop();
      for (const line of lines.filter((l) => l.trim())) {
        const t = JSON.parse(line);
        if (t.error) { status.textContent = t.error; continue; }
        events += 1;
        body.prepend(tapRow(t));
        while (body.children.length > TAP_ROWS) body.lastChild.remove();
      }
    }
    status.textContent = `tap of ${workload} ended: ${events} events`;
    status.setAttribute("data-state", "ended");
  } catch (e) {
    status.textContent = `tap failed: ${e.message}`;
    status.setAttribute("data-state", "failed");
    status.className = "bad";
  }
}

document.getElementById("tap-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  tap(document.getElementById("tap-workload").value, +document.getElementById("tap-seconds").value);
});

refresh();
setInterval(refresh, REFRESH_MS);
const asked = new URLSearchParams(location.search);
if (asked.get("tap")) {
  document.getElementById("tap-workload").value = asked.get("tap");
  tap(asked.get("tap"), Math.min(Math.max(+asked.get("seconds") || 30, 1), 600));
}
