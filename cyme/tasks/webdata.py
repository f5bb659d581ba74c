"""What a webhook sends and gets back: the request target and Host header,
query strings, request bodies in their encodings, response bodies as text
or base64.

Pure functions of L{cyme.tasks.webhook}'s request; a C{ValueError} says
what is wrong with the data (the webhook reports it as its own error).
"""

import base64
import codecs
import email.message
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

from cyme.fence import literal_address

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
_URL_SAFE = "/%:@!$&'()*+,;=?~-._"


def _pairs(data, what):
    """C{data} (a dict or a list of pairs; values may be lists) as pairs."""
    if isinstance(data, dict):
        items = data.items()
    else:
        try:
            items = [tuple(pair) for pair in data]
        except TypeError:
            raise ValueError(f"{what} must be a dict or a list of pairs") from None
        if any(len(pair) != 2 for pair in items):
            raise ValueError(f"{what} must be a dict or a list of pairs")
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
            raise ValueError(f"unknown charset in content type: {content_type}") from None
        except UnicodeEncodeError as exc:
            raise ValueError(f"body cannot be encoded as {charset}: {exc}") from None
        return data, content_type or "text/plain; charset=utf-8"
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body), content_type or "application/octet-stream"
    raise ValueError(f"body must be a dict, a list of pairs, str or bytes, not {type(body).__name__}")


def decode_content(data, content_type):
    """C{(content, "text")} when C{data} decodes with the charset of
    C{content_type} (utf-8 if none), else C{(base64 text, "base64")}."""
    charset = _charset(content_type) or "utf-8"
    try:
        codecs.lookup(charset)
        return data.decode(charset), "text"
    except (LookupError, UnicodeDecodeError):
        return base64.b64encode(data).decode("ascii"), "base64"


def target(method, parts):
    """The request target of C{method} on the URL C{parts}."""
    if method == "CONNECT":  # authority-form (RFC 9110 9.3.6)
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        return f"{host}:{port}"
    path = _ascii(parts.path or "/")
    return f"{path}?{_ascii(parts.query)}" if parts.query else path


def _ascii(text):
    """Percent-encode the non-ASCII characters of a path or query."""
    return text if text.isascii() else quote(text, safe=_URL_SAFE)


def ascii_host(parts):
    """The host as it goes on the wire: IDNA-encoded, an address bare."""
    host = parts.hostname
    literal = literal_address(host)
    if literal is not None:
        # "2130706433" or "0x7f.1" is 127.0.0.1: the address as others write it.
        return str(literal)
    if not host.isascii():
        try:
            return host.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError(f"invalid host name: {parts.hostname}") from None
    return host


def host_header(parts):
    """The Host header for the URL C{parts}: the name, never the address
    the connection goes to."""
    host = ascii_host(parts)
    if ":" in host:
        host = f"[{host}]"
    default = 443 if parts.scheme.lower() == "https" else 80
    if parts.port and parts.port != default:
        host = f"{host}:{parts.port}"
    return host
