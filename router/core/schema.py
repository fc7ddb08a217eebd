"""Payload schemas: the fields an event may carry out of the router, and what each must hold.

A schema is both a validator and an allowlist. :meth:`PayloadSchema.validate` keeps only the fields
the schema names, so anything else a producer put in the payload (``internal_notes``, ``email``,
``api_key``...) never reaches a browser. The same declarations generate the TypeScript types and the
mapping document, so the three cannot drift apart.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

from router.core.sse import JSONValue

MAX_ID_LENGTH = 256
MAX_TEXT_LENGTH = 10_000


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _shown(value: object) -> str:
    """A short repr, safe for any value (repr of an int over 4300 digits raises ValueError)."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class PayloadError(ValueError):
    """A payload that does not satisfy its schema; the message names the field."""


@dataclass(frozen=True, slots=True)
class Field:
    """One payload field. Subclasses say what values it admits and how TypeScript spells it."""

    name: str
    required: bool = True
    description: str = ""

    def check(self, value: JSONValue) -> JSONValue:
        raise NotImplementedError

    @property
    def typescript(self) -> str:
        raise NotImplementedError

    @property
    def summary(self) -> str:
        """The field's type and constraints in a few words, for the mapping document."""
        raise NotImplementedError

    def _fail(self, expected: str, value: object) -> PayloadError:
        return PayloadError(f"payload field {self.name!r} must be {expected}, got {_shown(value)}")


@dataclass(frozen=True, slots=True)
class Text(Field):
    """A string of bounded length; ``identifier`` strings must also be non-empty and short."""

    identifier: bool = False

    @property
    def max_length(self) -> int:
        return MAX_ID_LENGTH if self.identifier else MAX_TEXT_LENGTH

    def check(self, value: JSONValue) -> JSONValue:
        if not isinstance(value, str):
            raise self._fail("a string", value)
        if self.identifier and not value.strip():
            raise self._fail("a non-blank identifier", value)
        if len(value) > self.max_length:
            raise PayloadError(
                f"payload field {self.name!r} is {len(value)} characters long; "
                f"the limit is {self.max_length}"
            )
        return value

    @property
    def typescript(self) -> str:
        return "string"

    @property
    def summary(self) -> str:
        kind = "identifier" if self.identifier else "string"
        return f"{kind}, at most {self.max_length} characters"


@dataclass(frozen=True, slots=True)
class Number(Field):
    """A finite number within ``[minimum, maximum]``; ``integer`` forbids fractions."""

    minimum: float | None = None
    maximum: float | None = None
    integer: bool = False

    def check(self, value: JSONValue) -> JSONValue:
        # bool is an int in Python but not a number in JSON.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._fail("an integer" if self.integer else "a number", value)
        if isinstance(value, float) and not math.isfinite(value):
            raise self._fail("a finite number", value)
        if self.integer and not isinstance(value, int):
            if not value.is_integer():
                raise self._fail("an integer", value)
            value = int(value)
        if self.minimum is not None and value < self.minimum:
            raise self._fail(f"at least {_number_text(self.minimum)}", value)
        if self.maximum is not None and value > self.maximum:
            raise self._fail(f"at most {_number_text(self.maximum)}", value)
        return value

    @property
    def typescript(self) -> str:
        return "number"

    @property
    def summary(self) -> str:
        kind = "integer" if self.integer else "number"
        low, high = self.minimum, self.maximum
        if low is not None and high is not None:
            return f"{kind}, {_number_text(low)} to {_number_text(high)}"
        if low is not None:
            return f"{kind}, at least {_number_text(low)}"
        if high is not None:
            return f"{kind}, at most {_number_text(high)}"
        return kind


@dataclass(frozen=True, slots=True)
class Boolean(Field):
    def check(self, value: JSONValue) -> JSONValue:
        if not isinstance(value, bool):
            raise self._fail("true or false", value)
        return value

    @property
    def typescript(self) -> str:
        return "boolean"

    @property
    def summary(self) -> str:
        return "boolean"


@dataclass(frozen=True, slots=True)
class Choice(Field):
    """One string out of a fixed set."""

    choices: tuple[str, ...] = ()

    def check(self, value: JSONValue) -> JSONValue:
        if value not in self.choices:
            raise self._fail(f"one of {', '.join(self.choices)}", value)
        return value

    @property
    def typescript(self) -> str:
        return " | ".join(json.dumps(choice) for choice in self.choices)

    @property
    def summary(self) -> str:
        return "one of " + ", ".join(f"`{choice}`" for choice in self.choices)


@dataclass(frozen=True, slots=True)
class PayloadSchema:
    fields: tuple[Field, ...]

    def __post_init__(self) -> None:
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate field names in schema: {names}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def validate(self, payload: Mapping[str, JSONValue]) -> dict[str, JSONValue]:
        """The allowlisted, checked payload. An optional field given as null counts as absent."""
        if type(payload) is not dict and not isinstance(payload, Mapping):
            raise PayloadError(f"payload must be a JSON object, got {type(payload).__name__}")
        clean: dict[str, JSONValue] = {}
        for spec in self.fields:
            value = payload.get(spec.name)
            if value is None:
                if spec.required:
                    raise PayloadError(f"payload field {spec.name!r} is required")
                continue
            clean[spec.name] = spec.check(value)
        return clean
