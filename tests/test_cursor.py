"""Event identities and resume cursors: the grammar, its one spelling, and what a cursor covers."""

from __future__ import annotations

import base64
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.core.cursor import (
    _CHECKED_PLACES,
    MAX_CURSOR_LENGTH,
    MAX_OFFSET,
    MOST_CHECKED_PLACES,
    Cursor,
    CursorError,
    EventIdentity,
    Offset,
    check_epoch,
    check_offset,
    check_partition,
    check_source,
    longest_cursor,
    parse_cursor,
    parse_identity,
)

QUICK = settings(deadline=None, database=None)


# --- Round trips and the one spelling ----------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "kafka@Tq3x:2:105",
        "kafka:2:105",
        "memory@e:0:0",
        "kafka@run-2_b:0:1,1:5,2:9,10:3",
        "redis@e:events:1700000000000-0",
        "redis@e:events:1700000000000-3,o:5-0",
        f"kafka@e:0:{MAX_OFFSET}",
        f"redis@e:s:0-{MAX_OFFSET}",
        "a:A.b_c-9:0",
        "x-1@" + "E" * 32 + ":" + "p" * 64 + ":1",
    ],
)
def test_a_canonical_cursor_reads_back_unchanged(text: str) -> None:
    cursor = parse_cursor(text)
    assert str(cursor) == text
    assert parse_cursor(str(cursor)) == cursor


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("kafka@e:10:1,2:1,1:1", "kafka@e:1:1,2:1,10:1"),
        ("kafka@e:b:1,10:1,a:1,9:1", "kafka@e:9:1,10:1,a:1,b:1"),
        ("kafka@e:B:1,a:1,A:1,_:1,-:1", "kafka@e:-:1,A:1,B:1,_:1,a:1"),
        ("kafka@e:01:1,1:2,001:3", "kafka@e:001:3,01:1,1:2"),
    ],
)
def test_partitions_are_printed_numeric_first_numerically_then_by_name(
    text: str, canonical: str
) -> None:
    cursor = parse_cursor(text)
    assert str(cursor) == canonical
    assert cursor == parse_cursor(canonical)


def test_the_order_of_positions_given_does_not_matter() -> None:
    one = Cursor("kafka", "e", (("1", (5,)), ("01", (6,)), ("a", (7,))))
    two = Cursor("kafka", "e", (("a", (7,)), ("01", (6,)), ("1", (5,))))
    assert one == two
    assert str(one) == str(two) == "kafka@e:01:6,1:5,a:7"
    assert Cursor.from_positions("kafka", "e", reversed(one.positions)) == one


def test_the_seed_form_with_and_without_an_epoch() -> None:
    seed = parse_identity("kafka:2:105")
    assert seed == EventIdentity("kafka", "2", (105,))
    assert seed.epoch is None
    assert str(seed) == "kafka:2:105"
    live = parse_identity("kafka@Tq3x:2:105")
    assert live == EventIdentity("kafka", "2", (105,), "Tq3x")
    assert str(live) == "kafka@Tq3x:2:105"
    assert parse_cursor("kafka:2:105").epoch is None
    assert parse_cursor("kafka@Tq3x:2:105").epoch == "Tq3x"


def test_redis_style_offsets_have_two_parts_and_order_as_pairs() -> None:
    entry = parse_identity("redis@e:events:1700000000000-0")
    assert entry.offset == (1700000000000, 0)
    assert str(entry) == "redis@e:events:1700000000000-0"
    cursor = parse_cursor("redis@e:events:1700000000000-1")
    assert cursor.covers(entry)
    assert cursor.covers(parse_identity("redis@e:events:1699999999999-9"))
    assert not cursor.covers(parse_identity("redis@e:events:1700000000000-2"))
    assert not cursor.covers(parse_identity("redis@e:events:1700000000001-0"))


def test_parse_identity_requires_exactly_one_position() -> None:
    with pytest.raises(CursorError, match="an event identity names exactly one partition"):
        parse_identity("kafka@e:0:1,1:2")
    assert parse_identity("kafka@e:7:1").partition == "7"


def test_cursor_of_an_identity_and_its_positions() -> None:
    ident = EventIdentity("kafka", "3", (9,), "e")
    cursor = Cursor.of(ident)
    assert str(cursor) == str(ident) == "kafka@e:3:9"
    assert cursor.position("3") == (9,)
    assert cursor.position("4") is None
    assert parse_identity(str(ident)) == ident


def test_twelve_kafka_partitions_fit_comfortably_in_a_header() -> None:
    cursor = Cursor.from_positions(
        "kafka", "E" * 12, [(str(p), (1_000_000_000 + p,)) for p in range(12)]
    )
    assert len(str(cursor).encode()) < 200
    assert parse_cursor(str(cursor)) == cursor


# --- Rejections --------------------------------------------------------------------------------

REJECTED: list[tuple[str, str]] = [
    ("", "a cursor looks like source[@epoch]:partition:offset, got ''"),
    ("kafka", "a cursor looks like source[@epoch]:partition:offset, got 'kafka'"),
    ("kafka@e", "a cursor looks like source[@epoch]:partition:offset"),
    ("kafka:0:1,", "each position looks like partition:offset, got ''"),
    ("kafka:0", "each position looks like partition:offset, got '0'"),
    ("kafka:0:", "offset must be a non-negative integer without leading zeros, or two joined by"),
    ("kafka::1", "partition must be 1 to 64 of A-Z a-z 0-9 . _ -, got ''"),
    (":0:1", "source must be a lower-case name of at most 16 characters, got ''"),
    ("kafka:0:1,", "each position looks like partition:offset, got ''"),
    (",kafka:0:1", "source must be a lower-case name"),
    ("kafka:,0:1", "each position looks like partition:offset, got ''"),
    ("kafka:0:1,,1:2", "each position looks like partition:offset, got ''"),
    ("kafka:0:1;1:2", "offset must be a non-negative integer"),
    ("kafka\t:0:1", "a cursor is printable ASCII: no control characters, spaces or Unicode"),
    ("kafka:0:1\n", "a cursor is printable ASCII"),
    ("kafka:0:1\r", "a cursor is printable ASCII"),
    ("kafka:0:\x001", "a cursor is printable ASCII"),
    ("kafka:0:1\x7f", "a cursor is printable ASCII"),
    ("kafka:0:1 ", "a cursor is printable ASCII: no control characters, spaces or Unicode"),
    (" kafka:0:1", "a cursor is printable ASCII"),
    ("kafka:0:1, 1:2", "a cursor is printable ASCII"),
    ("kafka:0:1\u00a0", "a cursor is printable ASCII"),
    ("kafka:é:1", "a cursor is printable ASCII"),
    ("kafka:0:\uff11", "a cursor is printable ASCII"),
    ("kafka:0:-1", "offset must be a non-negative integer without leading zeros"),
    ("kafka:0:01", "offset must be a non-negative integer without leading zeros"),
    ("kafka:0:00", "offset must be a non-negative integer without leading zeros"),
    ("kafka:0:1-01", "offset must be a non-negative integer without leading zeros"),
    ("kafka:0:+1", "offset must be a non-negative integer"),
    ("kafka:0:abc", "offset must be a non-negative integer"),
    ("kafka:0:1e3", "offset must be a non-negative integer"),
    ("kafka:0:0x10", "offset must be a non-negative integer"),
    ("kafka:0:1.5", "offset must be a non-negative integer"),
    ("kafka:0:1-", "offset must be a non-negative integer"),
    ("kafka:0:-", "offset must be a non-negative integer"),
    ("kafka:0:1:2", "offset must be a non-negative integer"),
    ("kafka:0:1-2-3", "offset must be a non-negative integer without leading zeros, or two joined"),
    (f"kafka:0:{MAX_OFFSET + 1}", "offset '9223372036854775808' is larger than 2^63 - 1"),
    (f"kafka:0:1-{MAX_OFFSET + 1}", "offset '1-9223372036854775808' is larger than 2^63 - 1"),
    (f"kafka:0:{10**19}", "is larger than 2^63 - 1"),
    ("kafka:0:" + "9" * 20, "offset '99999999999999999999' is larger than 2^63 - 1"),
    ("kafka:0:" + "9" * 5000, "offset '" + "9" * 40 + "...' is larger than 2^63 - 1"),
    ("kafka:0:1,0:2", "a cursor names each partition once"),
    ("kafka:a:1,1:2,a:1", "a cursor names each partition once"),
    ("Kafka:0:1", "source must be a lower-case name of at most 16 characters, got 'Kafka'"),
    ("1kafka:0:1", "source must be a lower-case name"),
    ("-kafka:0:1", "source must be a lower-case name"),
    ("ka_fka:0:1", "source must be a lower-case name"),
    ("k" * 17 + ":0:1", "source must be a lower-case name of at most 16 characters"),
    ("kafka@:0:1", "epoch must be 1 to 32 of A-Z a-z 0-9 _ -, got ''"),
    ("kafka@" + "e" * 33 + ":0:1", "epoch must be 1 to 32 of A-Z a-z 0-9 _ -"),
    ("kafka@e.1:0:1", "epoch must be 1 to 32 of A-Z a-z 0-9 _ -, got 'e.1'"),
    ("kafka@a@b:0:1", "epoch must be 1 to 32 of A-Z a-z 0-9 _ -, got 'a@b'"),
    ("@e:0:1", "source must be a lower-case name"),
    ("kafka:p/1:1", "partition must be 1 to 64 of A-Z a-z 0-9 . _ -, got 'p/1'"),
    ("kafka:p@1:1", "partition must be 1 to 64 of A-Z a-z 0-9 . _ -"),
    ("kafka:" + "p" * 65 + ":1", "partition must be 1 to 64 of A-Z a-z 0-9 . _ -"),
]


@pytest.mark.parametrize(("text", "message"), REJECTED, ids=lambda v: repr(v)[:40])
def test_malformed_cursors_are_rejected_with_a_clear_message(text: str, message: str) -> None:
    with pytest.raises(CursorError) as caught:
        parse_cursor(text)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    "text",
    [
        "kafka:0:" + "1" * (MAX_CURSOR_LENGTH - 7),  # one byte too long
        "kafka:" + ",".join(f"{p}:1" for p in range(3000)),
        "kafka@e:~" + "A" * (MAX_CURSOR_LENGTH - 8),
        "é" * (MAX_CURSOR_LENGTH // 2 + 1),  # under the limit in characters, over it in bytes
        "\ud800" * (MAX_CURSOR_LENGTH // 3 + 1),
    ],
    ids=["long-offset", "many-partitions", "long-compact", "multibyte", "surrogates"],
)
def test_cursors_over_the_length_limit_are_rejected_first(text: str) -> None:
    with pytest.raises(CursorError, match=f"^a cursor is at most {MAX_CURSOR_LENGTH} bytes$"):
        parse_cursor(text)


def test_a_cursor_exactly_at_the_length_limit_is_accepted() -> None:
    text = "kafka:" + "".join(f"p{i:04}:{MAX_OFFSET}," for i in range(628))
    text += "z" * (MAX_CURSOR_LENGTH - len(text) - 2) + ":1"
    assert len(text) == MAX_CURSOR_LENGTH
    assert parse_cursor(text).text_form() == text
    with pytest.raises(CursorError, match="at most"):
        parse_cursor(text + "0")


def test_a_cursor_the_router_builds_is_never_refused_for_its_length() -> None:
    """The bound is for what clients send; the router's own cursors are sized against it once,
    at start, for the bus's partitions (see longest_cursor): an event never fails on it."""
    positions = tuple((f"p{i:063}", (MAX_OFFSET,)) for i in range(400))
    cursor = Cursor("kafka", "e", positions)
    assert len(str(cursor)) > MAX_CURSOR_LENGTH
    assert cursor.advance(EventIdentity("kafka", "q", (1,), "e")).position("q") == (1,)


def test_a_cursor_is_text() -> None:
    with pytest.raises(CursorError, match="a cursor is text, got bytes"):
        parse_cursor(b"kafka:0:1")  # type: ignore[arg-type]


def test_a_cursor_of_no_position_is_the_start_of_its_epoch() -> None:
    start = Cursor.empty("kafka", "e")
    assert str(start) == "kafka@e:"
    assert parse_cursor("kafka@e:") == start
    assert start.is_from("kafka", "e")
    assert not start.covers(parse_identity("kafka@e:0:0"))
    assert start.advance(parse_identity("kafka@e:2:7")) == parse_cursor("kafka@e:2:7")
    assert start.merge(parse_cursor("kafka@e:1:3")) == parse_cursor("kafka@e:1:3")
    assert parse_cursor("kafka@e:1:3").merge(start) == parse_cursor("kafka@e:1:3")
    with pytest.raises(CursorError, match="exactly one partition"):
        parse_identity("kafka@e:")


@pytest.mark.parametrize(
    "offset",
    [(), (1, 2, 3), (-1,), (MAX_OFFSET + 1,), (True,), (1.0,), ("1",), (1, -1)],
    ids=repr,
)
def test_identities_check_their_offset(offset: Offset) -> None:
    with pytest.raises(CursorError, match=r"offset must be one or two integers in 0\.\.2\^63-1"):
        EventIdentity("kafka", "0", offset, "e")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"source": "Kafka"}, "source must be a lower-case name"),
        ({"epoch": ""}, "epoch must be 1 to 32"),
        ({"epoch": "e e"}, "epoch must be 1 to 32"),
        ({"partition": ""}, "partition must be 1 to 64"),
        ({"partition": "0 "}, "partition must be 1 to 64"),
    ],
    ids=repr,
)
def test_identities_check_their_parts(kwargs: dict[str, str], message: str) -> None:
    fields = {"source": "kafka", "partition": "0", "offset": (1,), "epoch": "e", **kwargs}
    with pytest.raises(CursorError, match=message):
        EventIdentity(**fields)  # type: ignore[arg-type]


# --- is_from, covers, advance ------------------------------------------------------------------


def test_is_from_needs_the_same_source_and_a_known_equal_epoch() -> None:
    assert parse_cursor("kafka@e1:0:1").is_from("kafka", "e1")
    assert not parse_cursor("kafka@e1:0:1").is_from("kafka", "e2")
    assert not parse_cursor("kafka@e1:0:1").is_from("redis", "e1")
    assert not parse_cursor("kafka:0:1").is_from("kafka", "e1")


def test_covers() -> None:
    cursor = parse_cursor("kafka@e:0:10,1:5")
    assert cursor.covers(parse_identity("kafka@e:0:10"))
    assert cursor.covers(parse_identity("kafka@e:0:0"))
    assert not cursor.covers(parse_identity("kafka@e:0:11"))
    assert not cursor.covers(parse_identity("kafka@e:2:0"))  # nothing served from partition 2
    assert not cursor.covers(parse_identity("kafka@f:0:1"))  # another epoch
    assert not cursor.covers(parse_identity("kafka:0:1"))  # no epoch
    assert not cursor.covers(parse_identity("redis@e:0:1"))  # another source
    assert parse_cursor("kafka:0:10").covers(parse_identity("kafka:0:3"))


def test_advance_moves_one_partition_forward() -> None:
    cursor = parse_cursor("kafka@e:0:10,1:5")
    assert str(cursor.advance(parse_identity("kafka@e:1:6"))) == "kafka@e:0:10,1:6"
    assert str(cursor.advance(parse_identity("kafka@e:2:0"))) == "kafka@e:0:10,1:5,2:0"
    assert str(cursor) == "kafka@e:0:10,1:5"  # cursors are values


@pytest.mark.parametrize("older", ["kafka@e:0:9", "kafka@e:0:10", "kafka@e:0:0"])
def test_advance_to_an_offset_already_served_is_a_no_op(older: str) -> None:
    cursor = parse_cursor("kafka@e:0:10,1:5")
    assert cursor.advance(parse_identity(older)) is cursor


@pytest.mark.parametrize(
    ("identity", "message"),
    [
        ("kafka@f:0:11", "cannot advance a cursor of kafka@e with an event of kafka@f"),
        ("kafka:0:11", "cannot advance a cursor of kafka@e with an event of kafka"),
        ("redis@e:0:11", "cannot advance a cursor of kafka@e with an event of redis@e"),
    ],
)
def test_advance_refuses_another_source_or_epoch(identity: str, message: str) -> None:
    with pytest.raises(CursorError, match=f"^{message}$"):
        parse_cursor("kafka@e:0:10").advance(parse_identity(identity))


# --- Properties --------------------------------------------------------------------------------

sources = st.from_regex(r"[a-z][a-z0-9-]{0,15}", fullmatch=True)
epochs = st.none() | st.from_regex(r"[A-Za-z0-9_-]{1,32}", fullmatch=True)
partitions = st.one_of(
    st.integers(0, 300).map(str),
    st.sampled_from(["0", "00", "01", "1", "10", "a", "A", "_", "-", "."]),
    st.from_regex(r"[A-Za-z0-9._-]{1,12}", fullmatch=True),
)
numbers = st.integers(0, MAX_OFFSET) | st.integers(0, 20)
offsets: st.SearchStrategy[Offset] = st.tuples(numbers) | st.tuples(numbers, numbers)
positions = st.lists(
    st.tuples(partitions, offsets), min_size=1, max_size=6, unique_by=lambda p: p[0]
)
cursors = st.builds(Cursor, source=sources, epoch=epochs, positions=positions.map(tuple))


@QUICK
@given(cursors)
def test_every_cursor_reads_back_as_itself(cursor: Cursor) -> None:
    text = str(cursor)
    assert len(text) <= MAX_CURSOR_LENGTH
    assert parse_cursor(text) == cursor
    assert str(parse_cursor(text)) == text


@QUICK
@given(sources, epochs, positions, st.data())
def test_every_order_of_positions_has_one_spelling(
    source: str, epoch: str | None, given: list[tuple[str, Offset]], data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(given))
    one = Cursor(source, epoch, tuple(given))
    two = Cursor(source, epoch, tuple(shuffled))
    assert one == two
    assert str(one) == str(two)


@QUICK
@given(st.builds(EventIdentity, source=sources, partition=partitions, offset=offsets, epoch=epochs))
def test_every_identity_reads_back_as_itself(identity: EventIdentity) -> None:
    assert parse_identity(str(identity)) == identity
    assert Cursor.of(identity).covers(identity)


@QUICK
@given(cursors, st.data())
def test_advance_covers_what_it_was_given_and_all_it_covered(
    cursor: Cursor, data: st.DataObject
) -> None:
    # Existing partitions, or at most three short new ones: the cursor stays under its length limit.
    names = st.sampled_from([p for p, _ in cursor.positions] + ["0", "1", "2"])
    for partition, offset in data.draw(st.lists(st.tuples(names, offsets), max_size=8)):
        ident = EventIdentity(cursor.source, partition, offset, cursor.epoch)
        before = cursor
        cursor = cursor.advance(ident)
        assert cursor.covers(ident)
        assert cursor.position(partition) == max(offset, before.position(partition) or offset)
        rebuilt = Cursor(cursor.source, cursor.epoch, cursor.positions)
        assert (str(cursor), cursor) == (str(rebuilt), rebuilt)  # moved in place, or built anew
        for p, o in before.positions:
            assert cursor.covers(EventIdentity(before.source, p, o, before.epoch))


cursorish = st.text(alphabet="kafredis@Ee0129-:,. _\t\x00é", max_size=40)


@QUICK
@given(st.text() | cursorish)
def test_parsing_any_text_gives_a_cursor_or_a_cursor_error(text: str) -> None:
    try:
        cursor = parse_cursor(text)
    except CursorError:
        return
    assert isinstance(cursor, Cursor)
    assert parse_cursor(str(cursor)) == cursor


# --- The compact form --------------------------------------------------------------------------


def test_the_router_prints_the_shorter_form_and_the_text_form_on_a_tie() -> None:
    few = parse_cursor("kafka@e:0:105,1:98,2:77")
    assert len(few.compact_form()) == len(few.text_form())
    assert str(few) == few.text_form()
    assert str(parse_cursor("kafka@e:0:1000,1:980,2:770")) == "kafka@e:~AQEBAAPQDyejAwA"
    wide = Cursor("kafka", "e", tuple((str(p), (10**10 + p,)) for p in range(12)))
    assert str(wide) == wide.compact_form() == "kafka@e:~AQEBAAyAkN_ASgICAgICAgICAgICAA"
    assert len(wide.compact_form()) < len(wide.text_form())
    assert parse_cursor(wide.text_form()) == parse_cursor(wide.compact_form()) == wide


def test_both_forms_of_one_position_parse_to_it() -> None:
    cursor = parse_cursor("redis@e:events:1700000000000-3,o:5-0")
    assert parse_cursor(cursor.compact_form()) == cursor
    assert parse_cursor("kafka:~AQEBAAEAAA") == parse_cursor("kafka:0:0")  # no epoch, as in text


def _compact(*varints: int, tail: bytes = b"") -> str:
    out = bytearray()
    for value in varints:
        while value > 0x7F:
            out.append((value & 0x7F) | 0x80)
            value >>= 7
        out.append(value)
    return "kafka@e:~" + base64.urlsafe_b64encode(bytes(out) + tail).rstrip(b"=").decode()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("kafka@e:~", "ends too early"),
        ("kafka@e:~A", "unpadded base64url"),
        ("kafka@e:~AQEBAAEAAA==", "unpadded base64url"),
        ("kafka@e:~AQEBAAEAAB", "unused bits"),
        ("kafka@e:~AQ+BAAEAAA", "unpadded base64url"),
        (_compact(2, 1, 0, 0), "version 2 is unknown"),
        (_compact(1, 3, 0, 0), "offset kind 3 is unknown"),
        (_compact(1, 1, 1, 0, 2, 0), "ends too early"),
        (_compact(1, 1, 0, 0, 9), "bytes after its last position"),
        (_compact(1, 1, 1, 0, 0, 0), "empty"),
        (_compact(1, 1, 1, 0, 1, 1), "out of 0..2^63-1"),  # zigzag 1 is -1
        (_compact(1, 1, 1, 0, 1, 2 * (MAX_OFFSET + 1)), "out of 0..2^63-1"),
        (_compact(1, 2, 1, 0, 1, 0, MAX_OFFSET + 1), "0..2^63-1"),
        (_compact(1, 0, 1, 0, 1, 3, 0), "one or two numbers, not 3"),
        (_compact(1, 1, 1, 0, 1, 2**70), "over 10 bytes"),
        (_compact(1, 1, 1, 0, 1, 0, 1, 1, tail=b"0\x00"), "names each partition once"),
        (_compact(1, 1, 0, 1, 1, tail=b":\x00"), "partition must be 1 to 64"),
        (_compact(1, 1, 0, 1, 0, 0), "partition must be 1 to 64"),
    ],
    ids=repr,
)
def test_malformed_compact_cursors_are_rejected_with_a_clear_message(
    text: str, message: str
) -> None:
    with pytest.raises(CursorError) as caught:
        parse_cursor(text)
    assert message in str(caught.value)


def _numeric_cursors(partitions: int, *, named: bool) -> st.SearchStrategy[Cursor]:
    """Cursors of any subset of partitions ``0..partitions-1`` (and, with ``named``, a few named
    ones) at any offsets, of one width or mixed."""
    subset = st.sets(st.integers(0, partitions - 1), min_size=1, max_size=partitions)
    width = st.sampled_from([1, 2, None])
    names = st.lists(
        st.from_regex(r"[A-Za-z._-][A-Za-z0-9._-]{0,63}|0[0-9]{1,5}", fullmatch=True),
        max_size=4 if named else 0,
        unique=True,
    )

    @st.composite
    def build(draw: st.DrawFn) -> Cursor:
        chosen = [str(p) for p in sorted(draw(subset))] + draw(names)
        fixed = draw(width)
        values = []
        for _ in chosen:
            count = fixed or draw(st.sampled_from([1, 2]))
            values.append(tuple(draw(numbers) for _ in range(count)))
        return Cursor("kafka", draw(epochs), tuple(zip(chosen, values, strict=True)))

    return build()


@pytest.mark.parametrize(
    ("partitions", "examples"), [(1, 200), (128, 100), (1024, 25)], ids=["1", "128", "1024"]
)
def test_cursors_of_many_partitions_read_back_in_both_forms(partitions: int, examples: int) -> None:
    @settings(deadline=None, database=None, max_examples=examples)
    @given(_numeric_cursors(partitions, named=True))
    def reads_back(cursor: Cursor) -> None:
        text, compact = cursor.text_form(), cursor.compact_form()
        assert parse_cursor(text) == parse_cursor(compact) == cursor
        assert str(cursor) == (compact if len(compact) < len(text) else text)
        assert str(parse_cursor(str(cursor))) == str(cursor)

    reads_back()


@pytest.mark.parametrize(
    ("partitions", "examples"), [(1, 100), (128, 50), (1024, 20)], ids=["1", "128", "1024"]
)
def test_cursors_of_numeric_partitions_stay_within_the_bus_bound(
    partitions: int, examples: int
) -> None:
    everything = [str(p) for p in range(partitions)]
    longest = longest_cursor("kafka", "E" * 32, everything, 1)
    assert longest <= MAX_CURSOR_LENGTH

    @settings(deadline=None, database=None, max_examples=examples)
    @given(st.data())
    def within(data: st.DataObject) -> None:
        chosen = data.draw(st.sets(st.sampled_from(everything), min_size=1))
        offsets = data.draw(st.lists(numbers, min_size=len(chosen), max_size=len(chosen)))
        cursor = Cursor("kafka", "E" * 32, tuple(zip(chosen, ((o,) for o in offsets), strict=True)))
        assert len(str(cursor)) <= longest

    within()


def test_the_worst_case_of_1024_partitions_fits_the_bound_exactly_as_computed() -> None:
    """Offsets swinging between 0 and 2^63 - 1 make every difference take ten bytes."""
    offsets = [(MAX_OFFSET if p % 2 == 0 else 0,) for p in range(1024)]
    cursor = Cursor("kafka", "E" * 32, tuple((str(p), o) for p, o in enumerate(offsets)))
    everything = [str(p) for p in range(1024)]
    assert len(str(cursor)) == longest_cursor("kafka", "E" * 32, everything, 1) == 13_703
    assert len(str(cursor)) <= MAX_CURSOR_LENGTH
    assert parse_cursor(str(cursor)) == cursor
    text_worst = Cursor("kafka", "e", tuple((p, (MAX_OFFSET,)) for p in everything))
    assert len(text_worst.text_form()) > MAX_CURSOR_LENGTH  # why the compact form exists
    assert len(str(text_worst)) <= MAX_CURSOR_LENGTH


def test_two_number_offsets_have_their_own_worst_case() -> None:
    streams = [f"s{n}" for n in range(7)]
    longest = longest_cursor("redis", "e", streams, 2)
    worst = Cursor("redis", "e", tuple((s, (MAX_OFFSET, MAX_OFFSET)) for s in streams))
    assert len(str(worst)) <= longest
    swinging = tuple((s, (MAX_OFFSET * (n % 2 == 0), MAX_OFFSET)) for n, s in enumerate(streams))
    assert len(str(Cursor("redis", "e", swinging))) <= longest


def test_realistic_cursors_are_small() -> None:
    """1,024 partitions whose offsets lie near one another (a topic whose keys spread evenly)
    cost about four bytes each: the figures in docs/cursor.md."""
    rng = random.Random(13)
    base = 40_000_000_000
    sizes = {}
    for partitions in (1, 12, 128, 1024):
        positions = tuple(
            (str(p), (base + rng.randrange(-1_000_000, 1_000_000),)) for p in range(partitions)
        )
        sizes[partitions] = len(str(Cursor("kafka", "Tq3xLw9pZk2a", positions)))
    assert sizes[1] == 32  # the text form
    assert sizes[12] < 90
    assert sizes[128] < 600
    assert sizes[1024] < 4_500
    redis = tuple(
        (
            f"{'orders-and-other-domain-events-of-tenant-acme':<50}"[:50].replace(" ", "-")
            + f"-part{n:02}",
            (1_766_000_000_000 + n, n),
        )
        for n in range(7)
    )
    assert {len(name) for name, _ in redis} == {57}
    assert len(str(Cursor("redis", "Tq3xLw9pZk2a", redis))) < 560


def test_a_cursor_moved_out_of_mixed_offsets_is_spelled_as_one_built_anew() -> None:
    """A client's Redis cursor with one one-number offset among two-number ones is compact in the
    mixed kind; moved on to a two-number offset there, it must be spelled in the one spelling of
    its positions (the two-number kind, a byte a position shorter), not keep the mixed one."""
    positions = [(str(p), (1_700_000_000_000 + p, 0)) for p in range(40)]
    positions[5] = ("5", (3,))
    cursor = Cursor("redis", "e1", tuple(positions))
    moved = cursor.advance(EventIdentity("redis", "5", (1_700_000_000_005, 1), "e1"))
    assert str(moved) == str(Cursor("redis", "e1", moved.positions))


@QUICK
@given(
    st.one_of(
        st.integers(-(2**64), 2**64),
        st.sampled_from([0, MAX_OFFSET, MAX_OFFSET + 1, -1]),
        st.booleans(),
        st.floats(allow_nan=False),
        st.text(max_size=3),
    )
)
def test_an_offset_of_one_part_is_accepted_exactly_when_it_is_an_int_in_range(part: object) -> None:
    """The one-number fast path of ``check_offset`` accepts what the general rule accepts."""
    valid = isinstance(part, int) and not isinstance(part, bool) and 0 <= part <= MAX_OFFSET
    try:
        assert check_offset((part,)) == (part,)  # type: ignore[arg-type]
    except CursorError:
        assert not valid
    else:
        assert valid


_PLACE_PART = st.one_of(
    st.sampled_from(["memory", "kafka", "0", "events", "e1", "", "Kafka", "a" * 65, "p:1", None]),
    st.text(max_size=8),
)


@QUICK
@given(
    st.lists(
        st.tuples(_PLACE_PART, _PLACE_PART, _PLACE_PART, st.integers(-1, 3)),
        min_size=1,
        max_size=12,
    )
)
def test_an_identity_of_a_place_checked_before_is_accepted_exactly_as_a_first_one(
    identities: list[tuple[object, object, object, int]],
) -> None:
    """A place (source, epoch, partition) passed once is not checked again for the next events
    there: every identity is still accepted or refused as the checks of its parts say, whatever
    was built before it, a refused place is never remembered, and the offset is always checked."""

    def passes(source: object, epoch: object, partition: object, offset: int) -> bool:
        try:
            check_source(source)  # type: ignore[arg-type]
            check_epoch(epoch)  # type: ignore[arg-type]
            check_partition(partition)  # type: ignore[arg-type]
            check_offset((offset,))
        except (CursorError, TypeError):
            return False
        return True

    for _ in range(2):  # the second time, every place that passed is remembered
        for source, epoch, partition, offset in identities:
            expected = passes(source, epoch, partition, offset)
            try:
                EventIdentity(source, partition, (offset,), epoch)  # type: ignore[arg-type]
            except (CursorError, TypeError):
                assert not expected
            else:
                assert expected


def test_the_places_remembered_are_bounded_and_the_bus_places_come_back() -> None:
    """Past :data:`MOST_CHECKED_PLACES` (a client's cursors naming places of their own) the
    memory starts again: it never grows past the bound, and a place is remembered again at
    its next identity."""
    for n in range(MOST_CHECKED_PLACES + 10):
        EventIdentity("kafka", f"p{n}", (0,), "e1")
        assert len(_CHECKED_PLACES) <= MOST_CHECKED_PLACES
    EventIdentity("memory", "0", (1,), "e1")
    assert ("memory", "e1", "0") in _CHECKED_PLACES
    with pytest.raises(CursorError):
        EventIdentity("memory", "0", (-1,), "e1")  # a place remembered: its offset still checked
