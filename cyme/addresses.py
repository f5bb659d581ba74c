"""The branch's addresses: its HTTP endpoint from the command line, and the
URLs others and its own tools reach it at.

The original Cyme's C{[address]:port} argument becomes a Twisted server
endpoint string; the URL advertised to other branches names this machine's
address when the branch listens on every interface; the loopback URL is
where C{cyme-branch token} finds the running branch of a root directory.
"""

import re
import socket

from twisted.python import usage


# ``[host]:port``: the host part, when present, ends with a colon, so that
# ``8001`` is a port and never host ``800`` with port ``1``.
_ADDRESS = re.compile(
    r"\A(?:(?:\[(?P<ip6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9._-]*)):)?"
    r"(?P<port>\d{1,5})\Z"
)


def address_to_endpoint(address):
    """
    The server endpoint string for the original Cyme's C{[address]:port}
    argument.

    C{:8001} listens on every interface, C{localhost:8001} or
    C{[::1]:8001} on one.
    """
    match = _ADDRESS.match(address.strip())
    if not match:
        raise usage.UsageError(f"address must be [host]:port, not {address!r}")
    port = int(match.group("port"))
    if not 0 <= port <= 65535:
        raise usage.UsageError(f"port must be 0-65535, not {port}")
    if match.group("ip6"):
        interface = match.group("ip6").replace(":", "\\:")
        return f"tcp6:{port}:interface={interface}"
    if match.group("host"):
        return f"tcp:{port}:interface={match.group('host')}"
    return f"tcp:{port}"


def _interface_addresses():
    """The IPv4 addresses of this machine's interfaces (Linux)."""
    import fcntl
    import struct

    found = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(
                    s.fileno(), 0x8915,  # SIOCGIFADDR
                    struct.pack("256s", name.encode("utf-8")[:15]),
                )
            except OSError:
                continue
            found.append(socket.inet_ntoa(packed[20:24]))
    return found


def _machine_address():
    """This machine's first non-loopback IPv4 address, else its name."""
    candidates = []
    try:
        candidates += [a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)]
    except OSError:
        pass
    try:
        candidates += _interface_addresses()
    except (OSError, ImportError):
        pass
    for address in candidates:
        if not address.startswith("127."):
            return address
    return socket.gethostname()


def advertised_url(endpoint):
    """
    The URL of this branch's API for the others, from its endpoint: the
    interface it listens on, or this machine's address (never 127.0.0.1)
    when it listens on all of them.
    """
    parts = [p.replace("\\:", ":") for p in re.split(r"(?<!\\):", endpoint)]
    kind = parts[0]
    if kind not in ("tcp", "tcp6", "ssl") or len(parts) < 2:
        return None
    fields = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    port = fields.get("port") or next((p for p in parts[1:] if p.isdigit()), None)
    host = fields.get("interface", "")
    if host in ("", "0.0.0.0", "::"):
        host = _machine_address()
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if kind == "ssl" else "http"
    return f"{scheme}://{host}:{port}/"


def check_endpoint(description):
    """Raise a UsageError unless C{description} is a server endpoint string."""
    from twisted.internet import endpoints, reactor

    try:
        endpoints.serverFromString(reactor, description)
    except Exception as e:
        raise usage.UsageError(
            f"invalid endpoint {description!r}: {e}"
        ) from None


def loopback_url(endpoint):
    """
    Where a command on this machine reaches the API served on C{endpoint}
    (C{cyme-branch token} reads it from the root's C{api.url}), or None.
    """
    parts = [p.replace("\\:", ":") for p in re.split(r"(?<!\\):", endpoint)]
    fields = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    if parts[0] == "unix" and len(parts) > 1:
        return "unix:" + fields.get("address", parts[1])
    port = fields.get("port") or next((p for p in parts[1:] if p.isdigit()), None)
    if parts[0] not in ("tcp", "tcp6", "ssl") or port in (None, "0"):
        return None
    host = fields.get("interface", "")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if parts[0] == 'ssl' else 'http'}://{host}:{port}/"
