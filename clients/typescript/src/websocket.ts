// The WebSocket transport: one socket to `/api/v1/events/ws`, the token sent as the first message
// (never in the URL), refreshed in-band before it expires, the filter changed in-band. The
// socket does not reconnect by itself: its close code tells the client what to do.

import { ConnectionClosedError, RequestRefusedError } from "./errors.js";
import { SSE_ERROR_CODES, SSE_REFUSAL_CODES } from "./index.js";
import type { Reconnect, Transport, TransportListener } from "./transport.js";
import {
  type AppliedFilter,
  type ClientMessage,
  closeVerdict,
  parseServerMessage,
} from "./ws-protocol.js";

/** A handler whose event may be a richer type than the one named (a method's parameter is
 * compared both ways), so that the browser's own WebSocket is a `WebSocketLike`. */
type Handler<E> = { handle(event: E): void }["handle"];

/** The part of the browser's WebSocket the client uses; inject another for tests or Node. */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: Handler<unknown> | null;
  onmessage: Handler<{ readonly data: unknown }> | null;
  onclose: Handler<{ readonly code: number; readonly reason: string }> | null;
  onerror: Handler<unknown> | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketFactory = (url: string) => WebSocketLike;

export const browserWebSocket: WebSocketFactory = (url) => {
  const native = (globalThis as { WebSocket?: new (u: string) => WebSocketLike }).WebSocket;
  if (!native) throw new Error("no WebSocket here: pass `webSocket` in the options");
  return new native(url);
};

const STREAM_ERRORS: ReadonlySet<string> = new Set(SSE_ERROR_CODES);
const REFUSALS: ReadonlySet<string> = new Set(SSE_REFUSAL_CODES);

/** Refresh the token this long before it expires, at most (a fifth of its life when shorter),
 * so that the reply is in before the router would close the stream as `token-expired`. */
const REFRESH_LEAD_MS = 30_000;

export interface WebSocketSettings {
  factory: WebSocketFactory;
  /** The token to authenticate with, or `null` for the `access_token` cookie. */
  token: string | null;
  /** Where a fresh token comes from, for the in-band refresh; `null`: never refresh in-band. */
  getToken: (() => string | Promise<string>) | null;
}

interface Pending {
  resolve: (reply: unknown) => void;
  reject: (error: Error) => void;
}

export class WebSocketTransport implements Transport {
  private readonly socket: WebSocketLike;
  private readonly pending = new Map<number, Pending>();
  private nextRef = 1;
  private admitted = false;
  private reached = false;
  /** The retry hint of the last error, which says how long to wait after the close. */
  private retryMs: number | null = null;
  private helloRetryMs: number | null = null;
  /** The router's last word on the connection (an `error` frame no request asked for, or an
   * `sse.error`), which says why a close that stops the client came. */
  private lastError: RequestRefusedError | null = null;
  private refreshTimer: ReturnType<typeof setTimeout> | null = null;

  constructor(
    url: string,
    private readonly settings: WebSocketSettings,
    private readonly listener: TransportListener,
  ) {
    const socket = settings.factory(toWebSocketUrl(url));
    this.socket = socket;
    socket.onopen = () => {
      this.reached = true;
      if (settings.token !== null) this.send({ type: "auth", token: settings.token });
    };
    socket.onmessage = (event) => this.onFrame(event.data);
    socket.onclose = (event) => this.onClose(event.code, event.reason);
  }

  close(): void {
    this.stopRefreshing();
    this.socket.onclose = null;
    this.rejectPending();
    this.socket.close(1000);
  }

  async refresh(token: string): Promise<number | null> {
    const reply = (await this.request((ref) => ({ type: "refresh", token, ref }))) as {
      expires_at: number | null;
    };
    return reply.expires_at;
  }

  async filter(filter: AppliedFilter): Promise<AppliedFilter> {
    const reply = (await this.request((ref) => ({ type: "filter", ref, ...filter }))) as {
      filter: AppliedFilter;
    };
    return reply.filter;
  }

  private request(message: (ref: number) => ClientMessage): Promise<unknown> {
    if (!this.admitted) return Promise.reject(new ConnectionClosedError());
    const ref = this.nextRef++;
    return new Promise((resolve, reject) => {
      this.pending.set(ref, { resolve, reject });
      this.send(message(ref));
    });
  }

  private send(message: ClientMessage): void {
    this.socket.send(JSON.stringify(message));
  }

  private onFrame(frame: unknown): void {
    const message = parseServerMessage(frame);
    if (message === null) return;
    switch (message.type) {
      case "hello":
        this.admitted = true;
        this.helloRetryMs = message.retry_ms;
        if (message.id !== null) this.listener.position(message.id);
        this.listener.opened();
        this.scheduleRefresh(message.expires_at);
        return;
      case "event":
        if (message.id !== null) this.listener.position(message.id);
        if (message.event === "sse.error") {
          const data = message.data as { code?: string; message?: string };
          this.retryMs = message.retry_ms;
          this.lastError = new RequestRefusedError(data.code ?? "unknown", data.message ?? "");
        }
        this.listener.event(message.event, message.data);
        return;
      case "cursor":
        this.listener.position(message.id);
        return;
      case "refreshed":
        this.settle(message.ref, message);
        this.scheduleRefresh(message.expires_at);
        return;
      case "filtered":
        this.settle(message.ref, message);
        return;
      case "access-changed":
        this.listener.accessChanged({ novel_id: message.novel_id, session_id: message.session_id });
        return;
      case "error": {
        const error = new RequestRefusedError(message.code, message.message);
        const pending = typeof message.ref === "number" ? this.pending.get(message.ref) : undefined;
        if (pending) {
          this.pending.delete(message.ref as number);
          pending.reject(error);
        } else {
          this.onRefusal(error, message.retry_ms);
        }
        return;
      }
    }
  }

  /** The router's refusal of the connection, said before it closes it. One the SSE path also
   * sends (a refusal for now, an error of the stream) is reported as the same `sse.error`. */
  private onRefusal(error: RequestRefusedError, retryMs: number | null): void {
    this.lastError = error;
    this.retryMs = retryMs;
    if (!STREAM_ERRORS.has(error.code)) return; // reported by the close that follows
    if (REFUSALS.has(error.code)) this.listener.interrupted();
    const retryable = retryMs !== null || REFUSALS.has(error.code);
    this.listener.event("sse.error", { code: error.code, message: error.message, retryable });
  }

  private settle(ref: unknown, reply: unknown): void {
    const pending = typeof ref === "number" ? this.pending.get(ref) : undefined;
    if (!pending) return;
    this.pending.delete(ref as number);
    pending.resolve(reply);
  }

  private onClose(code: number, reason: string): void {
    this.stopRefreshing();
    this.rejectPending();
    this.listener.ended(this.nextAfter(code, reason));
  }

  private nextAfter(code: number, reason: string): Reconnect {
    switch (closeVerdict(code)) {
      case "resume":
      case "refresh": // a fresh token is fetched for every connection
        return { after: "now" };
      case "wait": {
        const ms = this.retryMs ?? this.helloRetryMs;
        return ms === null ? { after: "backoff", unreached: false } : { after: "retry", ms };
      }
      case "stop":
        return {
          after: "never",
          refusal: this.lastError ?? new RequestRefusedError(reason || String(code), `closed: ${code}`),
        };
      case "backoff":
        return { after: "backoff", unreached: !this.reached };
    }
  }

  private scheduleRefresh(expiresAt: number | null): void {
    this.stopRefreshing();
    const getToken = this.settings.getToken;
    if (expiresAt === null || getToken === null) return;
    const left = expiresAt * 1000 - Date.now();
    const delay = Math.max(0, left - Math.min(REFRESH_LEAD_MS, left / 5));
    this.refreshTimer = setTimeout(() => {
      this.refreshTimer = null;
      void (async () => {
        try {
          await this.refresh(await getToken());
        } catch {
          // Nothing is lost: the router closes the stream as `token-expired` when the old token
          // runs out, and the client reconnects, from its cursor, with a token it fetches anew.
        }
      })();
    }, delay);
  }

  private stopRefreshing(): void {
    if (this.refreshTimer !== null) clearTimeout(this.refreshTimer);
    this.refreshTimer = null;
  }

  private rejectPending(): void {
    for (const pending of this.pending.values()) pending.reject(new ConnectionClosedError());
    this.pending.clear();
  }
}

/** `https://` -> `wss://`, `http://` -> `ws://`; a `ws(s)://` URL is kept as it is. */
export function toWebSocketUrl(url: string): string {
  const parsed = new URL(url);
  if (parsed.protocol === "https:") parsed.protocol = "wss:";
  else if (parsed.protocol === "http:") parsed.protocol = "ws:";
  return parsed.toString();
}
