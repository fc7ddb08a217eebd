// The test page: an SSEClient in a real browser, recording what it receives.
import { SSEClient } from "../src/client.js";

declare global {
  interface Window {
    received: number[];
    errors: string[];
    tokensFetched: number;
    state: string;
    states: string[];
  }
}

const query = new URLSearchParams(location.search);
window.received = [];
window.errors = [];
window.tokensFetched = 0;
window.state = "closed";
window.states = [];
const cursor = query.get("cursor"); // where an earlier page of this tab had got to
if (cursor) sessionStorage.setItem("sse-router:cursor", cursor);

const client = new SSEClient({
  url: `${query.get("router")}/api/v1/events/stream`,
  getToken: async () => {
    window.tokensFetched += 1;
    const sub = query.get("sub") ?? "reader";
    const response = await fetch(`/token?ttl=${query.get("ttl") ?? "3600"}&sub=${sub}`);
    return response.text();
  },
});
client.on("content.updated", (event) => {
  window.received.push(event.content_version);
  document.body.textContent = window.received.join(",");
});
client.onError((error) => window.errors.push(error.code));
client.onState((state) => {
  window.state = state;
  window.states.push(state);
});
client.start();
