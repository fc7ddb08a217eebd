// What a transport (an EventSource, a WebSocket) tells the client, and what the client asks of it.
// The client keeps what both share: the handlers, the cursor, the state, the reconnect timers.

import type { RequestRefusedError } from "./errors.js";
import type { SSEEventName } from "./index.js";
import type { AccessChange, AppliedFilter } from "./ws-protocol.js";

/** When the client should open the next connection, once a transport has ended. */
export type Reconnect =
  | { after: "now" }
  /** The router's own wait (a refusal's retry hint), in milliseconds. */
  | { after: "retry"; ms: number }
  /** An exponential backoff; `unreached` when no connection was made at all, which is when
   * `transport: "auto"` gives up on WebSocket and falls back to SSE. */
  | { after: "backoff"; unreached: boolean }
  /** The same request would be refused again: the client stops, and says why. */
  | { after: "never"; refusal: RequestRefusedError };

export interface TransportListener {
  /** The router admitted the connection: events flow. */
  opened(): void;
  /** No stream for now, but the transport comes back by itself (the browser's SSE retry). */
  interrupted(): void;
  /** The client's position moved: the cursor to resume from. */
  position(cursor: string): void;
  /** An event, the router's own `sse.error` included, its data parsed. */
  event(name: SSEEventName, data: unknown): void;
  /** A revocation narrowed the open stream in place (WebSocket only): events flow on, without
   * what it took. */
  accessChanged(change: AccessChange): void;
  /** The transport is closed for good; the client decides about the next one. */
  ended(next: Reconnect): void;
}

export interface Transport {
  close(): void;
  /** Replace the token on the live connection (WebSocket only); resolves with its expiry. */
  refresh?(token: string): Promise<number | null>;
  /** Change the filter on the live connection (WebSocket only); resolves with the one applied. */
  filter?(filter: AppliedFilter): Promise<AppliedFilter>;
}
