"""Whether this branch is ready to serve (``GET /health/``), part by part.

The branch is ready when its bus broker is connected (the cluster, the
remote control of its default broker's workers and queued URLs all go
through it), its supervisor ticks (no tick for C{late_after} intervals:
its loop is dead or the reactor starved) and its results journal writes
(its last write did not fail).  Each failing part has a reason.  An app's
broker is its own: one out of reach is listed under its app and leaves the
branch ready.  Nothing in a report is a secret: no broker URL (a password
may be in it), only what the connection attempts said.
"""

from cyme.amqp.url import mask_passwords

#: An app's broker as this branch sees it, when it holds no connection to it.
UNUSED = "unused"


class BranchHealth:
    """
    The readiness of one branch: C{pool} (a L{cyme.amqp.BrokerPool}) and
    C{bus_url} say how its brokers are; C{supervisor} (its C{last_tick},
    C{policy.interval} and C{metrics()}) and C{journal} (with C{last_error}) may be None
    (a branch without them has nothing of theirs to fail).
    """

    def __init__(self, branch_id, store, pool, bus_url, clock, supervisor=None,
                 journal=None, late_after=3):
        self.branch_id = branch_id
        self._store = store
        self._pool = pool
        self._bus_url = bus_url
        self._clock = clock
        self._supervisor = supervisor
        self._journal = journal
        #: Intervals without a tick after which the supervisor is late.
        self.late_after = late_after

    def report(self, apps=True):
        """
        C{{"ready", "branch", "failing", "instances"}} (and C{"apps"}, each
        app's broker, if C{apps}): C{failing} maps each failing part
        (C{bus}, C{supervisor}, C{journal}) to why.
        """
        failing = {}
        for part, check in (("bus", self._bus), ("supervisor", self._ticks),
                            ("journal", self._writes)):
            reason = check()
            if reason is not None:
                failing[part] = reason
        report = {"ready": not failing, "branch": self.branch_id, "failing": failing,
                  "instances": self.instances()}
        if apps:
            report["apps"] = {app.name: self._broker(app.broker.as_url())
                              for app in self._store.apps()}
        return report

    def summary(self):
        """One line for systemd's C{STATUS=}: ready or why not, and the instances."""
        report = self.report(apps=False)
        counts = report["instances"]
        running = f"{counts['running']} of {counts['total']} instances running"
        if report["ready"]:
            return f"ready; {running}"
        return f"not ready: {'; '.join(report['failing'].values())}; {running}"

    def instances(self):
        """C{{"running", "total"}}: this branch's instances, and those answering pings."""
        total = len(self._store.instances())
        if self._supervisor is None:
            return {"running": 0, "total": total}
        states = self._supervisor.metrics()["states"]
        return {"running": states.get("running", 0), "total": total}

    # The parts

    def _bus(self):
        connected = self._pool.connected(self._bus_url)
        if connected:
            return None
        error = self._pool.last_error(self._bus_url)
        if error is None:
            return "bus broker not connected yet"
        return f"bus broker unreachable: {mask_passwords(error)}"

    def _ticks(self):
        if self._supervisor is None:
            return None
        interval = self._supervisor.policy.interval
        last = self._supervisor.last_tick
        if last is None:
            return "supervisor has not ticked yet"
        since = self._clock.seconds() - last
        if since > self.late_after * interval:
            return f"supervisor tick late: none for {since:.0f} s (one every {interval:g} s)"
        return None

    def _writes(self):
        error = None if self._journal is None else self._journal.last_error
        if error is None:
            return None
        return f"journal failing: its last write failed ({mask_passwords(error)})"

    def _broker(self, url):
        connected = self._pool.connected(url)
        if connected is None:
            return {"broker": UNUSED}
        if connected:
            return {"broker": "connected"}
        error = self._pool.last_error(url)
        if error is None:
            return {"broker": "connecting"}
        return {"broker": "unreachable", "error": mask_passwords(error)}
