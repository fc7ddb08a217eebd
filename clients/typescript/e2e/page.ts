// The test page: an SSEClient in a real browser, recording what it receives. `?transport=`
// chooses how it connects (default sse); `?ttl=` how long its tokens live.
import { SSEClient, type TransportChoice } from "../src/client.js";

declare global {
  interface Window {
    received: number[];
    errors: string[];
    tokensFetched: number;
    state: string;
    states: string[];
    /** WebSockets the page opened: one while a connection lives, more after each reconnect. */
    sockets: number;
    refusals: string[];
    client: SSEClient;
  }
}

const query = new URLSearchParams(location.search);
window.received = [];
window.errors = [];
window.tokensFetched = 0;
window.state = "closed";
window.states = [];
window.sockets = 0;
window.refusals = [];
const cursor = query.get("cursor"); // where an earlier page of this tab had got to
if (cursor) sessionStorage.setItem("sse-router:cursor", cursor);

const client = new SSEClient({
  url: `${query.get("router")}/api/v1/events/stream`,
  transport: (query.get("transport") ?? "sse") as TransportChoice,
  webSocketUrl: `${query.get("wsRouter") ?? query.get("router")}/api/v1/events/ws`,
  webSocket: (url) => {
    window.sockets += 1;
    return new WebSocket(url);
  },
  getToken: async () => {
    window.tokensFetched += 1;
    const sub = query.get("sub") ?? "reader";
    const novels = query.get("novels") ?? "n1";
    const response = await fetch(`/token?ttl=${query.get("ttl") ?? "3600"}&sub=${sub}&novels=${novels}`);
    return response.text();
  },
});
client.on("content.updated", (event) => {
  window.received.push(event.content_version);
  document.body.textContent = window.received.join(",");
});
client.onError((error) => window.errors.push(error.code));
client.onRefused((refusal) => window.refusals.push(refusal.code));
client.onState((state) => {
  window.state = state;
  window.states.push(state);
});
window.client = client;
client.start();
