"""The whole API fuzzed: schemathesis against a real branch, from the branch's
own /openapi.json.

Every operation of the document gets up to 100 generated requests (valid
and invalid data, seeded; hypothesis stops short where an operation has
fewer distinct requests, or where too many generated values cannot be sent,
such as a path segment with a slash in it), each checked for
server errors, answers that do not match the document (bodies and
headers), wrong content types and undocumented status codes.  The branch has short waits (``/wait/``
ends after 0.2 s, a create waits at most 1 s for its worker) so that no
request blocks, and small limits (2 instances), since requests that happen
to name an existing app start real workers.

Any 5xx answer fails the run, as schemathesis counts server errors; what
it found was fixed in the daemon (a wait that runs out is a 202 with the
task's state, a live query of a worker that is not running a 409).

What the fuzzed branch and its workers connect to stays on this machine
and in the run's virtual host: the broker hosts, virtual hosts and broker
URLs of the generated apps and instances, and the queued URLs, are drawn
from lists of loopback values (schemathesis dictionaries); invalid data
for them is a 400 that creates nothing.  Everything else is generated
freely.

The operations run in two schemathesis processes at once (POST and DELETE;
the rest), one per core, within about three minutes.
"""

import os
import re

from twisted.internet import defer
from twisted.internet.utils import getProcessOutputAndValue

from tests.integration import IntegrationTestCase
from tests.test_daemon import BIN, deferred
from tests.vhosts import made_vhost

ST = os.path.join(BIN, "st")
SEED = 12
EXAMPLES = 100
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_schema_conformance,response_headers_conformance")
CONFIG = """\
[dictionaries.hosts]
values = ["127.0.0.1", "localhost"]
[dictionaries.vhosts]
values = ["{vhost}"]
[dictionaries.brokers]
values = ["amqp://guest:guest@127.0.0.1:5672/{vhost}", "amqp://localhost/{vhost}"]
[dictionaries.urls]
values = ["http%3A%2F%2F127.0.0.1%3A9%2Fimport%3Fuser%3D1", "https%3A%2F%2Flocalhost%3A9%2Fa"]

[parameters]
"body.hostname" = {{ dictionary = "hosts" }}
"body.vhost" = {{ dictionary = "vhosts" }}
"body.virtual_host" = {{ dictionary = "vhosts" }}
"body.broker" = {{ dictionary = "brokers" }}
"path.url" = {{ dictionary = "urls" }}
"""
#: The two halves of the operations, by method, one process each.
HALVES = (("POST", "DELETE"), ("GET", "PUT", "HEAD", "OPTIONS", "PATCH", "TRACE"))


class FuzzTests(IntegrationTestCase):
    timeout = 600
    vhost_prefix = "cyme-fuzz"

    async def schemathesis(self, branch, token, half, vhost):
        config = self.path("schemathesis.toml")
        with open(config, "w", encoding="utf-8") as f:
            f.write(CONFIG.format(vhost=vhost))
        out, err, code = await getProcessOutputAndValue(ST, [
            "--config-file", config, "--no-color", "run", branch.url("/openapi.json"),
            "--url", branch.base, "--header", f"Authorization: Bearer {token}",
            "--checks", CHECKS, "--phases", "fuzzing", "--mode", "all",
            "--max-examples", str(EXAMPLES), "--seed", str(SEED), "--workers", "2",
            "--request-timeout", "15", "--suppress-health-check", "too_slow",
            "--output-truncate", "false", *(a for m in half for a in ("--include-method", m)),
        ], env=dict(os.environ, NO_COLOR="1"), path=self.cwd)
        return code, (out + err).decode("utf-8", "replace")

    @deferred
    async def test_every_operation(self):
        branch = await self.start_branch(
            "fuzz", "--max-wait", "0.2", "--max-stream", "0.5", "--ready-timeout", "1",
            "--max-instances", "2",
            "--max-concurrency", "2", "-l", "warn",
        )
        # Every request carries an admin token: the token path of the gate,
        # not the loopback trust (and broker passwords shown, as to admins).
        code, made = await self.request("POST", branch.url("/tokens/"), data={
            "name": "fuzz", "scope": "read,write,admin"})
        self.assertEqual(code, 201, made)
        vhost = made_vhost(self.vhost_prefix)
        runs = await defer.gatherResults([
            defer.ensureDeferred(self.schemathesis(branch, made["token"], half, vhost))
            for half in HALVES
        ])
        tested = generated = 0
        for (code, output), half in zip(runs, HALVES):
            self.assertEqual(code, 0, f"schemathesis {' '.join(half)}:\n{output[-20000:]}")
            selected = re.search(r"Selected: (\d+)/(\d+)", output)
            self.assertIsNotNone(selected, output[-3000:])
            self.assertIn(f"Tested: {selected.group(1)}", output)
            tested += int(selected.group(1))
            generated += int(re.search(r"(\d+) generated", output).group(1))
        code, document = await self.request("GET", branch.url("/openapi.json"))
        operations = sum(len(item) for item in document["paths"].values())
        self.assertEqual(tested, operations)
        # Hypothesis stops short of 100 here and there (GET /ping/ has one
        # request), so the whole is a bound.
        self.assertGreater(generated, 75 * operations)
        self.assertTrue(branch.process.running, branch.process.describe())
        self.assertNotIn("Traceback", branch.process.output)
        # Nothing it made reached beyond this machine and the run's vhost.
        code, apps = await self.request("GET", branch.url("/"))
        for app in apps:
            code, record = await self.request("GET", branch.url(f"/{app}/"))
            records = [record] if code == 200 else []
            code, names = await self.request("GET", branch.url(f"/{app}/instances/"))
            for name in names if code == 200 else []:
                code, record = await self.request("GET", branch.url(f"/instances/{name}/"))
                records += [record] if code == 200 else []
            for record in records:
                self.assertIn(record["broker"]["hostname"], ("127.0.0.1", "localhost"))
                self.assertEqual(record["broker"]["virtual_host"], vhost, record)
