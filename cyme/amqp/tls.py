"""TLS to brokers (``amqps://``): the certificate and host name check, and
what a refusal means, in words.

Every TLS connection of the branch to a broker is made with Twisted's
``optionsForClientTLS``: the broker's certificate chain must lead to a
trusted CA (the system's, or the private one of ``--broker-ca``) and the
certificate must name the host of the URL (service-identity checks DNS
names and IP addresses).  A refused handshake fails the attempt like any
other connection failure: the client retries the same ``amqps://`` URL
with backoff, and never speaks plain AMQP instead.
"""

from __future__ import annotations

from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import ssl
from twisted.python.failure import Failure

from .errors import AMQPError

__all__ = ["BrokerTLS", "TLSRefused", "load_ca", "tls_refusal"]


class TLSRefused(AMQPError):
    """The TLS handshake with the broker failed: its certificate was refused
    (not trusted, or not for the URL's host), or it does not speak TLS."""


def load_ca(path: str) -> Any:
    """
    The trust root made of the PEM certificates in C{path} (a CA bundle);
    C{ValueError} saying why when the file cannot be read or holds none.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 20)
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}") from None
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ValueError(f"{path} holds no PEM certificate") from None
    return ssl.trustRootFromCertificates([
        ssl.Certificate.loadPEM(c.public_bytes(Encoding.PEM)) for c in certificates
    ])


class BrokerTLS:
    """
    How the branch checks a broker's certificate: against the CA
    certificates in C{ca_file} when given (a private CA), else against the
    system's trust store.
    """

    def __init__(self, ca_file: str | None = None) -> None:
        #: The CA bundle the workers get too (None: the system's).
        self.ca_file = ca_file
        self._trust_root = load_ca(ca_file) if ca_file else None

    def client_options(self, host: str) -> Any:
        """The TLS options of a connection to C{host}: chain and name verified."""
        return ssl.optionsForClientTLS(host, trustRoot=self._trust_root)


def tls_refusal(reason: Any, host: str) -> TLSRefused | None:
    """
    What a failed TLS handshake with the broker at C{host} means for its
    operator, if C{reason} (a failure or an exception) is one; else None.
    """
    text = _describe(reason, host)
    return None if text is None else TLSRefused(text)


def _describe(reason: Any, host: str) -> str | None:
    if isinstance(reason, Failure):
        reason = reason.value
    if isinstance(reason, VerificationError):
        return (f"TLS: the broker's certificate is not for {host}: refused "
                "(it names other hosts)")
    if isinstance(reason, SSL.Error):
        text = _openssl_text(reason)
        if "certificate verify failed" in text:
            return (f"TLS: the broker's certificate is not trusted: refused ({text}: not "
                    "signed by a CA of this branch's, or expired; a private CA is given "
                    "with --broker-ca)")
        return (f"TLS handshake with {host} failed ({text or 'refused'}): does the broker "
                "speak TLS on that port?")
    return None


def _openssl_text(error: Exception) -> str:
    # pyOpenSSL gives a list of (library, function, reason) triples.
    reasons = []
    for entry in error.args[0] if error.args and isinstance(error.args[0], list) else ():
        if isinstance(entry, tuple) and entry:
            reasons.append(str(entry[-1]))
    return ", ".join(reasons) or str(error)
