"""``--log-format json``: one JSON object a line, never a broker password."""

import io
import json

from twisted.logger import LogLevel, Logger, LogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from cyme.jsonlog import JSONLinesObserver, event_as_json

URL = "amqp://cyme:s3cret-pw@rabbit.example:5672/prod"


class JSONLinesTests(SynchronousTestCase):
    def setUp(self):
        self.out = io.StringIO()
        publisher = LogPublisher(JSONLinesObserver(self.out))
        self.log = Logger(namespace="cyme.test", observer=publisher)

    def lines(self):
        text = self.out.getvalue()
        self.assertTrue(text.endswith("\n"))
        return [json.loads(line) for line in text.splitlines()]

    def test_one_object_a_line(self):
        self.log.info("{instance} started as pid {pid}", instance="w1", pid=42)
        self.log.warn("{instance} did not answer ping ({missed} in a row)",
                      instance="w1", missed=2)
        first, second = self.lines()
        self.assertEqual(
            {k: first[k] for k in ("level", "namespace", "message", "instance", "pid")},
            {"level": "info", "namespace": "cyme.test", "message": "w1 started as pid 42",
             "instance": "w1", "pid": 42})
        self.assertRegex(first["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$")
        self.assertEqual((second["level"], second["missed"]), ("warn", 2))
        # Twisted's own bookkeeping is not an event field.
        self.assertFalse([k for k in first if k.startswith("log_")])

    def test_a_message_across_lines_stays_one_line(self):
        self.log.error("{instance} | {line}", instance="w1", line="Traceback:\n  File x")
        (record,) = self.lines()
        self.assertEqual(record["message"], "w1 | Traceback:\n  File x")
        self.assertEqual(self.out.getvalue().count("\n"), 1)

    def test_no_broker_password(self):
        # In the message, a field, a nested field, and a traceback alike.
        try:
            raise ValueError(f"cannot reach {URL}")
        except ValueError:
            failure = Failure()
        self.log.failure("connecting to {broker}", failure, broker=URL,
                         brokers=[URL], detail={"url": URL, "password": "s3cret-pw"},
                         password="s3cret-pw")
        text = self.out.getvalue()
        self.assertNotIn("s3cret-pw", text)
        (record,) = self.lines()
        self.assertEqual(record["level"], "critical")
        self.assertIn("amqp://cyme:**@rabbit.example", record["message"])
        self.assertIn("ValueError: cannot reach amqp://cyme:**@", record["traceback"])
        self.assertEqual(record["brokers"], ["amqp://cyme:**@rabbit.example:5672/prod"])
        self.assertEqual(record["detail"]["password"], "**")
        self.assertEqual(record["password"], "**")

    def test_values_json_cannot_hold(self):
        self.log.info("{what}", what=object(), raw=b"bytes\xff", levels={LogLevel.info: 1})
        (record,) = self.lines()
        self.assertEqual(record["raw"], "bytes\ufffd")
        self.assertIn("object object at", record["what"])

    def test_a_legacy_event(self):
        # Twisted's own log.msg lines (twistd, the HTTP access log).
        line = json.loads(event_as_json({
            "message": ("GET /ping/ 200",), "isError": 0, "system": "-", "time": 1.0,
            "log_time": 1.0, "log_level": LogLevel.info, "log_namespace": "log_legacy",
            "log_format": "{log_text}", "log_text": "GET /ping/ 200",
        }))
        self.assertEqual(line, {"time": "1970-01-01T00:00:01.000+00:00", "level": "info",
                                "namespace": "log_legacy", "message": "GET /ping/ 200"})

    def test_an_event_that_cannot_be_written(self):
        class Bad:
            def __str__(self):
                raise RuntimeError("no")

        self.log.info("x", bad=Bad())
        (record,) = self.lines()
        self.assertEqual(record["level"], "error")
        self.assertIn("cannot write an event", record["message"])
