import type { EventSourceLike, MessageEventLike } from "../src/client.js";

/** A scripted EventSource: the test opens it, sends events and errors as the router would. */
export class FakeEventSource implements EventSourceLike {
  static made: FakeEventSource[] = [];
  readyState = 0;
  onopen: ((event: unknown) => void) | null = null;
  onerror: ((event: unknown) => void) | null = null;
  closed = false;
  private readonly listeners = new Map<string, ((event: MessageEventLike) => void)[]>();

  constructor(
    readonly url: string,
    readonly init: { withCredentials: boolean },
  ) {
    FakeEventSource.made.push(this);
  }

  addEventListener(type: string, listener: (event: MessageEventLike) => void): void {
    this.listeners.set(type, [...(this.listeners.get(type) ?? []), listener]);
  }

  close(): void {
    this.closed = true;
    this.readyState = 2;
  }

  open(): void {
    this.readyState = 1;
    this.onopen?.({});
  }

  emit(type: string, data: object, lastEventId = ""): void {
    for (const listener of this.listeners.get(type) ?? []) {
      listener({ data: JSON.stringify(data), lastEventId });
    }
  }

  fail(givenUp: boolean): void {
    this.readyState = givenUp ? 2 : 0;
    this.onerror?.({});
  }
}

