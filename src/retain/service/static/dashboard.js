// The live page of retain serve: polls /state every two seconds and draws it with plain SVG.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const COLOURS = ["#2b6cb0", "#2f855a", "#805ad5", "#c05621", "#b7791f", "#00838f", "#6b46c1", "#9c4221"];
const colour = (v) => COLOURS[(v || 0) % COLOURS.length];
const pct = (a) => (a === null || a === undefined ? "–" : (100 * a).toFixed(1) + "%");
let metric = "accuracy"; // the store's metric: a classifier's accuracy, a translation store's chrF++ (0-1 in /state)
const score = (a) => (metric === "accuracy" || a === null || a === undefined ? pct(a) : (100 * a).toFixed(1));

function el(name, attrs, text) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function clear(svg) { while (svg.firstChild) svg.removeChild(svg.firstChild); }

function timeline(state) {
  const svg = document.getElementById("timeline");
  clear(svg);
  const W = 900, H = 220, L = 36, B = 20, T = 8;
  for (const a of [0, 0.5, 1]) {
    const y = T + (1 - a) * (H - T - B);
    svg.appendChild(el("line", { x1: L, x2: W, y1: y, y2: y, stroke: "#e3e7ef" }));
    svg.appendChild(el("text", { x: 2, y: y + 4, "font-size": 11, fill: "#667" }, (100 * a) + "%"));
  }
  const points = state.prequential;
  if (!points.length) {
    svg.appendChild(el("text", { x: W / 2, y: H / 2, "text-anchor": "middle", fill: "#667" },
      "no labelled predictions yet: send feedback with the id of a prediction"));
    return;
  }
  const times = points.map((p) => p.at).concat(state.events.map((e) => e.at));
  const t0 = Math.min(...times), t1 = Math.max(...times, t0 + 1);
  const x = (t) => L + (W - L - 4) * (t - t0) / (t1 - t0);
  const y = (a) => T + (1 - a) * (H - T - B);
  for (const e of state.events) {
    const kind = e.kind === "drift" ? "drift" : e.detail.startsWith("rollback") ? "rollback" : "promote";
    const stroke = { drift: "#b00020", rollback: "#c05621", promote: "#2f855a" }[kind];
    const line = el("line", { x1: x(e.at), x2: x(e.at), y1: T, y2: H - B, stroke, "stroke-dasharray": "4 3" });
    line.appendChild(el("title", {}, `${kind} · version ${e.version}: ${e.detail}`));
    svg.appendChild(line);
  }
  for (let i = 1; i < points.length; i++) {
    const a = points[i - 1], b = points[i];
    svg.appendChild(el("line", { x1: x(a.at), y1: y(a.accuracy), x2: x(b.at), y2: y(b.accuracy),
      stroke: colour(b.version), "stroke-width": 2 }));
  }
  for (const p of points) {
    const dot = el("circle", { cx: x(p.at), cy: y(p.accuracy), r: 2.5, fill: colour(p.version) });
    dot.appendChild(el("title", {}, `version ${p.version}: ${pct(p.accuracy)}`));
    svg.appendChild(dot);
  }
}

function bars(id, values, highlightLast) {
  const svg = document.getElementById(id);
  clear(svg);
  const names = Object.keys(values);
  if (!names.length) {
    svg.appendChild(el("text", { x: 220, y: 100, "text-anchor": "middle", fill: "#667" }, "nothing yet"));
    return;
  }
  const W = 440, H = 200, B = 34, T = 14, gap = 4;
  const w = Math.max(4, (W - 8) / names.length - gap);
  names.forEach((name, i) => {
    const a = values[name], h = a * (H - T - B);
    const left = 4 + i * (w + gap);
    const fill = highlightLast && i === names.length - 1 ? "#2f855a" : "#2b6cb0";
    const bar = el("rect", { x: left, y: H - B - h, width: w, height: h, fill });
    bar.appendChild(el("title", {}, `${name}: ${score(a)}`));
    svg.appendChild(bar);
    svg.appendChild(el("text", { x: left + w / 2, y: H - B - h - 3, "text-anchor": "middle", "font-size": 10 },
      (100 * a).toFixed(0)));
    svg.appendChild(el("text", { x: left + w / 2, y: H - B + 12, "text-anchor": "middle", "font-size": 10,
      fill: "#445" }, name.replace("batch-", "").slice(0, 10)));
  });
}

function versions(state) {
  const body = document.querySelector("#versions tbody");
  body.replaceChildren();
  for (const v of state.versions.slice().reverse()) {
    const row = document.createElement("tr");
    if (v.version === state.served) row.className = "promoted";
    const acc = Object.entries(v.accuracy).map(([b, a]) => `${b.replace("batch-", "")}: ${score(a)}`).join(", ");
    for (const text of [v.version, v.parent ?? "", v.decision + (v.version === state.served ? " (serving)" : ""),
      acc, v.reason]) {
      const cell = document.createElement("td");
      cell.textContent = String(text);
      row.appendChild(cell);
    }
    const cell = document.createElement("td");
    if (v.version !== state.served) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = "Promote";
      button.addEventListener("click", () => change(`/promote/${v.version}`));
      cell.appendChild(button);
    }
    row.appendChild(cell);
    body.appendChild(row);
  }
}

function show(state) {
  metric = state.metric;
  for (const node of document.querySelectorAll(".metric")) node.textContent = state.metric;
  for (const node of document.querySelectorAll(".answers")) node.textContent = state.answers;
  document.getElementById("served").textContent = state.served === null ? "no version" : `version ${state.served}`;
  document.getElementById("accuracy").textContent = state.labelled ? pct(state.correct / state.labelled) : "–";
  document.getElementById("labelled").textContent = state.labelled;
  document.getElementById("queue").textContent = state.queue;
  const lat = state.latency_ms;
  document.getElementById("latency").textContent =
    lat.p50 === null ? "–" : `${lat.p50.toFixed(1)} / ${lat.p99.toFixed(1)} ms`;
  const last = state.last_update;
  document.getElementById("last-update").textContent = last
    ? `${last.trigger || "asked"}: ${last.rows} rows → ${last.version === null ? "not learned" : "version " + last.version}` +
      ` (${last.reason})`
    : "none yet";
  timeline(state);
  const served = state.versions.find((v) => v.version === state.served);
  bars("batches", served ? served.accuracy : {}, true);
  bars("classes", state.per_class, false);
  versions(state);
}

async function change(path) {
  const token = document.getElementById("token").value;
  sessionStorage.setItem("retain-token", token);
  const status = document.getElementById("status");
  const response = await fetch(path, { method: "POST", headers: { Authorization: `Bearer ${token}` } });
  const body = await response.json();
  status.dataset.kind = "change";  // shown until the next change, or for ten seconds
  setTimeout(() => { status.dataset.kind = ""; }, 10000);
  status.className = response.ok ? "" : "error";
  status.textContent = response.ok ? `version ${body.promoted} is promoted` : `${response.status}: ${
    typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail)}`;
  refresh();
}

async function refresh() {
  const status = document.getElementById("status");
  try {
    const response = await fetch("/state");
    if (!response.ok) throw new Error(`/state answered ${response.status}`);
    show(await response.json());
    if (status.dataset.kind !== "change") {
      status.className = "";
      status.textContent = `updated ${new Date().toLocaleTimeString()}`;
    }
  } catch (err) {
    status.className = "error";
    status.textContent = `cannot reach the service (${err.message}); retrying`;
  }
}

document.getElementById("token").value = sessionStorage.getItem("retain-token") || "";
document.getElementById("rollback").addEventListener("click", () => change("/rollback"));
refresh();
setInterval(refresh, 2000);
