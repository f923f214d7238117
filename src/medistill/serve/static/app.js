// medistill serve: upload an image, show the per-label probabilities and the heatmap of a chosen label.
// No external resource; the heatmap is drawn here on a canvas from the map the server returns (the explain graph's
// Grad-CAM, (h, w) in [0, 1]): placed on the preview by where its cells sit (the answer's map_grid, as
// `medistill.inference.place_map` places it: bilinear between cell centres, the edge value beyond), the "jet"
// colour map, blended over the image as `medistill predict --explain` does ((1 - a) * image + a * colour).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { model: null, result: null, preview: null, label: null, requests: 0, roundTrip: 0 };

function fmtBytes(n) {
  if (n >= 1 << 20) return (n / (1 << 20)).toFixed(1) + " MiB";
  if (n >= 1 << 10) return (n / (1 << 10)).toFixed(1) + " KiB";
  return n + " B";
}

function fmtCount(n) {
  if (n >= 1e6) return (n / 1e6).toFixed(2) + " M";
  if (n >= 1e3) return (n / 1e3).toFixed(1) + " k";
  return String(n);
}

function setStatus(text, isError) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", Boolean(isError));
}

// Single- or multi-label is the server's Task to answer (medistill.task; GET /api/model's uses_thresholds): the
// page asks this one helper and never compares task names. Until the model is described, thresholds are shown.
function usesThresholds() {
  return !state.model || state.model.uses_thresholds !== false;
}

async function loadModel() {
  try {
    const res = await fetch("/api/model");
    if (!res.ok) throw new Error(`GET /api/model: HTTP ${res.status}`);
    const m = await res.json();
    state.model = m;
    $("model-name").textContent = m.name;
    $("model-arch").textContent = `${m.model} (${m.task}, exported by medistill ${m.version})`;
    const params = m.parameters != null ? `, ${fmtCount(m.parameters)} parameters` : "";
    $("model-size").textContent = fmtBytes(m.file_bytes) + params;
    $("model-input").textContent = `${m.input.channels} × ${m.input.size} × ${m.input.size}`;
    $("model-labels").textContent = String(m.labels.length);
    $("model-maps").textContent = m.maps ? "yes (Grad-CAM)" : "no (export with --explain)";
    $("limit").textContent = `up to ${fmtBytes(m.limits.max_upload_bytes)}`;
  } catch (err) {
    setStatus(`Cannot read the model's description: ${err.message}`, true);
  }
}

async function predict(file) {
  if (!file) return;
  const limit = state.model ? state.model.limits.max_upload_bytes : Infinity;
  if (file.size > limit) {
    setStatus(`${file.name} is ${fmtBytes(file.size)}, more than the limit of ${fmtBytes(limit)}.`, true);
    return;
  }
  setStatus(`Predicting ${file.name}…`);
  const form = new FormData();
  form.append("file", file, file.name);
  const request = ++state.requests;  // a newer upload supersedes this one
  const t0 = performance.now();
  let res, text;
  try {
    res = await fetch("/api/predict", { method: "POST", body: form });
    text = await res.text();
  } catch (err) {
    if (request === state.requests) setStatus(`The request failed: ${err.message}`, true);
    return;
  }
  if (request !== state.requests) return;
  const roundTrip = performance.now() - t0;
  let body = null;
  try {
    body = JSON.parse(text);
  } catch (err) {
    body = { detail: text.slice(0, 200) || res.statusText };  // e.g. the server's plain-text 503 when busy
  }
  if (!res.ok) {
    setStatus(`${file.name}: ${body.detail || "error"} (HTTP ${res.status})`, true);
    return;
  }
  state.result = body;
  state.roundTrip = roundTrip;
  await showResult();
  setStatus("");
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the preview image cannot be decoded"));
    img.src = src;
  });
}

async function showResult() {
  const r = state.result;
  $("results").hidden = false;
  $("file-name").textContent = `${r.file} (${r.image.format.toUpperCase()}, ${r.image.width} × ${r.image.height})`;
  $("positives").textContent = r.positives.length
    ? (usesThresholds() ? "Positive: " : "Predicted: ") + r.positives.join(", ")
    : "No label at or above its threshold";
  const warnings = $("input-warnings");
  warnings.replaceChildren(...(r.warnings || []).map((text) => {
    const li = document.createElement("li");
    li.textContent = "Warning: " + text;
    return li;
  }));
  warnings.hidden = !(r.warnings || []).length;
  const t = r.timings_ms;
  $("latency").textContent = `Model latency ${r.latency_ms.toFixed(1)} ms · decoding ${t.decode.toFixed(1)} ms · ` +
    `server ${t.total.toFixed(1)} ms · round trip ${state.roundTrip.toFixed(0)} ms`;

  const tbody = $("probabilities").querySelector("tbody");
  tbody.replaceChildren();
  for (const s of r.ranking) {
    const tr = document.createElement("tr");
    tr.dataset.label = s.label;
    if (s.positive) tr.classList.add("positive");
    const name = document.createElement("td");
    name.textContent = s.label;
    const prob = document.createElement("td");
    const bar = document.createElement("span");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = `${Math.round(s.probability * 100)}%`;
    bar.append(fill);
    prob.append(bar, document.createTextNode(s.probability.toFixed(3)));
    const thr = document.createElement("td");
    thr.textContent = usesThresholds() ? s.threshold.toFixed(3) : "top";
    tr.append(name, prob, thr);
    tr.addEventListener("click", () => chooseLabel(s.label));
    tbody.append(tr);
  }

  const select = $("label");
  select.replaceChildren();
  for (const s of r.ranking) {
    const opt = document.createElement("option");
    opt.value = s.label;
    opt.textContent = `${s.label} (${s.probability.toFixed(3)})`;
    select.append(opt);
  }
  select.disabled = !r.maps;
  $("alpha").disabled = !r.maps;
  $("map-note").textContent = r.maps ? "" : "This model has no heatmaps: export it with --explain to see them.";

  state.preview = r.image.preview ? await loadImage(r.image.preview) : null;
  const keep = state.label && r.probabilities[state.label] !== undefined;
  chooseLabel(keep ? state.label : (r.positives[0] || r.ranking[0].label));
}

function chooseLabel(label) {
  state.label = label;
  $("label").value = label;
  for (const tr of $("probabilities").querySelectorAll("tbody tr")) {
    tr.classList.toggle("chosen", tr.dataset.label === label);
  }
  draw();
}

// the "jet" colour map (piecewise linear, as matplotlib's) of v in [0, 1] -> [r, g, b] in [0, 1]
function jet(v) {
  const c = (x) => Math.min(1, Math.max(0, x));
  return [c(1.5 - Math.abs(4 * v - 3)), c(1.5 - Math.abs(4 * v - 2)), c(1.5 - Math.abs(4 * v - 1))];
}

// bilinear sample of map (h rows of w) at output pixel (x, y) of a W x H image; grid {stride, offset}: cell i is
// centred on offset + stride * i, (y, x) fractions of the image side (an even grid: 1 / h and 0.5 / h, the plain
// half-pixel resize). An EfficientNet's cells sit half a cell up-left of that: drawn evenly, the heat is off.
function sample(map, h, w, x, y, W, H, grid) {
  const sy = Math.min(h - 1, Math.max(0, ((y + 0.5) / H - grid.offset[0]) / grid.stride[0]));
  const sx = Math.min(w - 1, Math.max(0, ((x + 0.5) / W - grid.offset[1]) / grid.stride[1]));
  const y0 = Math.floor(sy), x0 = Math.floor(sx);
  const y1 = Math.min(h - 1, y0 + 1), x1 = Math.min(w - 1, x0 + 1);
  const fy = sy - y0, fx = sx - x0;
  const top = map[y0][x0] * (1 - fx) + map[y0][x1] * fx;
  const bottom = map[y1][x0] * (1 - fx) + map[y1][x1] * fx;
  return top * (1 - fy) + bottom * fy;
}

function draw() {
  const r = state.result, img = state.preview, out = $("heatmap");
  if (!r || !img) return;
  const W = img.naturalWidth, H = img.naturalHeight;
  const canvas = document.createElement("canvas");
  canvas.width = W;
  canvas.height = H;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(img, 0, 0);
  const map = r.maps ? r.maps[state.label] : null;
  if (map && map.length && map[0].length) {
    const a = Number($("alpha").value) / 100;
    const h = map.length, w = map[0].length;
    const grid = r.map_grid || { stride: [1 / h, 1 / w], offset: [0.5 / h, 0.5 / w] };
    const data = ctx.getImageData(0, 0, W, H);
    const px = data.data;
    for (let y = 0; y < H; y++) {
      for (let x = 0; x < W; x++) {
        const [cr, cg, cb] = jet(Math.min(1, Math.max(0, sample(map, h, w, x, y, W, H, grid))));
        const i = 4 * (y * W + x);
        px[i] = (1 - a) * px[i] + a * 255 * cr;
        px[i + 1] = (1 - a) * px[i + 1] + a * 255 * cg;
        px[i + 2] = (1 - a) * px[i + 2] + a * 255 * cb;
      }
    }
    ctx.putImageData(data, 0, 0);
    out.alt = `the image with the heatmap of ${state.label}`;
  } else {
    out.alt = "the decoded image (no heatmap)";
  }
  out.dataset.label = map ? state.label : "";
  out.src = canvas.toDataURL("image/png");
}

function setUp() {
  const input = $("file"), zone = $("upload");
  input.addEventListener("change", () => predict(input.files[0]));
  for (const ev of ["dragenter", "dragover"]) {
    zone.addEventListener(ev, (e) => { e.preventDefault(); zone.classList.add("over"); });
  }
  for (const ev of ["dragleave", "drop"]) {
    zone.addEventListener(ev, (e) => { e.preventDefault(); zone.classList.remove("over"); });
  }
  zone.addEventListener("drop", (e) => predict(e.dataTransfer.files[0]));
  // a file dropped outside the zone must not make the browser navigate away from the page
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
  $("label").addEventListener("change", (e) => chooseLabel(e.target.value));
  $("alpha").addEventListener("input", draw);
  loadModel();
  loadExplanation();
}

// the model's explanation fidelity (GET /api/explanation, from `medistill explain` beside the model): tables and
// a gallery of overlays with the truth outlined; the section stays hidden when there is none ("available": false)
function fmtScore(v, chance) {
  if (v === null || v === undefined) return "n/a";
  return chance === null || chance === undefined ? v.toFixed(3) : `${v.toFixed(3)} (${chance.toFixed(3)})`;
}

function fmtAgreement(m) {
  // the Spearman over pixels, then over the cells of the coarser map's own grid (a CAM's layer) where it differs
  const text = fmtScore(m.spearman_to_teacher);
  if (m.spearman_to_teacher_grid === null || m.spearman_to_teacher_grid === undefined || !m.agreement_grid ||
      m.spearman_to_teacher_grid === m.spearman_to_teacher) return text;
  return `${text} (${m.spearman_to_teacher_grid.toFixed(3)} at ${m.agreement_grid} × ${m.agreement_grid})`;
}

function fmtSanity(s) {
  // the weight-randomisation check of the row's method, as `medistill explain` judged it
  if (!s) return "";
  if (!s.checked) return `${s.method}: not checked`;
  if (s.passed === true) return `${s.method}: passed`;
  if (s.passed === false) return `${s.method}: FAILED, not evidence`;
  return `${s.method}: not judged`;
}

function sanityWarnings(models) {
  // one warning per method that failed the check or was not checked, above the gallery
  return models.filter((m) => m.sanity && (m.sanity.passed === false || !m.sanity.checked)).map((m) => {
    const p = document.createElement("p");
    p.className = "warning";
    p.textContent = m.sanity.checked
      ? `The ${m.what}'s ${m.sanity.method} maps FAILED the weight-randomisation check ` +
        `(${m.sanity.reasons.join("; ")}): they are framed in red and are not evidence of what the model uses.`
      : `The ${m.what}'s ${m.sanity.method} maps were not checked against a weight-randomised model: read them ` +
        "with care.";
    return p;
  });
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const text of cells) {
    const td = document.createElement("td");
    td.textContent = text;
    tr.append(td);
  }
  return tr;
}

async function loadExplanation() {
  let e;
  try {
    const res = await fetch("/api/explanation");
    if (!res.ok) return;
    e = await res.json();
  } catch (err) {
    return;
  }
  if (!e.available) return;
  const layers = e.cam_layers ? ` · CAM layers ${Object.entries(e.cam_layers).map(([k, v]) => `${k}: ${v.join(", ")}`).join("; ")}` : "";
  $("explanation-note").textContent = `From ${e.folder}/explain.json: ${e.method}, ${e.images} images, ` +
    `${e.maps_with_truth ?? 0} maps with truth${layers}.`;
  $("fidelity").querySelector("tbody").replaceChildren(...e.models.map((m) => row([
    `${m.what} (${m.model})`, fmtScore(m.pointing_game, m.pointing_chance),
    fmtScore(m.pointing_game_tolerant, m.pointing_chance_tolerant), fmtScore(m.energy_inside),
    fmtAgreement(m), fmtScore(m.blank), fmtSanity(m.sanity)])));
  $("sanity-warnings").replaceChildren(...sanityWarnings(e.models));
  $("fidelity-labels").querySelector("tbody").replaceChildren(...Object.entries(e.per_label).map(([label, d]) => row([
    label, String(d.maps ?? ""), fmtScore(d.pointing_game, d.pointing_chance),
    fmtScore(d.pointing_game_tolerant, d.pointing_chance_tolerant), fmtScore(d.energy_inside)])));
  $("gallery").replaceChildren(...e.overlays.map((o) => {
    const fig = document.createElement("figure");
    const img = document.createElement("img");
    img.src = o.uri;
    img.alt = `${o.image}: ${o.labels}`;
    const cap = document.createElement("figcaption");
    cap.textContent = `${o.image}: ${o.labels}`;
    fig.append(img, cap);
    return fig;
  }));
  $("explanation").hidden = false;
}

setUp();
