"""Helpers of the event stream's integration tests: a real client of
``GET /events/`` and waiting for its events.

Not a test module (trial loads only C{test_*}): L{EventReader} parses the
Server-Sent Events as they arrive; L{EventsTestCase} opens streams on real
branches, waits for an event, and runs the ``cyme`` command.
"""

import json
import os

import treq
from twisted.internet.protocol import Protocol
from twisted.internet.utils import getProcessOutputAndValue

from tests.integration import IntegrationTestCase
from tests.test_daemon import BIN


class EventReader(Protocol):
    """
    A real client's stream: its messages as they arrive (C{close} leaves);
    a C{reset} message is kept with the others, its C{id} None.
    """

    def __init__(self):
        self.buffer = b""
        self.events = []
        self.ids = []

    def close(self):
        if self.transport is not None:
            self.transport.stopProducing()  # the response's: closes the connection

    def dataReceived(self, data):
        self.buffer += data
        while b"\n\n" in self.buffer:
            block, self.buffer = self.buffer.split(b"\n\n", 1)
            fields = dict(line.split(": ", 1) for line in block.decode().splitlines()
                          if line and not line.startswith(":") and ": " in line)
            if "data" in fields:
                self.events.append(json.loads(fields["data"]))
                self.ids.append(fields.get("id"))


class EventsTestCase(IntegrationTestCase):
    """Real branches whose event streams the test reads."""

    timeout = 150

    async def open_stream(self, branch, path="/events/"):
        return await self.stream(branch.url(path))

    async def stream(self, url, headers=None):
        reader = EventReader()
        response = await treq.get(url, unbuffered=True, timeout=10, headers=headers)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("content-type"),
                         ["text/event-stream; charset=utf-8"])
        response.deliverBody(reader)
        self.addCleanup(reader.close)
        return reader

    async def until(self, reader, what, timeout=30, **match):
        """The first event of C{reader} whose fields are C{match}."""
        def probe():
            for event in reader.events:
                if all(event.get(k) == v for k, v in match.items()):
                    return event
            return None
        seen = [(e["type"], e["instance"]) for e in reader.events]
        return await self.poll(probe, timeout, f"{what} ({match}): {seen}")

    async def until_event(self, reader, instance, kind, timeout=30):
        return await self.until(reader, f"{kind} event of {instance}", timeout,
                                instance=instance, type=kind)

    async def cyme(self, branch, *args):
        """C{(exit code, stdout, stderr)} of the C{cyme} command against C{branch}."""
        out, err, code = await getProcessOutputAndValue(
            os.path.join(BIN, "cyme"), ["--url", branch.base, *args],
            env=dict(os.environ), path=self.cwd)
        return code, out.decode(), err.decode()
