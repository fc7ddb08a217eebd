import type { WebSocketLike } from "../src/client.js";

/** A scripted WebSocket: the test opens it, sends frames and closes it as the router would, and
 * reads what the client sent. */
export class FakeWebSocket implements WebSocketLike {
  static made: FakeWebSocket[] = [];
  readyState = 0;
  onopen: ((event: unknown) => void) | null = null;
  onmessage: ((event: { data: unknown }) => void) | null = null;
  onclose: ((event: { code: number; reason: string }) => void) | null = null;
  onerror: ((event: unknown) => void) | null = null;
  /** What the client sent, parsed. */
  readonly sent: Record<string, unknown>[] = [];
  /** The code the client closed with, if it did. */
  closedWith: number | null = null;

  constructor(readonly url: string) {
    FakeWebSocket.made.push(this);
  }

  send(data: string): void {
    this.sent.push(JSON.parse(data) as Record<string, unknown>);
  }

  close(code = 1000, reason = ""): void {
    this.closedWith = code;
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  open(): void {
    this.readyState = 1;
    this.onopen?.({});
  }

  receive(message: object | string): void {
    this.onmessage?.({ data: typeof message === "string" ? message : JSON.stringify(message) });
  }

  /** Opened and admitted: the router's first message. */
  admit(hello: Record<string, unknown> = {}): void {
    this.open();
    this.receive({
      type: "hello", replay: "none", id: null, retry_ms: 2000, version: "0.1.0",
      connection_id: "c1", expires_at: null, ...hello,
    });
  }

  event(event: string, data: object, id: string | null = null, extra: object = {}): void {
    this.receive({ type: "event", event, id, data, ...extra });
  }

  /** The router closes the socket with `code`. */
  closeFromServer(code: number, reason = ""): void {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  /** The handshake failed (no route, a proxy that does not upgrade, nothing listening). */
  fail(): void {
    this.readyState = 3;
    this.onerror?.({});
    this.onclose?.({ code: 1006, reason: "" });
  }
}
