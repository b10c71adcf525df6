"""The order in which a port hands out messages: highest priority first, FIFO
within a priority.

Messages read from the connections wait here until a receive takes them.
Most applications use one or two priorities, so this is a deque per
priority plus the priorities in descending order, not a heap: putting and
taking a message cost one append and one popleft.

FIFO holds per priority in the order messages were read; since each
connection is read in order, each sender's messages keep their order within
a priority.
"""

from __future__ import annotations

from bisect import insort
from collections import deque
from typing import Generic, Iterator, TypeVar

__all__ = ["PriorityQueue"]

T = TypeVar("T")


class PriorityQueue(Generic[T]):
    """Items by priority (an int; higher first), FIFO within a priority."""

    __slots__ = ("_levels", "_order", "_len")

    def __init__(self) -> None:
        self._levels: dict[int, deque[T]] = {}
        self._order: list[int] = []  # negated priorities, ascending: highest first
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def put(self, priority: int, item: T) -> None:
        level = self._levels.get(priority)
        if level is None:
            level = self._levels[priority] = deque()
            insort(self._order, -priority)
        level.append(item)
        self._len += 1

    def put_all(self, messages: list, source: object) -> None:
        """``put((msg.priority, (msg, source)))`` for each message, in order."""
        levels = self._levels
        for msg in messages:
            priority = msg.priority
            level = levels.get(priority)
            if level is None:
                level = levels[priority] = deque()
                insort(self._order, -priority)
            level.append((msg, source))  # type: ignore[arg-type]
        self._len += len(messages)

    def take(self) -> T:
        """The first item of the highest priority (IndexError if empty)."""
        top = -self._order[0]
        level = self._levels[top]
        item = level.popleft()
        self._len -= 1
        if not level:
            del self._levels[top]
            del self._order[0]
        return item

    def clear(self) -> list[T]:
        """Remove and return everything (highest priority first)."""
        items = list(self)
        self._levels.clear()
        self._order.clear()
        self._len = 0
        return items

    def __iter__(self) -> Iterator[T]:
        for negated in self._order:
            yield from self._levels[-negated]
