"""A real branch and who may call it: the loopback path (trusted, Host
checked, never through a proxy header), a caller from this machine's
network address (a token needed), ``cyme-branch token`` against the running
branch and against its idle root, and TLS through the ``ssl:`` endpoint
(the README's example).
"""

import os
import shutil
import stat
import tempfile

import treq
from twisted.internet import reactor
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest
from twisted.web.client import Agent
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from tests.localhost import outside_address, self_signed
from tests.test_daemon import CYME_BRANCH, DaemonTestCase, deferred, free_port


@implementer(IPolicyForHTTPS)
class TrustOne:
    """Verify the server against one certificate (the test's own CA)."""

    def __init__(self, cert_path):
        with open(cert_path, "rb") as f:
            self.root = Certificate.loadPEM(f.read())

    def creatorForNetloc(self, hostname, port):
        return optionsForClientTLS(hostname.decode("ascii"), trustRoot=self.root)


class AuthDaemonTests(DaemonTestCase):
    timeout = 90

    async def token(self, *argv, env=None):
        """C{(exit code, stdout, stderr)} of C{cyme-branch token ...}."""
        out, err, code = await getProcessOutputAndValue(
            CYME_BRANCH, ["token", *argv], env=dict(os.environ, **(env or {})),
            path=self.cwd,
        )
        return code, out.decode(), err.decode()

    async def start(self, address, port, *options, scheme="http", agent=None):
        process = self.twistd(address, "-D", self.path("root"), *options)
        url = f"{scheme}://127.0.0.1:{port}/ping/" if scheme == "http" else \
            f"https://localhost:{port}/ping/"
        deadline = reactor.seconds() + 15
        while True:
            if not process.running:
                self.fail(f"branch exited:\n{process.describe()}")
            try:
                kwargs = {"agent": agent} if agent is not None else {"pool": self.pool}
                response = await treq.get(url, timeout=2, **kwargs)
                await treq.content(response)
                if response.code == 200:
                    return process
            except Exception:
                pass
            if reactor.seconds() > deadline:
                self.fail(f"no pong:\n{process.describe()}")
            await deferLater(reactor, 0.1, lambda: None)

    @deferred
    async def test_loopback_network_and_token_command(self):
        machine = outside_address()
        if machine is None:
            raise SkipTest("this machine has no network address besides loopback")
        port = free_port()
        process = await self.start(f":{port}", port)
        local = f"http://127.0.0.1:{port}"
        remote = f"http://{machine}:{port}"
        # The walkthrough on the machine itself: no token, every scope.
        code, body = await self.request("PUT", local + "/foo/")
        self.assertEqual(code, 201, body)
        code, body = await self.request("GET", local + "/foo/")
        self.assertEqual(body["broker"]["password"], "guest")
        # DNS rebinding, and a proxy on this machine: refused.
        code, _ = await self.request("GET", local + "/", headers={"Host": "evil.example"})
        self.assertEqual(code, 403)
        code, _ = await self.request("PUT", local + "/bar/",
                                     headers={"X-Forwarded-For": "198.51.100.1"})
        self.assertEqual(code, 401)
        # From the network: nothing without a token.
        code, body = await self.request("GET", remote + "/")
        self.assertEqual(code, 401, body)
        code, body = await self.request("GET", remote + "/ping/")
        self.assertEqual(code, 200)
        # A token from the command, through the running branch.
        self.assertTrue(os.path.exists(self.path("root", "api.url")))
        code, out, err = await self.token("create", "--name", "ci", "--scope", "read",
                                          "-D", self.path("root"))
        self.assertEqual(code, 0, err)
        secret = out.strip()
        auth = {"Authorization": f"Bearer {secret}"}
        code, body = await self.request("GET", remote + "/foo/", headers=auth)
        self.assertEqual(code, 200, body)
        self.assertIsNone(body["broker"]["password"])
        code, _ = await self.request("PUT", remote + "/bar/", headers=auth)
        self.assertEqual(code, 403)
        # A browser from the network logs in: its cookie is a session of
        # the branch, not the token (any server of this host receives it).
        code, _, headers = await self.call("POST", remote + "/login/", data={"token": secret},
                                           allow_redirects=False)
        cookie = headers.getRawHeaders(b"set-cookie")[0].decode()
        self.assertEqual(code, 303)
        self.assertTrue(cookie.startswith(f"cyme_session_{port}="), cookie)
        self.assertNotIn(secret, cookie)
        session = {"Cookie": cookie.split(";")[0]}
        code, body = await self.request("GET", remote + "/foo/", headers=session)
        self.assertEqual(code, 200, body)
        code, out, err = await self.token("list", "-D", self.path("root"))
        self.assertEqual((code, out.split("\t")[:2]), (0, ["ci", "read"]), err)
        self.assertNotIn(secret, out)
        code, out, err = await self.token("revoke", "ci", "-D", self.path("root"))
        self.assertEqual((code, out), (0, "revoked ci\n"), err)
        code, _ = await self.request("GET", remote + "/", headers=auth)
        self.assertEqual(code, 401)
        # Its sessions end with it.
        code, _ = await self.request("GET", remote + "/", headers=session)
        self.assertEqual(code, 401)
        # Idle root: the command edits it; the next start serves the token.
        await self.stop(process)
        self.assertNotIn(secret, process.output)
        self.assertFalse(os.path.exists(self.path("root", "api.url")))
        code, out, err = await self.token("create", "--name", "ops", "--scope", "read,write",
                                          "-D", self.path("root"))
        self.assertEqual(code, 0, err)
        auth = {"Authorization": f"Bearer {out.strip()}"}
        process = await self.start(f":{port}", port)
        code, body = await self.request("PUT", remote + "/bar/", headers=auth)
        self.assertEqual(code, 201, body)
        await self.stop(process)
        self.assertNotIn(secret, process.output)
        self.assertNotIn(out.strip(), process.output)
        self.assertIn("audit who=token:ops method=PUT path=/bar/", process.output)

    @deferred
    async def test_no_trust_loopback(self):
        port = free_port()
        process = await self.start(f"127.0.0.1:{port}", port, "--no-trust-loopback")
        code, _ = await self.request("GET", f"http://127.0.0.1:{port}/")
        self.assertEqual(code, 401)
        # The command needs an admin token then: none, refused.
        code, out, err = await self.token("list", "-D", self.path("root"))
        self.assertEqual(code, 1)
        self.assertIn("authentication required", err)
        await self.stop(process)

    @deferred
    async def test_tls(self):
        """The README's example: ssl:PORT:privateKey=key.pem:certKey=cert.pem."""
        key, cert = self_signed(self.cwd, "localhost", addresses=["127.0.0.1"])
        port = free_port()
        os.makedirs(self.path("root"))
        code, out, err = await self.token("create", "--name", "browser", "--scope", "read",
                                          "-D", self.path("root"))
        self.assertEqual(code, 0, err)
        secret = out.strip()
        agent = Agent(reactor, contextFactory=TrustOne(cert))
        process = await self.start(
            f"127.0.0.1:{port}", port,
            f"--http=ssl:{port}:interface=127.0.0.1:privateKey={key}:certKey={cert}",
            scheme="https", agent=agent,
        )
        base = f"https://localhost:{port}"
        response = await treq.post(base + "/login/", data={"token": secret}, agent=agent,
                                   allow_redirects=False, timeout=5)
        await treq.content(response)
        self.assertEqual(response.code, 303)
        cookie = response.headers.getRawHeaders(b"set-cookie")[0].decode()
        self.assertIn("; Secure", cookie)
        self.assertIn("; HttpOnly; SameSite=Strict", cookie)
        response = await treq.get(base + "/", agent=agent, timeout=5,
                                  headers={"Cookie": cookie.split(";")[0]})
        self.assertEqual((response.code, await treq.json_content(response)), (200, []))
        # The command reaches a TLS branch too.
        code, out, err = await self.token("list", "-D", self.path("root"))
        self.assertEqual((code, out.split("\t")[0]), (0, "browser"), err)
        await self.stop(process)

    @deferred
    async def test_unix_endpoint_is_trusted_like_loopback(self):
        directory = tempfile.mkdtemp(prefix="cyme-")  # short: a socket path is <108 bytes
        self.addCleanup(shutil.rmtree, directory, True)
        sock = os.path.join(directory, "api.sock")
        process = self.twistd(f"127.0.0.1:{free_port()}", "-D", self.path("root"),
                              f"--http=unix:{sock}:mode=600")
        deadline = reactor.seconds() + 15
        while not os.path.exists(sock):
            if not process.running or reactor.seconds() > deadline:
                self.fail(f"no socket:\n{process.describe()}")
            await deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(stat.S_IMODE(os.stat(sock).st_mode), 0o600)
        # No token: the command is trusted on the socket.
        code, out, err = await self.token("create", "--name", "u", "--scope", "admin",
                                          "-D", self.path("root"))
        self.assertEqual(code, 0, err)
        code, out, err = await self.token("list", "-D", self.path("root"))
        self.assertEqual((code, out.split("\t")[0]), (0, "u"), err)
        await self.stop(process)
