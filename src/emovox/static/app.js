// emovox web page: upload / drag-and-drop, microphone recording (WAV encoded here), live streaming.
// No libraries: charts are plain SVG and canvas, everything is served by the emovox app itself.
"use strict";

const API = "/api/v1";
const TARGET_RATE = 16000;
const LIVE_SECONDS = 30;
const MAX_RECORD_SECONDS = 60;

const COLORS = {
  neutral: "#8a94a6", calm: "#2aa198", happy: "#e8a317", sad: "#3b73d9",
  angry: "#d64541", fearful: "#8e5bd6", disgust: "#5b9a3c", surprised: "#ef7d2d",
};
const FALLBACK = ["#4653d6", "#c2407d", "#1f9bb5", "#9c6b1f", "#6b7d2a", "#7b4fc0"];
const $ = (id) => document.getElementById(id);

let labels = [];
let limits = { max_upload_mb: 20, max_duration_s: 600 };
let speakerNormalized = false; // the model adapts to one voice over a live session (normalize: session)

function color(label) {
  if (COLORS[label]) return COLORS[label];
  let h = 0;
  for (const ch of label) h = (h * 31 + ch.charCodeAt(0)) >>> 0;
  return FALLBACK[h % FALLBACK.length];
}

function svgEl(tag, attrs = {}, text) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

const pct = (p) => `${(100 * p).toFixed(1)}%`;
const secs = (s) => `${s.toFixed(1)} s`;

// ------------------------------------------------------------------ errors

function showError(title, detail) {
  $("error-title").textContent = title;
  $("error-detail").textContent = detail || "";
  $("error").hidden = false;
}

function clearError() { $("error").hidden = true; }

async function errorFrom(response) {
  // the API answers every refusal with {"error": code, "detail": message}
  try {
    const body = await response.json();
    return `${body.detail || body.error || response.statusText}`;
  } catch (_) {
    return `${response.status} ${response.statusText}`;
  }
}

// ------------------------------------------------------------------ model info

async function loadModel() {
  try {
    const res = await fetch(`${API}/model`);
    if (!res.ok) throw new Error(await errorFrom(res));
    const info = await res.json();
    labels = info.labels || [];
    speakerNormalized = Boolean(info.speaker_normalized);
    if (info.limits) limits = info.limits;
    const name = String(info.model).split(/[\\/]/).filter(Boolean).pop() || info.model;
    $("model-badge").textContent = `model: ${name} · ${labels.length} emotions`;
    $("model-badge").title = `${info.model}: ${labels.join(", ")}`;
    $("limits").textContent =
      `WAV, FLAC, Ogg, Opus, MP3, AIFF · up to ${limits.max_upload_mb} MB, ${limits.max_duration_s} s`;
    drawLegend();
  } catch (err) {
    $("model-badge").textContent = "model unavailable";
    showError("Could not reach the model", err.message);
  }
}

// ------------------------------------------------------------------ results

// Charts are drawn in CSS pixels (the viewBox is the element's own size), so their text keeps its
// font size on any screen; they are redrawn when the page is resized.
function chartWidth(svg) {
  return Math.max(240, Math.round(svg.getBoundingClientRect().width || svg.parentElement.clientWidth || 1000));
}

function drawBars(probabilities) {
  const svg = $("bars");
  svg.replaceChildren();
  const names = labels.length ? labels.filter((l) => l in probabilities) : Object.keys(probabilities);
  const width = chartWidth(svg);
  const narrow = width < 520;
  const row = narrow ? 28 : 30, labelW = narrow ? 84 : 110, valueW = narrow ? 52 : 64;
  const track = Math.max(40, width - labelW - valueW);
  svg.setAttribute("viewBox", `0 0 ${width} ${names.length * row}`);
  svg.setAttribute("height", names.length * row);
  const best = names.reduce((a, b) => (probabilities[a] >= probabilities[b] ? a : b), names[0]);
  names.forEach((name, i) => {
    const p = probabilities[name];
    const y = i * row;
    const barW = Math.max(2, track * p);
    const label = svgEl("text", { x: 0, y: y + 19, class: name === best ? "label best" : "label" }, name);
    label.append(svgEl("title", {}, name));
    svg.append(label);
    svg.append(svgEl("rect", { x: labelW, y: y + 6, width: track, height: 18, rx: 5, fill: "#f0f2f7" }));
    const bar = svgEl("rect", { x: labelW, y: y + 6, width: barW, height: 18, rx: 5, fill: color(name), class: "bar", "data-label": name, "data-p": p.toFixed(4) });
    bar.append(svgEl("title", {}, `${name}: ${pct(p)}`));
    svg.append(bar);
    svg.append(svgEl("text", { x: width - valueW + 8, y: y + 19, class: "value" }, pct(p)));
  });
}

function swatch(label) {
  const sw = document.createElement("span");
  sw.className = "swatch";
  sw.style.background = label ? color(label) : "#dfe2ea"; // CSSOM, not an inline style attribute
  return sw;
}

function cell(text, className) {
  const td = document.createElement("td");
  if (className) td.className = className;
  td.textContent = text;
  return td;
}

function drawTimeline(segments, duration) {
  const block = $("timeline-block");
  if (!segments || !segments.length) { block.hidden = true; return; }
  block.hidden = false;
  const svg = $("timeline");
  svg.replaceChildren();
  const width = chartWidth(svg), top = 4, h = 34;
  const total = Math.max(duration, ...segments.map((s) => s.end));
  svg.setAttribute("viewBox", `0 0 ${width} 62`);
  svg.append(svgEl("rect", { x: 0, y: top, width, height: h, rx: 6, fill: "#eef0f5" }));
  const body = $("segments");
  body.replaceChildren();
  for (const seg of segments) {
    const x = (seg.start / total) * width;
    const w = Math.max(1.5, ((seg.end - seg.start) / total) * width);
    const speech = Boolean(seg.emotion);
    const rect = svgEl("rect", { x, y: top, width: w, height: h, fill: speech ? color(seg.emotion) : "#d5d9e2", class: "segment" });
    rect.append(svgEl("title", {}, `${secs(seg.start)} – ${secs(seg.end)}: ${speech ? `${seg.emotion} (${pct(seg.confidence)})` : "silence"}`));
    svg.append(rect);
    if (speech && w > 8 * seg.emotion.length + 12) svg.append(svgEl("text", { x: x + 6, y: top + 22, class: "seg" }, seg.emotion));
    const tr = document.createElement("tr");
    const name = cell(speech ? seg.emotion : "silence", "cap");
    if (speech) name.prepend(swatch(seg.emotion));
    tr.append(cell(secs(seg.start)), cell(secs(seg.end)), name, cell(speech ? pct(seg.confidence) : "–"));
    body.append(tr);
  }
  const ticks = Math.min(10, Math.max(2, Math.floor(total)), Math.max(2, Math.floor(width / 70)));
  for (let i = 0; i <= ticks; i++) {
    const t = (total * i) / ticks;
    const anchor = i === 0 ? "start" : i === ticks ? "end" : "middle";
    svg.append(svgEl("text", { x: (t / total) * width, y: 56, "text-anchor": anchor }, secs(t)));
  }
}

let lastResult = null;

function hideResult() {
  lastResult = null;
  $("result").hidden = true;
  $("bars").replaceChildren();
  $("segments").replaceChildren();
  $("timeline-block").hidden = true;
}

function showResult(result, source) {
  lastResult = { result, source };
  $("result").hidden = false;
  $("result-source").textContent = source;
  $("result-emotion").textContent = result.emotion;
  $("result-emotion").style.color = color(result.emotion);
  $("result-confidence").textContent = `${pct(result.confidence)} confident`;
  $("result-meta").textContent = `${secs(result.duration)} of audio`;
  drawBars(result.probabilities);
  drawTimeline(result.segments, result.duration);
  $("result").scrollIntoView({ behavior: "smooth", block: "nearest" });
}

async function analyse(blob, filename, source) {
  clearError();
  if (blob.size > limits.max_upload_mb * 1024 * 1024) {
    hideResult();
    showError("File too large", `${filename} is ${(blob.size / 2 ** 20).toFixed(1)} MB; the limit is ${limits.max_upload_mb} MB.`);
    return;
  }
  const form = new FormData();
  form.append("file", blob, filename);
  $("dropzone").classList.add("busy");
  try {
    const res = await fetch(`${API}/predict?timeline=true`, { method: "POST", body: form });
    if (!res.ok) {
      hideResult(); // the previous file's result must not sit under this file's error
      showError(`Could not analyse ${filename} (HTTP ${res.status})`, await errorFrom(res));
      return;
    }
    showResult(await res.json(), source);
  } catch (err) {
    hideResult();
    showError(`Could not analyse ${filename}`, `the server did not answer (${err.message})`);
  } finally {
    $("dropzone").classList.remove("busy");
  }
}

// ------------------------------------------------------------------ upload and drag-and-drop

function setupUpload() {
  const zone = $("dropzone"), input = $("file-input");
  input.addEventListener("change", () => {
    if (input.files.length) analyse(input.files[0], input.files[0].name, `File · ${input.files[0].name}`);
    input.value = "";
  });
  for (const ev of ["dragenter", "dragover"]) zone.addEventListener(ev, (e) => { e.preventDefault(); zone.classList.add("over"); });
  for (const ev of ["dragleave", "drop"]) zone.addEventListener(ev, (e) => { e.preventDefault(); zone.classList.remove("over"); });
  zone.addEventListener("drop", (e) => {
    const file = e.dataTransfer.files[0];
    if (file) analyse(file, file.name, `File · ${file.name}`);
  });
  $("example-btn").addEventListener("click", async () => {
    clearError();
    try {
      const res = await fetch("/static/example.flac");
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      await analyse(await res.blob(), "example.flac", "Example · RAVDESS actor 03, acted “happy”");
    } catch (err) {
      showError("Could not load the example clip", err.message);
    }
  });
}

// ------------------------------------------------------------------ microphone capture

// Streaming band-limited resampler (windowed-sinc interpolation) from the AudioContext rate to 16 kHz.
class Resampler {
  constructor(inRate, outRate = TARGET_RATE, halfTaps = 16) {
    this.ratio = inRate / outRate;
    this.half = halfTaps;
    this.cutoff = Math.min(1, 1 / this.ratio) * 0.45; // cycles per input sample, below the new Nyquist
    this.buf = new Float32Array(0);
    this.pos = 0; // position of the next output sample in buf
  }

  kernel(x) {
    if (Math.abs(x) >= this.half) return 0;
    const w = 0.42 + 0.5 * Math.cos((Math.PI * x) / this.half) + 0.08 * Math.cos((2 * Math.PI * x) / this.half);
    const arg = 2 * Math.PI * this.cutoff * x;
    return 2 * this.cutoff * (x === 0 ? 1 : Math.sin(arg) / arg) * w;
  }

  push(input) {
    if (this.ratio === 1) return Float32Array.from(input);
    const buf = new Float32Array(this.buf.length + input.length);
    buf.set(this.buf);
    buf.set(input, this.buf.length);
    const out = [];
    while (this.pos + this.half < buf.length) {
      const center = Math.floor(this.pos);
      let acc = 0;
      for (let i = center - this.half + 1; i <= center + this.half; i++) {
        if (i >= 0) acc += buf[i] * this.kernel(i - this.pos);
      }
      out.push(acc);
      this.pos += this.ratio;
    }
    const keep = Math.max(0, Math.floor(this.pos) - this.half);
    this.buf = buf.slice(keep);
    this.pos -= keep;
    return Float32Array.from(out);
  }
}

// Opens the microphone and calls onSamples(Float32Array at 16 kHz) for every captured block.
async function openMicrophone(onSamples) {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    throw new Error("this browser cannot access a microphone here (a secure origin such as localhost is needed)");
  }
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
  });
  const ctx = new AudioContext();
  await ctx.audioWorklet.addModule("/static/pcm-worklet.js");
  const source = ctx.createMediaStreamSource(stream);
  const node = new AudioWorkletNode(ctx, "pcm-capture");
  const resampler = new Resampler(ctx.sampleRate);
  node.port.onmessage = (e) => onSamples(resampler.push(e.data));
  source.connect(node);
  // keep the graph pulled without playing the microphone back
  const mute = ctx.createGain();
  mute.gain.value = 0;
  node.connect(mute).connect(ctx.destination);
  return () => {
    node.port.onmessage = null;
    stream.getTracks().forEach((t) => t.stop());
    ctx.close();
  };
}

function toInt16(samples) {
  const out = new Int16Array(samples.length);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    out[i] = s < 0 ? s * 0x8000 : s * 0x7fff;
  }
  return out;
}

// 16-bit PCM mono WAV.
function encodeWav(samples, rate = TARGET_RATE) {
  const pcm = toInt16(samples);
  const view = new DataView(new ArrayBuffer(44 + pcm.byteLength));
  const text = (o, s) => [...s].forEach((c, i) => view.setUint8(o + i, c.charCodeAt(0)));
  text(0, "RIFF"); view.setUint32(4, 36 + pcm.byteLength, true); text(8, "WAVE");
  text(12, "fmt "); view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
  view.setUint32(24, rate, true); view.setUint32(28, rate * 2, true); view.setUint16(32, 2, true); view.setUint16(34, 16, true);
  text(36, "data"); view.setUint32(40, pcm.byteLength, true);
  new Int16Array(view.buffer, 44).set(pcm);
  return new Blob([view.buffer], { type: "audio/wav" });
}

function setButton(btn, active, label) {
  btn.classList.toggle("active", active);
  btn.querySelector(".label").textContent = label;
}

// ------------------------------------------------------------------ record

function setupRecord() {
  const btn = $("record-btn");
  let stop = null, chunks = [], count = 0, timer = null;
  const finish = async () => {
    clearInterval(timer);
    stop(); stop = null;
    setButton(btn, false, "Record");
    const samples = new Float32Array(count);
    let o = 0;
    for (const c of chunks) { samples.set(c, o); o += c.length; }
    chunks = [];
    if (count < TARGET_RATE * 0.3) { showError("Recording too short", "record at least half a second of speech"); return; }
    await analyse(encodeWav(samples), "recording.wav", `Recording · ${secs(count / TARGET_RATE)}`);
  };
  btn.addEventListener("click", async () => {
    if (stop) { await finish(); return; }
    clearError();
    chunks = []; count = 0;
    try {
      stop = await openMicrophone((s) => { chunks.push(s); count += s.length; });
    } catch (err) {
      showError("Microphone unavailable", err.message);
      return;
    }
    setButton(btn, true, "Stop");
    timer = setInterval(() => {
      $("record-time").textContent = secs(count / TARGET_RATE);
      if (count >= TARGET_RATE * MAX_RECORD_SECONDS) finish();
    }, 100);
  });
}

// ------------------------------------------------------------------ live

const live = { points: [], updates: 0 };

function drawLegend() {
  const legend = $("legend");
  legend.replaceChildren();
  for (const l of [...labels, null]) {
    const item = document.createElement("span");
    item.append(swatch(l), document.createTextNode(l === null ? "silence" : l)); // labels are text, never HTML
    legend.append(item);
  }
}

function drawLive() {
  const canvas = $("live-canvas");
  const g = canvas.getContext("2d");
  // size the backing store to the displayed size, so 11 px text is 11 px on a phone too
  const dpr = window.devicePixelRatio || 1;
  const W = Math.max(240, Math.round(canvas.getBoundingClientRect().width || 1100));
  const H = Math.max(140, Math.round(canvas.getBoundingClientRect().height || 260));
  if (canvas.width !== Math.round(W * dpr) || canvas.height !== Math.round(H * dpr)) {
    canvas.width = Math.round(W * dpr);
    canvas.height = Math.round(H * dpr);
  }
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  const pad = 28, plotH = H - pad;
  g.clearRect(0, 0, W, H);
  const now = live.points.length ? live.points[live.points.length - 1].t : 0;
  const t0 = Math.max(0, now - LIVE_SECONDS);
  const x = (t) => ((t - t0) / LIVE_SECONDS) * W;
  g.strokeStyle = "#eceef4"; g.fillStyle = "#98a1b3"; g.font = "11px system-ui, sans-serif";
  const every = W < 520 ? 10 : 5;
  for (let s = Math.ceil(t0); s <= t0 + LIVE_SECONDS; s++) {
    if (s % every) continue;
    g.beginPath(); g.moveTo(x(s), 0); g.lineTo(x(s), plotH); g.stroke();
    g.fillText(`${s} s`, x(s) + 3, H - 9);
  }
  for (let i = 0; i < live.points.length; i++) {
    const p = live.points[i];
    const prev = i > 0 ? live.points[i - 1].t : p.t - 0.5;
    if (p.t < t0) continue;
    const x0 = x(Math.max(prev, t0)), w = Math.max(1, x(p.t) - x0 + 0.5);
    if (!p.speech) {
      g.fillStyle = "#dfe2ea";
      g.fillRect(x0, plotH * 0.35, w, plotH * 0.3);
      continue;
    }
    let y = plotH;
    for (const l of labels.length ? labels : Object.keys(p.probabilities)) {
      const h = (p.probabilities[l] || 0) * plotH;
      g.fillStyle = color(l);
      g.fillRect(x0, y - h, w, h);
      y -= h;
    }
  }
  canvas.dataset.updates = String(live.updates);
}

function onLiveMessage(msg) {
  if (msg.error) { showError("Live stream", msg.detail || msg.error); return; }
  if (msg.t === undefined) return; // the server's answer to our config
  live.points.push(msg);
  while (live.points.length && live.points[0].t < msg.t - LIVE_SECONDS - 1) live.points.shift();
  live.updates += 1;
  $("live-status").textContent = `${secs(msg.t)} · ${msg.speech ? "speech" : "silence"}`;
  if (msg.speech) {
    $("live-emotion").textContent = msg.emotion;
    $("live-emotion").style.color = color(msg.emotion);
    $("live-confidence").textContent = pct(msg.confidence);
  } else {
    $("live-emotion").textContent = "silence";
    $("live-emotion").style.color = "#98a1b3";
    $("live-confidence").textContent = "";
  }
  drawLive();
}

function setupLive() {
  const btn = $("live-btn");
  let stopMic = null, ws = null;
  const stop = (reason) => {
    if (stopMic) { stopMic(); stopMic = null; }
    if (ws) { ws.onclose = null; ws.close(); ws = null; }
    setButton(btn, false, "Start live");
    $("live-status").textContent = reason || "stopped";
  };
  btn.addEventListener("click", async () => {
    if (ws) { stop(); return; }
    clearError();
    live.points = []; live.updates = 0;
    $("live-panel").hidden = false;
    drawLegend();
    drawLive();
    const proto = location.protocol === "https:" ? "wss" : "ws";
    ws = new WebSocket(`${proto}://${location.host}${API}/stream`);
    ws.binaryType = "arraybuffer";
    ws.onmessage = (e) => onLiveMessage(JSON.parse(e.data));
    ws.onclose = (e) => {
      ws = null;
      stop(`closed (${e.code})`);
      if (e.code !== 1000) showError("Live stream closed", e.reason || `connection closed with code ${e.code}`);
    };
    ws.onopen = async () => {
      // one voice at the microphone: a speaker-normalised model adapts to it over the session
      const config = { sample_rate: TARGET_RATE, format: "s16le", window: 2.0, hop: 0.5 };
      if (speakerNormalized) config.normalize = "session";
      ws.send(JSON.stringify(config));
      try {
        stopMic = await openMicrophone((s) => {
          if (ws && ws.readyState === WebSocket.OPEN && s.length) ws.send(toInt16(s).buffer);
        });
        setButton(btn, true, "Stop live");
        $("live-status").textContent = "listening…";
      } catch (err) {
        stop("no microphone");
        showError("Microphone unavailable", err.message);
      }
    };
  });
}

// ------------------------------------------------------------------ start

$("error-close").addEventListener("click", clearError);
let resizeTimer = null;
window.addEventListener("resize", () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => {
    if (lastResult && !$("result").hidden) {
      drawBars(lastResult.result.probabilities);
      drawTimeline(lastResult.result.segments, lastResult.result.duration);
    }
    if (!$("live-panel").hidden) drawLive();
  }, 100);
});
setupUpload();
setupRecord();
setupLive();
loadModel();
