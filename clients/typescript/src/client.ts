// SSEClient: an EventSource that resumes where it was, refreshes its token, backs off, and can
// fall back to polling. Written by hand; the event types it dispatches come from index.ts, which
// is generated from the router's own contracts.

import {
  SSE_EVENT_NAMES,
  SSE_REFUSAL_CODES,
  type SSEErrorCode,
  type SSEErrorPayload,
  type SSEEventMap,
  type SSEEventName,
} from "./index.js";

/** The part of the browser's EventSource the client uses; inject another for tests or Node. */
export interface EventSourceLike {
  readonly readyState: number;
  onopen: ((event: unknown) => void) | null;
  onerror: ((event: unknown) => void) | null;
  addEventListener(type: string, listener: (event: MessageEventLike) => void): void;
  close(): void;
}

export interface MessageEventLike {
  readonly data: string;
  readonly lastEventId: string;
}

export type EventSourceFactory = (url: string, init: { withCredentials: boolean }) => EventSourceLike;

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

export interface SSEClientOptions {
  /** The stream endpoint, e.g. `https://events.example/api/v1/events/stream`. */
  url: string;
  /** Query parameters that narrow the stream (`novel_id`, `types`, ...). */
  params?: Record<string, string | string[]>;
  /** A token for the `token` query parameter; called again before reconnecting after
   * `token-expired`. Leave it out to authenticate with the `access_token` cookie. */
  getToken?: () => string | Promise<string>;
  withCredentials?: boolean;
  eventSource?: EventSourceFactory;
  cursorStore?: CursorStore;
  backoff?: Partial<BackoffOptions>;
  polling?: PollingOptions;
  /** `false` polls only (SSE disabled by configuration). */
  enabled?: boolean;
  random?: () => number;
}

/** The codes of an `sse.error` that refuses a new stream for now. Such a stream is that one
 * event and its end; the browser reconnects by itself after the `retry:` that came with it (the
 * wait the router asked for), sending the `Last-Event-ID` it had. */
export const REFUSAL_CODES: ReadonlySet<SSEErrorCode> = new Set<SSEErrorCode>(SSE_REFUSAL_CODES);

/** An `sse.error` from the router, typed by its code. */
export class SSEStreamError extends Error {
  readonly code: SSEErrorCode;
  readonly retryable: boolean;
  /** The router refused this connection for now (see `REFUSAL_CODES`); no stream was opened. */
  readonly refused: boolean;

  constructor(payload: SSEErrorPayload) {
    super(payload.message);
    this.name = "SSEStreamError";
    this.code = payload.code;
    this.retryable = payload.retryable;
    this.refused = payload.retryable && REFUSAL_CODES.has(payload.code);
  }
}

const CLOSED = 2;

const browserEventSource: EventSourceFactory = (url, init) => {
  const native = (globalThis as { EventSource?: new (u: string, i: object) => EventSourceLike })
    .EventSource;
  if (!native) throw new Error("no EventSource here: pass `eventSource` in the options");
  return new native(url, init);
};
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
  private readonly handlers = new Map<SSEEventName, Set<(data: never) => void>>();
  private readonly errorHandlers = new Set<(error: SSEStreamError) => void>();
  private readonly stateHandlers = new Set<(state: ConnectionState) => void>();
  private source: EventSourceLike | null = null;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private failures = 0;
  private current: ConnectionState = "closed";
  private stopped = true;

  constructor(options: SSEClientOptions) {
    this.options = options;
    this.backoff = { ...DEFAULT_BACKOFF, ...options.backoff };
    this.store = options.cursorStore ?? sessionCursorStore();
  }

  get state(): ConnectionState {
    return this.current;
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

  start(): void {
    this.stopped = false;
    if (this.options.enabled === false) this.startPolling();
    else void this.connect("connecting");
  }

  stop(): void {
    this.stopped = true;
    this.clearTimer();
    this.source?.close();
    this.source = null;
    this.setState("closed");
  }

  private async connect(state: ConnectionState): Promise<void> {
    this.setState(state);
    const url = new URL(this.options.url);
    for (const [name, value] of Object.entries(this.options.params ?? {})) {
      for (const item of Array.isArray(value) ? value : [value]) url.searchParams.append(name, item);
    }
    const cursor = this.store.load();
    if (cursor) url.searchParams.set("last_event_id", cursor);
    if (this.options.getToken) url.searchParams.set("token", await this.options.getToken());
    if (this.stopped) return;
    const factory = this.options.eventSource ?? browserEventSource;
    const source = factory(url.toString(), { withCredentials: this.options.withCredentials ?? true });
    this.source = source;
    source.onopen = () => {
      this.failures = 0;
      this.setState("open");
    };
    source.onerror = () => this.onConnectionError(source);
    for (const name of SSE_EVENT_NAMES) {
      source.addEventListener(name, (event) => this.onMessage(name, event));
    }
  }

  private onMessage(name: SSEEventName, event: MessageEventLike): void {
    // The router's ids are resume cursors: keeping the last one is all a reload needs.
    if (event.lastEventId) this.store.save(event.lastEventId);
    const data: unknown = JSON.parse(event.data);
    if (name === "sse.error") {
      this.onStreamError(new SSEStreamError(data as SSEErrorPayload));
      return;
    }
    // The router's contracts (index.ts) say what `data` is for `name`; handlers were typed by it.
    for (const handler of this.handlers.get(name) ?? []) (handler as (data: unknown) => void)(data);
  }

  private onStreamError(error: SSEStreamError): void {
    // A refusal arrives on a 200 (an EventSource gives up on any other status), so `onopen` has
    // fired, but no stream is open: say so. The browser reconnects after the router's `retry:`.
    if (error.refused) this.setState("reconnecting");
    for (const handler of this.errorHandlers) handler(error);
    if (error.code === "disconnected") {
      // Signed out by the back end: the token is refused from now on, so no retry with it.
      this.stop();
      return;
    }
    const stale = error.code === "token-expired" || error.code === "access-changed";
    if (stale && this.options.getToken) {
      // The browser would retry with the old token (expired, or holding a revoked grant): take
      // over, with a fresh one.
      this.source?.close();
      void this.connect("reconnecting");
    }
  }

  private onConnectionError(source: EventSourceLike): void {
    if (source !== this.source || this.stopped) return;
    if (source.readyState !== CLOSED) {
      this.setState("reconnecting"); // the browser retries by itself, honouring `retry:`
      return;
    }
    // The browser gave up (a refused request answered with its HTTP status, e.g. a 429 from a
    // proxy or an older router, or a stream it will not reopen): back off.
    source.close();
    this.failures += 1;
    const polling = this.options.polling;
    if (polling && this.failures >= polling.afterFailures) {
      this.startPolling();
      return;
    }
    const ceiling = Math.min(
      this.backoff.maxMs,
      this.backoff.initialMs * this.backoff.factor ** (this.failures - 1),
    );
    const delay = ceiling * (0.5 + (this.options.random ?? Math.random)() / 2);
    this.setState("reconnecting");
    this.clearTimer();
    this.timer = setTimeout(() => void this.connect("reconnecting"), delay);
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
