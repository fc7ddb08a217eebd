// In a real browser (Debian's Chromium, driven by playwright-core): the page's SSEClient against
// the real router on Redis Streams and the Redis cache, through restarts, reloads and an expired
// token. Run by `npm run test:e2e` (part of `just test`).
import { type ChildProcess, spawn } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";

import { build } from "esbuild";
import { type Browser, chromium, type Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const SECRET = "browser-tests-secret-0123456789abcdef0123";
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const PYTHON = process.env.SSE_ROUTER_PYTHON ?? "python";
const REDIS_URL = process.env.REDIS_URL ?? "redis://127.0.0.1:6379/0";
const run = randomBytes(4).toString("hex");

function base64url(data: string | Buffer): string {
  return Buffer.from(data).toString("base64url");
}

function token(claims: Record<string, unknown>, ttlSeconds = 3600): string {
  const now = Math.floor(Date.now() / 1000);
  const header = base64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const body = base64url(JSON.stringify({ ...claims, iat: now, exp: now + ttlSeconds }));
  const signature = createHmac("sha256", SECRET).update(`${header}.${body}`).digest();
  return `${header}.${body}.${base64url(signature)}`;
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

let pageServer: Server;
let pageUrl = "";
let routerPort = 0;
let router: ChildProcess | null = null;
let browser: Browser;

async function startRouter(): Promise<void> {
  router = spawn(
    PYTHON,
    [
      "-m", "router.cli", "serve", "--port", String(routerPort),
      "--bus", "redis", "--redis-stream", `e2e-${run}`, "--cache", "redis",
      "--redis-url", REDIS_URL, "--redis-key-prefix", `sse-router-e2e:${run}`,
      "--cors-origins", new URL(pageUrl).origin, "--log-level", "warning",
      "--shutdown-retry-spread-ms", "0", "--retry-ms", "200",
    ],
    { env: { ...process.env, SSE_ROUTER_JWT_SECRET: SECRET }, stdio: "ignore" },
  );
  for (let attempt = 0; attempt < 200; attempt++) {
    try {
      const ready = await fetch(`http://127.0.0.1:${routerPort}/readyz`);
      if (ready.ok) return;
    } catch {
      // not listening yet
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error("the router did not start");
}

async function stopRouter(): Promise<void> {
  const process = router;
  if (!process) return;
  const exited = new Promise((resolve) => process.once("exit", resolve));
  process.kill("SIGTERM");
  await exited;
  router = null;
}

async function publish(...versions: number[]): Promise<void> {
  await publishTo("n1", ...versions);
}

async function publishTo(novel: string, ...versions: number[]): Promise<void> {
  await publishEnvelopes(
    versions.map((version) => ({
      event_type: "Content.Updated",
      occurred_at: new Date().toISOString(),
      scope: { novel_id: novel },
      payload: { novel_id: novel, content_version: version },
    })),
  );
}

/** Publish `Content.Updated` events of these payloads (of n1), or any envelopes given whole. */
async function publishEnvelopes(items: Record<string, unknown>[]): Promise<void> {
  const body = items.map((item) =>
    "event_type" in item
      ? item
      : {
          event_type: "Content.Updated",
          occurred_at: new Date().toISOString(),
          scope: { novel_id: "n1" },
          payload: item,
        },
  );
  const response = await fetch(`http://127.0.0.1:${routerPort}/api/v1/events`, {
    method: "POST",
    headers: {
      "Content-Type": "application/json",
      Authorization: `Bearer ${token({ sub: "backend", roles: ["publisher"] })}`,
    },
    body: JSON.stringify(body),
  });
  expect(response.status).toBe(202);
}

/** A stream of `sub`'s held open from Node, as another tab would; `cursor()` waits for the id
 * of the first event on it. */
async function holdStream(sub: string): Promise<{ cursor: () => Promise<string>; close: () => void }> {
  const aborted = new AbortController();
  const response = await fetch(`http://127.0.0.1:${routerPort}/api/v1/events/stream`, {
    headers: { Authorization: `Bearer ${token({ sub, novels: ["n1"] })}` },
    signal: aborted.signal,
  });
  expect(response.status).toBe(200);
  const reader = (response.body as ReadableStream<Uint8Array>).getReader();
  const decoder = new TextDecoder();
  let text = "";
  // The id of the first event: a stream's first bytes carry an id-only block (its position before
  // any event), which is not the cursor of an event seen.
  const cursor = async (): Promise<string> => {
    for (;;) {
      const event = text.split("\n\n").find((block) => /^data: /m.test(block));
      const id = event === undefined ? null : /^id: (.+)$/m.exec(event);
      if (id?.[1]) return id[1];
      const { value, done } = await reader.read();
      if (done) throw new Error("the held stream ended");
      text += decoder.decode(value, { stream: true });
    }
  };
  return { cursor, close: () => aborted.abort() };
}

async function received(page: Page, count: number): Promise<number[]> {
  await page.waitForFunction((n) => window.received.length >= n, count, { timeout: 20_000 });
  return page.evaluate(() => window.received);
}

async function bundle(entry: string): Promise<string> {
  const built = await build({
    entryPoints: [new URL(entry, import.meta.url).pathname],
    bundle: true,
    format: "esm",
    write: false,
    define: { "process.env.NODE_ENV": '"production"' }, // React reads it; a browser has none
  });
  return built.outputFiles[0]?.text ?? "";
}

/** Paths under /probe/ the page server was asked for: only markup that ran asks for one. */
const probes: string[] = [];

beforeAll(async () => {
  const script = await bundle("./page.ts");
  const reactScript = await bundle("./react-page.tsx");
  pageServer = createServer((request, response) => {
    const url = new URL(request.url ?? "/", "http://localhost");
    if (url.pathname.startsWith("/probe/")) {
      probes.push(url.pathname);
      response.statusCode = 404; // not an image: an <img> that asked fires its onerror
      response.end();
    } else if (url.pathname === "/react") {
      response.setHeader("Content-Type", "text/html");
      response.end('<!doctype html><body><div id="root"></div><script type="module" src="/react.js"></script></body>');
    } else if (url.pathname === "/react.js") {
      response.setHeader("Content-Type", "text/javascript");
      response.end(reactScript);
    } else if (url.pathname === "/token") {
      const ttl = Number(url.searchParams.get("ttl") ?? "3600");
      const novels = (url.searchParams.get("novels") ?? "n1").split(",");
      response.end(token({ sub: url.searchParams.get("sub") ?? "reader", novels }, ttl));
    } else if (url.pathname === "/page.js") {
      response.setHeader("Content-Type", "text/javascript");
      response.end(script);
    } else {
      response.setHeader("Content-Type", "text/html");
      response.end('<!doctype html><body></body><script type="module" src="/page.js"></script>');
    }
  });
  await new Promise<void>((resolve) => pageServer.listen(0, "127.0.0.1", resolve));
  pageUrl = `http://127.0.0.1:${(pageServer.address() as AddressInfo).port}`;
  routerPort = await freePort();
  await startRouter();
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    chromiumSandbox: false,
    args: [
      "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync",
    ],
  });
}, 60_000);

afterAll(async () => {
  await browser?.close();
  await stopRouter();
  await new Promise((resolve) => pageServer?.close(resolve));
  // The test's own keys and stream, gone with it.
  const cleanup = spawn(PYTHON, [
    "-c",
    "import redis, sys; r = redis.Redis.from_url(sys.argv[1]);"
      + " keys = list(r.scan_iter(sys.argv[2] + ':*')) + [sys.argv[3]]; r.delete(*keys)",
    REDIS_URL,
    `sse-router-e2e:${run}`,
    `e2e-${run}`,
  ]);
  await new Promise((resolve) => cleanup.once("exit", resolve));
});

describe("the client in a browser, against the router", () => {
  it("receives, and resumes exactly after a router restart and after a reload", async () => {
    const page = await browser.newPage();
    await page.goto(`${pageUrl}/?router=http://127.0.0.1:${routerPort}`);
    await page.waitForFunction(() => window.state === "open");
    await publish(1, 2, 3);
    expect(await received(page, 3)).toEqual([1, 2, 3]);

    // The router restarts mid-stream; events are published right after it is back. The browser
    // reconnects on its own with Last-Event-ID and gets them once, in order.
    await stopRouter();
    await startRouter();
    await publish(4, 5);
    expect(await received(page, 5)).toEqual([1, 2, 3, 4, 5]);

    // A reload resumes from the cursor the client kept in sessionStorage.
    await page.reload();
    await page.waitForFunction(() => window.state === "open");
    await publish(6);
    expect(await received(page, 1)).toEqual([6]);
    await page.close();
  }, 90_000);

  it("comes back by itself, where it was, after the router refused it for now", async () => {
    // The user has the router's 10 streams open elsewhere; the first saw event 10.
    const held = await Promise.all(Array.from({ length: 10 }, () => holdStream("holder")));
    await publish(10);
    const cursor = await held[0]!.cursor();
    const page = await browser.newPage();
    const query = new URLSearchParams({ router: `http://127.0.0.1:${routerPort}`, sub: "holder", cursor });
    await page.goto(`${pageUrl}/?${query}`);
    // Refused in-band (a 429 would stop the EventSource for good): it waits the router's retry:.
    await page.waitForFunction(() => window.errors.includes("too-many-streams"));
    expect(await page.evaluate(() => window.state)).toBe("reconnecting");
    await publish(11, 12); // while it waits
    held[0]!.close(); // one of the other streams ends: a slot is free
    await page.waitForFunction(() => window.state === "open", undefined, { timeout: 20_000 });
    expect(await received(page, 2)).toEqual([11, 12]); // from its cursor: nothing lost or twice
    expect(await page.evaluate(() => window.states)).toEqual(["connecting", "open", "reconnecting", "open"]);
    for (const stream of held.slice(1)) stream.close();
    await page.close();
  }, 60_000);

  it("renders markup in event data as text with React, and runs none of it", async () => {
    // Each payload, were it parsed as HTML, would push its name to window.xss or ask the page
    // server for /probe/event...; rendered as text it does neither.
    const markup = [
      "<script>window.xss.push('event-script')</script>",
      `<img src="/probe/event-img" onerror="window.xss.push('event-img')">`,
      `"><img src="/probe/event-attribute" onerror="window.xss.push('event-attribute')">`,
      `<svg onload="window.xss.push('event-svg')"></svg>`,
    ];
    const page = await browser.newPage();
    await page.goto(`${pageUrl}/react?router=http://127.0.0.1:${routerPort}`);
    await page.waitForFunction(() => window.state === "open");
    await publishEnvelopes([
      ...markup.map((summary, version) => ({ novel_id: "n1", content_version: version, summary })),
      {
        event_type: "System.NotificationSent",
        occurred_at: new Date().toISOString(),
        scope: { broadcast: true },
        payload: { level: "warning", title: markup[0], message: markup[1] },
      },
    ]);
    await page.waitForSelector("[data-testid=notice]");
    await page.waitForFunction((n) => document.querySelectorAll("li").length >= n, markup.length);
    const shown = await page.$$eval("li", (items) => items.map((li) => [li.textContent, li.title]));
    expect(shown).toEqual(markup.map((text) => [text, text]));
    expect(await page.textContent("[data-testid=notice] h2")).toBe(markup[0]);
    expect(await page.textContent("[data-testid=notice] p")).toBe(markup[1]);
    expect(await page.$$eval("main img, main script, main svg", (found) => found.length)).toBe(0);

    // The control: the same markup put into the page as HTML does run in this browser, so the
    // probes above would have seen it.
    await page.evaluate((html) => {
      const unsafe = document.createElement("div");
      unsafe.innerHTML = html;
      document.body.append(unsafe);
    }, (markup[1] ?? "").replaceAll("event", "control"));
    await page.waitForFunction(() => window.xss.includes("control-img"));
    expect(await page.evaluate(() => window.xss)).toEqual(["control-img"]);
    expect(probes).toEqual(["/probe/control-img"]);
    await page.close();
  }, 60_000);

  it("reconnects with a fresh token when the router says it expired", async () => {
    const page = await browser.newPage();
    await page.goto(`${pageUrl}/?router=http://127.0.0.1:${routerPort}&ttl=2`);
    await page.waitForFunction(() => window.errors.includes("token-expired"), undefined, {
      timeout: 20_000,
    });
    await page.waitForFunction(() => window.tokensFetched >= 2 && window.state === "open");
    await publish(7);
    expect((await received(page, 1)).at(-1)).toBe(7);
    await page.close();
  }, 60_000);
});

describe("the client over a WebSocket, against the router", () => {
  const open = async (params: Record<string, string> = {}): Promise<Page> => {
    const page = await browser.newPage();
    const query = new URLSearchParams({
      router: `http://127.0.0.1:${routerPort}`, transport: "websocket", ...params,
    });
    await page.goto(`${pageUrl}/?${query}`);
    await page.waitForFunction(() => window.state === "open");
    return page;
  };

  it("receives, and resumes exactly after the router closed it and after a reload", async () => {
    const page = await open();
    await publish(1, 2, 3);
    expect(await received(page, 3)).toEqual([1, 2, 3]);

    // A restart: the router says server-shutdown and closes with 1001; the client waits the
    // router's retry, then opens sockets (backing off while the router is away) from its cursor
    // until one is admitted.
    await stopRouter();
    await startRouter();
    await page.waitForFunction(() => window.state === "open" && window.sockets >= 2, undefined, {
      timeout: 20_000,
    });
    await publish(4, 5);
    expect(await received(page, 5)).toEqual([1, 2, 3, 4, 5]);
    expect(await page.evaluate(() => window.errors)).toEqual(["server-shutdown"]);

    await page.reload();
    await page.waitForFunction(() => window.state === "open");
    await publish(6);
    expect(await received(page, 1)).toEqual([6]);
    await page.close();
  }, 90_000);

  it("refreshes its token in-band, on the same socket, before it expires", async () => {
    const page = await open({ ttl: "6" });
    // Refreshed a fifth of its life before the end (about 4.8 s in), well before the router
    // would close the stream as token-expired.
    await page.waitForFunction(() => window.tokensFetched >= 2, undefined, { timeout: 20_000 });
    await new Promise((resolve) => setTimeout(resolve, 3000)); // past the first token's expiry
    await publish(7);
    expect(await received(page, 1)).toEqual([7]);
    expect(await page.evaluate(() => [window.sockets, window.errors])).toEqual([1, []]);
    await page.close();
  }, 60_000);

  it("changes its filter in place, and is told when the token does not grant it", async () => {
    const page = await open({ novels: "n1,n2" });
    const applied = await page.evaluate(() => window.client.setFilter({ novel_id: ["n2"] }));
    expect(applied).toEqual({ novel_id: ["n2"], session_id: null, types: [] });
    await publishTo("n1", 8);
    await publishTo("n2", 9);
    expect(await received(page, 1)).toEqual([9]);
    const refused = await page.evaluate(() =>
      window.client.setFilter({ novel_id: ["n3"] }).then(
        () => "applied",
        (error: { code: string }) => error.code,
      ),
    );
    expect(refused).toBe("forbidden");
    await publishTo("n2", 10);
    expect(await received(page, 2)).toEqual([9, 10]); // still on the filter that was applied
    expect(await page.evaluate(() => window.sockets)).toBe(1);
    await page.close();
  }, 60_000);
});

describe('transport: "auto"', () => {
  it("falls back to SSE when the WebSocket cannot connect", async () => {
    const page = await browser.newPage();
    // Nothing upgrades at the page server's /api/v1/events/ws; its stream endpoint is the
    // router's, given as `url` by the page.
    const query = new URLSearchParams({
      router: `http://127.0.0.1:${routerPort}`, transport: "auto", wsRouter: pageUrl,
    });
    await page.goto(`${pageUrl}/?${query}`);
    await page.waitForFunction(() => window.state === "open", undefined, { timeout: 20_000 });
    expect(await page.evaluate(() => window.client.transportInUse)).toBe("sse");
    await publish(11);
    expect(await received(page, 1)).toEqual([11]);
    await page.close();
  }, 60_000);
});
