// The errors the client reports: the router's `sse.error` events, and refused in-band requests.

import { SSE_REFUSAL_CODES, type SSEErrorCode, type SSEErrorPayload } from "./index.js";

/** The codes of an `sse.error` that refuses a new stream for now. Such a stream is that one
 * event and its end; the client reconnects after the wait the router asked for, from the cursor
 * it had (on SSE the browser does it by itself, after the `retry:` that came with it). */
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

/** The router refused a request: a `refresh` or `filter` message (the promise rejects; the
 * connection stays up unless the token was refused), or a WebSocket for good (`onRefused`). */
export class RequestRefusedError extends Error {
  /** The router's bounded code, e.g. `forbidden`, `bad-request`, `expired` (the token's). */
  readonly code: string;

  constructor(code: string, message: string) {
    super(message || code);
    this.name = "RequestRefusedError";
    this.code = code;
  }
}

/** A request made on a connection that closed before the router answered it. */
export class ConnectionClosedError extends Error {
  constructor() {
    super("the connection closed before the router answered");
    this.name = "ConnectionClosedError";
  }
}
