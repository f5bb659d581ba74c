"""cyme's log level (cyme.logs): what -l/--loglevel lets through."""

from twisted.logger import Logger, LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from cyme import logs


class LevelTests(SynchronousTestCase):
    def setUp(self):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.addCleanup(logs.set_level, LogLevel.info)
        self.log = Logger(namespace="cyme.test", observer=logs.observer)

    def said(self):
        return [e["log_format"] for e in self.events if e.get("log_namespace") == "cyme.test"]

    def test_info_by_default(self):
        self.log.debug("debug")
        self.log.info("info")
        self.assertEqual(self.said(), ["info"])

    def test_debug(self):
        logs.set_level(logs.parse_level("debug"))
        self.log.debug("debug")
        self.assertEqual(self.said(), ["debug"])

    def test_warn_quiets_info(self):
        logs.set_level(logs.parse_level("warning"))
        self.log.info("info")
        self.log.warn("warn")
        self.assertEqual(self.said(), ["warn"])
