"""What a running worker should consume, and the calls that make it so.

L{verify} asks workers what they consume (C{active_queues}) and their
autoscale bounds (C{stats}), one message for all of them, then hands each
answer to L{fix}, which sends the C{cancel_consumer}, C{add_consumer} and
C{autoscale} calls that close the gap to L{wanted}, what an instance asks
for.  A worker's own C{dq.<name>} is never cancelled.
"""

from twisted.internet import defer

from cyme.errors import NotFound
from cyme.supervision.workers import dead_letter_queue


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
    live = {q.get("name"): q for q in live_queues if isinstance(q, dict)}
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
    all of them) and fix what differs; the pairs found as they should be.
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
    right = []
    for worker, instance in todo:
        if worker.node not in queues:
            continue
        try:
            changed = await fix(control, store, log, worker, instance,
                                queues[worker.node], stats.get(worker.node))
        except defer.CancelledError:
            raise  # the branch is stopping
        except Exception:
            log.failure("{instance}: cannot fix queues", instance=worker.name)
            continue
        if not changed:
            right.append((worker, instance))
    return right
