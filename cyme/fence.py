"""The fence around queued URLs: which addresses a webhook may connect to.

Pure functions, no I/O: the branch judges a URL when it is queued (with
the addresses its resolver found), and the worker judges every hop again
with the addresses it is about to connect to (see L{cyme.tasks.webhook}).
Both use the same rules, from here.

The default policy refuses the addresses that reach the machine itself or
its cloud provider rather than a service: loopback, link-local (cloud
metadata at 169.254.169.254 and fd00:ec2::254 included; Alibaba's
100.100.100.200 too), unspecified, multicast and reserved ones; with
C{deny_private} the private ranges too.  An address is judged by the
IPv4 address it stands for when it carries one (IPv4-mapped,
IPv4-compatible, 6to4, NAT64), and a host written as a number
(C{2130706433}, C{0x7f.1}, C{017700000001}) by the address the system's
resolver would make of it.

An app's C{allowed_hosts}, when not empty, replaces that policy: a URL's
host must match an entry.  What an entry matches inside a refused range
is allowed only where the branch's operator opened it too (C{opened}, the
entries of C{--webhook-allow}): an app's owner alone cannot open the
machine's loopback or the cloud's metadata.  Entries (see L{parse_entry}):

  - C{example.com}: that host name, whatever it resolves to;
  - C{*.example.com}: its subdomains, at addresses the default policy
    allows or a listed network holds (their names are not known one by
    one, so none of them may lead into a refused range unasked);
  - C{127.0.0.1}, C{[::1]}, C{10.0.0.0/8}, C{fd00::/8}: a URL whose host is
    an address (in any form) within it;
  - any of these but a network followed by C{:port}: that port only.

An entry this version cannot read (C{[1:2]}: an older version stored it)
matches nothing, and the list stays a list: only its other entries allow.
"""

import functools
import ipaddress
import re

__all__ = [
    "Refused", "parse_entry", "parse_allowed", "literal_address", "refused_by_default",
    "Fence", "Both", "OPENED_BY",
]

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network

# (network, rule) refused by default; the first match names the rule.
_REFUSED = [
    (_V4("0.0.0.0/8"), "an unspecified address"),
    (_V6("::/128"), "an unspecified address"),
    (_V4("127.0.0.0/8"), "a loopback address"),
    (_V6("::1/128"), "a loopback address"),
    (_V4("169.254.0.0/16"), "a link-local address (cloud metadata lives there)"),
    (_V6("fe80::/10"), "a link-local address"),
    (_V6("fd00:ec2::254/128"), "a cloud metadata address"),
    # Alibaba Cloud's metadata, inside the shared range 100.64.0.0/10.
    (_V4("100.100.100.200/32"), "a cloud metadata address"),
    (_V4("224.0.0.0/4"), "a multicast address"),
    (_V6("ff00::/8"), "a multicast address"),
    (_V4("240.0.0.0/4"), "a reserved address"),
]
# Refused too when the branch runs with --webhook-deny-private.
_PRIVATE = [
    (_V4("10.0.0.0/8"), "a private address"),
    (_V4("172.16.0.0/12"), "a private address"),
    (_V4("192.168.0.0/16"), "a private address"),
    (_V4("100.64.0.0/10"), "a private (shared, carrier-grade NAT) address"),
    (_V6("fc00::/7"), "a private (unique local) address"),
    (_V6("fec0::/10"), "a private (site-local) address"),
]
_NAT64 = _V6("64:ff9b::/96")
_NAME = re.compile(r"[a-z0-9_][a-z0-9._-]{0,252}\Z")
_COMPATIBLE = _V6("::/96")
#: What a refusal says when the app's list allows a hop the operator did not open.
OPENED_BY = "not opened by the branch (--webhook-allow)"


class Refused(ValueError):
    """A hop the fence refuses: C{host}, the C{address} it leads to (None
    when the name alone is refused) and the C{rule} that refuses it."""

    def __init__(self, host, rule, address=None, hint=None):
        # The address as it is judged: "2130706433 (at 127.0.0.1)".
        shown = None if address is None else str(effective(address))
        at = "" if shown in (None, host) else f" (at {shown})"
        super().__init__(f"host {host}{at} refused ({rule}{'; ' + hint if hint else ''})")
        self.host = host
        self.rule = rule
        self.address = address


def _number(text):
    """One part of a numeric IPv4 host, as C{inet_aton} reads it."""
    if text[:2] in ("0x", "0X"):
        digits, base = text[2:], 16
    elif len(text) > 1 and text[0] == "0":
        digits, base = text[1:], 8
    else:
        digits, base = text, 10
    if not digits:
        return None  # "0x" alone
    try:
        return int(digits, base) if digits.isalnum() and digits.isascii() else None
    except ValueError:
        return None


def _numeric_v4(host):
    """C{host} in any of C{inet_aton}'s forms (1 to 4 parts, each decimal,
    octal or hex, the last filling the bytes left), else None."""
    parts = host[:-1].split(".") if host.endswith(".") else host.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    numbers = [_number(p) for p in parts]
    if None in numbers or any(n > 255 for n in numbers[:-1]):
        return None
    last_bits = 8 * (5 - len(numbers))
    if numbers[-1] >= 1 << last_bits:
        return None
    value = numbers[-1]
    for index, number in enumerate(numbers[:-1]):
        value |= number << (24 - 8 * index)
    return ipaddress.IPv4Address(value)


@functools.lru_cache(maxsize=4096)
def literal_address(host):
    """The address C{host} (a URL's host, brackets removed) stands for when
    it is an IP literal in any form, else None (a name).  Remembered: it is
    asked of every queued URL, twice, and a branch's URLs name few hosts."""
    host = host.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host:
        # A zone ("fe80::1%eth0", "%25" in a URL) does not change the address.
        try:
            return ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            return None
    if host and (host[0].isdigit()):
        return _numeric_v4(host)
    return None


def effective(address):
    """The address that C{address} reaches: the IPv4 address an IPv6 one
    carries (mapped, 6to4, NAT64, the old compatible form), else itself."""
    if isinstance(address, str):
        address = ipaddress.ip_address(address.split("%", 1)[0])
    if address.version == 6:
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.sixtofour is not None:
            return address.sixtofour
        if address in _NAT64 or (address in _COMPATIBLE and int(address) > 1):
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def refused_by_default(address, deny_private=False):
    """The rule of the default policy that refuses C{address}, else None."""
    address = effective(address)
    for network, rule in _REFUSED + (_PRIVATE if deny_private else []):
        if address.version == network.version and address in network:
            return rule
    return None


class _Entry:
    """One parsed C{allowed_hosts} entry: a name, a wildcard or a network."""

    def __init__(self, text, name=None, wildcard=False, network=None, port=None):
        self.text = text
        self.name = name
        self.wildcard = wildcard
        self.network = network
        self.port = port

    def names(self, host):
        if self.name is None:
            return False
        if self.wildcard:
            return host.endswith("." + self.name)
        return host == self.name


def _split_port(text):
    if text.startswith("["):
        inner, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r} is not a host")
        return inner, rest[1:] if rest else None
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, port
    return text, None


def parse_entry(text):
    """One C{allowed_hosts} entry, parsed; C{ValueError} says what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{text!r} is not a host name, address or network")
    text = text.strip().lower()
    if "/" in text:
        try:
            network = ipaddress.ip_network(text.strip("[]"), strict=False)
        except ValueError:
            raise ValueError(f"{text!r} is not a network (address/prefix)") from None
        return _Entry(text, network=network)
    host, port = _split_port(text)
    if port is not None:
        # Any 1-5 digits, as allow-lists were written before the fence.
        if not (port.isdigit() and port.isascii() and len(port) <= 5):
            raise ValueError(f"{text!r} has an invalid port")
        port = int(port)
    address = literal_address(host)
    if address is not None:
        return _Entry(text, network=ipaddress.ip_network(address), port=port)
    wildcard = host.startswith("*.")
    name = host[2:] if wildcard else host
    if not _NAME.match(name):
        raise ValueError(f"{text!r} is not a host name, address or network")
    return _Entry(text, name=name, wildcard=wildcard, port=port)


def parse_allowed(entries):
    """Every entry of an C{allowed_hosts} list, parsed (see L{parse_entry})."""
    return tuple(parse_entry(e) for e in entries or ())


def _leniently(entries):
    """The entries parsed; one that does not parse matches nothing (an
    older version's, or a task's): it never widens what the others allow."""
    parsed = []
    for text in entries or ():
        try:
            parsed.append(parse_entry(text))
        except ValueError:
            parsed.append(_Entry(str(text)))
    return tuple(parsed)


def _holding(entries, address):
    """Whether a network or address of C{entries} holds C{address} (in any
    of its forms)."""
    reached = {address, effective(address)}
    return any(e.network is not None and a.version == e.network.version and a in e.network
               for e in entries for a in reached)


class Fence:
    """The rules for one app: its C{allowed_hosts}, the branch's
    C{deny_private}, and what the branch's operator C{opened} inside the
    refused ranges (C{--webhook-allow}; nothing unless given)."""

    #: How many allowed (host, port, address) a fence remembers: every
    #: queued URL is judged, and an app's URLs name few hosts.
    remembered = 1024

    def __init__(self, allowed_hosts=(), deny_private=False, opened=()):
        self.entries = _leniently(allowed_hosts)
        self.deny_private = bool(deny_private)
        self.opened = _leniently(opened)
        self._allowed = set()

    def _entries(self, port, entries=None):
        return [e for e in (self.entries if entries is None else entries)
                if e.port is None or e.port == port]

    def needs_addresses(self, host, port):
        """
        Whether judging C{host} (a name) takes the addresses it resolves to:
        not for a name listed as such by the app and by the operator.
        Raise L{Refused} when the name alone refuses it (a list that no
        entry of matches it).
        """
        host = host.lower().rstrip(".")
        if not self.entries:
            return True
        matching = [e for e in self._entries(port) if e.names(host)]
        if not matching:
            raise Refused(host, f"not in the app's allowed_hosts ({self._listed()})")
        # Listed by name, it may still resolve into a refused range, which
        # only the operator opens: by that name, or by its addresses.
        opened = [e for e in self._entries(port, self.opened) if e.names(host)]
        return all(e.wildcard for e in matching) or all(e.wildcard for e in opened)

    def check(self, host, port, address):
        """Raise L{Refused} unless a connection to C{host} (a name or the
        literal) on C{port} may go to C{address} (an IP address)."""
        key = (host, port, address)
        if key in self._allowed:
            return
        self._check(host, port, address)
        if len(self._allowed) >= self.remembered:
            self._allowed.clear()
        self._allowed.add(key)

    def _allows(self, host, port, address, default):
        """Whether the app's list allows the hop (refused by default by rule
        C{default}, or None)."""
        entries = self._entries(port)
        listed = _holding(entries, address)
        if literal_address(host) is not None:
            return listed  # an address: a listed address or network holds it
        return any(e.names(host) and (not e.wildcard or default is None or listed)
                   for e in entries)

    def _opened(self, host, port, address):
        """Whether the operator opened the hop: a network of theirs holds
        its address, or they named its host (not by a wildcard)."""
        entries = self._entries(port, self.opened)
        return _holding(entries, address) or (literal_address(host) is None and any(
            e.names(host) and not e.wildcard for e in entries))

    def _check(self, host, port, address):
        host = host.lower().rstrip(".")
        address = ipaddress.ip_address(str(address).split("%", 1)[0])
        default = refused_by_default(address, self.deny_private)
        opened = default is None or self._opened(host, port, address)
        if not self.entries:
            if default is not None:
                hint = ("list it in the app's allowed_hosts to allow it" if opened else
                        "the branch's operator (--webhook-allow) and the app's allowed_hosts "
                        "must both allow it")
                raise Refused(host, default, address, hint=hint)
            return
        if not self._allows(host, port, address, default):
            rule = f"not in the app's allowed_hosts ({self._listed()})"
            raise Refused(host, rule if default is None else f"{default}, {rule}", address)
        if not opened:
            raise Refused(host, f"{default}, {OPENED_BY}", address)

    def check_all(self, host, port, addresses):
        """L{check} every address of C{addresses}; return them as strings.
        A name with one refused address is refused whole."""
        addresses = [str(a) for a in addresses]
        if not addresses:
            raise Refused(host, "it resolves to no address")
        for address in addresses:
            self.check(host, port, address)
        return addresses

    def _listed(self):
        # A long list is named by its start: the answer stays readable.
        shown = ", ".join(e.text for e in self.entries[:5])
        return shown if len(self.entries) <= 5 else f"{shown}, ... {len(self.entries)} entries"


class Both:
    """Two fences in one: a hop passes only if both allow it.  A worker's
    own fence (its branch's word) narrowed by the one a task carries,
    which may take away, never add."""

    def __init__(self, own, narrower):
        self.own = own
        self.narrower = narrower

    def needs_addresses(self, host, port):
        needs = self.own.needs_addresses(host, port)
        return self.narrower.needs_addresses(host, port) or needs

    def check(self, host, port, address):
        self.own.check(host, port, address)
        self.narrower.check(host, port, address)

    def check_all(self, host, port, addresses):
        addresses = self.own.check_all(host, port, addresses)
        return self.narrower.check_all(host, port, addresses)
