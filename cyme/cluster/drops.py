"""The bus messages a branch dropped: counted by reason, logged at most once a minute.

Whoever can publish on the broker can send a branch garbage as fast as
the network goes; a line per message would fill the disk.  Each reason
logs its first drop at once, then at most one line a minute saying how
many more there were; the counts since the start are in the branch's
C{/branches/<id>/} (C{"bus"}) and C{/metrics}.
"""

from twisted.logger import Logger

from cyme import logs

#: Why a message was dropped, and what the line says of it.
REASONS = {
    "undecodable": "a bus message that is no envelope (not JSON, or too large)",
    "unsealed": (
        "an unsealed bus message (it claims to come from branch {sender}, bus "
        "protocol {protocol}): a branch without this cluster's key (an older "
        "cyme, or one run with --insecure-open-bus), or someone else, publishes "
        "on this cluster's bus"
    ),
    "unopened": (
        "a bus message this branch cannot open ({why}): another cluster's key, "
        "a key not copied here yet, or a forged or altered message"
    ),
    "expired": (
        "a bus message from {sender} dated {skew:+.0f} s from this branch's "
        "clock (more than {window:g} s): check both machines' clocks (NTP)"
    ),
    "replayed": "a bus message from {sender} seen before (a replay)",
    "misdirected": (
        "a bus message from {sender} sealed for another branch: a copy someone "
        "on the broker published to this one"
    ),
    "stale": (
        "a bus request from {sender} sent to this branch's previous run (addressed "
        "to it, or dated before this run started): a copy replayed since, a sender "
        "that has not heard this run's hello yet, or a clock behind this one"
    ),
    "invalid": "an invalid bus message from {sender} ({what}): {why}",
}

INTERVAL = 60.0


class Drops:
    """Counts of the messages dropped, with one log line a minute per reason."""

    log = Logger(observer=logs.observer)

    def __init__(self, clock, interval=INTERVAL):
        self.clock = clock
        self.interval = interval
        self.counts = dict.fromkeys(REASONS, 0)
        self._lines = {reason: logs.Occasional(clock, interval) for reason in REASONS}

    def drop(self, reason, **fields):
        """One message dropped for C{reason} (a key of L{REASONS})."""
        self.counts[reason] += 1
        since = self._lines[reason].due()
        if since is None:
            return
        defaults = {"sender": None, "protocol": None, "why": "", "what": "",
                    "skew": 0.0, "window": 60.0}
        self.log.warn(
            "dropped " + REASONS[reason] + "{more}", reason=reason,
            more=f" ({since} more since the last such line)" if since else "",
            **{**defaults, **fields},
        )

    def figures(self):
        """The counts by reason, since the start."""
        return dict(self.counts)
