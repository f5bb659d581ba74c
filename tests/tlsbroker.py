"""A TLS listener in front of the test broker, with certificates of the test's
own: what the AMQPS tests connect to.

The shared RabbitMQ listens in plain AMQP only, and its configuration is
not the tests' to change, so a test puts a TLS-terminating proxy in front
of it (L{TLSProxy}: Twisted's TLS server and port forwarder, in the test
process) with a certificate that a private CA (L{PrivateCA}) of the test
signed.  Not a test module.
"""

import datetime
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import reactor, ssl
from twisted.internet.task import deferLater
from twisted.protocols import portforward

from tests.vhosts import HOST, PORT


def _pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


class PrivateCA:
    """A CA made for one test, its certificate written to C{<directory>/<name>.pem}."""

    def __init__(self, directory, name="ca"):
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"cyme test {name}")])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder().subject_name(self.name).issuer_name(self.name)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.path = os.path.join(directory, f"{name}.pem")
        with open(self.path, "wb") as f:
            f.write(_pem(self.cert))

    def issue(self, *names):
        """A server certificate for the DNS C{names}: C{(key PEM, certificate PEM)}."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(self.key, hashes.SHA256())
        )
        key_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return key_pem, _pem(cert)


class _Counting(portforward.ProxyFactory):
    def __init__(self, host, port, accepted):
        super().__init__(host, port)
        self.accepted = accepted
        self.built = []

    def buildProtocol(self, addr):
        self.accepted.append(addr)
        protocol = super().buildProtocol(addr)
        self.built.append(protocol)
        return protocol


class TLSProxy:
    """
    TLS on 127.0.0.1 (a port of its own), plain AMQP to the test broker:
    the certificate C{ca} issued for C{names}.  C{accepted}: a TLS
    client's address per connection it accepted.
    """

    def __init__(self, ca, *names):
        key_pem, cert_pem = ca.issue(*names)
        options = ssl.PrivateCertificate.loadPEM(key_pem + cert_pem).options()
        self.accepted = []
        self._factory = _Counting(HOST, PORT, self.accepted)
        self._port = reactor.listenSSL(0, self._factory, options, interface="127.0.0.1")
        self.port = self._port.getHost().port

    def url(self, vhost, host="localhost"):
        """The C{amqps://} URL of the broker's C{vhost} through this proxy."""
        return (f"amqps://guest:guest@{host}:{self.port}/"
                f"{'%2F' if vhost == '/' else vhost}")

    async def close(self):
        """No more connections, and those it has are cut (both sides)."""
        await self._port.stopListening()
        for protocol in self._factory.built:
            for side in (protocol, getattr(protocol, "peer", None)):
                transport = getattr(side, "transport", None)
                if transport is not None and transport.connected:
                    transport.abortConnection()
        # The reactor sees them go before the test ends.
        await deferLater(reactor, 0.1, lambda: None)
