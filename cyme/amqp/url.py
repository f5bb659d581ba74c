"""Broker addresses: ``amqp://user:pass@host:port/vhost`` parsed into parts.

txAMQP's ``AMQEndpoint.from_uri`` mis-parses ``host:port``, so cyme parses
URLs itself, the way Celery and kombu read them: ``amqp``/``pyamqp`` (and
``amqps`` for TLS) schemes, URL-encoded parts, and a path of ``//`` (or none,
or ``/``) meaning the default vhost ``/``.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, quote, unquote, urlsplit

import attrs

__all__ = ["BrokerURL", "parse_broker_url", "mask_passwords"]

# The password of any "scheme://user:password@" in a text.
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^/@:\s]*:)[^@\s]*@")


def mask_passwords(text: str) -> str:
    """C{text} with the password of every URL in it replaced by C{**}: for
    a log line or an error that may quote a broker URL."""
    return _USERINFO.sub(r"\1**@", str(text))

_PLAIN_SCHEMES = {"amqp", "pyamqp", "librabbitmq"}
_TLS_SCHEMES = {"amqps", "pyamqps"}


@attrs.frozen
class BrokerURL:
    """Where and as whom to connect to an AMQP broker."""

    host: str = "localhost"
    port: int = 5672
    userid: str = "guest"
    password: str = attrs.field(default="guest", repr=False)
    vhost: str = "/"
    tls: bool = False
    heartbeat: int | None = None

    def to_url(self, *, with_password: bool = False) -> str:
        """The URL back again; the password is masked unless asked for."""
        scheme = "amqps" if self.tls else "amqp"
        password = quote(self.password, safe="") if with_password else "**"
        host = f"[{self.host}]" if ":" in self.host else self.host
        userinfo = f"{quote(self.userid, safe='')}:{password}"
        return f"{scheme}://{userinfo}@{host}:{self.port}/{quote(self.vhost, safe='')}"

    def __str__(self) -> str:
        return self.to_url()


def parse_broker_url(url: str) -> BrokerURL:
    """Parse C{url}; raise C{ValueError} on anything that is not AMQP."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _PLAIN_SCHEMES | _TLS_SCHEMES:
        raise ValueError(f"not an AMQP URL (scheme {parts.scheme!r})")
    tls = scheme in _TLS_SCHEMES
    try:
        port = parts.port
    except ValueError as e:
        raise ValueError(f"bad port in broker URL: {e}") from None
    kwargs: dict = {"tls": tls, "port": port or (5671 if tls else 5672)}
    if parts.hostname:
        kwargs["host"] = unquote(parts.hostname)
    if parts.username is not None:
        kwargs["userid"] = unquote(parts.username)
    if parts.password is not None:
        kwargs["password"] = unquote(parts.password)
    kwargs["vhost"] = _vhost(parts.path)
    query = parse_qs(parts.query)
    if "heartbeat" in query:
        kwargs["heartbeat"] = int(float(query["heartbeat"][-1]))
    return BrokerURL(**kwargs)


def _vhost(path: str) -> str:
    # Kombu's reading: the first "/" separates; what is left, decoded, is
    # the vhost, and nothing left means the default one.
    rest = path[1:] if path.startswith("/") else path
    return unquote(rest) or "/"
