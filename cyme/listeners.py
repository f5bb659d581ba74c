"""Listeners: call every one of them, and keep going when one fails.

The store's change events, the bus's peer events and the brokers'
connection events all fan out to listeners that belong to other layers; one
of them raising must neither stop the others nor reach the caller that
caused the event.
"""

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from cyme import logs


class Listeners:
    """A list of callables notified in the order they were added."""

    log = Logger(observer=logs.observer)

    def __init__(self, what):
        #: Names the event in the log line of a listener that failed.
        self.what = what
        self._listeners = []

    def add(self, listener):
        """Call C{listener(*args)} on every later L{notify}."""
        self._listeners.append(listener)

    def remove(self, listener):
        """Stop calling C{listener}; nothing if it was not added."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    def __len__(self):
        return len(self._listeners)

    def notify(self, *args, **kwargs):
        """
        Call every listener; a failure is logged, never raised, and so is
        the failure of a Deferred a listener returns.
        """
        for listener in list(self._listeners):
            self.notify_one(listener, *args, **kwargs)

    def notify_one(self, listener, *args, **kwargs):
        """Call one listener as L{notify} calls each (a late subscriber)."""
        try:
            result = listener(*args, **kwargs)
        except Exception:
            self.log.failure("{what} listener failed", what=self.what)
            return
        if isinstance(result, Deferred):
            result.addErrback(lambda f: self.log.failure(
                "{what} listener failed", f, what=self.what))
