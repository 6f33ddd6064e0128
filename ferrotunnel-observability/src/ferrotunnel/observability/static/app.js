// The ferrotunnel dashboard: plain ES module, no build step, no dependency.
// Captured traffic is untrusted: every value reaches the page through textContent, never HTML.

const API = "/api/v1";
const MAX_ROWS = 500;

const state = {
  rows: new Map(), // id -> summary
  tunnels: new Map(), // name -> tunnel state (with traffic samples)
  selected: null,
  detail: null,
  counted: new Set(), // ids whose completion the tunnels' counters include
};

// ---------------------------------------------------------------- tiny DOM helpers

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const $ = (selector) => document.querySelector(selector);

async function api(path, options = {}) {
  const response = await fetch(API + path, options);
  const type = response.headers.get("content-type") || "";
  const body = type.includes("json") ? await response.json() : await response.text();
  if (!response.ok) {
    const message = body && body.error ? `${body.error.code}: ${body.error.message}` : response.statusText;
    throw new Error(message);
  }
  return body;
}

function formatBytes(n) {
  if (n === null || n === undefined) return "";
  if (n < 1024) return `${n} B`;
  if (n < 1 << 20) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1 << 30) return `${(n / (1 << 20)).toFixed(1)} MiB`;
  return `${(n / (1 << 30)).toFixed(2)} GiB`;
}

function formatTime(seconds) {
  return new Date(seconds * 1000).toLocaleTimeString([], { hour12: false });
}

function statusClass(row) {
  if (row.state === "error") return "s-error";
  if (row.status === null) return "s-pending";
  return `s-${Math.floor(row.status / 100)}xx`;
}

// ---------------------------------------------------------------- request list

function filters() {
  return {
    tunnel: $("#f-tunnel").value,
    method: $("#f-method").value,
    status: $("#f-status").value,
    path: $("#f-path").value.trim().toLowerCase(),
  };
}

function matches(row, f) {
  if (f.tunnel && row.tunnel !== f.tunnel) return false;
  if (f.method && row.method !== f.method) return false;
  if (f.status === "pending" && row.status !== null) return false;
  if (f.status && f.status !== "pending") {
    if (row.status === null || String(Math.floor(row.status / 100)) !== f.status[0]) return false;
  }
  if (f.path && !row.target.toLowerCase().includes(f.path)) return false;
  return true;
}

function renderRow(row) {
  const tr = el(
    "tr",
    {
      "data-id": row.id,
      class: [statusClass(row), row.replay_of ? "replay" : "", state.selected === row.id ? "selected" : ""]
        .filter(Boolean)
        .join(" "),
      onclick: () => select(row.id),
    },
    el("td", {}, formatTime(row.started)),
    el("td", {}, row.tunnel),
    el("td", { class: "method" }, row.method),
    el("td", { class: "path", title: row.target }, row.replay_of ? el("span", { class: "badge", title: `replay of #${row.replay_of}` }, "replay") : null, row.target),
    el("td", { class: "status", title: row.error ?? "" }, row.state === "error" ? (row.status === null ? "error" : `${row.status} error`) : row.status ?? "…"),
    el("td", {}, row.duration_ms === null ? "" : `${row.duration_ms.toFixed(1)} ms`),
    el("td", {}, formatBytes(row.response_size)),
  );
  return tr;
}

function renderList() {
  const f = filters();
  const body = $("#requests tbody");
  const rows = [...state.rows.values()].sort((a, b) => b.id - a.id).filter((row) => matches(row, f));
  body.replaceChildren(...rows.map(renderRow));
  $("#empty").classList.toggle("hidden", state.rows.size > 0);
}

function upsert(row) {
  const before = state.rows.get(row.id);
  // the replay's own answer and the event stream race: an exchange never goes back to pending
  if (before && before.state !== "pending" && row.state === "pending") return;
  if (row.state !== "pending" && !state.counted.has(row.id)) {
    state.counted.add(row.id);
    countTraffic(row);
  }
  const fresh = !before;
  state.rows.set(row.id, row);
  if (state.rows.size > MAX_ROWS) {
    const oldest = Math.min(...state.rows.keys());
    state.rows.delete(oldest);
  }
  const existing = document.querySelector(`#requests tr[data-id="${row.id}"]`);
  if (!matches(row, filters())) {
    existing?.remove();
  } else if (existing) {
    existing.replaceWith(renderRow(row));
  } else if (fresh) {
    $("#requests tbody").prepend(renderRow(row));
  } else {
    renderList();
  }
  $("#empty").classList.toggle("hidden", state.rows.size > 0);
  if (state.selected === row.id && row.state !== "pending") select(row.id, { keepTab: true });
}

// ---------------------------------------------------------------- detail pane

function headersTable(headers) {
  if (!headers.length) return el("p", { class: "muted" }, "no header fields");
  return el(
    "table",
    { class: "headers" },
    el("tbody", {}, headers.map(([name, value]) => el("tr", {}, el("th", {}, name), el("td", {}, value)))),
  );
}

function bodyView(body) {
  if (!body) return el("p", { class: "muted" }, "no response yet");
  const facts = [formatBytes(body.size)];
  if (body.truncated) facts.push(`first ${formatBytes(body.captured)} captured`);
  if (body.content_type) facts.push(body.content_type);
  if (body.decoded_from) facts.push(`decoded from ${body.decoded_from}`);
  if (body.kind === "binary") facts.push("binary: hex dump");
  if (body.kind === "grpc") facts.push(`${body.messages.length} gRPC message${body.messages.length === 1 ? "" : "s"}`);
  return el(
    "div",
    { class: "body" },
    el("p", { class: "muted" }, facts.join(" · ")),
    body.kind === "empty" ? el("p", { class: "muted" }, "empty body") : el("pre", { class: `code ${body.kind}` }, body.text),
  );
}

function section(title, ...content) {
  return el("section", { class: "part" }, el("h3", {}, title), ...content);
}

async function select(id, { keepTab = false } = {}) {
  state.selected = id;
  for (const tr of document.querySelectorAll("#requests tr.selected")) tr.classList.remove("selected");
  document.querySelector(`#requests tr[data-id="${id}"]`)?.classList.add("selected");
  let detail;
  try {
    detail = await api(`/requests/${id}`);
  } catch (error) {
    showDetail(el("p", { class: "error" }, error.message));
    return;
  }
  if (state.selected !== id) return;
  state.detail = detail;
  const tab = keepTab ? $("#detail .subtab.active")?.dataset.tab : null;
  renderDetail(detail, tab || "request");
}

function showDetail(...content) {
  const pane = $("#detail");
  pane.classList.remove("hidden");
  pane.replaceChildren(...content);
}

function renderDetail(d, tab) {
  const summary = el(
    "div",
    { class: "summary" },
    el("h2", {}, el("span", { class: "method" }, d.method), " ", d.target),
    el(
      "p",
      { class: statusClass(d) },
      el("strong", { id: "detail-status" }, d.state === "error" ? `${d.status === null ? "error" : `${d.status} ${d.reason}`}: ${d.error}` : d.status === null ? "pending" : `${d.status} ${d.reason}`),
      d.duration_ms !== null ? ` · ${d.duration_ms.toFixed(1)} ms` : "",
      d.timing.ttfb_ms !== null ? ` (first byte ${d.timing.ttfb_ms.toFixed(1)} ms)` : "",
    ),
    el(
      "dl",
      { class: "facts" },
      el("dt", {}, "request"), el("dd", {}, `#${d.id}`, d.replay_of ? ` — replay of #${d.replay_of}` : ""),
      el("dt", {}, "tunnel"), el("dd", {}, d.tunnel),
      el("dt", {}, "protocol"), el("dd", {}, d.http_version),
      el("dt", {}, "visitor"), el("dd", {}, d.visitor_ip ? `${d.visitor_ip}:${d.visitor_port}` : d.replay_of ? "dashboard replay" : "—"),
      el("dt", {}, "trace id"), el("dd", { class: "mono" }, d.trace_id || "—"),
      el("dt", {}, "started"), el("dd", {}, new Date(d.started * 1000).toLocaleString()),
    ),
  );
  const actions = el(
    "div",
    { class: "actions" },
    el("button", { id: "replay", class: "primary", onclick: () => doReplay(d.id, {}) }, "Replay"),
    el("button", { id: "edit-replay", onclick: () => renderDetail(d, "edit") }, "Edit & replay"),
    d.replay_of ? el("button", { id: "show-diff", onclick: () => renderDetail(d, "diff") }, "Diff with original") : null,
    el("button", { onclick: () => showExport(d, "curl") }, "curl"),
    el("button", { onclick: () => showExport(d, "har") }, "HAR"),
    el("button", { onclick: () => showExport(d, "pytest") }, "pytest"),
  );
  const tabs = ["request", "response", ...(d.replay_of ? ["diff"] : []), "edit"];
  const bar = el(
    "div",
    { class: "subtabs" },
    tabs.map((name) => el("button", { class: `subtab ${name === tab ? "active" : ""}`, "data-tab": name, onclick: () => renderDetail(d, name) }, name)),
  );
  let content;
  if (tab === "response") {
    content = d.response
      ? [
          section("Header fields", headersTable(d.response.headers)),
          section("Body", bodyView(d.response.body)),
          d.response.trailers ? section("Trailer fields", headersTable(d.response.trailers)) : null,
        ]
      : [el("p", { class: "muted" }, d.error || "no response yet")];
  } else if (tab === "diff") {
    content = [diffView(d)];
  } else if (tab === "edit") {
    content = [editForm(d)];
  } else {
    content = [section("Header fields", headersTable(d.request.headers)), section("Body", bodyView(d.request.body))];
  }
  showDetail(summary, actions, bar, el("div", { class: "tabcontent" }, content));
}

function diffView(d) {
  const box = el("div", { class: "diff" }, el("p", { class: "muted" }, "comparing…"));
  api(`/requests/${d.id}/diff`).then(
    (diff) => {
      const parts = [
        el("p", { class: diff.same ? "same" : "differs", id: "diff-verdict" }, diff.same ? "Same response as the original" : "The response differs from the original"),
        el("p", {}, `status: ${diff.status.original} → ${diff.status.replay}`),
      ];
      if (diff.headers.length) {
        parts.push(
          el(
            "table",
            { class: "headers" },
            el("thead", {}, el("tr", {}, el("th", {}, "field"), el("th", {}, `#${diff.original}`), el("th", {}, `#${diff.replay}`))),
            el("tbody", {}, diff.headers.map((h) => el("tr", { class: h.volatile ? "muted" : "" }, el("th", {}, h.name), el("td", {}, h.original ?? "—"), el("td", {}, h.replay ?? "—")))),
          ),
        );
      }
      const body = diff.body;
      const sizes = `${body.size.original} → ${body.size.replay} bytes`;
      if (body.same) {
        parts.push(el("p", { class: "muted" }, body.partial ? `bodies are the same as far as captured (${sizes})` : "bodies are the same"));
      } else {
        if (body.partial) parts.push(el("p", { class: "muted" }, `the bodies differ; the diff shows only part of them (${sizes})`));
        parts.push(
          body.diff
            ? el("pre", { class: "code diff-body" }, body.diff.split("\n").map((line) => el("span", { class: line.startsWith("+") ? "add" : line.startsWith("-") ? "del" : "" }, line + "\n")))
            : el("p", { class: "muted" }, `the bodies differ in bytes their display does not show (${sizes})`),
        );
      }
      box.replaceChildren(...parts);
    },
    (error) => box.replaceChildren(el("p", { class: "error" }, error.message)),
  );
  return box;
}

function editForm(d) {
  const headers = d.request.headers.filter(([name]) => !["content-length", "transfer-encoding", "connection"].includes(name.toLowerCase()));
  const body = d.request.body;
  const method = el("input", { id: "edit-method", value: d.method, size: 8 });
  const path = el("input", { id: "edit-path", value: d.target });
  const fields = el("textarea", { id: "edit-headers", rows: 8 });
  fields.value = headers.map(([k, v]) => `${k}: ${v}`).join("\n");
  const text = el("textarea", { id: "edit-body", rows: 8 });
  // a binary body (a gRPC message, say) is edited as base64, so that it can be sent unchanged
  const binary = (body.kind === "binary" || body.kind === "grpc") && !body.truncated;
  const asBase64 = el("input", { id: "edit-base64", type: "checkbox", checked: binary });
  text.value = binary ? body.base64 : body.truncated ? "" : body.text;
  const note = body.truncated ? el("p", { class: "muted" }, "The captured body is partial: type a new one, or leave it empty.") : null;
  const send = () => {
    const pairs = fields.value
      .split("\n")
      .map((line) => line.trim())
      .filter(Boolean)
      .map((line) => {
        const at = line.indexOf(":");
        return [line.slice(0, at).trim(), line.slice(at + 1).trim()];
      });
    const edits = { method: method.value.trim(), path: path.value.trim(), headers: pairs };
    if (asBase64.checked) edits.body_base64 = text.value.replace(/\s+/g, "");
    else edits.body = text.value;
    doReplay(d.id, edits);
  };
  return el(
    "form",
    { class: "edit", onsubmit: (event) => { event.preventDefault(); send(); } },
    el("label", {}, "Method", method),
    el("label", {}, "Path", path),
    el("label", {}, "Header fields (one per line)", fields),
    el("label", {}, "Body", text),
    el("label", { class: "inline" }, asBase64, " the body is base64 (binary)"),
    note,
    el("button", { class: "primary", id: "edit-send", type: "submit" }, "Send edited replay"),
  );
}

async function doReplay(id, edits) {
  const button = $("#replay");
  if (button) button.disabled = true;
  try {
    const replayed = await api(`/requests/${id}/replay`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(edits),
    });
    upsert(replayed);
    state.selected = replayed.id;
    await select(replayed.id);
    renderDetail(state.detail, "diff");
  } catch (error) {
    showDetail(el("p", { class: "error", id: "replay-error" }, `Replay failed: ${error.message}`));
  } finally {
    if (button) button.disabled = false;
  }
}

async function showExport(d, format) {
  const dialog = $("#dialog");
  $("#dialog-title").textContent = `#${d.id} as ${format}`;
  let text;
  try {
    const result = await api(`/requests/${d.id}/export?format=${format}`);
    text = typeof result === "string" ? result : JSON.stringify(result, null, 2);
  } catch (error) {
    text = error.message;
  }
  const pre = el("pre", { class: "code", id: "export-text" }, text);
  const copy = el("button", { onclick: () => navigator.clipboard?.writeText(text) }, "Copy");
  const download = el("a", { href: `${API}/requests/${d.id}/export?format=${format}`, download: "" }, "Download");
  $("#dialog-body").replaceChildren(el("div", { class: "actions" }, copy, download), pre);
  dialog.showModal();
}

// ---------------------------------------------------------------- tunnels view

function renderTunnels() {
  const select = $("#f-tunnel");
  const chosen = select.value;
  select.replaceChildren(el("option", { value: "" }, "all tunnels"), ...[...state.tunnels.keys()].map((name) => el("option", { value: name }, name)));
  select.value = chosen;
  $("#tunnels").replaceChildren(
    ...[...state.tunnels.values()].map((t) =>
      el(
        "article",
        { class: "card", "data-tunnel": t.name },
        el("h2", {}, t.name, " ", el("span", { class: `pill ${t.status}` }, t.status)),
        el("p", {}, t.public_url || "—", " → ", t.local_addr || "in-process"),
        el("p", { class: "muted" }, `${t.requests} requests · in ${formatBytes(t.bytes_in)} · out ${formatBytes(t.bytes_out)}`),
        chart(t),
      ),
    ),
  );
}

function chart(t) {
  // requests per second over the last minute, as an SVG bar chart
  const now = Math.floor(Date.now() / 1000);
  const counts = new Array(60).fill(0);
  for (const [second, requests] of t.traffic) {
    const age = now - second;
    if (age >= 0 && age < 60) counts[59 - age] += requests;
  }
  const peak = Math.max(1, ...counts);
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 240 60");
  svg.setAttribute("preserveAspectRatio", "none"); // the full width of the card
  svg.setAttribute("class", "chart");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `requests per second in the last minute, peak ${peak}`);
  counts.forEach((n, i) => {
    const bar = document.createElementNS(ns, "rect");
    const h = (n / peak) * 56;
    bar.setAttribute("x", String(i * 4));
    bar.setAttribute("y", String(58 - h));
    bar.setAttribute("width", "3");
    bar.setAttribute("height", String(Math.max(h, n ? 1 : 0)));
    svg.append(bar);
  });
  const axis = document.createElementNS(ns, "line");
  for (const [k, v] of Object.entries({ x1: 0, x2: 240, y1: 58.5, y2: 58.5 })) axis.setAttribute(k, String(v));
  svg.append(axis);
  return el("figure", {}, svg, el("figcaption", { class: "muted" }, `requests/s, last 60 s (peak ${peak})`));
}

function countTraffic(row) {
  const t = state.tunnels.get(row.tunnel);
  if (!t) return;
  const second = Math.floor(Date.now() / 1000);
  const last = t.traffic[t.traffic.length - 1];
  if (last && last[0] === second) last[1] += 1;
  else t.traffic.push([second, 1, 0]);
  t.requests += 1;
  t.bytes_in += row.request_size || 0;
  t.bytes_out += row.response_size || 0;
}

// ---------------------------------------------------------------- live feed

async function reload() {
  const [tunnels, list] = await Promise.all([api("/tunnels"), api(`/requests?limit=${MAX_ROWS}`)]);
  state.tunnels = new Map(tunnels.tunnels.map((t) => [t.name, t]));
  state.rows = new Map(list.requests.map((row) => [row.id, row]));
  state.counted = new Set(list.requests.filter((row) => row.state !== "pending").map((row) => row.id));
  renderTunnels();
  renderList();
}

function connect() {
  const source = new EventSource(`${API}/events`);
  const live = $("#live");
  source.addEventListener("open", () => {
    live.textContent = "live";
    live.className = "live on";
    reload(); // whatever happened while we were away
  });
  source.addEventListener("error", () => {
    live.textContent = "reconnecting…";
    live.className = "live off";
  });
  source.addEventListener("request", (event) => {
    upsert(JSON.parse(event.data));
    if (!$("#view-tunnels").classList.contains("hidden")) renderTunnels();
  });
  source.addEventListener("tunnel", (event) => {
    const t = JSON.parse(event.data);
    state.tunnels.set(t.name, t);
    renderTunnels();
  });
  source.addEventListener("clear", () => {
    state.rows.clear();
    renderList();
  });
}

// ---------------------------------------------------------------- start

function showView(name) {
  for (const tab of document.querySelectorAll("header .tab")) tab.classList.toggle("active", tab.dataset.view === name);
  $("#view-requests").classList.toggle("hidden", name !== "requests");
  $("#view-tunnels").classList.toggle("hidden", name !== "tunnels");
  if (name === "tunnels") renderTunnels();
}

for (const tab of document.querySelectorAll("header .tab")) tab.addEventListener("click", () => showView(tab.dataset.view));
for (const id of ["#f-tunnel", "#f-method", "#f-status"]) $(id).addEventListener("change", renderList);
$("#f-path").addEventListener("input", renderList);
$("#clear").addEventListener("click", () => api("/requests", { method: "DELETE" }));
setInterval(() => {
  if (!$("#view-tunnels").classList.contains("hidden")) renderTunnels(); // let the chart scroll
}, 2000);
connect();
