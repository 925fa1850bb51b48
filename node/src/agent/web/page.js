"use strict";
// Polls /v1/view and redraws. The token (needed when the agent serves on a non-loopback
// address) comes from the page's own ?token=, and goes with every poll.
const token = new URLSearchParams(location.search).get("token");
const POLL_MS = 2000;

function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("data-")) el.setAttribute(k, v);
    else el[k] = v;
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const cores = (m) => (m / 1000).toFixed(m % 1000 === 0 ? 0 : 1);
function bytes(b) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (b >= 1024 && i < units.length - 1) { b /= 1024; i++; }
  return (b >= 10 || i === 0 ? b.toFixed(0) : b.toFixed(1)) + " " + units[i];
}
const pct = (part, whole) => (whole > 0 ? Math.min(100, (100 * part) / whole) : 0);
function ago(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m";
  return Math.floor(s / 3600) + "h" + String(Math.floor((s % 3600) / 60)).padStart(2, "0");
}
const clock = (ms) => new Date(ms).toLocaleTimeString([], { hour12: false });

function bar(t, fmt, unit = "") {
  const used = t.used == null ? null : t.used;
  return [
    h("div", { class: "bar", title: `reserved ${fmt(t.reserved)}` + (used == null ? "" : `, in use ${fmt(used)}`) },
      h("span", { class: "reserved", style: `width:${pct(t.reserved, t.capacity)}%` }),
      used == null ? null : h("span", { class: "used", style: `width:${pct(used, t.capacity)}%` })),
    h("div", { class: "figures" },
      `${used == null ? "?" : fmt(used)} used · ${fmt(t.reserved)} reserved · of ${fmt(t.capacity)}${unit}`),
  ];
}

function nodeCard(n, self) {
  const labels = Object.entries(n.labels).map(([k, v]) => h("span", { class: "badge", text: `${k}=${v}` }));
  return h("article", { class: "node", "data-node": n.id, "data-state": n.state },
    h("div", { class: "title" },
      h("span", { class: "name", text: n.id + (n.id === self ? " (this node)" : "") }),
      h("span", { class: "badge " + n.state, text: n.state + (n.departure ? ` · ${n.departure}` : "") })),
    h("div", { class: "meta", text: [n.site ? `site ${n.site}` : null, n.arch, `${n.replicas} replica${n.replicas === 1 ? "" : "s"}`].filter(Boolean).join(" · ") }),
    h("div", { class: "usage" }, h("span", { text: "CPU" }), bar(n.cpu_m, cores, " cores"),
      h("span", { text: "Memory" }), bar(n.memory_bytes, bytes)),
    n.store_error ? h("div", { class: "badge bad", text: "store: " + n.store_error }) : null,
    labels.length ? h("div", { class: "labels" }, labels) : null);
}

function progress(done, total) {
  return h("span", { class: "progress" }, h("div", { class: "bar" },
    h("span", { class: "used", style: `width:${pct(done, total)}%` })));
}

function workloadRow(w) {
  const r = w.rollout;
  const rollout = !r ? "—" : [
    progress(r.updated, w.desired),
    `${r.updated}/${w.desired} updated`,
    r.pending ? `, ${r.pending} pending` : "",
    r.failing ? h("span", { class: "badge bad", text: `${r.failing} failing` }) : "",
    r.paused ? h("span", { class: "badge warn", text: "paused" }) : "",
    r.canary != null ? h("span", { class: "badge", text: `canary ${r.canary}` }) : "",
  ];
  const health = w.healthy >= w.desired ? "ok" : w.healthy > 0 ? "warn" : "bad";
  return h("tr", { "data-workload": w.name },
    h("td", { text: w.name }), h("td", { class: "num", text: w.revision }),
    h("td", { class: "num", text: w.desired }), h("td", { class: "num", text: w.running }),
    h("td", {}, h("span", { class: "badge " + health, text: `${w.healthy}/${w.desired}` })),
    h("td", {}, rollout), h("td", { class: "muted", text: w.runtime }));
}

function replicaRow(r) {
  // A down node's replicas are its last word, not something running: shown apart.
  const stale = r.node_state === "down";
  const state = stale ? "" : r.state === "Running" ? (r.healthy ? "ok" : "warn") : r.state === "Unplaced" || r.state === "CrashLoop" ? "bad" : "";
  const label = stale ? `was ${r.state}` : r.state + (r.state === "Running" && !r.healthy ? " (unhealthy)" : "");
  const node = r.node == null ? h("span", { class: "muted", text: "unplaced" })
    : [r.node, r.node_state && r.node_state !== "alive" ? h("span", { class: "badge " + r.node_state, text: r.node_state }) : null];
  return h("tr", { "data-replica": `${r.workload}/${r.index}`, "data-node": r.node || "", class: stale ? "stale" : null },
    h("td", { text: `${r.workload}/${r.index}` }), h("td", {}, node),
    h("td", { title: r.reason || "" }, h("span", { class: "badge " + state, text: label }),
      r.reason ? h("div", { class: "muted", text: r.reason }) : null),
    h("td", { class: "num", text: r.restarts }), h("td", { class: "num", text: r.revision }));
}

function leaseRow(l) {
  return h("tr", { "data-lease": l.name },
    h("td", { text: l.name }),
    h("td", {}, l.holder || h("span", { class: "muted", text: "none" }), l.here === "holder" ? h("span", { class: "badge ok", text: "here" }) : null),
    h("td", { class: "num", text: l.epoch }), h("td", { class: "num", text: l.fencing_token }),
    h("td", { class: "num", text: l.expires_in_ms > 0 ? ago(l.expires_in_ms) : "expired" }));
}

function eventKind(text) {
  if (/\bdown\b|failover|failed|crash/i.test(text)) return "bad";
  if (/restart|suspect|back.?off/i.test(text)) return "warn";
  if (/lease|elect|voter|holder/i.test(text)) return "accent";
  return "";
}

function fill(tbody, rows, columns, empty) {
  tbody.replaceChildren(...(rows.length ? rows : [h("tr", {}, h("td", { class: "empty", colSpan: columns, text: empty }))]));
}

function render(v) {
  document.getElementById("seen-by").textContent = `the fleet as ${v.node} sees it`;
  const down = v.nodes.filter((n) => n.state === "down").length;
  document.getElementById("nodes-count").textContent =
    `${v.nodes.length} total` + (down ? `, ${down} down` : "");
  document.getElementById("nodes").replaceChildren(...v.nodes.map((n) => nodeCard(n, v.node)));
  fill(document.querySelector("#workloads tbody"), v.workloads.map(workloadRow), 7, "no workloads");
  fill(document.querySelector("#replicas tbody"), v.replicas.map(replicaRow), 5, "no replicas");
  fill(document.querySelector("#leases tbody"), v.leases.map(leaseRow), 5, "no leases");
  document.getElementById("voters").textContent = v.voters.length
    ? "Voters: " + v.voters.map(([n, s]) => (s === "alive" ? n : `${n} (${s})`)).join(", ")
    : "No voter set yet.";
  const events = v.events.map((e) => h("li", { class: eventKind(e.text) },
    h("time", { text: clock(e.at_ms), title: `${ago(v.now_ms - e.at_ms)} ago on ${e.node}` }),
    h("span", { text: e.text })));
  document.getElementById("events").replaceChildren(...(events.length ? events : [h("li", { class: "empty", text: "no events yet" })]));
}

function status(ok, text) {
  const el = document.getElementById("status");
  el.dataset.ok = String(ok);
  el.textContent = text;
}

async function poll() {
  try {
    const response = await fetch("/v1/view", {
      cache: "no-store",
      headers: token ? { Authorization: "Bearer " + token } : {},
    });
    if (!response.ok) throw new Error(`${response.status}: ${(await response.text()).trim()}`);
    render(await response.json());
    status(true, "updated " + clock(Date.now()));
  } catch (e) {
    status(false, "cannot reach the agent: " + e.message);
  }
  setTimeout(poll, POLL_MS);
}
poll();
