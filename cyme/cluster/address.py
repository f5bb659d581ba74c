"""Who a bus envelope is for, said inside the seal: a copy sent elsewhere is dropped.

The seal (L{cyme.cluster.seal}) proves who sent an envelope and when, and
each branch drops an id it has already opened; but each branch remembers
only its own ids.  A broker user without the key can still bind a queue to
the direct exchange under one branch's id, copy what is sent to it, and
publish the copy to another branch within the window.  So every envelope
names its recipient in its sealed part (C{"to"}: a branch id for a direct
send, C{"*"} for a broadcast), and a branch drops as C{misdirected} what
is for neither it nor every branch.

A branch also forgets the ids it opened when it restarts, and never saw
what was sent while it was away from the bus (its queue goes with its
connection): a request copied on its way to it then could be replayed to
it once after.  So a request to one branch also says the incarnation of
that branch as its sender knows it (C{"to_inc"}), and a branch drops as
C{stale} a request addressed to an incarnation older than the one it said
hello with at its last (re)connection (L{cyme.cluster.membership}:
milliseconds since the epoch at each start, then counted up, so all it
said since is at least that; only this branch's own clock counts, never
another machine's).  A sender that has not heard that hello yet (it is
broadcast at once) is answered a 503 and told the incarnation.

A request to every branch names no incarnation: a branch refuses one
dated (by its sender's clock, inside the seal) before its last
(re)connection.  A sender whose clock is behind this branch's by a few
seconds has its broadcasts refused for those first seconds: a query then
names this branch as not answering, and a merge missed is pulled with the
next probe's digest (L{cyme.cluster.replication}).  Membership messages
and replies need no such check: replies are matched to the tickets of
live requests, and membership goes by incarnations.
"""

from .seal import Unopened

#: The recipient of a broadcast.
EVERY = "*"

#: Why a request to an earlier run of its recipient is dropped (and said in
#: the 503 its sender gets, which asks it once more: L{cyme.cluster.bus}).
STALE = "stale"


def address(envelope, to, incarnation):
    """
    C{envelope} for branch C{to} (None: every branch); a request to one
    branch also says C{incarnation}, that branch's incarnation as this one
    knows it (None: never heard of, which it refuses).
    """
    addressed = {**envelope, "to": EVERY if to is None else to}
    if to is not None and envelope.get("type") == "request":
        addressed["to_inc"] = incarnation if incarnation is not None else 0
    return addressed


def check(envelope, branch_id, hello_incarnation, connected_since):
    """
    Raise L{Unopened} unless C{envelope} (of this protocol) is for branch
    C{branch_id}, which said hello at incarnation C{hello_incarnation} when
    it last (re)connected to the bus, at C{connected_since} (seconds, its
    clock).
    """
    to, sender = envelope.get("to"), envelope.get("from")
    if to != EVERY and to != branch_id:
        raise Unopened("misdirected", sender=sender)
    if envelope.get("type") != "request":
        return
    if to == branch_id:
        incarnation = envelope.get("to_inc")
        if type(incarnation) is not int or incarnation < hello_incarnation:
            raise Unopened(STALE, sender=sender)
    else:
        at = envelope.get("at")  # the seal's date (an open bus has none)
        if (isinstance(at, (int, float)) and not isinstance(at, bool)
                and at < connected_since):
            raise Unopened(STALE, sender=sender)
