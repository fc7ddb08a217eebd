import { describe, expect, it } from "vitest";

import { toWebSocketUrl } from "../src/websocket.js";
import { CLOSE_CODES, closeVerdict, parseServerMessage } from "../src/ws-protocol.js";

describe("the WebSocket protocol", () => {
  it("maps every close code of the router to what the client does", () => {
    const verdicts = Object.fromEntries(
      Object.entries(CLOSE_CODES).map(([reason, code]) => [reason, closeVerdict(code)]),
    );
    expect(verdicts).toEqual({
      normal: "backoff", // the router does not end a stream unasked: come back, carefully
      "server-shutdown": "wait",
      internal: "backoff",
      "bad-request": "stop",
      unauthorized: "stop",
      "token-expired": "refresh",
      forbidden: "stop",
      lagged: "resume",
      "access-changed": "refresh", // a grant was revoked: a fresh token, then resume
      disconnected: "stop", // signed out: this token is refused from now on
      "no-pong": "resume",
      "rate-limited": "wait",
      "replay-unavailable": "wait",
    });
    expect(closeVerdict(1006)).toBe("backoff");
    expect(closeVerdict(4999)).toBe("backoff");
  });

  it("reads the router's messages and ignores what it does not know", () => {
    const hello = '{"type":"hello","replay":"truncated","id":"m@e:0:1","retry_ms":2000,"expires_at":9}';
    expect(parseServerMessage(hello)).toEqual({
      type: "hello", replay: "truncated", id: "m@e:0:1", retry_ms: 2000, expires_at: 9,
    });
    const goodbye = { type: "event", event: "sse.error", id: null, data: { code: "server-shutdown" }, retry: 5 };
    expect(parseServerMessage(JSON.stringify(goodbye))).toMatchObject({ retry_ms: 5 });
    const refusal = { type: "error", ref: null, code: "rate-limited", message: "m", retry_ms: 7 };
    expect(parseServerMessage(JSON.stringify(refusal))).toMatchObject({ retry_ms: 7 });
    expect(parseServerMessage('{"type":"filtered","ref":2,"filter":{"novel_id":["n1"]}}')).toEqual({
      type: "filtered", ref: 2, filter: { novel_id: ["n1"], session_id: null, types: [] },
    });
    expect(parseServerMessage('{"type":"access-changed","novel_id":"n1","session_id":null}')).toEqual({
      type: "access-changed", novel_id: "n1", session_id: null,
    });
    for (const frame of ["", "null", "[]", '"hello"', '{"type":"hello","replay":"maybe"}',
      '{"type":"event","event":"x","data":{}}', '{"type":"cursor"}', '{"type":"later"}']) {
      expect(parseServerMessage(frame)).toBeNull();
    }
    expect(parseServerMessage(new ArrayBuffer(2))).toBeNull(); // binary frames are not ours
  });

  it("derives the socket's scheme from the page's", () => {
    expect(toWebSocketUrl("https://e.example/api/v1/events/ws?x=1")).toBe("wss://e.example/api/v1/events/ws?x=1");
    expect(toWebSocketUrl("http://127.0.0.1:9/ws")).toBe("ws://127.0.0.1:9/ws");
    expect(toWebSocketUrl("ws://127.0.0.1:9/ws")).toBe("ws://127.0.0.1:9/ws");
  });
});
