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
  - at most L{MAX_REDIRECTS} redirects, each hop checked against
    C{allowed_hosts} when that is non-empty;
  - one overall deadline of C{timeout} seconds for the whole exchange
    (connect, redirects, headers and body), not per socket operation;
  - at most C{max_response_bytes} of response body read;
  - a non-2xx answer is a normal result with its status code; only a
    failure to get an answer (refused, DNS, timeout, TLS, size cap, a
    broken response) raises L{WebhookError}.
"""

import base64
import codecs
import email.message
import http.client
import socket
import ssl
import time
from urllib.parse import quote, urlencode, urljoin, urlsplit, urlunsplit

from urllib3 import exceptions as u3
from urllib3.connection import HTTPConnection, HTTPSConnection

from cyme import __version__

METHODS = ("HEAD", "GET", "POST", "PUT", "DELETE", "TRACE", "OPTIONS", "CONNECT", "PATCH")
SCHEMES = ("http", "https")
MAX_REDIRECTS = 5
DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_RESPONSE_BYTES = 10 * 1024 * 1024
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
USER_AGENT = f"cyme-webhook/{__version__}"

_URL_SAFE = "/%:@!$&'()*+,;=?~-._"
_REDIRECTS = (301, 302, 303, 307, 308)
_CHUNK = 64 * 1024
# Headers the client computes itself; a caller's value for them is ignored.
_RESERVED = {"host", "content-length", "transfer-encoding", "connection", "te", "upgrade", "keep-alive"}
# Headers dropped when a redirect leaves the original host.
_CREDENTIALS = {"authorization", "cookie", "proxy-authorization"}


class WebhookError(ValueError):
    """The request could not be performed; the message says why.

    A single string argument, so it pickles and serializes (Celery's
    C{exc_type}/C{exc_message}/C{exc_module}) as any built-in exception.
    """


def _fmt_seconds(seconds):
    return f"{seconds:g}"


def _parse_entry(entry):
    """An allowed-hosts entry as (host, port or None)."""
    entry = str(entry).strip().lower()
    if entry.startswith("["):  # [::1] or [::1]:8080
        inner, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        return inner, int(port) if port.isdigit() else None
    if entry.count(":") == 1:
        name, _, port = entry.partition(":")
        return name, int(port) if port.isdigit() else -1
    return entry, None


def host_allowed(url, allowed_hosts):
    """Whether C{url}'s host is in C{allowed_hosts} (empty allows every host).

    An entry is a host name or address (any port), C{host:port} (that port
    only), or C{*.example.com} (every subdomain of example.com, not
    example.com itself).  Comparison ignores case.
    """
    if not allowed_hosts:
        return True
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return False
    for entry in allowed_hosts:
        name, entry_port = _parse_entry(entry)
        if entry_port is not None and entry_port != port:
            continue
        if name.startswith("*."):
            if host.endswith(name[1:]):
                return True
        elif host == name:
            return True
    return False


def check_url(url, allowed_hosts=(), max_length=None):
    """Refuse C{url} unless it is an absolute http(s) URL with a host, within
    C{max_length} characters and C{allowed_hosts}; raise L{WebhookError}.
    Return the L{urllib.parse.SplitResult}.
    """
    if not isinstance(url, str) or not url:
        raise WebhookError(f"URL must be a non-empty string, not {url!r}")
    if max_length is not None and len(url) > max_length:
        raise WebhookError(f"URL longer than {max_length} characters")
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise WebhookError(f"URL contains whitespace or control characters: {url!r}")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        shown = f"{scheme}:" if scheme else "no scheme"
        raise WebhookError(f"only http and https URLs are allowed, not {shown}: {url}")
    if not parts.hostname:
        raise WebhookError(f"URL has no host: {url}")
    try:
        parts.port
    except ValueError:
        raise WebhookError(f"URL has an invalid port: {url}") from None
    if not host_allowed(url, allowed_hosts):
        raise WebhookError(f"host not allowed: {parts.hostname} ({url})")
    return parts


def _pairs(data, what):
    """C{data} (a dict or a list of pairs; values may be lists) as pairs."""
    if isinstance(data, dict):
        items = data.items()
    else:
        try:
            items = [tuple(pair) for pair in data]
        except TypeError:
            raise WebhookError(f"{what} must be a dict or a list of pairs") from None
        if any(len(pair) != 2 for pair in items):
            raise WebhookError(f"{what} must be a dict or a list of pairs")
    pairs = []
    for key, value in items:
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if v is None:
                v = ""
            elif isinstance(v, bool):
                v = "true" if v else "false"
            pairs.append((str(key), v if isinstance(v, (str, bytes)) else str(v)))
    return pairs


def add_query(url, query):
    """C{url} with C{query} (a dict or list of pairs) appended to its query."""
    if not query:
        return url
    encoded = urlencode(_pairs(query, "query"))
    if not encoded:
        return url
    parts = urlsplit(url)
    joined = f"{parts.query}&{encoded}" if parts.query else encoded
    return urlunsplit(parts._replace(query=joined))


def _charset(content_type):
    if not content_type:
        return None
    msg = email.message.Message()
    msg["content-type"] = content_type
    return msg.get_content_charset()


def encode_body(body, content_type=None):
    """The request body as (bytes or None, content type or None).

    A dict (or a list of pairs) is form data; a str is encoded with the
    charset of C{content_type} (default utf-8; default type text/plain);
    bytes are sent as they are (default type application/octet-stream).
    """
    if body is None:
        return None, content_type
    if isinstance(body, (dict, list, tuple)):
        return urlencode(_pairs(body, "body")).encode("ascii"), content_type or FORM_CONTENT_TYPE
    if isinstance(body, str):
        charset = _charset(content_type) or "utf-8"
        try:
            data = body.encode(charset)
        except LookupError:
            raise WebhookError(f"unknown charset in content type: {content_type}") from None
        except UnicodeEncodeError as exc:
            raise WebhookError(f"body cannot be encoded as {charset}: {exc}") from None
        return data, content_type or "text/plain; charset=utf-8"
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body), content_type or "application/octet-stream"
    raise WebhookError(f"body must be a dict, a list of pairs, str or bytes, not {type(body).__name__}")


def decode_content(data, content_type):
    """C{(content, "text")} when C{data} decodes with the charset of
    C{content_type} (utf-8 if none), else C{(base64 text, "base64")}."""
    charset = _charset(content_type) or "utf-8"
    try:
        codecs.lookup(charset)
        return data.decode(charset), "text"
    except (LookupError, UnicodeDecodeError):
        return base64.b64encode(data).decode("ascii"), "base64"


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


def _connection(parts, timeout):
    # Certificates and host names are checked (urllib3's default context).
    kind = HTTPSConnection if parts.scheme.lower() == "https" else HTTPConnection
    return kind(parts.hostname, parts.port, timeout=timeout)


def _target(method, parts):
    if method == "CONNECT":  # authority-form (RFC 9110 9.3.6)
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        return f"{host}:{port}"
    path = _ascii(parts.path or "/")
    return f"{path}?{_ascii(parts.query)}" if parts.query else path


def _ascii(text):
    """Percent-encode the non-ASCII characters of a path or query."""
    return text if text.isascii() else quote(text, safe=_URL_SAFE)


def _host_header(parts):
    host = parts.hostname
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise WebhookError(f"invalid host name: {parts.hostname}") from None
    if ":" in host:
        host = f"[{host}]"
    default = 443 if parts.scheme.lower() == "https" else 80
    if parts.port and parts.port != default:
        host = f"{host}:{parts.port}"
    return host


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


def _request(method, url, parts, data, headers, deadline, limit):
    """One hop: C{(status, headers, body or None if redirect)}."""
    conn = _connection(parts, deadline.remaining(url))
    try:
        headers = dict(headers, Host=_host_header(parts))
        if data is not None:
            headers["Content-Length"] = str(len(data))
        elif method in ("POST", "PUT", "PATCH"):
            headers["Content-Length"] = "0"
        conn.request(method, _target(method, parts), body=data, headers=headers,
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
    @param allowed_hosts: when non-empty, the only hosts the request and
        its redirects may go to (see L{host_allowed}).

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
    allowed_hosts = tuple(allowed_hosts or ())

    url = add_query(url, query) if isinstance(url, str) else url
    parts = check_url(url, allowed_hosts)
    data, content_type = encode_body(body, content_type)

    request_headers = {"User-Agent": USER_AGENT}
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
    redirects = 0
    while True:
        try:
            status, message, content = _request(method, url, parts, data, request_headers, deadline, limit)
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
        location = urljoin(url, message.get("location").strip())
        scheme = urlsplit(location).scheme.lower()
        if scheme not in SCHEMES:
            raise WebhookError(f"redirect to a non-http(s) URL refused: {location} (from {url})")
        try:
            new_parts = check_url(location, allowed_hosts)
        except WebhookError as exc:
            raise WebhookError(f"redirect refused: {exc} (from {url})") from None
        if status == 303 or (status in (301, 302) and method == "POST"):
            if method != "HEAD":
                method = "GET"
            data = None
            request_headers = {k: v for k, v in request_headers.items() if k.lower() != "content-type"}
        if (new_parts.hostname or "").lower() != (original_host or "").lower():
            request_headers = {k: v for k, v in request_headers.items() if k.lower() not in _CREDENTIALS}
        url, parts = location, new_parts
