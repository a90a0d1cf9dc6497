// Darkroom's web page: plain JavaScript over the public API (/v1), nothing loaded from elsewhere.
// The key stays in localStorage and goes out only as an Authorization header: live events are
// read with fetch() (EventSource cannot send headers), images are fetched and shown as blob: URLs.
"use strict";

const config = JSON.parse(document.getElementById("config").textContent);
const $ = (selector) => document.querySelector(selector);
const KEY_STORE = "darkroom.key";
const ENDED = new Set(["completed", "failed", "cancelled"]);
let key = localStorage.getItem(KEY_STORE) || "";

class ApiError extends Error {
  constructor(message, status) { super(message); this.status = status; }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const keyId = () => (/^drk_([A-Za-z0-9]+)_/.exec(key) || [])[1] || null;

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (value !== null && value !== undefined && value !== false) node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (key) headers.Authorization = `Bearer ${key}`;
  const init = { ...options, headers };
  if (options.json !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(options.json);
    delete init.json;
  }
  const response = await fetch(path, init);
  if (response.status === 401) {
    showKeyForm("That key was refused; enter a valid one.");
    throw new ApiError("unauthorized", 401);
  }
  return response;
}

async function apiJson(path, options) {
  const response = await api(path, options);
  const body = response.status === 204 ? null : await response.json().catch(() => null);
  if (!response.ok) throw new ApiError((body && body.message) || response.statusText, response.status);
  return body;
}

async function blobUrl(path) {
  const response = await api(path);
  if (!response.ok) throw new ApiError(`${path}: ${response.status}`, response.status);
  return URL.createObjectURL(await response.blob());
}

async function showImage(img, path) {
  try {
    const url = await blobUrl(path);
    if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
    img.src = url;
  } catch (error) { /* a preview can be gone by now (the job ended): keep the last one */ }
}

// -- views and the key ----------------------------------------------------------------------------

function showView(name) {
  $("#key-view").hidden = true;
  for (const panel of document.querySelectorAll("[data-view-panel]")) panel.hidden = panel.dataset.viewPanel !== name;
  for (const button of document.querySelectorAll("nav [data-view]")) {
    if (button.dataset.view === name) button.setAttribute("aria-current", "page");
    else button.removeAttribute("aria-current");
  }
  if (name === "gallery" && gallery.stale) resetGallery();
}

function showKeyForm(message = "") {
  for (const panel of document.querySelectorAll("[data-view-panel]")) panel.hidden = true;
  $("#key-view").hidden = false;
  $("#key-error").textContent = message;
  $("#key-input").focus();
}

$("#key-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  key = $("#key-input").value.trim();
  try {
    await apiJson("/v1/quota");
  } catch (error) {
    if (error.status !== 401) $("#key-error").textContent = error.message;
    return;
  }
  localStorage.setItem(KEY_STORE, key);
  $("#key-input").value = "";
  if (started) location.reload();  // another key: another tenant's jobs and images
  else start();
});
$("#change-key").addEventListener("click", () => showKeyForm());
for (const button of document.querySelectorAll("nav [data-view]")) {
  button.addEventListener("click", () => showView(button.dataset.view));
}

// -- the form ---------------------------------------------------------------------------------------

let models = {};
const chosenLoras = new Map();

function option(value, label = value) { return el("option", { value, text: label }); }

async function loadChoices() {
  const [modelList, samplers, presets] = await Promise.all([
    apiJson("/v1/models"), apiJson("/v1/samplers"), apiJson("/v1/presets").catch(() => ({ presets: [] })),
  ]);
  models = modelList.models;
  const ids = Object.keys(models);
  $("#model").replaceChildren(...ids.map((id) => option(id)));
  $("#model").value = modelList.default;
  $("#gallery-model").replaceChildren(option("", "all models"), ...ids.map((id) => option(id)));
  $("#sampler").replaceChildren(option("", "model default"), ...samplers.map((s) => option(s.name)));
  $("#preset").replaceChildren(option("", "none"), ...presets.presets.map((p) => option(p.id, p.name || p.id)));
  $("#style").replaceChildren(option("", "none"), ...config.styles.map((name) => option(name)));
  applyModelDefaults();
}

function applyModelDefaults() {
  const model = models[$("#model").value];
  if (!model) return;
  const d = model.defaults;
  for (const [field, name] of [["width", "width"], ["height", "height"], ["steps", "num_inference_steps"]]) {
    $(`#${field}`).placeholder = d[name] ?? "";
  }
  $("#negative_prompt").disabled = !model.supports_negative_prompt;
}
$("#model").addEventListener("change", applyModelDefaults);

function jobRequest() {
  const body = { prompt: $("#prompt").value.trim(), settings: {} };
  const text = (id) => $(id).value.trim();
  const number = (id) => (text(id) === "" ? null : Number(text(id)));
  if (text("#negative_prompt") && !$("#negative_prompt").disabled) body.negative_prompt = text("#negative_prompt");
  for (const [field, id] of [["model", "#model"], ["style", "#style"], ["session", "#session"], ["preset", "#preset"]]) {
    if (text(id)) body[field] = text(id);
  }
  const settings = { width: "#width", height: "#height", num_inference_steps: "#steps", seed: "#seed", num_images: "#count" };
  for (const [field, id] of Object.entries(settings)) if (number(id) !== null) body.settings[field] = number(id);
  if (text("#sampler")) body.settings.sampler = text("#sampler");
  body.loras = [...chosenLoras.entries()].map(([name, weight]) => ({ name, weight }));
  return body;
}

$("#job-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const status = $("#form-status");
  if (!$("#prompt").value.trim()) {
    status.textContent = "Write a prompt first.";
    $("#prompt").focus();
    return;
  }
  $("#submit").disabled = true;
  status.textContent = "Submitting…";
  try {
    const request = jobRequest();
    const created = await apiJson("/v1/jobs", { method: "POST", json: request });
    addJob({ id: created.id, status: created.status, prompt: request.prompt, num_images: created.num_images }, true);
    status.textContent = `Queued: ${created.message}`;
  } catch (error) {
    status.textContent = `Not queued: ${error.message}`;
  } finally {
    $("#submit").disabled = false;
  }
});

function fillForm(meta) {
  const s = meta.settings || {};
  $("#prompt").value = meta.prompt || "";
  $("#negative_prompt").value = meta.negative_prompt || "";
  if (models[meta.model_id]) $("#model").value = meta.model_id;
  applyModelDefaults();
  $("#width").value = s.width ?? "";
  $("#height").value = s.height ?? "";
  $("#steps").value = s.num_inference_steps ?? "";
  $("#sampler").value = s.sampler || "";
  $("#seed").value = meta.seed ?? -1;
  $("#count").value = 1;
  chosenLoras.clear();
  for (const lora of meta.loras || []) chosenLoras.set(lora.name, lora.weight);
  renderChosenLoras();
}

// -- LoRAs: search as you type ---------------------------------------------------------------------

let loraTimer = null;
let loraActive = -1;
const loraSearch = $("#lora-search");
const loraResults = $("#lora-results");

function closeLoraResults() {
  loraResults.hidden = true;
  loraSearch.setAttribute("aria-expanded", "false");
  loraSearch.removeAttribute("aria-activedescendant");
  loraActive = -1;
}

async function searchLoras() {
  const query = loraSearch.value.trim();
  if (!query) return closeLoraResults();
  let page;
  try {
    page = await apiJson(`/v1/loras?${new URLSearchParams({ search: query, limit: "8" })}`);
  } catch (error) {
    page = { loras: [] };
  }
  const items = page.loras.map((lora, index) => el("li", {
    id: `lora-option-${index}`, role: "option", "aria-selected": "false", "data-name": lora.name,
    text: `${lora.name} (${lora.base}${lora.trigger_words.length ? `, ${lora.trigger_words.slice(0, 3).join(", ")}` : ""})`,
    onclick: () => chooseLora(lora.name),
  }));
  loraResults.replaceChildren(...(items.length ? items : [el("li", { role: "option", "aria-disabled": "true", text: "no LoRA found" })]));
  loraResults.hidden = false;
  loraSearch.setAttribute("aria-expanded", "true");
  loraActive = -1;
}

function chooseLora(name) {
  if (!chosenLoras.has(name)) chosenLoras.set(name, 1.0);
  renderChosenLoras();
  loraSearch.value = "";
  closeLoraResults();
  loraSearch.focus();
}

function renderChosenLoras() {
  $("#lora-chosen").replaceChildren(...[...chosenLoras.entries()].map(([name, weight]) => {
    const id = `lora-weight-${name.replace(/[^A-Za-z0-9_-]/g, "_")}`;
    return el("li", {},
      el("label", { for: id, text: name }),
      el("input", { id, type: "number", step: "0.05", min: "-4", max: "4", value: String(weight),
        oninput: (event) => chosenLoras.set(name, Number(event.target.value)) }),
      el("button", { type: "button", "aria-label": `Remove ${name}`, text: "×",
        onclick: () => { chosenLoras.delete(name); renderChosenLoras(); } }));
  }));
}

loraSearch.addEventListener("input", () => {
  clearTimeout(loraTimer);
  loraTimer = setTimeout(searchLoras, 150);
});
loraSearch.addEventListener("keydown", (event) => {
  const options = [...loraResults.querySelectorAll("[data-name]")];
  if (event.key === "Escape") return closeLoraResults();
  if (!options.length) return;
  if (event.key === "ArrowDown" || event.key === "ArrowUp") {
    event.preventDefault();
    loraActive = (loraActive + (event.key === "ArrowDown" ? 1 : -1) + options.length) % options.length;
    options.forEach((item, index) => item.setAttribute("aria-selected", String(index === loraActive)));
    loraSearch.setAttribute("aria-activedescendant", options[loraActive].id);
  } else if (event.key === "Enter") {
    event.preventDefault();
    chooseLora(options[Math.max(loraActive, 0)].dataset.name);
  }
});

// -- the queue: the caller's jobs, live --------------------------------------------------------------

const jobs = new Map();

function addJob(summary, first = false) {
  if (jobs.has(summary.id)) return jobs.get(summary.id);
  const progress = el("progress", { max: "1", value: "0", "aria-label": "progress" });
  const preview = el("img", { class: "thumb", alt: "" });  // described once it shows something
  const phase = el("span", { class: "phase", text: summary.status });
  const images = el("div", { class: "images" });
  const cancel = el("button", { type: "button", class: "danger cancel", text: "Cancel",
    "aria-label": `Cancel job: ${summary.prompt}`, onclick: () => cancelJob(summary.id) });
  const node = el("li", { class: "job", "data-job": summary.id, "data-status": summary.status },
    preview,
    el("div", {}, el("div", { class: "prompt", text: summary.prompt }), phase, progress, images),
    cancel);
  const job = { id: summary.id, node, progress, preview, phase, images, cancel, status: summary.status,
    seen: Date.now(), previewLoading: false, imageIds: new Set() };
  jobs.set(summary.id, job);
  if (first) $("#jobs").prepend(node); else $("#jobs").append(node);
  setStatus(job, summary.status, summary.status);
  return job;
}

function setStatus(job, status, phaseText) {
  job.status = status;
  job.node.dataset.status = status;
  job.phase.textContent = phaseText;
  if (ENDED.has(status)) {
    job.cancel.hidden = true;
    if (status === "completed") job.progress.value = job.progress.max;
  }
  $("#queue-count").textContent = String([...jobs.values()].filter((j) => !ENDED.has(j.status)).length);
}

function addImage(job, imageId, fresh = true) {
  if (job.imageIds.has(imageId)) return;
  job.imageIds.add(imageId);
  const img = el("img", { alt: `image ${job.imageIds.size}`, "data-image": imageId });
  job.images.append(img);
  showImage(img, `/v1/images/${imageId}`);
  if (!job.preview.src) {
    job.preview.alt = "first image";
    showImage(job.preview, `/v1/images/${imageId}`);
  }
  if (!fresh) return;
  gallery.recent.set(imageId, Date.now());
  gallery.stale = true;
  if (!$("#gallery-view").hidden) refreshGallerySoon();
}

async function refreshPreview(job) {
  if (job.previewLoading) return;
  job.previewLoading = true;
  job.preview.alt = "latest preview";
  try { await showImage(job.preview, `/v1/jobs/${job.id}/preview`); } finally { job.previewLoading = false; }
}

async function cancelJob(jobId) {
  const job = jobs.get(jobId);
  try {
    await apiJson(`/v1/jobs/${jobId}`, { method: "DELETE" });
    setStatus(job, "cancelling", "cancelling");
  } catch (error) {
    job.phase.textContent = `cancel refused: ${error.message}`;
  }
}

function onEvent(type, data) {
  let job = jobs.get(data.job_id);
  if (type === "job.accepted") {
    const owner = data.spec && data.spec.owner;
    if (!job && (keyId() === null || owner === keyId())) {
      job = addJob({ id: data.job_id, status: "pending", prompt: data.spec.prompt }, true);
    }
    return;
  }
  if (!job) return;
  job.seen = Date.now();
  if (ENDED.has(job.status)) return;
  switch (type) {
    case "job.enriched": setStatus(job, job.status, "enriched, waiting for a generator"); break;
    case "job.started": setStatus(job, "processing", "started"); break;
    case "model.loading": setStatus(job, "processing", `loading model ${data.model}`); break;
    case "job.progressed": {
      job.progress.max = data.total_steps;
      job.progress.value = data.step;
      const images = data.total_images > 1 ? `, image ${data.image_index}/${data.total_images}` : "";
      setStatus(job, "processing", `${data.phase}: step ${data.step}/${data.total_steps}${images}`);
      if (data.preview_url) refreshPreview(job);
      break;
    }
    case "image.saved": addImage(job, data.image.id); break;
    case "job.cancel_requested": setStatus(job, job.status, "cancelling"); break;
    case "job.completed":
      for (const imageId of data.image_ids) addImage(job, imageId);
      setStatus(job, "completed", "completed");
      break;
    case "job.failed": setStatus(job, "failed", `failed: ${data.reason}`); break;
    case "job.cancelled": setStatus(job, "cancelled", "cancelled"); break;
    default: break;
  }
}

function parseFrame(block) {
  const frame = { id: null, event: "message", data: "" };
  for (const line of block.split(/\r\n|\r|\n/)) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "data") frame.data += (frame.data ? "\n" : "") + value;
    else if (field === "id") frame.id = value;
    else if (field === "event") frame.event = value;
  }
  return frame;
}

// Live events over fetch(): the key travels as a header, never in a URL.
async function followEvents() {
  let lastId = null;
  for (;;) {
    try {
      const headers = { Accept: "text/event-stream" };
      if (lastId) headers["Last-Event-ID"] = lastId;
      const response = await api("/v1/events", { headers });
      if (!response.ok) throw new ApiError(String(response.status), response.status);
      $("#stream-status").textContent = "live";
      document.body.dataset.stream = "live";
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let match;
        while ((match = /\r\n\r\n|\n\n|\r\r/.exec(buffer))) {
          const frame = parseFrame(buffer.slice(0, match.index));
          buffer = buffer.slice(match.index + match[0].length);
          if (frame.id) lastId = frame.id;
          if (frame.data) onEvent(frame.event, JSON.parse(frame.data));
        }
      }
    } catch (error) {
      if (error.status === 401) return;
    }
    document.body.dataset.stream = "reconnecting";
    $("#stream-status").textContent = "reconnecting…";
    await sleep(2000);
  }
}

// A job quiet for a while is read once more: covers anything the stream missed.
async function checkQuietJobs() {
  for (;;) {
    await sleep(5000);
    for (const job of jobs.values()) {
      if (ENDED.has(job.status) || Date.now() - job.seen < 5000) continue;
      job.seen = Date.now();
      try {
        const doc = await apiJson(`/v1/jobs/${job.id}`);
        if (ENDED.has(doc.status)) {
          for (const image of doc.images || []) addImage(job, image.id);
          setStatus(job, doc.status, doc.status === "failed" ? `failed: ${doc.error || ""}` : doc.status);
        }
      } catch (error) { /* try again next round */ }
    }
  }
}

async function loadJobs() {
  const list = await apiJson("/v1/jobs?limit=20");
  for (const summary of list.jobs) {
    if (keyId() !== null && summary.owner && summary.owner !== keyId()) continue;
    const job = addJob(summary);
    if (summary.status === "completed") {
      apiJson(summary.status_url).then((doc) => { for (const image of doc.images) addImage(job, image.id, false); })
        .catch(() => {});
    }
  }
}

// -- the gallery ------------------------------------------------------------------------------------

// `recent`: images this page saw saved; the gallery (the projection, a moment behind the event)
// is read again until the newest of them show up.
const gallery = { cursor: null, done: false, loading: false, stale: false, generation: 0, recent: new Map(),
  retry: null };

function refreshGallerySoon() {
  clearTimeout(gallery.retry);
  gallery.retry = setTimeout(() => { if (!$("#gallery-view").hidden) resetGallery(); }, 1000);
}

function resetGallery() {
  gallery.cursor = null;
  gallery.done = false;
  gallery.stale = false;
  gallery.generation += 1;
  $("#gallery").replaceChildren();
  loadGallery();
}

async function loadGallery() {
  if (gallery.loading || gallery.done) return;
  gallery.loading = true;
  const generation = gallery.generation;
  const params = new URLSearchParams({ limit: "24" });
  if (gallery.cursor) params.set("cursor", gallery.cursor);
  if ($("#gallery-search").value.trim()) params.set("search", $("#gallery-search").value.trim());
  if ($("#gallery-model").value) params.set("model", $("#gallery-model").value);
  try {
    const page = await apiJson(`/v1/gallery?${params}`);
    if (generation !== gallery.generation) return;
    for (const image of page.images) $("#gallery").append(galleryTile(image));
    if (!gallery.cursor && !params.has("search") && !params.has("model")) {
      const shown = new Set(page.images.map((image) => image.id));
      const missing = [...gallery.recent].some(([id, seen]) => !shown.has(id) && Date.now() - seen < 30000);
      if (missing) refreshGallerySoon();
    }
    gallery.cursor = page.next_cursor;
    gallery.done = !page.next_cursor || !page.has_more;
    $("#gallery-status").textContent = page.total === 0 ? "No images." : `${$("#gallery").children.length} of ${page.total}`;
  } catch (error) {
    $("#gallery-status").textContent = error.message;
  } finally {
    if (generation === gallery.generation) gallery.loading = false;
    $("#gallery-more").hidden = gallery.done;
  }
}

function galleryTile(image) {
  const img = el("img", { alt: image.prompt });
  showImage(img, image.url);
  const tile = el("li", { "data-image": image.id },
    el("button", { type: "button", "aria-label": `Open: ${image.prompt}`, onclick: () => openDetail(image, img) }, img));
  return tile;
}

let searchTimer = null;
$("#gallery-search").addEventListener("input", () => { clearTimeout(searchTimer); searchTimer = setTimeout(resetGallery, 250); });
$("#gallery-model").addEventListener("change", resetGallery);
$("#gallery-filter").addEventListener("submit", (event) => { event.preventDefault(); resetGallery(); });
$("#gallery-more").addEventListener("click", loadGallery);
new IntersectionObserver((entries) => {
  if (entries.some((entry) => entry.isIntersecting) && !$("#gallery-view").hidden) loadGallery();
}).observe($("#gallery-sentinel"));

// -- one image --------------------------------------------------------------------------------------

let detail = null;

async function openDetail(image, img) {
  detail = { image, meta: null };
  $("#detail-title").textContent = image.prompt;
  $("#detail-image").src = img.src;
  $("#detail-image").alt = image.prompt;
  $("#detail-download").href = img.src;
  $("#detail-download").download = `${image.id}.png`;
  $("#detail-delete").textContent = "Delete";
  $("#detail-status").textContent = "";
  showParams({ ...image, model_id: image.model_id });
  $("#detail").showModal();
  try {
    detail.meta = await apiJson(`/v1/images/${image.id}/metadata`);
    if (detail && detail.image.id === image.id) showParams(detail.meta, image);
  } catch (error) { /* the gallery row already says most of it */ }
}

function showParams(meta, image = meta) {
  const s = meta.settings || {};
  const rows = [
    ["Prompt", meta.prompt], ["Negative prompt", meta.negative_prompt], ["Model", meta.model_id],
    ["Size", s.width && `${s.width} × ${s.height}`], ["Steps", s.num_inference_steps], ["Guidance", s.guidance_scale],
    ["Sampler", s.sampler], ["Seed", meta.seed], ["Time", meta.generation_time && `${meta.generation_time} s`],
    ["Created", image.created_at], ["Job", meta.job_id],
  ].filter(([, value]) => value !== undefined && value !== null && value !== "");
  $("#detail-params").replaceChildren(...rows.flatMap(([name, value]) => [el("dt", { text: name }), el("dd", { text: String(value) })]));
}

$("#detail-reuse").addEventListener("click", () => {
  fillForm(detail.meta || detail.image);
  $("#detail").close();
  showView("create");
  $("#prompt").focus();
});

$("#detail-delete").addEventListener("click", async () => {
  const button = $("#detail-delete");
  if (button.textContent !== "Confirm delete") {
    button.textContent = "Confirm delete";
    $("#detail-status").textContent = "Press again to delete this image for good.";
    return;
  }
  const imageId = detail.image.id;
  try {
    await apiJson(`/v1/images/${imageId}`, { method: "DELETE" });
    document.querySelector(`#gallery [data-image="${CSS.escape(imageId)}"]`)?.remove();
    gallery.recent.delete(imageId);
    $("#detail").close();
    $("#gallery-status").textContent = "Image deleted.";
  } catch (error) {
    $("#detail-status").textContent = `Not deleted: ${error.message}`;
  }
});

// -- start ------------------------------------------------------------------------------------------

let started = false;

async function start() {
  try {
    await apiJson("/v1/quota");
  } catch (error) {
    if (error.status !== 401) showKeyForm(error.message);
    return;
  }
  showView("create");
  if (started) return;
  started = true;
  await loadChoices();
  await loadJobs().catch(() => {});
  followEvents();
  checkQuietJobs();
  document.body.dataset.ready = "true";
}

start();
