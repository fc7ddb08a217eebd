"""The mapping document: which producer event becomes which SSE event, and how."""

from __future__ import annotations

import json

from router.codegen.model import GENERATED_BY, Catalogue, CatalogueError, load_catalogue
from router.core.cursor import Cursor, EventIdentity
from router.core.envelope import MAX_EVENT_ID_LENGTH, MAX_EVENT_TYPE_LENGTH
from router.core.events import ErrorCode
from router.core.mapping import MappingRule, Problem, convert_batch
from router.core.schema import Field
from router.core.scope import MAX_SCOPE_ID_LENGTH, SCOPE_FIELDS
from router.core.sse import Priority

# What each rejection means. A Problem added in router/core/mapping.py must be described here.
PROBLEMS = {
    Problem.MALFORMED: (
        "the record is not JSON or not a JSON object, misses `event_type`, `occurred_at`, "
        "`scope` or `payload`, or one of those (or `event_id`) has the wrong shape"
    ),
    Problem.UNKNOWN_TYPE: "no row of the table above has its `event_type`",
    Problem.INVALID_PAYLOAD: (
        "the payload breaks its event's contract: a required field missing or null, a value of "
        "the wrong type, too long or out of range"
    ),
    Problem.UNROUTABLE: (
        "the scope is malformed, names no one, or mixes `broadcast` with names; or a broadcast "
        "of a type that may not be broadcast; or a payload field differs from the scope field "
        "it must match"
    ),
}

# What each sse.error code tells a client. An ErrorCode added in events.py must be described here.
ERROR_CODES = {
    ErrorCode.TOKEN_EXPIRED: "the client's access token expired; reconnect with a fresh one",
    ErrorCode.LAGGED: (
        "the client fell too far behind to queue a `high` event; the stream ends and the client "
        "resumes from its last `id:`"
    ),
    ErrorCode.SERVER_SHUTDOWN: "this router instance is stopping; reconnect and resume",
    ErrorCode.HISTORY_TRUNCATED: (
        "the `Last-Event-ID` points before the history the router still holds, or into another "
        "epoch of the bus: events may have been missed, so reload state"
    ),
    ErrorCode.INTERNAL: "an unexpected failure in the router",
    ErrorCode.RATE_LIMITED: (
        "a new stream refused: too many new streams for this user or address, or too many bad "
        "tokens from this address; the browser reconnects after the `retry:` that comes with it"
    ),
    ErrorCode.TOO_MANY_STREAMS: (
        "a new stream refused: this instance (`--max-streams`), this client address "
        "(`--max-streams-per-address`) or this user (`--max-streams-per-user`) holds its most "
        "streams already; the browser reconnects after the `retry:` that comes with it"
    ),
    ErrorCode.SHUTTING_DOWN: (
        "a new stream refused: this instance is stopping; the browser reconnects after the "
        "`retry:` that comes with it, to another instance"
    ),
    ErrorCode.REPLAY_UNAVAILABLE: (
        "a resume refused for now: the replay cache cannot be read and the bus does not hold "
        "what the client missed; the browser reconnects after the `retry:` that comes with it, "
        "and resumes exactly once the cache answers"
    ),
    ErrorCode.ACCESS_CHANGED: (
        "a back end revoked a grant this stream used (a novel, or its session); the stream ends, "
        "and the client reconnects, with a fresh token, to resume what it may still see"
    ),
    ErrorCode.DISCONNECTED: (
        "a back end disconnected this user or session (a logout, a ban); the stream ends, and "
        "the token that opened it is refused from now on: do not reconnect with it"
    ),
    ErrorCode.OVERLOADED: (
        "a new stream refused: this instance is overloaded (see the overload ladder in "
        "docs/operations.md); the browser reconnects after the spread `retry:` that comes with "
        "it, most likely to another instance"
    ),
}

# The worked example: an envelope read at partition 2, offset 105 of a Kafka source, by a client
# already served up to offset 17 of partition 0.
EXAMPLE_IDENTITY = EventIdentity("kafka", "2", (105,), epoch="Tq3x")
EXAMPLE_CURSOR = Cursor("kafka", "Tq3x", (("0", (17,)),))
EXAMPLE_ENVELOPE: dict[str, object] = {
    "event_type": "Task.ProgressUpdated",
    "event_id": "9b2f6c1e-5d0a-4c51-8f3e-2a7d1c9e4b60",
    "occurred_at": "2026-11-28T12:15:00.123456+02:00",
    "scope": {"user_id": "u1"},
    "payload": {
        "task_id": "t1",
        "progress": 40,
        "internal_notes": "retry 2 on worker-7",
    },
}


def render_mapping_doc() -> str:
    catalogue = load_catalogue()
    _check_described()
    sections = [
        _intro(),
        _table(catalogue),
        _envelope(),
        _allowlist(),
        _metadata(catalogue),
        _cursor(),
        _rejections(),
        _error_event(catalogue),
        _naming(),
    ]
    return "\n".join(sections)


def _check_described() -> None:
    missing = [p.value for p in Problem if p not in PROBLEMS]
    missing += [c.value for c in ErrorCode if c not in ERROR_CODES]
    if missing:
        raise CatalogueError(f"describe {missing} in router/codegen/mapping_doc.py")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _field(spec: Field) -> str:
    need = "required" if spec.required else "optional"
    about = f"; {spec.description}" if spec.description else ""
    return f"`{spec.name}` ({need}): {spec.summary}{about}"


def _scope(rule: MappingRule) -> str:
    parts = ["any scope, or broadcast" if rule.broadcast_allowed else "a named scope; no broadcast"]
    parts += [f"payload `{name}` must equal `scope.{name}`" for name in rule.scope_from_payload]
    return "<br>".join(parts)


def _row(*cells: str) -> str:
    return "| " + " | ".join(_cell(cell) for cell in cells) + " |\n"


def _intro() -> str:
    return (
        "# SSE event mapping\n\n"
        "<!-- Generated file: do not edit. Run `just generate` after changing router/core. -->\n\n"
        "This document is generated from `router/core/mapping.py` (`MAPPING_RULES`, with the "
        "event classes and payload schemas of `router/core/events.py`) by "
        f"{GENERATED_BY}, and `tests/test_codegen.py` fails when it is out of date. It lists "
        "every domain event a producer may publish, the SSE event it becomes, the only payload "
        "fields that reach a browser, who it may be addressed to and its priority, then the rules "
        "of the conversion. The TypeScript types in `clients/typescript/src/index.ts` are "
        "generated from the same source.\n"
    )


def _table(catalogue: Catalogue) -> str:
    rows = "".join(
        _row(
            f"`{rule.event_type}`",
            f"`{spec.name}` (v{spec.version})",
            "<br>".join(_field(field) for field in spec.fields),
            _scope(rule),
            spec.priority.name.lower(),
        )
        for rule in catalogue.rules
        for spec in [catalogue.event(rule.message_class)]
    )
    levels = {
        Priority.LOW: "when a stream falls behind, may be coalesced or dropped in favour of a "
        "newer event about the same subject",
        Priority.HIGH: "is never dropped: a stream that cannot queue it is ended, and the client "
        "resumes from its last `id:`",
    }
    legend = "".join(f"- **{p.name.lower()}**: {levels[p]}.\n" for p in Priority)
    return (
        "## Events\n\n"
        "| Producer `event_type` | SSE event | Fields kept | Scope | Priority |\n"
        "| --- | --- | --- | --- | --- |\n"
        f"{rows}\n"
        "A scope names any of "
        + ", ".join(f"`{name}`" for name in SCOPE_FIELDS)
        + ' (a client must be granted every one it names), or is `{"broadcast": true}`. '
        "Priorities:\n\n"
        f"{legend}"
    )


def _envelope() -> str:
    example = json.dumps(EXAMPLE_ENVELOPE, indent=2, ensure_ascii=False)
    scope_fields = ", ".join(f"`{name}`" for name in SCOPE_FIELDS)
    return (
        "## Conversion rules\n\n"
        "### Envelope\n\n"
        "Producers publish one JSON object per event, on any bus:\n\n"
        f"```json\n{example}\n```\n\n"
        f"- `event_type` (required): the producer's name for the event, a dotted name of at most "
        f"{MAX_EVENT_TYPE_LENGTH} characters; it selects the row of the table above.\n"
        f"- `event_id` (optional): the producer's own id, 1 to {MAX_EVENT_ID_LENGTH} characters, "
        "for idempotency: an event that repeats one of the last 10,000 events (the same id, type, "
        "scope and payload) is dropped. Ids are shared by every producer, so another event under "
        "an id seen before is delivered (and counted as `sse_event_id_reused_total`). It is not "
        "forwarded: the `event_id` a browser sees is the bus identity (see below).\n"
        "- `occurred_at` (required): when it happened, RFC 3339 with an offset or `Z`. The router "
        "sends it in UTC with microseconds (digits beyond them are cut), as `occurred_at` below.\n"
        f"- `scope` (required): any of {scope_fields}, each 1 to {MAX_SCOPE_ID_LENGTH} printable "
        'ASCII characters without spaces, or `{"broadcast": true}` alone; any other key is '
        "rejected.\n"
        "- `payload` (required): a JSON object, checked against the SSE event's fields.\n"
    )


def _allowlist() -> str:
    return (
        "### Allowlist\n\n"
        "The fields of the table are the only payload fields that leave the router. Any other "
        "payload field (`internal_notes` above, an `email`, an `api_key`...) is dropped, never "
        "sent. An optional field given as `null` counts as absent; a required one is an "
        "`invalid-payload` rejection.\n"
    )


def _metadata(catalogue: Catalogue) -> str:
    fields = "".join(f"- `{name}`: {doc}\n" for name, doc in catalogue.metadata)
    return (
        "### Metadata added to `data`\n\n"
        "The router adds these fields to the data of every event that came from a bus; they are "
        "never taken from a payload:\n\n"
        f"{fields}\n"
        "`event_id` is unique and stable (a replayed event has the same one), so a client can "
        "de-duplicate with it. The producer's own `event_id` is not forwarded.\n"
    )


def _cursor() -> str:
    batch = convert_batch([(EXAMPLE_IDENTITY, EXAMPLE_ENVELOPE)], EXAMPLE_CURSOR)
    if batch.rejected or len(batch.events) != 1:
        details = "; ".join(f"{r.problem}: {r.detail}" for r in batch.rejected)
        raise CatalogueError(f"the example envelope in mapping_doc.py is rejected: {details}")
    wire = batch.events[0].message.to_sse_format().decode()
    return (
        "### The `id:` line is a resume cursor\n\n"
        f"The example envelope, read at `{EXAMPLE_IDENTITY}` when the cursor stood at "
        f"`{EXAMPLE_CURSOR}` (partition 0 served up to offset 17), goes out as:\n\n"
        f"```text\n{wire.rstrip()}\n```\n\n"
        "The `id:` is not the event's identity but a cursor: for each partition of the source, "
        "the offset up to which the client has been served. A browser sends it back as "
        "`Last-Event-ID` when it reconnects and the router replays exactly what lies after it, "
        "partition by partition. Its grammar is in `router/core/cursor.py` "
        "(see also `docs/cursor.md`). Rejected records advance the cursor too: they are "
        "consumed, not retried.\n"
    )


def _rejections() -> str:
    items = "".join(f"- `{problem.value}`: {PROBLEMS[problem]}.\n" for problem in Problem)
    return (
        "### Rejections\n\n"
        "A record that cannot become an SSE event is rejected with one of these reasons, a "
        "bounded set fit for a metric label. Rejections are counted and logged, never sent to "
        "browsers, and never crash the router.\n\n"
        f"{items}"
    )


def _error_event(catalogue: Catalogue) -> str:
    internal = [spec for spec in catalogue.events if not spec.from_bus]
    described = "".join(
        f"#### `{spec.name}` (v{spec.version}, {spec.priority.name.lower()})\n\n"
        f"{spec.doc} It carries no metadata fields. Data:\n\n"
        + "".join(f"- {_field(field)}\n" for field in spec.fields)
        + "\n"
        for spec in internal
    )
    codes = "".join(f"- `{code.value}`: {ERROR_CODES[code]}.\n" for code in ErrorCode)
    return f"### Events of the router itself\n\n{described}Codes of `sse.error`:\n\n{codes}"


def _naming() -> str:
    return (
        "### Naming\n\n"
        "SSE events are named `domain.action-past`: a lower-case domain, a dot, and what happened "
        "in kebab-case, past tense (`task.progress-updated`, `content.updated`). Producer event "
        "types say the same in PascalCase (`Task.ProgressUpdated`). The `sse.` domain is "
        "reserved for events of the router itself (`sse.error`). Each event's payload contract "
        "has a version, the `vN` above.\n"
    )
