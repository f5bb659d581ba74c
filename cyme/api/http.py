"""HTTP plumbing under the API: a request that caps its body, a channel
that gives each request a deadline, a site that caps its connections and
masks queued URLs' credentials in its access log, JSON answers, and the
parameters of a request read from its query, form or JSON body, each
bounded before it is parsed.
"""

import json
import re
from email import policy
from email.parser import BytesParser
from urllib.parse import parse_qsl, unquote_to_bytes, urlsplit

from twisted.internet.protocol import Protocol
from twisted.web import http, server

from cyme.api.auth import masked
from cyme.errors import BadRequest, CymeError

MAX_BODY = 1 << 20
MAX_FIELDS = 1000
#: The longest header block of a part of a multipart body, and the most
#: parameters (C{; name=value}) a header of it may have.
MAX_PART_HEADER = 4096
MAX_HEADER_PARAMS = 16
#: The deepest nesting of arrays and objects a JSON body may have.
MAX_JSON_DEPTH = 32
#: The most connections a branch's API holds open at once (a 503 beyond).
MAX_CONNECTIONS = 1024
#: How long a client has to send a request's headers, counted from the
#: connection or from the end of the answer to its previous request (and
#: then its body, with a second more per L{BODY_RATE} bytes).  Twisted's
#: idle timeout restarts at every byte received, so a client trickling a
#: byte every few seconds held its connection for as long as it liked,
#: and a thousand such connections every place of the L{CappedSite}.
#: Any real client sends its headers at once: nginx gives 60 s, Apache
#: 20-40 s with a minimum rate; 10 s is ample and frees a place quickly.
HEADERS_DEADLINE = 10.0
#: The slowest a request's body may come, in bytes a second: a 1 MiB body
#: has 64 s more.
BODY_RATE = 16 * 1024


class LimitedRequest(server.Request):
    """
    A request that keeps at most L{MAX_BODY} bytes of its body.

    The rest is read off the connection (so the next request on it stays
    framed) but never stored; the API answers such a request with 413.
    """

    max_body = MAX_BODY
    too_large = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Twisted would parse a POST's form itself and answer a bad one
        # with a bare 400; the API reads every body (L{request_params}) and
        # answers in JSON.
        self._parsePOSTFormSubmission = False

    def gotLength(self, length):
        if length is not None and length > self.max_body:
            self.too_large = True
            length = 0
        super().gotLength(length)

    def handleContentChunk(self, data):
        if self.too_large:
            return
        if self.content.tell() + len(data) > self.max_body:
            self.too_large = True
            self.content.seek(0)
            self.content.truncate()
            return
        super().handleContentChunk(data)


class DeadlineChannel(http.HTTPChannel):
    """
    An HTTP/1.1 channel whose requests must arrive in time: headers within
    L{HEADERS_DEADLINE} of the connection or of the previous answer, the
    body within L{BODY_RATE}; else the connection is closed.  The time a
    request takes to answer (a C{wait/} long-poll) is not counted.  A site
    without an idle timeout (C{timeout=None}, in tests) has no deadline
    either.
    """

    _deadline = None
    #: Whether the request in hand must arrive in time (not while answered).
    _timed = False

    #: Whether this connection holds a place of its site's cap.
    _counted = False

    def connectionMade(self):
        # The idle timeout is off while a request is answered: read it once.
        self._deadlines = self.timeOut is not None
        self._counted = True
        self.site.connection_opened()
        super().connectionMade()
        self._arm(HEADERS_DEADLINE)

    def allHeadersReceived(self):
        super().allHeadersReceived()
        if self.length != 0:  # (without a body, the request is in)
            length = MAX_BODY if self.length is None else min(self.length, MAX_BODY)
            self._arm(HEADERS_DEADLINE + length / BODY_RATE)

    def allContentReceived(self):
        self._timed = False
        super().allContentReceived()

    def requestDone(self, request):
        # Armed before the buffered data of a pipelined request is read.
        if self.persistent:
            self._arm(HEADERS_DEADLINE)
        super().requestDone(request)

    def connectionLost(self, reason):
        self._timed = False
        if self._counted:
            self._counted = False
            self.site.connection_closed()
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        super().connectionLost(reason)

    def _arm(self, seconds):
        if not self._deadlines:
            return
        self._timed = True
        # One timer a connection, moved rather than made anew: a later
        # time costs no heap operation (the hot path's requests each move
        # it twice).
        if self._deadline is not None and self._deadline.active():
            self._deadline.reset(seconds)
        else:
            self._deadline = self.callLater(seconds, self._late)

    def _late(self):
        if self._timed:  # else a request is being answered: not counted
            self.setTimeout(None)  # the idle timeout would close it again
            self.timeoutConnection()


#: What may come before the userinfo of a URL (C{http://user:pw@host}, or
#: C{user:pw@host} at the start of a segment).
_AUTHORITY_START = re.compile(rb"([/\\?#])")


def logged_uri(uri):
    """
    C{uri} (a request's) as the access log shows it: the userinfo of a
    queued URL (C{/<app>/queue/<queue>/http://user:pw@host/}, the URL
    percent-encoded or not) is C{***}, as it may be a credential.  Nothing
    else of the API has an C{@} in its path.
    """
    path, mark, query = uri.partition(b"?")
    for _ in range(3):  # encoded whole, or twice
        if b"%" not in path:
            break
        path = unquote_to_bytes(path)
    if b"@" not in path:
        return uri
    pieces = _AUTHORITY_START.split(path)
    return b"".join(
        b"***@" + piece.rpartition(b"@")[2] if b"@" in piece else piece for piece in pieces
    ) + mark + query


class _Logged:
    """What the access log line reads of a request: its URI masked."""

    def __init__(self, request):
        self._request = request
        self.uri = logged_uri(request.uri)

    def __getattr__(self, name):
        return getattr(self._request, name)


def access_line(timestamp, request):
    """Twisted's combined access log line, a queued URL's credentials masked."""
    return http.combinedLogFormatter(timestamp, _Logged(request))


#: The probes load balancers and orchestrators send every few seconds.
PROBES = frozenset([b"/ping", b"/ping/", b"/health", b"/health/"])


class CappedSite(server.Site):
    """
    A site with at most C{limit} connections open at once: each one beyond
    is answered 503 and closed, so that idle or slow clients cannot hold
    every file descriptor of the branch.  Its channels (L{DeadlineChannel})
    say when they open and close: a wrapper around every connection
    (Twisted's C{WrappingFactory}) cost each queued URL 4.5 us more,
    measured through the whole site.
    """

    def __init__(self, resource, *args, limit=MAX_CONNECTIONS, **kwargs):
        super().__init__(resource, *args, **kwargs)
        self.limit = limit
        #: The connections open now.
        self.connections = 0

    def acceptableProtocols(self):
        # Over TLS, Twisted asks the factory it serves which protocols ALPN
        # may choose; the API speaks HTTP/1.1 alone (its channels are
        # HTTP/1.1 channels), so ALPN must never choose h2.
        return [b"http/1.1"]

    def buildProtocol(self, addr):
        if self.connections >= self.limit:
            return _Busy()
        return super().buildProtocol(addr)

    def connection_opened(self):
        self.connections += 1

    def connection_closed(self):
        self.connections -= 1


class ProbeQuietSite(CappedSite):
    """A site whose access log leaves out probes answered 200 (a 503 stays)."""

    def log(self, request):
        if request.code == 200 and request.path in PROBES:
            return
        super().log(request)


class QuietSite(CappedSite):
    """A site without an access log (at log levels above info)."""

    def log(self, request):
        pass


class _Busy(Protocol):
    """Answers a connection beyond the cap with a 503, then closes it."""

    def connectionMade(self):
        body = json.dumps({"error": "too many connections: retry later"}).encode() + b"\n"
        self.transport.write(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        self.transport.loseConnection()


def make_site(resource, access_log=True, **kwargs):
    """The API's site (a L{CappedSite}, C{limit} connections at most): its
    requests are L{LimitedRequest}s, on L{DeadlineChannel}s, logged by
    L{access_line}."""
    site = (ProbeQuietSite if access_log else QuietSite)(
        resource, logFormatter=access_line, **kwargs
    )
    site.requestFactory = LimitedRequest
    site.protocol = DeadlineChannel
    return site


def json_body(request, status, data, *, records=True, encoded=False):
    """
    Set C{status} and the JSON headers; return the encoded body (C{data}
    itself if C{encoded}: JSON that holds no record, so nothing to mask).
    Where C{data} may hold cyme's records (C{records}), a broker's
    password is shown only to a caller with the admin scope; a task's
    result is what its URL answered, and is shown as it is.
    """
    if encoded:
        body = data
    else:
        body = json.dumps(masked(request, data) if records else data).encode("utf-8") + b"\n"
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    # A length, not chunks: one write per answer, and clients need not
    # decode chunked framing.
    request.setHeader(b"Content-Length", b"%d" % len(body))
    return body


def error_body(request, error):
    assert isinstance(error, CymeError)
    return json_body(request, error.status, error.to_json())


def _pairs(text, what):
    try:
        return parse_qsl(
            text,
            keep_blank_values=True,
            strict_parsing=False,
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_FIELDS,
        )
    except UnicodeDecodeError:
        raise BadRequest(what, f"{what} is not valid UTF-8") from None
    except ValueError:
        raise BadRequest(what, f"{what} has more than {MAX_FIELDS} fields") from None


def _merge(pairs):
    # A repeated key becomes a list (``queues=a&queues=b``); a single one
    # stays a string, as a form field is.
    merged = {}
    for key, value in pairs:
        if key in merged:
            old = merged[key]
            merged[key] = (old if isinstance(old, list) else [old]) + [value]
        else:
            merged[key] = value
    return merged


def fields(text, what):
    """The fields of a query string or form body (C{what} names it in errors)."""
    return _merge(_pairs(text, what))


def _check_header(header):
    if len(header) > MAX_PART_HEADER or header.count(b";") > MAX_HEADER_PARAMS:
        raise BadRequest(
            "body", f"a multipart/form-data header longer than {MAX_PART_HEADER} bytes "
                    f"or with more than {MAX_HEADER_PARAMS} parameters",
        )


def multipart_fields(body, content_type):
    """The fields of a C{multipart/form-data} body (at most L{MAX_FIELDS},
    each part's headers at most L{MAX_PART_HEADER} bytes and
    L{MAX_HEADER_PARAMS} parameters, counted before the parser runs; no
    part may nest another)."""
    boundary = re.search(rb'boundary="?([^";]{1,70})"?', content_type)
    if boundary is None:
        raise BadRequest("body", "malformed multipart/form-data body: no boundary")
    parts = body.split(b"--" + boundary.group(1))
    if len(parts) > MAX_FIELDS + 2:
        raise BadRequest("body", f"body has more than {MAX_FIELDS} fields")
    # The email parser takes time quadratic in a header's parameters
    # (60,000 in a 1 MiB body: 80 s): bound them first.
    _check_header(content_type)
    for part in parts[1:]:
        if part.startswith(b"--"):
            break  # the closing delimiter: what follows is no part
        end = min((i for i in (part.find(b"\r\n\r\n"), part.find(b"\n\n")) if i >= 0),
                  default=len(part))
        _check_header(part[:end])
    message = BytesParser(policy=policy.HTTP).parsebytes(
        b"Content-Type: " + content_type + b"\r\n\r\n" + body
    )
    if not message.is_multipart() or message.defects:
        raise BadRequest("body", "malformed multipart/form-data body")
    pairs = []
    for part in message.iter_parts():
        if part.is_multipart():
            raise BadRequest("body", "a multipart/form-data part may not nest parts")
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str) or not name:
            raise BadRequest("body", "a multipart/form-data part without a field name")
        try:
            pairs.append((name, (part.get_payload(decode=True) or b"").decode("utf-8")))
        except UnicodeDecodeError:
            raise BadRequest("body", f"form field {name!r} is not valid UTF-8") from None
        if len(pairs) > MAX_FIELDS:
            raise BadRequest("body", f"body has more than {MAX_FIELDS} fields")
    return _merge(pairs)


# A bracket, or a string: escapes and all, up to its closing quote or, if
# it has none, to the end of the text.  So no text is scanned twice (a
# string that must end with a quote made every unclosed one rescan the
# rest of the body: quadratic), and brackets inside strings do not count.
_JSON_TOKENS = re.compile(rb'[\[\]{}]|"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.S)


def check_json_depth(body, limit=MAX_JSON_DEPTH):
    """Refuse a JSON text nested deeper than C{limit}, before parsing it
    (the parser would recurse as deep as the text says), in one pass."""
    depth = 0
    for match in _JSON_TOKENS.finditer(body):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            if depth > limit:
                raise BadRequest("body", f"the JSON body is nested deeper than {limit}")
        elif token in (b"]", b"}"):
            depth -= 1


def query_fields(request):
    """The fields of the request's query string."""
    return fields(urlsplit(request.uri).query.decode("latin-1"), "query string")


def request_params(request):
    """
    The request's parameters: the query string, then the body over it.

    For POST, PUT and DELETE the original Cyme lets the query carry the
    data, so both are read; a body may be a form (urlencoded or multipart)
    or a JSON object.
    """
    params = query_fields(request)
    if request.method in (b"GET", b"HEAD"):
        return params
    body = request.content.read() if request.content is not None else b""
    ctype = (request.getHeader(b"content-type") or b"").split(b";")[0]
    ctype = ctype.strip().lower()
    if ctype == b"application/json" or ctype.endswith(b"+json"):
        if not body.strip():
            return params
        check_json_depth(body)
        try:
            data = json.loads(body)
        except ValueError as e:
            raise BadRequest("body", f"malformed JSON body: {e}") from None
        if not isinstance(data, dict):
            raise BadRequest("body", "the JSON body must be an object")
        params.update(data)
    elif ctype == b"multipart/form-data":
        params.update(multipart_fields(body, request.getHeader(b"content-type")))
    elif ctype in (b"application/x-www-form-urlencoded", b"") and body:
        try:
            text = body.decode("ascii")
        except UnicodeDecodeError:
            raise BadRequest("body", "a form body must be URL-encoded") from None
        params.update(fields(text, "body"))
    elif body:
        raise BadRequest(
            "Content-Type",
            "send the body as application/x-www-form-urlencoded, "
            "multipart/form-data or application/json",
        )
    return params
