// sse-parser.js: text/event-stream, read as the HTML specification reads it.
//
// presence-client.js reads its stream with fetch() (which can send an
// Authorization header and see a 401), so it parses the bytes itself rather
// than through EventSource.

/** A streaming parser of text/event-stream: push() bytes, get events. */
export class EventParser {
  /** `onEvent({type, data, id, hasId})` for each event dispatched. */
  constructor(onEvent) {
    this._onEvent = onEvent;
    this._decoder = new TextDecoder("utf-8");
    this._buffer = "";
    this._first = true;
    this._afterCR = false;
    this._data = [];
    this._type = "";
    this._hasId = false;
    /** The last event ID buffer: kept across events, as Last-Event-ID. */
    this.lastId = "";
    /** The last `retry:` value, in ms; null before one. */
    this.retry = null;
  }

  push(bytes) {
    let text = this._decoder.decode(bytes, { stream: true });
    if (this._first && text) {
      this._first = false;
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    }
    // A CR ending the last chunk may be half a CRLF.
    if (!text) return;
    if (this._afterCR && text.startsWith("\n")) text = text.slice(1);
    this._afterCR = text.endsWith("\r");
    this._buffer += text;
    const lines = this._buffer.split(/\r\n|\r|\n/);
    this._buffer = lines.pop();
    for (const line of lines) this._line(line);
  }

  _line(line) {
    if (line === "") {
      this._dispatch();
      return;
    }
    if (line.startsWith(":")) return;
    const colon = line.indexOf(":");
    const name = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (name === "data") this._data.push(value);
    else if (name === "event") this._type = value;
    else if (name === "id" && !value.includes("\0")) {
      this.lastId = value;
      this._hasId = true;
    } else if (name === "retry" && /^\d+$/.test(value)) this.retry = Number(value);
  }

  _dispatch() {
    const data = this._data;
    const type = this._type || "message";
    const hasId = this._hasId;
    this._data = [];
    this._type = "";
    this._hasId = false;
    if (!data.length) return;
    this._onEvent({ type, data: data.join("\n"), id: this.lastId, hasId });
  }
}
