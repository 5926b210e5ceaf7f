// The page of `dalle serve`: one prompt box, a job followed through its event stream,
// images as they arrive, and this browser's history. Text from the server or the user is
// only ever inserted with textContent; images are fetched (with the access token when
// the server wants one) and shown from blob: URLs.
"use strict";

const $ = (id) => document.getElementById(id);
const HISTORY_KEY = "dalle-history";
const state = { job: null, abort: null, shown: new Map(), urls: [] };

function token() {
  return sessionStorage.getItem("dalle-token") || "";
}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (token()) headers.Authorization = "Bearer " + token();
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    $("token-row").hidden = false;
    throw new Error("This server needs an access token: enter it above and try again.");
  }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      message = (await response.json()).error.message;
    } catch (_) { /* not JSON: keep the status line */ }
    throw new Error(message);
  }
  return response;
}

function showError(message) {
  $("error").textContent = message || "";
  $("error").hidden = !message;
}

async function loadModel() {
  try {
    const info = await (await api("/v1/models")).json();
    const model = info.models[0];
    const ranker = model.rerank ? "re-ranked by a CLIP" : "no re-ranker";
    $("model").textContent = `${model.id} · ${model.image_size}px · ${ranker}`;
    $("guidance_scale").placeholder = String(model.defaults.guidance_scale);
    $("temperature").placeholder = String(model.defaults.temperature);
    $("num_images").max = String(info.limits.max_images);
    $("rerank").checked = model.rerank;
    $("rerank").disabled = !model.rerank;
  } catch (error) {
    showError(error.message);
  }
}

function requestBody() {
  const body = { prompt: $("prompt").value };
  for (const name of ["num_images", "keep", "seed"]) {
    if ($(name).value !== "") body[name] = parseInt($(name).value, 10);
  }
  for (const name of ["guidance_scale", "temperature"]) {
    if ($(name).value !== "") body[name] = parseFloat($(name).value);
  }
  if (!$("rerank").disabled) body.rerank = $("rerank").checked;
  return body;
}

async function generate(event) {
  event.preventDefault();
  showError("");
  if ($("token").value) sessionStorage.setItem("dalle-token", $("token").value);
  if (!$("prompt").value.trim()) {
    showError("Write a prompt first.");
    return;
  }
  $("generate").disabled = true;
  try {
    const response = await api("/v1/generations", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(requestBody()),
    });
    const job = await response.json();
    remember(job);
    follow(job);
  } catch (error) {
    showError(error.message);
    $("generate").disabled = false;
  }
}

function clearImages() {
  for (const url of state.urls) URL.revokeObjectURL(url);
  state.urls = [];
  state.shown = new Map();
  $("images").replaceChildren();
}

function follow(job) {
  if (state.abort) state.abort.abort();
  state.job = job.id;
  clearImages();
  $("current").hidden = false;
  $("download").hidden = true;
  render(job);
  stream(job.id);
}

function render(job) {
  const progress = job.progress ? job.progress.fraction : 0;
  $("progress").value = job.status === "done" ? 1 : progress;
  let text = job.status;
  if (job.status === "queued") text = `queued, ${job.queue_position} job(s) ahead`;
  if (job.status === "running") text = `drawing… ${Math.round(100 * progress)}%`;
  if (job.status === "done") text = `done: ${job.images.length} image(s) for “${job.prompt}”`;
  if (job.status === "failed") text = "failed";
  $("status").textContent = text;
  const running = job.status === "queued" || job.status === "running";
  $("cancel").hidden = !running;
  $("generate").disabled = running;
  if (job.status === "failed" || job.status === "cancelled") showError(job.error || `The job was ${job.status}.`);
  for (const image of job.images || []) showImage(job.id, image);
  if (job.status === "done" && job.images.length) $("download").hidden = false;
  updateHistory(job);
}

async function showImage(jobId, image) {
  if (state.shown.has(image.index) || state.job !== jobId) return;
  const figure = document.createElement("figure");
  const img = document.createElement("img");
  img.alt = `image ${image.index + 1}`;
  const caption = document.createElement("figcaption");
  const score = image.score === null ? "" : ` · score ${image.score.toFixed(3)}`;
  caption.textContent = `seed ${image.seed}${score}`;
  figure.append(img, caption);
  state.shown.set(image.index, figure);
  const after = [...state.shown.keys()].filter((k) => k > image.index).sort((a, b) => a - b);
  const next = after.length ? state.shown.get(after[0]) : null;
  $("images").insertBefore(figure, next && next.isConnected ? next : null);
  const blob = await (await api(image.url)).blob();
  const url = URL.createObjectURL(blob);
  state.urls.push(url);
  img.src = url;
}

function parseEvent(block) {
  const event = { id: 0, event: "message", data: "" };
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue; // a heartbeat
    const cut = line.indexOf(":");
    const name = cut < 0 ? line : line.slice(0, cut);
    const value = cut < 0 ? "" : line.slice(cut + 1).replace(/^ /, "");
    if (name === "id") event.id = parseInt(value, 10);
    else if (name === "event") event.event = value;
    else if (name === "data") event.data += value;
  }
  return event.data ? { ...event, data: JSON.parse(event.data) } : null;
}

async function stream(jobId) {
  const controller = new AbortController();
  state.abort = controller;
  let last = 0;
  for (let attempt = 0; attempt < 5 && state.job === jobId; attempt++) {
    try {
      const headers = last ? { "Last-Event-ID": String(last) } : {};
      const response = await api(`/v1/generations/${jobId}/events`, { headers, signal: controller.signal });
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const event = parseEvent(buffer.slice(0, cut));
          buffer = buffer.slice(cut + 2);
          if (event) {
            last = event.id;
            onEvent(jobId, event);
          }
        }
      }
      render(await (await api(`/v1/generations/${jobId}`)).json());
      return;
    } catch (error) {
      if (controller.signal.aborted) return;
      if (attempt === 4) showError(error.message);
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }
}

function onEvent(jobId, event) {
  if (state.job !== jobId) return;
  if (event.event === "progress") {
    $("progress").value = event.data.fraction;
    $("status").textContent = `drawing… ${Math.round(100 * event.data.fraction)}%`;
  } else if (event.event === "image") {
    showImage(jobId, event.data);
  } else if (event.event === "status") {
    $("status").textContent = event.data.status;
  }
}

async function cancel() {
  if (!state.job) return;
  try {
    render(await (await api(`/v1/generations/${state.job}`, { method: "DELETE" })).json());
  } catch (error) {
    showError(error.message);
  }
}

async function download() {
  try {
    const blob = await (await api(`/v1/generations/${state.job}/images.zip`)).blob();
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = `${state.job}.zip`;
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  } catch (error) {
    showError(error.message);
  }
}

function history() {
  try {
    return JSON.parse(localStorage.getItem(HISTORY_KEY) || "[]");
  } catch (_) {
    return [];
  }
}

function remember(job) {
  const items = [{ id: job.id, prompt: job.prompt, status: job.status }, ...history()];
  localStorage.setItem(HISTORY_KEY, JSON.stringify(items.slice(0, 30)));
  drawHistory();
}

function updateHistory(job) {
  const items = history().map((item) => (item.id === job.id ? { ...item, status: job.status } : item));
  localStorage.setItem(HISTORY_KEY, JSON.stringify(items));
  drawHistory();
}

function drawHistory() {
  const rows = history().map((item) => {
    const row = document.createElement("li");
    const prompt = document.createElement("span");
    prompt.textContent = item.prompt;
    const status = document.createElement("span");
    status.className = "muted";
    status.textContent = item.status;
    row.append(prompt, status);
    row.addEventListener("click", () => reopen(item.id));
    return row;
  });
  $("history").replaceChildren(...rows);
}

async function reopen(jobId) {
  showError("");
  try {
    follow(await (await api(`/v1/generations/${jobId}`)).json());
  } catch (error) {
    showError(error.message);
  }
}

$("form").addEventListener("submit", generate);
$("cancel").addEventListener("click", cancel);
$("download").addEventListener("click", download);
drawHistory();
loadModel();
