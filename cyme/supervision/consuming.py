"""What a running worker should consume, and the calls that make it so.

L{verify} asks workers what they consume (C{active_queues}) and their
autoscale bounds (C{stats}), one message for all of them (one per broker),
then hands each answer to L{fix}, which sends the C{cancel_consumer},
C{add_consumer} and C{autoscale} calls that close the gap to L{wanted},
what an instance asks for.  A worker's own C{dq.<name>} is never
cancelled.  L{check} is the supervisor's round: every running worker on a
reachable broker each tick (changes made behind cyme's back are found on
the next tick), or only those not verified since their instance changed.

What was sent and what was verified are kept apart: a fix makes the
worker unverified until it is asked again and found right, so a change
back to what was verified before (A, B, A) is sent too.
"""

import attrs
from twisted.internet import defer

from cyme.errors import NotFound
from cyme.supervision.workers import dead_letter_queue
from cyme.supervision.workerstate import RUNNING


@attrs.frozen
class Answer:
    """What C{worker} said it consumes, and whether fixes were sent to it."""

    worker: object
    instance: object
    queues: list
    max: int | None
    min: int | None
    fixed: bool
    #: False for a prefork worker whose bounds did not come (no stats).
    complete: bool = True


def wanted(store, instance):
    """
    What C{instance} asks of its worker, comparable from one tick to the
    next: its queues as declared now, and its autoscale bounds.
    """
    queues = tuple(sorted(instance.queues))
    declarations = tuple(_declaration(store, instance.app, q) for q in queues)
    return (queues, declarations, instance.max_concurrency, instance.min_concurrency)


def _declaration(store, app, name):
    try:
        queue = store.get_queue(app, name)
    except NotFound:
        return None
    return (queue.exchange, queue.routing_key)


async def fix(control, store, log, worker, instance, live_queues, stats):
    """
    Tell C{worker} what it lacks, given what it said it consumes
    (C{live_queues}) and its C{stats}; whether anything was sent (the next
    tick checks it took).
    """
    node = [worker.node]
    # Replies come off the broker: anything but a named queue is ignored.
    live = {q["name"]: q for q in live_queues
            if isinstance(q, dict) and isinstance(q.get("name"), str)}
    dq = dead_letter_queue(worker.name)
    changed = False
    for name in sorted(set(live) - set(instance.queues) - {dq}):
        log.info("{instance}: cancel consumer {queue}", instance=worker.name, queue=name)
        await control.cancel_consumer(node, name, 1.0)
        changed = True
    for name in instance.queues:
        try:
            queue = store.get_queue(instance.app, name)
        except NotFound:
            # Deleted while the workers were asked: the instance as it is
            # now is verified on the next tick.
            changed = True
            continue
        current = live.get(name)
        if current is not None:
            exchange = (current.get("exchange") or {}).get("name")
            if (exchange, current.get("routing_key")) == (queue.exchange, queue.routing_key):
                continue
            await control.cancel_consumer(node, name, 1.0)
        log.info("{instance}: consume from {queue}", instance=worker.name, queue=name)
        await control.add_consumer(node, queue, 1.0)
        changed = True
    scaler = (stats or {}).get("autoscaler") or {}
    if instance.pool == "prefork" and stats is not None and (
        scaler.get("max"), scaler.get("min")
    ) != (instance.max_concurrency, instance.min_concurrency):
        log.info(
            "{instance}: autoscale max={max} min={min}", instance=worker.name,
            max=instance.max_concurrency, min=instance.min_concurrency,
        )
        await control.autoscale(node, instance.max_concurrency, instance.min_concurrency, 1.0)
        changed = True
    return changed


async def verify(control, store, log, todo):
    """
    Ask the workers of C{todo} (C{[(worker, instance)]}) what they consume
    and their bounds (one C{active_queues} and one C{stats} message for
    all of them) and fix what differs; an L{Answer} for each that answered.
    """
    nodes = [w.node for w, _ in todo]
    try:
        queues = await control.active_queues(nodes, 1.0)
        stats = {}
        prefork = [w.node for w, i in todo if i.pool == "prefork"]
        if prefork:
            stats = await control.stats(prefork, 1.0)
    except defer.CancelledError:
        raise
    except Exception:
        log.failure("cannot read the workers' queues")
        return []
    # Each worker's fixes go at once: one slow worker holds up no other.
    answering = [(w, i) for w, i in todo if w.node in queues]
    outcomes = await defer.DeferredList([
        defer.ensureDeferred(_answer(control, store, log, w, i, queues, stats))
        for w, i in answering
    ], consumeErrors=True)
    answers = []
    for (worker, _), (ok, result) in zip(answering, outcomes):
        if ok:
            answers.append(result)
        elif result.check(defer.CancelledError):
            raise defer.CancelledError()  # the branch is stopping
    return answers


async def _answer(control, store, log, worker, instance, queues, stats):
    live = queues[worker.node] if isinstance(queues[worker.node], list) else []
    scaler = ((stats.get(worker.node) or {}).get("autoscaler")) or {}
    try:
        changed = await fix(control, store, log, worker, instance,
                            live, stats.get(worker.node))
    except defer.CancelledError:
        raise
    except Exception:
        log.failure("{instance}: cannot fix queues", instance=worker.name)
        changed = True  # maybe some sent: not verified
    return Answer(
        worker, instance,
        [q["name"] for q in live if isinstance(q, dict) and isinstance(q.get("name"), str)],
        scaler.get("max"), scaler.get("min"), changed,
        complete=instance.pool != "prefork" or worker.node in stats,
    )


async def check(control, store, log, clock, lives, everyone):
    """
    Verify the running workers of C{lives} (lifecycles) whose broker is
    reachable: all of them if C{everyone}, else only those not verified
    as their instance is now.  Each answer is recorded on its lifecycle:
    what it consumes, and verified, or fixes sent.
    """
    desired = {i.name: i for i in store.instances()}
    todo, by_worker = [], {}
    for life in lives:
        worker = life.worker
        instance = desired.get(worker.name)
        if (worker.state != RUNNING or instance is None
                or not control.reachable(worker.node)):
            continue
        if everyone or worker.verified != wanted(store, instance):
            todo.append((worker, instance))
            by_worker[worker] = life
    if not todo:
        return
    # The process each was asked as: one started since is not answered for.
    asked = {worker: worker.pid for worker, _ in todo}
    for answer in await verify(control, store, log, todo):
        worker, life = answer.worker, by_worker[answer.worker]
        if worker.pid != asked[worker] or worker.state != RUNNING:
            continue
        bounds = (answer.max, answer.min)
        if not answer.complete and worker.live is not None:
            # Its bounds did not come: what was last seen of them stands.
            bounds = (worker.live["max"], worker.live["min"])
        life.observed(answer.queues, *bounds)
        if not (answer.complete or answer.fixed):
            continue  # neither confirmed nor told: asked again next tick
        # As the instance was when asked: a change since is verified next.
        want = wanted(store, answer.instance)
        if answer.fixed:
            if worker.sent == want and worker.sent_at is not None:
                # Told before and asked since: it did not take (or it was
                # changed back behind cyme's back meanwhile).
                log.warn("{instance} still not as asked {seconds:.1f} s after it was told",
                         instance=worker.name, seconds=clock.seconds() - worker.sent_at)
            life.sent(want)
        else:
            life.verified(want)
