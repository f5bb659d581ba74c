"""An app's queue declarations, for L{cyme.client}."""

from cyme.client.records import Record, Section, bang, name_of
from cyme.client.transport import path


class Queue(Record):
    """A queue declaration: C{name}, C{exchange}, C{exchange_type}, C{routing_key}, C{options}."""

    def __init__(self, app, info):
        super().__init__(info)
        self.app = app

    def delete(self, nowait=False):
        return self.app.queues.delete(self.name, nowait=nowait)

    def refresh(self):
        return self.app.queues.get(self.name)


class Queues(Section):
    """C{app.queues}: the app's queue declarations."""

    def __init__(self, app):
        self.app = app

    def _path(self, name, nowait=False):
        return path(self.app.name, "queues", *bang(nowait), name_of(name))

    def names(self):
        return self.app.transport.request("GET", path(self.app.name, "queues"))

    def get(self, name):
        return Queue(self.app, self.app.transport.request("GET", self._path(name)))

    def add(self, name, exchange=None, exchange_type=None, routing_key=None,
            nowait=False, **options):
        """
        Declare queue C{name} (or change its declaration): the exchange and
        routing key default to the name, the type to C{direct}; C{options}
        are the queue's, exchange's and binding's options.  With C{nowait}
        the branch answers at once (C{/queues/!/<name>/}).
        """
        body = {"exchange": exchange, "exchange_type": exchange_type,
                "routing_key": routing_key, "options": options or None}
        answer = self.app.transport.request("PUT", self._path(name, nowait), body=body)
        return Queue(self.app, answer or {"name": name_of(name)})

    def delete(self, name, nowait=False):
        """Delete the declaration; instances consuming it stop."""
        return self.app.transport.request("DELETE", self._path(name, nowait))

    def __repr__(self):
        return f"<Queues of {self.app.name!r}>"
