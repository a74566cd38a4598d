// flora label: the page. Everything it shows comes from /api/state; every decision is one
// POST /api/decide (or /api/undo), whose answer updates the local copy of the queue.
"use strict";
const $ = (id) => document.getElementById(id);
const S = { items: [], classes: [], info: {}, order: "uncertainty", cur: null, skipped: [],
  typing: null, grid: null, busy: false, mode: "inbox", explain: false };

function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => "&#" + c.charCodeAt(0) + ";");
}
function pct(x) { return x == null ? "" : (100 * x).toFixed(1) + "%"; }
function say(text, error) {
  const m = $("message");
  m.textContent = text;
  m.className = "show" + (error ? " error" : "");
  clearTimeout(say.t);
  say.t = setTimeout(() => { m.className = ""; }, error ? 8000 : 3000);
}
async function api(method, url, body) {
  const opts = { method, headers: {} };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(url, opts);
  const j = await r.json().catch(() => ({ error: r.statusText }));
  if (!r.ok) throw new Error(j.error || r.statusText);
  return j;
}
function byPath(p) { return S.items.find((it) => it.path === p); }

// The pending items in the chosen order; skipped ones last, in the order they were skipped.
function queue() {
  const pending = S.items.filter((it) => it.state === "pending");
  const key = {
    uncertainty: (a, b) => a.rank - b.rank,
    date: (a, b) => (a.date || "").localeCompare(b.date || ""),
    class: (a, b) => (a.suggested || "~").localeCompare(b.suggested || "~") || a.rank - b.rank,
  }[S.order];
  const rest = pending.filter((it) => !S.skipped.includes(it.path)).sort(key);
  const skipped = S.skipped.map(byPath).filter((it) => it && it.state === "pending");
  return rest.concat(skipped);
}
function current() { return S.cur ? byPath(S.cur) : null; }

function render() {
  const done = S.items.filter((it) => it.state !== "pending").length;
  $("progress").textContent = `${done} / ${S.items.length} sorted`;
  const q = queue();
  if (!S.cur || !byPath(S.cur) || byPath(S.cur).state !== "pending") {
    S.cur = q.length ? q[0].path : null;
  }
  $("done").hidden = S.cur !== null;
  $("single").hidden = S.cur === null || S.grid !== null;
  $("grid").hidden = S.grid === null;
  if (S.grid !== null) return renderGrid();
  const it = current();
  if (!it) return;
  const src = "/api/image?path=" + encodeURIComponent(it.path);
  if ($("photo").dataset.path !== it.path) {
    $("photo").src = src;
    $("photo").dataset.path = it.path;
    $("heat").hidden = true;
    $("photo").hidden = false;
  }
  $("path").textContent = it.path;
  const sug = it.suggested
    ? `<b>${esc(it.suggested)}</b> ${pct(it.confidence)}` : "<i>no suggestion</i>";
  $("suggestion").innerHTML = (it.given != null
    ? `labelled <b>${esc(it.given)}</b>, audit suggests ` : "suggestion: ") + sug;
  $("topk").innerHTML = (it.top_k || []).slice(0, 5).map((s, i) =>
    `<div class="bar${i === 0 ? " best" : ""}"><span class="name">${esc(s.class)}</span>` +
    `<span class="track"><span class="fill" style="width:${(100 * s.confidence).toFixed(1)}%;display:block"></span></span>` +
    `<span>${pct(s.confidence)}</span></div>`).join("");
  const facts = [];
  if (it.date) facts.push(`${it.given != null ? "file date" : "uploaded"} ${esc(it.date)}`);
  if (it.serve) facts.push(`serve said <b>${esc(it.serve.class)}</b> ${pct(it.serve.confidence)}` +
    (it.serve.slot ? ` (${esc(it.serve.slot)})` : ""));
  if (it.suggested_by) facts.push(`suggested by ${esc(it.suggested_by)}`);
  if (it.margin != null) facts.push(`margin ${pct(it.margin)}`);
  if (it.score != null) facts.push(`audit score ${it.score.toFixed(3)}`);
  if (it.problem) facts.push(`<span style="color:#c0392b">${esc(it.problem)}</span>`);
  $("facts").innerHTML = facts.join(" · ");
  const info = S.info[it.suggested];
  $("info").innerHTML = info ? Object.entries(info).map(([k, v]) =>
    `<div><b>${esc(k)}</b>: ${esc(typeof v === "string" ? v : JSON.stringify(v))}</div>`).join("") : "";
  $("keep-btn").hidden = it.given == null;
  $("explain-btn").disabled = !S.explain;
  renderClasses(it);
}

function shownClasses() {
  const t = S.typing;
  if (!t) return S.classes;
  const low = t.toLowerCase();
  return S.classes.filter((c) => c.toLowerCase().startsWith(low))
    .concat(S.classes.filter((c) => !c.toLowerCase().startsWith(low) && c.toLowerCase().includes(low)));
}
function renderClasses(it) {
  const list = shownClasses();
  $("classes").innerHTML = list.map((c, i) =>
    `<li data-class="${esc(c)}" class="${c === it.suggested ? "suggested" : ""}${S.typing && i === 0 ? " match" : ""}">` +
    `${i < 9 ? `<kbd>${i + 1}</kbd> ` : ""}${esc(c)}${c === it.given ? " (given)" : ""}</li>`).join("");
}

async function decide(paths, action, cls) {
  if (S.busy || !paths.length) return;
  S.busy = true;
  try {
    const r = await api("POST", "/api/decide", { paths, action, class: cls });
    apply(r.changed);
    if (r.classes) S.classes = r.classes;
    S.skipped = S.skipped.filter((p) => !paths.includes(p));
    (r.notes || []).forEach((n) => say(n, true));
    const moved = Object.values(r.changed)[0];
    if (moved && !(r.notes || []).length) {
      say(action === "keep" ? `kept in ${moved.class}` :
        `${paths.length} → ${moved.class || "rejected"}: ${moved.destination}`);
    }
  } catch (e) {
    say(e.message, true);
  } finally {
    S.busy = false;
    render();
  }
}
function apply(changed) {
  for (const [p, st] of Object.entries(changed || {})) {
    const it = byPath(p);
    if (!it) continue;
    delete it.class; delete it.destination;
    Object.assign(it, st);
  }
}
async function undo() {
  if (S.busy) return;
  S.busy = true;
  try {
    const r = await api("POST", "/api/undo");
    apply(r.changed);
    const back = Object.keys(r.changed);
    if (back.length) S.cur = back[0];
    S.grid = null;
    say(`undone: ${back.length} image(s) back in the queue`);
  } catch (e) {
    say(e.message, true);
  } finally {
    S.busy = false;
    render();
  }
}
function accept() {
  const it = current();
  if (!it) return;
  if (!it.suggested) return say("no suggestion: pick a class (1–9, / or n)", true);
  decide([it.path], "class", it.suggested);
}
function pick(cls) {
  const it = current();
  if (it && cls) decide([it.path], "class", cls);
}
function skip() {
  const it = current();
  if (!it) return;
  S.skipped = S.skipped.filter((p) => p !== it.path).concat([it.path]);
  S.cur = null;
  render();
}
async function explain() {
  const it = current();
  if (!it || !S.explain) return say("no model: nothing to explain with", true);
  if (!$("heat").hidden) { $("heat").hidden = true; $("photo").hidden = false; return; }
  say("computing why…");
  try {
    const r = await fetch("/api/explain?path=" + encodeURIComponent(it.path));
    if (!r.ok) throw new Error((await r.json().catch(() => ({}))).error || r.statusText);
    const url = URL.createObjectURL(await r.blob());
    if (current() !== it) return;
    $("heat").src = url;
    $("heat").hidden = false;
    $("photo").hidden = true;
    say("heat map: bright = what the model looked at (e again to hide)");
  } catch (e) {
    say(e.message, true);
  }
}
function startTyping(newClass) {
  S.typing = "";
  S.newClass = newClass;
  const t = $("type");
  t.value = "";
  t.placeholder = newClass ? "new class name, Enter to use it" : "type a class, Enter picks the first";
  t.focus();
  render();
}
function stopTyping() {
  S.typing = null;
  S.newClass = false;
  $("type").value = "";
  $("type").placeholder = "/ to type a class, n for a new one";
  $("type").blur();
  render();
}

// Grid: the pending images with the current image's suggested class, all selected.
function openGrid() {
  const it = current();
  if (!it || !it.suggested) return say("no suggested class to group by", true);
  S.grid = { cls: it.suggested, off: new Set() };
  render();
}
function gridItems() {
  return queue().filter((it) => it.suggested === S.grid.cls);
}
function renderGrid() {
  const items = gridItems();
  const on = items.filter((it) => !S.grid.off.has(it.path)).length;
  $("grid-title").innerHTML = `suggested <b>${esc(S.grid.cls)}</b>: ${items.length} image(s), ${on} selected (click to deselect)`;
  $("grid-cells").innerHTML = items.map((it) =>
    `<div class="cell${S.grid.off.has(it.path) ? " off" : ""}" data-path="${esc(it.path)}">` +
    `<img src="/api/image?side=256&path=${encodeURIComponent(it.path)}" alt=""><div>${pct(it.confidence)}</div></div>`).join("");
}
function gridAccept() {
  const paths = gridItems().filter((it) => !S.grid.off.has(it.path)).map((it) => it.path);
  const cls = S.grid.cls;
  S.grid = null;
  decide(paths, "class", cls);
}

document.addEventListener("keydown", (ev) => {
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  if (S.typing !== null) {
    if (ev.key === "Escape") { ev.preventDefault(); stopTyping(); }
    else if (ev.key === "Enter") {
      ev.preventDefault();
      const cls = S.newClass ? $("type").value.trim() : shownClasses()[0];
      stopTyping();
      if (cls) pick(cls);
    }
    return;
  }
  if (S.grid !== null) {
    if (ev.key === "Enter") { ev.preventDefault(); gridAccept(); }
    else if (ev.key === "Escape" || ev.key === "g") { S.grid = null; render(); }
    else if (ev.key === "u") undo();
    return;
  }
  const k = ev.key;
  if (k === "Enter") { ev.preventDefault(); accept(); }
  else if (/^[1-9]$/.test(k)) pick(shownClasses()[Number(k) - 1]);
  else if (k === "/") { ev.preventDefault(); startTyping(false); }
  else if (k === "n") { ev.preventDefault(); startTyping(true); }
  else if (k === "x") { const it = current(); if (it) decide([it.path], "reject"); }
  else if (k === "k") { const it = current(); if (it && it.given != null) decide([it.path], "keep"); }
  else if (k === "s") skip();
  else if (k === "u") undo();
  else if (k === "e") explain();
  else if (k === "g") openGrid();
  else if (k === "o") {
    const o = $("order");
    o.selectedIndex = (o.selectedIndex + 1) % o.options.length;
    o.dispatchEvent(new Event("change"));
  }
});
$("type").addEventListener("input", () => { S.typing = $("type").value; render(); });
$("type").addEventListener("focus", () => { if (S.typing === null) { S.typing = ""; render(); } });
$("order").addEventListener("change", () => {
  S.order = $("order").value; S.cur = null; $("order").blur(); render();
});
$("classes").addEventListener("click", (ev) => {
  const li = ev.target.closest("li");
  if (li) { stopTyping(); pick(li.dataset.class); }
});
$("accept-btn").onclick = accept;
$("reject-btn").onclick = () => { const it = current(); if (it) decide([it.path], "reject"); };
$("keep-btn").onclick = () => { const it = current(); if (it) decide([it.path], "keep"); };
$("skip-btn").onclick = skip;
$("undo-btn").onclick = undo;
$("explain-btn").onclick = explain;
$("grid-btn").onclick = openGrid;
$("grid-accept").onclick = gridAccept;
$("grid-close").onclick = () => { S.grid = null; render(); };
$("grid-cells").addEventListener("click", (ev) => {
  const cell = ev.target.closest(".cell");
  if (!cell) return;
  const p = cell.dataset.path;
  if (S.grid.off.has(p)) S.grid.off.delete(p); else S.grid.off.add(p);
  renderGrid();
});
document.querySelectorAll("button").forEach((b) => b.addEventListener("mouseup", () => b.blur()));

(async () => {
  try {
    const s = await api("GET", "/api/state");
    S.items = s.items; S.classes = s.classes; S.info = s.class_info || {};
    S.mode = s.mode; S.explain = s.explain;
    $("model").textContent = (s.model ? "model: " + s.model : "no model") + " · batch " + s.batch + " · " + s.user;
    document.body.dataset.ready = "1";
    render();
  } catch (e) {
    say(e.message, true);
  }
})();
