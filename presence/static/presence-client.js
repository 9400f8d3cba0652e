// presence-client.js: a browser client of presence that never loses track.
//
// A plain ES module, no build step, no dependency. It reads the SSE stream
// with fetch() and its own parser rather than EventSource, which can send no
// Authorization header and cannot see a 401 (it would retry for ever with an
// expired token). It keeps the member lists itself: snapshots replace them, a
// reset snapshot is diffed into synthetic events, and during a reconnect they
// stay as they were until the replay or a snapshot arrives.
//
// Its parts are modules beside it, imported relatively so that they resolve
// under any mount prefix: the SSE parser, the order of event ids, members,
// and the reconnect delay.

import { reconnectDelay } from "./backoff.js";
import { notAfter } from "./event-ids.js";
import { member, same } from "./members.js";
import { EventParser } from "./sse-parser.js";

/** getToken() threw it, or the server refused the token with nobody to ask for another. */
export class UnauthorizedError extends Error {
  constructor(message = "unauthorized") {
    super(message);
    this.name = "UnauthorizedError";
  }
}

/** An HTTP error answered by presence: `status` and the server's `{"error"}` message. */
export class PresenceError extends Error {
  constructor(status, message) {
    super(message);
    this.name = "PresenceError";
    this.status = status;
  }
}

const DEFAULTS = { minDelay: 500, maxDelay: 30000, idleTimeout: 45000 };
// setTimeout() fires at once past this: a longer delay would be a hot loop.
const LONGEST_TIMER_MS = 2 ** 31 - 1;
// A token this close to its exp is renewed before a reconnect uses it (clock skew).
const EXPIRY_MARGIN_MS = 5000;
// Statuses that no retry can fix: the stream is closed with the error.
const FINAL = new Set([400, 403, 404, 405, 413]);
// States in which the client's memberships are held, or about to be.
const JOINING = new Set(["connecting", "open", "reconnecting"]);

export class PresenceClient {
  constructor(options) {
    if (!options || typeof options.client !== "string" || !options.client) {
      throw new TypeError("PresenceClient needs a client id");
    }
    this._options = {
      ...options,
      // A delay of 0 would reconnect in a hot loop; an idleTimeout of 0 means never.
      minDelay: msOption(options, "minDelay", false),
      maxDelay: msOption(options, "maxDelay", false),
      idleTimeout: msOption(options, "idleTimeout", true),
    };
    this._url = String(options.url ?? ".");
    this._client = options.client;
    this._rooms = [...(options.rooms ?? [])];
    this._watch = options.watch ? [...options.watch] : null;
    this._occupancy = [...(options.occupancy ?? [])];
    this._joinData = options.data === undefined ? null : JSON.stringify(options.data);
    // One stream kind, as the server picks it: global unless scoped.
    this._scoped = this._rooms.length > 0 || this._watch !== null || this._occupancy.length > 0;
    this._listeners = new Map();
    this._state = "idle";
    this._global = new Map();
    this._roomMembers = new Map(this._rooms.map((room) => [room, new Map()]));
    this._counts = new Map();
    this._synced = false;
    this._lastId = "";
    this._retry = null; // the server's retry: field, ms
    this._attempts = 0;
    this._token = undefined;
    this._run = 0; // bumped by close(): an older run's callbacks stop
    this._abort = null;
    this._wake = null;
    this._onWake = () => {
      if (typeof document !== "undefined" && document.visibilityState === "hidden") return;
      if (this._wake) this._wake();
    };
  }

  /** "idle" | "connecting" | "open" | "reconnecting" | "closed". */
  get state() {
    return this._state;
  }

  /** Call `listener` for each event of `type`; returns a function that unsubscribes. */
  on(type, listener) {
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    const set = this._listeners.get(type);
    const entry = (event) => listener(event);
    set.add(entry);
    return () => set.delete(entry);
  }

  /** Open the stream, and keep it open until close(). */
  connect() {
    if (this._state !== "idle" && this._state !== "closed") return;
    const run = ++this._run;
    if (typeof addEventListener === "function") addEventListener("online", this._onWake);
    if (typeof document !== "undefined") {
      document.addEventListener("visibilitychange", this._onWake);
    }
    this._setState(this._synced ? "reconnecting" : "connecting");
    this._loop(run).catch((error) => this._finish(run, error));
  }

  /** Close the stream for good (connect() again resumes from what it knew). */
  close() {
    this._finish(this._run, undefined);
  }

  /** The members of `room`, or with no room, who is online (or watched and online). */
  members(room) {
    const members = room === undefined ? this._global : this._roomMembers.get(room);
    return new Map(members ?? []);
  }

  /** The latest occupancy count of `room`, undefined before its first. */
  count(room) {
    return this._counts.get(room);
  }

  /** Replace this client's data in `room` (PUT .../data): true when it changed.
   * Once the server took it, and for one of the client's rooms, it also
   * becomes the data a reconnect joins with. */
  async setData(room, data) {
    const body = JSON.stringify(data);
    const path = `rooms/${encodeURIComponent(room)}/clients/${encodeURIComponent(this._client)}/data`;
    let renewed = false;
    // Right after connecting the membership may not be in Redis yet: a 404 is retried a while.
    for (let tries = 0; ; tries += 1) {
      const headers = { "Content-Type": "application/json", ...this._authorization() };
      const response = await fetch(this._endpoint(path), { method: "PUT", headers, body });
      if (response.ok) {
        const changed = (await response.json()).changed === true;
        // Only now: data the server refused would make every reconnect a
        // final 400. And only for a room of this client, which `?data=` joins.
        if (this._rooms.includes(room)) this._joinData = body;
        return changed;
      }
      const error = await errorOf(response);
      if (response.status === 401 && !renewed && this._options.getToken) {
        renewed = true;
        const token = await this._options.getToken({ reason: "unauthorized" });
        if (token === null) throw error;
        this._token = token;
        continue;
      }
      const joining = this._rooms.includes(room) && JOINING.has(this._state);
      if (response.status !== 404 || !joining || tries >= 20) throw error;
      await sleep(250);
    }
  }

  // --- the connection ---------------------------------------------------------

  async _loop(run) {
    let reason = "initial";
    for (;;) {
      if (this._options.getToken && (reason || this._expiring())) {
        const token = await this._askToken(run, reason || "expired");
        if (token === undefined) return;
        this._token = token;
      }
      reason = null;
      let outcome;
      try {
        outcome = await this._stream(run);
      } catch (error) {
        if (run !== this._run) return;
        outcome = { error };
      }
      if (run !== this._run) return;
      if (outcome.final) {
        this._finish(run, outcome.final);
        return;
      }
      if (outcome.unauthorized) {
        if (!this._options.getToken) {
          this._finish(run, outcome.unauthorized);
          return;
        }
        reason = "unauthorized";
      }
      this._setState("reconnecting", outcome.error ?? outcome.unauthorized);
      await this._backoff(run, outcome.retryAfter);
      if (run !== this._run) return;
    }
  }

  // The token getToken gives, or undefined once the client closed.
  async _askToken(run, reason) {
    for (;;) {
      let token;
      try {
        token = await this._options.getToken({ reason });
      } catch (error) {
        if (run !== this._run) return undefined;
        if (error instanceof UnauthorizedError) {
          this._finish(run, error);
          return undefined;
        }
        // The token's own server is down, say: try again later.
        this._setState("reconnecting", error);
        await this._backoff(run);
        if (run !== this._run) return undefined;
        continue;
      }
      if (run !== this._run) return undefined;
      if (token === null || token === undefined) {
        this._finish(run, new UnauthorizedError("no token"));
        return undefined;
      }
      return token;
    }
  }

  // One stream, until it ends: what ended it.
  async _stream(run) {
    const abort = new AbortController();
    this._abort = abort;
    const headers = { Accept: "text/event-stream", ...this._authorization() };
    if (this._lastId) headers["Last-Event-ID"] = this._lastId;
    const response = await fetch(this._eventsUrl(), {
      headers,
      cache: "no-store",
      signal: abort.signal,
    });
    if (run !== this._run) return { ended: true }; // closed meanwhile
    if (response.status === 401) return { unauthorized: await errorOf(response, UnauthorizedError) };
    if (!response.ok) {
      const error = await errorOf(response);
      if (FINAL.has(response.status)) return { final: error };
      return { error, retryAfter: Number(response.headers.get("Retry-After")) * 1000 || 0 };
    }
    if (!(response.headers.get("Content-Type") || "").startsWith("text/event-stream")) {
      return { final: new PresenceError(response.status, "not an event stream") };
    }
    this._attempts = 0;
    this._setState("open");
    const parser = new EventParser((event) => {
      if (run === this._run) this._dispatch(event);
    });
    const reader = response.body.getReader();
    const idle = this._options.idleTimeout;
    let timer = null;
    const watch = () => {
      clearTimeout(timer);
      // No byte, not even a keep-alive ping, for so long: the connection is dead.
      if (idle > 0) timer = setTimeout(() => abort.abort(), idle);
    };
    watch();
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done || run !== this._run) break;
        watch();
        parser.push(value);
        if (parser.retry !== null) this._retry = parser.retry;
      }
    } catch (error) {
      return { error };
    } finally {
      clearTimeout(timer);
      abort.abort();
    }
    return { ended: true };
  }

  // Wait a jittered, exponentially longer delay (backoff.js); `online` or
  // the page becoming visible cuts it short.
  _backoff(run, atLeast = 0) {
    const { minDelay, maxDelay } = this._options;
    const attempts = this._attempts;
    this._attempts += 1;
    const drawn = reconnectDelay({ minDelay, maxDelay, retry: this._retry, attempts });
    // A 503's Retry-After is a floor; no header may make the timer overflow.
    const delay = Math.min(LONGEST_TIMER_MS, Math.max(atLeast, drawn));
    return new Promise((resolve) => {
      const timer = setTimeout(done, delay);
      function done() {
        clearTimeout(timer);
        resolve();
      }
      this._wake = () => {
        if (run === this._run) this._attempts = 0;
        done();
      };
    }).finally(() => {
      this._wake = null;
    });
  }

  _finish(run, error) {
    if (run !== this._run || this._state === "closed") return;
    this._run += 1;
    if (this._abort) this._abort.abort();
    if (this._wake) this._wake();
    if (typeof removeEventListener === "function") removeEventListener("online", this._onWake);
    if (typeof document !== "undefined") {
      document.removeEventListener("visibilitychange", this._onWake);
    }
    this._setState("closed", error);
  }

  _setState(to, error) {
    const from = this._state;
    if (from === to) return;
    this._state = to;
    this._emit("state", error === undefined ? { from, to } : { from, to, error });
  }

  _expiring() {
    const exp = expiryOf(this._token);
    return exp !== null && exp * 1000 <= Date.now() + EXPIRY_MARGIN_MS;
  }

  _authorization() {
    return this._token ? { Authorization: `Bearer ${this._token}` } : {};
  }

  _endpoint(path) {
    const base = this._url.endsWith("/") ? this._url : `${this._url}/`;
    return new URL(path, new URL(base, globalThis.location?.href)).href;
  }

  _eventsUrl() {
    const query = new URLSearchParams();
    for (const room of this._rooms) query.append("room", room);
    for (const id of this._watch ?? []) query.append("watch", id);
    for (const room of this._occupancy) query.append("occupancy", room);
    if (this._rooms.length && this._joinData !== null) query.set("data", this._joinData);
    const search = query.toString();
    const path = `clients/${encodeURIComponent(this._client)}/events`;
    return this._endpoint(search ? `${path}?${search}` : path);
  }

  // --- reconciliation ---------------------------------------------------------

  _dispatch(event) {
    let body;
    try {
      body = JSON.parse(event.data);
    } catch {
      return; // not presence's
    }
    if (event.type === "snapshot") {
      this._lastId = event.id;
      this._snapshot(body);
    } else if (event.type === "presence") {
      if (event.hasId && this._lastId && notAfter(event.id, this._lastId)) return;
      this._lastId = event.id;
      this._presence(body);
    } else if (event.type === "occupancy") {
      if (this._counts.get(body.room) === body.count) return;
      this._counts.set(body.room, body.count);
      this._emit("occupancy", { room: body.room, count: body.count });
    }
  }

  _snapshot(body) {
    const first = !this._synced;
    this._synced = true;
    const parts = [];
    if (Array.isArray(body.clients)) parts.push([undefined, this._global, body.clients]);
    const rooms = Object.keys(body.rooms ?? {});
    for (const room of rooms) {
      if (!this._roomMembers.has(room)) this._roomMembers.set(room, new Map());
      parts.push([room, this._roomMembers.get(room), body.rooms[room]]);
    }
    for (const [room, members, listed] of parts) {
      const next = new Map(listed.map((m) => [m.client, member(m)]));
      const before = new Map(members);
      members.clear();
      for (const [client, m] of next) members.set(client, m);
      if (first) continue;
      // Exactly the differences, as events of their own.
      for (const [client, m] of next) {
        const old = before.get(client);
        if (!old) this._memberEvent("online", m, room, true);
        else if (!same(old, m)) this._memberEvent("update", m, room, true);
      }
      for (const [client, old] of before) {
        if (!next.has(client)) this._memberEvent("offline", old, room, true);
      }
    }
    this._emit("sync", { reset: !first, rooms });
  }

  _presence(body) {
    const { room, client, status } = body;
    const members = room === undefined ? this._global : this._roomMembers.get(room);
    if (!members || typeof client !== "string") return;
    const old = members.get(client);
    if (status === "OFFLINE") {
      if (!old) return;
      members.delete(client);
      const gone = typeof body.at === "number" ? { ...old, at: body.at } : old;
      this._memberEvent("offline", gone, room, false);
      return;
    }
    if (status !== "ONLINE" && status !== "UPDATE") return;
    const now = member(body);
    if (old && same(old, now)) return;
    members.set(client, now);
    this._memberEvent(old ? "update" : "online", now, room, false);
  }

  _memberEvent(type, m, room, synthetic) {
    const event = { ...m, synthetic };
    if (room !== undefined) event.room = room;
    this._emit(type, event);
  }

  _emit(type, event) {
    for (const listener of [...(this._listeners.get(type) ?? [])]) {
      try {
        listener(event);
      } catch (error) {
        // One listener's bug must not stop the client or the other listeners.
        if (typeof reportError === "function") reportError(error);
        else console.error(error);
      }
    }
  }
}

// An option in ms, its default when absent; a TypeError when out of range.
function msOption(options, name, zero) {
  const value = options[name] ?? DEFAULTS[name];
  const least = zero ? value >= 0 : value > 0;
  if (typeof value !== "number" || !least || value > LONGEST_TIMER_MS) {
    const range = `${zero ? "0" : "over 0"} to ${LONGEST_TIMER_MS}`;
    throw new TypeError(`${name} must be a number of ms, ${range}`);
  }
  return value;
}

// The exp claim of a JWT (Unix seconds), or null for anything else.
function expiryOf(token) {
  if (typeof token !== "string") return null;
  const part = token.split(".")[1];
  if (!part) return null;
  try {
    const json = atob(part.replace(/-/g, "+").replace(/_/g, "/"));
    const exp = JSON.parse(json).exp;
    return typeof exp === "number" ? exp : null;
  } catch {
    return null;
  }
}

async function errorOf(response, Kind = null) {
  let message = `HTTP ${response.status}`;
  try {
    const body = await response.json();
    if (body && typeof body.error === "string") message = body.error;
  } catch {
    // not JSON: the status says enough
  }
  return Kind ? new Kind(message) : new PresenceError(response.status, message);
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
