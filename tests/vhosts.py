"""The virtual hosts of a test run on the shared RabbitMQ.

Whatever the tests' branches and workers declare (``dq.<name>`` queues,
task exchanges, result queues, the cluster bus) goes in a virtual host of
the run, ``<prefix>-<pid>``, deleted at exit, never in the broker's ``/``
that people use: a leftover ``tasks`` exchange of another type there
would break their first walkthrough.  Without ``rabbitmqctl``, ``/``.
"""

import atexit
import os
import re
import shutil
import subprocess

from cyme.supervision.workers import ProcessTable

HOST, PORT = "127.0.0.1", 5672
RABBITMQCTL = shutil.which("rabbitmqctl")

_vhosts = {}


def rabbitmqctl_now(*args):
    """C{(exit code, output)} of C{rabbitmqctl args}, blocking."""
    done = subprocess.run(
        [RABBITMQCTL, *args], capture_output=True, timeout=120, check=False
    )
    return done.returncode, (done.stdout + done.stderr).decode("utf-8", "replace")


def run_vhost(prefix):
    """
    The virtual host of this run for C{prefix}, made at its first use (the
    ones of runs that died are deleted then) and deleted at exit.
    """
    if prefix in _vhosts:
        return _vhosts[prefix]
    if RABBITMQCTL is None:
        _vhosts[prefix] = "/"
        return "/"
    code, out = rabbitmqctl_now("list_vhosts", "--quiet", "--no-table-headers")
    if code != 0:
        raise AssertionError(f"rabbitmqctl list_vhosts failed:\n{out}")
    for name in out.split():
        match = re.fullmatch(re.escape(prefix) + r"-(\d+)", name)
        if match and not ProcessTable().alive(int(match.group(1))):
            rabbitmqctl_now("delete_vhost", name)
    vhost = f"{prefix}-{os.getpid()}"
    if vhost not in out.split():
        code, out = rabbitmqctl_now("add_vhost", vhost)
        if code != 0 and "already exists" not in out:
            raise AssertionError(f"rabbitmqctl add_vhost {vhost} failed:\n{out}")
        atexit.register(delete_vhost, vhost)
    code, out = rabbitmqctl_now("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    if code != 0:
        raise AssertionError(f"rabbitmqctl set_permissions failed:\n{out}")
    _vhosts[prefix] = vhost
    return vhost


def made_vhost(prefix):
    """The virtual host L{run_vhost} gave for C{prefix}; None before it was asked."""
    return _vhosts.get(prefix)


def delete_vhost(vhost):
    subprocess.run(
        [RABBITMQCTL, "delete_vhost", vhost],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60, check=False,
    )


def broker_url(vhost):
    return f"amqp://guest:guest@{HOST}:{PORT}/{'%2F' if vhost == '/' else vhost}"
