"""Which sessions an event may be for, found by index rather than by scanning every session.

An event names a user, a novel, a session, or is a broadcast. Each session is indexed by its user,
by each novel it may receive (its filter's novels, else all its token grants), and by its token's
session id; an event's candidates come from the index of the first field it names. Candidates are
then checked in full (:func:`router.core.permissions.admits`), so the index only has to be a
superset of the truth, never exact.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Collection, Iterator
from contextlib import contextmanager

from actors.session import Session
from router.core.admission import OpenStreams, address_group
from router.core.scope import Scope


class SessionRegistry:
    def __init__(self) -> None:
        # In the order sessions connected, which most likely follows where their objects lie in
        # memory: a broadcast offers, wakes and writes them in that order (measured at 10,000
        # streams: p50 and p99 about 15 % lower than in a set's order).
        self._all: dict[Session, None] = {}
        self._by_user: defaultdict[str, set[Session]] = defaultdict(set)
        self._by_novel: defaultdict[str, set[Session]] = defaultdict(set)
        self._by_session: defaultdict[str, set[Session]] = defaultdict(set)
        # Counted, not indexed: no event is routed by its client's address.
        self._from_address: Counter[str] = Counter()
        # Admitted streams the hub is still making (see opening()), counted as open.
        self._opening = 0
        self._opening_by_user: Counter[str] = Counter()
        self._opening_by_address: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._all)

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._all))

    def count_for_user(self, user_id: str) -> int:
        return len(self._by_user.get(user_id, ()))

    def count_from_address(self, address: str) -> int:
        """Streams open from ``address``'s group (an IPv6 address's /64; see
        :func:`router.core.admission.address_group`)."""
        return self._from_address[address_group(address)]

    def open_streams(self, user_id: str, address: str) -> OpenStreams:
        """What the front door's stream caps count: the streams open here, from ``address``, and
        of ``user_id``, those still being opened included."""
        group = address_group(address)
        return OpenStreams(
            len(self) + self._opening,
            self.count_from_address(address) + self._opening_by_address[group],
            self.count_for_user(user_id) + self._opening_by_user[user_id],
        )

    @contextmanager
    def opening(self, user_id: str, address: str) -> Iterator[None]:
        """Count an admitted stream as open while the hub, before registering it, waits (on
        the bus, to vouch for its cursor)."""
        group = address_group(address)
        self._opening += 1
        self._opening_by_user[user_id] += 1
        self._opening_by_address[group] += 1
        try:
            yield
        finally:
            self._opening -= 1
            held = ((self._opening_by_user, user_id), (self._opening_by_address, group))
            for counts, key in held:
                counts[key] -= 1
                if not counts[key]:
                    del counts[key]

    def _keys(self, session: Session) -> list[tuple[defaultdict[str, set[Session]], str]]:
        principal, stream_filter = session.principal, session.stream_filter
        novels = stream_filter.novel_ids or principal.novels
        keys = [(self._by_user, principal.user_id)]
        keys += [(self._by_novel, novel) for novel in novels]
        if principal.session_id is not None:
            keys.append((self._by_session, principal.session_id))
        return keys

    def add(self, session: Session) -> None:
        if session in self._all:
            return
        self._all[session] = None
        self._from_address[address_group(session.address)] += 1
        for index, key in self._keys(session):
            index[key].add(session)

    def remove(self, session: Session) -> None:
        if session not in self._all:
            return
        del self._all[session]
        group = address_group(session.address)
        self._from_address[group] -= 1
        if not self._from_address[group]:
            del self._from_address[group]
        for index, key in self._keys(session):
            members = index.get(key)
            if members is not None:
                members.discard(session)
                if not members:
                    del index[key]

    def candidates(self, scope: Scope) -> Collection[Session]:
        if scope.broadcast:
            return self._all
        if scope.user_id is not None:
            return self._by_user.get(scope.user_id, ())
        if scope.novel_id is not None:
            return self._by_novel.get(scope.novel_id, ())
        if scope.session_id is not None:
            return self._by_session.get(scope.session_id, ())
        return ()
