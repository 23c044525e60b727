"""The pass's reads run ahead on a thread of their own: in order, errors where they belong,
and a pass that stops early (a refusal, a crash of the worker) stops its reader too."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from engine.ops.key.read_ahead import read_ahead


def test_items_come_in_order_and_all_of_them() -> None:
    assert list(read_ahead(iter(range(50)), 2)) == list(range(50))


def test_an_error_while_reading_is_raised_after_the_items_read_before_it() -> None:
    def reads() -> Iterator[int]:
        yield 1
        yield 2
        raise ConnectionError("lost the database connection")

    got: list[int] = []
    with pytest.raises(ConnectionError, match="lost the database connection"):
        for item in read_ahead(reads(), 2):
            got.append(item)
    assert got == [1, 2]


def test_a_consumer_that_stops_early_stops_the_reader() -> None:
    produced: list[int] = []
    finished = threading.Event()

    def reads() -> Iterator[int]:
        try:
            for i in range(1_000):
                produced.append(i)
                yield i
        finally:
            finished.set()

    ahead = read_ahead(reads(), 2)
    assert [next(ahead), next(ahead)] == [0, 1]
    ahead.close()

    assert finished.wait(5)
    assert len(produced) <= 2 + 2 + 1  # what was taken, what was queued, the one being read
