"""Prometheus' own check of a ``/metrics`` page: ``promtool check metrics``.

Not a test module.  promtool comes with Debian's ``prometheus`` package
(``apt-get install prometheus``); a test that needs it is skipped, saying
so, where it is not installed (failed under CI: L{tests.systemtools.need}).
"""

import subprocess

from tests.systemtools import need


def promtool():
    """The path of promtool, or a skip naming the package that brings it."""
    return need("promtool", "prometheus")


def check_metrics(page):
    """
    What C{promtool check metrics} says of C{page} (bytes): its exit status
    and its complaints (each problem on a line; none for a page that
    follows Prometheus' naming and format conventions).
    """
    done = subprocess.run([promtool(), "check", "metrics"], input=page,
                          capture_output=True, timeout=30, check=False)
    return done.returncode, (done.stdout + done.stderr).decode("utf-8", "replace").strip()
