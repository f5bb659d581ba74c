"""The branch's command line: ``cyme-branch [address]:port [options]``.

L{Options} parses the original Cyme's command line (``cyme-branch :8001 -i
branch1 -D ~/cyme/branch1/``, options before or after the address) and
opens the root directory, so that every start-up problem is a one-line
usage error rather than a traceback; L{cyme.tap.makeService} builds the
branch from what it parsed.
"""

import getopt
import os
import sys

from twisted.python import usage

from cyme import __version__, jsonlog, logs
from cyme.addresses import address_to_endpoint, advertised_url, check_endpoint
from cyme.amqp import BrokerTLS
from cyme.cluster import keys
from cyme.errors import BadRequest, StartupError
from cyme.state.models import DEFAULT_BROKER_URL, Broker, check_name, check_seconds
from cyme.state.rootdir import RootDir
from cyme.state.store import JSONFileStore
from cyme.state.workeroptions import WorkerPolicy

#: What a bad option value prints under its one-line message.
HELP_HINT = "Try 'cyme-branch --help' for the options."


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
        ["no-trust-loopback", None,
         "Require a token from callers on this machine too (by default a "
         "request from a loopback address or on a unix: endpoint has every "
         "scope)."],
        ["webhook-deny-private", None,
         "Queued URLs may not reach private addresses either (10/8, 172.16/12, "
         "192.168/16, 100.64/10, fc00::/7), besides loopback, link-local, multicast "
         "and unspecified ones, unless --webhook-allow and an app's allowed_hosts open them."],
        ["insecure-open-bus", None,
         "Run the bus between branches unsealed, without a cluster key: anyone "
         "who can publish on its exchanges can steer the cluster."],
    ]
    optParameters = [
        ["id", "i", None,
         "Id of this branch (default: generated at the first start and kept "
         "in the root directory)."],
        ["instance-dir", "D", "instances/",
         "Root directory of the branch: its state, and the logs and pid files "
         "of its worker instances. Created if missing."],
        ["broker", "b", None,
         "Broker URL of the branch bus, and default broker of new apps "
         "(default: $CYME_BROKER_URL, else " + DEFAULT_BROKER_URL + "; the "
         "environment keeps its password out of ps; amqps:// for TLS)."],
        ["broker-ca", None, None,
         "PEM file of the CA certificates that amqps:// brokers' certificates "
         "must be signed by, for the branch and its workers (default: the "
         "system's CAs)."],
        ["http", None, None,
         "Listen on this Twisted endpoint instead of the address "
         "(tcp:8001, ssl:8443:privateKey=key.pem, unix:/run/cyme.sock, "
         "systemd:domain=INET:index=0)."],
        ["sup-interval", None, 5.0,
         "Seconds between two supervisor ticks."],
        ["loglevel", "l", "info",
         "Lowest level of cyme's own log messages: debug, info, warn, error."],
        ["log-format", None, "text",
         "text (twistd's), or json: one JSON object a line on standard output "
         "(time, level, namespace, message and the event's fields), for "
         "journald and log shippers."],
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
        ["cluster-key-file", None, None,
         "The cluster key: every bus message is sealed with it, and only branches "
         "holding it form the cluster (default: $XDG_CONFIG_HOME/cyme/cluster.key, "
         "else ~/.cyme/cluster.key, made at the first start if missing)."],
        ["previous-cluster-key-file", None, None,
         "A key this branch still accepts on the bus but no longer seals with "
         "(while a new cluster key is rolled out)."],
        ["bus-broker", None, None,
         "Broker URL of the bus between branches (default: $CYME_BUS_BROKER_URL, "
         "else the broker of --broker)."],
        ["max-wait", None, 300.0,
         "Longest ?timeout= of a task's /wait/ long-poll, in seconds (the default "
         "wait is 30 s, or this when shorter)."],
        ["max-stream", None, 3600.0,
         "Seconds an event stream (/events/) lasts at most before the branch ends "
         "it; clients resume with Last-Event-ID."],
    ]

    def __init__(self):
        super().__init__()
        self["address"] = ":8000"
        self["task-modules"] = []
        self["accept-contents"] = []
        self["webhook-allows"] = []
        self._startup_failed = False
        self._usage_failed = False

    def getUsage(self, width=None):
        # twistd prints the usage text above every UsageError: fifty lines
        # of options would bury the one line that says what is wrong.  A
        # start-up failure is not a usage mistake, so its message stays
        # alone; a bad option gets a pointer to --help.
        if self._startup_failed:
            return ""
        if self._usage_failed:
            return HELP_HINT
        return super().getUsage(width)

    def parseOptions(self, options=None):
        # usage.Options parses like getopt, taking every option after the
        # first positional argument as positional; the original Cyme writes
        # options after the address, so parse the GNU way and hand back a
        # normal order.
        if options is None:
            options = sys.argv[1:]
        try:
            self._parse(options)
        except StartupFailed:
            raise
        except usage.UsageError:
            self._usage_failed = True
            raise

    def _parse(self, options):
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

    def opt_webhook_allow(self, entry):
        """Where queued URLs may reach in a range refused by default (loopback...) if an
        app's allowed_hosts lists it too: address, network or name[:port]; repeatable."""
        self["webhook-allows"].append(entry)

    def opt_version(self):
        """Print cyme's version and exit."""
        print(f"cyme {__version__}")
        raise SystemExit(0)

    def parseArgs(self, address=None):
        if address is not None:
            self["address"] = address

    def postOptions(self):
        for name in ("sup-interval", "max-wait", "max-stream"):
            self[name] = _seconds(self[name], "--" + name)
        for name in ("kill-timeout", "ready-timeout", "wait-after-broker-revived",
                     "result-expires"):
            self[name] = _seconds(self[name], "--" + name, zero=True)
        try:
            self["log-level"] = logs.parse_level(self["loglevel"])
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        if self["log-format"] not in jsonlog.FORMATS:
            raise usage.UsageError(
                f"--log-format must be text or json, not {self['log-format']!r}")
        self["endpoint"] = self["http"] or address_to_endpoint(self["address"])
        if self["endpoint"].startswith("unix:") and ":mode=" not in self["endpoint"]:
            # Its callers are trusted like loopback: only the branch's own
            # user may connect, not Twisted's default of everyone (0666).
            self["endpoint"] += ":mode=600"
        check_endpoint(self["endpoint"])
        if self["url"] is None:
            self["url"] = advertised_url(self["endpoint"])
        self["broker-tls"] = _broker_tls(self["broker-ca"])
        self["worker-policy"] = _worker_policy(self)
        try:
            check_name(self["cluster"], "--cluster")
            if self["broker"] is None:
                self["broker"] = os.environ.get("CYME_BROKER_URL") or DEFAULT_BROKER_URL
            self["default-broker"] = Broker.from_url(self["broker"], "--broker")
            bus_broker = self["bus-broker"] or os.environ.get("CYME_BUS_BROKER_URL")
            self["bus-broker-url"] = (
                Broker.from_url(bus_broker, "--bus-broker") if bus_broker
                else self["default-broker"]
            ).as_url()
            if self["id"] is not None:
                check_name(self["id"], "--id")
        except BadRequest as e:
            raise usage.UsageError(e.message) from None
        self._cluster_keys()
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

    def _cluster_keys(self):
        """The keys of the bus (the default one made if missing), or none."""
        try:
            self["cluster-keys"] = keys.bus_keys(
                self["cluster-key-file"], self["previous-cluster-key-file"],
                self["insecure-open-bus"])
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        except StartupError as e:
            self._startup_failed = True
            raise StartupFailed(str(e)) from None


def _worker_policy(options):
    """The L{WorkerPolicy} the options give, else a usage error naming one."""
    try:
        return WorkerPolicy.from_options(
            options["task-modules"], options["accept-contents"], options["max-concurrency"],
            options["max-instances"], options["broker-tls"].ca_file, options["webhook-allows"],
            options["webhook-deny-private"],
        )
    except BadRequest as e:
        raise usage.UsageError(e.message) from None


def _broker_tls(ca_file):
    """How amqps:// brokers are verified (L{BrokerTLS}), else a usage error."""
    if ca_file is None:
        return BrokerTLS()
    # Absolute: the workers, which run in directories of their own, read it too.
    ca_file = os.path.abspath(ca_file)
    try:
        return BrokerTLS(ca_file)
    except ValueError as e:
        raise usage.UsageError(f"--broker-ca: {e}") from None


def _seconds(value, option, zero=False):
    """C{value} as seconds (L{check_seconds}), else a usage error naming it."""
    try:
        return check_seconds(value, option, zero=zero)
    except BadRequest as e:
        raise usage.UsageError(f"{e.message}, not {value!r}") from None
