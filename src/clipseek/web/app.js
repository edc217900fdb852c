// clipseek's page: plain JS over the native API (/api/*); no build step, no CDN.
"use strict";
const $ = (id) => document.getElementById(id);
const token = new URLSearchParams(location.search).get("token");
const PAGE = 24;
let upload = null;          // File chosen or dropped
let likeId = null;          // "more like this" document id
const panes = [makePane($("pane1")), makePane($("pane2"))];

function makePane(el) {
  return { el, grid: el.querySelector(".grid"), status: el.querySelector(".status"), more: el.querySelector(".more"),
           model: null, offset: 0, hits: [] };
}

function withToken(url) {
  if (!token) return url;
  return url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
}

async function api(url, options = {}) {
  let resp;
  try {
    resp = await fetch(withToken(url), options);
  } catch (e) {
    throw new Error("The clipseek server is not reachable. Is `clipseek serve` still running?");
  }
  let body = null;
  try { body = await resp.json(); } catch (e) { /* not JSON */ }
  if (resp.status === 401) throw new Error("This server needs a token: open the page as …/?token=YOUR_TOKEN");
  if (!resp.ok) throw new Error((body && body.error && body.error.message) || `The server answered ${resp.status}.`);
  return body;
}

function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

function epoch(dateInput) {
  return dateInput.value ? String(new Date(dateInput.value + "T00:00:00Z").getTime() / 1000) : "";
}

function params(model, offset) {
  const p = { model, k: String(PAGE), offset: String(offset), threshold: $("threshold").value,
              folder: $("folder").value.trim(), format: $("format").value, since: epoch($("since")),
              until: $("until").value ? String(new Date($("until").value + "T23:59:59Z").getTime() / 1000) : "",
              collapse: $("collapse").checked ? "true" : "", camera: $("camera").value };
  for (const key of Object.keys(p)) if (p[key] === "" || p[key] === "0") delete p[key];
  return p;
}

async function query(pane, offset) {
  const text = $("q").value.trim();
  const neg = $("neg").value.trim();
  const p = params(pane.model, offset);
  if (upload) {
    const form = new FormData();
    form.append("image", upload);
    if (text) form.append("q", text);
    if (neg) form.append("not", neg);
    for (const [k, v] of Object.entries(p)) form.append(k, v);
    return api("/api/search", { method: "POST", body: form });
  }
  const terms = [];
  if (text) terms.push({ text, weight: 1 });
  if (likeId) terms.push({ id: likeId, weight: 1 });
  if (neg) terms.push({ text: neg, weight: -0.5 });
  if (!terms.length) throw new Error("Type what you are looking for, or choose an image.");
  return api("/api/search", { method: "POST", headers: { "Content-Type": "application/json" },
                              body: JSON.stringify({ ...p, k: PAGE, offset, terms }) });
}

async function search(append = false) {
  showError("");
  const active = panes.filter((p) => p.model);
  try {
    await Promise.all(active.map(async (pane) => {
      const offset = append ? pane.offset : 0;
      const result = await query(pane, offset);
      if (!append) { pane.grid.textContent = ""; pane.hits = []; }
      pane.offset = offset + result.hits.length;
      render(pane, result);
    }));
  } catch (e) {
    showError(e.message);
  }
}

function render(pane, result) {
  for (const hit of result.hits) {
    const card = document.createElement("div");
    card.className = "card";
    card.tabIndex = 0;
    card.dataset.id = hit.id;
    const img = document.createElement("img");
    img.loading = "lazy";
    img.alt = hit.image_file_name || hit.id;
    img.src = withToken(hit.thumbnail + "?size=256");
    const rel = document.createElement("div");
    rel.className = "rel";
    rel.innerHTML = `<span>${hit.relevance.toFixed(3)}</span><span></span>`;
    rel.lastChild.textContent = hit.image_file_name || "";
    card.title = `${hit.path || hit.id}\nrelevance ${hit.relevance.toFixed(4)}`;
    card.append(img, rel);
    card.addEventListener("click", () => openDetail(hit));
    pane.grid.append(card);
    pane.hits.push(hit);
  }
  pane.status.textContent = `${pane.model}: ${result.total} matches, showing ${pane.hits.length} — ${result.took_ms} ms`;
  pane.more.hidden = pane.hits.length >= result.total || result.hits.length < PAGE;
}

function openDetail(hit) {
  $("detail-img").src = withToken(hit.url);
  $("detail-img").alt = hit.image_file_name || hit.id;
  const info = $("detail-info");
  info.textContent = "";
  const rows = [["file", hit.image_file_name], ["path", hit.path], ["relevance", hit.relevance.toFixed(4)],
                ["size", hit.width && hit.height ? `${hit.width} × ${hit.height}` : ""],
                ["bytes", hit.size ? hit.size.toLocaleString() : ""], ["format", hit.format],
                ["date", hit.mtime ? new Date(hit.mtime * 1000).toLocaleString() : ""]];
  for (const [k, v] of rows) {
    if (!v) continue;
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = v;
    info.append(dt, dd);
  }
  $("like").onclick = () => { $("detail").close(); likeId = hit.id; upload = null; $("q").value = "";
                              $("file-name").textContent = `like ${hit.image_file_name || hit.id}`; search(); };
  $("detail").showModal();
}

function moveFocus(delta) {
  const cards = [...document.querySelectorAll(".card")];
  const i = cards.indexOf(document.activeElement);
  const next = cards[Math.max(0, Math.min(cards.length - 1, (i < 0 ? 0 : i + delta)))];
  if (next) next.focus();
}

async function init() {
  $("search").addEventListener("submit", (ev) => { ev.preventDefault(); likeId = null; search(); });
  $("threshold").addEventListener("input", () => { $("threshold-value").textContent = Number($("threshold").value).toFixed(2); });
  $("threshold").addEventListener("change", () => search());
  $("collapse").addEventListener("change", () => search());
  $("camera").addEventListener("change", () => search());
  $("file").addEventListener("change", () => choose($("file").files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => { ev.preventDefault(); drop.classList.remove("over"); choose(ev.dataTransfer.files[0]); });
  $("model2").addEventListener("change", () => { panes[1].model = $("model2").value || null;
                                                  panes[1].el.hidden = !panes[1].model; search(); });
  $("model").addEventListener("change", () => { panes[0].model = $("model").value; search(); });
  for (const pane of panes) pane.more.addEventListener("click", () => search(true));
  $("detail").querySelector(".close").addEventListener("click", () => $("detail").close());
  document.addEventListener("keydown", (ev) => {
    if (ev.target.tagName === "INPUT" || $("detail").open) return;
    if (ev.key === "Enter" && document.activeElement.classList.contains("card")) {
      ev.preventDefault(); document.activeElement.click(); return;
    }
    const step = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: 4, ArrowUp: -4 }[ev.key];
    if (step) { ev.preventDefault(); moveFocus(step); }
  });
  try {
    const info = await api("/api/info");
    for (const m of info.models) {
      for (const select of [$("model"), $("model2")]) {
        const opt = document.createElement("option");
        opt.value = m.model;
        opt.textContent = m.model.startsWith("local-dir:") ? m.model.split("/").pop() + " (local)" : m.model;
        select.append(opt);
      }
    }
    for (const c of info.cameras || []) {
      const opt = document.createElement("option");
      opt.value = c.name;
      opt.textContent = `${c.name} (${c.count})`;
      $("camera").append(opt);
    }
    if (info.models.some((m) => m.model === info.default_model)) $("model").value = info.default_model;
    panes[0].model = $("model").value || null;
    if (!info.models.length) showError("This collection has no images yet: run `clipseek index PATH` first.");
    else panes[0].status.textContent = `${info.documents} images. Type a description and press Enter.`;
  } catch (e) {
    showError(e.message);
  }
}

function choose(file) {
  if (!file) return;
  upload = file; likeId = null;
  $("file-name").textContent = file.name;
  search();
}

init();
