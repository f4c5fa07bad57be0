// semsearch console: one page over the server's JSON endpoints (POST /api/v1/<Rpc>, the gRPC API in the
// protobuf JSON mapping). Its state lives in the URL query, so every view is a link.
"use strict";

const MODES = { dense: "SEARCH_MODE_DENSE", lexical: "SEARCH_MODE_LEXICAL", hybrid: "SEARCH_MODE_HYBRID" };
const VIEWS = ["results", "compare", "map", "browse"];
const KEY_STORE = "semsearch-api-key";
const state = { collection: "", q: "", mode: "dense", top_k: 5, where: "", explain: "", why_not: "", view: "results", attention: false };
const $ = (id) => document.getElementById(id);

// ---- small DOM helpers (no innerHTML with data: texts are shown as text) --------------------------------
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "style") Object.assign(el.style, v);
    else if (k === "data") Object.assign(el.dataset, v);
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) el.append(c instanceof Node ? c : String(c));
  return el;
}
function svg(tag, attrs, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== undefined) el.setAttribute(k, v);
  for (const c of children) el.append(c instanceof Node ? c : String(c));
  return el;
}
const fmt = (x, d = 3) => (x === undefined || x === null || Number.isNaN(+x) ? "–" : (+x).toFixed(d));
// Offsets from the server count code points; JavaScript strings count UTF-16 units.
const cut = (text, start, end) => Array.from(text).slice(start, end).join("");

// ---- the URL is the state ---------------------------------------------------------------------------
function readUrl() {
  const p = new URLSearchParams(location.search);
  state.collection = p.get("collection") || "";
  state.q = p.get("q") || "";
  state.mode = MODES[p.get("mode")] ? p.get("mode") : "dense";
  state.top_k = Math.max(1, parseInt(p.get("top_k") || "5", 10) || 5);
  state.where = p.get("where") || "";
  state.explain = p.get("explain") || "";
  state.why_not = p.get("why_not") || "";
  state.view = VIEWS.includes(p.get("view")) ? p.get("view") : "results";
  state.attention = p.get("attention") === "1";
}
function writeUrl(push = true) {
  const p = new URLSearchParams();
  if (state.collection) p.set("collection", state.collection);
  if (state.q) p.set("q", state.q);
  if (state.mode !== "dense") p.set("mode", state.mode);
  if (state.top_k !== 5) p.set("top_k", state.top_k);
  if (state.where) p.set("where", state.where);
  if (state.explain) p.set("explain", state.explain);
  if (state.why_not) p.set("why_not", state.why_not);
  if (state.view !== "results") p.set("view", state.view);
  if (state.attention) p.set("attention", "1");
  const url = location.pathname + (p.toString() ? "?" + p.toString().replace(/\+/g, "%20") : "");
  if (url !== location.pathname + location.search) history[push ? "pushState" : "replaceState"](null, "", url);
}
function formFromState() {
  $("query").value = state.q;
  $("top-k").value = state.top_k;
  $("mode").value = state.mode;
  $("where").value = state.where;
  $("why-not-id").value = state.why_not;
  if (state.collection) $("collection").value = state.collection;
  for (const a of document.querySelectorAll("#views a")) a.classList.toggle("active", a.dataset.view === state.view);
}

// ---- the API ----------------------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}
async function api(rpc, body) {
  const headers = { "Content-Type": "application/json" };
  const key = sessionStorage.getItem(KEY_STORE);
  if (key) headers.Authorization = "Bearer " + key; // a header, never the URL
  const response = await fetch("/api/v1/" + rpc, { method: "POST", headers, body: JSON.stringify(body || {}) });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const e = data.error || {};
    const err = new ApiError(response.status, e.status || String(response.status), e.message || response.statusText);
    if (response.status === 401) askForKey(err.message);
    throw err;
  }
  return data;
}
const base = () => ({ collection: state.collection });
const withWhere = (body) => (state.where ? { ...body, where: { expression: state.where } } : body);

function askForKey(message) {
  $("key-message").textContent = message || "This server needs an API key (a read-only key is enough to look).";
  if (!$("key-dialog").open) $("key-dialog").showModal();
}

// Errors go where they belong: a filter's message under the filter box, anything else in the status line.
function showError(err) {
  if (err instanceof ApiError && err.message.startsWith("where")) {
    $("where-error").textContent = err.message;
    $("where").classList.add("bad");
  } else {
    $("status").textContent = err instanceof ApiError ? `${err.code}: ${err.message}` : String(err);
  }
}
function clearErrors() {
  $("where-error").textContent = "";
  $("where").classList.remove("bad");
  $("status").textContent = "";
}

// ---- colours that read as more (dark) and less (light); negative in blue -----------------------------
function heat(value, limit) {
  const t = limit > 0 ? Math.min(1, Math.abs(value) / limit) : 0;
  const light = 97 - 55 * Math.sqrt(t);
  return value >= 0 ? `hsl(18, 85%, ${light}%)` : `hsl(212, 70%, ${light}%)`;
}
const maxAbs = (values) => values.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
function legend(limit, label) {
  return h("div", { class: "legend" }, h("span", {}, label || "less"),
    h("span", { class: "bar", style: { background: `linear-gradient(to right, ${heat(0, 1)}, ${heat(1, 1)})` } }),
    h("span", {}, `more (${fmt(limit)})`), h("span", { class: "bar", style: { width: "14px", background: heat(-1, 1) } }), h("span", {}, "negative"));
}

// ---- collections ------------------------------------------------------------------------------------
async function loadCollections() {
  const data = await api("ListCollections", {});
  const select = $("collection");
  select.replaceChildren(...(data.collections || []).map((c) =>
    h("option", { value: c.name, data: { count: c.documentCount } }, `${c.name} (${c.documentCount} docs)`)));
  const names = (data.collections || []).map((c) => c.name);
  if (!names.includes(state.collection)) state.collection = names.includes("demo") ? "demo" : names[0] || "";
  select.value = state.collection;
}

// ---- hits ---------------------------------------------------------------------------------------------
function passageText(hit) {
  const text = hit.text || "";
  const p = hit.passage || {};
  const n = Array.from(text).length;
  const start = p.start || 0, end = p.end === undefined ? n : p.end;
  const whole = start === 0 && end >= n;
  return h("div", { class: "text" }, cut(text, 0, start),
    h("mark", { class: whole ? "whole" : null, title: whole ? "the whole text is one passage" : `best passage (${(p.index || 0) + 1})` }, cut(text, start, end)),
    cut(text, end, n));
}
function hitCard(hit, rank, mode, extra) {
  const parts = [];
  if (mode !== "lexical") parts.push(`dense ${fmt(hit.denseScore)}`);
  if (mode !== "dense") parts.push(`lexical ${fmt(hit.lexicalScore)}`);
  return h("div", {
    class: "hit" + (hit.id === state.explain ? " selected" : ""), data: { id: hit.id, rank: rank },
    onclick: () => { state.explain = hit.id; state.mode = mode; writeUrl(); render(); },
  }, h("div", { class: "top" }, h("span", { class: "rank" }, rank), h("span", { class: "id" }, hit.id), extra || null,
    h("span", { class: "score", title: `score in ${mode} mode` }, fmt(hit.score, 4))),
  h("div", { class: "parts" }, parts.join(" · ")), passageText(hit));
}
const search = (mode, topK) => api("Search", withWhere({ ...base(), query: state.q, topK: topK || state.top_k, mode: MODES[mode] }));

async function renderResults(view) {
  const data = await search(state.mode);
  const hits = data.hits || [];
  view.replaceChildren(h("h2", {}, `${hits.length} hits, ${state.mode}`), ...hits.map((hit, i) => hitCard(hit, i + 1, state.mode)));
  if (!hits.length) view.append(h("p", { class: "hint" }, "No document matches."));
}

async function renderCompare(view) {
  const modes = ["dense", "lexical", "hybrid"];
  const lists = await Promise.all(modes.map((m) => search(m)));
  const denseRank = new Map((lists[0].hits || []).map((hit, i) => [hit.id, i + 1]));
  const columns = modes.map((mode, j) => {
    const hits = lists[j].hits || [];
    return h("div", { id: `compare-${mode}` }, h("h2", {}, mode),
      ...hits.map((hit, i) => hitCard(hit, i + 1, mode, j === 0 ? null : move(denseRank.get(hit.id), i + 1))));
  });
  view.replaceChildren(h("p", { class: "hint" }, "The same query in each mode; ▲/▼ mark a hit's move against its dense rank, new a hit dense did not rank in its top k."),
    h("div", { class: "columns" }, ...columns));
}
function move(before, now) {
  if (before === undefined) return h("span", { class: "move new", title: "not in dense top k" }, "new");
  if (before === now) return h("span", { class: "move same", title: "same rank as dense" }, "=");
  return before > now ? h("span", { class: "move up", title: `dense rank ${before}` }, `▲${before - now}`)
    : h("span", { class: "move down", title: `dense rank ${before}` }, `▼${now - before}`);
}

// ---- Explain ----------------------------------------------------------------------------------------
function explainRequest(docId, attention) {
  return withWhere({ ...base(), query: state.q, docId, topK: state.top_k, mode: MODES[state.mode], includeAttention: !!attention });
}
function words(text, segments, limit) {
  const n = Array.from(text).length;
  const out = [];
  let at = 0;
  for (const s of segments) {
    if (s.special || s.end <= at) continue;
    if (s.start > at) out.push(cut(text, at, s.start));
    out.push(h("span", { class: "seg", title: `${s.text}: ${fmt(s.contribution, 4)}`, style: { background: heat(s.contribution || 0, limit) } }, cut(text, s.start, s.end)));
    at = s.end;
  }
  if (at < n) out.push(cut(text, at, n));
  return h("div", { class: "words" }, ...out);
}
function heatmap(id, rowSegs, colSegs, values, rows, cols, digits = 4) {
  const limit = maxAbs(values);
  const label = (s) => h("th", { class: s.special ? "special" : null, title: s.text }, s.text);
  const table = h("table", { class: "heat", id, data: { rows, cols } },
    h("thead", {}, h("tr", {}, h("th", {}), ...colSegs.map(label))),
    h("tbody", {}, ...rowSegs.map((r, i) => h("tr", {}, label(r), ...colSegs.map((c, j) => {
      const v = values[i * cols + j] || 0;
      return h("td", { title: `${r.text} × ${c.text}: ${fmt(v, digits)}`, style: { background: heat(v, limit) } });
    })))));
  return h("div", {}, legend(limit), h("div", { class: "heat-wrap" }, table));
}
async function renderExplain() {
  const box = $("explain");
  if (!state.explain || !state.q) { box.replaceChildren(h("p", { class: "hint" }, "Click a hit to see why it scores as it does.")); return; }
  box.replaceChildren(h("p", { class: "hint" }, `Explaining ${state.explain}…`));
  const [e, docs] = await Promise.all([api("Explain", explainRequest(state.explain, state.attention)), api("Get", { ...base(), ids: [state.explain] })]);
  const docText = ((docs.documents || [])[0] || {}).text || "";
  const qs = e.querySegments || [], ds = e.docSegments || [];
  const limit = maxAbs([...qs, ...ds].map((s) => s.contribution || 0));
  const figures = h("div", { class: "figures" },
    fig(fmt(e.score, 4), `score (${state.mode})`), fig(e.rank || "–", "rank"), fig(fmt(e.kthScore, 4), `k-th score (k=${state.top_k})`),
    state.mode !== "lexical" ? fig(fmt(e.denseScore, 4), "dense") : null, state.mode !== "dense" ? fig(fmt(e.lexicalScore, 4), "lexical (BM25)") : null,
    state.mode === "hybrid" ? fig(fmt(e.denseWeight, 2), "dense weight") : null);
  const parts = [h("h2", {}, `Explain ${state.explain}`), figures,
    e.excludedBy ? h("p", { class: "excluded" }, `Hidden by the filter: ${e.excludedBy}`) : null,
    ...(e.notes || []).map((n) => h("p", { class: "note" }, n)),
    h("h3", {}, "Word contributions (dense part)"), h("div", { id: "explain-query" }, h("b", {}, "query: "), words(state.q, qs, limit)),
    h("div", { id: "explain-doc" }, h("b", {}, "document: "), words(docText, ds, limit)),
    h("h3", {}, `Query word × document word: share of the dense score (${e.rows} × ${e.cols})`),
    heatmap("heatmap", qs, ds, e.pairContributions || [], e.rows, e.cols)];
  const terms = e.lexicalTerms || [];
  if (terms.length) {
    parts.push(h("h3", {}, "Lexical terms (BM25 parts)"), h("table", { class: "plain", id: "lexical-terms" },
      h("tr", {}, h("th", {}, "term"), h("th", {}, "query word"), h("th", {}, "tf"), h("th", {}, "df"), h("th", {}, "BM25")),
      ...terms.map((t) => h("tr", {}, h("td", {}, t.term), h("td", {}, t.queryText), h("td", { class: "num" }, t.termFrequency), h("td", { class: "num" }, t.documentFrequency), h("td", { class: "num" }, fmt(t.contribution, 4))))));
  }
  parts.push(h("h3", {}, "Attention"));
  if (!state.attention) {
    parts.push(h("button", { type: "button", id: "show-attention", onclick: () => { state.attention = true; writeUrl(); renderExplain().catch(showError); } }, "Show the model's attention"));
  } else {
    parts.push(h("p", { class: "hint" }, "Where each query word's attention goes in the document (each row sums to 1):"),
      heatmap("cross-attention", qs, ds, e.crossAttention || [], e.rows, e.cols, 3));
    if ((e.querySelfAttention || []).length) {
      parts.push(h("p", { class: "hint" }, `The model's own attention inside the query (layer ${e.attentionLayer}, head ${e.attentionHead < 0 ? "mean" : e.attentionHead}):`),
        heatmap("query-attention", qs, qs, e.querySelfAttention, e.querySelfAttentionSize, e.querySelfAttentionSize, 3));
    }
  }
  box.replaceChildren(h("div", { class: "panel" }, ...parts));
}
const fig = (value, label) => h("div", {}, h("b", {}, value), h("span", {}, label));

// ---- why not: a document's rank, the bar it had to clear, and what its score is made of --------------
async function renderWhyNot() {
  const box = $("why-not");
  if (!state.why_not || !state.q) { box.replaceChildren(); return; }
  const e = await api("Explain", explainRequest(state.why_not, false));
  const gap = (e.score || 0) - (e.kthScore || 0);
  const inTop = e.rank > 0 && e.rank <= state.top_k;
  const pairs = [];
  const qs = e.querySegments || [], ds = e.docSegments || [], pc = e.pairContributions || [];
  for (let i = 0; i < e.rows; i++) for (let j = 0; j < e.cols; j++) if (!qs[i].special && !ds[j].special) pairs.push([pc[i * e.cols + j] || 0, qs[i], ds[j]]);
  pairs.sort((a, b) => Math.abs(b[0]) - Math.abs(a[0]));
  const verdict = e.excludedBy ? h("p", { class: "excluded", id: "excluded-by" }, `Excluded by the filter: ${e.excludedBy}`)
    : h("p", {}, inTop ? `In the top ${state.top_k} at rank ${e.rank}, ${fmt(gap, 4)} above the k-th score.`
      : `Rank ${e.rank}: ${fmt(-gap, 4)} short of the k-th score (top ${state.top_k}).`);
  box.replaceChildren(h("div", { class: "panel", id: "why-not-result" }, h("h2", {}, `Why not ${state.why_not}?`), verdict,
    h("div", { class: "figures" }, fig(e.rank || "–", "rank"), fig(fmt(e.score, 4), "its score"), fig(fmt(e.kthScore, 4), "k-th score"), fig(fmt(gap, 4), "gap"),
      state.mode !== "lexical" ? fig(fmt(e.denseScore, 4), "dense part") : null, state.mode !== "dense" ? fig(fmt(e.lexicalScore, 4), "lexical part") : null),
    h("h3", {}, "Largest word-pair shares of the dense score (words only; [CLS]/[SEP] take the rest)"),
    h("table", { class: "plain" }, ...pairs.slice(0, 5).map(([v, q, d]) => h("tr", {}, h("td", {}, `${q.text} × ${d.text}`), h("td", { class: "num" }, fmt(v, 4))))),
    (e.lexicalTerms || []).length ? h("p", { class: "hint" }, "BM25: " + e.lexicalTerms.map((t) => `${t.term} ${fmt(t.contribution)}`).join(", ")) : null));
}

// ---- the map: PCA of the query's, the hits' and a sample's embeddings (from Embed) -------------------
function pca2(vectors) {
  const n = vectors.length, d = vectors[0].length;
  const mean = new Array(d).fill(0);
  for (const v of vectors) for (let k = 0; k < d; k++) mean[k] += v[k] / n;
  const x = vectors.map((v) => v.map((a, k) => a - mean[k]));
  const gram = x.map((a) => x.map((b) => a.reduce((s, ak, k) => s + ak * b[k], 0)));
  const trace = gram.reduce((s, row, i) => s + row[i], 0);
  const comps = [], values = [];
  for (let c = 0; c < 2; c++) { // power iteration on the Gram matrix, deflated by the components found
    let u = gram.map((_, i) => 1 + ((i * 7919) % 13) / 13);
    let lambda = 0;
    for (let it = 0; it < 300; it++) {
      let w = gram.map((row) => row.reduce((s, g, j) => s + g * u[j], 0));
      for (let p = 0; p < comps.length; p++) { const dot = w.reduce((s, a, i) => s + a * comps[p][i], 0); w = w.map((a, i) => a - dot * comps[p][i]); }
      const norm = Math.hypot(...w) || 1;
      lambda = norm; u = w.map((a) => a / norm);
    }
    comps.push(u); values.push(lambda);
  }
  // Sign as the CLI's map: the query (point 0) on the negative side of each axis.
  const coords = vectors.map((_, i) => comps.map((u, c) => u[i] * Math.sqrt(values[c]) * (u[0] > 0 ? -1 : 1)));
  return { coords, explained: values.map((v) => (trace > 0 ? v / trace : 0)) };
}
async function renderMap(view) {
  const hits = (await search(state.mode)).hits || [];
  const hitIds = new Set(hits.map((x) => x.id));
  const sample = ((await api("Scroll", withWhere({ ...base(), limit: 40 }))).documents || []).filter((d) => !hitIds.has(d.id));
  const points = [{ id: "query", text: state.q, kind: "query" }, ...hits.map((x, i) => ({ id: x.id, text: x.text, score: x.score, rank: i + 1, kind: "hit" })),
    ...sample.map((d) => ({ id: d.id, text: d.text, kind: "other" }))];
  const embedded = await api("Embed", { texts: points.map((p) => p.text) });
  const { coords, explained } = pca2(embedded.embeddings.map((e) => e.values));
  const W = 620, H = 420, pad = 44;
  const xs = coords.map((c) => c[0]), ys = coords.map((c) => c[1]);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const sx = (x) => pad + ((x - x0) / (x1 - x0 || 1)) * (W - 2 * pad), sy = (y) => H - pad - ((y - y0) / (y1 - y0 || 1)) * (H - 2 * pad);
  const scores = hits.map((x) => x.score), smax = Math.max(...scores), smin = Math.min(...scores);
  const tip = $("tooltip") || document.body.appendChild(h("div", { id: "tooltip" }));
  const chart = svg("svg", { id: "map-svg", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "2-D PCA map of the query and its hits" },
    svg("line", { class: "axis", x1: pad, y1: H - pad, x2: W - pad, y2: H - pad }), svg("line", { class: "axis", x1: pad, y1: pad, x2: pad, y2: H - pad }),
    svg("text", { x: W - pad, y: H - 14, "text-anchor": "end" }, `PC1 (${Math.round(explained[0] * 100)}% of the spread)`),
    svg("text", { x: 12, y: 20 }, `PC2 (${Math.round(explained[1] * 100)}%)`));
  points.forEach((p, i) => {
    const [cx, cy] = [sx(coords[i][0]), sy(coords[i][1])];
    const t = smax > smin ? (p.score - smin) / (smax - smin) : 1;
    const shape = p.kind === "query" ? svg("rect", { x: cx - 7, y: cy - 7, width: 14, height: 14, fill: "#1d2329", transform: `rotate(45 ${cx} ${cy})` })
      : svg("circle", { cx, cy, r: p.kind === "hit" ? 8 : 5, fill: p.kind === "hit" ? heat(0.25 + 0.75 * t, 1) : "#c9d0d6", stroke: p.kind === "hit" ? "#8a3b12" : "#9aa4ad" });
    const label = p.kind === "other" ? null : svg("text", { x: cx + 11, y: cy + 4, "font-weight": p.kind === "query" ? "600" : "400" }, p.kind === "query" ? "query" : `${p.rank}. ${p.id}`);
    const g = svg("g", { class: `point ${p.kind}`, "data-id": p.id }, shape);
    if (label) g.append(label);
    g.addEventListener("mousemove", (ev) => {
      tip.textContent = p.kind === "query" ? `query: ${p.text}` : `${p.id}${p.kind === "hit" ? ` (rank ${p.rank}, score ${fmt(p.score, 4)})` : " (not a hit)"}: ${p.text}`;
      Object.assign(tip.style, { display: "block", left: ev.clientX + 12 + "px", top: ev.clientY + 12 + "px" });
    });
    g.addEventListener("mouseleave", () => { tip.style.display = "none"; });
    if (p.kind !== "query") g.addEventListener("click", () => { state.explain = p.id; writeUrl(); renderExplain().catch(showError); });
    chart.append(g);
  });
  view.replaceChildren(h("h2", {}, "Map: the query, its hits and other documents"),
    h("p", { class: "note", id: "map-note" }, "A 2-D projection (PCA) of the embeddings distorts distances: nearness here is a hint, the scores are the truth. Darker hits score higher; grey points are other documents."),
    chart);
}

// ---- documents, paged with Scroll under the filter -----------------------------------------------------
const pages = { cursors: [""], at: 0 };
async function renderBrowse(view) {
  const [count, page] = await Promise.all([api("Count", withWhere(base())), api("Scroll", withWhere({ ...base(), limit: 20, cursor: pages.cursors[pages.at] }))]);
  const docs = page.documents || [];
  const go = (delta) => () => { if (delta > 0) pages.cursors[pages.at + 1] = page.nextCursor; pages.at += delta; render(); };
  view.replaceChildren(h("h2", {}, `${count.count} documents${state.where ? " match the filter" : ""}`),
    h("div", { class: "pager" }, h("button", { type: "button", id: "prev-page", disabled: pages.at === 0 ? "" : null, onclick: go(-1) }, "← previous"),
      h("span", {}, `page ${pages.at + 1}`), h("button", { type: "button", id: "next-page", disabled: page.nextCursor ? null : "", onclick: go(1) }, "next →")),
    h("table", { class: "plain", id: "documents" }, h("tr", {}, h("th", {}, "id"), h("th", {}, "text"), h("th", {}, "attributes")),
      ...docs.map((d) => h("tr", {}, h("td", {}, d.id), h("td", {}, d.text),
        h("td", {}, Object.entries(d.attributes || {}).map(([k, v]) => `${k}=${JSON.stringify(Object.values(v)[0])}`).join(", "))))));
}

// ---- rendering ----------------------------------------------------------------------------------------
async function render() {
  clearErrors();
  formFromState();
  const view = $("view");
  const renderers = { results: renderResults, compare: renderCompare, map: renderMap, browse: renderBrowse };
  const needsQuery = state.view !== "browse";
  const jobs = [];
  if (needsQuery && !state.q) view.replaceChildren(h("p", { class: "hint" }, "Type a query: try “I drink water with wine” on the demo collection."));
  else jobs.push(renderers[state.view](view).catch((err) => {
    view.replaceChildren(h("p", { class: "hint" }, "Nothing to show: the server refused the request (its message is above)."));
    throw err;
  }));
  jobs.push(renderExplain(), renderWhyNot());
  const results = await Promise.allSettled(jobs);
  for (const r of results) if (r.status === "rejected") showError(r.reason);
  document.body.dataset.ready = String(Date.now()); // tests wait for this
}

function init() {
  readUrl();
  $("search-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const q = $("query").value.trim();
    if (q !== state.q) state.explain = "";
    Object.assign(state, { q, collection: $("collection").value, mode: $("mode").value, where: $("where").value.trim(), top_k: Math.max(1, parseInt($("top-k").value, 10) || 5) });
    pages.cursors = [""]; pages.at = 0;
    writeUrl(); render();
  });
  $("why-not-form").addEventListener("submit", (ev) => { ev.preventDefault(); state.why_not = $("why-not-id").value.trim(); writeUrl(); render(); });
  $("collection").addEventListener("change", () => { state.collection = $("collection").value; state.explain = ""; pages.cursors = [""]; pages.at = 0; writeUrl(); render(); });
  for (const a of document.querySelectorAll("#views a")) a.addEventListener("click", (ev) => { ev.preventDefault(); state.view = a.dataset.view; writeUrl(); render(); });
  $("key-button").addEventListener("click", () => askForKey());
  $("key-dialog").addEventListener("close", () => {
    if ($("key-dialog").returnValue === "save" && $("key-input").value) { sessionStorage.setItem(KEY_STORE, $("key-input").value); $("key-input").value = ""; start(); }
  });
  window.addEventListener("popstate", () => { readUrl(); render(); });
  start();
}
async function start() {
  try { await loadCollections(); } catch (err) { showError(err); document.body.dataset.ready = String(Date.now()); return; }
  writeUrl(false);
  await render();
}
document.addEventListener("DOMContentLoaded", init);
