"""Perform one HTTP request for the C{cyme.webhook} task.

The transport is urllib3's connection and response (TLS with the system's
trust store and host name checks, request framing, chunked bodies), one
connection per hop; the URL policy is ours, so redirects are never left to
urllib3: each hop is checked before it is requested.  Importable without
Celery: the worker's task in L{cyme.tasks.worker} calls L{perform}, and the
branch may use L{check_url} to refuse a URL before it queues it.

What L{perform} guarantees:

  - only C{http} and C{https} URLs, for the request and for every redirect
    hop (a redirect to C{file:}, C{ftp:}, ... is refused, never followed);
  - at most L{MAX_REDIRECTS} redirects;
  - every hop fenced (L{cyme.fence}): its host looked up once, each address
    found judged by the app's C{allowed_hosts} or else the default policy,
    inside refused ranges only where the branch's operator C{opened} them,
    and the connection made to an address judged, never to the name (so a
    second lookup cannot lead elsewhere: no DNS rebinding);
  - every request says it comes through cyme (C{Via: 1.1 cyme-webhook}),
    so that a cyme branch never takes it for a caller of its own machine;
  - one overall deadline of C{timeout} seconds for the whole exchange
    (connect, redirects, headers and body), not per socket operation;
  - at most C{max_response_bytes} of response body read;
  - a non-2xx answer is a normal result with its status code; only a
    failure to get an answer (refused, DNS, timeout, TLS, size cap, a
    broken response) raises L{WebhookError}.
"""

import base64
import functools
import http.client
import re
import socket
import ssl
import time
from urllib.parse import urljoin, urlsplit

from urllib3 import exceptions as u3
from urllib3.connection import HTTPConnection, HTTPSConnection

from cyme import __version__
from cyme.fence import Both, Fence, Refused, literal_address
from cyme.tasks.webdata import (
    add_query, ascii_host, decode_content, encode_body, host_header, target,
)

METHODS = ("HEAD", "GET", "POST", "PUT", "DELETE", "TRACE", "OPTIONS", "CONNECT", "PATCH")
SCHEMES = ("http", "https")
MAX_REDIRECTS = 5
DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_RESPONSE_BYTES = 10 * 1024 * 1024
USER_AGENT = f"cyme-webhook/{__version__}"
#: On every request: the server sees that a proxy (cyme) forwards it.
VIA = "1.1 cyme-webhook"

_REDIRECTS = (301, 302, 303, 307, 308)
_CHUNK = 64 * 1024
# Headers the client computes itself; a caller's value for them is ignored.
_RESERVED = {"host", "content-length", "transfer-encoding", "connection", "te", "upgrade", "keep-alive", "via"}
# Headers dropped when a redirect leaves the original host.
_CREDENTIALS = {"authorization", "cookie", "proxy-authorization"}


class WebhookError(ValueError):
    """The request could not be performed; the message says why.

    A single string argument, so it pickles and serializes (Celery's
    C{exc_type}/C{exc_message}/C{exc_module}) as any built-in exception.
    """


class HostRefused(WebhookError):
    """The fence refused a hop: C{host} and C{rule} say which and why (None
    once the error went through a result message, which keeps the text)."""

    host = rule = None


def _fmt_seconds(seconds):
    return f"{seconds:g}"


#: Whitespace and control characters, which no URL may carry.
_CONTROL = re.compile(r"[\x00-\x20\x7f]")


def check_url(url, allowed_hosts=(), max_length=None, deny_private=False, opened=()):
    """Refuse C{url} unless it is an absolute http(s) URL with a host, within
    C{max_length} characters, that the fence (L{cyme.fence.Fence}) does not
    refuse on its face (an address literal, or a name that no entry of a
    non-empty C{allowed_hosts} could allow); raise L{WebhookError}.
    Return the L{urllib.parse.SplitResult}.
    """
    return _check(url, _fence(allowed_hosts, deny_private, opened), max_length)


def _check(url, fence, max_length=None):
    if not isinstance(url, str) or not url:
        raise WebhookError(f"URL must be a non-empty string, not {url!r}")
    if max_length is not None and len(url) > max_length:
        raise WebhookError(f"URL longer than {max_length} characters")
    if _CONTROL.search(url):
        raise WebhookError(f"URL contains whitespace or control characters: {url!r}")
    try:
        parts = urlsplit(url)
    except ValueError as e:
        # The parser's own refusals ("http://[::1/": an unclosed bracket).
        raise WebhookError(f"invalid URL ({e}): {url}") from None
    try:
        port = parts.port
    except ValueError:
        raise WebhookError(f"URL has an invalid port: {url}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        shown = f"{scheme}:" if scheme else "no scheme"
        raise WebhookError(f"only http and https URLs are allowed, not {shown}: {url}")
    if not parts.hostname:
        raise WebhookError(f"URL has no host: {url}")
    judge(url, parts, port_of(parts, port), fence)
    return parts


def _fence(allowed_hosts, deny_private, opened=(), narrowed_by=()):
    try:
        return fence_for(tuple(allowed_hosts), bool(deny_private), tuple(opened),
                         tuple(narrowed_by))
    except TypeError:  # not lists, or unhashable entries: a forged task
        raise WebhookError("allowed_hosts must be lists of host names") from None


@functools.lru_cache(maxsize=256)
def fence_for(allowed_hosts, deny_private, opened=(), narrowed_by=()):
    """
    The fence of an allow-list (a tuple), parsed once for its tasks:
    C{opened}, the operator's openings inside the refused ranges;
    C{narrowed_by}, when not empty, a second list a hop must pass too.
    """
    own = Fence(allowed_hosts, deny_private, opened)
    return Both(own, Fence(narrowed_by, deny_private, opened)) if narrowed_by else own


def port_of(parts, port=None):
    """The port a hop connects to (the scheme's default if none is given)."""
    return port or parts.port or (443 if parts.scheme.lower() == "https" else 80)


def judge(url, parts, port, fence, addresses=None):
    """
    The addresses the hop to C{parts} may connect to, as strings: the host's
    own when it is an address literal, else C{addresses} (what one lookup
    of the name found; None: not looked up yet, then only what the name
    alone settles is judged and None is returned).  Raise L{WebhookError}
    for a hop that the fence refuses.
    """
    host = parts.hostname
    try:
        literal = literal_address(host)
        if literal is not None:
            fence.check(host, port, literal)
            return [str(literal)]
        if addresses is None:
            fence.needs_addresses(host, port)
            return None
        return fence.check_all(host, port, addresses)
    except Refused as e:
        error = HostRefused(f"{e}: {url}")
        error.host, error.rule = e.host, e.rule
        raise error from None


class _Deadline:
    def __init__(self, timeout):
        self.timeout = timeout
        self.end = time.monotonic() + timeout

    def remaining(self, url):
        left = self.end - time.monotonic()
        if left <= 0:
            raise self.error(url)
        return left

    def error(self, url):
        return WebhookError(f"timed out after {_fmt_seconds(self.timeout)} s: {url}")


def system_resolve(host, port):
    """The addresses of C{host}, from one lookup by the system's resolver."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


def _addresses(url, parts, fence, resolve):
    """The checked addresses of the hop to C{parts}: one lookup, judged."""
    port = port_of(parts)
    found = judge(url, parts, port, fence)
    if found is None:
        found = judge(url, parts, port, fence, resolve(parts.hostname, port))
    return found


def _connect(parts, addresses, url, deadline):
    """
    A connection to the first of C{addresses} (checked by the fence) that
    takes it.  The socket goes to an address, never to the name again, so
    that a second lookup cannot lead elsewhere (DNS rebinding); the Host
    header (L{host_header}), TLS's server name and its certificate check
    stay on the name.
    """
    https = parts.scheme.lower() == "https"
    error = None
    for address in addresses:
        if https:
            # Certificates and host names are checked (urllib3's default context).
            conn = HTTPSConnection(address, port_of(parts), timeout=deadline.remaining(url),
                                   server_hostname=ascii_host(parts))
        else:
            conn = HTTPConnection(address, port_of(parts), timeout=deadline.remaining(url))
        try:
            conn.connect()
            return conn
        except (u3.NewConnectionError, ConnectionError) as e:
            # Not listening there: the name's next address may be.
            conn.close()
            error = e
        except BaseException:
            conn.close()
            raise
    raise error


def _read_body(response, sock, url, deadline, limit):
    length = response.headers.get("content-length")
    if length is not None and length.strip().isdigit() and int(length) > limit:
        raise WebhookError(f"response larger than {limit} bytes: {url}")
    chunks = []
    size = 0
    # Closed once the whole body is read (its socket with it).
    while not response.closed:
        # The deadline is overall: each read may wait only what is left.
        sock.settimeout(deadline.remaining(url))
        chunk = response.read1(min(_CHUNK, limit - size + 1))
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise WebhookError(f"response larger than {limit} bytes: {url}")
        chunks.append(chunk)
    return b"".join(chunks)


def _request(method, url, parts, addresses, data, headers, deadline, limit):
    """One hop: C{(status, headers, body or None if redirect)}."""
    conn = _connect(parts, addresses, url, deadline)
    try:
        headers = dict(headers, Host=host_header(parts))
        if data is not None:
            headers["Content-Length"] = str(len(data))
        elif method in ("POST", "PUT", "PATCH"):
            headers["Content-Length"] = "0"
        conn.request(method, target(method, parts), body=data, headers=headers,
                     preload_content=False, decode_content=False)
        # The response may take the socket from the connection (when the
        # server will close it): keep it to shorten its timeout.
        sock = conn.sock
        # Read by getresponse() for the status line and headers.
        conn.timeout = deadline.remaining(url)
        response = conn.getresponse()
        if response.status in _REDIRECTS and response.headers.get("location"):
            return response.status, response.headers, None
        body = b"" if method == "HEAD" else _read_body(response, sock, url, deadline, limit)
        return response.status, response.headers, body
    finally:
        conn.close()


def _failure(exc, url, parts, deadline):
    """The L{WebhookError} for what the transport raised on C{url}."""
    if isinstance(exc, WebhookError):
        return exc
    if isinstance(exc, u3.NameResolutionError):
        cause = exc.__cause__
        reason = getattr(cause, "strerror", None) or cause or exc
        return WebhookError(f"cannot resolve host {parts.hostname!r} ({reason}): {url}")
    if isinstance(exc, u3.NewConnectionError):
        # urllib3 wraps the socket's error: judge that one.
        exc = exc.__cause__ or exc
    elif isinstance(exc, u3.ProtocolError) and len(exc.args) > 1:
        exc = exc.args[1]
    elif isinstance(exc, u3.SSLError):
        exc = exc.__cause__ or exc
    if isinstance(exc, (TimeoutError, socket.timeout, u3.TimeoutError)):
        return deadline.error(url)
    if isinstance(exc, socket.gaierror):
        return WebhookError(f"cannot resolve host {parts.hostname!r} ({exc.strerror}): {url}")
    if isinstance(exc, ConnectionRefusedError):
        return WebhookError(f"connection refused: {url}")
    if isinstance(exc, (ssl.SSLError, u3.SSLError)):
        return WebhookError(f"TLS error ({getattr(exc, 'reason', None) or exc}): {url}")
    if isinstance(exc, http.client.RemoteDisconnected):
        return WebhookError(f"connection closed without a response: {url}")
    if isinstance(exc, (http.client.IncompleteRead, u3.IncompleteRead)):
        got = exc.partial if isinstance(exc.partial, int) else len(exc.partial)
        return WebhookError(f"response body incomplete ({got} bytes received): {url}")
    if isinstance(exc, (http.client.HTTPException, u3.HTTPError)):
        return WebhookError(f"bad HTTP response ({type(exc).__name__}: {exc}): {url}")
    if isinstance(exc, ConnectionError):
        return WebhookError(f"connection failed ({exc.strerror or exc}): {url}")
    if isinstance(exc, OSError):
        return WebhookError(f"network error ({exc.strerror or exc}): {url}")
    # An invalid header name or value, a URL the client refuses.
    return WebhookError(f"invalid request ({exc}): {url}")


def _redirect_refused(exc, came_from):
    # Still a HostRefused (with its host and rule) when the fence said no.
    refused = type(exc)(f"redirect refused: {exc} (from {came_from})")
    refused.__dict__.update(exc.__dict__)
    return refused


def _headers(headers):
    """Response headers as a dict, repeated ones joined with commas."""
    return dict(headers.itermerged())


def perform(
    method,
    url,
    query=None,
    body=None,
    content_type=None,
    headers=None,
    timeout=DEFAULT_TIMEOUT,
    max_response_bytes=DEFAULT_MAX_RESPONSE_BYTES,
    allowed_hosts=(),
    deny_private=False,
    resolve=system_resolve,
    opened=(),
    narrowed_by=(),
):
    """Perform the HTTP request and return its outcome as a JSON-able dict.

    @param method: one of L{METHODS} (any case).
    @param url: an absolute http or https URL.
    @param query: a dict or a list of pairs (values may be lists), appended
        to the URL's query string.
    @param body: form data (a dict or a list of pairs, sent as
        application/x-www-form-urlencoded), or a raw str or bytes body.
    @param content_type: the raw body's content type.
    @param headers: extra request headers (Host, Content-Length and other
        hop-by-hop headers are the client's and ignored).
    @param timeout: seconds for the whole exchange, redirects included.
    @param max_response_bytes: the largest response body accepted.
    @param allowed_hosts: when non-empty, the only hosts and networks the
        request and its redirects may go to (see L{cyme.fence}); when empty,
        the default policy refuses loopback, link-local, unspecified,
        multicast (and with C{deny_private} private) addresses.
    @param opened: where the operator opened the refused ranges
        (C{--webhook-allow}): C{allowed_hosts} opens them only there.
    @param narrowed_by: a task's own C{allowed_hosts}: when not empty, a
        hop must be allowed by it too (it narrows, never widens).
    @param resolve: C{(host, port) -> [address]}, called once per hop: the
        connection goes to the addresses it returned and the fence checked.

    @return: C{{"status_code": int, "url": final URL, "headers": {name:
        value}, "content": str, "encoding": "text" or "base64"}}.
    @raise WebhookError: the request could not be performed.
    """
    if not isinstance(method, str) or method.upper() not in METHODS:
        raise WebhookError(f"unsupported HTTP method {method!r}; use one of {', '.join(METHODS)}")
    method = method.upper()
    try:
        timeout = float(timeout)
        limit = int(max_response_bytes)
    except (TypeError, ValueError):
        raise WebhookError("timeout and max_response_bytes must be numbers") from None
    if not timeout > 0:
        raise WebhookError(f"timeout must be positive, not {timeout!r}")
    if limit < 0:
        raise WebhookError(f"max_response_bytes must not be negative, not {limit!r}")
    fence = _fence(allowed_hosts or (), deny_private, opened or (), narrowed_by or ())

    try:
        url = add_query(url, query) if isinstance(url, str) else url
        data, content_type = encode_body(body, content_type)
    except ValueError as e:
        raise WebhookError(str(e)) from None
    parts = _check(url, fence)

    request_headers = {"User-Agent": USER_AGENT, "Via": VIA}
    for name, value in (headers or {}).items():
        if str(name).lower() not in _RESERVED:
            request_headers[str(name)] = str(value)
    if content_type is not None:
        request_headers = {k: v for k, v in request_headers.items() if k.lower() != "content-type"}
        request_headers["Content-Type"] = content_type
    if parts.username is not None:
        credentials = f"{parts.username}:{parts.password or ''}".encode()
        request_headers.setdefault("Authorization", "Basic " + base64.b64encode(credentials).decode("ascii"))

    deadline = _Deadline(timeout)
    original_host = parts.hostname
    came_from = None  # the URL that redirected here
    redirects = 0
    while True:
        try:
            try:
                addresses = _addresses(url, parts, fence, resolve)
            except WebhookError as exc:
                raise exc if came_from is None else _redirect_refused(exc, came_from)
            status, message, content = _request(method, url, parts, addresses, data,
                                                request_headers, deadline, limit)
        except (ValueError, OSError, http.client.HTTPException, u3.HTTPError) as exc:
            raise _failure(exc, url, parts, deadline) from None

        if content is not None:
            text, encoding = decode_content(content, message.get("content-type"))
            return {
                "status_code": status,
                "url": url,
                "headers": _headers(message),
                "content": text,
                "encoding": encoding,
            }

        redirects += 1
        if redirects > MAX_REDIRECTS:
            raise WebhookError(f"too many redirects (more than {MAX_REDIRECTS}): {url}")
        try:
            location = urljoin(url, message.get("location").strip())
            scheme = urlsplit(location).scheme.lower()
        except ValueError:
            raise WebhookError(f"redirect to an invalid URL refused (from {url})") from None
        if scheme not in SCHEMES:
            raise WebhookError(f"redirect to a non-http(s) URL refused: {location} (from {url})")
        try:
            new_parts = _check(location, fence)
        except WebhookError as exc:
            raise _redirect_refused(exc, url) from None
        if status == 303 or (status in (301, 302) and method == "POST"):
            if method != "HEAD":
                method = "GET"
            data = None
            request_headers = {k: v for k, v in request_headers.items() if k.lower() != "content-type"}
        if (new_parts.hostname or "").lower() != (original_host or "").lower():
            request_headers = {k: v for k, v in request_headers.items() if k.lower() not in _CREDENTIALS}
        url, parts, came_from = location, new_parts, url
