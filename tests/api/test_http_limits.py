"""What cyme.api.http bounds: the time a client has to send a request
(its headers, then its body), what the access log shows of a queued URL,
and the parsing of bodies (JSON depth, multipart headers), each checked
for what it refuses and for what it still lets through."""

import time

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from cyme.api.http import (
    BODY_RATE, HEADERS_DEADLINE, MAX_HEADER_PARAMS, MAX_JSON_DEPTH, MAX_PART_HEADER,
    check_json_depth, logged_uri, make_site, multipart_fields,
)
from cyme.errors import BadRequest

GET = b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n"


class Slow(Resource):
    """Answers C{/x} at once, and C{/slow} when the test says."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.waiting = []

    def render(self, request):
        if request.path == b"/slow":
            self.waiting.append(request)
            return NOT_DONE_YET
        request.content.read()
        return b"done"


class DeadlineTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.resource = Slow()

    def connect(self, **site):
        site = make_site(self.resource, reactor=self.clock, **site)
        protocol = site.buildProtocol(IPv4Address("TCP", "203.0.113.7", 40000))
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.addCleanup(lambda: protocol.connectionLost(None))
        return protocol, transport

    def answers(self, transport):
        return transport.value().count(b"HTTP/1.1 200 OK")

    def test_headers_within_the_deadline(self):
        _, idle = self.connect()
        trickling, transport = self.connect()
        trickling.dataReceived(b"GET /x HTTP/1.1\r\n")
        for _ in range(9):
            self.clock.advance(1)
            trickling.dataReceived(b"X-A: b\r\n")
        self.assertFalse(transport.disconnecting)
        self.clock.advance(HEADERS_DEADLINE - 9)
        self.assertTrue(transport.disconnecting)
        self.assertTrue(idle.disconnecting)
        self.assertEqual(transport.value(), b"")

    def test_counted_again_after_each_answer(self):
        protocol, transport = self.connect()
        for _ in range(3):
            self.clock.advance(HEADERS_DEADLINE - 1)
            protocol.dataReceived(GET)
        self.assertEqual(self.answers(transport), 3)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(HEADERS_DEADLINE)
        self.assertTrue(transport.disconnecting)

    def test_the_time_to_answer_is_not_counted(self):
        # A wait/ long-poll takes up to 300 s to answer.
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET /slow HTTP/1.1\r\nHost: localhost\r\n\r\n")
        self.clock.advance(300)
        self.assertFalse(transport.disconnecting)
        request = self.resource.waiting.pop()
        request.write(b"late")
        request.finish()
        self.assertEqual(self.answers(transport), 1)
        protocol.dataReceived(GET)
        self.assertEqual(self.answers(transport), 2)

    def test_pipelined_requests(self):
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET /slow HTTP/1.1\r\nHost: localhost\r\n\r\n" + GET)
        self.clock.advance(60)
        request = self.resource.waiting.pop()
        request.write(b"late")
        request.finish()
        self.assertEqual(self.answers(transport), 2)
        self.clock.advance(HEADERS_DEADLINE)
        self.assertTrue(transport.disconnecting)

    def test_a_body_at_the_least_rate(self):
        length = 4 * BODY_RATE
        protocol, transport = self.connect()
        protocol.dataReceived(b"POST /x HTTP/1.1\r\nHost: localhost\r\n"
                              b"Content-Length: %d\r\n\r\n" % length)
        # One second per BODY_RATE bytes, after the headers' own time.
        for _ in range(4):
            self.clock.advance(1)
            protocol.dataReceived(b"a" * BODY_RATE)
        self.assertEqual(self.answers(transport), 1)
        # A trickled body (headers at once, then a byte a second) is cut.
        protocol.dataReceived(b"POST /x HTTP/1.1\r\nHost: localhost\r\n"
                              b"Content-Length: 100\r\n\r\n")
        for _ in range(int(HEADERS_DEADLINE)):
            self.clock.advance(1)
            self.assertFalse(transport.disconnecting)
            protocol.dataReceived(b"a")
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.answers(transport), 1)

    def test_a_site_without_idle_timeout_has_no_deadline(self):
        self.connect(timeout=None)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class AccessLogTests(SynchronousTestCase):
    def test_queued_url_userinfo_masked(self):
        for uri, logged in [
            (b"/foo/queue/q/http://bob:pw@h/x?a=b@c", b"/foo/queue/q/http://***@h/x?a=b@c"),
            (b"/foo/queue/q/https://tok@h/", b"/foo/queue/q/https://***@h/"),
            (b"/foo/queue/q/http%3A%2F%2Fbob%3Apw%40h%2Fx", b"/foo/queue/q/http://***@h/x"),
            (b"/foo/queue/q/http://bob%2540x:pw%2540@h/", b"/foo/queue/q/http://***@h/"),
            (b"/foo/queue/q/bob:pw@h/x", b"/foo/queue/q/***@h/x"),
            (b"/foo/queue/q/http:\\\\bob:pw@h/", b"/foo/queue/q/http:\\\\***@h/"),
            (b"//foo/%71ueue/q/http://a@b@h/", b"//foo/queue/q/http://***@h/"),
            # Nothing else changes.
            (b"/foo/queue/q/http://h/x?y=1", b"/foo/queue/q/http://h/x?y=1"),
            (b"/foo/instances/w%31/?x=%40", b"/foo/instances/w%31/?x=%40"),
        ]:
            self.assertEqual(logged_uri(uri), logged, uri)

    def test_the_site_logs_the_masked_line(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        clock = Clock()
        site = make_site(Slow(), reactor=clock)
        site.startFactory()
        self.addCleanup(site.stopFactory)
        protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(b"GET /foo/queue/q/http%3A%2F%2Fbob%3AHOOK-SECRET%40h%2F "
                              b"HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        lines = [formatEvent(e) for e in events if "HOOK" in formatEvent(e)
                 or "/foo/queue/q/" in formatEvent(e)]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn('"GET /foo/queue/q/http://***@h/ HTTP/1.1" 200', lines[0])


class JSONDepthTests(SynchronousTestCase):
    def test_brackets_in_strings_do_not_count(self):
        deep = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
        check_json_depth(deep)
        for text in [b'{"a": "' + b"[" * 100 + b'"}', b'{"a": "\\"' + b"[" * 100 + b'"}',
                     b'{"a": "\\\\", "b": [1]}']:
            check_json_depth(text)
        self.assertRaises(BadRequest, check_json_depth, b"[" * (MAX_JSON_DEPTH + 1))
        # A string that ends with an escaped backslash ends there.
        self.assertRaises(BadRequest, check_json_depth,
                          b'["\\\\", ' + b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH + b"]")
        # An unclosed string runs to the end: the parser refuses the text.
        check_json_depth(b'["' + b"[" * 100)

    def test_linear(self):
        for body in (b'"\\' * 500_000, b'"' * 1_000_000, b'"a' * 500_000, b"[]" * 500_000):
            started = time.monotonic()
            check_json_depth(body)
            self.assertLess(time.monotonic() - started, 2.0)


class MultipartTests(SynchronousTestCase):
    def body(self, disposition, boundary=b"B", epilogue=b""):
        return (b"--%s\r\nContent-Disposition: %s\r\n\r\nv\r\n--%s--\r\n%s"
                % (boundary, disposition, boundary, epilogue))

    def test_part_header_parameters_bounded(self):
        ctype = b"multipart/form-data; boundary=B"
        params = b'form-data; name="f"' + b"; x=y" * (MAX_HEADER_PARAMS - 1)
        self.assertEqual(multipart_fields(self.body(params), ctype), {"f": "v"})
        error = self.assertRaises(BadRequest, multipart_fields,
                                  self.body(params + b"; x=y"), ctype)
        self.assertEqual(error.field, "body")
        self.assertIn(str(MAX_HEADER_PARAMS), error.message)
        long = b'form-data; name="f"; filename="' + b"a" * MAX_PART_HEADER + b'"'
        self.assertRaises(BadRequest, multipart_fields, self.body(long), ctype)
        self.assertRaises(BadRequest, multipart_fields, self.body(b'form-data; name="f"'),
                          ctype + b"; x=y" * MAX_HEADER_PARAMS)

    def test_what_still_parses(self):
        ctype = b"multipart/form-data; boundary=B"
        named = b'form-data; name="f"; filename="a;b.txt"'
        self.assertEqual(multipart_fields(self.body(named), ctype), {"f": "v"})
        # What follows the closing delimiter is no part, however long.
        self.assertEqual(multipart_fields(
            self.body(b'form-data; name="f"', epilogue=b"x; " * 10_000), ctype), {"f": "v"})
        # A part without headers is a part without a name: refused as such.
        error = self.assertRaises(BadRequest, multipart_fields,
                                  b"--B\r\n\r\nv\r\n--B--\r\n", ctype)
        self.assertIn("without a field name", error.message)
