"""Where a new instance goes, and which branch decides it.

A new instance goes to the least loaded live branch (fewest instances, ties
at random) unless the request names one, among the branches whose limits
(their ``--max-instances`` and ``--max-concurrency``, which their
heartbeats carry) leave room for it; when none does, the create is a 409
naming the limits.  Whether a name is new is decided
by one branch, the same for every branch that asks: the live branch with
the highest hash of the name and its id (rendezvous hashing), so that
creates of one name sent to several branches at once are decided in one
place, in turn.
"""

import hashlib
import random

import attrs

from cyme.cluster.presence import full
from cyme.errors import BadRequest, Conflict, NotFound
from cyme.state.models import check_int


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
    """
    Placement over the live branches of C{bus}, this one counted from
    C{store} and held to its own C{limits} (L{cyme.cluster.presence.full}).
    """

    bus: object
    store: object
    rng: object = random.random
    limits: dict = attrs.field(factory=dict, kw_only=True)

    def coordinator(self, name):
        return coordinator(name, self.bus.live_ids())

    def target(self, branch=None, max_concurrency=None):
        """
        The branch a new instance (of C{max_concurrency}, as the request
        gave it) goes to; C{branch} if given (404 if not live).  A 409 if
        the named branch, or every live one, is at a limit.
        """
        try:
            wanted = check_int(1 if max_concurrency in (None, "") else max_concurrency,
                               "max_concurrency", 1)
        except BadRequest:
            wanted = 1  # the branch it goes to says what is wrong with it
        loads, limited = {}, {}
        for peer in self.bus.live_peers():
            loads[peer.id] = len(peer.instances)
            limited[peer.id] = peer.room(wanted)
        here = self.bus.branch_id
        loads[here] = len(self.store.instances())
        limited[here] = full(self.limits, loads[here], wanted)
        if branch not in (None, ""):
            if branch not in loads:
                raise NotFound("branch", branch)
            if limited[branch] is not None:
                raise _no_room({branch: limited[branch]})
            return branch
        room = {b: n for b, n in loads.items() if limited[b] is None}
        if not room:
            raise _no_room(limited)
        return least_loaded(room, self.rng)

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


def _no_room(limited):
    """The 409 of a create no live branch (of C{limited}: id -> limit) can take."""
    names = sorted(set(limited.values()))
    said = ", ".join(f"{b} ({limit})" for b, limit in sorted(limited.items()))
    return Conflict(
        f"no live branch can take the instance: each is at its limit: {said}",
        limit=names[0] if len(names) == 1 else names, branches=dict(limited),
    )
