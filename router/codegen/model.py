"""The event catalogue the generators read, taken from :mod:`router.core` and checked.

Everything the generated files say comes from here, so the TypeScript types and the mapping
document describe the same events in the same order. A catalogue the core could not honour (an
event class missing from ``EVENT_CLASSES``, a payload field that would overwrite metadata...)
raises :class:`CatalogueError` instead of producing a wrong file.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass

from router.core.events import EVENT_CLASSES, METADATA_FIELDS, DomainEvent
from router.core.mapping import MAPPING_RULES, MappingRule
from router.core.schema import Field
from router.core.scope import SCOPE_FIELDS
from router.core.sse import Priority

GENERATED_BY = "`just generate` (python -m router.codegen)"

# What each metadata field holds. A field added to METADATA_FIELDS must be described here.
METADATA_DESCRIPTIONS = {
    "event_id": "The event's identity on its bus: `{source}[@{epoch}]:{partition}:{offset}`.",
    "occurred_at": (
        "When the event happened: the envelope's `occurred_at` in UTC with six fractional digits "
        "(`2026-11-28T10:15:00.123456Z`), the producer's precision kept to the microsecond, so "
        "two of them compare as text in the order of time."
    ),
}


class CatalogueError(ValueError):
    """The contracts in router.core contradict each other; the message says where."""


@dataclass(frozen=True, slots=True)
class EventSpec:
    """One SSE event the router emits."""

    message_class: type[DomainEvent]
    from_bus: bool  # mapped from a producer's event, so its data carries the metadata fields

    @property
    def name(self) -> str:
        return self.message_class.EVENT

    @property
    def fields(self) -> tuple[Field, ...]:
        return self.message_class.SCHEMA.fields

    @property
    def priority(self) -> Priority:
        return self.message_class.PRIORITY

    @property
    def version(self) -> int:
        return self.message_class.VERSION

    @property
    def doc(self) -> str:
        return docstring(self.message_class)

    @property
    def payload_type(self) -> str:
        """The TypeScript interface name: ``TaskProgressEvent`` gives ``TaskProgressPayload``."""
        return self.message_class.__name__.removesuffix("Event") + "Payload"

    def field(self, name: str) -> Field | None:
        return next((spec for spec in self.fields if spec.name == name), None)


@dataclass(frozen=True, slots=True)
class Catalogue:
    events: tuple[EventSpec, ...]  # in EVENT_CLASSES order
    rules: tuple[MappingRule, ...]  # in MAPPING_RULES order

    def event(self, message_class: type[DomainEvent]) -> EventSpec:
        return next(spec for spec in self.events if spec.message_class is message_class)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """``(name, description)`` of each metadata field, in METADATA_FIELDS order."""
        return tuple((name, METADATA_DESCRIPTIONS[name]) for name in METADATA_FIELDS)


def docstring(obj: object) -> str:
    """The first paragraph of ``obj``'s docstring on one line, reST literals made Markdown."""
    text = inspect.getdoc(obj) or ""
    paragraph = text.split("\n\n", 1)[0]
    return " ".join(paragraph.split()).replace("``", "`")


def load_catalogue() -> Catalogue:
    mapped = {rule.message_class for rule in MAPPING_RULES}
    events = tuple(EventSpec(cls, from_bus=cls in mapped) for cls in EVENT_CLASSES)
    catalogue = Catalogue(events, MAPPING_RULES)
    _check(catalogue)
    return catalogue


def _check(catalogue: Catalogue) -> None:
    problems: list[str] = []
    names = [spec.name for spec in catalogue.events]
    if len(set(names)) != len(names):
        problems.append(f"EVENT_CLASSES has duplicate event names: {names}")
    types = [rule.event_type for rule in catalogue.rules]
    if len(set(types)) != len(types):
        problems.append(f"MAPPING_RULES has duplicate event types: {types}")
    undescribed = sorted(set(METADATA_FIELDS) - set(METADATA_DESCRIPTIONS))
    if undescribed:
        problems.append(f"describe metadata fields {undescribed} in router/codegen/model.py")
    for spec in catalogue.events:
        clash = sorted(set(spec.message_class.SCHEMA.names) & set(METADATA_FIELDS))
        if clash:
            problems.append(f"{spec.name} payload fields {clash} would overwrite metadata")
        if not re.fullmatch(r"[A-Za-z_$][\w$]*", spec.payload_type):
            problems.append(f"{spec.message_class.__name__} gives no TypeScript type name")
    known = {spec.message_class for spec in catalogue.events}
    for rule in catalogue.rules:
        if rule.message_class not in known:
            problems.append(f"{rule.event_type} maps to a class missing from EVENT_CLASSES")
            continue
        spec = catalogue.event(rule.message_class)
        for name in rule.scope_from_payload:
            if name not in SCOPE_FIELDS or spec.field(name) is None:
                problems.append(
                    f"{rule.event_type} matches {name!r} against the scope, but it is not both "
                    f"a scope field {SCOPE_FIELDS} and a field of {spec.name}"
                )
    if problems:
        raise CatalogueError("; ".join(problems))
