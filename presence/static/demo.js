// The demo page: one EventSource, a list rebuilt from `snapshot` events and
// updated by `presence` events. EventSource reconnects by itself and sends
// Last-Event-ID, so the server replays what was missed.
"use strict";

const $ = (id) => document.getElementById(id);
const online = new Map(); // client -> server
let source = null;

function setState(kind, text) {
  const state = $("state");
  state.className = `state ${kind}`;
  state.textContent = text;
}

function render() {
  const list = $("online");
  list.replaceChildren(
    ...[...online.keys()].sort().map((client) => {
      const item = document.createElement("li");
      item.dataset.client = client;
      const name = document.createElement("span");
      name.textContent = client;
      const server = document.createElement("small");
      server.textContent = online.get(client);
      item.append(name, server);
      return item;
    }),
  );
  $("count").textContent = String(online.size);
  $("empty").hidden = online.size > 0 || source === null;
}

function note(text, kind) {
  const item = document.createElement("li");
  item.className = kind;
  item.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  $("activity").prepend(item);
}

function connect(name) {
  disconnect();
  // With authentication on, open the page as /?name=alice&token=<token for alice>.
  const token = new URLSearchParams(location.search).get("token");
  const query = token ? `?token=${encodeURIComponent(token)}` : "";
  source = new EventSource(`clients/${encodeURIComponent(name)}/events${query}`);
  setState("connecting", "connecting…");
  source.onopen = () => setState("open", `online as ${name}`);
  source.onerror = () => {
    if (source && source.readyState === EventSource.CLOSED) {
      setState("closed", "disconnected");
    } else {
      setState("connecting", "reconnecting…");
    }
  };
  source.addEventListener("snapshot", (message) => {
    const snapshot = JSON.parse(message.data);
    online.clear();
    for (const { client, server } of snapshot.clients) online.set(client, server);
    if (snapshot.reset) note("resynchronised", "muted");
    render();
  });
  source.addEventListener("presence", (message) => {
    const { client, status, server } = JSON.parse(message.data);
    if (status === "ONLINE") {
      online.set(client, server);
      note(`${client} joined`, "joined");
    } else {
      online.delete(client);
      note(`${client} left`, "left");
    }
    render();
  });
  $("connect").hidden = true;
  $("disconnect").hidden = false;
  $("name").disabled = true;
}

function disconnect() {
  if (source) source.close();
  source = null;
  online.clear();
  render();
  setState("idle", "not connected");
  $("connect").hidden = false;
  $("disconnect").hidden = true;
  $("name").disabled = false;
}

$("join").addEventListener("submit", (event) => {
  event.preventDefault();
  const name = $("name").value.trim();
  if (name) connect(name);
});
$("disconnect").addEventListener("click", disconnect);

const wanted = new URLSearchParams(location.search).get("name");
if (wanted) {
  $("name").value = wanted;
  connect(wanted);
}
render();
