// The test page: an SSEClient in a real browser, recording what it receives.
import { SSEClient } from "../src/client.js";

declare global {
  interface Window {
    received: number[];
    errors: string[];
    tokensFetched: number;
    state: string;
  }
}

const query = new URLSearchParams(location.search);
window.received = [];
window.errors = [];
window.tokensFetched = 0;
window.state = "closed";

const client = new SSEClient({
  url: `${query.get("router")}/api/v1/events/stream`,
  getToken: async () => {
    window.tokensFetched += 1;
    const response = await fetch(`/token?ttl=${query.get("ttl") ?? "3600"}`);
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
});
client.start();
