"""``twistd cyme-branch``: the branch's command line and its service tree.

``Options`` parses the original Cyme's command line (``cyme-branch :8001 -i branch1
-D cyme/branch1/``, options before or after the address) and opens the root
directory, so that every start-up problem is a one-line usage error rather
than a traceback; ``makeService`` assembles the services.
"""

import contextlib
import getopt
import os
import re
import socket
import sys

from twisted.application import service, strports
from twisted.internet.error import CannotListenError
from twisted.logger import Logger, LogLevel
from twisted.python import usage

from cyme import __version__, logs
from cyme.cluster.transport import AMQPBusTransport
from cyme.operations.cluster import build_cluster
from cyme.amqp import BrokerPool
from cyme.supervision.control import ControlRouter
from cyme.errors import BadRequest, StartupError
from cyme.api.http import make_site
from cyme.tasks.journal import DiskThread, ResultJournal
from cyme.supervision.launcher import ExecLauncher, ForkServerLauncher
from cyme.state.models import (
    DEFAULT_BROKER_URL, MAX_CONCURRENCY, Broker, check_int, check_name, check_seconds,
    reserved_apps,
)
from cyme.state.workeroptions import WorkerPolicy
from cyme.state.rootdir import RootDir
from cyme.tasks.results import TaskService
from cyme.state.store import JSONFileStore
from cyme.supervision.supervisor import Supervisor
from cyme.supervision.workerstate import Policy
from cyme.operations.local import LocalOperations
from cyme.api.routes import BranchAPI

# ``[host]:port``: the host part, when present, ends with a colon, so that
# ``8001`` is a port and never host ``800`` with port ``1``.
_ADDRESS = re.compile(
    r"\A(?:(?:\[(?P<ip6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9._-]*)):)?"
    r"(?P<port>\d{1,5})\Z"
)


def address_to_endpoint(address):
    """
    The server endpoint string for the original Cyme's C{[address]:port}
    argument.

    C{:8001} listens on every interface, C{localhost:8001} or
    C{[::1]:8001} on one.
    """
    match = _ADDRESS.match(address.strip())
    if not match:
        raise usage.UsageError(f"address must be [host]:port, not {address!r}")
    port = int(match.group("port"))
    if not 0 <= port <= 65535:
        raise usage.UsageError(f"port must be 0-65535, not {port}")
    if match.group("ip6"):
        interface = match.group("ip6").replace(":", "\\:")
        return f"tcp6:{port}:interface={interface}"
    if match.group("host"):
        return f"tcp:{port}:interface={match.group('host')}"
    return f"tcp:{port}"


# The workers log at the branch's level, in Celery's words.
CELERY_LEVELS = {
    "debug": "DEBUG", "info": "INFO", "warn": "WARNING", "error": "ERROR",
    "critical": "CRITICAL",
}


class StartupFailed(usage.UsageError):
    """
    The command line is fine but the branch cannot start here (its root
    directory or state file): the message says why, and no usage text is
    needed.
    """


class Options(usage.Options):
    synopsis = "[options] [[address]:port]"
    longdesc = (
        "Run a cyme branch: the HTTP API and supervisor of the Celery worker "
        "instances of this machine. The address defaults to :8000 (every "
        "interface, port 8000)."
    )

    optFlags = [
        ["without-http", None, "Do not serve the HTTP API."],
        ["without-fork-server", None,
         "Start every worker as a new Python process instead of forking it "
         "from the fork server (which has Celery imported already)."],
        ["stop-workers-on-exit", None,
         "Stop the worker instances when the branch stops (by default they "
         "keep running and the next start adopts them)."],
    ]
    optParameters = [
        ["id", "i", None,
         "Id of this branch (default: generated at the first start and kept "
         "in the root directory)."],
        ["instance-dir", "D", "instances/",
         "Root directory of the branch: its state, and the logs and pid files "
         "of its worker instances. Created if missing."],
        ["broker", "b", DEFAULT_BROKER_URL,
         "Broker URL of the branch bus, and default broker of new apps."],
        ["http", None, None,
         "Listen on this Twisted endpoint instead of the address "
         "(tcp:8001, ssl:8443:privateKey=key.pem, unix:/run/cyme.sock, "
         "systemd:domain=INET:index=0)."],
        ["sup-interval", None, 5.0,
         "Seconds between two supervisor ticks."],
        ["loglevel", "l", "info",
         "Lowest level of cyme's own log messages: debug, info, warn, error."],
        ["kill-timeout", None, 10.0,
         "Seconds a worker gets to finish its tasks after TERM before KILL."],
        ["ready-timeout", None, 10.0,
         "Seconds creating an instance waits for its worker's first pong."],
        ["cluster", None, "cyme",
         "Name of the cluster: the branches of one cluster share it and the "
         "broker; other clusters may use the same broker under other names."],
        ["result-expires", None, 86400.0,
         "Seconds the results of queued URLs are kept (default: one day)."],
        ["url", None, None,
         "The URL other branches and clients reach this branch's API at "
         "(default: from the address, with this machine's address when it "
         "listens on every interface)."],
        ["wait-after-broker-revived", None, 30.0,
         "Seconds workers get to reconnect after the broker came back before "
         "they are judged unresponsive."],
        ["max-concurrency", None, None,
         "Highest max_concurrency of an instance on this branch (default: 4 "
         "times the number of CPUs)."],
        ["max-instances", None, 100,
         "Most instances this branch runs; placement skips a branch at its limit."],
    ]

    def __init__(self):
        super().__init__()
        self["address"] = ":8000"
        self["task-modules"] = []
        self["accept-contents"] = []
        self._startup_failed = False

    def getUsage(self, width=None):
        # twistd prints the usage text above every UsageError; a start-up
        # failure is not a usage mistake, so its one-line message stays alone.
        if self._startup_failed:
            return ""
        return super().getUsage(width)

    def parseOptions(self, options=None):
        # usage.Options parses like getopt, taking every option after the
        # first positional argument as positional; the original Cyme writes
        # options after the address, so parse the GNU way and hand back a
        # normal order.
        if options is None:
            options = sys.argv[1:]
        try:
            opts, args = getopt.gnu_getopt(options, self.shortOpt, self.longOpt)
        except getopt.GetoptError as e:
            raise usage.UsageError(str(e)) from None
        ordered = []
        for opt, value in opts:
            takes_value = (
                opt[2:] + "=" in self.longOpt
                if opt.startswith("--")
                else opt[1:] + ":" in self.shortOpt
            )
            ordered.extend([opt, value] if takes_value else [opt])
        return super().parseOptions(ordered + ["--"] + args)

    def opt_task_module(self, pattern):
        """
        Task modules an app may import (its imports), as a pattern such as
        'myproject.tasks*'; repeatable (default: none, workers run cyme's
        own tasks only).
        """
        self["task-modules"].append(pattern)

    def opt_accept_content(self, serializers):
        """
        Serializers besides json an app's workers may accept (pickle, yaml,
        msgpack); repeatable or comma-separated.
        """
        self["accept-contents"].append(serializers)

    def opt_version(self):
        """Print cyme's version and exit."""
        print(f"cyme {__version__}")
        raise SystemExit(0)

    def parseArgs(self, address=None):
        if address is not None:
            self["address"] = address

    def postOptions(self):
        self["sup-interval"] = _seconds(self["sup-interval"], "--sup-interval")
        for name in ("kill-timeout", "ready-timeout", "wait-after-broker-revived",
                     "result-expires"):
            self[name] = _seconds(self[name], "--" + name, zero=True)
        try:
            self["log-level"] = logs.parse_level(self["loglevel"])
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        self["endpoint"] = self["http"] or address_to_endpoint(self["address"])
        check_endpoint(self["endpoint"])
        if self["url"] is None:
            self["url"] = advertised_url(self["endpoint"])
        self["worker-policy"] = _worker_policy(self)
        try:
            check_name(self["cluster"], "--cluster")
            self["default-broker"] = Broker.from_url(self["broker"], "--broker")
            if self["id"] is not None:
                check_name(self["id"], "--id")
        except BadRequest as e:
            raise usage.UsageError(e.message) from None
        root = None
        try:
            root = RootDir.open(self["instance-dir"])
            self["store"] = JSONFileStore(root.state_path)
            self["branch-id"] = self["id"] or root.branch_id()
        except StartupError as e:
            # Release the lock: the branch does not start, and in a
            # long-lived process (tests) the root would stay locked.
            if root is not None:
                root.close()
            self._startup_failed = True
            raise StartupFailed(str(e)) from None
        self["root"] = root


def _worker_policy(options):
    """The L{WorkerPolicy} the options give, else a usage error naming one."""
    counts = {}
    for name in ("max-concurrency", "max-instances"):
        if options[name] is not None:
            try:
                counts[name] = check_int(options[name], "--" + name, 1, MAX_CONCURRENCY)
            except BadRequest as e:
                raise usage.UsageError(f"{e.message}, not {options[name]!r}") from None
    try:
        return WorkerPolicy.from_options(
            options["task-modules"], options["accept-contents"],
            counts.get("max-concurrency"), counts["max-instances"],
        )
    except BadRequest as e:
        raise usage.UsageError(e.message) from None


def _seconds(value, option, zero=False):
    """C{value} as seconds (L{check_seconds}), else a usage error naming it."""
    try:
        return check_seconds(value, option, zero=zero)
    except BadRequest as e:
        raise usage.UsageError(f"{e.message}, not {value!r}") from None


def _interface_addresses():
    """The IPv4 addresses of this machine's interfaces (Linux)."""
    import fcntl
    import struct

    found = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(
                    s.fileno(), 0x8915,  # SIOCGIFADDR
                    struct.pack("256s", name.encode("utf-8")[:15]),
                )
            except OSError:
                continue
            found.append(socket.inet_ntoa(packed[20:24]))
    return found


def _machine_address():
    """This machine's first non-loopback IPv4 address, else its name."""
    candidates = []
    try:
        candidates += [a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)]
    except OSError:
        pass
    try:
        candidates += _interface_addresses()
    except (OSError, ImportError):
        pass
    for address in candidates:
        if not address.startswith("127."):
            return address
    return socket.gethostname()


def advertised_url(endpoint):
    """
    The URL of this branch's API for the others, from its endpoint: the
    interface it listens on, or this machine's address (never 127.0.0.1)
    when it listens on all of them.
    """
    parts = [p.replace("\\:", ":") for p in re.split(r"(?<!\\):", endpoint)]
    kind = parts[0]
    if kind not in ("tcp", "tcp6", "ssl") or len(parts) < 2:
        return None
    fields = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    port = fields.get("port") or next((p for p in parts[1:] if p.isdigit()), None)
    host = fields.get("interface", "")
    if host in ("", "0.0.0.0", "::"):
        host = _machine_address()
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if kind == "ssl" else "http"
    return f"{scheme}://{host}:{port}/"


def check_endpoint(description):
    """Raise a UsageError unless C{description} is a server endpoint string."""
    from twisted.internet import endpoints, reactor

    try:
        endpoints.serverFromString(reactor, description)
    except Exception as e:
        raise usage.UsageError(
            f"invalid endpoint {description!r}: {e}"
        ) from None


class BranchService(service.MultiService):
    """The branch: its root directory held for as long as it runs."""

    log = Logger(observer=logs.observer)

    def __init__(self, root, branch_id):
        super().__init__()
        self.root = root
        self.branch_id = branch_id

    def startService(self):
        self.root.record_pid()
        self.log.info(
            "cyme branch {branch} (cyme {version}) in {root}",
            branch=self.branch_id, version=__version__, root=self.root.path,
        )
        with _exit_if_cannot_listen(self.log):
            super().startService()

    def privilegedStartService(self):
        # twistd listens here, before it drops privileges.
        with _exit_if_cannot_listen(self.log):
            super().privilegedStartService()


@contextlib.contextmanager
def _exit_if_cannot_listen(log):
    """
    A port in use is an operator's mistake, not a bug: one line and a
    non-zero exit rather than twistd's traceback.
    """
    try:
        yield
    except CannotListenError as e:
        log.critical("cyme branch cannot start: {error}", error=e)
        raise SystemExit(1) from None


def makeService(options):
    from twisted.internet import reactor

    logs.set_level(options["log-level"])
    # Whatever the branch (its journal, made below, included) and its workers
    # create is theirs alone: the files hold passwords and task arguments.
    os.umask(0o077)
    for name in reserved_apps(options["store"].apps()):
        BranchService.log.warn("app {app} has a name reserved for the API's routes: "
                               "recreate it under another name (README: Security)", app=name)
    branch = BranchService(options["root"], options["branch-id"])
    # One connection per broker, for the remote control, the bus and the
    # task service; added first, so stopped last.
    pool = BrokerPool(reactor)
    pool.setServiceParent(branch)
    control = ControlRouter(pool, options["default-broker"].as_url(), reactor)
    if options["without-fork-server"]:
        launcher = ExecLauncher(reactor)
    else:
        # Added before the supervisor, so stopped after it.
        launcher = ForkServerLauncher(reactor)
        launcher.setServiceParent(branch)
    supervisor = Supervisor(
        launcher=launcher,
        store=options["store"],
        control=control,
        reactor=reactor,
        instances_dir=options["root"].instances_path,
        policy=Policy(
            interval=options["sup-interval"],
            kill_timeout=options["kill-timeout"],
            wait_after_broker_revived=options["wait-after-broker-revived"],
            stop_workers_on_exit=options["stop-workers-on-exit"],
        ),
        worker_loglevel=CELERY_LEVELS[options["log-level"].name],
        worker_policy=options["worker-policy"],
    )
    supervisor.setServiceParent(branch)
    # The supervisor converges on every change of the desired state.
    options["store"].subscribe(supervisor.reconcile)
    disk = DiskThread(reactor)
    journal = ResultJournal(
        os.path.join(options["root"].path, "results.jsonl"), reactor,
        retention=options["result-expires"], run=disk,
    )
    tasks = TaskService(
        pool, journal, options["branch-id"], reactor, options["store"], disk=disk
    )
    tasks.setServiceParent(branch)
    options["store"].subscribe(tasks.release_unused)
    local = LocalOperations(
        options["store"],
        branch_id=options["branch-id"],
        default_broker=options["default-broker"],
        supervisor=supervisor,
        control=control,
        tasks=tasks,
        clock=reactor,
        url=options["url"],
        ready_timeout=options["ready-timeout"],
        worker_policy=options["worker-policy"],
    )
    cluster, bus = build_cluster(
        local,
        AMQPBusTransport(pool, options["default-broker"].as_url(),
                         options["branch-id"], options["cluster"]),
        reactor,
        ready_timeout=options["ready-timeout"],
    )
    bus.setServiceParent(branch)
    if not options["without-http"]:
        # An access line per request is info; above it, none is written.
        access_log = options["log-level"] <= LogLevel.info
        site = make_site(BranchAPI(cluster).resource(), access_log=access_log)
        http = strports.service(options["endpoint"], site, reactor=reactor)
        http.setName("http")
        http.setServiceParent(branch)
    return branch
