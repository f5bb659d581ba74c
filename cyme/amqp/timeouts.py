"""Deadlines for remote calls that never cancel txAMQP's own Deferreds.

Cancelling a Deferred that txAMQP handed out corrupts its state (its event
waiters get fired twice; a channel's responses get paired with the wrong
request), so a deadline here only stops *waiting*: the original Deferred
runs to completion and its late result is dropped.  Whoever owns the
resource decides what a timeout means (the channel helpers close the
channel, the handshake aborts the transport).
"""

from __future__ import annotations

from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from .errors import AMQPTimeout

__all__ = ["DEFAULT_TIMEOUT", "within"]

#: Seconds a remote call may take unless the caller says otherwise.
DEFAULT_TIMEOUT = 10.0

T = TypeVar("T")


def within(
    d: Deferred[T], timeout: float | None, clock: IReactorTime, what: str
) -> Deferred[T]:
    """A Deferred with C{d}'s result, or L{AMQPTimeout} after C{timeout} s.

    C{None} means no deadline (C{d} itself is returned).
    """
    if timeout is None:
        return d
    # The deadline is on a Deferred of our own: addTimeout cancels it, and
    # never the original.
    result: Deferred[T] = Deferred()

    def relay(outcome: Any) -> None:
        if not result.called:
            result.callback(outcome)
        # Otherwise a late outcome: dropping it (errors included) is the point.

    d.addBoth(relay)
    return result.addTimeout(
        timeout, clock, onTimeoutCancel=lambda _, __: Failure(AMQPTimeout(what, timeout))
    )
