// The server's admin view. The token stays in this tab (sessionStorage) and goes in an
// Authorization header, which EventSource cannot send: so this page refreshes every 2 s.

const API = "/api/v1";
const $ = (selector) => document.querySelector(selector);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const time = (seconds) => new Date(seconds * 1000).toLocaleTimeString([], { hour12: false });

async function api(path, options = {}) {
  const token = sessionStorage.getItem("ferrotunnel-admin-token") || "";
  const response = await fetch(API + path, { ...options, headers: { authorization: `Bearer ${token}` } });
  const body = response.status === 204 ? null : await response.json();
  if (!response.ok) throw new Error(body && body.error ? body.error.message : response.statusText);
  return body;
}

function fill(id, rows) {
  $(`#${id} tbody`).replaceChildren(...rows);
}

async function refresh() {
  let sessions, tunnels, visitors;
  try {
    [sessions, tunnels, visitors] = await Promise.all([api("/sessions"), api("/tunnels"), api("/visitors")]);
  } catch (error) {
    $("#live").textContent = "signed out";
    $("#live").className = "live off";
    $("#message").textContent = error.message;
    return;
  }
  $("#live").textContent = "signed in";
  $("#live").className = "live on";
  $("#message").textContent = `${sessions.sessions.length} sessions, ${tunnels.tunnels.length} tunnels`;
  fill(
    "sessions",
    sessions.sessions.map((s) =>
      el(
        "tr",
        { "data-session": s.id },
        el("td", { class: "mono" }, s.id.slice(0, 12)),
        el("td", {}, s.identity),
        el("td", {}, s.peer || "—"),
        el("td", {}, time(s.opened)),
        el("td", {}, s.streams),
        el("td", {}, s.tunnels.map((t) => t.name).join(", ")),
        el("td", {}, el("button", { class: "close-session", onclick: () => closeSession(s.id) }, "Close")),
      ),
    ),
  );
  fill(
    "tunnels",
    tunnels.tunnels.map((t) =>
      el("tr", {}, el("td", {}, t.name), el("td", {}, t.kind), el("td", {}, t.public_url), el("td", {}, t.identity), el("td", { class: "mono" }, t.session.slice(0, 12))),
    ),
  );
  fill(
    "visitors",
    visitors.visitors.map((v) =>
      el("tr", {}, el("td", {}, v.ip), el("td", {}, v.tunnels.join(", ")), el("td", {}, v.requests), el("td", {}, v.connections), el("td", {}, v.last_status ?? "—"), el("td", {}, time(v.last_seen))),
    ),
  );
}

async function closeSession(id) {
  if (!confirm(`Close session ${id.slice(0, 12)}? Its client may reconnect.`)) return;
  try {
    await api(`/sessions/${id}`, { method: "DELETE" });
  } catch (error) {
    $("#message").textContent = error.message;
  }
  setTimeout(refresh, 300);
}

$("#login").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem("ferrotunnel-admin-token", $("#token").value);
  $("#token").value = "";
  refresh();
});
refresh();
setInterval(refresh, 2000);
