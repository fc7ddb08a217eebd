"""A session's hand-over to a new scope, as a state machine: what its writer must write next.

No trio and no I/O, in the way of h11's ``Connection``. The hub changes an open session's
principal or filter in two steps (:meth:`actors.hub.Hub.rescope`): :meth:`Handover.begin` when the
session takes the new scope, then :meth:`Handover.finish` once the replay of what that scope
admits since the client's cursor is fetched, with the transport's answer to write after it. A
revocation narrows a session in one step (:meth:`Handover.narrow`, :meth:`actors.hub.Hub.apply`)
with the transport's notice of it, and nothing to replay. The writer asks :attr:`Handover.holding`
whether it must write nothing for now, and :meth:`Handover.take` what to write before anything
else.

The rules (``tests/test_handover.py`` checks them over any interleaving):

- from a :meth:`~Handover.begin` until its :meth:`~Handover.finish`, the writer writes nothing
  (not even a change finished before it): the inbox's events wait for the new scope's replay,
  so a widened scope has no gap. That replay, fetched from the cursor the begin found, holds
  all an earlier change's would have written, so only the later one is written;
- every answer and every notice is written once, in the order the calls gave them;
- a second change finished before the writer took the first replaces its replay (fetched from
  the same cursor or a later one, up to a later position) and keeps both answers.
"""

from __future__ import annotations

from dataclasses import dataclass

from router.core.cursor import Cursor
from router.core.history import Replay

__all__ = ["Change", "Handover"]


@dataclass(frozen=True, slots=True)
class Change:
    """What the writer writes before anything else: the replay of what the new scope admits
    since the client's cursor (none for a narrowing), the router's position it was fetched up
    to, then ``answers`` (the transport's chunks: answers to the client, notices of a
    narrowing)."""

    replay: Replay | None
    position: Cursor | None
    answers: tuple[object, ...]


class Handover:
    """A session's changes of scope under way. Every method returns at once and allocates only
    when a change is made (never on the writer's or the adapter's hot path)."""

    __slots__ = ("_fetching", "_notices", "_ready")

    def __init__(self) -> None:
        self._fetching = False
        """A change began and its replay is being fetched."""
        self._ready: Change | None = None
        """A change the writer has not taken yet."""
        self._notices: tuple[object, ...] = ()
        """Notices of narrowings made while a replay was fetched: written with its answer."""

    @property
    def holding(self) -> bool:
        """Whether the writer must write nothing now: a change's replay is being fetched."""
        return self._fetching

    def begin(self) -> None:
        """The session took a new scope; its replay is being fetched."""
        self._fetching = True

    def finish(self, replay: Replay | None, position: Cursor | None, then: object = None) -> None:
        """The replay :meth:`begin` waited for, and ``then`` (if not ``None``) to write after it,
        after every answer and notice given before."""
        earlier = () if self._ready is None else self._ready.answers
        notices, self._notices = self._notices, ()
        answers = (*earlier, *notices, *(() if then is None else (then,)))
        self._ready = Change(replay, position, answers)
        self._fetching = False

    def narrow(self, notice: object) -> None:
        """The session's principal was narrowed: ``notice`` is written before the next event,
        or with the answer of a change under way (nothing to replay: a narrowing admits nothing
        new)."""
        ready = self._ready
        if ready is not None:
            self._ready = Change(ready.replay, ready.position, (*ready.answers, notice))
        elif self._fetching:
            self._notices += (notice,)
        else:
            self._ready = Change(None, None, (notice,))

    def take(self) -> Change | None:
        """The change to write now, before anything else, or ``None`` (always while
        :attr:`holding`)."""
        if self._fetching:
            return None
        ready, self._ready = self._ready, None
        return ready
