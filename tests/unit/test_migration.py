"""Matching two listings of a moved mailbox, and comparing what clients see (pure parts)."""

from __future__ import annotations

import time

from pop3proxy.commands.migrate import compare
from pop3proxy.migration import MapInfo, Message, match


def listing(*messages: tuple[str, int, str]) -> list[Message]:
    """``(uidl, size, headers)`` in mailbox order -> numbered messages."""
    return [
        Message(number, uidl.encode(), size, headers.encode())
        for number, (uidl, size, headers) in enumerate(messages, start=1)
    ]


def test_unique_messages_match_by_size_and_headers_whatever_their_uidls():
    old = listing(("a1", 100, "h1"), ("a2", 200, "h2"), ("a3", 100, "h3"))
    new = listing(("b1", 100, "h1"), ("b2", 200, "h2"), ("b3", 100, "h3"))
    result = match(old, new)
    assert result.uidl_map == {b"b1": b"a1", b"b2": b"a2", b"b3": b"a3"}
    assert (result.matched, result.ambiguous, result.unmatched_old, result.unmatched_new) == (
        3,
        0,
        0,
        0,
    )
    assert result.order_preserved


def test_same_size_other_headers_do_not_match():
    result = match(listing(("a1", 100, "h1")), listing(("b1", 100, "other")))
    assert result.uidl_map == {}
    assert (result.unmatched_old, result.unmatched_new) == (1, 1)


def test_duplicates_pair_in_mailbox_order_and_count_as_ambiguous():
    old = listing(("a1", 50, "dup"), ("a2", 70, "x"), ("a3", 50, "dup"), ("a4", 50, "dup"))
    new = listing(("b1", 50, "dup"), ("b2", 50, "dup"), ("b3", 70, "x"))
    result = match(old, new)
    assert result.uidl_map == {b"b1": b"a1", b"b2": b"a3", b"b3": b"a2"}
    assert (result.matched, result.ambiguous, result.unmatched_old, result.unmatched_new) == (
        1,
        2,
        1,
        0,
    )
    assert not result.order_preserved  # a2 came before a3 on the old side


def test_report_counts_both_sides_and_a_changed_order():
    old = listing(("a1", 1, "h1"), ("a2", 2, "h2"))
    new = listing(("b1", 2, "h2"), ("b2", 1, "h1"), ("b3", 3, "new mail"))
    report = match(old, new).report()
    assert report == {
        "old": 2,
        "new": 3,
        "matched": 2,
        "ambiguous": 0,
        "unmatched_old": 0,
        "unmatched_new": 1,
        "order_preserved": False,
    }


def test_compare_finds_missing_extra_resized_and_reordered():
    before = [(b"u1", 10), (b"u2", 20), (b"u3", 30)]
    assert compare(before, list(before))["same"]
    result = compare(before, [(b"u2", 20), (b"u1", 11), (b"new", 5)])
    assert result["missing"] == ["u3"]
    assert result["extra"] == ["new"]
    assert result["size_differs"] == ["u1"]
    assert not result["order_preserved"]
    assert not result["same"]


def test_map_info_round_trips_and_expires():
    info = MapInfo("10.0.0.2:110", expires=time.time() + 60, entries=3, created=time.time())
    assert MapInfo.from_json(info.to_json()) == info
    assert info.live(time.time())
    assert not info.live(info.expires)
