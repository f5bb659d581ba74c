"""The whole API fuzzed: schemathesis against a real branch, from the branch's
own /openapi.json.

Every operation of the document gets at least 100 generated requests
(valid and invalid data, seeded), each checked for server errors, answers
that do not match the document (bodies and headers), wrong content types
and undocumented status codes.  The floor is asserted per operation, from
the test cases of schemathesis' own event report (NDJSON); the one
exception is an operation with nothing to generate (no parameter, no
body: C{GET /ping/}), whose single request is its whole input space, as
hypothesis does not repeat a request.  The branch has short waits (``/wait/``
ends after 0.2 s, a create waits at most 1 s for its worker) so that no
request blocks, and small limits (2 instances), since requests that happen
to name an existing app start real workers.

Any 5xx answer fails the run, as schemathesis counts server errors; what
it found was fixed in the daemon (a wait that runs out is a 202 with the
task's state, a live query of a worker that is not running a 409).

What the fuzzed branch and its workers connect to stays on this machine
and in the run's virtual host: the broker hosts, virtual hosts and broker
URLs of the generated apps and instances, and the queued URLs, are drawn
from lists of loopback values (schemathesis dictionaries), and a hook
(tests/api/fuzz_hooks.py) gives the run's vhost to a broker named by its
fields without one; invalid data for them is a 400 that creates nothing.
Everything else is generated freely.

The operations run in two schemathesis processes at once (POST and DELETE;
the rest), one per core, within about three minutes, every request with an
admin token; then the two that revoke a token, with another one: a run
that revoked its own token (schemathesis reused the name "fuzz" it read
in answers) tested nothing but 401 after it.  Every count of test cases
is read from the run's events, and no operation but the login form may
answer 401.

Schemathesis' reuse of values read in answers (C{extra-data-sources}) and
its 4xx feedback are off: with them on, runs ended some operations after
1 to 61 test cases (C{DELETE /instances/{name}/} after one), below the
floor; with them off, fewer do.  An operation below its floor after the
first runs gets more runs of its own, each with another seed (at most
three), whose test cases count too.
"""

import collections
import json
import os
import re

from twisted.internet import defer
from twisted.internet.utils import getProcessOutputAndValue

from tests.integration import IntegrationTestCase
from tests.test_daemon import BIN, deferred
from tests.vhosts import made_vhost

ST = os.path.join(BIN, "st")
#: What keeps a broker given by its fields in the run's vhost.
HOOKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fuzz_hooks.py")
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

[phases.fuzzing.extra-data-sources]
responses = false
[phases.fuzzing.error-feedback]
enabled = false
"""
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
#: The operations that revoke a token: a run that revoked its own token
#: would test nothing but the 401 of every operation after it.
REVOKE = r"^/tokens/(!/)?\{name\}/$"
#: The two halves of the other operations, by method, one process each
#: with the admin token; then the revokes, with a token of their own.
HALVES = (("POST", "DELETE"), ("GET", "PUT", "HEAD", "OPTIONS", "PATCH", "TRACE"))
#: Runs, each with another seed, that add test cases to the operations
#: below their floor.
TOP_UPS = 3


def minimum_cases(document):
    """
    C{{"METHOD /path": the fewest test cases it must get}}: C{EXAMPLES},
    or 1 for an operation with nothing to generate (no parameter, no body).
    """
    floors = {}
    for route, item in document["paths"].items():
        shared = item.get("parameters") or []
        for method, operation in item.items():
            if method not in METHODS:
                continue  # the path's parameters, summary...
            varies = shared or operation.get("parameters") or operation.get("requestBody")
            floors[f"{method.upper()} {route}"] = EXAMPLES if varies else 1
    return floors


def statuses_per_operation(reports):
    """
    C{{"METHOD /path": Counter of the statuses of its test cases}} (None:
    no answer) in the fuzzing phase, from the NDJSON reports.
    """
    statuses = {}
    for report in reports:
        with open(report, encoding="utf-8") as f:
            for line in f:
                if not line.startswith('{"ScenarioFinished"'):
                    continue
                scenario = json.loads(line)["ScenarioFinished"]
                if scenario["phase"] != "fuzzing" or scenario["is_final"]:
                    continue  # a final scenario replays a failure already counted
                recorder = scenario["recorder"]
                found = statuses.setdefault(recorder["label"], collections.Counter())
                for case in recorder["cases"]:
                    answer = (recorder["interactions"].get(case) or {}).get("response")
                    found[(answer or {}).get("status_code")] += 1
    return statuses


def cases_per_operation(statuses):
    return {label: sum(found.values()) for label, found in statuses.items()}


class FuzzTests(IntegrationTestCase):
    timeout = 600
    vhost_prefix = "cyme-fuzz"

    async def schemathesis(self, branch, vhost, report, *selection, seed=SEED):
        """C{(exit status, output)} of schemathesis on the C{selection}
        (its options) of C{branch}'s operations, its events in C{report}."""
        config = self.path("schemathesis.toml")
        with open(config, "w", encoding="utf-8") as f:
            f.write(CONFIG.format(vhost=vhost))
        out, err, code = await getProcessOutputAndValue(ST, [
            "--config-file", config, "--no-color", "run", branch.url("/openapi.json"),
            "--url", branch.base,
            "--checks", CHECKS, "--phases", "fuzzing", "--mode", "all",
            "--max-examples", str(EXAMPLES), "--seed", str(seed), "--workers", "2",
            "--request-timeout", "15", "--suppress-health-check", "too_slow",
            "--output-truncate", "false", "--report", "ndjson", "--report-ndjson-path", report,
            *selection,
        ], env=dict(os.environ, NO_COLOR="1", SCHEMATHESIS_HOOKS=HOOKS, CYME_FUZZ_VHOST=vhost),
            path=self.cwd)
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
        tokens = []
        for name in ("fuzz", "fuzz-revokes"):
            code, made = await self.request("POST", branch.url("/tokens/"), data={
                "name": name, "scope": "read,write,admin"})
            self.assertEqual(code, 201, made)
            tokens.append(("--header", f"Authorization: Bearer {made['token']}"))
        vhost = made_vhost(self.vhost_prefix)
        reports = [self.path(f"events-{n}.ndjson") for n in range(len(HALVES) + 1)]
        runs = await defer.gatherResults([
            defer.ensureDeferred(self.schemathesis(
                branch, vhost, report, *tokens[0], "--exclude-path-regex", REVOKE,
                *(a for m in half for a in ("--include-method", m))))
            for half, report in zip(HALVES, reports)
        ])
        runs.append(await self.schemathesis(branch, vhost, reports[-1], *tokens[1],
                                            "--include-path-regex", REVOKE))
        tested = 0
        for (code, output), half in zip(runs, HALVES + (("DELETE /tokens/",),)):
            self.assertEqual(code, 0, f"schemathesis {' '.join(half)}:\n{output[-20000:]}")
            selected = re.search(r"Selected: (\d+)/(\d+)", output)
            self.assertIsNotNone(selected, output[-3000:])
            self.assertIn(f"Tested: {selected.group(1)}", output)
            tested += int(selected.group(1))
        code, document = await self.request("GET", branch.url("/openapi.json"))
        floors = minimum_cases(document)
        self.assertEqual(tested, len(floors))
        for attempt in range(1, TOP_UPS + 1):
            cases = cases_per_operation(statuses_per_operation(reports))
            short = [label for label, floor in floors.items() if cases.get(label, 0) < floor]
            if not short:
                break
            # Hypothesis ended these early (most of what it drew could not
            # be sent): another seed adds test cases of their own.
            for revokes, token in ((True, tokens[1]), (False, tokens[0])):
                names = [label for label in short if bool(re.match(
                    REVOKE, label.partition(" ")[2])) == revokes]
                if not names:
                    continue
                reports.append(self.path(f"events-{len(reports)}.ndjson"))
                code, output = await self.schemathesis(
                    branch, vhost, reports[-1], *token,
                    *(a for name in names for a in ("--include-name", name)),
                    seed=SEED + attempt)
                self.assertEqual(code, 0, f"schemathesis {names}:\n{output[-20000:]}")
        statuses = statuses_per_operation(reports)
        cases = cases_per_operation(statuses)
        short = {label: cases.get(label, 0) for label, floor in floors.items()
                 if cases.get(label, 0) < floor}
        self.assertEqual(short, {}, f"operations with fewer test cases than their floor "
                                    f"(every count: {sorted(cases.items())})")
        # The admin tokens stayed valid throughout: 401 is only the login
        # form's answer to the tokens it makes up.
        refused = {label: found[401] for label, found in statuses.items()
                   if found[401] and label != "POST /login/"}
        self.assertEqual(refused, {})
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
