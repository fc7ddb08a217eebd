// The router's WebSocket protocol (docs/websocket.md) as the client sees it: the messages, and
// what each close code asks of the client. No I/O here; websocket.ts speaks it.

import { SSE_EVENT_NAMES, type SSEEventName } from "./index.js";

/** What a stream follows. An empty list or a `null` narrows nothing (as with the query). */
export interface StreamFilter {
  novel_id?: readonly string[];
  session_id?: string | null;
  types?: readonly SSEEventName[];
}

/** The filter the router says it applies, every field present. */
export interface AppliedFilter {
  novel_id: string[];
  session_id: string | null;
  types: string[];
}

export type ServerMessage =
  | {
      type: "hello";
      replay: "complete" | "truncated" | "none";
      id: string | null;
      retry_ms: number | null;
      expires_at: number | null;
    }
  | { type: "event"; event: SSEEventName; id: string | null; data: unknown; retry_ms: number | null }
  | { type: "cursor"; id: string }
  | { type: "refreshed"; ref: unknown; expires_at: number | null }
  | { type: "filtered"; ref: unknown; filter: AppliedFilter }
  | ({ type: "access-changed" } & AccessChange)
  | { type: "error"; ref: unknown; code: string; message: string; retry_ms: number | null };

/** A revocation narrowed the open stream in place: the grant it took (a novel, or the token's
 * session; the other is `null`). Nothing of it arrives from then on; the socket stays open. */
export interface AccessChange {
  novel_id: string | null;
  session_id: string | null;
}

export type ClientMessage =
  | { type: "auth"; token: string }
  | { type: "refresh"; token: string; ref: number }
  | ({ type: "filter"; ref: number } & AppliedFilter);

const EVENT_NAMES: ReadonlySet<string> = new Set(SSE_EVENT_NAMES);

type Json = Record<string, unknown>;

const text = (value: unknown): string | null => (typeof value === "string" ? value : null);
const number = (value: unknown): number | null =>
  typeof value === "number" && Number.isFinite(value) ? value : null;

/** A frame from the router, or `null` for one this client does not understand (ignored, as a
 * browser ignores an unknown SSE field, so a newer router can add messages). */
export function parseServerMessage(frame: unknown): ServerMessage | null {
  if (typeof frame !== "string") return null;
  let message: Json;
  try {
    const parsed: unknown = JSON.parse(frame);
    if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) return null;
    message = parsed as Json;
  } catch {
    return null;
  }
  switch (message.type) {
    case "hello": {
      const replay = message.replay;
      if (replay !== "complete" && replay !== "truncated" && replay !== "none") return null;
      return {
        type: "hello",
        replay,
        id: text(message.id),
        retry_ms: number(message.retry_ms),
        expires_at: number(message.expires_at),
      };
    }
    case "event": {
      const event = text(message.event);
      if (event === null || !EVENT_NAMES.has(event) || typeof message.data !== "object") return null;
      return {
        type: "event",
        event: event as SSEEventName,
        id: text(message.id),
        data: message.data,
        // An event's reconnection delay (a shutdown's wait), as the event stream's `retry:`.
        retry_ms: number(message.retry),
      };
    }
    case "cursor": {
      const id = text(message.id);
      return id === null ? null : { type: "cursor", id };
    }
    case "refreshed":
      return { type: "refreshed", ref: message.ref, expires_at: number(message.expires_at) };
    case "filtered": {
      const filter = (message.filter ?? {}) as Json;
      return {
        type: "filtered",
        ref: message.ref,
        filter: {
          novel_id: Array.isArray(filter.novel_id) ? filter.novel_id.map(String) : [],
          session_id: text(filter.session_id),
          types: Array.isArray(filter.types) ? filter.types.map(String) : [],
        },
      };
    }
    case "access-changed":
      return {
        type: "access-changed",
        novel_id: text(message.novel_id),
        session_id: text(message.session_id),
      };
    case "error":
      return {
        type: "error",
        ref: message.ref,
        code: text(message.code) ?? "unknown",
        message: text(message.message) ?? "",
        retry_ms: number(message.retry_ms),
      };
    default:
      return null;
  }
}

/** Every field of a filter, as the `filter` message and the query carry them. */
export function appliedFilter(filter: StreamFilter): AppliedFilter {
  return {
    novel_id: [...(filter.novel_id ?? [])],
    session_id: filter.session_id ?? null,
    types: [...(filter.types ?? [])],
  };
}

/** The close codes of the router (docs/websocket.md), by the reason it sends with each. */
export const CLOSE_CODES = {
  normal: 1000,
  "server-shutdown": 1001,
  internal: 1011,
  "bad-request": 4000,
  unauthorized: 4001,
  "token-expired": 4002,
  forbidden: 4003,
  lagged: 4004,
  "access-changed": 4005,
  disconnected: 4006,
  "no-pong": 4008,
  "rate-limited": 4029,
  "replay-unavailable": 4503,
} as const;

/** What a close asks of the client:
 * - `resume`: reconnect at once, from the cursor;
 * - `wait`: reconnect from the cursor after the router's retry hint (else back off);
 * - `backoff`: reconnect from the cursor after an exponential backoff;
 * - `refresh`: get a new token, then reconnect at once from the cursor;
 * - `stop`: the same request would be refused again; report it and do not reconnect. */
export type CloseVerdict = "resume" | "wait" | "backoff" | "refresh" | "stop";

export function closeVerdict(code: number): CloseVerdict {
  switch (code) {
    case CLOSE_CODES.lagged:
    case CLOSE_CODES["no-pong"]:
      return "resume";
    case CLOSE_CODES["server-shutdown"]:
    case CLOSE_CODES["rate-limited"]:
    case CLOSE_CODES["replay-unavailable"]:
      return "wait";
    case CLOSE_CODES["token-expired"]:
    case CLOSE_CODES["access-changed"]: // a grant was revoked: the old token would get it back
      return "refresh";
    case CLOSE_CODES["bad-request"]:
    case CLOSE_CODES.unauthorized:
    case CLOSE_CODES.forbidden:
    case CLOSE_CODES.disconnected: // signed out by the back end: this token is refused from now on
      return "stop";
    default:
      // 1011, a router's 1000 the client did not ask for, 1006 (the connection dropped) and any
      // code this client does not know: the stream ended unexpectedly, so resume carefully.
      return "backoff";
  }
}
