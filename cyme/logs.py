"""cyme's log level: one filter in front of every cyme logger.

Modules log through C{Logger(observer=logs.observer)}, so ``-l/--loglevel``
quiets cyme's own chatter (per-tick pings, worker output) without touching
what Twisted or twistd log themselves.
"""

from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)

LEVELS = ("debug", "info", "warn", "error", "critical")

_predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
observer = FilteringLogObserver(globalLogPublisher, [_predicate])


def parse_level(name):
    """The L{LogLevel} called C{name} (C{warning} is C{warn}); ValueError if none."""
    name = name.strip().lower()
    if name == "warning":
        name = "warn"
    if name not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}")
    return LogLevel.levelWithName(name)


def set_level(level):
    # The default namespace's level is what the predicate reads (its
    # defaultLogLevel attribute only seeds it).
    _predicate.defaultLogLevel = level
    _predicate.setLogLevelForNamespace("", level)


def level():
    """The level cyme's lines are written from."""
    return _predicate.logLevelForNamespace("")


def enabled(level):
    """Whether a cyme line at C{level} is written: one costly to build
    (on a hot path) is not built for nothing."""
    return level >= _predicate.logLevelForNamespace("")


class Occasional:
    """
    At most one log line per C{interval} seconds about one kind of thing
    (a flood of bad messages must not flood the log): L{due} says whether
    a line may be written now, and how many were held back since the last.
    """

    def __init__(self, clock, interval=60.0):
        self._clock = clock
        self.interval = interval
        self._last = None
        self._held = 0

    def due(self):
        """The number held back since the last line if one is due now, else None."""
        now = self._clock.seconds()
        if self._last is not None and now - self._last < self.interval:
            self._held += 1
            return None
        self._last = now
        held, self._held = self._held, 0
        return held
