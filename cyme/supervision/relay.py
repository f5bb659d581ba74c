"""Workers' output in the branch's log: at the level it was written, promptly.

Each worker writes to its own ``worker.log`` (a file, so that it outlives
the branch); L{OutputRelay} reads what every worker appended every quarter
of a second, and each L{WorkerOutput} logs it under the namespace
``cyme.worker`` as ``<instance> | <line>``:

- a Celery log line (``[2026-01-02 03:04:05,678: WARNING/MainProcess] ...``)
  at its own level, and the lines that continue it (a traceback) at the
  same level;
- a Python warning (``...py:893: SecurityWarning: ...``) as a warning;
- Celery's start-up banner (from `` -------------- name@host v5...`` to the
  first log line: the worker's configuration, queues and tasks, which the
  instance's JSON shows) not at all;
- a line saying the worker cannot reach its broker as a warning, once,
  then at most once a minute (with how many were held back), and so its
  continuation lines: Celery retries every few seconds for as long as the
  broker is away.

Control characters (terminal escape sequences) are taken out and broker
passwords masked: the lines come from task code too.
"""

import re

from twisted.application import service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, LogLevel

from cyme import logs
from cyme.amqp.url import mask_passwords
from cyme.supervision.workers import broker_failure

#: Celery's log format: C{[%(asctime)s: %(levelname)s/%(processName)s] }.
_LOG_LINE = re.compile(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}: (?P<level>[A-Z]+)/[^\]]*\] ")
#: Python's warnings module: C{<file>:<line>: <Category>: <message>}.
_WARNING = re.compile(r"\S+:\d+: \w*Warning: ")
#: The banner's first line: C{ -------------- <node> v<version> (<codename>)}.
_BANNER = re.compile(r" -{14} \S+@\S+ v\d")
#: Printed by Celery, not logged (C{worker: Warm shutdown (MainProcess)}).
_PRINTED = re.compile(r"worker: ")
_TRACEBACK = "Traceback (most recent call last):"
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

CELERY_LEVELS = {
    "DEBUG": LogLevel.debug, "INFO": LogLevel.info, "WARNING": LogLevel.warn,
    "ERROR": LogLevel.error, "CRITICAL": LogLevel.critical,
}

# What the lines to come are: relayed, part of the banner, or of a refusal
# held back.
RELAY, BANNER, HELD = "relay", "banner", "held"


#: Not a class attribute: a Logger there takes its class's name as namespace.
_worker_log = Logger(namespace="cyme.worker", observer=logs.observer)


class WorkerOutput:
    """The relay of one instance's worker output (across its restarts)."""

    def __init__(self, instance, clock, refusal_interval=60.0):
        self.instance = instance
        self._refusals = logs.Occasional(clock, refusal_interval)
        self._level = LogLevel.info
        self._mode = RELAY
        #: Lines not relayed: the banner's and those of refusals held back.
        self.dropped = 0

    def relay(self, lines):
        """Log C{lines}, what the worker wrote since the last look."""
        for line in lines:
            self._one(_CONTROL.sub("", line))

    def _one(self, line):
        held = None
        head = _LOG_LINE.match(line)
        if head is not None:
            self._level = CELERY_LEVELS.get(head.group("level"), LogLevel.info)
            self._mode = RELAY
            if broker_failure(line) is not None:
                held = self._refusals.due()
                if held is None:
                    self._mode = HELD
                else:
                    self._level = LogLevel.warn
        elif _BANNER.match(line):
            self._mode = BANNER
        elif _WARNING.match(line):
            self._level, self._mode = LogLevel.warn, RELAY
        elif _PRINTED.match(line):
            self._level, self._mode = LogLevel.info, RELAY
        elif line.startswith(_TRACEBACK) and self._mode == BANNER:
            self._level, self._mode = LogLevel.error, RELAY
        if self._mode != RELAY:
            self.dropped += 1
            return
        line = mask_passwords(line)
        if held:
            _worker_log.emit(self._level, "{instance} | {line} ({held} more like it since the "
                          "last shown)", instance=self.instance, line=line, held=held)
        else:
            _worker_log.emit(self._level, "{instance} | {line}", instance=self.instance,
                          line=line)


class OutputRelay(service.Service):
    """
    Relays every worker's new output every C{interval} seconds (the
    supervisor's tick, every few seconds, would make it that late).
    C{supervisor}'s C{workers} are the lifecycles whose C{tail} it calls.
    """

    name = "output"
    log = Logger(observer=logs.observer)

    def __init__(self, supervisor, clock, interval=0.25):
        self._supervisor = supervisor
        self._clock = clock
        self.interval = interval
        self._loop = None
        self._failures = logs.Occasional(clock, 60.0)

    def startService(self):
        super().startService()
        self._loop = LoopingCall(self.relay)
        self._loop.clock = self._clock
        self._loop.start(self.interval, now=False)

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self.relay()

    def relay(self):
        """Relay what each worker wrote since the last look."""
        for life in list(self._supervisor.workers.values()):
            try:
                life.tail()
            except Exception:  # one worker's log must not stop the others'
                if self._failures.due() is not None:  # nor fill the log 4 times a second
                    self.log.failure("cannot relay {instance}'s output",
                                     instance=life.worker.name)
