"""``twistd cyme-branch``: the branch's service tree.

``makeService`` assembles the services from what L{cyme.options.Options}
parsed (the command line, and the root directory it opened): the one
place where the branch's parts are made and wired, each through its
constructor.
"""

import os
import socket
import sys

from twisted.application import strports
from twisted.logger import LogLevel

from cyme import jsonlog, logs
from cyme.addresses import loopback_url
from cyme.amqp import BrokerPool
from cyme.api.auth import Gate
from cyme.api.http import make_site
from cyme.api.routes import BranchAPI
from cyme.branch import BranchService
from cyme.cluster.seal import bus_seal
from cyme.cluster.transport import AMQPBusTransport
from cyme.metrics import Metrics
from cyme.operations.cluster import build_cluster
from cyme.operations.drift import DriftWatch
from cyme.operations.eventfeeds import EventFeeds
from cyme.operations.eventhub import EventHub
from cyme.operations.events import EventLog
from cyme.operations.health import BranchHealth
from cyme.operations.local import LocalOperations
from cyme.options import HELP_HINT, Options, StartupFailed
from cyme.state.models import reserved_apps
from cyme.supervision.control import ControlRouter
from cyme.supervision.launcher import ExecLauncher, ForkServerLauncher
from cyme.supervision.relay import OutputRelay
from cyme.supervision.supervisor import Supervisor
from cyme.supervision.workerstate import Policy
from cyme.systemd import SystemdNotify, from_environment
from cyme.tasks.journal import DiskThread, ResultJournal
from cyme.tasks.results import TaskService
from cyme.tasks.urlcheck import URLCheck
from cyme.waits import WaitCap

__all__ = ["BranchService", "HELP_HINT", "Options", "StartupFailed", "makeService"]

# The workers log at the branch's level, in Celery's words.
CELERY_LEVELS = {
    "debug": "DEBUG", "info": "INFO", "warn": "WARNING", "error": "ERROR",
    "critical": "CRITICAL",
}


def makeService(options):
    from twisted.internet import reactor

    logs.set_level(options["log-level"])
    # Whatever the branch (its journal, made below, included) and its workers
    # create is theirs alone: the files hold passwords and task arguments.
    os.umask(0o077)
    for name in reserved_apps(options["store"].apps()):
        BranchService.log.warn("app {app} has a name reserved for the API's routes: "
                               "recreate it under another name (README: Security)", app=name)
    branch = BranchService(
        options["root"], options["branch-id"],
        api_url=None if options["without-http"] else loopback_url(options["endpoint"]),
        log_observer=(jsonlog.JSONLinesObserver(sys.stdout)
                      if options["log-format"] == "json" else None),
    )
    # The histograms of /metrics: ticks, pings, journal writes, requests.
    metrics = Metrics()
    # One connection per broker, for the remote control, the bus and the
    # task service; added first, so stopped last.
    pool = BrokerPool(reactor, tls=options["broker-tls"])
    pool.setServiceParent(branch)
    control = ControlRouter(pool, options["default-broker"].as_url(), reactor)
    # The branch's events (GET /events/, and the drift's times): its
    # workers' transitions, its store's changes, its peers' presence.
    events = EventLog(options["branch-id"], reactor)
    feeds = EventFeeds(events, options["store"])
    options["store"].subscribe(feeds.store_changed)
    drift = DriftWatch(reactor)
    events.subscribe(drift.seen)
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
        cluster=options["cluster"],
        transition=feeds.transition,
        metrics=metrics,
    )
    supervisor.setServiceParent(branch)
    # Workers' output in the branch's log as it comes, not a tick later.
    OutputRelay(supervisor, reactor).setServiceParent(branch)
    # The supervisor converges on every change of the desired state.
    options["store"].subscribe(supervisor.reconcile)
    disk = DiskThread(reactor)
    journal = ResultJournal(
        os.path.join(options["root"].path, "results.jsonl"), reactor,
        retention=options["result-expires"], run=disk, metrics=metrics,
    )
    tasks = TaskService(
        pool, journal, options["branch-id"], reactor, options["store"], disk=disk,
        # The fence at queue time: names judged by the addresses they resolve to.
        url_check=URLCheck(reactor, resolver=reactor.nameResolver,
                           deny_private=options["webhook-deny-private"],
                           opened=options["worker-policy"].webhook_allow),
    )
    tasks.setServiceParent(branch)
    options["store"].subscribe(tasks.release_unused)
    # GET /health/ and systemd's STATUS=: the bus broker, the ticks, the journal.
    health = BranchHealth(options["branch-id"], options["store"], pool,
                          options["bus-broker-url"], reactor,
                          supervisor=supervisor, journal=journal)
    local = LocalOperations(
        options["store"],
        branch_id=options["branch-id"],
        default_broker=options["default-broker"],
        supervisor=supervisor,
        control=control,
        tasks=tasks,
        clock=reactor,
        url=options["url"],
        cluster=options["cluster"],
        ready_timeout=options["ready-timeout"],
        worker_policy=options["worker-policy"],
        readiness=health,
        events=EventHub(events, reactor),
        drift=drift,
    )
    # One cap on the waits this branch holds: its clients' and other branches'.
    waits = WaitCap()
    cluster, bus = build_cluster(
        local,
        AMQPBusTransport(pool, options["bus-broker-url"], options["branch-id"],
                         options["cluster"]),
        reactor,
        ready_timeout=options["ready-timeout"],
        seal=bus_seal(options["cluster-keys"], reactor),
        waits=waits,
        # Rolling restarts replace it first, and wait out a warm stop.
        launcher=launcher,
        kill_timeout=options["kill-timeout"],
        restart_listener=feeds.restart_step,
    )
    bus.setServiceParent(branch)
    bus.subscribe(feeds.peer_changed)
    if not options["without-http"]:
        # An access line per request is info; above it, none is written.
        access_log = options["log-level"] <= LogLevel.info
        gate = Gate(cluster, trust_loopback=not options["no-trust-loopback"],
                    url=options["url"], names=frozenset([socket.gethostname()]))
        api = BranchAPI(cluster, gate, waits, clock=reactor, metrics=metrics,
                        max_wait=options["max-wait"], max_stream=options["max-stream"])
        site = make_site(api.resource(), access_log=access_log)
        http = strports.service(options["endpoint"], site, reactor=reactor)
        http.setName("http")
        http.setServiceParent(branch)
    notifier, watchdog = from_environment()
    if notifier is not None:
        # Last: READY=1 once everything else started, STOPPING=1 first.
        SystemdNotify(notifier, reactor, status=health.summary,
                      watchdog=watchdog).setServiceParent(branch)
    return branch

