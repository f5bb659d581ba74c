"""The cluster: the bus between branches and what travels on it.

- L{cyme.cluster.bus}: the L{Bus} service (presence, calls to one branch,
  broadcasts gathered by ticket) and the envelope format;
  L{cyme.cluster.interfaces}: L{IBusTransport}, what carries its bytes;
  L{cyme.cluster.address}: who an envelope is for (misdirected, stale).
- L{cyme.cluster.seal}: envelopes sealed with the cluster key (or an open
  bus), L{cyme.cluster.keys}: the key files; L{cyme.cluster.messages}: what
  an envelope may hold, checked before use; L{cyme.cluster.drops}: what was
  dropped, counted and logged once a minute.
- L{cyme.cluster.presence}: the peers as their records describe them
  (alive, suspect, dead, left), and what this branch's own record says;
  L{cyme.cluster.membership}: the failure detector and its gossip (SWIM).
- L{cyme.cluster.transport}: the bus over RabbitMQ, on the branch's broker
  pool; L{cyme.cluster.memory}: the bus in one process (a fake for tests
  and simulations), L{cyme.cluster.faults}: the losses, delays and
  partitions of a simulated network, L{cyme.cluster.virtualtime}: a clock
  for hundreds of simulated branches.
- L{cyme.cluster.replication}: apps and queue declarations on every branch
  (replicate a write, merge, catch up by replica digest).
- L{cyme.cluster.placement}: where a new instance goes and which branch
  decides whether a name is new; L{cyme.cluster.rounds}: one broadcast
  shared by concurrent listings.

Routing the API's operations to the branch that owns the record is
L{cyme.operations.cluster}'s, above this package.

May import: ``cyme.state``, ``cyme.amqp``, ``cyme.gather``,
``cyme.listeners``, ``cyme.errors``, ``cyme.logs``.
"""
