// pgesam-live's page: the timbre map, live. Plain JavaScript, no build step, nothing from a CDN.
// Every gesture becomes a REPL line sent over the socket ({"cmd": LINE}); the instrument
// journals it with src "web". The server pushes {"state": ..., "status": ...} (no echo of
// this page's own moves), {"message": ...}, and binary PCM frames while listening.
"use strict";

const KEY_ROW = "awsedftgyhujk";   // semitones 0..12 above the base octave
const BASE_PITCH = 60;             // C4
const OCTAVE_SHIFT_MAX = 3;
const NOTE_NAMES = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"];
const OWN_MOVE_HOLD_MS = 350;      // a push this soon after our own move keeps our point
const MAX_LOG_LINES = 200;
const LISTEN_TARGET_S = 0.08;      // the worklet's jitter buffer

const $ = (id) => document.getElementById(id);
const svgNS = "http://www.w3.org/2000/svg";
const token = document.querySelector('meta[name="pgesam-token"]').content;
const q = token ? `?token=${encodeURIComponent(token)}` : "";
const mapEl = $("map");

const S = {
  ws: null, connected: false, retryMs: 500,
  region: readRegion(), mapData: null, state: null, status: "",
  pushAt: 0, own: null,               // own = {x, y, t}: our last move
  octave: 0, upper: 0, held: new Map(), // key down -> its note's id
  keyNotes: new Map(),                  // id -> {pitch, answered, ok, up}
  dragging: false, dragPending: null, lastSent: null,
  mapKey: "", seqKey: "", nextId: 1,
  listen: null,                       // {ctx, node, sampleRate, channels, ...}
  hello: null, rttMs: null,
};

function readRegion() {
  const d = mapEl.dataset;
  const r = { xMin: +d.xMin, xMax: +d.xMax, yMin: +d.yMin, yMax: +d.yMax };
  return Number.isFinite(r.xMin) ? r : { xMin: -1, xMax: 1, yMin: -1, yMax: 1 };
}

function noteName(p) { return NOTE_NAMES[((p % 12) + 12) % 12] + (Math.floor(p / 12) - 1); }
function sign2(v) { return (v >= 0 ? "+" : "-") + Math.abs(v).toFixed(2); }
function num(v, digits) { return String(+v.toFixed(digits)); }

// -- the socket -----------------------------------------------------------------------------

function connect() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${scheme}//${location.host}/ws${q}`);
  ws.binaryType = "arraybuffer";
  S.ws = ws;
  ws.onopen = () => {
    S.connected = true; S.retryMs = 500;
    $("conn").textContent = "connected"; $("conn").className = "on";
    if (S.listen) send({ listen: true });
  };
  ws.onclose = () => {
    S.connected = false;
    $("conn").textContent = "disconnected: retrying"; $("conn").className = "off";
    releaseAll(false);
    setTimeout(connect, S.retryMs);
    S.retryMs = Math.min(5000, S.retryMs * 2);
  };
  ws.onmessage = (ev) => {
    if (typeof ev.data !== "string") { onAudio(ev.data); return; }
    let msg;
    try { msg = JSON.parse(ev.data); } catch (e) { log(`bad message from the instrument: ${e}`, "error"); return; }
    onMessage(msg);
  };
}

function send(obj) {
  if (!S.ws || S.ws.readyState !== WebSocket.OPEN) return false;
  S.ws.send(JSON.stringify(obj));
  return true;
}

// A line, as the REPL takes it. `quiet`: gestures are not echoed in the log (their errors are).
function sendLine(line, quiet, id) {
  if (!send(quiet ? { cmd: line, id: id || "g" } : { cmd: line })) {
    log(`not connected: ${line} not sent`, "error"); return;
  }
  if (!quiet) log(`> ${line}`, "sent");
}

const pending = new Map();   // id -> callback for the page's own queries
function query(line, cb) {
  const id = `q${S.nextId++}`;
  pending.set(id, cb);
  send({ cmd: line, id });
}

function onMessage(msg) {
  if (typeof msg.id === "string" && (msg.id === "g" || msg.id.startsWith("key:"))) {
    // a gesture's answer: said only when refused
    if ("error" in msg) log(`error: ${msg.error}`, "error");
    const note = S.keyNotes.get(msg.id);
    if (note) keyNoteAnswered(msg.id, note, !("error" in msg));
    return;
  }
  if (msg.id !== undefined && pending.has(msg.id)) {
    const cb = pending.get(msg.id); pending.delete(msg.id); cb(msg); return;
  }
  if ("state" in msg) { onState(msg.state, msg.status); return; }
  if ("hello" in msg) {
    S.hello = msg.hello;
    $("model").textContent = `model ${msg.hello.model}`;
    if (msg.hello.listen) $("listen").title = msg.hello.listen;
    return;
  }
  if ("message" in msg) { log(msg.message, "message"); return; }
  if ("pong" in msg) { S.rttMs = performance.now() - msg.pong; return; }
  if ("listening" in msg) { return; }
  if ("error" in msg) { log(`error: ${msg.error}`, "error"); return; }
  // An accepted command is answered with its journal line: said only when it differs.
  if ("reply" in msg) { if (msg.reply && msg.reply !== msg.cmd) log(msg.reply, "reply"); }
}

function log(text, kind) {
  const box = $("log");
  for (const line of String(text).split("\n")) {
    const div = document.createElement("div");
    div.className = kind || "reply";
    div.textContent = line;
    box.appendChild(div);
  }
  while (box.childNodes.length > MAX_LOG_LINES) box.removeChild(box.firstChild);
  box.scrollTop = box.scrollHeight;
}

// -- state ----------------------------------------------------------------------------------

function onState(state, status) {
  S.state = state; S.status = status || ""; S.pushAt = performance.now();
  if (S.own && S.pushAt - S.own.t > OWN_MOVE_HOLD_MS) S.own = null;
  drawCursor(); renderStatus();
  const mapKey = JSON.stringify([state.patch, state.bookmarks]);
  if (mapKey !== S.mapKey) { S.mapKey = mapKey; loadMap(); }
  const seqKey = JSON.stringify([state.patch, state.sequences]);
  if (seqKey !== S.seqKey) { S.seqKey = seqKey; loadSeqs(); }
}

function shownPoint() {
  if (S.own) return [S.own.x, S.own.y];
  const p = S.state && S.state.point;
  return Array.isArray(p) ? [+p[0], +p[1]] : null;
}

function renderStatus() {
  let text = S.status || "waiting for the instrument";
  if (S.own) {   // our own move is not echoed: show it in the line the instrument sent
    text = text.replace(/\bat [^|]*?\([+-]\d+\.\d+, [+-]\d+\.\d+\)/,
                        `at (${sign2(S.own.x)}, ${sign2(S.own.y)})`);
  }
  $("status").textContent = text;
}

function loadMap() {
  fetch(`map.json${q}`).then((r) => r.json()).then((data) => {
    S.mapData = data;
    if (data.region) {
      const r = data.region;
      S.region = { xMin: r.x_min, xMax: r.x_max, yMin: r.y_min, yMax: r.y_max };
      mapEl.dataset.xMin = r.x_min; mapEl.dataset.xMax = r.x_max;
      mapEl.dataset.yMin = r.y_min; mapEl.dataset.yMax = r.y_max;
    }
    if (data.playable_range) {
      $("pitch").min = data.playable_range[0]; $("pitch").max = data.playable_range[1];
    }
    drawMap(); drawCursor();
  }).catch((e) => log(`map.json: ${e}`, "error"));
}

function loadSeqs() {
  query("seqs", (msg) => {
    const ul = $("seqs"); ul.textContent = "";
    const data = msg.data || { names: [], running: [] };
    if (!data.names.length) {
      const li = document.createElement("li"); li.className = "dim";
      li.textContent = "none: load a patch, or seq NAME \"NOTES\" STEP"; ul.appendChild(li);
      return;
    }
    for (const name of data.names) {
      const running = data.running.includes(name);
      const li = document.createElement("li");
      li.className = running ? "running" : "";
      li.dataset.name = name;
      const span = document.createElement("span"); span.className = "name"; span.textContent = name;
      const b = document.createElement("button");
      b.textContent = running ? "stop" : "start";
      b.className = running ? "stop" : "start";
      b.addEventListener("click", () => sendLine(`${running ? "stop" : "start"} ${name}`));
      li.append(span, b); ul.appendChild(li);
    }
  });
}

// -- the map --------------------------------------------------------------------------------

function toView(x, y) {   // latent -> viewBox 0..1000 (y up)
  const r = S.region;
  return [(x - r.xMin) / (r.xMax - r.xMin) * 1000, (r.yMax - y) / (r.yMax - r.yMin) * 1000];
}

function fromEvent(ev) {  // a pointer event -> latent (clamped to the map)
  const rect = mapEl.getBoundingClientRect();
  const u = Math.min(1, Math.max(0, (ev.clientX - rect.left) / rect.width));
  const v = Math.min(1, Math.max(0, 1 - (ev.clientY - rect.top) / rect.height));
  const r = S.region;
  return [r.xMin + u * (r.xMax - r.xMin), r.yMin + v * (r.yMax - r.yMin)];
}

function el(name, attrs, parent) {
  const e = document.createElementNS(svgNS, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}

function drawMap() {
  const data = S.mapData; if (!data) return;
  const grid = $("grid"), dots = $("dots"), stars = $("stars");
  grid.textContent = ""; dots.textContent = ""; stars.textContent = "";
  const [ox, oy] = toView(0, 0);
  if (ox >= 0 && ox <= 1000) el("line", { x1: ox, y1: 0, x2: ox, y2: 1000, class: "axis" }, grid);
  if (oy >= 0 && oy <= 1000) el("line", { x1: 0, y1: oy, x2: 1000, y2: oy, class: "axis" }, grid);
  const colours = data.families || {};
  for (const p of data.training_points) {
    const [cx, cy] = toView(p.x, p.y);
    const c = el("circle", { cx, cy, r: 9, class: "dot", fill: colours[p.family] || "#555" }, dots);
    c.dataset.family = p.family;
    el("title", {}, c).textContent = `${p.label || p.name} (${p.family})`;
  }
  const marks = (S.state && S.state.bookmarks) || {};
  for (const [name, xy] of Object.entries(data.points || {})) {
    const [cx, cy] = toView(xy[0], xy[1]);
    const g = el("g", { class: "point", "data-name": name }, stars);
    el("polygon", { points: starPoints(cx, cy, 17, 7), class: name in marks ? "star mark" : "star" }, g);
    el("text", { x: cx + 18, y: cy + 24, class: "label" }, g).textContent = name;
  }
  const legend = $("legend"); legend.textContent = "";
  for (const [fam, colour] of Object.entries(colours)) {
    const li = document.createElement("li");
    const sw = document.createElement("span"); sw.className = "sw"; sw.style.background = colour;
    li.append(sw, document.createTextNode(fam.replace("_", " ")));
    legend.appendChild(li);
  }
  const r = S.region;
  $("edges").textContent = `x ${sign2(r.xMin)} .. ${sign2(r.xMax)} · y ${sign2(r.yMin)} .. ${sign2(r.yMax)} ` +
    `(the training instruments' region; a pad's 0..1 and MIDI CC map onto it)`;
}

function starPoints(cx, cy, outer, inner) {
  const pts = [];
  for (let i = 0; i < 10; i++) {
    const a = -Math.PI / 2 + i * Math.PI / 5, rad = i % 2 ? inner : outer;
    pts.push(`${(cx + rad * Math.cos(a)).toFixed(1)},${(cy + rad * Math.sin(a)).toFixed(1)}`);
  }
  return pts.join(" ");
}

function drawCursor() {
  const g = $("cursor"); g.textContent = "";
  const p = shownPoint(); if (!p) return;
  const r = S.region;
  const inside = p[0] >= r.xMin && p[0] <= r.xMax && p[1] >= r.yMin && p[1] <= r.yMax;
  const x = Math.min(r.xMax, Math.max(r.xMin, p[0])), y = Math.min(r.yMax, Math.max(r.yMin, p[1]));
  const [cx, cy] = toView(x, y);
  g.dataset.x = p[0]; g.dataset.y = p[1];
  el("circle", { cx, cy, r: 20, class: inside ? "ring" : "ring off" }, g);
  el("line", { x1: cx - 32, y1: cy, x2: cx - 10, y2: cy, class: "hair" }, g);
  el("line", { x1: cx + 10, y1: cy, x2: cx + 32, y2: cy, class: "hair" }, g);
  el("line", { x1: cx, y1: cy - 32, x2: cx, y2: cy - 10, class: "hair" }, g);
  el("line", { x1: cx, y1: cy + 10, x2: cx, y2: cy + 32, class: "hair" }, g);
}

function moveTo(x, y) {
  const line = `at ${num(x, 3)} ${num(y, 3)}`;
  if (line === S.lastSent) return;
  S.lastSent = line;
  S.own = { x: +num(x, 3), y: +num(y, 3), t: performance.now() };
  sendLine(line, true);
  drawCursor(); renderStatus();
}

mapEl.addEventListener("pointerdown", (ev) => {
  if (ev.button !== 0) return;
  ev.preventDefault();
  mapEl.setPointerCapture(ev.pointerId);
  S.dragging = true;
  S.lastSent = null;
  const [x, y] = fromEvent(ev);
  moveTo(x, y);
  if ($("click-plays").checked) sendLine(`note ${$("pitch").value} ${velocity()}`, true);
});
mapEl.addEventListener("pointermove", (ev) => {
  if (!S.dragging) { hover(ev); return; }
  const fresh = S.dragPending === null;
  S.dragPending = fromEvent(ev);
  if (fresh) requestAnimationFrame(() => {   // at most one move a frame: no flood
    if (S.dragPending) moveTo(S.dragPending[0], S.dragPending[1]);
    S.dragPending = null;
  });
});
const endDrag = () => {
  if (S.dragPending) { moveTo(S.dragPending[0], S.dragPending[1]); S.dragPending = null; }
  S.dragging = false;
};
mapEl.addEventListener("pointerup", endDrag);
mapEl.addEventListener("pointercancel", endDrag);
mapEl.addEventListener("pointerleave", () => { $("hover").hidden = true; });

function hover(ev) {   // the nearest training instrument's name under the pointer
  const data = S.mapData, tip = $("hover");
  if (!data) return;
  const rect = mapEl.getBoundingClientRect();
  let best = null, bestD = 14 * 14;
  for (const p of data.training_points) {
    const [vx, vy] = toView(p.x, p.y);
    const dx = rect.left + vx / 1000 * rect.width - ev.clientX;
    const dy = rect.top + vy / 1000 * rect.height - ev.clientY;
    if (dx * dx + dy * dy < bestD) { bestD = dx * dx + dy * dy; best = p; }
  }
  if (!best) { tip.hidden = true; return; }
  tip.hidden = false;
  tip.textContent = `${best.label || best.name} · ${best.family}`;
  const box = $("mapbox").getBoundingClientRect();
  tip.style.left = `${ev.clientX - box.left}px`; tip.style.top = `${ev.clientY - box.top}px`;
}

// -- keys -----------------------------------------------------------------------------------

function velocity() { return num(+$("velocity").value, 2); }
function basePitch() { return BASE_PITCH + 12 * (S.octave + S.upper); }

function drawKeyboard() {
  const kb = $("keyboard"); kb.textContent = "";
  const blacks = new Set([1, 3, 6, 8, 10]);
  let white = 0;
  const whites = [...KEY_ROW].filter((_, i) => !blacks.has(i)).length;
  [...KEY_ROW].forEach((key, i) => {
    const d = document.createElement("div");
    d.className = blacks.has(i) ? "key black" : "key";
    d.dataset.key = key;
    d.innerHTML = `<b>${key}</b><span>${noteName(basePitch() + i)}</span>`;
    if (blacks.has(i)) d.style.left = `${(white / whites) * 100 - 4.5}%`;
    else white += 1;
    d.addEventListener("pointerdown", (ev) => { ev.preventDefault(); d.setPointerCapture(ev.pointerId); keyDown(key); });
    d.addEventListener("pointerup", () => keyUp(key));
    d.addEventListener("pointercancel", () => keyUp(key));
    kb.appendChild(d);
  });
  $("octave").textContent = `keys ${noteName(basePitch())}..${noteName(basePitch() + 12)} · z / x octave · q toggles`;
}

// A key's note is held until the key comes up: then `release P`, once the instrument has
// accepted the note (a note it refused, beyond what the model plays, gets no release, as a
// MIDI key the engine refused).
function keyDown(key) {
  if (S.held.has(key)) return;       // auto-repeat, or the key is already down
  const pitch = basePitch() + KEY_ROW.indexOf(key);
  const id = `key:${key}:${S.nextId++}`;
  S.held.set(key, id);
  S.keyNotes.set(id, { pitch, answered: false, ok: false, up: false });
  sendLine(`note ${pitch} ${velocity()} hold`, true, id);
  markKey(key, true);
}

function keyUp(key) {
  if (!S.held.has(key)) return;
  const id = S.held.get(key);
  S.held.delete(key);
  markKey(key, false);
  const note = S.keyNotes.get(id);
  if (!note) return;
  note.up = true;
  if (note.answered) keyNoteAnswered(id, note, note.ok);
}

function keyNoteAnswered(id, note, ok) {
  note.answered = true; note.ok = ok;
  if (!note.up) return;
  S.keyNotes.delete(id);
  if (ok) sendLine(`release ${note.pitch}`, true);
}

function releaseAll(sendIt) {
  if (!sendIt) S.keyNotes.clear();   // (the socket is gone, or a panic silenced them)
  for (const key of [...S.held.keys()]) keyUp(key);
}

function markKey(key, down) {
  const d = document.querySelector(`#keyboard .key[data-key="${key}"]`);
  if (d) d.classList.toggle("down", down);
}

function typing(ev) {
  const t = ev.target;
  return t && (t.id === "cmd" || t.isContentEditable || (t.tagName === "INPUT" && t.type === "text"));
}

document.addEventListener("keydown", (ev) => {
  if (typing(ev) || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const key = ev.key.length === 1 ? ev.key.toLowerCase() : ev.key;
  if (KEY_ROW.includes(key)) {
    ev.preventDefault();
    if (!ev.repeat) keyDown(key);
  } else if (key === "z" || key === "x") {
    ev.preventDefault();
    if (!ev.repeat) { S.octave = Math.max(-OCTAVE_SHIFT_MAX, Math.min(OCTAVE_SHIFT_MAX, S.octave + (key === "x" ? 1 : -1))); drawKeyboard(); }
  } else if (key === "q") {
    ev.preventDefault();
    if (!ev.repeat) { S.upper = S.upper ? 0 : 1; drawKeyboard(); }
  }
});
document.addEventListener("keyup", (ev) => {
  const key = ev.key.length === 1 ? ev.key.toLowerCase() : ev.key;
  if (KEY_ROW.includes(key)) keyUp(key);
});
window.addEventListener("blur", () => releaseAll(true));   // a key-up we will never see

// -- controls -------------------------------------------------------------------------------

$("pitch").addEventListener("input", () => { $("pitch-name").textContent = noteName(+$("pitch").value); });
$("velocity").addEventListener("input", () => { $("velocity-value").textContent = (+$("velocity").value).toFixed(2); });
$("hush").addEventListener("click", () => sendLine("hush"));
$("panic").addEventListener("click", () => { releaseAll(false); sendLine("panic"); });

const cmdHistory = [];
let historyAt = 0;
$("cmdform").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const line = $("cmd").value.trim();
  if (!line) return;
  cmdHistory.push(line); historyAt = cmdHistory.length;
  sendLine(line);
  $("cmd").value = "";
});
$("cmd").addEventListener("keydown", (ev) => {
  if (ev.key === "ArrowUp" && historyAt > 0) { historyAt -= 1; $("cmd").value = cmdHistory[historyAt]; ev.preventDefault(); }
  if (ev.key === "ArrowDown") { historyAt = Math.min(cmdHistory.length, historyAt + 1); $("cmd").value = cmdHistory[historyAt] || ""; ev.preventDefault(); }
  if (ev.key === "Escape") $("cmd").blur();
});

// -- listening ------------------------------------------------------------------------------

$("listen").addEventListener("click", async () => {
  if (S.listen) { stopListening(); return; }
  const hello = S.hello || {};
  if (hello.listen) { log(`listen: ${hello.listen}`, "error"); return; }
  const sampleRate = hello.sample_rate || 24000, channels = hello.channels || 2;
  try {
    const ctx = new AudioContext({ sampleRate, latencyHint: "interactive" });
    await ctx.audioWorklet.addModule(`static/listen-worklet.js${q}`);
    const node = new AudioWorkletNode(ctx, "pgesam-listen", {
      numberOfInputs: 0, outputChannelCount: [channels],
      processorOptions: { channels, sampleRate: ctx.sampleRate, targetS: LISTEN_TARGET_S },
    });
    node.connect(ctx.destination);
    S.listen = { ctx, node, channels, sampleRate: ctx.sampleRate, packets: 0, serverS: 0,
                 buffered: 0, underruns: 0, pinger: setInterval(() => send({ ping: performance.now() }), 2000) };
    node.port.onmessage = (ev) => { Object.assign(S.listen, ev.data); showLatency(); };
    await ctx.resume();
    send({ listen: true }); send({ ping: performance.now() });
    $("listen").textContent = "stop listening"; $("listen").classList.add("on");
  } catch (e) {
    log(`listen: ${e}`, "error"); stopListening();
  }
});

function stopListening() {
  const L = S.listen; S.listen = null;
  send({ listen: false });
  if (L) { clearInterval(L.pinger); try { L.ctx.close(); } catch (e) { /* closed */ } }
  $("listen").textContent = "listen"; $("listen").classList.remove("on");
  $("latency").textContent = ""; delete $("latency").dataset.ms;
}

function onAudio(buf) {
  const L = S.listen; if (!L || buf.byteLength < 32) return;
  const dv = new DataView(buf);
  if (dv.getUint32(0, true) !== 0x31414750) return;   // "PGA1"
  const rate = dv.getUint32(4, true), channels = dv.getUint16(8, true);
  const frames = dv.getUint32(12, true);
  const tFirst = dv.getFloat64(16, true), tSent = dv.getFloat64(24, true);
  const pcm = new Int16Array(buf, 32, frames * channels);
  const out = [];
  for (let c = 0; c < L.channels; c++) out.push(new Float32Array(frames));
  for (let i = 0; i < frames; i++) {
    for (let c = 0; c < L.channels; c++) out[c][i] = pcm[i * channels + Math.min(c, channels - 1)] / 32768;
  }
  L.packets += 1;
  L.serverS = Math.max(0, tSent - tFirst - frames / rate / 2);  // a sample waits half a packet on average
  L.node.port.postMessage(out, out.map((a) => a.buffer));
}

function showLatency() {
  const L = S.listen; if (!L) return;
  const out = ((L.ctx.outputLatency || 0) + (L.ctx.baseLatency || 0)) * 1000;
  const net = S.rttMs === null ? 0 : S.rttMs / 2;
  const buffer = (L.buffered || 0) / L.sampleRate * 1000;
  const server = L.serverS * 1000;
  const total = server + net + buffer + out;
  const box = $("latency");
  box.dataset.ms = total.toFixed(0);
  box.textContent = `listening: latency ${total.toFixed(0)} ms (instrument ${server.toFixed(0)}, ` +
    `network ${net.toFixed(0)}, buffer ${buffer.toFixed(0)}, output ${out.toFixed(0)})` +
    (L.underruns ? ` · ${L.underruns} gaps` : "");
}

// -- start ----------------------------------------------------------------------------------

drawKeyboard();
loadMap();
connect();
