"""Drift: where what an instance asks and what its worker does differ, and since when.

L{DriftWatch.of} reads an instance's JSON as the branch describes it (what
was asked: C{is_enabled}, C{queues}, C{max_concurrency} and
C{min_concurrency}; what is: the supervisor's C{state}, C{pid} and C{live},
what the worker last said it consumes and its autoscale bounds) and lists
each difference as C{{"kind", "detail", "since"}}:

- C{worker}: an enabled instance's worker is not running (starting,
  unresponsive, failed, stopped, quarantined), or a disabled one's still is;
- C{queues}: a running worker does not consume a queue it should yet, or
  still consumes one it should not (its own C{dq.<name>} aside);
- C{autoscale}: a running prefork worker's bounds are not the asked ones.

C{since} comes from the branch's own events (L{DriftWatch.seen} listens to
its L{cyme.operations.events.EventLog}): when the worker last changed
state, and, for queues and autoscale, the later of when the instance last
asked something and when its worker came up; before any event, when the
branch started.
"""

from cyme.operations.events import INSTANCE_TYPES, WORKER_TYPES

#: The kinds of drift.
WORKER, QUEUES, AUTOSCALE = "worker", "queues", "autoscale"
#: The instance of an offline branch: nothing is known of its worker.
BRANCH = "branch"


def drift(kind, detail, since):
    return {"kind": kind, "detail": detail, "since": since}


class DriftWatch:
    """The drift of this branch's instances (see the module docstring)."""

    def __init__(self, clock):
        self.started = clock.seconds()
        self._state_since = {}
        self._asked_at = {}
        self._up_since = {}

    def seen(self, event):
        """An event of this branch (a listener of its L{EventLog})."""
        name = event.instance
        if name is None:
            return
        if event.type == "deleted":
            for times in (self._state_since, self._asked_at, self._up_since):
                times.pop(name, None)
        elif event.type in WORKER_TYPES:
            self._state_since[name] = event.time
            if event.type == "ready":
                self._up_since[name] = event.time
        elif event.type in INSTANCE_TYPES:
            self._asked_at[name] = event.time

    def of(self, instance):
        """The drift of C{instance} (its JSON with the supervisor's status)."""
        state = instance.get("state")
        if state is None:  # no supervisor: nothing is known of a worker
            return []
        name = instance["name"]
        found = []
        since = self._state_since.get(name, self.started)
        enabled = instance.get("is_enabled", True)
        if enabled and state != "running":
            error = instance.get("last_error")
            detail = f"worker {state}" + (f": {error}" if error and state != "starting" else "")
            found.append(drift(WORKER, detail, since))
        elif not enabled and instance.get("pid") is not None:
            found.append(drift(WORKER, f"disabled, yet its worker is {state}", since))
        if state != "running" or not enabled:
            return found
        since = max(self._asked_at.get(name, self.started),
                    self._up_since.get(name, self.started))
        live = instance.get("live") or {}
        asked = list(instance.get("queues") or [])
        consumed = set(live.get("queues") or []) - {f"dq.{name}"}
        missing = [q for q in asked if q not in consumed]
        extra = sorted(consumed - set(asked))
        if missing:
            found.append(drift(QUEUES, f"not consuming {', '.join(missing)} yet", since))
        if extra:
            found.append(drift(QUEUES, f"still consuming {', '.join(extra)}", since))
        bounds = (instance.get("max_concurrency"), instance.get("min_concurrency"))
        if (instance.get("pool", "prefork") == "prefork" and live.get("max") is not None
                and (live.get("max"), live.get("min")) != bounds):
            found.append(drift(
                AUTOSCALE, f"autoscale max={bounds[0]} min={bounds[1]} not applied "
                           f"(the worker has max={live['max']} min={live['min']})", since))
        return found


def offline(peer):
    """The drift of every instance of C{peer}, an offline branch."""
    return [drift(BRANCH, f"branch {peer.id} is offline: its workers are not known",
                  peer.last_seen)]
