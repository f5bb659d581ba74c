"""Scatter-gather by ticket: one request out, replies from many, a deadline.

The bus asks every branch and Celery's remote control asks every worker the
same way: a request carries a ticket, replies name it and their sender, and
the caller gets what arrived once every expected sender answered or the
deadline passed, whichever comes first.  A late reply finds no ticket and
is dropped.
"""

import uuid

import attrs
from twisted.internet import defer


@attrs.define
class Gathered:
    """What came back for one ticket."""

    expected: frozenset
    replies: dict = attrs.field(factory=dict)
    errors: dict = attrs.field(factory=dict)

    @property
    def missing(self):
        """The expected senders that neither replied nor failed, sorted."""
        return sorted(self.expected - set(self.replies) - set(self.errors))

    def complete(self):
        return not self.missing


class Gatherings:
    """The requests in flight, by ticket."""

    def __init__(self, clock):
        self._clock = clock
        self._pending = {}

    def __len__(self):
        return len(self._pending)

    def start(self, expected, timeout, ticket=None):
        """
        Open a ticket for replies from C{expected}; returns C{(ticket, d)}.

        C{d} fires with a L{Gathered} when every expected sender answered,
        or after C{timeout} seconds with whatever arrived.  Cancelling C{d}
        forgets the ticket.  A C{ticket} given must not be open already.
        """
        ticket = ticket or uuid.uuid4().hex
        if ticket in self._pending:
            raise ValueError(f"ticket {ticket!r} is already open")
        gathered = Gathered(frozenset(expected))
        d = defer.Deferred(lambda _: self._pending.pop(ticket, None))
        self._pending[ticket] = (gathered, d)
        d.addTimeout(timeout, self._clock, onTimeoutCancel=lambda _result, _t: gathered)
        if gathered.complete():
            self._finish(ticket)
        return ticket, d

    def reply(self, ticket, sender, value):
        """Record C{sender}'s reply; False if the ticket is unknown (late)."""
        return self._record(ticket, sender, value, "replies")

    def error(self, ticket, sender, error):
        """Record C{sender}'s error; False if the ticket is unknown (late)."""
        return self._record(ticket, sender, error, "errors")

    def forget(self, ticket):
        """
        Drop a ticket whose request could not be sent: its Deferred fails
        with C{CancelledError} at once (its timer stopped), a failure that
        is consumed when nobody waits for it; later replies are dropped.
        """
        entry = self._pending.pop(ticket, None)
        if entry is not None:
            d = entry[1]
            d.addErrback(lambda _failure: None)  # nobody waits for it
            d.cancel()

    def finish_all(self):
        """Fire every open ticket now with what it has (a stopping service)."""
        for ticket in list(self._pending):
            self._finish(ticket)

    def _record(self, ticket, sender, value, kind):
        entry = self._pending.get(ticket)
        if entry is None:
            return False
        gathered, _ = entry
        getattr(gathered, kind)[sender] = value
        if gathered.complete():
            self._finish(ticket)
        return True

    def _finish(self, ticket):
        entry = self._pending.pop(ticket, None)
        if entry is not None:
            gathered, d = entry
            d.callback(gathered)
