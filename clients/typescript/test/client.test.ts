import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";

import { SSEStreamError } from "../src/client.js";
import { FakeEventSource } from "./fake-event-source.js";
import { fakeClient, freshFakes, memoryStore, newest, settle } from "./helpers.js";

const client = fakeClient();

const last = (): FakeEventSource => newest(FakeEventSource.made, "EventSource");

beforeEach(freshFakes);

afterEach(() => {
  vi.useRealTimers();
});

describe("SSEClient", () => {
  it("dispatches events to typed handlers and reports its state", async () => {
    const sse = client({ params: { novel_id: ["n1", "n2"], types: "content.updated" } });
    const states: string[] = [];
    sse.onState((state) => states.push(state));
    const versions: number[] = [];
    sse.on("content.updated", (data) => versions.push(data.content_version));
    sse.start();
    await settle();
    const url = new URL(last().url);
    expect(url.searchParams.getAll("novel_id")).toEqual(["n1", "n2"]);
    expect(url.searchParams.get("types")).toBe("content.updated");
    expect(last().init.withCredentials).toBe(true);
    last().open();
    last().emit("content.updated", { novel_id: "n1", content_version: 3, event_id: "e", occurred_at: "t" });
    expect(versions).toEqual([3]);
    expect(states).toEqual(["connecting", "open"]);
    sse.stop();
    expect(last().closed).toBe(true);
    expect(sse.state).toBe("closed");
  });

  it("persists the cursor and resumes from it on a fresh connection", async () => {
    const store = memoryStore();
    const first = client({ cursorStore: store });
    first.start();
    await settle();
    last().emit("task.progress-updated", { task_id: "t", progress: 5 }, "memory@e1:0:7");
    expect(store.value).toBe("memory@e1:0:7");
    first.stop();

    const afterReload = client({ cursorStore: store });
    afterReload.start();
    await settle();
    expect(new URL(last().url).searchParams.get("last_event_id")).toBe("memory@e1:0:7");
  });

  it("surfaces sse.error codes as typed errors", async () => {
    const sse = client();
    const errors: SSEStreamError[] = [];
    sse.onError((error) => errors.push(error));
    sse.start();
    await settle();
    last().emit("sse.error", { code: "history-truncated", message: "refetch", retryable: true });
    expect(errors).toHaveLength(1);
    expect(errors[0]).toBeInstanceOf(SSEStreamError);
    expect(errors[0]?.code).toBe("history-truncated");
  });

  it.each(["rate-limited", "too-many-streams", "shutting-down"] as const)(
    "on an in-band %s refusal, waits for the browser's own retry and keeps the cursor",
    async (code) => {
      const store = memoryStore("memory@e1:0:7");
      const sse = client({ cursorStore: store });
      const states: string[] = [];
      sse.onState((state) => states.push(state));
      const errors: SSEStreamError[] = [];
      sse.onError((error) => errors.push(error));
      sse.start();
      await settle();
      const refused = last();
      refused.open(); // a refusal is a 200, so that the browser retries
      refused.emit("sse.error", { code, message: "not now", retryable: true }, "memory@e1:0:7");
      expect(errors.map((error) => [error.code, error.refused])).toEqual([[code, true]]);
      expect(sse.state).toBe("reconnecting");
      refused.fail(false); // the stream ends; the browser waits the retry: and reconnects
      await vi.advanceTimersByTimeAsync(120_000);
      expect(FakeEventSource.made).toHaveLength(1); // the client leaves it to the browser
      expect(refused.closed).toBe(false);
      expect(store.value).toBe("memory@e1:0:7");
      refused.open(); // admitted this time
      expect(states).toEqual(["connecting", "open", "reconnecting", "open"]);
    },
  );

  it("backs off when a refusal comes as an HTTP status, which the browser does not retry", async () => {
    const store = memoryStore("memory@e1:0:7");
    const sse = client({ cursorStore: store, backoff: { initialMs: 1000, maxMs: 1000, factor: 2 } });
    sse.start();
    await settle();
    last().fail(true); // a 429: the EventSource is closed
    expect(sse.state).toBe("reconnecting");
    await vi.advanceTimersByTimeAsync(1000);
    expect(FakeEventSource.made).toHaveLength(2);
    expect(new URL(last().url).searchParams.get("last_event_id")).toBe("memory@e1:0:7");
  });

  it("does not take an error that ends a stream for a refusal", async () => {
    const sse = client();
    const errors: SSEStreamError[] = [];
    sse.onError((error) => errors.push(error));
    sse.start();
    await settle();
    last().open();
    last().emit("sse.error", { code: "server-shutdown", message: "bye", retryable: true });
    last().emit("sse.error", { code: "history-truncated", message: "refetch", retryable: true });
    expect(errors.map((error) => error.refused)).toEqual([false, false]);
    expect(sse.state).toBe("open");
  });

  it("refreshes the token and reconnects when the router says token-expired", async () => {
    let issued = 0;
    const sse = client({ getToken: () => `token-${++issued}` });
    sse.start();
    await settle();
    expect(new URL(last().url).searchParams.get("token")).toBe("token-1");
    const expired = last();
    expired.emit("sse.error", { code: "token-expired", message: "expired", retryable: false });
    await settle();
    expect(expired.closed).toBe(true);
    expect(new URL(last().url).searchParams.get("token")).toBe("token-2");
    expect(FakeEventSource.made).toHaveLength(2);
  });

  it("takes a fresh token when the router says access-changed", async () => {
    let issued = 0;
    const sse = client({ getToken: () => `token-${++issued}` });
    sse.start();
    await settle();
    const narrowed = last();
    narrowed.emit("sse.error", { code: "access-changed", message: "changed", retryable: true });
    await settle();
    expect(narrowed.closed).toBe(true);
    expect(new URL(last().url).searchParams.get("token")).toBe("token-2");
  });

  it("stops, without retrying, when the router says disconnected", async () => {
    const sse = client({ getToken: () => "token" });
    sse.start();
    await settle();
    last().emit("sse.error", { code: "disconnected", message: "signed out", retryable: false });
    await settle();
    expect(last().closed).toBe(true);
    expect(sse.state).toBe("closed");
    await vi.advanceTimersByTimeAsync(60_000);
    expect(FakeEventSource.made).toHaveLength(1);
  });

  it("leaves ordinary drops to the browser's own retry", async () => {
    const sse = client();
    sse.start();
    await settle();
    last().open();
    last().fail(false);
    expect(sse.state).toBe("reconnecting");
    await vi.advanceTimersByTimeAsync(60_000);
    expect(FakeEventSource.made).toHaveLength(1);
  });

  it("backs off exponentially, capped, when the browser gives up", async () => {
    const sse = client({ backoff: { initialMs: 1000, maxMs: 4000, factor: 2 } });
    sse.start();
    await settle();
    const delays: number[] = [];
    for (let attempt = 0; attempt < 4; attempt++) {
      const count = FakeEventSource.made.length;
      last().fail(true);
      let waited = 0;
      while (FakeEventSource.made.length === count) {
        await vi.advanceTimersByTimeAsync(100);
        waited += 100;
      }
      delays.push(waited);
    }
    expect(delays).toEqual([1000, 2000, 4000, 4000]);
    last().open();
    last().fail(true);
    const count = FakeEventSource.made.length;
    await vi.advanceTimersByTimeAsync(1000);
    expect(FakeEventSource.made.length).toBe(count + 1); // a success resets the backoff
  });

  it("adds jitter so that many tabs do not reconnect in step", async () => {
    const sse = client({ random: () => 0, backoff: { initialMs: 1000, maxMs: 1000, factor: 2 } });
    sse.start();
    await settle();
    last().fail(true);
    await vi.advanceTimersByTimeAsync(499);
    expect(FakeEventSource.made).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(FakeEventSource.made).toHaveLength(2);
  });

  it("falls back to polling after repeated failures", async () => {
    const poll = vi.fn();
    const sse = client({
      backoff: { initialMs: 10, maxMs: 10, factor: 1 },
      polling: { poll, intervalMs: 5000, afterFailures: 2 },
    });
    sse.start();
    await settle();
    last().fail(true);
    await vi.advanceTimersByTimeAsync(10);
    last().fail(true);
    await settle();
    expect(sse.state).toBe("polling");
    expect(poll).toHaveBeenCalledTimes(1);
    await vi.advanceTimersByTimeAsync(10_000);
    expect(poll).toHaveBeenCalledTimes(3);
    sse.stop();
    await vi.advanceTimersByTimeAsync(10_000);
    expect(poll).toHaveBeenCalledTimes(3);
  });

  it("only polls when SSE is disabled", async () => {
    const poll = vi.fn();
    const sse = client({ enabled: false, polling: { poll, intervalMs: 1000, afterFailures: 1 } });
    sse.start();
    await settle();
    expect(FakeEventSource.made).toHaveLength(0);
    expect(poll).toHaveBeenCalledTimes(1);
    sse.stop();
  });
});
