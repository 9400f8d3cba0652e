// backoff.js: how long presence-client.js waits before it reconnects.

/**
 * The delay in ms before a reconnect; `attempts` counts the failed ones just
 * before it (0 after a stream that opened). Uniform in [c/2, c], where
 * c = min(maxDelay, base * 2^(attempts + 1)), and never below minDelay. The
 * base is minDelay, or the server's `retry:` when longer (up to maxDelay): a
 * `retry: 0`, which a proxy may send, must not make a hot loop. So by
 * default 0.5 to 1 s, then 1 to 2 s, doubling, up to 15 to 30 s: the first
 * comes within the server's default leave grace (2 s), and the clients of a
 * restarted server spread out.
 */
export function reconnectDelay({ minDelay, maxDelay, attempts, retry = null, random = null }) {
  const r = random ?? Math.random();
  const longest = Math.max(minDelay, maxDelay);
  const base = Math.min(longest, Math.max(minDelay, retry ?? 0));
  const ceiling = Math.min(longest, base * 2 ** (attempts + 1));
  return Math.max(minDelay, ceiling / 2 + (r * ceiling) / 2);
}
