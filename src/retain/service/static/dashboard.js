// The live page of retain serve: polls /state every two seconds and draws it with plain SVG and HTML.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const COLOURS = ["#2b6cb0", "#2f855a", "#805ad5", "#c05621", "#b7791f", "#00838f", "#6b46c1", "#9c4221"];
const colour = (v) => COLOURS[(v || 0) % COLOURS.length];
const pct = (a) => (a === null || a === undefined ? "–" : (100 * a).toFixed(1) + "%");
let metric = "accuracy"; // the store's metric: a classifier's accuracy, a translation store's chrF++ (0-1 in /state)
const score = (a) => (metric === "accuracy" || a === null || a === undefined ? pct(a) : (100 * a).toFixed(1));
let latest = null; // the last /state, for the confirmation dialog

function el(name, attrs, text) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

// An HTML element (the tables' rows, cells and buttons), as el makes SVG ones.
function html(name, attrs = {}, text) {
  const node = document.createElement(name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function clear(svg) { while (svg.firstChild) svg.removeChild(svg.firstChild); }

// Time ticks a round step apart (seconds), at most eight across the span.
const STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800,
  604800];

function ticks(t0, t1) {
  const step = STEPS.find((s) => (t1 - t0) / s <= 8) || STEPS[STEPS.length - 1];
  const out = [];
  for (let t = Math.ceil(t0 / step) * step; t <= t1; t += step) out.push(t);
  const when = (t) => {
    const d = new Date(1000 * t);
    const clock = d.toLocaleTimeString([], step < 60 ? { hour: "2-digit", minute: "2-digit", second: "2-digit" }
      : { hour: "2-digit", minute: "2-digit" });
    return t1 - t0 > 86400 ? `${d.toLocaleDateString([], { month: "short", day: "numeric" })} ${clock}` : clock;
  };
  return out.map((t) => [t, when(t)]);
}

function timeline(state) {
  const svg = document.getElementById("timeline");
  clear(svg);
  const W = 900, H = 250, L = 56, R = 8, B = 38, T = 8;
  const y = (a) => T + (1 - a) * (H - T - B);
  for (const a of [0, 0.25, 0.5, 0.75, 1]) {
    svg.appendChild(el("line", { x1: L, x2: W - R, y1: y(a), y2: y(a), stroke: "#e3e7ef" }));
    svg.appendChild(el("text", { x: L - 4, y: y(a) + 4, "font-size": 11, fill: "#667", "text-anchor": "end" },
      (100 * a) + "%"));
  }
  svg.appendChild(el("text", { x: 12, y: (H - B) / 2, "font-size": 11, fill: "#445", "text-anchor": "middle",
    transform: `rotate(-90 12 ${(H - B) / 2})` }, `${metric}, last ${state.window} labelled`));
  const points = state.prequential;
  if (!points.length) {
    svg.appendChild(el("text", { x: W / 2, y: H / 2, "text-anchor": "middle", fill: "#667" },
      "no labelled predictions yet: send feedback with the id of a prediction"));
    return;
  }
  // The axis spans the feedback shown (the chosen span of it), and promotions or alarms since.
  const t0 = points[0].at;
  const events = state.events.filter((e) => e.at >= t0);
  const t1 = Math.max(points[points.length - 1].at, ...events.map((e) => e.at), t0 + 10);  // ten seconds at least: ticks to read
  const x = (t) => L + (W - L - R) * (t - t0) / (t1 - t0);
  for (const [t, label] of ticks(t0, t1)) {
    svg.appendChild(el("line", { x1: x(t), x2: x(t), y1: H - B, y2: H - B + 4, stroke: "#99a" }));
    svg.appendChild(el("text", { x: x(t), y: H - B + 16, "font-size": 11, fill: "#667", "text-anchor": "middle" },
      label));
  }
  svg.appendChild(el("text", { x: (L + W) / 2, y: H - 4, "font-size": 11, fill: "#445", "text-anchor": "middle" },
    "time the feedback arrived (this browser's clock)"));
  for (const e of events) {
    const kind = e.kind === "drift" ? "drift" : e.detail.startsWith("rollback") ? "rollback" : "promote";
    const stroke = { drift: "#b00020", rollback: "#c05621", promote: "#2f855a" }[kind];
    const line = el("line", { x1: x(e.at), x2: x(e.at), y1: T, y2: H - B, stroke, "stroke-dasharray": "4 3",
      class: `event ${kind}` });
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

// One row per name: the whole name (wrapped when long), a bar, the figure.
function bars(id, values, highlightLast) {
  const box = document.getElementById(id);
  const names = Object.keys(values);
  if (!names.length) {
    const empty = document.createElement("div");
    empty.className = "empty";
    empty.textContent = "nothing yet";
    box.replaceChildren(empty);
    return;
  }
  box.replaceChildren(...names.map((name, i) => {
    const row = document.createElement("div");
    row.className = highlightLast && i === names.length - 1 ? "row newest" : "row";
    row.title = `${name}: ${score(values[name])}`;
    const label = document.createElement("span");
    label.className = "name";
    label.textContent = name;
    const track = document.createElement("span");
    track.className = "track";
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.width = `${Math.max(0, Math.min(1, values[name])) * 100}%`;
    track.appendChild(fill);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = score(values[name]);
    row.append(label, track, value);
    return row;
  }));
}

let drawn = ""; // what the versions table shows: redrawn only when it changes, so a button is not replaced under a click

function versions(state) {
  const key = JSON.stringify([state.served, state.versions, metric]);
  if (key === drawn) return;
  drawn = key;
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
      button.addEventListener("click", () => ask(
        `Promote version ${v.version} (${v.decision}: ${v.reason})? It answers every prediction from now on, ` +
        `in place of version ${state.served ?? "none"}.`, `/promote/${v.version}`));
      cell.appendChild(button);
    }
    row.appendChild(cell);
    body.appendChild(row);
  }
}

function show(state) {
  latest = state;
  metric = state.metric;
  for (const node of document.querySelectorAll(".metric")) node.textContent = state.metric;
  for (const node of document.querySelectorAll(".answers")) node.textContent = state.answers;
  document.getElementById("served").textContent = state.served === null ? "no version" : `version ${state.served}`;
  document.getElementById("accuracy").textContent = state.labelled ? pct(state.correct / state.labelled) : "–";
  document.getElementById("labelled").textContent = state.labelled;
  document.getElementById("queue").textContent = state.queue;
  document.getElementById("waiting").textContent = `${state.pending_rows ?? "–"} / ${state.quarantined_rows}`;
  const sh = state.shadow;
  document.getElementById("shadow").textContent = sh
    ? `version ${sh.version}: ` + (sh.rows ? `${pct(sh.accuracy)} right on ${sh.rows} live rows labelled since, ` +
      `the served version ${pct(sh.promoted_accuracy)}` : "no live row labelled yet") +
      (sh.rows < sh.needed ? ` (judged from ${sh.needed})` : "")
    : "none (a kept candidate answers here beside the served version)";
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
  aside(state);
  recent(state.recent);
}

// A detection store's latest prediction: the image as sent, and each box it answered with its class and score
// (drawn again only when a newer prediction came).
let recentAt = null;
function recent(shown) {
  document.getElementById("recent-section").hidden = !shown;
  if (!shown || shown.at === recentAt) return;
  recentAt = shown.at;
  const mime = shown.image.startsWith("/9j/") ? "image/jpeg" : "image/png";
  const picture = new Image();
  picture.onload = () => {
    const w = picture.naturalWidth, h = picture.naturalHeight;
    const svg = document.getElementById("recent");
    clear(svg);
    svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
    svg.appendChild(el("image", { href: picture.src, x: 0, y: 0, width: w, height: h }));
    const size = Math.max(w, h) / 30; // labels a thirtieth of the image, whatever its pixels
    const names = [...new Set(shown.boxes.map((b) => b.label))].sort();
    for (const b of shown.boxes) {
      const [x, y, bw, bh] = b.box;
      const c = colour(names.indexOf(b.label));
      svg.appendChild(el("rect", { class: "box", x, y, width: bw, height: bh, stroke: c }));
      svg.appendChild(el("text", { x, y: Math.max(size, y - size / 4), fill: c, "font-size": size, "stroke-width": size / 6 },
        `${b.label} ${(100 * b.score).toFixed(0)}%`));
    }
    document.getElementById("recent-note").textContent =
      `(version ${shown.version}, ${new Date(1000 * shown.at).toLocaleTimeString()}: ${shown.boxes.length} boxes)`;
  };
  picture.src = `data:${mime};base64,${shown.image}`;
}

// The rows the served version did not learn: a kept candidate's (pending, held, dropped) and the quarantined.
function aside(state) {
  const body = document.querySelector("#aside tbody");
  const key = JSON.stringify([state.waiting, state.quarantine]);
  if (body.dataset.key === key) return;  // redrawn only when it changes: a button stays under the pointer
  body.dataset.key = key;
  while (body.firstChild) body.removeChild(body.firstChild);
  const row = (cells, buttons) => {
    const tr = html("tr");
    for (const c of cells) tr.appendChild(html("td", {}, String(c)));
    const td = html("td");
    for (const [label, text, path] of buttons) {
      const button = html("button", { type: "button" }, label);
      button.addEventListener("click", () => ask(text, path, label));
      td.appendChild(button);
    }
    tr.appendChild(td);
    body.appendChild(tr);
  };
  for (const w of state.waiting) row([w.name, w.rows, `${w.status} (kept with version ${w.version})`, w.source], []);
  for (const q of state.quarantine) {
    row([q.name, q.rows, "quarantined by the gate", ""], [
      ["Release", `Release the ${q.rows} rows of ${q.name}? The next update learns them.`,
        `/quarantine/${encodeURIComponent(q.name)}/release`],
      ["Drop", `Drop the ${q.rows} rows of ${q.name}? They are deleted; their review file is kept.`,
        `/quarantine/${encodeURIComponent(q.name)}/drop`]]);
  }
  if (!body.firstChild) row(["none", "", "every row a version learned is learned by the served version", ""], []);
}

// Changing the served version changes every client's answers: say what will happen, and ask first.
function ask(text, path, label) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-yes").textContent = label || "Change the served version";
  dialog.returnValue = "";
  dialog.onclose = () => { if (dialog.returnValue === "yes") change(path); };
  dialog.showModal();
}

function rollback() {
  const served = latest && latest.versions.find((v) => v.version === latest.served);
  const parent = served ? served.parent : null;
  ask(parent === null || parent === undefined
    ? `Version ${latest ? latest.served : "?"} has no parent: the service will say there is nothing to roll back to.`
    : `Roll back to version ${parent}? It answers every prediction from now on, in place of version ${served.version}.`,
  "/rollback");
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
  const done = body.promoted !== undefined ? `version ${body.promoted} is promoted`
    : body.released ? `${body.released} released: its rows wait as ${body.waiting_as}` : `${body.dropped} dropped`;
  status.textContent = response.ok ? done : `${response.status}: ${
    typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail)}`;
  refresh();
}

async function refresh() {
  const status = document.getElementById("status");
  const span = document.getElementById("span").value;
  try {
    const response = await fetch(span ? `/state?span=${span}` : "/state");
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
document.getElementById("rollback").addEventListener("click", rollback);
document.getElementById("span").addEventListener("change", refresh);
refresh();
setInterval(refresh, 2000);
