"""Worker output in the branch's log: how many lines, and how late.

A short session on one branch (its default ``--sup-interval`` of 5 s):
create an app, a queue and two instances consuming it, queue 10 URLs to a
local HTTP server and wait for their results, delete the instances, stop
the branch.  While it runs, the bench reads the branch's log as it grows
(every 10 ms) and notes when each line arrived.  Figures:

* lines: every line of the branch's log, and those relaying a worker's
  output (``<instance> | ...``: the lines an operator did not write
  cyme for);
* delay: for each relayed line that carries Celery's own timestamp
  (``[2026-01-02 03:04:05,678: INFO/MainProcess] ...``), when it arrived
  in the branch's log minus that timestamp: median, p90 and max.

Run it on two trees (``--cyme-branch`` of a baseline checkout) for a before
and after::

    .venv/bin/python bench/worker_output.py [--cyme-branch PATH] [-- branch options]
"""

import argparse
import datetime
import os
import re
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as c  # noqa: E402
from _target import Target  # noqa: E402

# "<instance> | <line>" after twistd's "time [namespace#level] " prefix, or
# a JSON object's "message" (--log-format json).
_RELAYED = re.compile(r"(?:\] |\"message\": \")[0-9a-z-]+ \| ")
_CELERY_TIME = re.compile(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): [A-Z]+/")


class LogReader(threading.Thread):
    """Reads a growing file every 10 ms; keeps C{(arrival, line)}."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.path = path
        self.lines = []
        self.done = threading.Event()

    def run(self):
        offset, partial = 0, b""
        while True:
            finished = self.done.is_set()
            try:
                with open(self.path, "rb") as f:
                    f.seek(offset)
                    data = f.read()
            except OSError:
                data = b""
            now = time.time()
            offset += len(data)
            *whole, partial = (partial + data).split(b"\n")
            self.lines += [(now, line.decode("utf-8", "replace")) for line in whole]
            if finished:
                return
            time.sleep(0.01)


def session(branch, target_port, tag):
    c.ensure_app(branch)
    status, body = branch.request("PUT", f"/{c.APP}/queues/tasks/")
    assert status in (200, 201), (status, body)
    names = [f"out{tag}-{n}" for n in range(2)]
    for name in names:
        status, body = branch.request("PUT", f"/{c.APP}/instances/{name}/", timeout=30)
        assert status in (200, 201), (status, body)
        status, body = branch.request("PUT", f"/{c.APP}/instances/{name}/queues/tasks/")
        assert status in (200, 201), (status, body)
    time.sleep(6)  # a tick: the workers consume the queue
    ids = []
    for n in range(10):
        status, body = branch.request(
            "GET", f"/{c.APP}/queue/tasks/http://127.0.0.1:{target_port}/t{n}")
        assert status == 202, (status, body)
        ids.append(body["uuid"])
    for task_id in ids:
        status, body = branch.request("GET", f"/{c.APP}/query/{task_id}/wait/?timeout=30",
                                      timeout=35)
        assert status == 200, (status, body)
    time.sleep(2)
    for name in names:
        branch.request("DELETE", f"/{c.APP}/instances/{name}/", timeout=30)
    for name in names:
        branch.wait_gone(name)
    time.sleep(6)  # the last words of the workers reach the log


def figures(lines):
    relayed = [(t, line) for t, line in lines if _RELAYED.search(line)]
    delays = []
    for arrival, line in relayed:
        found = _CELERY_TIME.search(line)
        if found:
            written = datetime.datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f")
            delays.append(arrival - written.timestamp())
    return len(lines), len(relayed), sorted(delays)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cyme-branch", default=None,
                        help="the cyme-branch to run (default: this tree's)")
    c.add_branch_options(parser)
    args = parser.parse_args()
    c.install_limits(300)
    server = Target()
    branch = c.Branch("output", *args.branch_options, keep_root=args.keep,
                      executable=args.cyme_branch)
    reader = LogReader(branch.log_path)
    reader.start()
    try:
        branch.start()
        session(branch, server.server_address[1], c.tag())
    finally:
        branch.stop()
        reader.done.set()
        reader.join(5)
        server.close()
    total, relayed, delays = figures(reader.lines)
    print(c.machine())
    print(f"log lines: {total}, relayed worker output: {relayed}")
    if delays:
        p90 = delays[int(0.9 * (len(delays) - 1))]
        print(f"delay of {len(delays)} timestamped relayed lines: median "
              f"{statistics.median(delays):.2f} s, p90 {p90:.2f} s, max {delays[-1]:.2f} s")


if __name__ == "__main__":
    c.run(main)
