"""The cluster: the bus between branches and what travels on it.

Owns the bus (presence by heartbeat, broadcast with scatter-gather,
direct calls), its AMQP and in-memory transports, replication of apps and
queue declarations, and the placement of new instances.

May import: ``cyme.state``, ``cyme.amqp``, ``cyme.errors``, ``cyme.logs``.
"""
