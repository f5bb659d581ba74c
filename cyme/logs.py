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
    _predicate.defaultLogLevel = level
