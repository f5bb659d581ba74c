"""The ``cyme`` command without a branch: its grammar, usage errors (status 2),
an unreachable branch (status 1, one line) and shell completion.

Run through click's runner (the command's own object, in memory) and, for
what only the console script shows, as the installed ``cyme`` process.
"""

import os
import subprocess

from click.testing import CliRunner
from twisted.trial.unittest import SynchronousTestCase

from cyme.api.routes import BranchAPI
from cyme.cli import cli
from tests.client.test_transport import serve
from tests.test_daemon import BIN, free_port

CYME = os.path.join(BIN, "cyme")


def run(*args, env=None):
    """C{(exit status, stdout, stderr)} of C{cyme args}, in memory."""
    result = CliRunner().invoke(cli, list(args), env={"CYME_URL": None, "CYME_TOKEN": None,
                                                      **(env or {})})
    return result.exit_code, result.stdout, result.stderr


class UsageTests(SynchronousTestCase):
    def assertUsage(self, args, says):
        code, out, err = run(*args)
        self.assertEqual((code, out), (2, ""), err)
        self.assertIn(says, err)

    def test_usage_errors_exit_2(self):
        self.assertUsage(["bogus"], "No such command 'bogus'")
        self.assertUsage(["apps.bogus"], "No such command 'bogus'")
        self.assertUsage(["apps", "typo"], "No such command 'typo'")
        self.assertUsage(["instances"], "needs an app: -a APP")
        self.assertUsage(["queues.add", "q"], "needs an app: -a APP")
        self.assertUsage(["task", "state", "u1"], "needs an app: -a APP")
        self.assertUsage(["-F", "xml", "apps"], "'xml' is not one of 'pretty', 'json'")
        self.assertUsage(["--url", "notaurl", "apps"], "is not an http:// or https:// URL")
        self.assertUsage(["--url", "ftp://h/", "apps"], "is not an http:// or https:// URL")
        code, out, err = run("--url", "http://me:s3cret@localhost:8000", "apps")
        self.assertEqual(code, 2)
        self.assertIn("takes no user or password", err)
        self.assertNotIn("s3cret", err)
        self.assertUsage(["-a", "foo", "queues", "add", "q", "x", "direct", "q", "{bad"],
                         "is not a JSON object")
        self.assertUsage(["-a", "foo", "instances", "autoscale", "w1", "lots"],
                         "'lots' is not a valid integer")
        self.assertUsage(["apps", "add"], "Missing argument 'NAME'")
        self.assertUsage(["apps", "add", "foo", "-s", "novalue"], "'novalue' is not KEY=VALUE")
        self.assertUsage(["--cacert", "/no/such/ca.pem", "apps"], "does not exist")

    def test_nowait_only_where_there_is_a_no_wait_form(self):
        for args in (["apps"], ["-a", "foo", "instances", "get", "w1"], ["status"],
                     ["branches"], ["-a", "foo", "task", "state", "u1"],
                     ["queue", "foo", "tasks", "http://m/"]):
            self.assertUsage(["-n", *args], "-n/--nowait does not apply to '")
        self.assertUsage(["apps", "list", "-n"], "No such option '-n'")
        self.assertUsage(["instances", "stats", "w1", "--nowait"], "No such option '--nowait'")

    def test_help(self):
        code, out, _ = run("--help")
        self.assertEqual(code, 0)
        for command in ("apps", "instances", "queues", "consumers", "branches", "status",
                        "queue", "task", "token"):
            self.assertIn(f"  {command} ", out)
        self.assertIn("_CYME_COMPLETE=bash_source cyme", out)
        code, out, _ = run("instances", "add", "--help")
        self.assertEqual(code, 0)
        self.assertIn("-a, --app APP", out)  # also after the command's name


class UnreachableTests(SynchronousTestCase):
    def test_no_branch_is_one_line_and_status_1(self):
        url = f"http://127.0.0.1:{free_port()}"
        for args in (["apps"], ["-a", "foo", "instances", "add", "w1"], ["status"]):
            code, out, err = run("--url", url, *args)
            self.assertEqual((code, out), (1, ""), err)
            self.assertEqual(err.count("\n"), 1, err)
            self.assertTrue(err.startswith(f"cyme: cannot reach {url}: "), err)
            self.assertIn("Connection refused", err)

    def test_events_of_no_branch_is_one_line_and_status_1(self):
        # Run as a process with a time limit: a wait without end fails the test.
        url = f"http://127.0.0.1:{free_port()}"
        done = subprocess.run([CYME, "--url", url, "events", "-c", "1"], capture_output=True,
                              text=True, timeout=30, check=False)
        self.assertEqual((done.returncode, done.stdout), (1, ""), done.stderr)
        self.assertEqual(done.stderr.count("\n"), 1, done.stderr)
        self.assertTrue(done.stderr.startswith(f"cyme: cannot reach {url}: "), done.stderr)

    def test_the_url_and_token_come_from_the_environment(self):
        url = f"http://127.0.0.1:{free_port()}"
        code, _, err = run("apps", env={"CYME_URL": url, "CYME_TOKEN": "s3cret"})
        self.assertEqual(code, 1)
        self.assertIn(url, err)
        self.assertNotIn("s3cret", err)


class NoWaitTests(SynchronousTestCase):
    """What C{-n} sends: the API's C{!} form of each write (202 at once)."""

    def test_every_write_with_a_no_wait_form(self):
        server, url = serve(self)
        writes = {
            ("apps", "add", "foo"): ("PUT", "/!/foo/"),
            ("apps", "delete", "foo"): ("DELETE", "/!/foo/"),
            ("-a", "foo", "instances", "add", "w1"): ("PUT", "/foo/instances/!/w1/"),
            ("-a", "foo", "instances", "add"): ("PUT", "/foo/instances/!/"),
            ("-a", "foo", "instances", "delete", "w1"): ("DELETE", "/foo/instances/!/w1/"),
            ("-a", "foo", "instances", "restart", "w1"): ("POST", "/foo/instances/!/w1/restart/"),
            ("-a", "foo", "instances", "enable", "w1"): ("POST", "/foo/instances/!/w1/enable/"),
            ("-a", "foo", "instances", "disable", "w1"): ("POST", "/foo/instances/!/w1/disable/"),
            ("-a", "foo", "instances", "autoscale", "w1", "4", "1"):
                ("POST", "/foo/instances/!/w1/autoscale/"),
            ("-a", "foo", "queues", "add", "tasks"): ("PUT", "/foo/queues/!/tasks/"),
            ("-a", "foo", "queues", "delete", "tasks"): ("DELETE", "/foo/queues/!/tasks/"),
            ("-a", "foo", "consumers", "add", "w1", "tasks"):
                ("PUT", "/foo/instances/w1/queues/!/tasks/"),
            ("-a", "foo", "consumers", "delete", "w1", "tasks"):
                ("DELETE", "/foo/instances/w1/queues/!/tasks/"),
            ("token", "create", "--name", "ci"): ("POST", "/tokens/!/"),
            ("token", "revoke", "ci"): ("DELETE", "/tokens/!/ci/"),
        }
        routes = BranchAPI.app.url_map.bind("localhost")
        for args, sent in writes.items():
            # The branch's own route table takes it as its no-wait form.
            _, values = routes.match(sent[1], sent[0])
            self.assertIs(values.get("wait"), False, sent)
            for where in (["-n", *args], [*args, "--nowait"]):
                code, _, err = run("--url", url, "-F", "json", *where)
                self.assertEqual(code, 0, (where, err))
                seen = server.seen.pop()
                self.assertEqual((seen["method"], seen["target"]), sent, where)
        code, _, err = run("--url", url, "-a", "foo", "instances", "restart", "w1")
        self.assertEqual((code, server.seen[-1]["target"]), (0, "/foo/instances/w1/restart/"))


class ConsoleScriptTests(SynchronousTestCase):
    def cyme(self, *args, env=None):
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("CYME_", "_CYME"))}
        done = subprocess.run([CYME, *args], capture_output=True, text=True, timeout=30,
                              env={**environ, **(env or {})}, check=False)
        return done.returncode, done.stdout, done.stderr

    def test_exit_statuses_of_the_installed_command(self):
        self.assertEqual(self.cyme("--version")[:2], (0, "cyme, version 0.1.0\n"))
        self.assertEqual(self.cyme("bogus")[0], 2)
        code, out, err = self.cyme("--url", f"http://127.0.0.1:{free_port()}", "apps")
        self.assertEqual((code, out, err.count("\n")), (1, "", 1), err)

    def test_shell_completion(self):
        # As the README says: eval "$(_CYME_COMPLETE=bash_source cyme)".
        code, out, _ = self.cyme(env={"_CYME_COMPLETE": "bash_source"})
        self.assertEqual(code, 0)
        self.assertIn("complete -o nosort -F _cyme_completion cyme", out)
        code, out, _ = self.cyme(env={"_CYME_COMPLETE": "bash_complete",
                                      "COMP_WORDS": "cyme inst", "COMP_CWORD": "1"})
        self.assertEqual((code, out), (0, "plain,instances\n"))
        code, out, _ = self.cyme(env={"_CYME_COMPLETE": "bash_complete",
                                      "COMP_WORDS": "cyme instances re", "COMP_CWORD": "2"})
        self.assertEqual((code, out), (0, "plain,restart\n"))
