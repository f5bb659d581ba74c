"""Where a new instance goes, and which branch decides it.

A new instance goes to the least loaded live branch (fewest instances, ties
at random) unless the request names one.  Whether a name is new is decided
by one branch, the same for every branch that asks: the live branch with
the highest hash of the name and its id (rendezvous hashing), so that
creates of one name sent to several branches at once are decided in one
place, in turn.
"""

import hashlib
import random

import attrs

from cyme.errors import NotFound


def coordinator(name, live_ids):
    """The branch of C{live_ids} that decides whether instance C{name} is new."""
    return max(
        live_ids, key=lambda b: hashlib.sha256(f"{name}\0{b}".encode("utf-8")).digest()
    )


def least_loaded(loads, rng=random.random):
    """The branch of C{loads} (branch id -> instance count) with the fewest."""
    fewest = min(loads.values())
    candidates = sorted(b for b, n in loads.items() if n == fewest)
    return candidates[int(rng() * len(candidates)) % len(candidates)]


@attrs.define
class Placement:
    """Placement over the live branches of C{bus}, this one counted from C{store}."""

    bus: object
    store: object
    rng: object = random.random

    def coordinator(self, name):
        return coordinator(name, self.bus.live_ids())

    def target(self, branch=None):
        """The branch a new instance goes to; C{branch} if given (404 if not live)."""
        loads = {p.id: len(p.instances) for p in self.bus.live_peers()}
        loads[self.bus.branch_id] = len(self.store.instances())
        if branch not in (None, ""):
            if branch not in loads:
                raise NotFound("branch", branch)
            return branch
        return least_loaded(loads, self.rng)

    def reserve(self, branch_id, app, name):
        """
        Count instance C{name} on peer C{branch_id} from now on, not once
        created (its worker may take a while) nor at the peer's next beat,
        so that placements made meanwhile see it; returns the callable
        that takes it back (a create that failed).
        """
        peer = self.bus.peer(branch_id)
        entry = [app, name]
        if peer is None or entry in peer.instances:
            return _nothing
        peer.instances.append(entry)

        def release():
            if entry in peer.instances:
                peer.instances.remove(entry)

        return release


def _nothing():
    pass
