"""The ``cyme`` command end to end: the installed console script against real
branches (a cluster of two), real workers, a real HTTP target.

Every command in both formats (pretty, and json: the API's JSON as it
came), the original Cyme's dotted grammar and the spaced one, the exit
statuses (0 done, 1 an API error with its message on one line on stderr,
2 a usage error), then tokens and TLS with a private CA.  The helpers are
L{tests.tools}'s; skipped, with the reason, when nothing listens on
127.0.0.1:5672.
"""

import json
import os

from twisted.internet.utils import getProcessOutputAndValue

from tests.integration import made_vhost
from tests.localhost import self_signed
from tests.test_daemon import CYME_BRANCH, deferred, free_port
from tests.tools import ToolsTestCase


class CommandTestCase(ToolsTestCase):
    url = None

    async def ok(self, *args):
        """The stdout of C{cyme args}, which must succeed, saying nothing on stderr."""
        code, out, err = await self.cyme(*args, url=self.url)
        self.assertEqual((code, err), (0, ""), f"cyme {' '.join(args)}: {out}")
        return out

    async def js(self, *args):
        """The JSON that C{cyme -F json args} prints (one line)."""
        out = await self.ok("-F", "json", *args)
        self.assertEqual(out.count("\n"), 1, out)
        return json.loads(out)

    async def fails(self, *args, status=1):
        """The one line C{cyme args} writes on stderr as it fails with C{status}."""
        code, out, err = await self.cyme(*args, url=self.url)
        self.assertEqual((code, out), (status, ""), f"cyme {' '.join(args)}: {err}")
        if status == 1:
            self.assertEqual(err.count("\n"), 1, err)
            self.assertTrue(err.startswith("cyme: "), err)
        return err

    def fields(self, out):
        """A pretty record as a dict of its lines (C{key  value})."""
        return dict(line.split(None, 1) if " " in line else (line, "")
                    for line in out.splitlines())

    async def until(self, probe, timeout, what):
        async def attempt():
            return await probe() or None
        return await self.poll(attempt, timeout, what, interval=0.3)


class EveryCommandTests(CommandTestCase):
    @deferred
    async def test_every_command_through_one_branch_of_two(self):
        """
        Apps, queues, instances on both branches, autoscale, stats,
        restart, disable and enable, consumers, status, branches, queued
        URLs and their tasks, deletes; both formats; errors on one line.
        """
        a, b = await self.start_pair()
        self.url = a.base
        vhost = made_vhost(self.vhost_prefix)
        target, base = self.start_target()

        # Apps: the original dotted grammar, and the spaced one.
        self.assertEqual(await self.ok("apps"), "")
        self.assertEqual(await self.js("apps"), [])
        shown = self.fields(await self.ok("apps", "add", "foo", "--set", "allowed_hosts=127.0.0.1"))
        self.assertEqual(shown["broker"], f"amqp://guest@127.0.0.1:5672/{vhost}")
        self.assertEqual(shown["allowed_hosts"], "127.0.0.1")
        bar = await self.js("apps.add", "bar")
        self.assertEqual((bar["name"], bar["broker"]["virtual_host"]), ("bar", vhost))
        self.assertEqual(await self.js("apps.get", "bar"), bar)
        self.assertEqual(await self.ok("apps"), "bar\nfoo\n")
        self.assertEqual(sorted(await self.js("apps.all")), ["bar", "foo"])
        # Shell completion knows the apps (asked of the branch of CYME_URL).
        completion = {"_CYME_COMPLETE": "bash_complete", "COMP_WORDS": "cyme -a f",
                      "COMP_CWORD": "2"}
        self.assertEqual(await self.cyme(url=self.url, env=completion), (0, "plain,foo\n", ""))

        # Queues
        await self.ok("-a", "foo", "queues.add", "tasks")
        t2 = await self.js("-a", "foo", "queues", "add", "t2", "x2", "topic", "t2.#",
                           '{"max_priority": 10}')
        self.assertEqual(t2, {"name": "t2", "exchange": "x2", "exchange_type": "topic",
                              "routing_key": "t2.#", "options": {"max_priority": 10}})
        self.assertEqual(sorted(await self.js("-a", "foo", "queues")), ["t2", "tasks"])
        self.assertEqual(self.fields(await self.ok("-a", "foo", "queues.get", "tasks")),
                         {"name": "tasks", "exchange": "tasks", "exchange_type": "direct",
                          "routing_key": "tasks", "options": "-"})

        # Instances: one on each branch, one anonymous without waiting, and
        # one whose broker is out of reach (it cannot run: status marks it).
        w1 = self.fields(await self.ok("-a", "foo", "instances.add", "w1", "--pool", "solo",
                                       "--branch", "a", "--queues", "tasks"))
        self.assertEqual((w1["branch"], w1["state"], w1["queues"]), ("a", "running", "tasks"))
        w2 = await self.js("instances", "add", "w2", "-a", "foo", "--pool", "solo",
                           "--branch", "b")
        self.assertEqual((w2["branch"], w2["state"]), ("b", "running"))
        anonymous = (await self.js("-n", "-a", "foo", "instances", "add", "--pool", "solo"))["name"]
        self.assertEqual(len(anonymous), 36)
        await self.ok("-a", "foo", "instances", "add", "w3", "amqp://guest:guest@127.0.0.1:1//",
                      "--pool", "solo", "-n")
        self.assertEqual(sorted(await self.js("-a", "foo", "instances")),
                         sorted(["w1", "w2", "w3", anonymous]))
        self.assertEqual(len((await self.ok("-a", "foo", "instances.all")).splitlines()), 4)
        # Without -a: names are unique, the app is looked up.
        self.assertEqual(self.fields(await self.ok("instances", "get", "w2"))["branch"], "b")
        self.assertEqual((await self.js("-a", "foo", "instances.get", "w2"))["name"], "w2")
        stats = await self.js("instances.stats", "w2")
        self.assertEqual(stats["pid"], w2["pid"])
        self.assertIn("pool.max-concurrency", self.fields(await self.ok("instances.stats", "w1")))

        # Autoscale: read, set, read; through a, for the instance on b.
        self.assertEqual(await self.ok("-a", "foo", "instances.autoscale", "w2"),
                         "max  1\nmin  1\n")
        self.assertEqual(await self.js("-a", "foo", "instances.autoscale", "w2", "3", "1"),
                         {"max": 3, "min": 1})
        self.assertEqual(await self.js("instances", "autoscale", "w2"), {"max": 3, "min": 1})
        self.assertEqual(await self.fails("instances.autoscale", "w2", "1", "2"),
                         "cyme: min must not be greater than max\n")

        # Restart, disable, enable.
        restarted = await self.js("instances", "restart", "w2")
        self.assertEqual(restarted["state"], "running")
        self.assertNotEqual(restarted["pid"], w2["pid"])
        disabled = self.fields(await self.ok("instances", "disable", "w2"))
        self.assertEqual((disabled["is_enabled"], disabled["state"]), ("no", "stopped"))
        self.assertEqual((await self.js("instances", "enable", "w2"))["state"], "running")

        # Consumers: the instance's live queues, by its name alone.
        self.assertEqual(await self.ok("-a", "foo", "consumers.add", "w2", "tasks"), "ok\n")
        await self.until(lambda: self.consumes("w2", "tasks"), 20, "w2 consumes tasks")
        self.assertIn("tasks\n", await self.ok("consumers", "list", "w2"))
        self.assertEqual(await self.js("consumers", "delete", "w2", "tasks"), {"ok": "ok"})
        await self.until(lambda: self.consumes("w2", "tasks", False), 20, "w2 stops")

        # Status: every instance, one line each, w3 marked.
        status = await self.until(lambda: self.settled_status(), 30,
                                  "status with w1, w2 and the anonymous one as asked")
        self.assertEqual(status["branches"], ["a", "b"])
        rows = {row["instance"]: row for row in status["instances"]}
        self.assertEqual(rows["w3"]["differs"], ["state"])
        self.assertEqual((rows["w1"]["branch"], rows["w1"]["queues"]), ("a", ["tasks"]))
        lines = (await self.ok("status")).splitlines()
        self.assertEqual(lines[0], "branches: a, b")
        self.assertEqual(lines[1].split()[:3], ["INSTANCE", "APP", "BRANCH"])
        table = {}
        for line in lines[2:-1]:
            cells = line.split()
            marked = cells[0] == "*"
            table[cells[marked]] = (marked, cells[marked:])
        self.assertEqual(sorted(table), sorted(rows))
        marked, cells = table["w3"]
        self.assertEqual((marked, cells[:4]), (True, ["w3", "foo", rows["w3"]["branch"], "running"]))
        self.assertNotEqual(cells[4], "running")
        self.assertEqual(table["w1"], (False, ["w1", "foo", "a", "running", "running",
                                               str(rows["w1"]["pid"]), "tasks", "1,1", "0", "-"]))
        self.assertEqual(table["w2"][1][:5], ["w2", "foo", "b", "running", "running"])
        self.assertEqual(lines[-1], "* what runs differs from what was asked")
        self.assertEqual(len(lines), 7)

        # Branches
        self.assertEqual(await self.js("branches"), ["a", "b"])
        listed = (await self.ok("branches")).splitlines()
        self.assertEqual(listed[0].split()[:3], ["ID", "URL", "INSTANCES"])
        self.assertEqual([line.split()[:2] for line in listed[1:]],
                         [["a", a.advertised], ["b", b.advertised]])
        self.assertEqual((await self.js("branches", "b"))["id"], "b")

        # Queued URLs, their state, result and wait, through either branch.
        accepted = await self.js("queue", "foo", "tasks", base + "/hello?x=1", "-d", "name=George")
        self.assertEqual((accepted["queue"], accepted["method"]), ("tasks", "POST"))
        uuid = accepted["uuid"]
        done = await self.js("-a", "foo", "task", "wait", uuid, "--timeout", "30")
        self.assertEqual((done["state"], done["result"]["status_code"]), ("SUCCESS", 200))
        self.assertEqual(done["result"]["content"], "POST /hello name=George")
        self.assertEqual(target.requests, [("POST", "/hello?x=1", b"name=George")])
        self.assertEqual(self.fields(await self.ok("-a", "foo", "task", "state", uuid)),
                         {"uuid": uuid, "state": "SUCCESS"})
        self.url = b.base
        self.assertEqual(await self.js("-a", "foo", "task", "result", uuid), done)
        self.assertEqual(self.fields(await self.ok("-a", "foo", "task", "result", uuid))
                         ["result.status_code"], "200")
        failing = await self.js("queue", "foo", "tasks", self.closed_url(), "-X", "get")
        failed = await self.js("-a", "foo", "task", "wait", failing["uuid"])
        self.assertEqual(failed["state"], "FAILURE")
        self.assertIn(f"task {'0' * 32} not ready after 1 s", await self.fails(
            "-a", "foo", "task", "wait", "0" * 32, "--timeout", "1"))

        # Errors of the API: one line, status 1; a typo'd app gets a hint.
        self.assertEqual(await self.fails("-a", "fooo", "instances"),
                         "cyme: no such app: fooo (did you mean foo?)\n")
        self.assertEqual(await self.fails("apps", "get", "nope"), "cyme: no such app: nope\n")
        self.assertEqual(await self.fails("instances", "get", "w9"),
                         "cyme: no such instance: w9\n")
        self.assertEqual(await self.fails("-a", "bar", "instances", "add", "w1"),
                         "cyme: instance w1 already exists in app foo\n")
        self.assertIn("queue", await self.fails("-a", "foo", "consumers.add", "w1", "nope"))

        # Deleting, with both grammars.
        self.assertEqual(await self.ok("-a", "foo", "queues.delete", "t2"), "ok\n")
        self.assertEqual(await self.js("-a", "foo", "queues", "delete", "tasks"), {"ok": "ok"})
        for name in ("w1", "w3", anonymous):
            self.assertEqual(await self.ok("-a", "foo", "instances.delete", name), "ok\n")
        self.assertEqual(await self.js("instances", "delete", "w2"), {"ok": "ok"})
        self.assertEqual(await self.js("-a", "foo", "instances"), [])
        self.assertEqual(await self.ok("apps.delete", "bar"), "ok\n")
        self.assertEqual(await self.js("apps", "delete", "foo"), {"ok": "ok"})
        self.assertEqual(await self.js("apps"), [])

    async def consumes(self, instance, queue, wanted=True):
        return (queue in await self.js("consumers", instance)) == wanted

    async def settled_status(self):
        """The JSON status once w1, w2 and the anonymous instance run as asked."""
        status = await self.js("status")
        rows = status["instances"]
        settled = [r for r in rows if r["instance"] != "w3" and not r["differs"]
                   and r["live_queues"] is not None]
        return status if len(rows) == 4 and len(settled) == 3 else None


class TokenAndTLSTests(CommandTestCase):
    @deferred
    async def test_tokens_over_tls_with_a_private_ca(self):
        """
        A branch over TLS with a private CA, trusting no one without a
        token: C{--cacert} and C{CYME_TOKEN} reach it; tokens are made
        (the secret alone on stdout), listed (never the secret) and
        revoked; each failure is one line and status 1.
        """
        key, cert = self_signed(self.cwd, "localhost", addresses=["127.0.0.1"])
        port = free_port()
        root = self.path("root")
        os.makedirs(root)
        out, err, code = await getProcessOutputAndValue(
            CYME_BRANCH, ["token", "create", "--name", "root", "--scope", "read,write,admin",
                          "-D", root], env=dict(os.environ), path=self.cwd)
        self.assertEqual(code, 0, err)
        admin = out.decode().strip()
        await self.spawn_branch(
            "t", "--no-trust-loopback",
            f"--http=ssl:{port}:interface=127.0.0.1:privateKey={key}:certKey={cert}",
            root=root, port=port,
        )
        self.url = f"https://localhost:{port}"
        as_admin = {"CYME_TOKEN": admin}

        async def cyme(*args, env=as_admin):
            return await self.cyme("--cacert", cert, *args, url=self.url, env=env)

        await self.poll(lambda: self.answers(cyme), 15, "the TLS branch answers")
        code, out, err = await cyme("token", "create", "--name", "ci", "--scope", "read",
                                    "--expires", "1d")
        self.assertEqual(code, 0, err)
        secret = out.strip()
        self.assertEqual(out, secret + "\n")
        self.assertTrue(err.startswith("token ci (read), expires 20"), err)
        code, out, err = await cyme("token", "list")
        self.assertEqual((code, err), (0, ""))
        lines = out.splitlines()
        self.assertEqual(lines[0].split(), ["NAME", "SCOPES", "CREATED", "EXPIRES"])
        self.assertEqual([line.split()[:2] for line in lines[1:]],
                         [["ci", "read"], ["root", "read,write,admin"]])
        code, out, _ = await cyme("-F", "json", "token", "list")
        self.assertEqual(sorted(t["name"] for t in json.loads(out)), ["ci", "root"])
        self.assertNotIn(secret, out)
        self.assertNotIn(admin, out)
        # The new token reads, and may not write.
        code, out, err = await cyme("apps", env={"CYME_TOKEN": secret})
        self.assertEqual((code, out, err), (0, "", ""))
        code, out, err = await cyme("apps", "add", "foo", env={"CYME_TOKEN": secret})
        self.assertEqual((code, err), (1, "cyme: this token has no write scope\n"))
        code, out, err = await cyme("token", "revoke", "ci")
        self.assertEqual((code, out), (0, "ok\n"), err)
        code, _, err = await cyme("apps", env={"CYME_TOKEN": secret})
        self.assertEqual(code, 1)
        self.assertEqual(err.count("\n"), 1, err)
        # No token; no CA: one line each.
        code, _, err = await cyme("apps", env={})
        self.assertEqual((code, err.count("\n")), (1, 1), err)
        self.assertIn("authentication required", err)
        code, _, err = await self.cyme("apps", url=self.url, env=as_admin)
        self.assertEqual((code, err.count("\n")), (1, 1), err)
        self.assertIn("CERTIFICATE_VERIFY_FAILED", err)

    async def answers(self, cyme):
        code, _, _ = await cyme("branches")
        return True if code == 0 else None


class NoWaitTests(CommandTestCase):
    @deferred
    async def test_nowait_on_every_write(self):
        """
        C{-n} on apps, queues, consumers and instances: the branch answers
        at once, and the change is made.
        """
        branch = await self.start_branch("a")
        self.url = branch.base
        await self.ok("-n", "apps.add", "foo")
        await self.until(lambda: self.has_app("foo"), 10, "foo added")
        await self.ok("-n", "-a", "foo", "queues.add", "tasks")
        await self.until(lambda: self.listed("-a", "foo", "queues"), 10, "tasks declared")
        await self.ok("-a", "foo", "instances", "add", "w1", "--pool", "solo")
        await self.ok("-n", "-a", "foo", "consumers.add", "w1", "tasks")
        await self.until(lambda: self.listed("consumers", "w1"), 20, "w1 consumes tasks")
        await self.ok("consumers", "delete", "w1", "tasks", "-n")
        await self.until(lambda: self.listed("consumers", "w1", wanted=False), 20,
                         "w1 stops consuming tasks")
        await self.ok("-a", "foo", "queues", "delete", "tasks", "--nowait")
        await self.until(lambda: self.listed("-a", "foo", "queues", wanted=False), 10,
                         "tasks deleted")
        await self.ok("-n", "instances", "autoscale", "w1", "2", "1")
        await self.until(lambda: self.field("w1", "max_concurrency", 2), 10, "w1 scales to 2")
        await self.ok("-n", "instances", "disable", "w1")
        await self.until(lambda: self.field("w1", "is_enabled", False), 10, "w1 disabled")
        await self.ok("instances", "enable", "w1", "-n")
        await self.until(lambda: self.field("w1", "state", "running"), 20, "w1 enabled")
        await self.ok("-n", "instances", "restart", "w1")
        await self.ok("-n", "instances", "delete", "w1")
        await self.until(lambda: self.gone("w1"), 10, "w1 deleted")
        await self.ok("apps", "delete", "foo", "-n")
        await self.until(lambda: self.has_app("foo", False), 10, "foo deleted")

    async def has_app(self, name, wanted=True):
        return (name in await self.js("apps")) == wanted

    async def field(self, name, key, value):
        return (await self.js("instances", "get", name)).get(key) == value

    async def listed(self, *args, wanted=True):
        return ("tasks" in await self.js(*args)) == wanted

    async def gone(self, name):
        return name not in await self.js("-a", "foo", "instances")
