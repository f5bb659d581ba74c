"""Worker processes: their command line, their files, and how they are watched.

An instance ``n`` of this branch runs as ``python -m cyme.supervision.workerexec -A
cyme.tasks.worker … worker -n n@host`` in ``<root>/instances/n/``, which holds
``worker.pid`` (written by the branch the moment it spawns the worker, so
that a branch stopped while the worker starts still finds it next time),
``worker.log`` (the worker's stdout and stderr),
``worker.state`` (Celery's state db, revoked tasks survive restarts) and
``worker.spec`` (the fingerprint of the command line it was started with,
so that a restarted branch knows whether an adopted worker is current).
The directory is 0700 and the files 0600: a worker's log may show its
tasks' arguments.  The broker's URL, password included, goes to the worker
in its environment (``CELERY_BROKER_URL``, readable only by its owner),
never on its command line, which ``ps`` shows to everyone.
"""

import errno
import hashlib
import json
import os
import re
import shlex
import signal
import traceback

from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from zope.interface import implementer

from cyme.amqp.url import mask_passwords
from cyme.errors import CymeError
from cyme.state.models import check_hostname
from cyme.state.queues import check_names, check_options
from cyme.state.workeroptions import WorkerPolicy
from cyme.supervision.interfaces import IProcessTable


def cancel_call(call):
    """Cancel a delayed C{call} if it is still to come (None: nothing)."""
    if call is not None and call.active():
        call.cancel()


def dead_letter_queue(name):
    """The queue every instance consumes under its own name (``dq.<name>``)."""
    return f"dq.{name}"


def node_name(instance_name, hostname):
    return f"{instance_name}@{hostname}"


def _queue_declaration(queue, cluster):
    # A record an older version let through (a bindings option, a
    # reserved name: the bus of this branch's cluster too) fails its
    # instance here, not the worker's broker.
    check_names(queue, cluster)
    check_options(queue.options)
    return {
        "name": queue.name,
        "exchange": queue.exchange,
        "exchange_type": queue.exchange_type,
        "routing_key": queue.routing_key,
        "options": queue.options,
    }


def worker_command(instance, app, queues, directory, hostname, python, loglevel="info",
                   policy=None, cluster="cyme"):
    """
    The argv, environment and spec fingerprint of an instance's worker.

    A broker over TLS (C{ssl}) is verified by the worker as by the branch:
    its certificate against the policy's C{broker_ca} (the branch's
    C{--broker-ca}; None: the system's CAs) and its host name.

    The worker's fence of queued URLs is its own (the app's
    C{allowed_hosts}, the policy's C{webhook_deny_private} and
    C{webhook_allow}): a task message may narrow it, never widen it.

    C{queues} are the L{cyme.state.models.Queue} declarations the instance
    consumes; none may be named as the bus of C{cluster} (the branch's).
    The spec covers what can only change by a restart (broker,
    pool, arguments, settings, imports, the fence, and concurrency where
    there is no autoscaler); queues and autoscale bounds change live and
    are left out.
    Raises L{cyme.errors.BadRequest} if the records are outside this
    branch's C{policy} (a L{WorkerPolicy}): replicated from a branch that
    allows more, or written by an older version.
    """
    policy = policy or WorkerPolicy()
    policy.check(app, instance)
    broker = instance.broker or app.broker
    check_hostname(broker.hostname, "broker hostname")
    dq = dead_letter_queue(instance.name)
    argv = [
        python, "-m", "cyme.supervision.workerexec",
        "-A", "cyme.tasks.worker",
        "--workdir", directory,
        "worker",
        "-n", node_name(instance.name, hostname),
        "-Q", ",".join([dq, *(q.name for q in queues)]),
        "-P", instance.pool,
        "--without-mingle", "--without-gossip", "-E",
        "--statedb", os.path.join(directory, "worker.state"),
        "-l", loglevel,
    ]
    if instance.pool == "prefork":
        argv.append(f"--autoscale={instance.max_concurrency},{instance.min_concurrency}")
    elif instance.pool != "solo":  # solo runs one task at a time, whatever -c says
        argv += ["-c", str(instance.max_concurrency)]
    argv += shlex.split(app.arguments) + shlex.split(instance.arguments)
    extra = {**app.extra_config, **instance.extra_config}
    config = {
        "queues": [
            {"name": dq, "exchange": dq, "exchange_type": "direct",
             "routing_key": dq, "options": {}},
            *(_queue_declaration(q, cluster) for q in queues),
        ],
        "extra_config": extra,
        "imports": list(app.imports),
        "webhook": {"allowed_hosts": list(app.allowed_hosts),
                    "deny_private": policy.webhook_deny_private,
                    "opened": list(policy.webhook_allow)},
    }
    if broker.ssl:
        # The name the certificate must carry: the URL's, which Celery
        # would otherwise replace (localhost by 127.0.0.1).
        config["broker_tls"] = {"ca_certs": policy.broker_ca,
                                "server_hostname": broker.hostname}
    env = {
        "CELERY_BROKER_URL": broker.as_url(),
        "CYME_WORKER_CONFIG": json.dumps(config, sort_keys=True),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "PYTHONUNBUFFERED": "1",
    }
    for key in ("PYTHONPATH", "VIRTUAL_ENV", "HOME", "TZ"):
        if key in os.environ:
            env[key] = os.environ[key]
    spec_parts = [broker.as_url(), instance.pool, app.arguments, instance.arguments,
                  json.dumps(extra, sort_keys=True)]
    if app.imports:  # only then: the workers of an older version stay current
        spec_parts.append(",".join(app.imports))
    # The fence likewise: a worker with the default one keeps its spec.
    if app.allowed_hosts:
        spec_parts.append("allowed_hosts=" + ",".join(app.allowed_hosts))
    if policy.webhook_deny_private:
        spec_parts.append("deny_private=1")
    if policy.webhook_allow:
        spec_parts.append("webhook_allow=" + ",".join(policy.webhook_allow))
    if broker.ssl:  # a new CA bundle restarts the workers that use it
        spec_parts.append(f"ca={policy.broker_ca or ''}")
    if instance.pool not in ("prefork", "solo"):
        spec_parts.append(str(instance.max_concurrency))
    spec = hashlib.sha256("\0".join(spec_parts).encode("utf-8")).hexdigest()[:16]
    return argv, env, spec


class WorkerCommands:
    """
    Each instance's L{worker_command}, made again only when a record it is
    made of was replaced: the supervisor asks for every instance's on
    every round, and a burst of creations brings a round per change, so
    making them all each time costs the square of the instances.  The
    records are frozen: the same objects make the same command.
    """

    def __init__(self, hostname, python, loglevel="info", policy=None, cluster="cyme"):
        self._fixed = (hostname, python, loglevel, policy, cluster)
        #: Instance name -> (the records it was made of, what was made).
        self._made = {}

    def get(self, instance, app, queues, directory):
        """C{worker_command(instance, app, queues, directory, ...)}, maybe kept."""
        records = (instance, app, *queues, directory)
        kept = self._made.get(instance.name)
        if kept is not None and len(kept[0]) == len(records) and all(
                a is b for a, b in zip(kept[0], records)):
            return kept[1]
        made = worker_command(instance, app, queues, directory, *self._fixed)
        self._made[instance.name] = (records, made)
        return made

    def forget(self, name):
        """The instance is gone: its command is not kept."""
        self._made.pop(name, None)


#: What starting a worker may raise for a reason of its own (a record the
#: branch refuses, the system): anything else is a bug.
EXPECTED = (CymeError, OSError)


def cannot_start(error):
    """
    What an instance whose worker could not be started shows as its
    C{last_error}: C{error} was raised making its directory, its command,
    its process or its pid file.  No password is in it (an error may quote
    the broker's URL).
    """
    text = error.message if isinstance(error, CymeError) else str(error)
    if not isinstance(error, EXPECTED):  # a bug: its kind says more
        text = f"{type(error).__name__}: {text}"
    return "cannot start: " + mask_passwords(text)


def where_raised(error):
    """
    For the log: where C{error}, a bug (not L{EXPECTED}), was raised, as
    the frames of its traceback, which hold code and no values (a log line
    never quotes a password); else "".
    """
    if isinstance(error, EXPECTED) or error.__traceback__ is None:
        return ""
    return "\n" + "".join(traceback.format_tb(error.__traceback__)).rstrip()


def exit_description(reason):
    """A short text for how a process ended (C{reason} is a Failure or None)."""
    value = getattr(reason, "value", None)
    if isinstance(value, ProcessDone):
        return "exited with status 0"
    if isinstance(value, ProcessTerminated):
        if value.signal is not None:
            try:
                name = signal.Signals(value.signal).name
            except ValueError:
                name = str(value.signal)
            return f"killed by {name}"
        return f"exited with status {value.exitCode}"
    return "exited"


def failed_exit(reason):
    """Whether the process exited by itself with an error status."""
    value = getattr(reason, "value", None)
    return (
        isinstance(value, ProcessTerminated) and value.signal is None and bool(value.exitCode)
    )


class WorkerProtocol(ProcessProtocol):
    """Tells the supervisor when a worker it spawned ends."""

    def __init__(self, ended):
        self._ended = ended

    def connectionMade(self):
        # The worker reads nothing; its output goes straight to worker.log.
        self.transport.closeStdin()

    def processEnded(self, reason):
        self._ended(reason)


def write_file(path, text):
    """Replace C{path} with C{text} at once: a reader sees old or new, never half."""
    partial = path + ".tmp"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(partial, path)


def make_directory(path):
    """Create C{path} (and its parents) 0700, or make it 0700 if it exists."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)


def record_spawn(directory, pid, spec):
    """Write a new worker's pid file and the fingerprint of its command."""
    write_file(os.path.join(directory, "worker.pid"), f"{pid}\n")
    write_file(os.path.join(directory, "worker.spec"), spec)


def read_spec(directory):
    """The fingerprint of the command a worker was started with, or None."""
    try:
        with open(os.path.join(directory, "worker.spec")) as f:
            return f.read().strip() or None
    except OSError:
        return None


def remove_pidfile(path, pid):
    """Remove the pid file at C{path} if it still names C{pid}."""
    if read_pidfile(path) == pid:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass


def worker_directories(instances_dir):
    """C{(name, pid)} of each worker directory, the pid from its pid file."""
    try:
        names = sorted(os.listdir(instances_dir))
    except FileNotFoundError:
        return []
    return [
        (name, read_pidfile(os.path.join(instances_dir, name, "worker.pid")))
        for name in names
        if os.path.isdir(os.path.join(instances_dir, name))
    ]


def read_pidfile(path):
    try:
        with open(path, "rb") as f:
            return int(f.read().strip() or b"0") or None
    except (OSError, ValueError):
        return None


@implementer(IProcessTable)
class ProcessTable:
    """Processes through C{os.kill} and C{/proc}."""

    def alive(self, pid):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                # A zombie has ended: only its exit status is left.
                return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
        except (OSError, IndexError):
            return True

    def is_worker(self, pid, node):
        if not self.alive(pid):
            return False
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            return False
        # The node name as a whole word: an exec'd worker has it as one
        # argument; a forked one, or one Celery renamed ("[celeryd:
        # n@host:MainProcess]"), within its title.
        return re.search(
            rb"(^|[\0 \[])" + re.escape(node.encode("utf-8")) + rb"($|[\0 :\]])", cmdline
        ) is not None

    def signal(self, pid, signum):
        try:
            os.kill(pid, signum)
        except OSError as e:
            if e.errno != errno.ESRCH:
                raise


class LogTail:
    """Reads the lines a worker appended to its log since the last call."""

    max_read = 1 << 16

    def __init__(self, path):
        self.path = path
        try:
            self.offset = os.path.getsize(path)
        except OSError:
            self.offset = 0
        self._partial = b""

    def lines(self):
        try:
            size = os.path.getsize(self.path)
        except OSError:
            return []
        if size < self.offset:  # truncated or replaced
            self.offset = 0
        if size == self.offset:
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read(self.max_read)
        self.offset += len(data)
        data = self._partial + data
        *complete, self._partial = data.split(b"\n")
        if len(self._partial) > self.max_read:
            complete.append(self._partial)
            self._partial = b""
        return [line.decode("utf-8", "replace").rstrip() for line in complete if line.strip()]


# What Celery writes when it cannot reach its broker: "consumer: Cannot
# connect to <url, password masked>: <error>." while it retries, and
# "Unrecoverable error: AccessRefused(...)" when it gives up.
_CANNOT_CONNECT = re.compile(r"Cannot connect to \S+: (?P<error>.*?)\.?$")
_UNRECOVERABLE = re.compile(r"Unrecoverable error: (?P<error>.*ACCESS_REFUSED.*)$")
_BROKER_FAILURES = (
    ("the host does not resolve", (
        "Name or service not known", "Temporary failure in name resolution",
        "No address associated with hostname", "Errno -2]", "Errno -3]", "Errno -5]",
    )),
    ("connection refused", ("Connection refused", "Errno 111]")),
    ("access refused", ("ACCESS_REFUSED", "AccessRefused")),
    # amqps://: the worker refused the broker's certificate, as the branch does.
    ("TLS: the broker's certificate is not for its host name: refused",
     ("Hostname mismatch", "IP address mismatch")),
    ("TLS: the broker's certificate is not trusted: refused",
     ("CERTIFICATE_VERIFY_FAILED",)),
    ("TLS failure", ("SSL", "TLS", "CERTIFICATE", "certificate")),
)


def broker_failure(line):
    """
    Why the worker cannot reach its broker, if C{line} (of its log) says
    it cannot; None for any other line.  The broker's URL is left out.
    """
    found = _CANNOT_CONNECT.search(line) or _UNRECOVERABLE.search(line)
    if found is None:
        return None
    error = found.group("error").strip()[:200]
    for kind, marks in _BROKER_FAILURES:
        if any(mark in error for mark in marks):
            return f"cannot reach its broker: {kind} ({error})"
    return f"cannot reach its broker: {error}"


def still_failing(path, tail=8192):
    """
    Why the worker writing log C{path} cannot reach its broker, if the end
    of the log says it still cannot (a worker adopted after a branch
    restart, whose next attempt may be half a minute away); else None.
    """
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - tail))
            lines = f.read(tail).decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    reason = None
    for line in lines:
        if "Connected to " in line:
            reason = None
        reason = broker_failure(line) or reason
    return reason
