"""HTTP plumbing under the API: a request that caps its body, a site that
caps its connections, JSON answers, and the parameters of a request read
from its query, form or JSON body, each bounded before it is parsed.
"""

import json
import re
from email import policy
from email.parser import BytesParser
from urllib.parse import parse_qsl, urlsplit

from twisted.internet.protocol import Protocol
from twisted.protocols.policies import WrappingFactory
from twisted.web import server

from cyme.api.auth import masked
from cyme.errors import BadRequest, CymeError

MAX_BODY = 1 << 20
MAX_FIELDS = 1000
#: The deepest nesting of arrays and objects a JSON body may have.
MAX_JSON_DEPTH = 32
#: The most connections a branch's API holds open at once (a 503 beyond).
MAX_CONNECTIONS = 1024


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


class QuietSite(server.Site):
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


class ConnectionCap(WrappingFactory):
    """
    The site's factory with at most C{limit} connections open at once:
    each one beyond is answered 503 and closed, so that idle or slow
    clients cannot hold every file descriptor of the branch.
    """

    def __init__(self, site, limit=MAX_CONNECTIONS):
        super().__init__(site)
        self.limit = limit

    def buildProtocol(self, addr):
        if len(self.protocols) >= self.limit:
            return _Busy()
        return super().buildProtocol(addr)


def make_site(resource, access_log=True, **kwargs):
    """The API's site: its requests are L{LimitedRequest}s.  (The daemon
    serves it behind a L{ConnectionCap}.)"""
    site = (server.Site if access_log else QuietSite)(resource, **kwargs)
    site.requestFactory = LimitedRequest
    return site


def json_body(request, status, data, encoded=False):
    """
    Set C{status} and the JSON headers; return the encoded body (C{data}
    itself if C{encoded}: JSON that holds no record, so nothing to mask).
    """
    # A broker's password only for a caller with the admin scope.
    body = data if encoded else json.dumps(masked(request, data)).encode("utf-8") + b"\n"
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


def multipart_fields(body, content_type):
    """The fields of a C{multipart/form-data} body (at most L{MAX_FIELDS},
    counted before the parser runs; no part may nest another)."""
    boundary = re.search(rb'boundary="?([^";]{1,70})"?', content_type)
    if boundary is None:
        raise BadRequest("body", "malformed multipart/form-data body: no boundary")
    if body.count(b"--" + boundary.group(1)) > MAX_FIELDS + 1:
        raise BadRequest("body", f"body has more than {MAX_FIELDS} fields")
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


_JSON_TOKENS = re.compile(rb'[\[\]{}]|"[^"\\]*(?:\\.[^"\\]*)*"', re.S)


def check_json_depth(body, limit=MAX_JSON_DEPTH):
    """Refuse a JSON text nested deeper than C{limit}, before parsing it
    (the parser would recurse as deep as the text says)."""
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
