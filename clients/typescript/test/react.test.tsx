// @vitest-environment jsdom
import { QueryClient, QueryClientProvider } from "@tanstack/react-query";
import { act, cleanup, render, screen } from "@testing-library/react";
import { type ReactNode, useState } from "react";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";

import { SSEClient } from "../src/client.js";
import { SSEProvider, useSSE, useSSEQuerySync, useSSEStatus } from "../src/react.js";
import { FakeEventSource } from "./fake-event-source.js";
import { FakeWebSocket } from "./fake-web-socket.js";

const options = {
  url: "https://events.example/api/v1/events/stream",
  eventSource: (url: string, init: { withCredentials: boolean }) => new FakeEventSource(url, init),
  cursorStore: { load: () => null, save: () => undefined },
};

function last(): FakeEventSource {
  const source = FakeEventSource.made.at(-1);
  if (!source) throw new Error("no EventSource was made");
  return source;
}

async function settle(): Promise<void> {
  await act(async () => {
    await Promise.resolve();
  });
}

function Progress({ task }: { task: string }): ReactNode {
  const [percent, setPercent] = useState(0);
  useSSE("task.progress-updated", (event) => {
    if (event.task_id === task) setPercent(event.progress);
  });
  return <p data-testid={task}>{percent}</p>;
}

function Status(): ReactNode {
  return <p data-testid="status">{useSSEStatus()}</p>;
}

beforeEach(() => {
  FakeEventSource.made = [];
  FakeWebSocket.made = [];
});

afterEach(() => {
  cleanup();
});

describe("SSEProvider", () => {
  it("opens one stream for the whole tab and closes it when unmounted", async () => {
    const view = render(
      <SSEProvider options={options}>
        <Progress task="t1" />
        <Progress task="t2" />
        <Status />
      </SSEProvider>,
    );
    await settle();
    expect(FakeEventSource.made).toHaveLength(1);
    expect(screen.getByTestId("status").textContent).toBe("connecting");
    act(() => last().open());
    expect(screen.getByTestId("status").textContent).toBe("open");
    act(() => last().emit("task.progress-updated", { task_id: "t2", progress: 40 }));
    expect(screen.getByTestId("t1").textContent).toBe("0");
    expect(screen.getByTestId("t2").textContent).toBe("40");
    view.unmount();
    expect(last().closed).toBe(true);
  });

  it("shares one WebSocket the same way", async () => {
    const webSocket = (url: string): FakeWebSocket => new FakeWebSocket(url);
    const overSocket = { ...options, transport: "websocket" as const, webSocket };
    const view = render(
      <SSEProvider options={overSocket}>
        <Progress task="t1" />
        <Status />
      </SSEProvider>,
    );
    await settle();
    expect(FakeWebSocket.made).toHaveLength(1);
    const socket = FakeWebSocket.made[0] as FakeWebSocket;
    act(() => socket.admit());
    expect(screen.getByTestId("status").textContent).toBe("open");
    act(() => socket.event("task.progress-updated", { task_id: "t1", progress: 60 }));
    expect(screen.getByTestId("t1").textContent).toBe("60");
    view.unmount();
    expect(socket.closedWith).toBe(1000);
    expect(FakeEventSource.made).toHaveLength(0);
  });

  it("leaves a client it was given to its owner", async () => {
    const client = new SSEClient(options);
    const view = render(
      <SSEProvider client={client}>
        <Status />
      </SSEProvider>,
    );
    await settle();
    expect(FakeEventSource.made).toHaveLength(0);
    view.unmount();
  });
});

describe("useSSEQuerySync", () => {
  function Sync(): ReactNode {
    useSSEQuerySync({
      "content.updated": { invalidate: (event) => ["novel", event.novel_id] },
      "task.progress-updated": {
        update: (cache, event) => cache.setQueryData(["task", event.task_id], event.progress),
      },
    });
    return null;
  }

  it("invalidates or updates the queries each event names", async () => {
    const queryClient = new QueryClient();
    const invalidate = vi.spyOn(queryClient, "invalidateQueries");
    render(
      <QueryClientProvider client={queryClient}>
        <SSEProvider options={options}>
          <Sync />
        </SSEProvider>
      </QueryClientProvider>,
    );
    await settle();
    act(() => last().emit("content.updated", { novel_id: "n1", content_version: 2 }));
    expect(invalidate).toHaveBeenCalledWith({ queryKey: ["novel", "n1"] });
    act(() => last().emit("task.progress-updated", { task_id: "t9", progress: 75 }));
    expect(queryClient.getQueryData(["task", "t9"])).toBe(75);
    act(() =>
      last().emit("sse.error", { code: "history-truncated", message: "gone", retryable: true }),
    );
    expect(invalidate).toHaveBeenLastCalledWith();
  });
});
