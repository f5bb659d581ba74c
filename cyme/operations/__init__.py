"""The operations of the API: what a route asks, done on a branch or a cluster.

Owns ``IOperations`` and its implementations: the local one (records in,
JSON out, each name and app checked once) and the cluster one, which runs
each operation where its record lives (over the bus; ``calls``: the
arguments other branches send, checked).

May import: ``cyme.cluster``, ``cyme.supervision``, ``cyme.tasks``,
``cyme.state``, ``cyme.errors``, ``cyme.logs``.  Never ``cyme.api``.
"""
