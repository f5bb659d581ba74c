"""HTTP to one branch for L{cyme.client}, on urllib3: JSON in, JSON or a typed error out.

The branch's URL may carry a path (a branch behind a proxy at
C{https://ops.example.com/cyme}); C{cacert} names the CA file that signed
the branch's certificate (a private CA), and a token goes in every
request's C{Authorization} header, never in a URL.
"""

import json
import re
import warnings
from urllib.parse import quote, urlencode, urlsplit

import urllib3

from cyme import __version__
from cyme.client.errors import ClientError, ConnectionFailed, error_for

DEFAULT_URL = "http://localhost:8000"
#: Seconds a call waits for its answer: creating, restarting or enabling
#: an instance answers once its worker does (the branch's --ready-timeout).
DEFAULT_TIMEOUT = 60.0


class PartialAnswer(UserWarning):
    """A listing or a replicated write that some live branches did not answer."""


def path(*segments, trailing=True):
    """
    A path of the API from names: each one percent-encoded whole (a C{/}
    in a name stays inside its segment); C{"!"}, the original Cyme's
    no-wait marker, stays as it is.
    """
    parts = [s if s == "!" else quote(str(s), safe="") for s in segments]
    return "/" + "/".join(parts) + ("/" if trailing and parts else "")


def _warn(method, target, missing):
    warnings.warn(
        PartialAnswer(f"{method} {target}: no answer from branch(es) {', '.join(missing)}"),
        stacklevel=4,
    )


class Transport:
    """
    Requests to the branch at C{url}; C{on_partial(method, path, missing)}
    is told of answers that lack some branches (by default: a
    L{PartialAnswer} warning).
    """

    def __init__(self, url=None, token=None, cacert=None, timeout=DEFAULT_TIMEOUT,
                 on_partial=None):
        url = (url or DEFAULT_URL).strip()
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ClientError(f"not an http:// or https:// URL: {url}")
        if "@" in parts.netloc:
            # It would be repeated in every error message; a branch takes a token.
            raise ClientError("a branch's URL takes no user or password: give a token")
        self.url = url.rstrip("/")
        self.prefix = parts.path.rstrip("/")
        self.timeout = timeout
        self.on_partial = on_partial or _warn
        self.headers = {
            "Accept": "application/json",
            "User-Agent": f"cyme-client/{__version__}",
        }
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        tls = {}
        if cacert and parts.scheme == "https":
            tls = {"ca_certs": cacert, "cert_reqs": "CERT_REQUIRED"}
        # retries=False: a refused connection is an answer for a person at a
        # terminal, and a write must never be sent twice.
        self.pool = urllib3.connection_from_url(
            f"{parts.scheme}://{parts.netloc}", retries=False, maxsize=4, **tls
        )

    def __repr__(self):
        return f"<Transport {self.url}>"  # never the token

    def request(self, method, target, params=None, body=None, form=None, raw=None,
                timeout=None, headers=None):
        """
        C{method} C{target} (a path from L{path}, sent as written after the
        URL's own path), with C{params} in the query string and C{body} as
        a JSON object, C{form} as form fields, or C{raw} bytes (with the
        C{Content-Type} of C{headers}); the answer's JSON (None for an
        empty body), or the L{APIError} it stands for.
        """
        return self.exchange(method, target, params, body, form, raw, timeout, headers)[0]

    def exchange(self, method, target, params=None, body=None, form=None, raw=None,
                 timeout=None, headers=None):
        """L{request}'s answer and the answer's headers."""
        target = self.prefix + target
        if params:
            target += ("&" if "?" in target else "?") + urlencode(_values(params), doseq=True)
        sent = dict(self.headers, **(headers or {}))
        data = raw
        if body is not None:
            data = json.dumps(_values(body)).encode("utf-8")
            sent["Content-Type"] = "application/json"
        elif form is not None:
            data = urlencode(form, doseq=True).encode("ascii")
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        seconds = self.timeout if timeout is None else timeout
        try:
            response = self.pool.urlopen(
                method, target, body=data, headers=sent, redirect=False,
                timeout=urllib3.Timeout(connect=min(seconds, 10.0), read=seconds),
            )
        except urllib3.exceptions.HTTPError as e:
            raise ConnectionFailed(f"cannot reach {self.url}: {_reason(e)}") from None
        answer = _decode(response)
        missing = response.headers.get("Cyme-Missing-Branches")
        if missing:
            self.on_partial(method, target, [m for m in missing.split(",") if m])
        if response.status >= 400:
            raise error_for(response.status, answer)
        return answer, response.headers

    def stream(self, target, params=None, headers=None, silence=60.0):
        """
        C{GET target} answered as it comes (C{GET /events/}): its text
        lines (a context manager that releases the connection), or the
        L{APIError} it stands for; C{silence}: seconds without a byte
        before the connection is taken for dead (L{ConnectionFailed}).
        """
        target = self.prefix + target
        given = _values(params or {})
        if given:
            target += "?" + urlencode(given, doseq=True)
        try:
            response = self.pool.urlopen(
                "GET", target, headers=dict(self.headers, **(headers or {})), redirect=False,
                preload_content=False, timeout=urllib3.Timeout(connect=10.0, read=silence),
            )
        except urllib3.exceptions.HTTPError as e:
            raise ConnectionFailed(f"cannot reach {self.url}: {_reason(e)}") from None
        if response.status >= 400:
            raise error_for(response.status, _decode(response))
        return _Lines(response, self.url)


class _Lines:
    """The text lines of a streamed answer, its connection released at the end."""

    def __init__(self, response, url):
        self.response = response
        self.url = url

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.response.release_conn()

    def __iter__(self):
        try:
            for line in self.response:
                yield line.decode("utf-8", "replace")
        except urllib3.exceptions.HTTPError as e:
            raise ConnectionFailed(f"lost {self.url}: {_reason(e)}") from None


def _values(mapping):
    """The values that are set: None means "not given", never sent."""
    return {k: v for k, v in mapping.items() if v is not None}


def _decode(response):
    if not response.data:
        return None
    ctype = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        try:
            return json.loads(response.data)
        except ValueError:
            pass
    if response.status >= 400:
        return None  # a proxy's HTML error page: its status says it all
    raise ClientError(f"the branch answered {response.status} with {ctype or 'no'} "
                      f"content type, not JSON", response.status)


# urllib3 names the connection object first: "HTTPConnection(host=..., port=...): "
_CONNECTION = re.compile(r"^[A-Za-z]*Connection(Pool)?\(host=[^)]*\):\s*")


def _reason(error):
    reason = getattr(error, "reason", None) or error
    return _CONNECTION.sub("", str(reason)) or type(error).__name__
