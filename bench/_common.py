"""Helpers shared by the benchmarks: a branch process, HTTP, cleanup, figures.

Every benchmark starts its own ``cyme-branch`` on a free loopback port with
a temporary root directory, and cleans up every process it started, even
on Ctrl-C or when its time limit is hit: the branch (TERM, then KILL), the
workers (they outlive the branch by design: ``os.killpg`` of the pids in
``<root>/instances/*/worker.pid``) and, as a last sweep, any process whose
command line names the temporary root (orphaned prefork children of a
worker killed with ``kill -9``).
"""

import concurrent.futures
import contextlib
import http.client
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
BIN = os.path.dirname(sys.executable)
CYME_BRANCH = os.path.join(BIN, "cyme-branch")
CELERY = os.path.join(BIN, "celery")
# A vhost of its own: other branches (and their cluster bus) and workers on
# the same RabbitMQ stay out of the figures.  CYME_BENCH_BROKER overrides.
VHOST = "cyme-bench"
BROKER = os.environ.get(
    "CYME_BENCH_BROKER", f"amqp://guest:guest@127.0.0.1:5672/{VHOST}"
)
HOSTNAME = socket.gethostname()
CLK_TCK = os.sysconf("SC_CLK_TCK")
APP = "bench"


class BenchTimeout(BaseException):
    """The benchmark's overall time limit was hit (cleanup still runs)."""


class Interrupted(BaseException):
    """SIGTERM or SIGINT: stop, clean up, exit."""


def add_branch_options(parser):
    """The options every script takes: C{--keep}, and branch options after C{--}."""
    parser.add_argument("--keep", action="store_true",
                        help="keep the branches' temporary files (their logs)")
    parser.add_argument("branch_options", nargs="*",
                        help="extra cyme-branch options (after --)")


def install_limits(seconds):
    """
    Bound the whole run to C{seconds} (SIGALRM) and turn SIGTERM/SIGINT
    into an exception, so that the callers' C{finally} cleanup always runs.
    """

    def on_alarm(signum, frame):
        raise BenchTimeout(f"time limit of {seconds:g} s reached")

    def on_term(signum, frame):
        raise Interrupted(f"signal {signal.Signals(signum).name}")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.alarm(max(1, int(math.ceil(seconds))))


def ensure_vhost():
    """Create the bench's vhost with rabbitmqctl (idempotent) unless
    CYME_BENCH_BROKER names the broker."""
    if "CYME_BENCH_BROKER" in os.environ:
        return
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        raise SystemExit(
            f"rabbitmqctl not found: create the vhost {VHOST} (guest may use it), "
            "or set CYME_BENCH_BROKER to an amqp:// URL"
        )
    for argv in ([ctl, "-q", "add_vhost", VHOST],
                 [ctl, "-q", "set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*"]):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if done.returncode and "already_exists" not in done.stderr + done.stdout:
            raise SystemExit(f"{' '.join(argv)} failed: {done.stderr or done.stdout}")


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def machine():
    return (f"host {HOSTNAME}, {os.cpu_count()} CPUs, load {loadavg()}, "
            f"broker {BROKER}")


def run(main):
    """Run a benchmark's C{main}; a signal or the time limit ends it with
    one line (its cleanup has run by then)."""
    try:
        main()
    except (Interrupted, BenchTimeout) as e:
        print(f"stopped: {e} (every process started was cleaned up)", file=sys.stderr)
        sys.exit(1)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tag():
    """A short tag unique to this run: instance and node names must be
    unique on the (shared) broker."""
    return f"{os.getpid()}{int(time.time()) % 100000}"


# Processes


def pid_alive(pid):
    """True while C{pid} exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def proc_state(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError):
        return None


def pids_mentioning(text):
    """Pids of the processes whose command line contains C{text}."""
    found = []
    needle = text.encode()
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if needle in f.read():
                    found.append(int(entry))
        except OSError:
            pass
    return found


def kill_group(pid, signum=signal.SIGKILL):
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signum)
        except (OSError, ProcessLookupError):
            pass


def sweep(text, pidfiles=(), timeout=10.0):
    """
    KILL the process groups named in C{pidfiles}, then every process whose
    command line mentions C{text}; wait until they are gone.
    """
    for path in pidfiles:
        try:
            with open(path) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            continue
        kill_group(pid)
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in pids_mentioning(text) if pid_alive(p)]
        if not left:
            return []
        for pid in left:
            kill_group(pid)
        if time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def read_pid(path):
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def cpu_seconds(pid):
    """utime + stime of C{pid} in seconds (not its children)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    # fields[0] is field 3 (state): utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def tree_cpu_seconds(pid):
    """utime + stime of C{pid} and its live descendants (a worker and its
    pool), in seconds; 0 for a pid that is gone."""
    total = 0.0
    for one in (pid, *descendants(pid)):
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += cpu_seconds(one)
    return total


def machine_cpu_seconds():
    """CPU seconds the whole machine spent busy since boot (all CPUs, from
    ``/proc/stat``): the difference over a sample says how much of the
    machine it had, others' work included."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / CLK_TCK


def broker_pid():
    """The local RabbitMQ's pid (its Erlang VM), or None."""
    found = [p for p in pids_mentioning("beam.smp") if pid_alive(p)]
    return found[0] if found else None


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return math.nan


def smaps_rollup(pid):
    """
    C{pid}'s memory totals from C{/proc/<pid>/smaps_rollup} in KiB
    (C{{"Rss": ..., "Pss": ..., "Pss_Anon": ..., "Private_Dirty": ...}}),
    or None if it is gone.  PSS counts each page shared by k processes
    as 1/k of it: summed over processes, shared pages count once.
    """
    totals = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                fields = line.split()
                if len(fields) == 3 and fields[2] == "kB":
                    totals[fields[0].rstrip(":")] = int(fields[1])
    except OSError:
        return None
    return totals


def parent_pid(pid):
    """C{pid}'s parent, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def descendants(pid):
    """Every live descendant of C{pid} (children, their children...), not C{pid}."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            parent = parent_pid(int(entry))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry))
    found, todo = [], list(children.get(pid, ()))
    while todo:
        child = todo.pop()
        if pid_alive(child):
            found.append(child)
        todo.extend(children.get(child, ()))
    return found


def command_line(pid):
    """C{pid}'s command line as one string ("" if it is gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return ""


# The branch


class Branch:
    """One ``cyme-branch`` process on a free port with a temporary root."""

    def __init__(self, name, *options, keep_root=False, executable=None):
        #: The cyme-branch to run: this tree's, or a baseline checkout's.
        self.executable = executable or CYME_BRANCH
        self.name = name
        self.options = list(options)
        self.tmp = tempfile.mkdtemp(prefix=f"cyme-bench-{name}-")
        self.root = os.path.join(self.tmp, "root")
        self.log_path = os.path.join(self.tmp, "branch.log")
        self.port = free_port()
        self.proc = None
        self.keep_root = keep_root

    @property
    def pid(self):
        return self.proc.pid

    def start(self, timeout=30.0):
        self.launch()
        return self.wait_ready(timeout)

    def launch(self):
        """Start the process without waiting for it (L{wait_ready} does):
        several branches start in parallel."""
        if not getattr(Branch, "_vhost_ready", False):
            ensure_vhost()
            Branch._vhost_ready = True
        argv = [
            self.executable, f"127.0.0.1:{self.port}", "-i", self.id,
            "-D", self.root, "-b", BROKER, *loopback_opened(self.executable), *self.options,
        ]
        log = open(self.log_path, "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            cwd=self.tmp, env=env, start_new_session=True,
        )
        log.close()
        return self

    def wait_ready(self, timeout=30.0):
        """Wait until the launched branch answers C{GET /ping/}."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"branch exited:\n{self.log_tail()}")
            try:
                if self.request("GET", "/ping/", timeout=1)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"branch not answering after {timeout} s:\n{self.log_tail()}")
            time.sleep(0.05)
        return self

    @property
    def id(self):
        """The branch id its peers know it by (C{-i})."""
        return f"bench-{self.name}"

    def kill(self):
        """C{kill -9} the branch process alone, as a crash would: its
        workers keep running, and a L{start} with the same root adopts them."""
        self.proc.kill()
        self.proc.wait(10)

    def broker_losses(self):
        """How often the branch lost the broker so far (its log says so).

        The broker may be shared (other people's tests restart it): a
        sample during which this count changed is not a fair sample.
        """
        try:
            with open(self.log_path, errors="replace") as f:
                return sum("lost AMQP broker" in line for line in f)
        except OSError:
            return 0

    def up_after(self, pid):
        """The branch's own spawn -> first pong time for worker C{pid}
        (its log line "<name> is up (pid N) after X s"), or None."""
        needle = f" is up (pid {pid}) after "
        try:
            with open(self.log_path, errors="replace") as f:
                for line in f:
                    if needle in line:
                        return float(line.split(needle, 1)[1].split()[0])
        except (OSError, ValueError):
            pass
        return None

    def log_tail(self, lines=40):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def request(self, method, path, params=None, timeout=30.0):
        """C{(status, decoded JSON or text)} of one request on a new connection."""
        body = None
        headers = {}
        if params:
            body = urllib.parse.urlencode(params)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        if response.getheader("Content-Type", "").startswith("application/json"):
            return response.status, json.loads(data)
        return response.status, data.decode("utf-8", "replace")

    def metrics(self):
        status, text = self.request("GET", "/metrics")
        if status != 200:
            raise RuntimeError(f"/metrics answered {status}")
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, value = line.rsplit(" ", 1)
                values[key] = float(value)
        return values

    def instance(self, name):
        status, body = self.request("GET", f"/{APP}/instances/{name}/", timeout=5)
        return body if status == 200 else None

    def instance_dir(self, name):
        return os.path.join(self.root, "instances", name)

    def wait_gone(self, name, pids=(), timeout=30.0):
        """
        After a DELETE: wait until the instance's directory is removed and
        C{pids} are dead; then KILL anything still running from its
        directory (orphaned pool children of a worker killed with -9).
        """
        directory = self.instance_dir(name)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not os.path.exists(directory) and not any(pid_alive(p) for p in pids):
                break
            time.sleep(0.05)
        else:
            print(f"  warning: {name} not gone after {timeout:g} s", file=sys.stderr)
        for pid in pids:
            kill_group(pid)
        sweep(directory + os.sep, timeout=5)

    def stop(self, timeout=15.0):
        """TERM the branch (KILL after C{timeout}), then KILL every worker."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        pidfiles = []
        instances = os.path.join(self.root, "instances")
        with contextlib.suppress(OSError):
            for name in os.listdir(instances):
                pidfiles.append(os.path.join(instances, name, "worker.pid"))
        left = sweep(self.tmp + os.sep, pidfiles)
        if left:
            print(f"  warning: processes left: {left}", file=sys.stderr)
        if not self.keep_root:
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            print(f"  branch files kept in {self.tmp}", file=sys.stderr)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def loopback_opened(executable):
    """
    C{--webhook-allow 127.0.0.1} for a cyme-branch that has the option:
    the benchmarks' targets listen on loopback, which an app's
    allowed_hosts opens only where the branch's operator did.  A baseline
    checkout from before the option opens it with the app's list alone.
    """
    opening = ["--webhook-allow", "127.0.0.1"]
    if executable == CYME_BRANCH:
        return opening
    usage = subprocess.run([executable, "--help"], capture_output=True, text=True,
                           timeout=120).stdout
    return opening if "--webhook-allow" in usage else []


def ensure_app(branch):
    # The benchmarks' targets listen on loopback, which queued URLs may
    # reach only when the app lists it (the webhook fence), where the
    # branch opened it (Branch.start: loopback_opened).
    status, body = branch.request("PUT", f"/{APP}/", {"allowed_hosts": "127.0.0.1"})
    if status not in (200, 201):
        raise RuntimeError(f"cannot create app: {status} {body}")


def undisturbed(branch, sample, *args, retries=3):
    """
    Run C{sample(*args)}; if the broker connection dropped meanwhile (or the
    sample failed while it did), wait for the broker and run it again.
    """
    for attempt in range(retries + 1):
        before = branch.broker_losses()
        try:
            result = sample(*args)
            failure = None
        except Exception as e:  # noqa: BLE001 - judged below
            result, failure = None, e
        if branch.broker_losses() == before:
            if failure is not None:
                raise failure
            return result
        print(f"  broker connection lost during the sample ({failure or 'no error'}):"
              " waiting for the broker, then sampling again", file=sys.stderr)
        wait_broker()
        time.sleep(3)
    raise RuntimeError(f"the broker kept going away ({retries} retries)")


def wait_broker(timeout=120.0):
    url = urllib.parse.urlparse(BROKER)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((url.hostname or "127.0.0.1", url.port or 5672), 1):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"broker {url.hostname}:{url.port} not back after {timeout:g} s")


# A cluster of branches, instances in bulk, latencies


class Cluster:
    """
    Branches of one cluster on this machine: one broker (the bench's
    vhost), one cluster name and one cluster key, both made for the run
    (the user's own key stays out of it), each branch with its own root and
    port.  L{grow} adds branches, started in parallel; L{stop} stops them
    all and their workers.
    """

    def __init__(self, prefix, *options, keep_root=False):
        self.prefix = prefix
        self.options = list(options)
        self.keep_root = keep_root
        self.name = f"bench-{tag()}"
        self.tmp = tempfile.mkdtemp(prefix=f"cyme-bench-{prefix}-")
        self.key = os.path.join(self.tmp, "cluster.key")
        subprocess.run([CYME_BRANCH, "cluster-key", "new", self.key], check=True,
                       capture_output=True, timeout=120)
        self.branches = []

    @property
    def ids(self):
        return sorted(b.id for b in self.branches)

    def grow(self, count, timeout=60.0):
        """Start branches until there are C{count}; wait until each sees all."""
        new = [
            Branch(f"{self.prefix}{n:02d}", "--cluster", self.name, "--cluster-key-file",
                   self.key, *self.options, keep_root=self.keep_root)
            for n in range(len(self.branches), count)
        ]
        self.branches += new
        for branch in new:
            branch.launch()
        for branch in new:
            branch.wait_ready(timeout)
        self.wait_peers(timeout)
        return new

    def wait_peers(self, timeout=60.0):
        """Wait until every branch lists every branch in C{GET /branches/}."""
        deadline = time.monotonic() + timeout
        for branch in self.branches:
            while branch.request("GET", "/branches/", timeout=5)[1] != self.ids:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{branch.id} does not see all of {self.ids}")
                time.sleep(0.2)

    def stop(self):
        """Stop every branch (in parallel: each waits for its own process)
        and its workers; remove the run's files."""
        with concurrent.futures.ThreadPoolExecutor(max(1, len(self.branches))) as pool:
            list(pool.map(Branch.stop, self.branches))
        if not self.keep_root:
            shutil.rmtree(self.tmp, ignore_errors=True)


def create_instances(branch, names, params=(), parallel=8, timeout=120.0, retries=0):
    """
    Create C{names} on C{branch} with the no-wait form (C{PUT
    /<app>/instances/!/<name>/}), C{parallel} requests at a time, then
    wait until every one is running.  C{params} go with each request
    (e.g. C{{"pool": "solo", "branch": branch.id}}).  A 504 (a branch of
    the cluster did not answer the name check in time) is sent again up
    to C{retries} times, as a client would.  Returns how many were.
    """
    again = []

    def put(name):
        for attempt in range(retries + 1):
            status, body = branch.request("PUT", f"/{APP}/instances/!/{name}/", dict(params))
            if status == 202:
                return
            if status != 504 or attempt == retries:
                raise RuntimeError(f"PUT {name}: {status} {body}")
            again.append(name)
            print(f"  PUT {name}: 504 ({body.get('error')}): sent again", file=sys.stderr)

    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        list(pool.map(put, names))
    wait_running(branch, names, timeout)
    return len(again)


def wait_running(branch, names, timeout):
    """Wait until C{GET /<app>/instances/<name>/} says running for each name."""
    deadline = time.monotonic() + timeout
    waiting = set(names)
    while waiting:
        for name in sorted(waiting):
            body = branch.instance(name)
            if body and body.get("state") == "running":
                waiting.discard(name)
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"not running after {timeout:g} s: {sorted(waiting)}")
        time.sleep(0.2)


def keepalive_latencies(port, paths, rounds, timeout=10.0):
    """
    Seconds each of C{paths} took (GET, one keep-alive connection), in
    C{rounds} rounds that request every path in turn, so that drift in the
    machine's load hits them all alike.  A dict of path to sorted list.
    """
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    seen = {path: [] for path in paths}
    try:
        for _ in range(rounds):
            for path in paths:
                t0 = time.perf_counter()
                conn.request("GET", path)
                response = conn.getresponse()
                response.read()
                seen[path].append(time.perf_counter() - t0)
                if response.status != 200:
                    raise RuntimeError(f"GET {path}: {response.status}")
    finally:
        conn.close()
    return {path: sorted(values) for path, values in seen.items()}


def quantile(values, q):
    """The C{q} quantile (0..1) of the sorted C{values}."""
    return values[min(len(values) - 1, int(q * len(values)))] if values else math.nan


def cpu_percents(pids, seconds):
    """Each of C{pids}' CPU (utime + stime, not its children) over the
    next C{seconds}, as % of one core; the caller leaves them alone meanwhile."""
    before = {pid: cpu_seconds(pid) for pid in pids}
    t0 = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - t0
    return {pid: 100 * (cpu_seconds(pid) - before[pid]) / elapsed for pid in pids}


# Celery, in the bench process only


def celery_app():
    """A Celery app on the bench broker, connected once up front."""
    from celery import Celery

    app = Celery("cyme-bench", broker=BROKER)
    app.conf.broker_connection_retry_on_startup = True
    app.bench_connection = None
    wait_pong(app, f"nobody-{tag()}@{HOSTNAME}", 0.05, 0.01)
    return app


def ping(app, node, timeout):
    """C{app.control.ping} to C{node} on the app's one kept connection
    (made again after the broker went away)."""
    if getattr(app, "bench_connection", None) is None:
        conn = app.connection_for_write()
        conn.ensure_connection(max_retries=3)
        app.bench_connection = conn
    try:
        return app.control.ping(
            destination=[node], timeout=timeout, connection=app.bench_connection
        )
    except Exception:
        with contextlib.suppress(Exception):
            app.bench_connection.close()
        app.bench_connection = None
        raise


def delete_queues(app, names):
    """Delete the queues C{names} on the bench broker (a worker's queues
    outlive it), so that a run leaves nothing behind."""
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        for name in names:
            channel.queue_delete(name)


def wait_pong(app, node, timeout, interval=0.05):
    """Ping C{node} every C{interval} s until it answers; the time it did, or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if ping(app, node, interval):
                return time.monotonic()
        except Exception as e:  # noqa: BLE001 - the broker went away: reconnect
            print(f"  ping failed ({e!r}): reconnecting", file=sys.stderr)
            time.sleep(0.5)
    return None


class Multi:
    """``celery multi`` nodes (the baselines) in a temporary directory."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="cyme-bench-multi-")
        self.pidfile = os.path.join(self.dir, "%n.pid")
        self.logfile = os.path.join(self.dir, "%n%I.log")

    def start(self, *nodes, options=(), timeout=60):
        """``celery multi start`` of C{nodes} (names) with the workers'
        C{options} added to the app, broker, pid and log files."""
        subprocess.run(
            [CELERY, "multi", "start", *nodes, "-A", "cyme.tasks.worker", "-b", BROKER,
             f"--pidfile={self.pidfile}", f"--logfile={self.logfile}", *options],
            cwd=self.dir, check=True, stdout=subprocess.DEVNULL, timeout=timeout,
        )

    def stopwait(self, *nodes, timeout=60):
        subprocess.run(
            [CELERY, "multi", "stopwait", *nodes, f"--pidfile={self.pidfile}"],
            cwd=self.dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            timeout=timeout,
        )

    def cleanup(self):
        pidfiles = [os.path.join(self.dir, f) for f in os.listdir(self.dir)
                    if f.endswith(".pid")]
        left = sweep(self.dir + os.sep, pidfiles)
        if left:
            print(f"  warning: processes left: {left}", file=sys.stderr)
        shutil.rmtree(self.dir, ignore_errors=True)


def wait_pongs(app, nodes, timeout, interval=0.1):
    """
    Ping those of C{nodes} that have not answered yet (one broadcast for
    them all, C{interval} s each) until every one has, or C{timeout} s
    passed: C{{node: time.monotonic() of its first pong}}.
    """
    waiting = set(nodes)
    answered = {}
    if getattr(app, "bench_connection", None) is None:
        ping(app, f"nobody-{tag()}@{HOSTNAME}", 0.01)
    deadline = time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        try:
            replies = app.control.ping(destination=sorted(waiting), timeout=interval,
                                       connection=app.bench_connection)
        except Exception as e:  # noqa: BLE001 - the broker went away: reconnect
            print(f"  ping failed ({e!r}): reconnecting", file=sys.stderr)
            with contextlib.suppress(Exception):
                app.bench_connection.close()
            app.bench_connection = None
            time.sleep(0.5)
            ping(app, f"nobody-{tag()}@{HOSTNAME}", 0.01)
            continue
        now = time.monotonic()
        for reply in replies:
            for node in reply:
                if node in waiting:
                    waiting.discard(node)
                    answered[node] = now
    return answered


# Figures


def median(values):
    values = sorted(values)
    if not values:
        return math.nan
    n = len(values)
    mid = n // 2
    return values[mid] if n % 2 else (values[mid - 1] + values[mid]) / 2


def p90(values):
    """Nearest-rank 90th percentile."""
    values = sorted(values)
    if not values:
        return math.nan
    return values[max(0, math.ceil(0.9 * len(values)) - 1)]


def verdict(ok, measured=True):
    """PASS or MISS; "not measured" for a figure this run skipped (a NaN's
    comparison is False, which is no MISS)."""
    if not measured:
        return "not measured"
    return "PASS" if ok else "MISS"


def table(header, rows):
    """Print C{rows} (lists of str) under C{header} in aligned columns."""
    rows = [list(map(str, header))] + [list(map(str, r)) for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for n, row in enumerate(rows):
        print("  " + "  ".join(c.rjust(w) if i else c.ljust(w)
                               for i, (c, w) in enumerate(zip(row, widths))))
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))
