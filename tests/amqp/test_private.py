"""Set-ups after a (re)connection that fail: one line when the connection
went away, a traceback and a new connection otherwise."""

from twisted.logger import Logger, LogLevel, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from cyme.amqp.errors import ChannelClosedError, ConnectionClosedError
from cyme.amqp.private import setup_failed
from cyme.amqp.url import mask_passwords
from tests.amqp.fakes import FakeConnection


class SetupFailedTests(SynchronousTestCase):
    def setUp(self):
        self.events = []
        self.log = Logger(observer=self.events.append)
        self.connection = FakeConnection()

    def test_interrupted_by_a_closing_connection_is_one_line(self):
        setup_failed(self.log, "bus", Failure(ConnectionClosedError(200, "closed by client")),
                     self.connection)
        self.assertEqual([e["log_level"] for e in self.events], [LogLevel.info])
        self.assertNotIn("log_failure", self.events[0])
        self.assertFalse(self.connection.aborted)

    def test_locked_queue_is_named(self):
        setup_failed(self.log, "bus", Failure(ChannelClosedError(405, "RESOURCE_LOCKED")),
                     self.connection, locked="branch id b1 is in use")
        self.assertEqual(self.events[0]["log_level"], LogLevel.error)
        self.assertEqual(self.events[0]["log_format"], "branch id b1 is in use")
        self.assertTrue(self.connection.aborted)

    def test_anything_else_is_a_failure_and_a_new_connection(self):
        setup_failed(self.log, "bus", Failure(ValueError("boom")), self.connection)
        self.assertIn("log_failure", self.events[0])
        self.assertTrue(self.connection.aborted)

    def test_no_broker_password_in_the_lines(self):
        what = "task publishing on amqp://u:s3cret@mq:5672/v"
        setup_failed(self.log, what, Failure(ConnectionClosedError(
            320, "lost amqp://u:s3cret@mq:5672/v")), self.connection)
        setup_failed(self.log, what, Failure(ValueError("boom")), self.connection)
        setup_failed(self.log, what, Failure(ChannelClosedError(405, "RESOURCE_LOCKED")),
                     self.connection, locked="queue of amqp://u:s3cret@mq/v in use")
        lines = [formatEvent(e) for e in self.events]
        self.assertEqual(len(lines), 3)
        for line in lines:
            self.assertNotIn("s3cret", line)
        self.assertIn("task publishing on amqp://u:**@mq:5672/v", lines[1])
        self.assertIn("amqp://u:**@mq/v in use", lines[2])


class MaskPasswordsTests(SynchronousTestCase):
    def test_every_url_password_masked(self):
        self.assertEqual(
            mask_passwords("broker amqp://guest:guest@localhost:5672// and "
                           "amqps://u:p%40ss@h/v, http://x/, amqp://u@h/"),
            "broker amqp://guest:**@localhost:5672// and amqps://u:**@h/v, http://x/, amqp://u@h/")
