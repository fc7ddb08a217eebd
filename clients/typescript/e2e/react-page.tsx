// The React test page: event data rendered as a React app renders text (children and attribute
// values), to prove that markup in a payload stays text in a real browser.
import { type ReactNode, useEffect, useState } from "react";
import { createRoot } from "react-dom/client";

import { SSEProvider, useSSE, useSSEStatus } from "../src/react.js";

declare global {
  interface Window {
    /** What any markup that ran pushed: the payloads push their own names. */
    xss: string[];
    state: string;
  }
}

window.xss = [];
window.state = "closed";
const query = new URLSearchParams(location.search);

function Events(): ReactNode {
  const [summaries, setSummaries] = useState<string[]>([]);
  const [notice, setNotice] = useState<{ title: string; message: string } | null>(null);
  const status = useSSEStatus();
  useEffect(() => {
    window.state = status;
  }, [status]);
  useSSE("content.updated", (event) => setSummaries((shown) => [...shown, event.summary ?? ""]));
  useSSE("system.notification-sent", (event) => setNotice({ title: event.title, message: event.message }));
  return (
    <main>
      <ul data-testid="summaries">
        {summaries.map((summary, index) => (
          <li key={index} title={summary}>
            {summary}
          </li>
        ))}
      </ul>
      {notice && (
        <section data-testid="notice">
          <h2>{notice.title}</h2>
          <p>{notice.message}</p>
        </section>
      )}
    </main>
  );
}

const root = document.getElementById("root");
if (!root) throw new Error("the page has no #root");
createRoot(root).render(
  <SSEProvider
    options={{
      url: `${query.get("router")}/api/v1/events/stream`,
      getToken: async () => (await fetch("/token?sub=react-reader")).text(),
    }}
  >
    <Events />
  </SSEProvider>,
);
