import { vi } from "vitest";

import { type CursorStore, SSEClient, type SSEClientOptions } from "../src/client.js";
import { FakeEventSource } from "./fake-event-source.js";
import { FakeWebSocket } from "./fake-web-socket.js";

/** A cursor store in memory; `value` is what it holds. */
export function memoryStore(initial: string | null = null): CursorStore & { value: string | null } {
  return {
    value: initial,
    load() {
      return this.value;
    },
    save(cursor: string) {
      this.value = cursor;
    },
  };
}

/** A client on the fakes (an EventSource and a WebSocket, whichever its transport uses), with a
 * cursor store in memory and no jitter; `defaults` then `options` override. */
export function fakeClient(defaults: Partial<SSEClientOptions> = {}) {
  return (options: Partial<SSEClientOptions> = {}): SSEClient =>
    new SSEClient({
      url: "https://events.example/api/v1/events/stream",
      eventSource: (url, init) => new FakeEventSource(url, init),
      webSocket: (url) => new FakeWebSocket(url),
      cursorStore: memoryStore(),
      random: () => 1,
      ...defaults,
      ...options,
    });
}

/** The newest of the fakes made so far. */
export function newest<T>(made: readonly T[], what: string): T {
  const found = made.at(-1);
  if (found === undefined) throw new Error(`no ${what} was made`);
  return found;
}

/** Let every timer and promise due now run (the clock is vitest's fake one). */
export async function settle(): Promise<void> {
  await vi.advanceTimersByTimeAsync(0);
}

/** The clock is fake, and no fake is left over from the test before. */
export function freshFakes(): void {
  FakeWebSocket.made = [];
  FakeEventSource.made = [];
  vi.useFakeTimers();
}
