// members.js: a member as presence-client.js keeps it, and when two are the same.

/** `{client, server, data?}`, frozen: what members() lists and events carry. */
export function member({ client, server, data }) {
  const m = { client, server };
  if (data !== undefined && data !== null) m.data = data;
  return Object.freeze(m);
}

/** Whether two members are the same: server and data, as the server compares data. */
export function same(a, b) {
  return a.server === b.server && canonical(a.data) === canonical(b.data);
}

// JSON with sorted keys, the server's canonical form.
function canonical(value) {
  if (value === undefined) return "";
  if (Array.isArray(value)) return `[${value.map(canonical).join(",")}]`;
  if (value !== null && typeof value === "object") {
    const keys = Object.keys(value).sort();
    return `{${keys.map((k) => `${JSON.stringify(k)}:${canonical(value[k])}`).join(",")}}`;
  }
  return JSON.stringify(value);
}
