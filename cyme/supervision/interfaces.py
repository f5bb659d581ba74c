"""The interfaces between the supervisor and what it drives.

``ILauncher`` starts worker processes (exec'd, or forked by the fork
server); ``IControl`` is Celery's remote control as the supervisor needs it (the
real one speaks the pidbox protocol over txAMQP, the fake in
``cyme.supervision.fakes`` simulates workers); ``IProcessTable`` is the operating
system's view of processes that are not this branch's children (workers
adopted after a branch restart).
"""

from zope.interface import Attribute, Interface


class IControl(Interface):
    """
    Celery remote control commands to worker nodes (``name@host``).

    Every call takes a list of nodes and sends one message for all of them;
    it gathers replies until every node answered or C{timeout} seconds
    passed, and fires with C{{node: reply}} for the nodes that answered
    (a node that did not answer is simply absent).
    """

    connected = Attribute(
        "True while the connection to the branch's own broker is up "
        "(another broker's: L{reachable})."
    )

    def add_connection_listener(listener):
        """
        Call C{listener(connected: bool, broker_url)} when the connection to
        a broker is lost or back.
        """

    def register(node, broker_url):
        """Send C{node}'s commands to the broker at C{broker_url} from now on."""

    def unregister(node):
        """
        C{node} is gone: forget it; the connection to a broker no node uses
        any more is closed.
        """

    def broker(node):
        """The URL of the broker C{node}'s commands go to."""

    def reachable(node):
        """True while the connection to C{node}'s broker is up."""

    def ping(nodes, timeout):
        """C{{node: {"ok": "pong"}}} for the nodes that answered."""

    def stats(nodes, timeout):
        """C{{node: stats dict}} (keys autoscaler, pool, pid, total, ...)."""

    def active_queues(nodes, timeout):
        """C{{node: [queue dicts with name, exchange, routing_key]}}."""

    def add_consumer(nodes, queue, timeout):
        """Start consuming the L{cyme.state.models.Queue} C{queue}."""

    def cancel_consumer(nodes, queue_name, timeout):
        """Stop consuming the queue called C{queue_name}."""

    def autoscale(nodes, max_concurrency, min_concurrency, timeout):
        """Set the pool's autoscale bounds."""

    def shutdown(nodes):
        """Ask for a warm shutdown; workers never answer it."""


class IProcessTable(Interface):
    """Processes seen through their pid (for workers that are not children)."""

    def is_worker(pid, node):
        """True if C{pid} is alive and is the Celery worker of C{node}."""

    def alive(pid):
        """True if C{pid} still runs."""

    def signal(pid, signum):
        """Send C{signum} to C{pid}; nothing if it is gone already."""


class ILauncher(Interface):
    """How the supervisor starts a worker process."""

    def spawn(protocol, argv, env, path, log_path):
        """
        Start C{argv} in C{path} with C{env}, its output appended to
        C{log_path}; the process transport (with its C{pid}) at once, and
        C{protocol.processEnded} when the worker ends.
        """

    def add_orphan_listener(listener):
        """
        Call C{listener(pid)} when worker C{pid} stops being a child whose
        end C{processEnded} reports (its parent, the fork server, ended).
        """

    def can_start(argv):
        """
        Whether to start a worker of C{argv} now: False while waiting is
        faster (the fork server forks a standby for it); the ready
        listeners are called once the workers held back can start.
        """

    def add_ready_listener(listener):
        """Call C{listener()} when workers L{can_start} held back can start."""

    def renew():
        """
        Start every later worker from the code on disk now (a fork server
        is replaced by a new one); a Deferred that fires with True once the
        launcher is ready to start them fast, False if there was nothing to
        replace.  Running workers are left alone.
        """
