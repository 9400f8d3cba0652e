// The demo page: one EventSource, a list rebuilt from `snapshot` events and
// updated by `presence` events. EventSource reconnects by itself and sends
// Last-Event-ID, so the server replays what was missed.
//
// With ?room=<name> the stream is scoped to that room: the list is the room's
// members with their status, which the user sets with PUT .../data.
"use strict";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const ID = /^[A-Za-z0-9._:@-]{1,128}$/;
// With authentication on, open the page as /?name=alice&token=<token for alice>.
const token = params.get("token");
const room = params.get("room") || null;
const online = new Map(); // client -> {server, data}
let source = null;
let name = null;
// The member data the page wants (JSON text), null until a status is set; and
// the data the open stream's URL carries, which a reconnect would apply again.
let wanted = null;
let joinedWith = null;
let lastId = "";
let reopen = null;
let putting = 0; // the latest PUT: an older one still retrying gives up

function setState(kind, text) {
  const state = $("state");
  state.className = `state ${kind}`;
  state.textContent = text;
}

function render() {
  const list = $("online");
  list.replaceChildren(
    ...[...online.keys()].sort().map((client) => {
      const { server, data } = online.get(client);
      const item = document.createElement("li");
      item.dataset.client = client;
      const label = document.createElement("span");
      label.textContent = client;
      if (data && typeof data.status === "string" && data.status) {
        const status = document.createElement("span");
        status.className = "status";
        status.textContent = ` — ${data.status}`;
        label.append(status);
      }
      const at = document.createElement("small");
      at.textContent = server;
      item.append(label, at);
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

function statusOf(data) {
  return data && typeof data.status === "string" ? data.status : "";
}

function eventsUrl() {
  const query = new URLSearchParams();
  if (token) query.set("token", token);
  if (room) {
    query.set("room", room);
    if (wanted !== null) query.set("data", wanted);
    if (lastId) query.set("lastEventId", lastId);
  }
  const search = query.toString();
  // Relative, so that the page works mounted under a prefix too.
  return `clients/${encodeURIComponent(name)}/events${search ? `?${search}` : ""}`;
}

function open() {
  joinedWith = wanted;
  source = new EventSource(eventsUrl());
  setState("connecting", "connecting…");
  source.onopen = () => setState("open", `online as ${name}${room ? ` in ${room}` : ""}`);
  source.onerror = () => {
    if (source && source.readyState === EventSource.CLOSED) {
      setState("closed", "disconnected");
      return;
    }
    setState("connecting", "reconnecting…");
    if (room && wanted !== joinedWith) {
      // The browser would reconnect with the URL's old data and undo the
      // status set since: reconnect with the current one instead.
      source.close();
      reopen = setTimeout(open, 1000);
    }
  };
  source.addEventListener("snapshot", (message) => {
    lastId = message.lastEventId;
    const snapshot = JSON.parse(message.data);
    const members = room ? snapshot.rooms[room] : snapshot.clients;
    online.clear();
    for (const { client, server, data } of members) online.set(client, { server, data });
    if (snapshot.reset) note("resynchronised", "muted");
    render();
  });
  source.addEventListener("presence", (message) => {
    lastId = message.lastEventId;
    const { client, status, server, data } = JSON.parse(message.data);
    if (status === "ONLINE") {
      online.set(client, { server, data });
      note(`${client} joined`, "joined");
    } else if (status === "UPDATE") {
      const before = statusOf(online.get(client)?.data);
      online.set(client, { server, data });
      const now = statusOf(data);
      if (now !== before) {
        note(now ? `${client} is ${now}` : `${client} cleared their status`, "muted");
      }
    } else {
      online.delete(client);
      note(`${client} left`, "left");
    }
    render();
  });
}

function connect(wantedName) {
  disconnect();
  if (room && !ID.test(room)) {
    setState("closed", "invalid room");
    note("room must be 1 to 128 letters, digits or ._:@-", "left");
    return;
  }
  name = wantedName;
  lastId = "";
  open();
  $("connect").hidden = true;
  $("disconnect").hidden = false;
  $("name").disabled = true;
}

function disconnect() {
  clearTimeout(reopen);
  if (source) source.close();
  source = null;
  putting += 1;
  online.clear();
  render();
  setState("idle", "not connected");
  $("connect").hidden = false;
  $("disconnect").hidden = true;
  $("name").disabled = false;
}

async function setStatus(status) {
  wanted = JSON.stringify(status ? { status } : {});
  if (!source) return; // sent with the next connect
  const attempt = ++putting;
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  const url = `rooms/${encodeURIComponent(room)}/clients/${encodeURIComponent(name)}/data`;
  // Right after connecting the membership may not be in Redis yet (404): retry a while.
  for (let tries = 0; tries < 20 && attempt === putting; tries += 1) {
    let response;
    try {
      response = await fetch(url, { method: "PUT", headers, body: wanted });
    } catch {
      response = null; // offline: the next reconnect sends it
    }
    if (response && response.ok) return;
    if (response && response.status !== 404) {
      const body = await response.json().catch(() => ({}));
      note(`status not set: ${body.error || response.status}`, "left");
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  if (attempt === putting) note(`status not set: ${name} is not in ${room} yet`, "left");
}

$("join").addEventListener("submit", (event) => {
  event.preventDefault();
  const value = $("name").value.trim();
  if (value) connect(value);
});
$("disconnect").addEventListener("click", disconnect);

if (room) {
  $("list-title").textContent = `In ${room}`;
  $("you").hidden = false;
  $("you").addEventListener("submit", (event) => {
    event.preventDefault();
    setStatus($("status").value.trim());
  });
}

const given = params.get("name");
if (given) {
  $("name").value = given;
  connect(given);
}
render();
