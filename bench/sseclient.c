/*
 * A load client for event streams: many connections on one epoll loop, each reading an
 * HTTP/1.1 chunked text/event-stream, or with --websocket a WebSocket of JSON text frames (a
 * minimal RFC 6455 client: the upgrade, unmasked server frames, fragmented or not, masked
 * pong and close replies; it does not check Sec-WebSocket-Accept), and checking what it receives.
 *
 * Each event's data must carry "title":"<seq>:<unix-ns>", the publish sequence number and time.
 * The client reports, as one JSON object: connections opened and failed, time to open them all,
 * events received, missing and duplicated sequence numbers, delivery latency percentiles, and its
 * own CPU time, so the harness can tell whether the client was the bottleneck.
 *
 * usage: sseclient [--websocket] [--last-event-id ID] [--open-timeout S] HOST PORT REQUEST_PATH
 *                  CONNECTIONS EXPECTED_EVENTS TIMEOUT_S [AUTH_HEADER]
 *   opens every connection (giving up after --open-timeout, 180 s), then waits until each got
 *   EXPECTED_EVENTS, at most TIMEOUT_S from then on; with 0, holds them for TIMEOUT_S.
 *   REQUEST_PATH "@file": one "path<TAB>header" line per connection (a different user each).
 *   A WebSocket counts as open once its first text frame, the server's hello, came: before it,
 *   the router has accepted the socket but not yet admitted the stream.
 *
 * With --browser (event streams only) each connection behaves as a browser's EventSource: when
 * its stream ends (refused in-band as "overloaded", cut as "lagged", shed, or closed) it waits
 * the retry: it was given and reconnects with the Last-Event-ID it last read, until it has the
 * last event (EXPECTED_EVENTS - 1) or TIMEOUT_S passed after all first answers. Its report adds
 * what a tab lived through: admitted, refused, lagged, and lost (events between its first one
 * and the last it missed) and duplicated across every reconnect. Options before HOST:
 *   --stall S     read nothing for S seconds after the first stream opens (a laggard)
 *   --window B    a receive buffer of B bytes (the kernel doubles it), as a phone on a bad line
 *   --spread S    start the connections spread over S seconds (a connect storm)
 *   --last-event-id: every stream resumes from ID (a reconnect storm), so it expects what was
 *   published after it as well.
 *   An event stream's body is chunked (the router, the Python peer) or, without
 *   Transfer-Encoding, runs until the connection closes (nginx's nchan).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_SEQ 65536
static double open_timeout_s = 180.0; /* --open-timeout */
#define BUF 65536

enum {
    WAITING,                             /* --browser: to (re)connect at wake_at */
    CONNECTING, HEADERS,
    CHUNK_SIZE, CHUNK_DATA, CHUNK_CRLF,  /* an event stream's chunked body */
    SIZED_BODY,                          /* a body of Content-Length (a refusal in-band) */
    RAW_BODY,                            /* one that runs until the connection closes */
    FRAME_HEAD, FRAME_PAYLOAD,           /* a WebSocket's frames */
};

typedef struct {
    int fd;
    int state;
    int opened;         /* the stream is admitted: its response headers, or the WebSocket hello */
    long chunk_left;
    unsigned char frame_head[14];
    int frame_head_len;
    long payload_left;
    int opcode;         /* of the frame being read */
    int message_opcode; /* of the message being read (its first fragment's) */
    int message_too_long;
    unsigned char control[125];
    int control_len;
    char head[8192];
    int head_len;
    char line[16384];   /* the current event-stream line */
    int line_len;
    long received;
    unsigned char *seen; /* one bit per sequence number */
    int done;
    /* --browser */
    char last_id[1024];
    int retry_ms;
    char event_name[64];
    char end_code[64];   /* the sse.error code that ended the stream, if one did */
    double wake_at;      /* when to reconnect (WAITING), or to read again (paused) */
    int paused, stalled_once, admitted, refused, final_seen;
    int min_seq;
} conn_t;

static double *latencies;
static long latency_count, latency_cap;
static double first_event_at, last_event_at; /* seconds, when the first and the last new event came */
static long total_events, duplicates;
static int max_seq_seen = -1;
static int websocket;
static int browser;
static double stall_s, spread_s;
static int window_bytes;
static long expected_events;
static long attempts, refusals, ended_lagged, ended_error, ended_closed, connect_errors;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int64_t wall_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* An event's data (an SSE data: line, or a WebSocket event frame), checked by its title. */
static void on_event_data(conn_t *c, const char *line, int len) {
    const char *t = memmem(line, len, "\"title\":", 8);
    if (!t) return;
    t += 8;
    while (t < line + len && (*t == ' ' || *t == '"')) t++; /* compact JSON or not */
    char *end;
    long seq = strtol(t, &end, 10);
    if (*end != ':' || seq < 0 || seq >= MAX_SEQ) return;
    int64_t sent = strtoll(end + 1, NULL, 10);
    if (c->seen[seq / 8] & (1 << (seq % 8))) {
        duplicates++;
        return;
    }
    c->seen[seq / 8] |= 1 << (seq % 8);
    if (seq > max_seq_seen) max_seq_seen = (int)seq;
    if (c->min_seq < 0 || seq < c->min_seq) c->min_seq = (int)seq;
    if (browser && seq == expected_events - 1) c->final_seen = 1;
    c->received++;
    total_events++;
    last_event_at = now_s();
    if (first_event_at == 0) first_event_at = last_event_at;
    if (latency_count == latency_cap) {
        latency_cap = latency_cap ? latency_cap * 2 : 1 << 20;
        latencies = realloc(latencies, latency_cap * sizeof(double));
    }
    latencies[latency_count++] = (wall_ns() - sent) / 1e6; /* ms */
}

/* A field's value: after its name and colon, one leading space dropped, NUL-terminated. */
static void field_value(char *into, int size, const char *line, int len, int name_len) {
    const char *v = line + name_len;
    if (v < line + len && *v == ' ') v++;
    int m = 0;
    while (v < line + len && m < size - 1) into[m++] = *v++;
    into[m] = 0;
}

static void on_line(conn_t *c, const char *line, int len) {
    if (len >= 5 && strncmp(line, "data:", 5) == 0) {
        if (browser && strcmp(c->event_name, "sse.error") == 0) {
            const char *k = memmem(line, len, "\"code\":", 7);
            if (!k) return;
            k += 7;
            while (k < line + len && (*k == ' ' || *k == '"')) k++;
            int m = 0;
            while (k < line + len && *k != '"' && m < (int)sizeof(c->end_code) - 1)
                c->end_code[m++] = *k++;
            c->end_code[m] = 0;
        } else {
            on_event_data(c, line, len);
        }
        return;
    }
    if (!browser) return;
    char value[64];
    if (len >= 3 && strncmp(line, "id:", 3) == 0) {
        field_value(c->last_id, sizeof(c->last_id), line, len, 3);
    } else if (len >= 6 && strncmp(line, "retry:", 6) == 0) {
        field_value(value, sizeof(value), line, len, 6);
        c->retry_ms = atoi(value);
    } else if (len >= 6 && strncmp(line, "event:", 6) == 0) {
        field_value(c->event_name, sizeof(c->event_name), line, len, 6);
    } else if (len == 0) {
        c->event_name[0] = 0;
    } else if (len == 4 && strncmp(line, ": ok", 4) == 0) {
        c->admitted = 1; /* the router's hello: admitted, not refused */
    }
}

static void on_stream_bytes(conn_t *c, const char *p, long n) {
    for (long i = 0; i < n; i++) {
        char ch = p[i];
        if (ch == '\n' || ch == '\r') {
            on_line(c, c->line, c->line_len);
            c->line_len = 0;
        } else if (c->line_len < (int)sizeof(c->line) - 1) {
            c->line[c->line_len++] = ch;
        }
    }
}

/* A client frame: FIN, masked (as RFC 6455 requires of a client) with a fixed key. */
static void send_frame(conn_t *c, int opcode, const unsigned char *payload, int len) {
    static const unsigned char key[4] = {0x37, 0xfa, 0x21, 0x3d};
    unsigned char frame[2 + 4 + 125];
    frame[0] = 0x80 | opcode;
    frame[1] = 0x80 | len;
    memcpy(frame + 2, key, 4);
    for (int k = 0; k < len; k++) frame[6 + k] = payload[k] ^ key[k % 4];
    /* Small and rare: a full socket buffer loses a pong, which the next ping makes good. */
    if (write(c->fd, frame, 6 + len) < 0) { /* counted by the read that fails */ }
}

/* A whole message or control frame has arrived; -1 ends the connection (the server closed). */
static int on_frame_done(conn_t *c) {
    if (c->opcode == 0x9) { /* ping: pong with its payload */
        send_frame(c, 0xA, c->control, c->control_len);
    } else if (c->opcode == 0x8) { /* close: echo its status code, then it is over */
        send_frame(c, 0x8, c->control, c->control_len >= 2 ? 2 : 0);
        return -1;
    } else if (c->opcode < 0x8 && (c->frame_head[0] & 0x80)) { /* a message's last fragment */
        if (c->message_opcode == 0x1 && !c->message_too_long) {
            if (!c->opened) {
                static const char hello[] = "\"type\":\"hello\"";
                if (memmem(c->line, c->line_len, hello, sizeof(hello) - 1)) c->opened = 1;
            } else {
                on_event_data(c, c->line, c->line_len);
            }
        }
        c->line_len = 0;
        c->message_too_long = 0;
    }
    return 0;
}

/* Feed a WebSocket's bytes through its framing. */
static int on_frame_bytes(conn_t *c, const char *p, long n, long i) {
    while (i < n) {
        if (c->state == FRAME_HEAD) {
            c->frame_head[c->frame_head_len++] = (unsigned char)p[i++];
            if (c->frame_head_len < 2) continue;
            int length7 = c->frame_head[1] & 0x7f;
            int needed = 2 + (length7 == 126 ? 2 : length7 == 127 ? 8 : 0) +
                         (c->frame_head[1] & 0x80 ? 4 : 0);
            if (c->frame_head_len < needed) continue;
            long length = length7;
            if (length7 == 126) length = (c->frame_head[2] << 8) | c->frame_head[3];
            if (length7 == 127) {
                length = 0;
                for (int k = 2; k < 10; k++) length = (length << 8) | c->frame_head[k];
            }
            if (c->frame_head[1] & 0x80) return -1; /* a server never masks */
            c->opcode = c->frame_head[0] & 0x0f;
            if (c->opcode >= 0x8 && length > 125) return -1;
            if (c->opcode == 0x1 || c->opcode == 0x2) c->message_opcode = c->opcode;
            c->control_len = 0;
            c->payload_left = length;
            c->frame_head_len = 0;
            c->state = FRAME_PAYLOAD;
            if (length == 0) {
                c->state = FRAME_HEAD;
                if (on_frame_done(c) < 0) return -1;
            }
        } else { /* FRAME_PAYLOAD */
            long take = n - i < c->payload_left ? n - i : c->payload_left;
            if (c->opcode >= 0x8) {
                memcpy(c->control + c->control_len, p + i, take);
                c->control_len += (int)take;
            } else if (c->line_len + take < (long)sizeof(c->line)) {
                memcpy(c->line + c->line_len, p + i, take);
                c->line_len += (int)take;
            } else {
                c->message_too_long = 1; /* not one of ours: the benchmark's events are small */
            }
            i += take;
            c->payload_left -= take;
            if (c->payload_left == 0) {
                c->state = FRAME_HEAD;
                if (on_frame_done(c) < 0) return -1;
            }
        }
    }
    return 0;
}

/* Feed raw socket bytes through the HTTP response framing (headers, then the chunked body or
 * the WebSocket's frames). */
static int on_bytes(conn_t *c, const char *p, long n) {
    long i = 0;
    while (i < n) {
        if (c->state == HEADERS) {
            while (i < n && c->head_len < (int)sizeof(c->head) - 1) {
                c->head[c->head_len++] = p[i++];
                if (c->head_len >= 4 && memcmp(c->head + c->head_len - 4, "\r\n\r\n", 4) == 0) {
                    c->head[c->head_len] = 0;
                    const char *expected = websocket ? "HTTP/1.1 101" : "HTTP/1.1 200";
                    if (strncmp(c->head, expected, 12) != 0) return -1;
                    c->state = websocket ? FRAME_HEAD
                               : strcasestr(c->head, "\r\ntransfer-encoding: chunked") ? CHUNK_SIZE
                                                                                      : RAW_BODY;
                    c->opened = !websocket;
                    const char *sized = strcasestr(c->head, "\r\ncontent-length:");
                    if (!websocket && sized) {
                        c->state = SIZED_BODY;
                        c->chunk_left = strtol(sized + 17, NULL, 10);
                        if (c->chunk_left == 0) return -1;
                    }
                    c->head_len = 0;
                    break;
                }
            }
            if (c->head_len >= (int)sizeof(c->head) - 1) return -1;
        } else if (c->state == FRAME_HEAD || c->state == FRAME_PAYLOAD) {
            return on_frame_bytes(c, p, n, i);
        } else if (c->state == RAW_BODY) {
            on_stream_bytes(c, p + i, n - i);
            return 0;
        } else if (c->state == CHUNK_SIZE) {
            char ch = p[i++];
            if (ch == '\n') {
                c->head[c->head_len] = 0;
                c->chunk_left = strtol(c->head, NULL, 16);
                c->head_len = 0;
                if (c->chunk_left == 0) return -1; /* the response ended */
                c->state = CHUNK_DATA;
            } else if (ch != '\r' && c->head_len < 32) {
                c->head[c->head_len++] = ch;
            }
        } else if (c->state == CHUNK_DATA) {
            long take = n - i < c->chunk_left ? n - i : c->chunk_left;
            on_stream_bytes(c, p + i, take);
            i += take;
            c->chunk_left -= take;
            if (c->chunk_left == 0) c->state = CHUNK_CRLF;
        } else if (c->state == SIZED_BODY) {
            long take = n - i < c->chunk_left ? n - i : c->chunk_left;
            on_stream_bytes(c, p + i, take);
            i += take;
            c->chunk_left -= take;
            if (c->chunk_left == 0) {
                on_stream_bytes(c, "\n", 1); /* the last line, if it had no newline */
                return -1; /* the response ended */
            }
        } else if (c->state == CHUNK_CRLF) {
            if (p[i++] == '\n') c->state = CHUNK_SIZE;
        }
    }
    return 0;
}

static int percentile_cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static char **paths, **auths;
static const char *host_name;
static const char *last_event_id; /* --last-event-id: every stream resumes from it */
static struct sockaddr_in address;
static int epoll_fd;

/* Open connection k (again): its request carries its Last-Event-ID once it has read one. */
static int start_connect(conn_t *c, int k) {
    attempts++;
    c->state = CONNECTING;
    c->head_len = c->line_len = 0;
    c->chunk_left = 0;
    c->event_name[0] = c->end_code[0] = 0;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (c->fd < 0) return -1;
    if (window_bytes > 0)
        setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &window_bytes, sizeof(window_bytes));
    connect(c->fd, (struct sockaddr *)&address, sizeof(address));
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.u32 = (uint32_t)k};
    epoll_ctl(epoll_fd, EPOLL_CTL_ADD, c->fd, &ev);
    return 0;
}

static int request_of(conn_t *c, int k, char *into, int size) {
    /* Any 16 bytes in base64 make a key; the server's accept is not checked. */
    const char *upgrade = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                          "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    char resume[1100] = "";
    if (browser && c->last_id[0]) snprintf(resume, sizeof(resume), "Last-Event-ID: %s\r\n", c->last_id);
    else if (last_event_id) snprintf(resume, sizeof(resume), "Last-Event-ID: %s\r\n", last_event_id);
    const char *a = auths[k];
    return snprintf(into, size, "GET %s HTTP/1.1\r\nHost: %s\r\n%s%s%s%s\r\n", paths[k], host_name,
                    websocket ? upgrade : "Accept: text/event-stream\r\n", resume, a,
                    a[0] ? "\r\n" : "");
}

/* --browser: the stream ended; reconnect after its retry, unless it has the last event. */
static void stream_ended(conn_t *c, int *done) {
    epoll_ctl(epoll_fd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    c->paused = 0;
    if (strcmp(c->end_code, "overloaded") == 0) {
        refusals++;
        c->refused = 1;
    } else if (strcmp(c->end_code, "lagged") == 0) {
        ended_lagged++;
    } else if (c->end_code[0]) {
        ended_error++;
    } else {
        ended_closed++;
    }
    if (c->final_seen) {
        c->done = 1;
        (*done)++;
        return;
    }
    c->state = WAITING;
    c->wake_at = now_s() + (c->retry_ms > 0 ? c->retry_ms : 1000) / 1000.0;
}

int main(int argc, char **argv) {
    while (argc > 1 && strncmp(argv[1], "--", 2) == 0) {
        const char *option = argv[1];
        int takes_value = strcmp(option, "--stall") == 0 || strcmp(option, "--window") == 0 ||
                          strcmp(option, "--spread") == 0 || strcmp(option, "--last-event-id") == 0 ||
                          strcmp(option, "--open-timeout") == 0;
        if (takes_value && argc < 3) return 2;
        if (strcmp(option, "--websocket") == 0) websocket = 1;
        else if (strcmp(option, "--browser") == 0) browser = 1;
        else if (strcmp(option, "--stall") == 0) stall_s = atof(argv[2]);
        else if (strcmp(option, "--window") == 0) window_bytes = atoi(argv[2]);
        else if (strcmp(option, "--spread") == 0) spread_s = atof(argv[2]);
        else if (strcmp(option, "--last-event-id") == 0) last_event_id = argv[2];
        else if (strcmp(option, "--open-timeout") == 0) open_timeout_s = atof(argv[2]);
        else { fprintf(stderr, "unknown option %s\n", option); return 2; }
        argv += takes_value ? 2 : 1;
        argc -= takes_value ? 2 : 1;
    }
    if (argc < 7 || (browser && websocket)) {
        fprintf(stderr, "usage: %s [--websocket | --browser [--stall S] [--window B] [--spread S]]"
                " [--last-event-id ID] [--open-timeout S]"
                " HOST PORT PATH CONNECTIONS EXPECTED TIMEOUT [AUTH]\n", argv[0]);
        return 2;
    }
    host_name = argv[1];
    int port = atoi(argv[2]);
    const char *path = argv[3];
    int n = atoi(argv[4]);
    long expected = atol(argv[5]);
    expected_events = expected;
    double timeout = atof(argv[6]);
    const char *auth = argc > 7 ? argv[7] : "";

    paths = calloc(n, sizeof(char *));
    auths = calloc(n, sizeof(char *));
    FILE *per_connection = path[0] == '@' ? fopen(path + 1, "r") : NULL;
    for (int k = 0; k < n; k++) {
        char line[8192];
        paths[k] = (char *)path;
        auths[k] = (char *)auth;
        if (per_connection && fgets(line, sizeof(line), per_connection)) {
            line[strcspn(line, "\n")] = 0;
            char *tab = strchr(line, '\t');
            if (tab) { *tab = 0; auths[k] = strdup(tab + 1); } else auths[k] = "";
            paths[k] = strdup(line);
        }
    }
    if (per_connection) fclose(per_connection);

    address = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, host_name, &address.sin_addr);
    epoll_fd = epoll_create1(0);
    conn_t *conns = calloc(n, sizeof(conn_t));
    int opened = 0, failed = 0, done = 0;
    double start = now_s();
    double all_open_at = 0;

    for (int k = 0; k < n; k++) {
        conn_t *c = &conns[k];
        c->seen = calloc(MAX_SEQ / 8, 1);
        c->min_seq = -1;
        c->fd = -1;
        if (browser) { /* started by the timer scan below, spread if asked */
            c->state = WAITING;
            c->wake_at = start + (n > 1 ? spread_s * k / (n - 1) : 0);
            continue;
        }
        if (start_connect(c, k) < 0) { failed++; c->done = 1; done++; }
    }

    struct epoll_event events[1024];
    char buf[BUF];
    char request[16384];
    while (done < n) {
        double elapsed = now_s() - start;
        if (all_open_at == 0 ? elapsed > open_timeout_s + spread_s : expected > 0 && elapsed > all_open_at + timeout)
            break;
        if (all_open_at == 0 && opened + failed == n) { /* every connection answered or failed */
            all_open_at = now_s() - start;
            fprintf(stderr, "open\n"); /* the harness starts publishing now */
            fflush(stderr);
        }
        if (browser) { /* reconnects due, and laggards done stalling */
            double now = now_s();
            for (int k = 0; k < n; k++) {
                conn_t *c = &conns[k];
                if (c->done || now < c->wake_at) continue;
                if (c->state == WAITING) {
                    if (start_connect(c, k) < 0) { connect_errors++; c->wake_at = now + 1; }
                } else if (c->paused) {
                    c->paused = 0;
                    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)k};
                    epoll_ctl(epoll_fd, EPOLL_CTL_MOD, c->fd, &ev);
                }
            }
        }
        int ready = epoll_wait(epoll_fd, events, 1024, browser ? 20 : 100);
        for (int e = 0; e < ready; e++) {
            int k = (int)events[e].data.u32;
            conn_t *c = &conns[k];
            if (c->done || c->paused || c->fd < 0) continue;
            if (c->state == CONNECTING && (events[e].events & EPOLLOUT)) {
                int error = 0;
                socklen_t len = sizeof(error);
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &error, &len);
                int request_len = request_of(c, k, request, sizeof(request));
                if (error || write(c->fd, request, request_len) != request_len) {
                    if (browser) { connect_errors++; stream_ended(c, &done); continue; }
                    failed++; c->done = 1; done++; close(c->fd); continue;
                }
                c->state = HEADERS;
                struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)k};
                epoll_ctl(epoll_fd, EPOLL_CTL_MOD, c->fd, &ev);
                continue;
            }
            if (events[e].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                long got = read(c->fd, buf, sizeof(buf));
                if (got < 0 && errno == EAGAIN) continue;
                int was_open = c->opened;
                if (got <= 0 || on_bytes(c, buf, got) < 0) {
                    if (browser) { if (!was_open && c->opened) opened++; stream_ended(c, &done); continue; }
                    if (!c->opened) failed++;
                    c->done = 1; done++; close(c->fd); continue;
                }
                if (!was_open && c->opened) opened++;
                if (browser && c->final_seen) {
                    epoll_ctl(epoll_fd, EPOLL_CTL_DEL, c->fd, NULL);
                    close(c->fd);
                    c->fd = -1;
                    c->done = 1; done++;
                } else if (browser && stall_s > 0 && c->admitted && !c->stalled_once) {
                    c->stalled_once = c->paused = 1; /* its socket and its inbox fill meanwhile */
                    c->wake_at = now_s() + stall_s;
                    struct epoll_event ev = {.events = 0, .data.u32 = (uint32_t)k};
                    epoll_ctl(epoll_fd, EPOLL_CTL_MOD, c->fd, &ev);
                } else if (!browser && expected > 0 && c->received >= expected) {
                    c->done = 1; done++;
                }
            }
        }
        if (expected == 0 && all_open_at > 0 && now_s() - start >= all_open_at + timeout) break;
    }

    long missing = 0;
    if (expected > 0 && !browser) {
        for (int k = 0; k < n; k++)
            if (conns[k].opened) missing += expected - conns[k].received;
    }
    qsort(latencies, latency_count, sizeof(double), percentile_cmp);
#define PCT(p) (latency_count ? latencies[(long)((latency_count - 1) * (p))] : 0.0)
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    double cpu = usage.ru_utime.tv_sec + usage.ru_utime.tv_usec / 1e6 + usage.ru_stime.tv_sec +
                 usage.ru_stime.tv_usec / 1e6;
    if (browser) {
        long admitted = 0, clients_refused = 0, lost = 0, not_caught_up = 0;
        for (int k = 0; k < n; k++) {
            conn_t *c = &conns[k];
            admitted += c->admitted;
            clients_refused += c->refused;
            if (c->final_seen) {
                for (long seq = c->min_seq; seq < expected; seq++)
                    if (!(c->seen[seq / 8] & (1 << (seq % 8)))) lost++;
            } else if (c->min_seq >= 0) {
                not_caught_up++;
            }
        }
        printf("{\"clients\": %d, \"admitted\": %ld, \"attempts\": %ld, \"refused_overloaded\": %ld, "
               "\"clients_refused\": %ld, \"ended_lagged\": %ld, \"ended_error\": %ld, "
               "\"ended_closed\": %ld, \"connect_errors\": %ld, \"events\": %ld, \"lost\": %ld, "
               "\"duplicates\": %ld, \"not_caught_up\": %ld, \"p50_ms\": %.2f, \"p99_ms\": %.2f, "
               "\"client_cpu_seconds\": %.3f, \"elapsed_seconds\": %.3f}\n",
               n, admitted, attempts, refusals, clients_refused, ended_lagged, ended_error,
               ended_closed, connect_errors, total_events, lost, duplicates, not_caught_up,
               PCT(0.5), PCT(0.99), cpu, now_s() - start);
        return 0;
    }
    printf("{\"opened\": %d, \"failed\": %d, \"open_seconds\": %.3f, \"events\": %ld, "
           "\"missing\": %ld, \"duplicates\": %ld, \"p50_ms\": %.2f, \"p90_ms\": %.2f, "
           "\"p99_ms\": %.2f, \"max_ms\": %.2f, \"client_cpu_seconds\": %.3f, "
           "\"elapsed_seconds\": %.3f, \"receiving_seconds\": %.3f}\n",
           opened, failed, all_open_at, total_events, missing, duplicates, PCT(0.5), PCT(0.9),
           PCT(0.99), latency_count ? latencies[latency_count - 1] : 0.0, cpu, now_s() - start,
           last_event_at - first_event_at);
    return 0;
}
