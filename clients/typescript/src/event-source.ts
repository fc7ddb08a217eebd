// The SSE transport: an EventSource, which reconnects by itself (with `Last-Event-ID`, after the
// router's `retry:`) unless it gave up, so this transport mostly reports what the browser does.

import { SSE_EVENT_NAMES, type SSEErrorPayload } from "./index.js";
import { RequestRefusedError, SSEStreamError } from "./errors.js";
import type { Transport, TransportListener } from "./transport.js";

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

const CLOSED = 2;

export const browserEventSource: EventSourceFactory = (url, init) => {
  const native = (globalThis as { EventSource?: new (u: string, i: object) => EventSourceLike })
    .EventSource;
  if (!native) throw new Error("no EventSource here: pass `eventSource` in the options");
  return new native(url, init);
};

export interface EventSourceSettings {
  factory: EventSourceFactory;
  withCredentials: boolean;
  /** The client can get a fresh token, so a `token-expired` stream is reopened with one instead
   * of being retried by the browser with the expired one. */
  refreshesToken: boolean;
}

export class EventSourceTransport implements Transport {
  private readonly source: EventSourceLike;

  constructor(url: string, settings: EventSourceSettings, private readonly listener: TransportListener) {
    const source = settings.factory(url, { withCredentials: settings.withCredentials });
    this.source = source;
    source.onopen = () => listener.opened();
    source.onerror = () => {
      if (source.readyState !== CLOSED) {
        listener.interrupted(); // the browser retries by itself, honouring `retry:`
        return;
      }
      // The browser gave up (a refused request answered with its HTTP status, e.g. a 429 from a
      // proxy or an older router, or a stream it will not reopen): the client backs off.
      source.close();
      listener.ended({ after: "backoff", unreached: false });
    };
    for (const name of SSE_EVENT_NAMES) {
      source.addEventListener(name, (event) => {
        // The router's ids are resume cursors: keeping the last one is all a reload needs.
        if (event.lastEventId) listener.position(event.lastEventId);
        const data: unknown = JSON.parse(event.data);
        if (name === "sse.error") this.onStreamError(data as SSEErrorPayload, settings);
        else listener.event(name, data);
      });
    }
  }

  close(): void {
    this.source.close();
  }

  private onStreamError(payload: SSEErrorPayload, settings: EventSourceSettings): void {
    // A refusal arrives on a 200 (an EventSource gives up on any other status), so `onopen` has
    // fired, but no stream is open: say so. The browser reconnects after the router's `retry:`.
    if (new SSEStreamError(payload).refused) this.listener.interrupted();
    this.listener.event("sse.error", payload);
    if (payload.code === "disconnected") {
      // Signed out by the back end: the token is refused from now on, so no retry with it.
      this.source.close();
      const refusal = new RequestRefusedError(payload.code, payload.message);
      this.listener.ended({ after: "never", refusal });
      return;
    }
    const stale = payload.code === "token-expired" || payload.code === "access-changed";
    if (stale && settings.refreshesToken) {
      // The browser would retry with the old token (expired, or holding a revoked grant): take
      // over, with a fresh one.
      this.source.close();
      this.listener.ended({ after: "now" });
    }
  }
}
