"""What a webhook sends and gets back: query strings, request bodies in
their encodings, response bodies as text or base64.

Pure functions of L{cyme.tasks.webhook}'s request; a C{ValueError} says
what is wrong with the data (the webhook reports it as its own error).
"""

import base64
import codecs
import email.message
from urllib.parse import urlencode, urlsplit, urlunsplit

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"


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
