"""The README's *Getting started* and *Walkthrough*, run as written: a branch
started as the README's first command starts one (``bin/run-branch``: port
8000, root ``instances/``, a generated id), then every ``curl`` of the
walkthrough in order, each answer compared with the README's, and the
``cyme`` commands beside them (the console script, on the same branch),
each output compared line by line.  Outside the walkthrough, the fence's
refusals (*Queued URLs: the fence*) are run the same way on a branch
started with the README's options, and the health example's 503 is
checked on a branch whose broker refuses connections.

What differs from one run to the next is mapped, never skipped: the
anonymous instance's UUID, the branch's generated id, the host in the
node name, the worker's pid, the virtual host of the test run (the
README's ``/``) and the port; ``live`` may already hold what the worker
said.
"""

import json
import os
import re
import shlex
import socket

from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase

from cyme import tap
from cyme.operations.events import RESET, TYPES
from tests.integration import IntegrationTestCase
from tests.test_daemon import BIN, deferred, free_port
from tests.vhosts import broker_url, run_vhost

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.rst")
CYME = os.path.join(BIN, "cyme")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
#: Fields whose value is the worker's own: compared by kind.
VOLATILE = {"pid": (int,), "live": (dict, type(None)), "uptime": (float, int),
            "last_pong": (float, type(None))}


def _part(text, title, underlines):
    """The text under the heading C{title} of reST C{text}, up to the next
    heading underlined with one of the characters C{underlines}."""
    lines = text.splitlines()
    start = lines.index(title) + 2
    end = next((i - 1 for i in range(start + 1, len(lines))
                if re.fullmatch(f"[{underlines}]+", lines[i]) and lines[i - 1].strip()),
               len(lines))
    return "\n".join(lines[start:end])


def section(text, title):
    """The text of the top-level section C{title} of an reST document."""
    return _part(text, title, "=")


def subsection(text, title):
    """The text of the subsection C{title} (underlined with C{-}) of reST C{text}."""
    return _part(text, title, "=-")


def literal_blocks(text):
    """The literal blocks (after C{::}) of reST C{text}, dedented."""
    blocks, current, inside = [], None, False
    for line in text.splitlines():
        if inside and (not line.strip() or line.startswith("    ")):
            current.append(line[4:])
            continue
        if current:
            blocks.append("\n".join(current).strip("\n"))
        current, inside = None, False
        if line.rstrip().endswith("::"):
            current, inside = [], True
    if current:
        blocks.append("\n".join(current).strip("\n"))
    return blocks


def sessions(block):
    """C{(command, output lines)} of each C{$ command} of a block."""
    found = []
    lines = block.splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].startswith("$ "):
            i += 1
            continue
        command = lines[i][2:]
        while command.endswith("\\"):
            i += 1
            command = command[:-1] + " " + lines[i].strip()
        i += 1
        output = []
        while i < len(lines) and not lines[i].startswith("$ "):
            output.append(lines[i])
            i += 1
        found.append((command, output))
    return found


def curl(command):
    """C{(method, url, form body or None, include headers)} of a curl command."""
    argv = shlex.split(command)
    assert argv[0] == "curl", command
    method, data, url, include = None, [], None, False
    args = iter(argv[1:])
    for arg in args:
        if arg == "-X":
            method = next(args)
        elif arg == "-d":
            data.append(next(args))
        elif arg == "-i":
            include = True
        elif arg.startswith("http"):
            url = arg
        else:
            raise AssertionError(f"curl option the test does not know: {arg}")
    method = method or ("POST" if data else "GET")
    return method, url, "&".join(data).encode() if data else None, include


def expected(output):
    """C{(status, content type, JSON)} an output shows (each None if not)."""
    status = ctype = None
    lines = [line for line in output]
    if lines and lines[0].startswith("HTTP/1.1 "):
        status = int(lines[0].split()[1])
        lines = lines[1:]
        while lines and lines[0].strip():
            name, _, value = lines.pop(0).partition(":")
            if name.lower() == "content-type":
                ctype = value.strip()
    text = "\n".join(lines).strip()
    return status, ctype, json.loads(text) if text else None


def replaced(value, names):
    """C{value} with each string of C{names} (a dict) replaced in its strings."""
    if isinstance(value, dict):
        return {k: replaced(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [replaced(v, names) for v in value]
    if isinstance(value, str):
        for real, shown in names.items():
            value = value.replace(real, shown)
    return value


def like(actual, shown):
    """C{actual} with its volatile fields as C{shown} has them, where of their kind."""
    if isinstance(actual, dict) and isinstance(shown, dict):
        result = {}
        for key, value in actual.items():
            kinds = VOLATILE.get(key)
            if kinds and isinstance(value, kinds) and isinstance(shown.get(key), kinds):
                result[key] = shown[key]
            else:
                result[key] = like(value, shown.get(key))
        return result
    return actual


class EventTypesTests(SynchronousTestCase):
    def test_every_event_type_is_told(self):
        """The README's event stream lists each type of event a branch records."""
        with open(README, encoding="utf-8") as f:
            told = set(re.findall(r"``([a-z]+)``", subsection(f.read(), "The event stream")))
        self.assertEqual(sorted(set(TYPES) - told), [])
        self.assertIn(RESET, told)


class WalkthroughTests(IntegrationTestCase):
    timeout = 120
    vhost_prefix = "cyme-readme"

    def setUp(self):
        with open(README, encoding="utf-8") as f:
            self.readme = f.read()
        return super().setUp()

    def test_first_command_starts_the_walkthroughs_branch(self):
        """The first command is C{bin/run-branch}: cyme-branch's defaults."""
        first = sessions(literal_blocks(section(self.readme, "Getting started"))[0])[0]
        self.assertEqual(first, ("bin/run-branch", []))
        with open(os.path.join(ROOT, "bin", "run-branch"), encoding="utf-8") as f:
            self.assertIn('exec .venv/bin/cyme-branch "$@"', f.read())
        options = tap.Options()
        self.assertEqual(options["address"], ":8000")
        self.assertEqual(dict(o[:3:2] for o in options.optParameters)["instance-dir"],
                         "instances/")
        with open(os.path.join(ROOT, ".gitignore"), encoding="utf-8") as f:
            self.assertIn("instances/", f.read().split())

    def test_no_root_directory_inside_the_clone_but_instances(self):
        for match in re.finditer(r"-D (\S+)", self.readme):
            root = match.group(1).strip("`")
            self.assertTrue(root.startswith(("~", "/", "instances/")), match.group(0))

    def walkthrough(self):
        found = []
        for block in literal_blocks(section(self.readme, "Walkthrough")):
            found.extend(sessions(block))
        self.assertGreater(len(found), 10)
        return found

    async def check_curl(self, command, output, base, names, vhost):
        """Send a C{curl} command of the README to the branch at C{base}; its
        answer, with the names mapped, must be the README's."""
        method, url, body, include = curl(command)
        branch = re.match(r"http://localhost:800[01](?=/)", url)
        self.assertIsNotNone(branch, command)
        headers = {"Content-Type": ["application/x-www-form-urlencoded"]} if body else {}
        code, answer, response_headers = await self.call(
            method, base + url[branch.end():], data=body, headers=headers, timeout=15)
        status, ctype, shown = expected(output)
        where = f"README: $ {command}\nanswered {code}: {json.dumps(answer)}"
        if status is not None:
            self.assertTrue(include, f"{where}\n(an HTTP status line needs curl -i)")
            self.assertEqual(code, status, where)
        elif isinstance(shown, dict) and "error" in shown:
            self.assertGreaterEqual(code, 400, where)  # an error shown without curl -i
        else:
            self.assertLess(code, 400, where)
        if ctype is not None:
            self.assertEqual(response_headers.getRawHeaders(b"content-type"),
                             [ctype.encode()], where)
        if isinstance(answer, dict) and UUID.match(str(answer.get("name"))) and \
                isinstance(shown, dict) and UUID.match(str(shown.get("name"))):
            names[answer["name"]] = shown["name"]
        if shown is None:
            return
        # The test run's virtual host is the README's (the broker's) "/".
        actual = json.loads(json.dumps(replaced(answer, names)).replace(
            f'"virtual_host": "{vhost}"', '"virtual_host": "/"'))
        self.assertEqual(like(actual, shown), shown, where)

    async def cyme(self, command, output, base, names, vhost):
        """Run a C{cyme} command of the walkthrough on the branch at C{base};
        its output, with the names mapped, must be the README's."""
        argv = shlex.split(command)
        environ = {k: v for k, v in os.environ.items() if not k.startswith("CYME_")}
        out, err, code = await getProcessOutputAndValue(
            CYME, argv[1:], env=dict(environ, CYME_URL=base), path=self.cwd)
        text = out.decode("utf-8").replace(f":5672/{vhost}", ":5672//")
        for real, shown in names.items():
            text = text.replace(real, shown)
        where = f"README: $ {command}\nexit {code}, stderr {err.decode()!r}:\n{text}"
        self.assertEqual((code, err), (0, b""), where)
        self.assertEqual(text.rstrip("\n").splitlines(), output, where)

    @deferred
    async def test_the_fences_error_texts(self):
        """
        The examples of *Queued URLs: the fence*, on a branch started with
        the README's C{--webhook-allow}s, for the walkthrough's app C{foo}
        and its queue C{tasks}: the refusals' texts are the README's.
        """
        text = subsection(section(self.readme, "Security"), "Queued URLs: the fence")
        steps = [step for block in literal_blocks(text) for step in sessions(block)]
        (start, _), curls = steps[0], steps[1:]
        argv = shlex.split(start)
        self.assertEqual(argv[0], "cyme-branch", start)
        opened = [a for i, a in enumerate(argv) if argv[i - 1] == "--webhook-allow"]
        self.assertEqual(opened, ["127.0.0.1:8080", "localhost:8080"])
        port = free_port()
        vhost = run_vhost(self.vhost_prefix)
        process = self.cyme_branch(f"127.0.0.1:{port}", "-D", self.path("fence"), "-b",
                                   broker_url(vhost), *(a for o in opened
                                                        for a in ("--webhook-allow", o)))
        await self.wait_ping(process, port)
        base = f"http://127.0.0.1:{port}"
        for method, path in (("PUT", "/foo/"), ("PUT", "/foo/queues/tasks/")):
            code, answer = await self.request(method, base + path)
            self.assertLess(code, 300, answer)
        self.assertEqual(len(curls), 4)
        for command, output in curls:
            await self.check_curl(command, output, base, {}, vhost)
        await self.stop(process)

    @deferred
    async def test_the_health_example(self):
        """
        *Health and logs*' 503: a branch whose broker refuses connections
        answers it with the README's keys and the README's text for the bus;
        its instances and apps (the README's come from a busier branch) are
        compared by their shape.
        """
        text = section(self.readme, "Supervision")
        text = text[text.index("Health and logs"):]
        command, output = sessions(literal_blocks(text)[0])[0]
        method, url, _, include = curl(command)
        self.assertEqual((method, url, include), ("GET", "http://localhost:8001/health/", True))
        status, _, shown = expected(output)
        port = free_port()
        process = self.cyme_branch(f"127.0.0.1:{port}", "-i", "branch1", "-D",
                                   self.path("health"), "-b",
                                   f"amqp://guest:guest@127.0.0.1:{free_port()}//")
        await self.wait_ping(process, port)

        async def failing():
            code, answer = await self.request("GET", f"http://127.0.0.1:{port}/health/")
            return (code, answer) if "bus" in (answer.get("failing") or {}) else None

        code, answer = await self.poll(failing, 15, "the bus said unreachable")
        self.assertEqual((code, status), (503, 503))
        self.assertEqual(sorted(answer), sorted(shown))
        self.assertEqual({k: answer[k] for k in ("ready", "branch", "failing")},
                         {k: shown[k] for k in ("ready", "branch", "failing")})
        self.assertEqual(sorted(answer["instances"]), sorted(shown["instances"]))
        states = {"connected", "connecting", "unreachable", "unused"}
        for health in list(answer["apps"].values()) + list(shown["apps"].values()):
            self.assertIn(health["broker"], states)
        await self.stop(process)

    @deferred
    async def test_walkthrough(self):
        root = self.path("instances")
        port = free_port()
        vhost = run_vhost(self.vhost_prefix)
        # As bin/run-branch starts it: no id (generated), its own root.
        process = self.cyme_branch(f"127.0.0.1:{port}", "-D", root, "-b", broker_url(vhost),
                                   "--sup-interval", "1")
        await self.wait_ping(process, port)
        base = f"http://127.0.0.1:{port}"
        code, (branch_id,) = await self.request("GET", base + "/branches/")
        names = {branch_id: "3f2a9c81d4e0", "@" + socket.gethostname(): "@myhost"}
        for command, output in self.walkthrough():
            if command.startswith("cyme "):
                await self.cyme(command, output, base, names, vhost)
                continue
            await self.check_curl(command, output, base, names, vhost)
        await self.stop(process)
