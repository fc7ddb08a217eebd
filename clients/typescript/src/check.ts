// Compile-time checks of the generated types in index.ts: `npm run typecheck` fails if they stop
// making sense. Hand-written, not generated; nothing imports it.

import {
  EventPriority,
  PRODUCER_EVENT_TYPES,
  SSE_EVENT_NAMES,
  type DomainEventEnvelope,
  type PriorityLevel,
  type SSEErrorCode,
  type SSEErrorPayload,
  type SSEEventMap,
  type SSEEventName,
  type SSERefusalCode,
} from "./index.js";

type Equal<A, B> =
  (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;
const assertType = <T extends true>(): T | undefined => undefined;

// The event map, the name tuple and the priorities agree; errors use the error codes.
assertType<Equal<keyof SSEEventMap, SSEEventName>>();
assertType<Equal<SSEErrorPayload["code"], SSEErrorCode>>();
assertType<Equal<Extract<SSERefusalCode, SSEErrorCode>, SSERefusalCode>>(); // refusals are errors
type MappedEventName = (typeof PRODUCER_EVENT_TYPES)[keyof typeof PRODUCER_EVENT_TYPES];
assertType<Equal<MappedEventName, Exclude<SSEEventName, "sse.error">>>();
const priority: PriorityLevel = EventPriority[SSE_EVENT_NAMES[0]];

// A handler per event, each seeing its own data; an error handler must cover every code.
type Handlers = { [E in SSEEventName]: (data: SSEEventMap[E]) => void };

function handleError(code: SSEErrorCode): string {
  switch (code) {
    case "token-expired":
    case "lagged":
    case "server-shutdown":
    case "history-truncated":
    case "internal":
    case "rate-limited":
    case "too-many-streams":
    case "shutting-down":
    case "replay-unavailable":
    case "access-changed":
    case "disconnected":
    case "overloaded":
      return code;
    default: {
      const unhandled: never = code;
      return unhandled;
    }
  }
}

const handlers: Handlers = {
  "task.progress-updated": (data) => void data.progress.toFixed(data.event_id.length),
  "task.status-changed": (data) => void `${data.old_status} -> ${data.new_status}`,
  "system.notification-sent": (data) => void (data.level === "warning"),
  "content.updated": (data) => void (data.chapter_id ?? data.novel_id),
  "sse.error": (data) => {
    // @ts-expect-error: the router's own events carry no bus metadata
    void data.event_id;
    void handleError(data.code);
  },
};

function listen(source: EventSource): void {
  for (const name of SSE_EVENT_NAMES) {
    source.addEventListener(name, (event: MessageEvent<string>) => {
      (handlers[name] as (data: unknown) => void)(JSON.parse(event.data));
    });
  }
}

// Envelopes: payload typed by event_type, broadcast only where allowed, scope matching payload.
const at = "2026-11-28T10:15:00.123Z";
const note = { level: "info", title: "Maintenance", message: "At 22:00 UTC" } as const;
const progress = { task_id: "t1", progress: 40 };
const content = { novel_id: "n1", content_version: 3 };
const envelopes: DomainEventEnvelope[] = [
  { event_type: "Task.ProgressUpdated", occurred_at: at, scope: { user_id: "u1" }, payload: progress },
  { event_type: "System.NotificationSent", occurred_at: at, scope: { broadcast: true }, payload: note },
  { event_type: "Content.Updated", event_id: "e1", occurred_at: at, scope: { novel_id: "n1" }, payload: content },
  // @ts-expect-error: task progress may not be broadcast
  { event_type: "Task.ProgressUpdated", occurred_at: at, scope: { broadcast: true }, payload: progress },
  // @ts-expect-error: a broadcast names no one
  { event_type: "System.NotificationSent", occurred_at: at, scope: { broadcast: true, user_id: "u1" }, payload: note },
  // @ts-expect-error: content is addressed to the readers of its novel
  { event_type: "Content.Updated", occurred_at: at, scope: { user_id: "u1" }, payload: content },
  // @ts-expect-error: the level is one of info, warning, error
  { event_type: "System.NotificationSent", occurred_at: at, scope: { user_id: "u1" }, payload: { ...note, level: "fatal" } },
];

void [priority, envelopes, listen];
