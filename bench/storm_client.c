/*
 * The connect storm's load in C: many EventSource clients of presence in one
 * process, on non-blocking sockets and epoll.
 *
 * Client i (for i = first, first + step, ... below total) is named s<i>. Each
 * connects to 127.0.0.1:<port> and sends
 *
 *     GET /clients/s<i>/events HTTP/1.1
 *     Host: bench
 *     Accept: text/event-stream
 *     Last-Event-ID: <id>           (once it has seen an id)
 *
 * then reads the answer as a browser's EventSource does: the status line (a 200
 * with Content-Type text/event-stream, or it is an HTTP error), the headers, the
 * body de-chunked (or delimited by Content-Length, or by the close), and the
 * event stream parsed per the HTML specification: lines end with LF, CRLF or CR;
 * the fields id, event, data and retry; comments; a blank line dispatches; an
 * incomplete event at the end of a stream is dropped. When the stream ends (end
 * of the chunked body, EOF, reset), the client reconnects after the
 * reconnection time (0.5 s unless the server sent retry:) with Last-Event-ID;
 * failed connects and HTTP errors are retried after that time too.
 *
 * Each client keeps a view of who is online, a bitmap of total bits and a
 * count, its own bit always set. A snapshot event
 * ({"clients":[{"client":"s12","server":"..."},...]} with an optional
 * "reset":true) replaces the view; a presence event
 * ({"client":"s12","status":"ONLINE"|"OFFLINE","server":"..."}) sets or clears
 * one bit. A client id that is not s<number> below total is counted in bad_ids.
 * A client has converged when its view holds all total clients.
 *
 * With --room-size S, the clients are in rooms of S instead: client i is in
 * room r<i / S> and asks for its room's stream,
 *
 *     GET /clients/s<i>/events?room=r<i / S> HTTP/1.1
 *
 * Its view is then its room's members, a bitmap of S bits: the snapshot
 * ({"rooms":{"r3":[{"client":"s150","server":"..."},...]}}) replaces it, and
 * a presence event ({"room":"r3","client":"s151","status":"ONLINE"|"UPDATE"|
 * "OFFLINE","server":"...","data"?:{...}}) sets or clears one bit (UPDATE is
 * only counted). A member that is not of the client's room is counted in
 * foreign_ids, an event of another room in wrong_room; neither changes the
 * view. A client has converged when its view holds its whole room. (The
 * scanner does not look into member data: a storm's members have none.)
 *
 * The parent (bench/storm.py) talks to it on stdin and stdout. Once set up it
 * prints {"ready":true} and waits for a line on stdin; then it connects all its
 * clients (spread over --spread-ms milliseconds) and prints a one-line JSON
 * status every 0.5 s, and at once on SIGUSR1. On SIGTERM, SIGINT, EOF on stdin
 * or a line "stop", it closes every connection, prints a last status line with
 * "final":true and each client's first convergence time, and exits.
 *
 *     storm_client --port P --total N [--first F --step K] [--spread-ms MS]
 *                  [--nice NICE] [--room-size S]
 *
 * Times are seconds since the go line; "started_at" is that moment in Unix time.
 */

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RECONNECT_MS 500
#define STATUS_EVERY_S 0.5
#define READ_SIZE (256 * 1024)
#define HEAD_MAX 16384
#define ID_MAX 256
#define STDIN_TAG UINT32_MAX
#define SLOW_CONNECT_S 0.9 /* a dropped SYN is resent after 1 s */

enum conn_state { IDLE, CONNECTING, HEAD, BODY };
enum framing { CLOSE_DELIMITED, CHUNKED, LENGTH };
enum chunk_state { CK_SIZE, CK_EXT, CK_SIZE_LF, CK_DATA, CK_DATA_CR, CK_DATA_LF };
enum event_type { EV_MESSAGE, EV_SNAPSHOT, EV_PRESENCE, EV_OTHER };

struct buf {
    char *p;
    size_t len, cap;
};

struct client {
    uint32_t index; /* its number in the storm: s<index> */
    uint32_t base, members; /* the first index of its view, and how many it holds */
    int fd;
    enum conn_state state;
    uint64_t *view;
    uint32_t known;
    char converged, ever, streamed;
    double converged_at; /* first convergence, or -1 */
    double connect_started;
    int reconnect_ms;
    char last_id[ID_MAX];
    int last_id_len;
    /* The connection. */
    struct buf head;
    enum framing framing;
    enum chunk_state chunk;
    uint64_t remaining; /* of the chunk, or of a Content-Length body */
    /* The event stream. */
    char bom_checked, skip_lf;
    struct buf line;
    struct buf data;
    char has_data;
    enum event_type type;
    char id_buf[ID_MAX];
    int id_len;
};

struct counters {
    unsigned long connects, streams_ended, http_errors, connect_failures, closed_early,
        protocol_errors, snapshots, reset_snapshots, online_events, offline_events, bytes,
        bad_ids, slow_connects, unconverged, foreign_ids, wrong_room, update_events;
};

static uint32_t total, mine, first_index, step = 1;
static uint32_t room_size; /* 0: one global stream each; else rooms of room_size */
static struct client *clients;
static size_t view_words;
static struct counters n;
static uint32_t connected, converged_now, ever_converged;
static double all_converged_at = -1, first_all_converged_at = -1, connect_max_s;
static double t0, started_at;
static int epfd, port;
static volatile sig_atomic_t stop_requested, status_requested;
static char readbuf[READ_SIZE];

/* Clients waiting to reconnect, in the order they are due. */
struct retry {
    uint32_t slot;
    double due;
};
static struct retry *retries;
static size_t retry_head, retry_count;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9 - t0;
}

static void die(const char *what) {
    fprintf(stderr, "storm_client: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void buf_append(struct buf *b, const char *p, size_t len) {
    if (b->len + len > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + len)
            cap *= 2;
        b->p = realloc(b->p, cap);
        if (!b->p)
            die("realloc");
        b->cap = cap;
    }
    memcpy(b->p + b->len, p, len);
    b->len += len;
}

/* Empties a buffer, giving back a large allocation (a snapshot split across reads). */
static void buf_reset(struct buf *b) {
    b->len = 0;
    if (b->cap > 65536) {
        free(b->p);
        b->p = NULL;
        b->cap = 0;
    }
}

/* --- the view ------------------------------------------------------------------ */

static void check_converged(struct client *c) {
    char complete = c->known == c->members;
    if (complete == c->converged)
        return;
    c->converged = complete;
    if (complete) {
        double t = now();
        converged_now++;
        if (!c->ever) {
            c->ever = 1;
            c->converged_at = t;
            ever_converged++;
        }
        if (converged_now == mine) {
            all_converged_at = t;
            if (first_all_converged_at < 0)
                first_all_converged_at = t;
        }
    } else {
        converged_now--;
        n.unconverged++;
        all_converged_at = -1;
    }
}

static void view_clear(struct client *c) {
    memset(c->view, 0, view_words * sizeof(uint64_t));
    uint32_t own = c->index - c->base;
    c->view[own / 64] |= 1ULL << (own % 64);
    c->known = 1;
}

/* The storm index of a client id s<number>, or -1 (counted in bad_ids). */
static int64_t client_number(const char *p, size_t len) {
    if (len < 2 || len > 11 || p[0] != 's' || (p[1] == '0' && len > 2)) {
        n.bad_ids++;
        return -1;
    }
    uint64_t v = 0;
    for (size_t i = 1; i < len; i++) {
        if (p[i] < '0' || p[i] > '9') {
            n.bad_ids++;
            return -1;
        }
        v = v * 10 + (uint64_t)(p[i] - '0');
    }
    if (v >= total) {
        n.bad_ids++;
        return -1;
    }
    return (int64_t)v;
}

static void view_set(struct client *c, int64_t i, int online) {
    if (i < 0)
        return;
    if (i < c->base || i >= (int64_t)c->base + c->members) {
        n.foreign_ids++; /* another room's client */
        return;
    }
    i -= c->base;
    uint64_t bit = 1ULL << (i % 64);
    uint64_t *word = &c->view[i / 64];
    if (online) {
        if (!(*word & bit)) {
            *word |= bit;
            c->known++;
        }
    } else if ((uint32_t)i + c->base != c->index && (*word & bit)) {
        *word &= ~bit;
        c->known--;
    }
}

/* --- the events' JSON ---------------------------------------------------------- */

/*
 * A small scanner over the data of presence's events: strings (with escapes),
 * keys (a string followed by ':'), and the literal true after "reset". For each
 * "client" key whose value is a string, on_client is called; "status", "room"
 * and "reset" are noted. Nesting is not tracked: presence's events hold one level
 * of objects within a list, and no other key is called client.
 */
struct scan {
    const char *client;
    size_t client_len;
    const char *room; /* NULL unless the event names one, unescaped */
    size_t room_len;
    int clients_found;
    int online, offline, update, reset;
};

static size_t skip_ws(const char *p, size_t i, size_t len) {
    while (i < len && (p[i] == ' ' || p[i] == '\t' || p[i] == '\n' || p[i] == '\r'))
        i++;
    return i;
}

/* The end (just past the closing quote) of the string opening at p[i]; len if none.
 * *escaped is set if it holds a backslash. */
static size_t string_end(const char *p, size_t i, size_t len, int *escaped) {
    *escaped = 0;
    for (i++; i < len; i++) {
        if (p[i] == '\\') {
            *escaped = 1;
            i++;
        } else if (p[i] == '"') {
            return i + 1;
        }
    }
    return len;
}

static void scan_json(const char *p, size_t len, struct scan *s, struct client *snapshot_of) {
    size_t i = 0;
    while (i < len) {
        const char *hit = memchr(p + i, '"', len - i);
        if (!hit)
            return;
        i = (size_t)(hit - p);
        int escaped;
        size_t end = string_end(p, i, len, &escaped);
        const char *key = p + i + 1;
        size_t key_len = end - i - 2;
        size_t j = skip_ws(p, end, len);
        if (end >= len || j >= len || p[j] != ':') {
            i = end; /* a value, not a key */
            continue;
        }
        j = skip_ws(p, j + 1, len);
        if (key_len == 6 && !memcmp(key, "client", 6) && j < len && p[j] == '"') {
            size_t vend = string_end(p, j, len, &escaped);
            const char *value = p + j + 1;
            size_t value_len = vend > j + 1 ? vend - j - 2 : 0;
            s->clients_found++;
            if (snapshot_of) {
                view_set(snapshot_of, escaped ? (n.bad_ids++, -1) : client_number(value, value_len),
                         1);
            } else {
                s->client = escaped ? NULL : value;
                s->client_len = value_len;
            }
            i = vend;
        } else if (key_len == 6 && !memcmp(key, "status", 6) && j < len && p[j] == '"') {
            size_t vend = string_end(p, j, len, &escaped);
            size_t value_len = vend > j + 1 ? vend - j - 2 : 0;
            s->online = value_len == 6 && !memcmp(p + j + 1, "ONLINE", 6);
            s->offline = value_len == 7 && !memcmp(p + j + 1, "OFFLINE", 7);
            s->update = value_len == 6 && !memcmp(p + j + 1, "UPDATE", 6);
            i = vend;
        } else if (key_len == 4 && !memcmp(key, "room", 4) && j < len && p[j] == '"') {
            size_t vend = string_end(p, j, len, &escaped);
            s->room = escaped ? NULL : p + j + 1;
            s->room_len = vend > j + 1 ? vend - j - 2 : 0;
            i = vend;
        } else if (key_len == 5 && !memcmp(key, "reset", 5)) {
            s->reset = len - j >= 4 && !memcmp(p + j, "true", 4);
            i = j;
        } else {
            i = j;
        }
    }
}

/* --- the event stream ---------------------------------------------------------- */

/* Whether a room event is of the client's room, r<index / room_size>. */
static int in_own_room(const struct client *c, const struct scan *s) {
    char own[16];
    int own_len = snprintf(own, sizeof own, "r%u", c->index / room_size);
    return s->room && s->room_len == (size_t)own_len && !memcmp(s->room, own, s->room_len);
}

static void dispatch(struct client *c) {
    memcpy(c->last_id, c->id_buf, (size_t)c->id_len);
    c->last_id_len = c->id_len;
    enum event_type type = c->type;
    c->type = EV_MESSAGE;
    if (!c->has_data)
        return;
    c->has_data = 0;
    size_t len = c->data.len;
    if (len && c->data.p[len - 1] == '\n')
        len--;
    c->data.len = 0;
    struct scan s = {0};
    if (type == EV_SNAPSHOT) {
        n.snapshots++;
        view_clear(c);
        scan_json(c->data.p, len, &s, c);
        n.reset_snapshots += (unsigned long)s.reset;
        if (c->data.cap > 65536)
            buf_reset(&c->data);
    } else if (type == EV_PRESENCE) {
        scan_json(c->data.p, len, &s, NULL);
        if (room_size && !in_own_room(c, &s)) {
            n.wrong_room++;
        } else if (s.clients_found && s.update) {
            n.update_events++;
        } else if (s.clients_found && (s.online || s.offline)) {
            int64_t i = s.client ? client_number(s.client, s.client_len) : (n.bad_ids++, -1);
            if (s.online)
                n.online_events++;
            else
                n.offline_events++;
            view_set(c, i, s.online);
        }
    }
    check_converged(c);
}

static void field(struct client *c, const char *p, size_t len) {
    if (len == 0) {
        dispatch(c);
        return;
    }
    if (p[0] == ':')
        return; /* a comment */
    const char *colon = memchr(p, ':', len);
    size_t name_len = colon ? (size_t)(colon - p) : len;
    const char *value = colon ? colon + 1 : p + len;
    size_t value_len = colon ? len - name_len - 1 : 0;
    if (value_len && value[0] == ' ') {
        value++;
        value_len--;
    }
    if (name_len == 4 && !memcmp(p, "data", 4)) {
        buf_append(&c->data, value, value_len);
        buf_append(&c->data, "\n", 1);
        c->has_data = 1;
    } else if (name_len == 5 && !memcmp(p, "event", 5)) {
        if (value_len == 8 && !memcmp(value, "presence", 8))
            c->type = EV_PRESENCE;
        else if (value_len == 8 && !memcmp(value, "snapshot", 8))
            c->type = EV_SNAPSHOT;
        else if (value_len == 7 && !memcmp(value, "message", 7))
            c->type = EV_MESSAGE;
        else
            c->type = EV_OTHER;
    } else if (name_len == 2 && !memcmp(p, "id", 2)) {
        if (memchr(value, 0, value_len))
            return;
        if (value_len >= ID_MAX) {
            n.protocol_errors++; /* longer than kept: ignored */
            return;
        }
        memcpy(c->id_buf, value, value_len);
        c->id_len = (int)value_len;
    } else if (name_len == 5 && !memcmp(p, "retry", 5)) {
        int ms = 0;
        size_t i;
        for (i = 0; i < value_len && value[i] >= '0' && value[i] <= '9' && ms < 10000000; i++)
            ms = ms * 10 + (value[i] - '0');
        if (value_len && i == value_len)
            c->reconnect_ms = ms;
    }
}

/* Body bytes of the event stream, split anywhere. */
static void feed(struct client *c, const char *p, size_t len) {
    if (!c->bom_checked) {
        /* The BOM may be split too: wait for three bytes, or a mismatch. */
        static const char bom[3] = {'\xef', '\xbb', '\xbf'};
        size_t have = c->line.len;
        while (len && have < 3 && *p == bom[have]) {
            buf_append(&c->line, p, 1);
            p++;
            len--;
            have++;
        }
        if (have == 3) {
            c->line.len = 0;
            c->bom_checked = 1;
        } else if (len) {
            c->bom_checked = 1; /* not a BOM: those bytes were text */
        } else {
            return;
        }
    }
    while (len) {
        if (c->skip_lf) {
            c->skip_lf = 0;
            if (*p == '\n') {
                p++;
                len--;
                continue;
            }
        }
        const char *lf = memchr(p, '\n', len);
        size_t upto = lf ? (size_t)(lf - p) : len;
        const char *cr = memchr(p, '\r', upto);
        const char *eol = cr ? cr : lf;
        if (!eol) {
            buf_append(&c->line, p, len);
            return;
        }
        size_t line_len = (size_t)(eol - p);
        size_t used = line_len + 1;
        if (cr) {
            if (used < len && p[used] == '\n')
                used++;
            else if (used == len)
                c->skip_lf = 1; /* a CRLF split between reads */
        }
        if (c->line.len) {
            buf_append(&c->line, p, line_len);
            field(c, c->line.p, c->line.len);
            buf_reset(&c->line);
        } else {
            field(c, p, line_len);
        }
        p += used;
        len -= used;
    }
}

/* --- connections --------------------------------------------------------------- */

static void schedule_retry(struct client *c) {
    double due = now() + c->reconnect_ms / 1000.0;
    size_t at = (retry_head + retry_count) % mine;
    retries[at].slot = (uint32_t)(c - clients);
    retries[at].due = due;
    retry_count++;
}

/* Closes the connection; counts why; reconnects later unless stopping. */
static void finish(struct client *c, int stream_ended) {
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    if (c->state == BODY) {
        connected--;
        if (stream_ended && !stop_requested)
            n.streams_ended++;
    } else if (c->state == HEAD && !stop_requested) {
        n.closed_early++;
    }
    c->state = IDLE;
    buf_reset(&c->head);
    free(c->head.p);
    c->head.p = NULL;
    c->head.cap = 0;
    buf_reset(&c->line);
    c->data.len = 0;
    buf_reset(&c->data);
    if (!stop_requested)
        schedule_retry(c);
}

static void start_connect(struct client *c) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        n.connect_failures++;
        schedule_retry(c);
        return;
    }
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    c->fd = fd;
    c->state = CONNECTING;
    c->connect_started = now();
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
        n.connect_failures++;
        close(fd);
        c->fd = -1;
        c->state = IDLE;
        schedule_retry(c);
        return;
    }
    struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = (uint32_t)(c - clients)};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
        die("epoll_ctl");
}

static void send_request(struct client *c) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
        n.connect_failures++;
        c->state = IDLE;
        finish(c, 0);
        return;
    }
    double took = now() - c->connect_started;
    if (took > connect_max_s)
        connect_max_s = took;
    if (took > SLOW_CONNECT_S)
        n.slow_connects++;
    char request[512], query[32] = "";
    if (room_size)
        snprintf(query, sizeof query, "?room=r%u", c->index / room_size);
    int size = snprintf(request, sizeof request,
                        "GET /clients/s%u/events%s HTTP/1.1\r\nHost: bench\r\n"
                        "Accept: text/event-stream\r\n",
                        c->index, query);
    if (c->last_id_len)
        size += snprintf(request + size, sizeof request - (size_t)size,
                         "Last-Event-ID: %.*s\r\n", c->last_id_len, c->last_id);
    size += snprintf(request + size, sizeof request - (size_t)size, "\r\n");
    if (write(c->fd, request, (size_t)size) != size) {
        n.connect_failures++; /* a new socket takes a short request whole, or failed */
        c->state = IDLE;
        finish(c, 0);
        return;
    }
    c->state = HEAD;
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)(c - clients)};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0)
        die("epoll_ctl");
}

static int header_is(const char *line, size_t len, const char *name) {
    size_t k = strlen(name);
    return len > k && line[k] == ':' && !strncasecmp(line, name, k);
}

/* Parses the response head; 1 for a 200 event stream (body framing noted), else 0. */
static int response(struct client *c, const char *head, size_t len) {
    const char *end = head + len;
    const char *eol = memmem(head, len, "\r\n", 2);
    if (!eol)
        eol = end;
    if (eol - head < 12 || memcmp(head, "HTTP/1.", 7) || memcmp(head + 8, " 200", 4) ||
        (eol - head > 12 && head[12] != ' '))
        return 0;
    int event_stream = 0;
    c->framing = CLOSE_DELIMITED;
    for (const char *line = eol + 2; line < end;) {
        const char *next = memmem(line, (size_t)(end - line), "\r\n", 2);
        if (!next)
            next = end;
        size_t line_len = (size_t)(next - line);
        const char *colon = memchr(line, ':', line_len);
        const char *value = colon ? colon + 1 : next;
        while (value < next && (*value == ' ' || *value == '\t'))
            value++;
        size_t value_len = (size_t)(next - value);
        if (header_is(line, line_len, "content-type")) {
            event_stream = value_len >= 17 && !strncasecmp(value, "text/event-stream", 17);
        } else if (header_is(line, line_len, "transfer-encoding")) {
            if (value_len >= 7 && !strncasecmp(next - 7, "chunked", 7))
                c->framing = CHUNKED;
        } else if (header_is(line, line_len, "content-length") && c->framing != CHUNKED) {
            c->framing = LENGTH;
            c->remaining = strtoull(value, NULL, 10);
        }
        line = next + 2;
    }
    return event_stream;
}

static int hex(char ch) {
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* Body bytes per the framing; 1 when the body has ended, -1 on a malformed chunk. */
static int body(struct client *c, const char *p, size_t len) {
    if (c->framing == CLOSE_DELIMITED) {
        feed(c, p, len);
        return 0;
    }
    if (c->framing == LENGTH) {
        size_t take = len < c->remaining ? len : (size_t)c->remaining;
        feed(c, p, take);
        c->remaining -= take;
        return c->remaining == 0;
    }
    size_t i = 0;
    while (i < len) {
        switch (c->chunk) {
        case CK_SIZE: {
            int d = hex(p[i]);
            if (d >= 0) {
                if (c->remaining >> 56)
                    return -1;
                c->remaining = c->remaining * 16 + (uint64_t)d;
            } else if (p[i] == ';' || p[i] == ' ' || p[i] == '\t') {
                c->chunk = CK_EXT;
            } else if (p[i] == '\r') {
                c->chunk = CK_SIZE_LF;
            } else {
                return -1;
            }
            i++;
            break;
        }
        case CK_EXT: {
            const char *cr = memchr(p + i, '\r', len - i);
            if (!cr)
                return 0;
            i = (size_t)(cr - p) + 1;
            c->chunk = CK_SIZE_LF;
            break;
        }
        case CK_SIZE_LF:
            if (p[i++] != '\n')
                return -1;
            if (c->remaining == 0)
                return 1; /* the last chunk; trailers are not read */
            c->chunk = CK_DATA;
            break;
        case CK_DATA: {
            size_t take = len - i < c->remaining ? len - i : (size_t)c->remaining;
            feed(c, p + i, take);
            i += take;
            c->remaining -= take;
            if (c->remaining == 0)
                c->chunk = CK_DATA_CR;
            break;
        }
        case CK_DATA_CR:
            if (p[i++] != '\r')
                return -1;
            c->chunk = CK_DATA_LF;
            break;
        case CK_DATA_LF:
            if (p[i++] != '\n')
                return -1;
            c->chunk = CK_SIZE;
            break;
        }
    }
    return 0;
}

static void start_stream(struct client *c) {
    c->state = BODY;
    free(c->head.p); /* it may hold a whole first read */
    c->head.p = NULL;
    c->head.len = c->head.cap = 0;
    connected++;
    n.connects++;
    c->streamed = 1;
    c->chunk = CK_SIZE;
    c->bom_checked = 0;
    c->skip_lf = 0;
    c->line.len = 0;
    c->data.len = 0;
    c->has_data = 0;
    c->type = EV_MESSAGE;
    memcpy(c->id_buf, c->last_id, (size_t)c->last_id_len);
    c->id_len = c->last_id_len;
}

static void readable(struct client *c) {
    ssize_t got = read(c->fd, readbuf, READ_SIZE);
    if (got < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (got <= 0) {
        finish(c, 1); /* EOF or reset */
        return;
    }
    n.bytes += (unsigned long)got;
    const char *p = readbuf;
    size_t len = (size_t)got;
    if (c->state == HEAD) {
        size_t from = c->head.len > 3 ? c->head.len - 3 : 0;
        buf_append(&c->head, p, len);
        const char *end = memmem(c->head.p + from, c->head.len - from, "\r\n\r\n", 4);
        if (!end) {
            if (c->head.len > HEAD_MAX) {
                n.http_errors++;
                c->state = IDLE;
                finish(c, 0);
            }
            return;
        }
        size_t head_len = (size_t)(end - c->head.p);
        if (!response(c, c->head.p, head_len)) {
            n.http_errors++;
            c->state = IDLE;
            finish(c, 0);
            return;
        }
        /* What followed the head is body: the read buffer has the same tail. */
        size_t rest = c->head.len - head_len - 4;
        start_stream(c);
        p = readbuf + len - rest;
        len = rest;
        if (!len)
            return;
    }
    int ended = body(c, p, len);
    if (ended < 0) {
        n.protocol_errors++;
        finish(c, 1);
    } else if (ended) {
        finish(c, 1);
    }
}

/* --- status -------------------------------------------------------------------- */

static void put_time(const char *key, double t) {
    if (t < 0)
        printf(",\"%s\":null", key);
    else
        printf(",\"%s\":%.3f", key, t);
}

static void status(int final) {
    uint32_t never = 0;
    for (uint32_t s = 0; s < mine; s++)
        never += !clients[s].streamed;
    printf("{\"t\":%.3f,\"started_at\":%.6f,\"clients\":%u,\"connected\":%u,"
           "\"converged\":%u,\"ever_converged\":%u",
           now(), started_at, mine, connected, converged_now, ever_converged);
    put_time("all_converged_at", all_converged_at);
    put_time("first_all_converged_at", first_all_converged_at);
    printf(",\"connects\":%lu,\"streams_ended\":%lu,\"http_errors\":%lu,"
           "\"connect_failures\":%lu,\"closed_early\":%lu,\"protocol_errors\":%lu,"
           "\"snapshots\":%lu,\"reset_snapshots\":%lu,\"online_events\":%lu,"
           "\"offline_events\":%lu,\"bytes\":%lu,\"bad_ids\":%lu,\"unconverged\":%lu,"
           "\"slow_connects\":%lu,\"connect_max_s\":%.3f,\"never_streamed\":%u,"
           "\"room_size\":%u,\"foreign_ids\":%lu,\"wrong_room\":%lu,\"update_events\":%lu",
           n.connects, n.streams_ended, n.http_errors, n.connect_failures, n.closed_early,
           n.protocol_errors, n.snapshots, n.reset_snapshots, n.online_events,
           n.offline_events, n.bytes, n.bad_ids, n.unconverged, n.slow_connects, connect_max_s,
           never, room_size, n.foreign_ids, n.wrong_room, n.update_events);
    if (final) {
        printf(",\"final\":true,\"converged_at\":[");
        for (uint32_t s = 0; s < mine; s++) {
            if (s)
                putchar(',');
            if (clients[s].converged_at < 0)
                printf("null");
            else
                printf("%.3f", clients[s].converged_at);
        }
        putchar(']');
    }
    printf("}\n");
    fflush(stdout);
}

static void on_signal(int sig) {
    if (sig == SIGUSR1)
        status_requested = 1;
    else
        stop_requested = 1;
}

static void read_stdin(void) {
    char line[256];
    ssize_t got = read(0, line, sizeof line - 1);
    if (got < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (got <= 0) {
        stop_requested = 1;
        return;
    }
    line[got] = 0;
    if (strstr(line, "stop"))
        stop_requested = 1;
    else if (strstr(line, "status"))
        status_requested = 1;
}

static void usage(void) {
    fprintf(stderr, "usage: storm_client --port P --total N [--first F] [--step K] "
                    "[--spread-ms MS] [--nice NICE] [--room-size S]\n");
    exit(2);
}

int main(int argc, char **argv) {
    double spread_ms = 0;
    int niceness = 0;
    for (int i = 1; i < argc; i++) {
        if (i + 1 >= argc)
            usage();
        const char *flag = argv[i], *value = argv[++i];
        if (!strcmp(flag, "--port"))
            port = atoi(value);
        else if (!strcmp(flag, "--total"))
            total = (uint32_t)strtoul(value, NULL, 10);
        else if (!strcmp(flag, "--first"))
            first_index = (uint32_t)strtoul(value, NULL, 10);
        else if (!strcmp(flag, "--step"))
            step = (uint32_t)strtoul(value, NULL, 10);
        else if (!strcmp(flag, "--spread-ms"))
            spread_ms = atof(value);
        else if (!strcmp(flag, "--nice"))
            niceness = atoi(value);
        else if (!strcmp(flag, "--room-size"))
            room_size = (uint32_t)strtoul(value, NULL, 10);
        else
            usage();
    }
    if (!port || !total || !step || first_index >= total)
        usage();
    errno = 0;
    if (niceness && nice(niceness) == -1 && errno)
        die("nice");
    struct rlimit limit;
    if (getrlimit(RLIMIT_NOFILE, &limit) == 0) {
        limit.rlim_cur = limit.rlim_max;
        setrlimit(RLIMIT_NOFILE, &limit);
    }
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_signal}; /* no SA_RESTART: epoll_wait returns */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);

    mine = (total - first_index + step - 1) / step;
    view_words = ((room_size ? room_size : total) + 63) / 64;
    clients = calloc(mine, sizeof *clients);
    retries = calloc(mine, sizeof *retries);
    uint64_t *views = calloc((size_t)mine * view_words, sizeof(uint64_t));
    if (!clients || !retries || !views)
        die("calloc");
    for (uint32_t s = 0; s < mine; s++) {
        struct client *c = &clients[s];
        c->index = first_index + s * step;
        c->base = room_size ? c->index / room_size * room_size : 0;
        c->members = room_size ? total - c->base : total;
        if (room_size && c->members > room_size)
            c->members = room_size;
        c->fd = -1;
        c->view = views + (size_t)s * view_words;
        c->converged_at = -1;
        c->reconnect_ms = RECONNECT_MS;
        view_clear(c);
        check_converged(c); /* a storm of one */
    }
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        die("epoll_create1");
    printf("{\"ready\":true,\"clients\":%u}\n", mine);
    fflush(stdout);
    char go[64];
    if (read(0, go, sizeof go) <= 0)
        return 0;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    started_at = ts.tv_sec + ts.tv_nsec / 1e9;
    t0 = 0;
    t0 = now();
    fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
    struct epoll_event in = {.events = EPOLLIN, .data.u32 = STDIN_TAG};
    epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &in);

    uint32_t started = 0; /* clients whose first connect has gone out */
    double next_status = STATUS_EVERY_S;
    static struct epoll_event events[1024];
    while (!stop_requested) {
        double t = now();
        /* First connects, spread evenly over spread_ms. */
        uint32_t due = spread_ms > 0 ? (uint32_t)(t * 1000 / spread_ms * mine) + 1 : mine;
        if (due > mine)
            due = mine;
        while (started < due)
            start_connect(&clients[started++]);
        while (retry_count && retries[retry_head].due <= t) {
            struct client *c = &clients[retries[retry_head].slot];
            retry_head = (retry_head + 1) % mine;
            retry_count--;
            start_connect(c);
        }
        if (t >= next_status || status_requested) {
            status_requested = 0;
            status(0);
            while (next_status <= t)
                next_status += STATUS_EVERY_S;
        }
        double wake = next_status;
        if (retry_count && retries[retry_head].due < wake)
            wake = retries[retry_head].due;
        if (started < mine)
            wake = t + 0.001;
        int timeout = (int)((wake - now()) * 1000) + 1;
        if (timeout < 0)
            timeout = 0;
        int ready = epoll_wait(epfd, events, 1024, timeout);
        if (ready < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int e = 0; e < ready; e++) {
            uint32_t slot = events[e].data.u32;
            if (slot == STDIN_TAG) {
                read_stdin();
                continue;
            }
            struct client *c = &clients[slot];
            if (c->state == CONNECTING)
                send_request(c);
            else if (c->state == HEAD || c->state == BODY)
                readable(c);
        }
    }
    for (uint32_t s = 0; s < mine; s++) {
        if (clients[s].fd >= 0)
            finish(&clients[s], 0);
    }
    status(1);
    return 0;
}
