// The demo page: presence-client.js keeps the list; this page only renders it.
//
// With ?room=<name> the stream is scoped to that room: the list is the room's
// members with their status, which the user sets with setData (PUT .../data).
import { PresenceClient } from "./presence-client.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const ID = /^[A-Za-z0-9._:@-]{1,128}$/;
// With authentication on, open the page as /?name=alice&token=<token for alice>.
const token = params.get("token");
const room = params.get("room") || null;
// Where presence is: the page's own directory, so that a mount prefix works too.
const base = new URL(".", location.href).href;
let presence = null;
let name = null;
// The status chosen before connecting: it goes with the join.
let wanted = null;

function setState(kind, text) {
  const state = $("state");
  state.className = `state ${kind}`;
  state.textContent = text;
}

function render() {
  const online = presence ? presence.members(room ?? undefined) : new Map();
  const list = $("online");
  list.replaceChildren(
    ...[...online.keys()].sort().map((client) => {
      const { server, data } = online.get(client);
      const item = document.createElement("li");
      item.dataset.client = client;
      const label = document.createElement("span");
      label.textContent = client;
      if (statusOf(data)) {
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
  $("empty").hidden = online.size > 0 || presence === null;
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

const STATES = {
  idle: ["idle", () => "not connected"],
  connecting: ["connecting", () => "connecting…"],
  reconnecting: ["connecting", () => "reconnecting…"],
  open: ["open", () => `online as ${name}${room ? ` in ${room}` : ""}`],
  closed: ["closed", () => "disconnected"],
};

function connect(wantedName) {
  disconnect();
  if (room && !ID.test(room)) {
    setState("closed", "invalid room");
    note("room must be 1 to 128 letters, digits or ._:@-", "left");
    return;
  }
  name = wantedName;
  const options = { url: base, client: name };
  if (room) options.rooms = [room];
  if (room && wanted !== null) options.data = wanted;
  // A token given in the URL cannot be renewed: once refused, the page stops.
  if (token) options.getToken = async ({ reason }) => (reason === "initial" ? token : null);
  presence = new PresenceClient(options);
  presence.on("state", ({ to, error }) => {
    const [kind, text] = STATES[to];
    setState(kind, text());
    if (error && to === "closed") note(`disconnected: ${error.message}`, "left");
  });
  presence.on("sync", ({ reset }) => {
    if (reset) note("resynchronised", "muted");
    render();
  });
  presence.on("online", ({ client, synthetic }) => {
    if (!synthetic) note(`${client} joined`, "joined");
    render();
  });
  presence.on("update", ({ client, data, synthetic }) => {
    const now = statusOf(data);
    if (!synthetic) note(now ? `${client} is ${now}` : `${client} cleared their status`, "muted");
    render();
  });
  presence.on("offline", ({ client, synthetic }) => {
    if (!synthetic) note(`${client} left`, "left");
    render();
  });
  presence.connect();
  $("connect").hidden = true;
  $("disconnect").hidden = false;
  $("name").disabled = true;
}

function disconnect() {
  if (presence) presence.close();
  presence = null;
  render();
  setState("idle", "not connected");
  $("connect").hidden = false;
  $("disconnect").hidden = true;
  $("name").disabled = false;
}

async function setStatus(status) {
  wanted = status ? { status } : {};
  if (!presence) return; // sent with the next connect
  try {
    await presence.setData(room, wanted);
  } catch (error) {
    note(`status not set: ${error.message}`, "left");
  }
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
