"""The system tools some tests drive, and what such a test does without one.

Not a test module.  Chromium (the admin page in a real browser), promtool
(the metrics' names), systemd-analyze and systemd-socket-activate (the
units) come from Debian packages that ``bin/ensure-test-tools`` installs.
Where one is missing, L{need} skips the test, naming the package; when
C{CYME_REQUIRE_TOOLS=1} (which ``.ci/run`` sets) it fails it instead, so
that CI cannot pass with these tests left unrun.
"""

import os
import shutil

from twisted.trial.unittest import FailTest, SkipTest

#: The environment variable that turns a missing tool into a failure.
REQUIRE = "CYME_REQUIRE_TOOLS"


def need(name, package, environ=None):
    """
    The path of the command C{name}; else a skip (a failure when
    C{environ}, the process's by default, has C{CYME_REQUIRE_TOOLS=1}).
    """
    path = shutil.which(name)
    if path is not None:
        return path
    environ = os.environ if environ is None else environ
    why = f"{name} is not installed (Debian package {package})"
    if environ.get(REQUIRE, "") == "1":
        raise FailTest(f"{why}, and {REQUIRE}=1 requires it")
    raise SkipTest(why)
