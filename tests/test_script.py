"""``cyme-branch token`` on a root directory where no branch runs (it edits
the state file, holding the root's lock), and where to reach a running
branch (L{cyme.addresses.loopback_url}); ``cyme-branch cluster-key new``.  With a running branch: tests/test_daemon_tokens.py.
"""

import io
import os
from http.server import BaseHTTPRequestHandler

from twisted.trial.unittest import SynchronousTestCase

from cyme.script import cluster_key_main, token_main
from cyme.state.rootdir import RootDir
from cyme.state.store import JSONFileStore
from cyme.addresses import loopback_url
from tests.tasks.test_webhook import Server, serve


class OfflineTokenTests(SynchronousTestCase):
    def setUp(self):
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)

    def run_token(self, *argv):
        out, err = io.StringIO(), io.StringIO()
        status = token_main([*argv, "-D", self.root], out=out, err=err)
        return status, out.getvalue(), err.getvalue()

    def test_create_list_revoke(self):
        status, out, err = self.run_token("create", "--name", "ci", "--scope", "read,write",
                                          "--expires", "30d")
        self.assertEqual(status, 0, err)
        secret = out.strip()
        self.assertTrue(secret.startswith("cyme_"))
        self.assertIn("only time", err)
        store = JSONFileStore(os.path.join(self.root, "state.json"))
        self.assertEqual(store.find_token(secret).scopes, ("read", "write"))
        with open(os.path.join(self.root, "state.json"), encoding="utf-8") as f:
            self.assertNotIn(secret, f.read())
        status, out, err = self.run_token("list")
        self.assertEqual(status, 0, err)
        self.assertRegex(out, r"\Aci\tread,write\texpires \d{4}-\d\d-\d\dT")
        self.assertNotIn(secret, out)
        status, out, err = self.run_token("revoke", "ci")
        self.assertEqual((status, out), (0, "revoked ci\n"))
        store = JSONFileStore(os.path.join(self.root, "state.json"))
        self.assertIsNone(store.find_token(secret))
        # Revoked with a tombstone, which a running cluster replicates.
        self.assertIsNotNone(store.version("token/ci"))

    def test_errors_change_nothing(self):
        self.run_token("create", "--name", "ci", "--scope", "read")
        before = open(os.path.join(self.root, "state.json"), "rb").read()
        for argv, message in [
            (("create", "--name", "ci", "--scope", "admin"), "token ci exists"),
            (("create", "--name", "x", "--scope", "root"), "unknown scope 'root'"),
            (("create", "--name", "x", "--scope", "read", "--expires", "soon"), "duration"),
            (("revoke", "nope"), "no such token: nope"),
        ]:
            status, out, err = self.run_token(*argv)
            self.assertEqual((status, out), (1, ""), argv)
            self.assertIn(message, err)
        self.assertEqual(open(os.path.join(self.root, "state.json"), "rb").read(), before)

    def test_root_in_use_without_an_api(self):
        held = RootDir.open(self.root)
        self.addCleanup(held.close)
        status, out, err = self.run_token("list")
        self.assertEqual(status, 1)
        self.assertIn("in use", err)
        self.assertIn("no HTTP API", err)

    def test_the_root_is_released(self):
        self.run_token("list")
        RootDir.open(self.root).close()  # not left locked

    def test_no_root(self):
        out, err = io.StringIO(), io.StringIO()
        missing = os.path.join(self.root, "typo")
        self.assertEqual(token_main(["list", "-D", missing], out=out, err=err), 1)
        self.assertIn("no root directory", err.getvalue())
        self.assertFalse(os.path.exists(missing))

    def test_usage(self):
        with self.assertRaises(SystemExit):
            token_main(["frobnicate"], out=io.StringIO(), err=io.StringIO())


class PartialRevocationTests(SynchronousTestCase):
    """A running branch answers that some branches did not hear the revocation."""

    def test_the_command_says_so_and_fails(self):
        class Answer(BaseHTTPRequestHandler):
            def do_DELETE(self):
                body = b'{"ok": "ok"}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cyme-Missing-Branches", "b3")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        server = serve(self, Server(("127.0.0.1", 0), Answer))
        root = os.path.abspath(self.mktemp())
        os.makedirs(root)
        held = RootDir.open(root)  # as a running branch holds it
        self.addCleanup(held.close)
        with open(os.path.join(root, "api.url"), "w") as f:
            f.write(f"http://127.0.0.1:{server.server_address[1]}/\n")
        out, err = io.StringIO(), io.StringIO()
        status = token_main(["revoke", "ci", "-D", root], out=out, err=err)
        self.assertEqual(status, 3)
        self.assertIn("revoked ci", out.getvalue())
        self.assertIn("branches b3 did not answer", err.getvalue())


class LoopbackURLTests(SynchronousTestCase):
    def test_endpoints(self):
        for endpoint, url in [
            ("tcp:8000", "http://127.0.0.1:8000/"),
            ("tcp:8001:interface=127.0.0.1", "http://127.0.0.1:8001/"),
            ("tcp6:8001:interface=\\:\\:", "http://[::1]:8001/"),
            ("ssl:8443:privateKey=key.pem", "https://127.0.0.1:8443/"),
            ("unix:/run/cyme.sock", "unix:/run/cyme.sock"),
            ("unix:address=/run/cyme.sock:mode=600", "unix:/run/cyme.sock"),
            ("tcp:0", None),
            ("systemd:domain=INET:index=0", None),
        ]:
            self.assertEqual(loopback_url(endpoint), url, endpoint)



class ClusterKeyCommandTests(SynchronousTestCase):
    def run_command(self, *argv):
        out, err = io.StringIO(), io.StringIO()
        status = cluster_key_main(list(argv), out=out, err=err)
        return status, out.getvalue(), err.getvalue()

    def test_new_writes_a_fresh_key_0600_and_never_prints_it(self):
        import stat

        from cyme.cluster.keys import read_key_file

        path = os.path.join(os.path.abspath(self.mktemp()), "cluster.key")
        status, out, err = self.run_command("new", path)
        self.assertEqual((status, err), (0, ""))
        self.assertIn(f"cluster key written to {path}", out)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        key = read_key_file(path)
        self.assertNotIn(key.secret.decode(), out)
        other = os.path.join(os.path.dirname(path), "other.key")
        self.run_command("new", other)
        self.assertNotEqual(read_key_file(other).secret, key.secret)

    def test_an_existing_file_is_never_overwritten(self):
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.write(b"precious")
        status, out, err = self.run_command("new", path)
        self.assertEqual((status, out), (1, ""))
        self.assertIn("exists already: not overwritten", err)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"precious")

    def test_usage(self):
        for argv in ([], ["new"], ["old", "f"], ["new", "a", "b"], ["new", "--help"]):
            status, out, err = self.run_command(*argv)
            self.assertEqual((status, out), (2, ""), argv)
            self.assertIn("usage: cyme-branch cluster-key new FILE", err)
