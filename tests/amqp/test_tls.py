"""amqps:// from the branch's side: the broker's certificate and host name are
verified, a refusal says why, and nothing is ever sent in plain AMQP.

The servers here are TLS (or plain TCP) listeners on 127.0.0.1 in the test
process, with certificates of a private CA made by the test
(L{tests.tlsbroker.PrivateCA}); no broker is needed: the refusals happen
before any AMQP byte.  The happy path, through to RabbitMQ, is in
L{tests.test_integration_amqps}.
"""

import os

from OpenSSL import SSL
from service_identity import VerificationError
from service_identity.hazmat import DNS_ID, DNSMismatch
from twisted.internet import defer, protocol, reactor, ssl
from twisted.logger import formatEvent, globalLogPublisher, LogLevel
from twisted.trial.unittest import SynchronousTestCase, TestCase

from cyme.amqp import AMQPClientService, AMQPTimeout, BrokerPool, BrokerTLS, TLSRefused
from cyme.amqp.tls import load_ca, tls_refusal
from tests.tlsbroker import PrivateCA


class LoadCATests(SynchronousTestCase):
    def setUp(self):
        self.directory = self.mktemp()
        os.makedirs(self.directory)

    def write(self, name, data):
        path = os.path.join(self.directory, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def test_a_bundle_of_several_cas(self):
        one, two = PrivateCA(self.directory, "one"), PrivateCA(self.directory, "two")
        with open(one.path, "rb") as a, open(two.path, "rb") as b:
            bundle = self.write("bundle.pem", a.read() + b"\n" + b.read())
        self.assertEqual(BrokerTLS(bundle).ca_file, bundle)
        self.assertIsNotNone(load_ca(bundle))

    def test_what_is_no_ca_file_is_named(self):
        missing = os.path.join(self.directory, "missing.pem")
        error = self.assertRaises(ValueError, BrokerTLS, missing)
        self.assertIn(f"cannot read {missing}", str(error))
        for data in (b"", b"not a certificate", b"-----BEGIN CERTIFICATE-----\nxx\n"):
            path = self.write("bad.pem", data)
            error = self.assertRaises(ValueError, load_ca, path)
            self.assertEqual(str(error), f"{path} holds no PEM certificate")

    def test_without_a_file_the_systems_cas(self):
        self.assertIsNone(BrokerTLS().ca_file)
        # optionsForClientTLS's own default: the platform's trust store.
        self.assertIsNotNone(BrokerTLS().client_options("rabbit.example.org"))


class RefusalTextTests(SynchronousTestCase):
    def test_a_certificate_for_another_host(self):
        error = VerificationError(errors=[DNSMismatch(mismatched_id=DNS_ID("localhost"))])
        refused = tls_refusal(error, "localhost")
        self.assertIsInstance(refused, TLSRefused)
        self.assertEqual(str(refused), "TLS: the broker's certificate is not for localhost: "
                                       "refused (it names other hosts)")

    def test_an_untrusted_certificate(self):
        error = SSL.Error([("SSL routines", "", "certificate verify failed")])
        self.assertEqual(
            str(tls_refusal(error, "rabbit")),
            "TLS: the broker's certificate is not trusted: refused (certificate verify "
            "failed: not signed by a CA of this branch's, or expired; a private CA is given "
            "with --broker-ca)",
        )

    def test_a_peer_that_speaks_no_tls(self):
        error = SSL.Error([("SSL routines", "", "wrong version number")])
        self.assertEqual(
            str(tls_refusal(error, "rabbit")),
            "TLS handshake with rabbit failed (wrong version number): does the broker "
            "speak TLS on that port?",
        )

    def test_other_errors_are_not_tls_refusals(self):
        self.assertIsNone(tls_refusal(ConnectionRefusedError(), "rabbit"))
        self.assertIsNone(tls_refusal(ValueError("x"), "rabbit"))


class Recorder(protocol.Protocol):
    """Keeps every byte a client sent in clear (after TLS, if any)."""

    def dataReceived(self, data):
        self.factory.received.append(data)


class PlainAMQPServer(Recorder):
    """A plain AMQP port: RabbitMQ answers a bad header with its own and closes."""

    def dataReceived(self, data):
        super().dataReceived(data)
        self.transport.write(b"AMQP\x00\x00\x09\x01")
        self.transport.loseConnection()


class HandshakeTests(TestCase):
    """An C{amqps://} client service against TLS servers that must be refused."""

    timeout = 20

    def setUp(self):
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.ca = PrivateCA(self.directory)
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def listen(self, server=Recorder, ca=None, names=("localhost",), tls=True):
        factory = protocol.Factory.forProtocol(server)
        factory.received = []
        if tls:
            key, cert = (ca or self.ca).issue(*names)
            options = ssl.PrivateCertificate.loadPEM(key + cert).options()
            port = reactor.listenSSL(0, factory, options, interface="127.0.0.1")
        else:
            port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port, factory.received

    async def refused(self, port, host="localhost"):
        """Connect over amqps:// with the test's CA; the failure it logged."""
        service = AMQPClientService(
            f"amqps://guest:secret@{host}:{port}//", reactor=reactor,
            tls=BrokerTLS(self.ca.path), retry_policy=lambda attempt: 60.0,
            handshake_timeout=5,
        )
        service.startService()
        self.addCleanup(service.stopService)
        failure = None
        try:
            await service.whenConnected(timeout=2)
        except AMQPTimeout as e:
            failure = e
        self.assertIsNotNone(failure, "connected through a certificate to refuse")
        self.assertIsNotNone(service.last_error)
        # The wait says why it found no broker.
        self.assertIn(f"(last attempt: {service.last_error})", str(failure))
        return service.last_error

    def logged(self, text):
        lines = [(e.get("log_level"), formatEvent(e)) for e in self.events
                 if "cannot connect to AMQP broker" in formatEvent(e)]
        self.assertTrue(lines, "no connection failure logged")
        for level, line in lines:
            self.assertIn(text, line)
            self.assertNotIn("secret", line)
        return lines

    @defer.inlineCallbacks
    def test_a_certificate_for_another_host_is_refused(self):
        port, received = self.listen(names=("rabbit.example.org",))
        error = yield defer.ensureDeferred(self.refused(port))
        self.assertEqual(error, "TLS: the broker's certificate is not for localhost: "
                                "refused (it names other hosts)")
        # An operator's problem: an error, not a passing network warning.
        self.assertEqual({level for level, _ in self.logged(error)}, {LogLevel.error})
        self.assertEqual(received, [], "AMQP sent to a refused broker")

    @defer.inlineCallbacks
    def test_a_certificate_for_another_address_is_refused(self):
        port, received = self.listen(names=("localhost",))
        error = yield defer.ensureDeferred(self.refused(port, host="127.0.0.1"))
        self.assertIn("not for 127.0.0.1: refused", error)
        self.assertEqual(received, [])

    @defer.inlineCallbacks
    def test_a_certificate_of_an_unknown_ca_is_refused(self):
        stranger = PrivateCA(self.directory, "stranger")
        port, received = self.listen(ca=stranger)
        error = yield defer.ensureDeferred(self.refused(port))
        self.assertIn("TLS: the broker's certificate is not trusted: refused",
                      error)
        self.logged(error)
        self.assertEqual(received, [])

    @defer.inlineCallbacks
    def test_a_plain_port_is_never_spoken_to_in_plain_amqp(self):
        port, received = self.listen(PlainAMQPServer, tls=False)
        error = yield defer.ensureDeferred(self.refused(port))
        self.assertIn("TLS handshake with localhost failed", error)
        self.assertIn("does the broker speak TLS on that port?", error)
        # The client said hello in TLS (a handshake record), never "AMQP".
        sent = b"".join(received)
        self.assertTrue(sent.startswith(b"\x16\x03"), sent[:16])
        self.assertNotIn(b"AMQP", sent)

    def test_the_pool_gives_its_clients_the_tls_settings(self):
        port, _ = self.listen(names=("rabbit.example.org",))
        pool = BrokerPool(reactor, tls=BrokerTLS(self.ca.path))
        url = f"amqps://guest:guest@localhost:{port}//"
        self.assertIsNone(pool.last_error(url))
        client = pool.client(url)
        self.addCleanup(pool.stopService)
        pool.startService()
        d = client.whenConnected(timeout=3)
        self.assertFailure(d, AMQPTimeout)
        d.addCallback(lambda _: self.assertIn("is not for localhost", pool.last_error(url)))
        return d
