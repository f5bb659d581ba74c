"""Publisher confirms: one Deferred per publish, fired by the broker's verdict.

After confirm.select the broker numbers a channel's publishes 1, 2, 3, ...
and answers with basic.ack or basic.nack for a delivery tag, or for every
tag up to it when ``multiple`` is set.
"""

from __future__ import annotations

import itertools

from twisted.internet.defer import Deferred

from .errors import AMQPError, PublishNacked

__all__ = ["ConfirmTracker"]


class ConfirmTracker:
    """The unconfirmed publishes of one channel in confirm mode."""

    def __init__(self) -> None:
        self._next_tag = 1
        # Insertion order is tag order, so "every tag up to N" is a prefix.
        self._pending: dict[int, Deferred[None]] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def expect(self) -> Deferred[None]:
        """Register the next publish; its Deferred fires on the verdict."""
        tag = self._next_tag
        self._next_tag += 1
        self._pending[tag] = d = Deferred()
        return d

    def ack(self, tag: int, multiple: bool = False) -> None:
        for d in self._settle(tag, multiple):
            d.callback(None)

    def nack(self, tag: int, multiple: bool = False) -> None:
        for d in self._settle(tag, multiple):
            d.errback(PublishNacked(f"broker nacked publish {tag}"))

    def fail_all(self, error: AMQPError) -> None:
        """The channel is gone: no verdict will ever come."""
        pending, self._pending = self._pending, {}
        for d in pending.values():
            if not d.called:
                d.errback(error)

    def _settle(self, tag: int, multiple: bool) -> list[Deferred[None]]:
        if multiple:
            # Tag 0 with multiple set means "everything outstanding".
            tags = list(
                itertools.takewhile(lambda t: tag == 0 or t <= tag, self._pending)
            )
        else:
            tags = [tag] if tag in self._pending else []
        # A caller that stopped waiting (timeout) may already have fired its
        # Deferred through cancellation.
        return [d for d in map(self._pending.pop, tags) if not d.called]
