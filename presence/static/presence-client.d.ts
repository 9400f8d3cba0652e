// Types of presence-client.js, the browser client of presence.

/** A member's data: a JSON object of at most 1 KB. */
export type MemberData = { readonly [key: string]: unknown };

export interface Member {
  readonly client: string;
  /** The id of the server whose heartbeat holds the client. */
  readonly server: string;
  /** Room members only, when they have some. */
  readonly data?: MemberData;
}

/** An `online`, `update` or `offline` event. */
export interface MemberEvent extends Member {
  /** Absent for global and watch-list events. */
  readonly room?: string;
  /** True when made up from a reset snapshot's differences, not sent by the server. */
  readonly synthetic: boolean;
  /** Unix ms of a global `offline`, when the server sends it. */
  readonly at?: number;
}

export interface SyncEvent {
  /** False for the first snapshot, true for every later one. */
  readonly reset: boolean;
  /** The rooms the snapshot listed. */
  readonly rooms: readonly string[];
}

export interface OccupancyEvent {
  readonly room: string;
  readonly count: number;
}

export type State = "idle" | "connecting" | "open" | "reconnecting" | "closed";

export interface StateEvent {
  readonly from: State;
  readonly to: State;
  /** Why: the failure a reconnect follows, or what closed the client. */
  readonly error?: Error;
}

export interface PresenceEvents {
  online: MemberEvent;
  update: MemberEvent;
  offline: MemberEvent;
  sync: SyncEvent;
  occupancy: OccupancyEvent;
  state: StateEvent;
}

export type TokenReason = "initial" | "expired" | "unauthorized";

export interface PresenceClientOptions {
  /** The server or its mount prefix, absolute or relative to the page. */
  url: string;
  client: string;
  /** Rooms to be a member of, and follow. */
  rooms?: readonly string[];
  /** Ids whose global presence to follow, instead of everyone's. */
  watch?: readonly string[];
  /** Rooms whose member count to follow. */
  occupancy?: readonly string[];
  /** This client's data in its rooms when its membership begins. */
  data?: MemberData;
  /** A token (JWT) for the client; null, or throwing UnauthorizedError, closes it. */
  getToken?: (request: { reason: TokenReason }) => Promise<string | null>;
  /** Shortest reconnect delay in ms, over 0 (default 500). The n-th
   * reconnect in a row (n = 1 after a stream that opened) waits a random
   * delay in [c/2, c], c = min(maxDelay, base * 2^n), never below minDelay;
   * base is minDelay, or the server's `retry:` when longer. */
  minDelay?: number;
  /** Longest reconnect delay in ms (default 30000; a 503's Retry-After may wait longer). */
  maxDelay?: number;
  /** Ms without a byte, keep-alive pings included, after which the connection
   * counts as dead (default 45000; 0: never). */
  idleTimeout?: number;
}

export class PresenceClient {
  /** Throws a TypeError without a client id, or for a delay that is not a
   * number of ms up to 2^31 - 1 (over 0 for minDelay and maxDelay). */
  constructor(options: PresenceClientOptions);
  readonly state: State;
  on<K extends keyof PresenceEvents>(
    type: K,
    listener: (event: PresenceEvents[K]) => void,
  ): () => void;
  connect(): void;
  close(): void;
  /** A room's members; with no room, who is online (only the watched, with `watch`). */
  members(room?: string): ReadonlyMap<string, Member>;
  /** The latest occupancy count of a room, undefined before its first. */
  count(room: string): number | undefined;
  /** PUT .../data: true when the data changed. Rejects with a PresenceError.
   * Once accepted, for one of `rooms`, it is also what a reconnect joins with. */
  setData(room: string, data: MemberData): Promise<boolean>;
}

export class UnauthorizedError extends Error {
  constructor(message?: string);
}

export class PresenceError extends Error {
  constructor(status: number, message: string);
  /** The HTTP status. */
  readonly status: number;
}
