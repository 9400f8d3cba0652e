// event-ids.js: the order of presence's SSE event ids, as the server orders them.

/** Whether SSE id `a` is at or before `b`: entry ids `<ms>-<seq>`, one per
 * shard joined by commas on a cluster, and a scoped stream's
 * `<tag>.<part>.<part>`. Ids of different shapes are not comparable (false):
 * the server's resume is gapless anyway. */
export function notAfter(a, b) {
  const x = a.split(".");
  const y = b.split(".");
  if (x.length !== y.length || (x.length > 1 && x[0] !== y[0])) return false;
  const xs = x.slice(x.length > 1 ? 1 : 0).join(",").split(",");
  const ys = y.slice(y.length > 1 ? 1 : 0).join(",").split(",");
  if (xs.length !== ys.length) return false;
  for (let i = 0; i < xs.length; i += 1) {
    const order = compareEntryIds(xs[i], ys[i]);
    if (order === null || order > 0) return false;
  }
  return true;
}

/** -1, 0 or 1 as Redis orders stream entry ids `<ms>-<seq>`; null for anything else. */
export function compareEntryIds(a, b) {
  const x = /^(\d+)-(\d+)$/.exec(a);
  const y = /^(\d+)-(\d+)$/.exec(b);
  if (!x || !y) return null;
  return compareDigits(x[1], y[1]) || compareDigits(x[2], y[2]);
}

// As numbers, without Number(): an entry id's parts may pass 2^53.
function compareDigits(a, b) {
  const x = a.replace(/^0+(?=\d)/, "");
  const y = b.replace(/^0+(?=\d)/, "");
  if (x.length !== y.length) return x.length < y.length ? -1 : 1;
  return x < y ? -1 : x > y ? 1 : 0;
}
