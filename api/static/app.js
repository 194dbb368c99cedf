// The voxbatch web page: plain DOM, no build step. User content (file names, documents, errors)
// only ever reaches the page through textContent, never innerHTML.
"use strict";

const $ = (id) => document.getElementById(id);
const POLL_MS = 2000;
let apiKey = sessionStorage.getItem("voxbatch-key") || "";
let chosenFiles = [];
let pollTimer = null;
let openJob = null;
let live = null; // the job followed live: { job, lastId, controller, stopped, finished }

function api(path, options = {}) {
  const headers = Object.assign({ Authorization: "Bearer " + apiKey }, options.headers || {});
  return fetch(path, Object.assign({}, options, { headers }));
}

async function problem(resp) {
  try { return (await resp.json()).detail || resp.statusText; } catch (e) { return resp.statusText; }
}

// --- sign in ---------------------------------------------------------------------------------

async function signIn(key) {
  apiKey = key;
  const resp = await api("/v1/jobs?limit=1");
  if (resp.status === 401) {
    apiKey = "";
    sessionStorage.removeItem("voxbatch-key");
    $("sign-in-error").textContent = "That API key was not accepted.";
    return;
  }
  sessionStorage.setItem("voxbatch-key", key);
  $("sign-in-error").textContent = "";
  $("sign-in").hidden = true;
  $("app").hidden = false;
  $("sign-out").hidden = false;
  $("who").textContent = "key " + key.slice(0, 12) + "…";
  refreshJobs();
  loadCollections();
  pollTimer = setInterval(refreshJobs, POLL_MS);
}

function signOut() {
  sessionStorage.removeItem("voxbatch-key");
  apiKey = "";
  clearInterval(pollTimer);
  $("app").hidden = true;
  $("sign-in").hidden = false;
  $("sign-out").hidden = true;
  $("who").textContent = "";
}

// --- upload ----------------------------------------------------------------------------------

function choose(files) {
  chosenFiles = Array.from(files || []);
  const mb = chosenFiles.reduce((n, f) => n + f.size, 0) / 1048576;
  $("file-name").textContent = chosenFiles.length === 1
    ? chosenFiles[0].name + " (" + mb.toFixed(1) + " MB)"
    : chosenFiles.length ? chosenFiles.length + " recordings (" + mb.toFixed(1) + " MB)" : "";
  $("start").disabled = chosenFiles.length === 0;
}

// Many files go into one collection, one upload after the other; a new name makes the collection.
async function uploadAll() {
  const files = chosenFiles;
  if (!files.length) return;
  const collection = $("collection").value.trim();
  if (collection) {
    const known = await api("/v1/collections/" + encodeURIComponent(collection));
    if (known.status === 404) {
      const made = await api("/v1/collections", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ name: collection }),
      });
      if (!made.ok) { $("upload-status").textContent = "Refused: " + await problem(made); return; }
      loadCollections();
    }
  }
  for (let n = 0; n < files.length; n++) {
    const ok = await upload(files[n], collection, files.length > 1 ? (n + 1) + "/" + files.length + " " : "");
    if (!ok) return;
  }
  choose([]);
}

function upload(file, collection, counter) {
  return new Promise((resolve) => {
    const form = new FormData();
    // Options first: the server checks them before it stores the recording.
    form.append("preset", $("preset").value);
    if ($("language").value.trim()) form.append("language", $("language").value.trim());
    if ($("instructions").value.trim()) form.append("instructions", $("instructions").value.trim());
    if ($("vocabulary").value.trim()) form.append("vocabulary", $("vocabulary").value.trim());
    if (collection) form.append("collection", collection);
    form.append("file", file, file.name);

    const xhr = new XMLHttpRequest();
    const bar = $("upload-progress");
    bar.hidden = false;
    bar.value = 0;
    $("start").disabled = true;
    $("upload-status").textContent = counter + "Uploading…";
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) {
        bar.value = Math.round((e.loaded / e.total) * 100);
        $("upload-status").textContent = counter + "Uploading… " + bar.value + "%";
      }
    };
    xhr.onload = () => {
      $("start").disabled = false;
      let body = {};
      try { body = JSON.parse(xhr.responseText); } catch (e) { /* not JSON */ }
      if (xhr.status === 202) {
        bar.value = 100;
        $("upload-status").textContent = counter + "Uploaded: job " + body.id + " queued.";
        refreshJobs();
        resolve(true);
      } else {
        $("upload-status").textContent = counter + file.name + " refused (" + xhr.status + "): " + (body.detail || xhr.statusText);
        resolve(false);
      }
    };
    xhr.onerror = () => {
      $("start").disabled = false;
      $("upload-status").textContent = counter + "The upload failed (network error).";
      resolve(false);
    };
    xhr.open("POST", "/v1/jobs");
    xhr.setRequestHeader("Authorization", "Bearer " + apiKey);
    xhr.send(form);
  });
}

async function loadCollections() {
  const resp = await api("/v1/collections");
  if (!resp.ok) return;
  const names = (await resp.json()).collections.map((c) => c.name);
  $("collection-names").replaceChildren(...names.map((name) => {
    const option = document.createElement("option");
    option.value = name;
    return option;
  }));
  const select = $("search-collection");
  const chosen = select.value;
  const all = document.createElement("option");
  all.value = "";
  all.textContent = "all recordings";
  select.replaceChildren(all, ...names.map((name) => {
    const option = document.createElement("option");
    option.value = name;
    option.textContent = name;
    return option;
  }));
  select.value = names.includes(chosen) ? chosen : "";
}

// --- search: hits open the player at their second ---------------------------------------------

// A snippet is HTML-escaped text with the matches in <mark>: rebuilt as nodes, never parsed as HTML.
function snippetNodes(snippet) {
  const unescape = (s) => s.replace(/&lt;/g, "<").replace(/&gt;/g, ">").replace(/&amp;/g, "&");
  const nodes = [];
  let marked = false;
  for (const part of snippet.split(/(<mark>|<\/mark>)/)) {
    if (part === "<mark>") { marked = true; continue; }
    if (part === "</mark>") { marked = false; continue; }
    if (!part) continue;
    const text = document.createTextNode(unescape(part));
    if (marked) {
      const mark = document.createElement("mark");
      mark.appendChild(text);
      nodes.push(mark);
    } else {
      nodes.push(text);
    }
  }
  return nodes;
}

async function runSearch() {
  const q = $("search-query").value.trim();
  if (!q) return;
  const params = new URLSearchParams({ q, limit: "50" });
  if ($("search-collection").value) params.set("collection", $("search-collection").value);
  $("search-status").textContent = "Searching…";
  const resp = await api("/v1/search?" + params.toString());
  if (!resp.ok) { $("search-status").textContent = await problem(resp); $("search-hits").replaceChildren(); return; }
  const hits = (await resp.json()).hits;
  const jobs = {};
  await Promise.all([...new Set(hits.map((h) => h.job_id))].map(async (id) => {
    const r = await api("/v1/jobs/" + id);
    if (r.ok) jobs[id] = await r.json();
  }));
  $("search-status").textContent = hits.length ? hits.length + " passage(s)" : "Nothing found.";
  $("search-hits").replaceChildren(...hits.filter((h) => jobs[h.job_id]).map((hit) => {
    const job = jobs[hit.job_id];
    const li = document.createElement("li");
    li.tabIndex = 0;
    li.className = "hit";
    const title = document.createElement("span");
    title.className = "title";
    title.textContent = job.title || job.source_name;
    const when = document.createElement("span");
    when.className = "when";
    when.textContent = clock(hit.start_s);
    li.append(title, when, ...snippetNodes(hit.snippet));
    const open = () => openHit(job, hit.start_s);
    li.addEventListener("click", open);
    li.addEventListener("keydown", (e) => { if (e.key === "Enter") open(); });
    return li;
  }));
}

async function openHit(job, seconds) {
  if (!openJob || openJob.id !== job.id) await showDocument(job);
  if (openJob && openJob.id === job.id) {
    seek(seconds);
    $("player").scrollIntoView();
  }
}

// --- jobs ------------------------------------------------------------------------------------

function cell(row, text, cls) {
  const td = document.createElement("td");
  if (text !== undefined) td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

// Windows done / total, and segments done / total beside them once the split has counted them.
function progressCell(td, job) {
  const progress = job.progress;
  const bar = document.createElement("progress");
  const segTotal = progress.segments_total;
  const fine = segTotal !== null && segTotal !== undefined && segTotal > 0;
  const total = progress.windows_total;
  bar.max = fine ? segTotal : total || 1;
  bar.value = job.status === "succeeded" ? bar.max : fine ? progress.segments_done || 0 : progress.windows_done;
  const windows = document.createElement("span");
  windows.className = "windows";
  windows.title = "windows done / total";
  windows.textContent = " " + progress.windows_done + "/" + (total === null ? "?" : total);
  td.append(bar, document.createTextNode(" windows"), windows);
  if (segTotal !== undefined && (segTotal !== null || progress.segments_done)) {
    const segments = document.createElement("span");
    segments.className = "segments";
    segments.title = "speech segments transcribed / total";
    segments.textContent = " " + (progress.segments_done || 0) + "/" + (segTotal === null ? "?" : segTotal);
    td.append(document.createTextNode(" · segments"), segments);
  }
}

async function refreshJobs() {
  let resp;
  try { resp = await api("/v1/jobs?limit=50"); } catch (e) { return; } // the API is away: next time
  if (resp.status === 401) { signOut(); return; }
  if (!resp.ok) return;
  const data = await resp.json();
  const rows = $("job-rows");
  rows.replaceChildren();
  for (const job of data.jobs) {
    const tr = document.createElement("tr");
    tr.dataset.jobId = job.id;
    tr.dataset.status = job.status;
    cell(tr, job.source_name);
    const status = cell(tr, job.status, "status status-" + job.status);
    if (job.error) status.title = job.error;
    progressCell(cell(tr), job);
    const created = /(Z|[+-]\d\d:\d\d)$/.test(job.created_at) ? job.created_at : job.created_at + "Z";
    cell(tr, new Date(created).toLocaleString());
    const actions = cell(tr);
    if (job.status === "succeeded") {
      const open = document.createElement("button");
      open.textContent = "Read";
      open.className = "read";
      open.onclick = () => showDocument(job);
      actions.appendChild(open);
    } else if (!["failed", "cancelled"].includes(job.status)) {
      const follow = document.createElement("button");
      follow.textContent = "Follow";
      follow.className = "follow";
      follow.onclick = () => followJob(job);
      actions.appendChild(follow);
      const cancel = document.createElement("button");
      cancel.textContent = "Cancel";
      cancel.onclick = async () => { await api("/v1/jobs/" + job.id + "/cancel", { method: "POST" }); refreshJobs(); };
      actions.appendChild(cancel);
    } else {
      const retry = document.createElement("button");
      retry.textContent = "Retry";
      retry.onclick = async () => { await api("/v1/jobs/" + job.id + "/retry", { method: "POST" }); refreshJobs(); };
      actions.appendChild(retry);
    }
    rows.appendChild(tr);
  }
}

// --- documents -------------------------------------------------------------------------------

// A small Markdown subset (headings, lists, bold, paragraphs) built with DOM nodes: the document
// is model output and user text, so nothing in it is ever parsed as HTML.
function inline(parent, text) {
  const parts = text.split("**");
  parts.forEach((part, i) => {
    if (i % 2 === 1) {
      const strong = document.createElement("strong");
      strong.textContent = part;
      parent.appendChild(strong);
    } else {
      parent.appendChild(document.createTextNode(part));
    }
  });
}

function renderMarkdown(md, target) {
  target.replaceChildren();
  let list = null;
  let para = null;
  for (const line of md.split("\n")) {
    const heading = /^(#{1,6})\s+(.*)$/.exec(line);
    const item = /^\s*[-*]\s+(.*)$/.exec(line);
    const quote = /^>\s?(.*)$/.exec(line);
    const emphasis = /^_(.+)_$/.exec(line.trim());
    if (heading) {
      list = para = null;
      const h = document.createElement("h" + Math.min(heading[1].length, 6));
      inline(h, heading[2]);
      target.appendChild(h);
    } else if (item) {
      para = null;
      if (!list) { list = document.createElement("ul"); target.appendChild(list); }
      const li = document.createElement("li");
      inline(li, item[1]);
      list.appendChild(li);
    } else if (quote || emphasis) {
      list = para = null;
      const el = document.createElement(quote ? "blockquote" : "p");
      const inner = quote ? el : el.appendChild(document.createElement("em"));
      inline(inner, quote ? quote[1] : emphasis[1]);
      target.appendChild(el);
    } else if (line.trim() === "") {
      list = para = null;
    } else {
      list = null;
      if (!para) { para = document.createElement("p"); target.appendChild(para); }
      else { para.appendChild(document.createElement("br")); }
      inline(para, line);
    }
  }
}

async function showDocument(job) {
  stopLive();
  closePlayer();
  openJob = job;
  const resp = await api("/v1/jobs/" + job.id + "/documents/document.md");
  if (!resp.ok) { $("upload-status").textContent = await problem(resp); return; }
  $("document-title").textContent = job.source_name;
  $("live-status").hidden = true;
  $("live-windows").hidden = true;
  $("live-windows").replaceChildren();
  renderMarkdown(await resp.text(), $("document-body"));
  $("document-body").hidden = false;
  const flower = $("flower-link");
  flower.hidden = !job.links.flower;
  if (job.links.flower) flower.href = job.links.flower;
  const docs = job.links.documents || {};
  $("download-srt").hidden = !docs["transcript.srt"];
  $("download-vtt").hidden = !docs["transcript.vtt"];
  $("document").hidden = false;
  $("document").scrollIntoView();
  const segments = await fetchSegments(job);
  if (openJob !== job) return; // another document was opened meanwhile
  await showPlayer(job, segments);
}

// --- a running job, live: its events (GET /v1/jobs/ID/events) read with fetch, so the API key
// goes in a header; the stream is opened again after any break, from the last event's id ---------

function followJob(job) {
  stopLive();
  closePlayer();
  openJob = job;
  $("document-title").textContent = job.source_name;
  $("document-body").replaceChildren();
  $("document-body").hidden = true; // the final document replaces the live view
  $("live-windows").replaceChildren();
  $("live-windows").hidden = false;
  $("live-status").hidden = false;
  $("live-status").textContent = "Waiting for the first words…";
  $("flower-link").hidden = true;
  $("download-srt").hidden = false;
  $("download-vtt").hidden = false;
  $("document").hidden = false;
  $("document").scrollIntoView();
  showPlayer(job, []); // the recording plays and seeks at once; the transcript grows below it
  live = { job, lastId: "", controller: null, stopped: false, finished: false };
  streamEvents(live);
}

function stopLive() {
  if (!live) return;
  live.stopped = true;
  if (live.controller) live.controller.abort();
  live = null;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function streamEvents(state) {
  let wait = 2000;
  while (!state.stopped && !state.finished) {
    let pause = wait;
    try {
      state.controller = new AbortController();
      const headers = state.lastId ? { "Last-Event-ID": state.lastId } : {};
      const resp = await api("/v1/jobs/" + state.job.id + "/events", { headers, signal: state.controller.signal });
      if (resp.status === 401 || resp.status === 404) {
        $("live-status").textContent = await problem(resp);
        return;
      }
      if (resp.status === 429) {
        pause = 1000 * (parseInt(resp.headers.get("Retry-After"), 10) || 10);
      } else if (resp.ok) {
        const reader = resp.body.getReader();
        const decoder = new TextDecoder();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true });
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, cut);
            buffer = buffer.slice(cut + 2);
            const retry = /^retry: (\d+)$/m.exec(block);
            if (retry) wait = parseInt(retry[1], 10);
            if (state.stopped) return;
            handleEvent(state, block);
          }
        }
      }
    } catch (e) {
      if (state.stopped) return;
    }
    if (state.stopped || state.finished) return;
    $("live-status").textContent = "Connection lost; reconnecting…";
    $("live-status").dataset.reconnecting = "true";
    await sleep(pause);
  }
}

function handleEvent(state, block) {
  const fields = {};
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue;
    const at = line.indexOf(": ");
    if (at > 0) fields[line.slice(0, at)] = line.slice(at + 2);
  }
  if (!fields.event || fields.data === undefined) return;
  let data;
  try { data = JSON.parse(fields.data); } catch (e) { return; }
  if (fields.event === "status") {
    const windows = data.windows_done + "/" + (data.windows_total === null ? "?" : data.windows_total);
    $("live-status").textContent = "Live: " + data.status + " · windows " + windows;
    $("live-status").dataset.status = data.status;
  } else if (fields.event === "segment") {
    if (player && player.job === state.job) addSegment(data);
  } else if (fields.event === "window") {
    addWindowSummary(data);
  } else if (fields.event === "document") {
    state.finished = true;
    finishLive(state);
  } else if (fields.event === "error") {
    state.finished = true;
    $("live-status").textContent = "The job " + data.status + (data.reason ? ": " + data.reason : ".");
  }
  if (fields.id) state.lastId = fields.id;
}

function addWindowSummary(win) {
  const section = document.createElement("section");
  section.className = "window-summary";
  section.dataset.index = String(win.index);
  const h = document.createElement("h3");
  h.textContent = clock(win.start_s) + " – " + clock(win.end_s);
  const p = document.createElement("p");
  p.textContent = win.summary || "No summary for this part.";
  section.append(h, p);
  $("live-windows").appendChild(section);
}

// The job succeeded: the final document replaces the live view.
async function finishLive(state) {
  const resp = await api("/v1/jobs/" + state.job.id);
  if (!resp.ok || live !== state) return;
  live = null;
  await showDocument(await resp.json());
}

// --- the player: the recording, its captions, the timed transcript ----------------------------
//
// <audio>/<video> and <track> send no Authorization header: the page asks the API for signed links
// (one hour) and the browser streams the recording with Range requests like any media URL.

let player = null; // { job, media, segments, items, current, expires, refreshing }

function clock(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  const pad = (n) => String(n).padStart(2, "0");
  return pad(Math.floor(s / 3600)) + ":" + pad(Math.floor((s % 3600) / 60)) + ":" + pad(s % 60);
}

function closePlayer() {
  if (player && player.media) {
    player.media.pause();
    player.media.removeAttribute("src");
    player.media.load();
  }
  player = null;
  $("player").replaceChildren();
  $("player").hidden = true;
  $("player-status").textContent = "";
  $("segments").replaceChildren();
  $("segment-count").textContent = "";
  $("timed").hidden = true;
}

async function fetchSegments(job) {
  const resp = await api("/v1/jobs/" + job.id + "/documents/document.json");
  if (!resp.ok) return [];
  try {
    const doc = await resp.json();
    return Array.isArray(doc.segments) ? doc.segments : [];
  } catch (e) {
    return [];
  }
}

async function fetchLink(job) {
  const resp = await api("/v1/jobs/" + job.id + "/recording/link", { method: "POST" });
  if (!resp.ok) return { error: await problem(resp) };
  return resp.json();
}

async function showPlayer(job, segments) {
  const mine = { job, media: null, segments: [], items: [], current: -1, expires: 0, refreshing: false };
  player = mine;
  renderSegments(segments);
  const link = await fetchLink(job);
  if (openJob !== job || player !== mine) return; // another document was opened meanwhile
  if (link.error) {
    $("player-status").textContent = "The recording cannot be played here: " + link.error;
    return;
  }
  const media = document.createElement(link.kind === "video" ? "video" : "audio");
  media.id = "media";
  media.controls = true;
  media.preload = "metadata";
  media.src = link.recording_url;
  if (link.captions_url && (segments.length || (job.links.documents || {})["transcript.vtt"])) {
    const track = document.createElement("track");
    track.kind = "captions";
    track.default = true;
    track.label = "Transcript";
    if (job.language) track.srclang = job.language;
    track.src = link.captions_url;
    track.addEventListener("error", () => {
      $("player-status").textContent = "The captions could not be loaded.";
    });
    media.appendChild(track);
    // An audio element shows no captions, but its cues still load and follow playback.
    if (link.kind !== "video") track.track.mode = "hidden";
  }
  media.addEventListener("timeupdate", () => highlight(media.currentTime));
  media.addEventListener("seeked", () => highlight(media.currentTime));
  media.addEventListener("error", () => refreshLink());
  player.media = media;
  player.expires = Date.parse(link.expires_at);
  $("player").replaceChildren(media);
  $("player").hidden = false;
}

// A link that expired while the page was open: ask for a new one and carry on where playback was.
async function refreshLink() {
  const p = player;
  if (!p || p.refreshing) return;
  if (Date.now() < p.expires - 60000) {
    $("player-status").textContent = "The recording could not be played in this browser.";
    return;
  }
  p.refreshing = true;
  const link = await fetchLink(p.job);
  if (player !== p) return;
  if (link.error) {
    $("player-status").textContent = "The recording cannot be played here: " + link.error;
    return; // stays "refreshing": one new link per expiry, not a loop of failing requests
  }
  const at = p.media.currentTime;
  const playing = !p.media.paused;
  p.expires = Date.parse(link.expires_at);
  p.media.src = link.recording_url;
  p.media.currentTime = at;
  if (playing) p.media.play().catch(() => {});
  p.refreshing = false;
}

function renderSegments(segments) {
  $("segments").replaceChildren();
  player.segments = [];
  player.items = [];
  segments.forEach(addSegment);
  $("segment-count").textContent = segments.length ? "(" + segments.length + " segments)" : "";
  $("timed").hidden = segments.length === 0;
}

// One more segment at the end of the timed transcript (segments come in recording order).
function addSegment(seg) {
  const i = player.segments.length;
  player.segments.push(seg);
  const li = document.createElement("li");
  li.className = "segment";
  li.dataset.index = String(i);
  const stamp = document.createElement("button");
  stamp.type = "button";
  stamp.className = "stamp";
  stamp.dataset.start = String(seg.start_s);
  stamp.textContent = clock(seg.start_s);
  stamp.title = "Play from " + clock(seg.start_s);
  stamp.addEventListener("click", () => seek(seg.start_s));
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = seg.text;
  li.append(stamp, text);
  $("segments").appendChild(li);
  player.items.push(li);
  $("segment-count").textContent = "(" + player.segments.length + " segments)";
  $("timed").hidden = false;
}

function seek(seconds) {
  if (!player || !player.media) return;
  player.media.currentTime = seconds;
  highlight(seconds);
  player.media.play().catch(() => {}); // a click is a user gesture: playing is allowed
}

// The segment under the playhead: the last one starting at or before it, while it lasts.
function segmentAt(seconds) {
  const segs = player.segments;
  let lo = 0;
  let hi = segs.length - 1;
  let found = -1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (segs[mid].start_s <= seconds) { found = mid; lo = mid + 1; } else { hi = mid - 1; }
  }
  return found >= 0 && seconds < segs[found].end_s ? found : -1;
}

function highlight(seconds) {
  if (!player) return;
  const now = segmentAt(seconds);
  if (now === player.current) return;
  if (player.current >= 0) {
    const old = player.items[player.current];
    old.classList.remove("current");
    old.removeAttribute("aria-current");
  }
  player.current = now;
  if (now >= 0) {
    player.items[now].classList.add("current");
    player.items[now].setAttribute("aria-current", "true");
  }
}

async function download(name) {
  if (!openJob) return;
  const partial = live && live.job === openJob ? "?partial=true" : "";
  const resp = await api("/v1/jobs/" + openJob.id + "/documents/" + name + partial);
  if (!resp.ok) return;
  const url = URL.createObjectURL(await resp.blob());
  const a = document.createElement("a");
  a.href = url;
  a.download = openJob.source_name.replace(/\.[^.]*$/, "") + "-" + name;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// --- wiring ----------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("sign-in-form").addEventListener("submit", (e) => { e.preventDefault(); signIn($("api-key").value.trim()); });
  $("sign-out").addEventListener("click", signOut);
  $("file").addEventListener("change", (e) => choose(e.target.files));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) choose(e.dataTransfer.files);
  });
  $("start").addEventListener("click", uploadAll);
  $("search-form").addEventListener("submit", (e) => { e.preventDefault(); runSearch(); });
  $("download-md").addEventListener("click", () => download("document.md"));
  $("download-json").addEventListener("click", () => download("document.json"));
  $("download-txt").addEventListener("click", () => download("transcript.txt"));
  $("download-srt").addEventListener("click", () => download("transcript.srt"));
  $("download-vtt").addEventListener("click", () => download("transcript.vtt"));
  $("close-document").addEventListener("click", () => { stopLive(); closePlayer(); $("document").hidden = true; openJob = null; });
  if (apiKey) signIn(apiKey);
});
