"""Workers' output relayed to the branch's log (cyme.supervision.relay): each
line at the level Celery wrote it, without the start-up banner, a broker
refusal once a minute, read every quarter of a second.
"""

import os

from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from cyme import logs
from cyme.supervision.fakes import (
    FakeControl, FakeLauncher, FakeProcessReactor, FakeProcessTable,
)
from cyme.supervision.relay import OutputRelay, WorkerOutput
from cyme.supervision.supervisor import Supervisor
from cyme.supervision.workerstate import FAILED, Policy
from cyme.state.models import App, Instance
from cyme.state.store import MemoryStore

# A worker's start as Celery 5.7 writes it when run as root.
START = """\
/srv/cyme/.venv/lib/python3.11/site-packages/celery/platforms.py:893: SecurityWarning: \
You're running the worker with superuser privileges: this is
absolutely not recommended!
Please specify a different user using the --uid option.
User information: uid=0 euid=0 gid=0 egid=0
  _warn_or_raise_security_error(egid, euid, gid, uid,
 -------------- w1@vm v5.7.0 (collider)
--- ***** -----
-- ******* ---- Linux-6.1.0-x86_64-with-glibc2.36 2026-12-02 04:28:37
- *** --- * ---
- ** ---------- [config]
- ** ---------- .> app:         cyme:0x7f3e7848f4d0
- ** ---------- .> transport:   amqp://guest:**@127.0.0.1:5672/prod
- ** ---------- .> results:     rpc://
- *** --- * --- .> concurrency: {min=1, max=1} (prefork)
-- ******* ---- .> task events: ON
--- ***** -----
 -------------- [queues]
                .> dq.w1            exchange=dq.w1(direct) key=dq.w1
[tasks]
  . cyme.echo
  . cyme.webhook
[2026-12-02 04:28:37,935: INFO/MainProcess] Connected to amqp://guest:**@127.0.0.1:5672/prod
[2026-12-02 04:28:37,980: INFO/MainProcess] w1@vm ready.
""".splitlines()

REFUSED = [
    "[2026-12-02 04:30:00,001: ERROR/MainProcess] consumer: Cannot connect to "
    "amqp://guest:**@127.0.0.1:1//: [Errno 111] Connection refused.",
    "Trying again in 2.00 seconds... (1/100)",
]

FAILED_TASK = [
    "[2026-12-02 04:31:00,000: ERROR/ForkPoolWorker-1] Task cyme.webhook[1] raised "
    "unexpected: ValueError('bad')",
    "Traceback (most recent call last):",
    '  File "x.py", line 1, in f',
    "ValueError: bad",
]


class LogTestCase(SynchronousTestCase):
    def setUp(self):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def relayed(self):
        """C{(level name, line)} of every relayed line so far."""
        return [(e["log_level"].name, e["line"]) for e in self.events
                if e.get("log_namespace") == "cyme.worker"]


class WorkerOutputTests(LogTestCase):
    def setUp(self):
        super().setUp()
        self.reactor = FakeProcessReactor()
        self.output = WorkerOutput("w1", self.reactor)

    def test_start_without_the_banner(self):
        self.output.relay(START)
        relayed = self.relayed()
        # The warning (all its lines) as a warning, the log lines at info.
        self.assertEqual([level for level, _ in relayed], ["warn"] * 5 + ["info"] * 2)
        self.assertIn("SecurityWarning", relayed[0][1])
        self.assertEqual(relayed[-1], ("info", START[-1]))
        self.assertFalse([line for _, line in relayed if "------" in line or "cyme.echo" in line])
        self.assertEqual(self.output.dropped, len(START) - 7)
        event = [e for e in self.events if e.get("log_namespace") == "cyme.worker"][-1]
        self.assertEqual(event["instance"], "w1")

    def test_each_line_at_its_level(self):
        logs.set_level(LogLevel.debug)
        self.addCleanup(logs.set_level, LogLevel.info)
        lines = [
            "[2026-12-02 04:28:38,000: DEBUG/MainProcess] | Worker: Starting Pool",
            "[2026-12-02 04:28:38,001: WARNING/MainProcess] consumer: Connection to broker lost.",
            "[2026-12-02 04:28:38,002: CRITICAL/MainProcess] Unrecoverable error: "
            "RuntimeError('x')",
            "[2026-12-02 04:28:38,003: NOTICE/MainProcess] a level Celery never wrote",
            *FAILED_TASK,
            "worker: Warm shutdown (MainProcess)",
        ]
        self.output.relay(lines)
        self.assertEqual([level for level, _ in self.relayed()],
                         ["debug", "warn", "critical", "info", "error", "error", "error",
                          "error", "info"])

    def test_a_refusal_once_a_minute(self):
        self.output.relay(REFUSED)
        self.assertEqual(self.relayed(), [("warn", REFUSED[0]), ("warn", REFUSED[1])])
        # Celery retries every few seconds: held back for a minute.
        for _ in range(29):
            self.reactor.advance(2)
            self.output.relay(REFUSED)
        self.assertEqual(len(self.relayed()), 2)
        self.reactor.advance(2)
        self.output.relay(REFUSED)
        relayed = self.relayed()
        self.assertEqual(len(relayed), 4)
        last = [e for e in self.events if e.get("log_namespace") == "cyme.worker"][-2]
        self.assertEqual(last["held"], 29)
        self.assertIn("(29 more like it since the last shown)",
                      last["log_format"].format(**last))
        # Other lines go on meanwhile.
        self.output.relay(REFUSED + FAILED_TASK[:1])
        self.assertEqual(self.relayed()[-1], ("error", FAILED_TASK[0]))

    def test_an_access_refusal_too(self):
        self.output.relay([
            "[2026-12-02 04:10:49,313: CRITICAL/MainProcess] Unrecoverable error: "
            "AccessRefused(403, 'ACCESS_REFUSED - Login was refused')",
            "Traceback (most recent call last):",
        ])
        self.output.relay([
            "[2026-12-02 04:10:51,313: CRITICAL/MainProcess] Unrecoverable error: "
            "AccessRefused(403, 'ACCESS_REFUSED - Login was refused')",
            "Traceback (most recent call last):",
        ])
        self.assertEqual([level for level, _ in self.relayed()], ["warn", "warn"])

    def test_a_crash_after_the_banner_is_shown(self):
        self.output.relay(START[5:12] + ["Traceback (most recent call last):",
                                         "ImportError: no module named x"])
        self.assertEqual(self.relayed(), [("error", "Traceback (most recent call last):"),
                                          ("error", "ImportError: no module named x")])

    def test_no_escape_sequence_nor_password(self):
        self.output.relay(["[2026-12-02 04:28:38,000: WARNING/ForkPoolWorker-1] "
                           "\x1b[31mred\x1b[0m amqp://me:s3cret@rabbit//\x07\tend"])
        ((_, line),) = self.relayed()
        self.assertNotIn("\x1b", line)
        self.assertNotIn("\x07", line)
        self.assertNotIn("s3cret", line)
        self.assertIn("amqp://me:**@rabbit//", line)
        self.assertIn("\tend", line)


class OutputRelayTests(LogTestCase):
    """The relay over a real supervisor, its lifecycles and their log files."""

    def setUp(self):
        super().setUp()
        self.reactor = FakeProcessReactor()
        self.store = MemoryStore()
        self.store.put_app(App("foo"))
        self.root = self.mktemp()
        os.makedirs(self.root)
        self.supervisor = Supervisor(
            self.store, FakeControl(self.reactor), self.reactor, self.root, hostname="h",
            python="/py", processes=FakeProcessTable(), launcher=FakeLauncher(self.reactor),
            policy=Policy(interval=5.0))
        self.relay = OutputRelay(self.supervisor, self.reactor)
        self.supervisor.startService()
        self.relay.startService()
        self.addCleanup(self.stop)
        self.store.put_instance(Instance(name="w1", app="foo"))
        self.supervisor.reconcile()
        self.reactor.advance(0)

    def stop(self):
        if self.relay.running:
            self.relay.stopService()
        self.supervisor.stopService()

    def write(self, *lines):
        with open(os.path.join(self.root, "w1", "worker.log"), "a") as f:
            f.write("".join(line + "\n" for line in lines))

    def test_within_a_quarter_second(self):
        self.write(START[-1])
        self.reactor.advance(0.25)
        self.assertEqual(self.relayed(), [("info", START[-1])])

    def test_a_refusal_fails_the_instance_at_once(self):
        self.write(*REFUSED)
        self.reactor.advance(0.25)
        self.assertEqual(self.supervisor.status("w1")["state"], FAILED)
        self.assertIn("connection refused", self.supervisor.status("w1")["last_error"])

    def test_last_words_when_stopping(self):
        self.reactor.advance(0.25)
        self.write("worker: Warm shutdown (MainProcess)")
        self.relay.stopService()
        self.assertEqual(self.relayed(), [("info", "worker: Warm shutdown (MainProcess)")])
        self.reactor.advance(1)
        self.assertEqual(len(self.relayed()), 1)

    def test_one_bad_log_does_not_stop_the_others(self):
        self.store.put_instance(Instance(name="w2", app="foo"))
        self.supervisor.reconcile()
        self.reactor.advance(0)
        os.mkdir(os.path.join(self.root, "w1", "worker.log"))  # unreadable as a file
        with open(os.path.join(self.root, "w2", "worker.log"), "a") as f:
            f.write(START[-1] + "\n")
        self.reactor.advance(0.25)
        self.assertEqual(self.relayed(), [("info", START[-1])])
        self.assertEqual(len(self.flushLoggedErrors(IsADirectoryError)), 1)
        # Said once a minute, not four times a second (till the next tick).
        self.reactor.pump([0.25] * 16)
        self.assertEqual(len(self.flushLoggedErrors(IsADirectoryError)), 0)
        self.assertTrue(self.relay.running)
