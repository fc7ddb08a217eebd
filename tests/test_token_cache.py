"""The cache of verified tokens, alone (router/core/token_cache.py); through the front door, with
the controls still applied to a cached token: tests/test_admission.py."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.core.token_cache import TokenCache


def test_a_token_is_answered_until_its_expiry_and_not_at_it() -> None:
    cache: TokenCache[str] = TokenCache(10)
    cache.put("token-a", "grants of a", until=100.0)
    assert cache.get("token-a", now=99.9) == "grants of a"
    assert cache.get("token-a", now=100.0) is None
    assert len(cache) == 0  # an expired entry is forgotten when met
    assert (cache.hits, cache.misses) == (1, 1)


def test_an_unknown_token_is_a_miss() -> None:
    cache: TokenCache[str] = TokenCache(10)
    cache.put("token-a", "grants of a", until=100.0)
    assert cache.get("token-b", now=0.0) is None
    assert (cache.hits, cache.misses) == (0, 1)


def test_past_its_capacity_the_least_recently_used_token_goes_first() -> None:
    cache: TokenCache[str] = TokenCache(2)
    cache.put("a", "A", until=100.0)
    cache.put("b", "B", until=100.0)
    assert cache.get("a", now=0.0) == "A"  # b is now the least recently used
    cache.put("c", "C", until=100.0)
    assert len(cache) == 2
    assert cache.get("b", now=0.0) is None
    assert (cache.get("a", now=0.0), cache.get("c", now=0.0)) == ("A", "C")


def test_a_cache_of_capacity_zero_remembers_nothing() -> None:
    cache: TokenCache[str] = TokenCache(0)
    cache.put("a", "A", until=100.0)
    assert len(cache) == 0
    assert cache.get("a", now=0.0) is None


def test_a_negative_capacity_is_refused() -> None:
    with pytest.raises(ValueError, match="zero or more"):
        TokenCache(-1)


def test_the_cache_holds_digests_not_tokens() -> None:
    cache: TokenCache[str] = TokenCache(10)
    token = "eyJhbGciOiJIUzI1NiJ9.secret-part.signature"
    cache.put(token, "grants", until=100.0)
    assert all(token.encode() not in key and len(key) == 32 for key in cache._entries)


@given(
    st.integers(min_value=0, max_value=5),
    st.lists(
        st.tuples(st.sampled_from("abcdefgh"), st.floats(0, 100), st.floats(0, 100), st.booleans()),
        max_size=60,
    ),
)
def test_never_more_than_its_capacity_and_never_past_an_expiry(
    capacity: int, steps: list[tuple[str, float, float, bool]]
) -> None:
    cache: TokenCache[tuple[str, float]] = TokenCache(capacity)
    for token, until, now, putting in steps:
        if putting:
            cache.put(token, (token, until), until)
        else:
            answer = cache.get(token, now)
            assert answer is None or (answer[0] == token and now < answer[1])
        assert len(cache) <= capacity
