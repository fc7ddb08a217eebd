import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";

import { RequestRefusedError, type SSEClient, type SSEStreamError } from "../src/client.js";
import { FakeEventSource } from "./fake-event-source.js";
import { FakeWebSocket } from "./fake-web-socket.js";
import { fakeClient, freshFakes, memoryStore, newest, settle } from "./helpers.js";

const client = fakeClient({ transport: "websocket" });

const socket = (): FakeWebSocket => newest(FakeWebSocket.made, "WebSocket");

const query = (made: { url: string }, name: string): string | null =>
  new URL(made.url).searchParams.get(name);

/** Start `sse` (on the SSE transport) and open its stream. */
const openOnSSE = async (sse: SSEClient): Promise<void> => {
  sse.start();
  await settle();
  FakeEventSource.made[0]?.open();
};

/** The stream the client opened in place of its first, once it has closed that. */
const reopenedStream = async (): Promise<FakeEventSource> => {
  await settle();
  expect(FakeEventSource.made[0]?.closed).toBe(true);
  const reopened = FakeEventSource.made[1];
  if (!reopened) throw new Error("the stream was not reopened");
  return reopened;
};

const content = (version: number): object => ({
  novel_id: "n1", content_version: version, event_id: `e${version}`, occurred_at: "t",
});

beforeEach(() => {
  freshFakes();
  vi.setSystemTime(new Date("2026-12-01T12:00:00Z"));
});

afterEach(() => {
  vi.useRealTimers();
});

describe("SSEClient over a WebSocket", () => {
  it("authenticates in its first message, dispatches typed events and reports its state", async () => {
    const ws = client({
      params: { novel_id: ["n1", "n2"], types: "content.updated" },
      getToken: () => "token-1",
    });
    const states: string[] = [];
    ws.onState((state) => states.push(state));
    const versions: number[] = [];
    ws.on("content.updated", (data) => versions.push(data.content_version));
    ws.start();
    await settle();
    const url = new URL(socket().url);
    expect(`${url.protocol}//${url.host}${url.pathname}`).toBe("wss://events.example/api/v1/events/ws");
    expect(url.searchParams.getAll("novel_id")).toEqual(["n1", "n2"]);
    expect(url.searchParams.get("types")).toBe("content.updated");
    expect(url.searchParams.has("token")).toBe(false); // never a token in a URL
    socket().open();
    expect(socket().sent).toEqual([{ type: "auth", token: "token-1" }]);
    expect(ws.state).toBe("connecting"); // accepted is not admitted
    socket().admit();
    socket().event("content.updated", content(3), "memory@e1:0:3");
    expect(versions).toEqual([3]);
    expect(states).toEqual(["connecting", "open"]);
    expect(ws.transportInUse).toBe("websocket");
    ws.stop();
    expect(socket().closedWith).toBe(1000);
    expect(ws.state).toBe("closed");
    expect(FakeEventSource.made).toHaveLength(0);
  });

  it("sends no auth message when the cookie authenticates", async () => {
    const ws = client();
    ws.start();
    await settle();
    socket().admit();
    expect(socket().sent).toEqual([]);
  });

  it("keeps the cursor of hello, events and cursor messages, and resumes from it", async () => {
    const store = memoryStore();
    const ws = client({ cursorStore: store });
    ws.start();
    await settle();
    socket().admit({ id: "memory@e1:0:1" });
    expect(store.value).toBe("memory@e1:0:1");
    socket().event("content.updated", content(2), "memory@e1:0:2");
    expect(store.value).toBe("memory@e1:0:2");
    socket().receive({ type: "cursor", id: "memory@e1:0:9" });
    expect(store.value).toBe("memory@e1:0:9");
    ws.stop();

    const afterReload = client({ cursorStore: store });
    afterReload.start();
    await settle();
    expect(query(socket(), "last_event_id")).toBe("memory@e1:0:9");
  });

  it("ignores frames it does not understand and stays up", async () => {
    const ws = client();
    const versions: number[] = [];
    ws.on("content.updated", (data) => versions.push(data.content_version));
    ws.start();
    await settle();
    socket().admit();
    for (const frame of ["not json", "[1]", '{"type":"novelty"}', '{"type":"event","event":"nope","data":{}}']) {
      socket().receive(frame);
    }
    socket().event("content.updated", content(4), "memory@e1:0:4");
    expect(versions).toEqual([4]);
    expect(ws.state).toBe("open");
  });

  it.each([4004, 4008])("reconnects at once, resuming, after a close with %i", async (code) => {
    const store = memoryStore();
    const ws = client({ cursorStore: store });
    ws.start();
    await settle();
    socket().admit();
    socket().event("content.updated", content(5), "memory@e1:0:5");
    socket().closeFromServer(code);
    expect(ws.state).toBe("reconnecting");
    await settle();
    expect(FakeWebSocket.made).toHaveLength(2);
    expect(query(socket(), "last_event_id")).toBe("memory@e1:0:5");
  });

  it.each([
    [4029, "too-many-streams"],
    [4029, "rate-limited"],
    [4503, "shutting-down"],
    [4503, "replay-unavailable"],
  ])("refused with %i (%s), waits the router's retry, then resumes", async (code, reason) => {
    const store = memoryStore("memory@e1:0:7");
    const ws = client({ cursorStore: store });
    const states: string[] = [];
    ws.onState((state) => states.push(state));
    const errors: SSEStreamError[] = [];
    ws.onError((error) => errors.push(error));
    ws.start();
    await settle();
    socket().open();
    socket().receive({ type: "error", ref: null, code: reason, message: "not now", retry_ms: 3000 });
    socket().closeFromServer(code, reason);
    // Reported as on SSE: the same code, a refusal for now.
    expect(errors.map((error) => [error.code, error.refused])).toEqual([[reason, true]]);
    expect(ws.state).toBe("reconnecting");
    await vi.advanceTimersByTimeAsync(2999);
    expect(FakeWebSocket.made).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(FakeWebSocket.made).toHaveLength(2);
    expect(query(socket(), "last_event_id")).toBe("memory@e1:0:7");
    socket().admit();
    expect(states).toEqual(["connecting", "reconnecting", "open"]);
  });

  it("after a shutdown (1001), waits the retry the goodbye carries", async () => {
    const ws = client();
    ws.start();
    await settle();
    socket().admit({ retry_ms: 500 });
    const goodbye = { code: "server-shutdown", message: "bye", retryable: true };
    socket().event("sse.error", goodbye, null, { retry: 1500 });
    socket().closeFromServer(1001, "server-shutdown");
    await vi.advanceTimersByTimeAsync(1499);
    expect(FakeWebSocket.made).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(FakeWebSocket.made).toHaveLength(2);
  });

  it("without a retry hint on the error, waits the hello's", async () => {
    const ws = client();
    ws.start();
    await settle();
    socket().admit({ retry_ms: 500 });
    socket().event("sse.error", { code: "server-shutdown", message: "bye", retryable: true });
    socket().closeFromServer(1001, "server-shutdown");
    await vi.advanceTimersByTimeAsync(499);
    expect(FakeWebSocket.made).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(FakeWebSocket.made).toHaveLength(2);
  });

  it.each([1011, 1006, 1000])("backs off exponentially after a close with %i", async (code) => {
    const ws = client({ backoff: { initialMs: 1000, maxMs: 4000, factor: 2 } });
    ws.start();
    await settle();
    const delays: number[] = [];
    for (let attempt = 0; attempt < 3; attempt++) {
      const count = FakeWebSocket.made.length;
      socket().open();
      socket().closeFromServer(code);
      let waited = 0;
      while (FakeWebSocket.made.length === count) {
        await vi.advanceTimersByTimeAsync(100);
        waited += 100;
      }
      delays.push(waited);
    }
    expect(delays).toEqual([1000, 2000, 4000]);
    socket().admit(); // admitted: the backoff starts over
    socket().closeFromServer(code);
    await vi.advanceTimersByTimeAsync(1000);
    expect(FakeWebSocket.made).toHaveLength(5);
  });

  it("fetches a fresh token and resumes at once after token-expired (4002)", async () => {
    let issued = 0;
    const ws = client({ getToken: () => `token-${++issued}` });
    const errors: string[] = [];
    ws.onError((error) => errors.push(error.code));
    ws.start();
    await settle();
    socket().admit();
    socket().event("sse.error", { code: "token-expired", message: "expired", retryable: false });
    socket().closeFromServer(4002, "token-expired");
    await settle();
    expect(errors).toEqual(["token-expired"]);
    expect(FakeWebSocket.made).toHaveLength(2);
    socket().open();
    expect(socket().sent).toEqual([{ type: "auth", token: "token-2" }]);
  });

  it.each([
    [4000, "bad-request"],
    [4001, "expired"],
    [4001, "missing"],
    [4003, "forbidden"],
  ])("stops and says why after a close with %i (%s)", async (code, reason) => {
    const ws = client();
    const refusals: RequestRefusedError[] = [];
    ws.onRefused((refusal) => refusals.push(refusal));
    const errors: string[] = [];
    ws.onError((error) => errors.push(error.code));
    ws.start();
    await settle();
    socket().open();
    socket().receive({ type: "error", ref: null, code: reason, message: "no" });
    socket().closeFromServer(code, code === 4001 ? "unauthorized" : reason);
    expect(ws.state).toBe("closed");
    expect(refusals).toEqual([new RequestRefusedError(reason, "no")]);
    expect(errors).toEqual([]); // not an sse.error: SSE answers these with an HTTP status
    await vi.advanceTimersByTimeAsync(120_000);
    expect(FakeWebSocket.made).toHaveLength(1);
  });

  it("says why it stopped even when the router did not before the close", async () => {
    const ws = client();
    const refusals: string[] = [];
    ws.onRefused((refusal) => refusals.push(refusal.code));
    ws.start();
    await settle();
    socket().open();
    socket().closeFromServer(4001, "unauthorized");
    expect(refusals).toEqual(["unauthorized"]);
    expect(ws.state).toBe("closed");
  });
});

describe("the token, refreshed in-band", () => {
  it("is fetched again after a backoff when getToken fails", async () => {
    let calls = 0;
    const ws = client({
      backoff: { initialMs: 1000, maxMs: 1000, factor: 2 },
      getToken: () => {
        calls += 1;
        if (calls === 1) throw new Error("the token endpoint is down");
        return "token";
      },
    });
    ws.start();
    await settle();
    expect(ws.state).toBe("reconnecting");
    expect(FakeWebSocket.made).toHaveLength(0);
    await vi.advanceTimersByTimeAsync(1000);
    socket().open();
    expect(socket().sent).toEqual([{ type: "auth", token: "token" }]);
  });

  const now = (): number => Math.floor(Date.now() / 1000);

  it("is refreshed before it expires, and again after each refresh", async () => {
    let issued = 0;
    const ws = client({ getToken: () => `token-${++issued}` });
    ws.start();
    await settle();
    socket().admit({ expires_at: now() + 300 });
    // 30 s before the expiry (a fifth of a shorter life).
    await vi.advanceTimersByTimeAsync(269_000);
    expect(socket().sent).toEqual([{ type: "auth", token: "token-1" }]);
    await vi.advanceTimersByTimeAsync(1000);
    const refresh = socket().sent.at(-1);
    expect(refresh).toMatchObject({ type: "refresh", token: "token-2" });
    socket().receive({ type: "refreshed", ref: refresh?.ref, expires_at: now() + 50 });
    await vi.advanceTimersByTimeAsync(40_000);
    expect(socket().sent.at(-1)).toMatchObject({ type: "refresh", token: "token-3" });
    expect(FakeWebSocket.made).toHaveLength(1); // never by reconnecting
  });

  it("is refreshed when the app asks, answered by the router", async () => {
    let issued = 0;
    const ws = client({ getToken: () => `token-${++issued}` });
    ws.start();
    await settle();
    socket().admit({ expires_at: now() + 3600 });
    const refreshed = ws.refreshToken();
    await settle();
    const refresh = socket().sent.at(-1);
    expect(refresh).toMatchObject({ type: "refresh", token: "token-2" });
    socket().receive({ type: "refreshed", ref: refresh?.ref, expires_at: now() + 7200 });
    await expect(refreshed).resolves.toBeUndefined();
  });

  it("rejects a refresh the router refuses, with its code", async () => {
    const ws = client({ getToken: () => "token" });
    ws.start();
    await settle();
    socket().admit();
    const refreshed = ws.refreshToken();
    await settle();
    const ref = socket().sent.at(-1)?.ref;
    socket().receive({ type: "error", ref, code: "bad-request", message: "not a token" });
    await expect(refreshed).rejects.toEqual(new RequestRefusedError("bad-request", "not a token"));
    expect(ws.state).toBe("open");
  });

  it("on SSE, is refreshed by reopening the stream from the cursor", async () => {
    let issued = 0;
    const sse = client({
      transport: "sse",
      getToken: () => `token-${++issued}`,
      cursorStore: memoryStore("memory@e1:0:3"),
    });
    await openOnSSE(sse);
    await sse.refreshToken();
    const reopened = await reopenedStream();
    expect(query(reopened, "token")).toBe("token-2");
    expect(query(reopened, "last_event_id")).toBe("memory@e1:0:3");
  });
});

describe("access changes", () => {
  it("surfaces a revocation narrowed in place, stays open, and leaves the novel out of the next query", async () => {
    const ws = client({ params: { novel_id: ["n1", "n2"] } });
    const changes: unknown[] = [];
    ws.onAccessChanged((change) => changes.push(change));
    const versions: number[] = [];
    ws.on("content.updated", (data) => versions.push(data.content_version));
    ws.start();
    await settle();
    socket().admit();
    socket().receive({ type: "access-changed", novel_id: "n1", session_id: null });
    expect(changes).toEqual([{ novel_id: "n1", session_id: null }]);
    socket().event("content.updated", { ...content(4), novel_id: "n2" }, "memory@e1:0:4");
    expect(versions).toEqual([4]); // the same socket goes on
    expect(FakeWebSocket.made).toHaveLength(1);
    expect(ws.state).toBe("open");
    expect(socket().closedWith).toBeNull();

    socket().closeFromServer(4004, "lagged");
    await settle();
    expect(new URL(socket().url).searchParams.getAll("novel_id")).toEqual(["n2"]);
  });

  it("keeps a query that asked for the revoked novel alone: dropped, it would ask for more", async () => {
    const ws = client({ params: { novel_id: "n1" } });
    ws.start();
    await settle();
    socket().admit();
    socket().receive({ type: "access-changed", novel_id: "n1", session_id: null });
    socket().closeFromServer(4004, "lagged");
    await settle();
    expect(new URL(socket().url).searchParams.getAll("novel_id")).toEqual(["n1"]);
  });

  it("stops, saying why, when the back end signs the user out (4006)", async () => {
    const ws = client();
    const refusals: string[] = [];
    ws.onRefused((refusal) => refusals.push(refusal.code));
    ws.start();
    await settle();
    socket().admit();
    socket().event("sse.error", { code: "disconnected", message: "signed out", retryable: false });
    socket().closeFromServer(4006, "disconnected");
    await settle();
    expect(refusals).toEqual(["disconnected"]);
    expect(ws.state).toBe("closed");
    expect(FakeWebSocket.made).toHaveLength(1);
  });
});

describe("setFilter", () => {
  it("changes the filter in place on a WebSocket, and keeps it for the next connection", async () => {
    const ws = client({ params: { novel_id: "n1" } });
    ws.start();
    await settle();
    socket().admit();
    const changed = ws.setFilter({ novel_id: ["n2", "n3"], types: ["content.updated"] });
    const message = socket().sent.at(-1);
    expect(message).toEqual({
      type: "filter", ref: message?.ref, novel_id: ["n2", "n3"], session_id: null,
      types: ["content.updated"],
    });
    const applied = { novel_id: ["n2", "n3"], session_id: null, types: ["content.updated"] };
    socket().receive({ type: "filtered", ref: message?.ref, filter: applied });
    await expect(changed).resolves.toEqual(applied);
    expect(FakeWebSocket.made).toHaveLength(1);

    socket().closeFromServer(4004, "lagged");
    await settle();
    expect(new URL(socket().url).searchParams.getAll("novel_id")).toEqual(["n2", "n3"]);
    expect(query(socket(), "types")).toBe("content.updated");
  });

  it("keeps the old filter when the router refuses the new one", async () => {
    const ws = client({ params: { novel_id: "n1" } });
    ws.start();
    await settle();
    socket().admit();
    const changed = ws.setFilter({ novel_id: ["secret"] });
    const ref = socket().sent.at(-1)?.ref;
    socket().receive({ type: "error", ref, code: "forbidden", message: "not granted" });
    await expect(changed).rejects.toBeInstanceOf(RequestRefusedError);
    socket().closeFromServer(4004, "lagged");
    await settle();
    expect(new URL(socket().url).searchParams.getAll("novel_id")).toEqual(["n1"]);
  });

  it("asks for it in the next connection's query when the socket closed before the answer", async () => {
    const ws = client({ cursorStore: memoryStore("memory@e1:0:4") });
    ws.start();
    await settle();
    socket().admit();
    const changed = ws.setFilter({ novel_id: ["n2"] });
    socket().closeFromServer(1011, "internal");
    await expect(changed).resolves.toEqual({ novel_id: ["n2"], session_id: null, types: [] });
    await settle();
    expect(query(socket(), "novel_id")).toBe("n2");
    expect(query(socket(), "last_event_id")).toBe("memory@e1:0:4");
  });

  it("on SSE, reopens the stream with the new filter, from the cursor", async () => {
    const sse = client({ transport: "sse", cursorStore: memoryStore("memory@e1:0:8") });
    await openOnSSE(sse);
    await expect(sse.setFilter({ session_id: "s1" })).resolves.toMatchObject({ session_id: "s1" });
    const reopened = await reopenedStream();
    expect(query(reopened, "session_id")).toBe("s1");
    expect(query(reopened, "last_event_id")).toBe("memory@e1:0:8");
  });
});

describe('transport: "auto"', () => {
  it("falls back to SSE, from the cursor, when the socket cannot connect", async () => {
    const store = memoryStore("memory@e1:0:2");
    const auto = client({ transport: "auto", cursorStore: store });
    auto.start();
    await settle();
    socket().fail();
    await settle();
    expect(auto.transportInUse).toBe("sse");
    expect(FakeEventSource.made).toHaveLength(1);
    const source = FakeEventSource.made[0];
    expect(source && new URL(source.url).pathname).toBe("/api/v1/events/stream");
    expect(source && query(source, "last_event_id")).toBe("memory@e1:0:2");
  });

  it("falls back to SSE when there is no WebSocket here", async () => {
    const auto = client({
      transport: "auto",
      webSocket: () => {
        throw new Error("no WebSocket");
      },
    });
    auto.start();
    await settle();
    expect(FakeEventSource.made).toHaveLength(1);
  });

  it("stays on WebSocket once one worked, backing off when it drops", async () => {
    const auto = client({ transport: "auto", backoff: { initialMs: 1000, maxMs: 1000, factor: 2 } });
    auto.start();
    await settle();
    socket().admit();
    socket().closeFromServer(1006);
    await vi.advanceTimersByTimeAsync(1000);
    socket().fail(); // the router is still away
    await vi.advanceTimersByTimeAsync(1000);
    expect(FakeWebSocket.made).toHaveLength(3);
    expect(FakeEventSource.made).toHaveLength(0);
    expect(auto.transportInUse).toBe("websocket");
  });
});
