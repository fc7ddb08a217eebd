// SSEClient: the router's events over an EventSource or a WebSocket, resumed where they were,
// with a token kept fresh, backing off, and able to fall back to polling. Written by hand; the
// event types it dispatches come from index.ts, which is generated from the router's contracts.
// The transports (event-source.ts, websocket.ts) only open a connection and report on it.

import { ConnectionClosedError, type RequestRefusedError, SSEStreamError } from "./errors.js";
import { browserEventSource, type EventSourceFactory, EventSourceTransport } from "./event-source.js";
import type { SSEErrorPayload, SSEEventMap, SSEEventName } from "./index.js";
import type { Reconnect, Transport, TransportListener } from "./transport.js";
import { browserWebSocket, type WebSocketFactory, WebSocketTransport } from "./websocket.js";
import {
  type AccessChange,
  type AppliedFilter,
  appliedFilter,
  type StreamFilter,
} from "./ws-protocol.js";

export { ConnectionClosedError, REFUSAL_CODES, RequestRefusedError, SSEStreamError } from "./errors.js";
export type { EventSourceFactory, EventSourceLike, MessageEventLike } from "./event-source.js";
export type { WebSocketFactory, WebSocketLike } from "./websocket.js";
export {
  type AccessChange,
  type AppliedFilter,
  CLOSE_CODES,
  type StreamFilter,
} from "./ws-protocol.js";

/** Where the last cursor is kept, so a reload resumes where the tab was. */
export interface CursorStore {
  load(): string | null;
  save(cursor: string): void;
}

export type ConnectionState = "connecting" | "open" | "reconnecting" | "polling" | "closed";

export interface BackoffOptions {
  initialMs: number;
  maxMs: number;
  factor: number;
}

export interface PollingOptions {
  /** Fetch the app's state the old way; called every `intervalMs` while polling. */
  poll: () => Promise<void> | void;
  intervalMs: number;
  /** Switch to polling after this many failed connections in a row. */
  afterFailures: number;
}

/** `sse`: an EventSource; `websocket`: a WebSocket (in-band token refresh and filter change);
 * `auto`: a WebSocket, or an EventSource when no WebSocket could be opened (none in this
 * runtime, or a proxy or an older router that refuses the upgrade) before one ever was. */
export type TransportChoice = "sse" | "websocket" | "auto";

export interface SSEClientOptions {
  /** The stream endpoint, e.g. `https://events.example/api/v1/events/stream`. */
  url: string;
  /** Default `sse`. */
  transport?: TransportChoice;
  /** The WebSocket endpoint; by default `url` with its `/stream` replaced by `/ws`. */
  webSocketUrl?: string;
  /** Query parameters that narrow the stream (`novel_id`, `types`, ...). */
  params?: Record<string, string | string[]>;
  /** A token, fetched anew for each connection: the `token` query parameter on SSE, the first
   * message on a WebSocket (never in its URL), which is also refreshed in-band before it expires.
   * Leave it out to authenticate with the `access_token` cookie. */
  getToken?: () => string | Promise<string>;
  /** SSE only: send cookies cross-origin (a WebSocket always sends the origin's cookies). */
  withCredentials?: boolean;
  eventSource?: EventSourceFactory;
  webSocket?: WebSocketFactory;
  cursorStore?: CursorStore;
  backoff?: Partial<BackoffOptions>;
  polling?: PollingOptions;
  /** `false` polls only (streaming disabled by configuration). */
  enabled?: boolean;
  random?: () => number;
}

const DEFAULT_BACKOFF: BackoffOptions = { initialMs: 1000, maxMs: 30000, factor: 2 };

/** The default store: `sessionStorage` (one cursor per tab) when there is one. */
export function sessionCursorStore(key = "sse-router:cursor"): CursorStore {
  const storage = (globalThis as { sessionStorage?: Storage }).sessionStorage;
  let inMemory: string | null = null;
  return {
    load: () => (storage ? storage.getItem(key) : inMemory),
    save: (cursor) => {
      if (storage) storage.setItem(key, cursor);
      else inMemory = cursor;
    },
  };
}


type Handler<N extends SSEEventName> = (data: SSEEventMap[N]) => void;

export class SSEClient {
  private readonly options: SSEClientOptions;
  private readonly backoff: BackoffOptions;
  private readonly store: CursorStore;
  private readonly webSocketUrl: string;
  private readonly handlers = new Map<SSEEventName, Set<(data: never) => void>>();
  private readonly errorHandlers = new Set<(error: SSEStreamError) => void>();
  private readonly stateHandlers = new Set<(state: ConnectionState) => void>();
  private readonly refusalHandlers = new Set<(refusal: RequestRefusedError) => void>();
  private readonly accessHandlers = new Set<(change: AccessChange) => void>();
  private params: Record<string, string | string[]>;
  private transport: Transport | null = null;
  /** Which connection is the current one: callbacks of an older one are ignored. */
  private generation = 0;
  private onWebSocket: boolean;
  private webSocketWorked = false;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private failures = 0;
  private current: ConnectionState = "closed";
  private stopped = true;

  constructor(options: SSEClientOptions) {
    this.options = options;
    this.backoff = { ...DEFAULT_BACKOFF, ...options.backoff };
    this.store = options.cursorStore ?? sessionCursorStore();
    this.params = { ...options.params };
    this.onWebSocket = (options.transport ?? "sse") !== "sse";
    this.webSocketUrl = options.webSocketUrl ?? webSocketEndpoint(options.url, this.onWebSocket);
  }

  get state(): ConnectionState {
    return this.current;
  }

  /** The transport in use now (`auto` becomes one of the two). */
  get transportInUse(): "sse" | "websocket" {
    return this.onWebSocket ? "websocket" : "sse";
  }

  /** Call `handler` with each event named `name`; returns the function that unsubscribes. */
  on<N extends SSEEventName>(name: N, handler: Handler<N>): () => void {
    const set = this.handlers.get(name) ?? new Set();
    set.add(handler as (data: never) => void);
    this.handlers.set(name, set);
    return () => set.delete(handler as (data: never) => void);
  }

  onError(handler: (error: SSEStreamError) => void): () => void {
    this.errorHandlers.add(handler);
    return () => this.errorHandlers.delete(handler);
  }

  onState(handler: (state: ConnectionState) => void): () => void {
    this.stateHandlers.add(handler);
    return () => this.stateHandlers.delete(handler);
  }

  /** Call `handler` when the router refused the stream for good, so the client stopped: a
   * WebSocket closed as bad-request (4000), unauthorized (4001) or forbidden (4003). The same
   * request would be refused again; `start()` again once something changed (a new login). */
  onRefused(handler: (refusal: RequestRefusedError) => void): () => void {
    this.refusalHandlers.add(handler);
    return () => this.refusalHandlers.delete(handler);
  }

  /** Call `handler` when the back end revoked a grant the open stream used and the router
   * narrowed it in place (a WebSocket): the stream goes on without it, with no reconnection.
   * Drop what the app shows of that novel. (On SSE the stream ends with `sse.error`
   * `access-changed` instead, and reconnects without the grant: see `onError`.) */
  onAccessChanged(handler: (change: AccessChange) => void): () => void {
    this.accessHandlers.add(handler);
    return () => this.accessHandlers.delete(handler);
  }

  start(): void {
    this.stopped = false;
    if (this.options.enabled === false) this.startPolling();
    else void this.connect("connecting");
  }

  stop(): void {
    this.stopped = true;
    this.closeTransport();
    this.setState("closed");
  }

  /**
   * Follow something else from now on: resolves with the filter the router applies. On a
   * WebSocket the router changes it in place, with no gap and no duplicate; on SSE (or while no
   * socket is open) the stream is reopened with it, from the cursor. Rejects with a
   * `RequestRefusedError` (e.g. `forbidden`: the token does not grant a novel) and then follows
   * what it did before.
   */
  async setFilter(filter: StreamFilter): Promise<AppliedFilter> {
    const wanted = appliedFilter(filter);
    const transport = this.transport;
    if (transport?.filter && this.current === "open") {
      try {
        const applied = await transport.filter(wanted);
        this.params = withFilter(this.params, applied); // for the next connection
        return applied;
      } catch (error) {
        if (!(error instanceof ConnectionClosedError)) throw error;
        // Cut before the router answered: the next connection asks for it in its query.
      }
    }
    this.params = withFilter(this.params, wanted);
    if (!this.stopped && this.current !== "polling") this.reopen();
    return wanted;
  }

  /** Fetch a new token (`getToken`) and use it now: in-band on a WebSocket; on SSE by reopening
   * the stream from the cursor. A WebSocket also does this by itself before the token expires. */
  async refreshToken(): Promise<void> {
    const getToken = this.options.getToken;
    if (!getToken) throw new Error("refreshToken needs `getToken` in the options");
    const transport = this.transport;
    if (transport?.refresh && this.current === "open") {
      await transport.refresh(await getToken());
      return;
    }
    if (!this.stopped && this.current !== "polling") this.reopen();
  }

  private async connect(state: ConnectionState): Promise<void> {
    this.setState(state);
    const generation = ++this.generation;
    let token: string | null = null;
    try {
      token = this.options.getToken ? await this.options.getToken() : null;
    } catch {
      // No token now (the app's endpoint is down, the user is offline): try again later.
      if (!this.stopped && generation === this.generation) {
        this.reconnect({ after: "backoff", unreached: false });
      }
      return;
    }
    if (this.stopped || generation !== this.generation) return;
    const listener = this.listener(generation);
    const cursor = this.store.load();
    if (this.onWebSocket) {
      const url = streamUrl(this.webSocketUrl, this.params, cursor, null);
      const factory = this.options.webSocket ?? browserWebSocket;
      try {
        const settings = { factory, token, getToken: this.options.getToken ?? null };
        this.transport = new WebSocketTransport(url, settings, listener);
        return;
      } catch (error) {
        if (this.options.transport !== "auto") throw error;
        this.onWebSocket = false; // no WebSocket in this runtime
      }
    }
    const url = streamUrl(this.options.url, this.params, cursor, token);
    const settings = {
      factory: this.options.eventSource ?? browserEventSource,
      withCredentials: this.options.withCredentials ?? true,
      refreshesToken: this.options.getToken !== undefined,
    };
    this.transport = new EventSourceTransport(url, settings, listener);
  }

  /** What the connection of `generation` reports, ignored once it is no longer the current one. */
  private listener(generation: number): TransportListener {
    const live = (): boolean => generation === this.generation && !this.stopped;
    return {
      opened: () => {
        if (!live()) return;
        this.failures = 0;
        if (this.onWebSocket) this.webSocketWorked = true;
        this.setState("open");
      },
      interrupted: () => {
        if (live()) this.setState("reconnecting");
      },
      position: (cursor) => {
        if (live()) this.store.save(cursor);
      },
      event: (name, data) => {
        if (!live()) return;
        if (name === "sse.error") {
          const error = new SSEStreamError(data as SSEErrorPayload);
          for (const handler of this.errorHandlers) handler(error);
          return;
        }
        // The router's contracts (index.ts) say what `data` is for `name`; handlers were typed by it.
        for (const handler of this.handlers.get(name) ?? []) (handler as (data: unknown) => void)(data);
      },
      accessChanged: (change) => {
        if (!live()) return;
        // The next connection's query must not ask for what was taken, or it is refused as
        // forbidden; unless it was all the query asked for (dropped, the query would widen).
        if (change.novel_id !== null) this.params = withoutNovel(this.params, change.novel_id);
        for (const handler of this.accessHandlers) handler(change);
      },
      ended: (next) => {
        if (!live()) return;
        this.transport = null;
        this.reconnect(next);
      },
    };
  }

  private reconnect(next: Reconnect): void {
    this.clearTimer();
    switch (next.after) {
      case "never":
        this.stopped = true;
        this.setState("closed");
        for (const handler of this.refusalHandlers) handler(next.refusal);
        return;
      case "now":
        void this.connect("reconnecting");
        return;
      case "retry":
        this.later(next.ms);
        return;
      case "backoff":
        if (next.unreached && this.options.transport === "auto" && !this.webSocketWorked) {
          this.onWebSocket = false; // a proxy or an older router that does not upgrade
          void this.connect("reconnecting");
          return;
        }
        this.failures += 1;
        if (this.options.polling && this.failures >= this.options.polling.afterFailures) {
          this.startPolling();
          return;
        }
        this.later(this.backoffDelay());
    }
  }

  private backoffDelay(): number {
    const ceiling = Math.min(
      this.backoff.maxMs,
      this.backoff.initialMs * this.backoff.factor ** (this.failures - 1),
    );
    return ceiling * (0.5 + (this.options.random ?? Math.random)() / 2);
  }

  private later(delayMs: number): void {
    this.setState("reconnecting");
    this.timer = setTimeout(() => void this.connect("reconnecting"), delayMs);
  }

  /** Close the current connection and open the next at once, from the cursor. */
  private reopen(): void {
    this.closeTransport();
    void this.connect("reconnecting");
  }

  private closeTransport(): void {
    this.clearTimer();
    this.generation += 1;
    this.transport?.close();
    this.transport = null;
  }

  private startPolling(): void {
    const polling = this.options.polling;
    if (!polling) {
      this.setState("closed");
      return;
    }
    this.setState("polling");
    const tick = async (): Promise<void> => {
      if (this.stopped) return;
      await polling.poll();
      this.timer = setTimeout(() => void tick(), polling.intervalMs);
    };
    void tick();
  }

  private clearTimer(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
  }

  private setState(state: ConnectionState): void {
    if (state === this.current) return;
    this.current = state;
    for (const handler of this.stateHandlers) handler(state);
  }
}

function streamUrl(
  base: string,
  params: Record<string, string | string[]>,
  cursor: string | null,
  token: string | null,
): string {
  const url = new URL(base);
  for (const [name, value] of Object.entries(params)) {
    for (const item of Array.isArray(value) ? value : [value]) url.searchParams.append(name, item);
  }
  if (cursor) url.searchParams.set("last_event_id", cursor);
  if (token !== null) url.searchParams.set("token", token);
  return url.toString();
}

/** The query parameters with the filter's in place of any earlier ones. */
function withFilter(
  params: Record<string, string | string[]>,
  filter: AppliedFilter,
): Record<string, string | string[]> {
  const { novel_id: _novels, session_id: _session, types: _types, ...others } = params;
  const next: Record<string, string | string[]> = { ...others };
  if (filter.novel_id.length > 0) next.novel_id = filter.novel_id;
  if (filter.session_id !== null) next.session_id = filter.session_id;
  if (filter.types.length > 0) next.types = filter.types.join(",");
  return next;
}

/** The query parameters without `novel`, when they name other novels too. */
function withoutNovel(
  params: Record<string, string | string[]>,
  novel: string,
): Record<string, string | string[]> {
  const asked = params.novel_id;
  if (asked === undefined) return params;
  const novels = Array.isArray(asked) ? asked : [asked];
  const kept = novels.filter((each) => each !== novel);
  if (kept.length === novels.length || kept.length === 0) return params;
  return { ...params, novel_id: kept };
}

function webSocketEndpoint(streamUrl: string, needed: boolean): string {
  const url = new URL(streamUrl);
  const replaced = url.pathname.replace(/\/stream\/?$/, "/ws");
  if (replaced === url.pathname && needed) {
    throw new Error("cannot tell the WebSocket endpoint from `url`: pass `webSocketUrl`");
  }
  url.pathname = replaced;
  return url.toString();
}
