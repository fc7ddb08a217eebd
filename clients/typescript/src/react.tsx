// React bindings: one SSEClient per tab, shared by every component through a context.
//
// A browser keeps at most six HTTP/1.1 connections per origin; an EventSource holds one for as
// long as it lives. So the provider opens one stream, and components subscribe to it.

import { type QueryClient, type QueryKey, useQueryClient } from "@tanstack/react-query";
import {
  createContext,
  type ReactNode,
  useContext,
  useEffect,
  useRef,
  useState,
  useSyncExternalStore,
} from "react";

import { type ConnectionState, SSEClient, type SSEClientOptions } from "./client.js";
import type { SSEEventMap, SSEEventName } from "./index.js";

const SSEContext = createContext<SSEClient | null>(null);

export interface SSEProviderProps {
  /** How to connect; or pass an existing `client` (the provider then neither starts nor stops it). */
  options?: SSEClientOptions;
  client?: SSEClient;
  children: ReactNode;
}

/** Opens the tab's one stream for everything below it, and closes it when unmounted. */
export function SSEProvider({ options, client, children }: SSEProviderProps): ReactNode {
  const [owned] = useState(() => (client ? null : new SSEClient(requireOptions(options))));
  useEffect(() => {
    if (!owned) return undefined;
    owned.start();
    return () => owned.stop();
  }, [owned]);
  return <SSEContext.Provider value={client ?? owned}>{children}</SSEContext.Provider>;
}

function requireOptions(options: SSEClientOptions | undefined): SSEClientOptions {
  if (!options) throw new Error("SSEProvider needs `options` or a `client`");
  return options;
}

export function useSSEClient(): SSEClient {
  const client = useContext(SSEContext);
  if (!client) throw new Error("useSSE and useSSEStatus need an SSEProvider above them");
  return client;
}

/** Call `handler` for each event named `name`, typed by the name; the latest handler is used. */
export function useSSE<N extends SSEEventName>(
  name: N,
  handler: (data: SSEEventMap[N]) => void,
): void {
  const client = useSSEClient();
  const latest = useRef(handler);
  latest.current = handler;
  useEffect(() => client.on(name, (data) => latest.current(data)), [client, name]);
}

/** The stream's state, for an indicator: connecting, open, reconnecting, polling, closed. */
export function useSSEStatus(): ConnectionState {
  const client = useSSEClient();
  return useSyncExternalStore(
    (notify) => client.onState(notify),
    () => client.state,
  );
}

/** What an SSE event does to the TanStack Query cache. */
export type QueryRule<N extends SSEEventName> =
  | { invalidate: (data: SSEEventMap[N]) => QueryKey }
  | { update: (queryClient: QueryClient, data: SSEEventMap[N]) => void };

export type QueryRules = { [N in SSEEventName]?: QueryRule<N> };

/**
 * Keep the query cache in step with the stream: per event name, the query to invalidate
 * (`content.updated` -> `["novel", data.novel_id]`) or an update in place (`setQueryData` for
 * `task.progress-updated`, with no refetch). A `history-truncated` error invalidates every
 * query: events were missed, so nothing cached can be trusted to be current.
 */
export function useSSEQuerySync(rules: QueryRules): void {
  const client = useSSEClient();
  const queryClient = useQueryClient();
  const latest = useRef(rules);
  latest.current = rules;
  useEffect(() => {
    const names = Object.keys(latest.current) as SSEEventName[];
    const unsubscribe = names.map((name) =>
      client.on(name, (data) => {
        const rule = latest.current[name] as QueryRule<typeof name> | undefined;
        if (!rule) return;
        if ("invalidate" in rule) void queryClient.invalidateQueries({ queryKey: rule.invalidate(data) });
        else rule.update(queryClient, data);
      }),
    );
    const offError = client.onError((error) => {
      if (error.code === "history-truncated") void queryClient.invalidateQueries();
    });
    return () => {
      for (const off of unsubscribe) off();
      offError();
    };
  }, [client, queryClient]);
}
