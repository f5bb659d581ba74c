"""The admin page in a real browser: Debian's Chromium, headless, driven
through the DevTools protocol (L{tests.browser}), against a real branch
that trusts nobody without a token (the browser logs in: its cookie goes
with the page's event stream and reads).  The page loads without a console
error, shows a created instance turning running, a killed worker
restarted and a stopped one (SIGSTOP) unresponsive, all without
reloading; a screenshot goes in the test's directory (and in
C{$CYME_SCREENSHOTS} if set).  Skipped, with the reason, without Chromium
(failed under CI: L{tests.systemtools.need}) or a broker."""

import json
import os
import shutil
import signal

from twisted.internet import defer
from twisted.internet.utils import getProcessOutputAndValue

from tests.browser import Chromium
from tests.integration import IntegrationTestCase
from tests.systemtools import need
from tests.test_daemon import CYME_BRANCH, deferred

#: Every change of an instance row's state the page showed, in order.
WATCH_ROWS = """
window.seen = [];
new MutationObserver(function () {
  document.querySelectorAll("#instances tbody tr").forEach(function (row) {
    var said = row.dataset.instance + "=" + (row.cells[3] ? row.cells[3].textContent : "");
    if (window.seen[window.seen.length - 1] !== said) { window.seen.push(said); }
  });
}).observe(document.getElementById("instances"),
           {subtree: true, childList: true, characterData: true});
true
"""


class AdminPageTests(IntegrationTestCase):
    timeout = 180
    vhost_prefix = "cyme-events"

    async def token(self, root, name, scope):
        out, err, code = await getProcessOutputAndValue(
            CYME_BRANCH, ["token", "create", "--name", name, "--scope", scope, "-D", root],
            env=dict(os.environ, XDG_CONFIG_HOME=self.path("config")))
        self.assertEqual(code, 0, err)
        return out.decode().strip()

    async def seen(self, browser, want, since, what, timeout=40):
        """
        Wait for the page to have shown C{want} (a row's state) at index
        C{since} or later; the index after it.
        """
        async def probe():
            seen = await browser.evaluate("window.seen")
            return seen.index(want, since) + 1 if want in seen[since:] else None
        try:
            return await self.poll(probe, timeout, what)
        except self.failureException:
            self.fail(f"{what}; the page showed: {await browser.evaluate('window.seen')}")

    @deferred
    async def test_the_admin_page_live_in_a_browser(self):
        chromium = need("chromium", "chromium")
        root = self.path("branch-adm")
        os.makedirs(root)
        reader = await self.token(root, "browser", "read")
        writer = await self.token(root, "ops", "read,write")
        branch = await self.start_branch("adm", "--no-trust-loopback", root=root)
        auth = {"Authorization": [f"Bearer {writer}"]}
        await self.ok("PUT", branch, "/foo/", headers=auth)

        browser = Chromium.start(chromium, self.path("chromium-profile"))
        self.addCleanup(lambda: defer.ensureDeferred(browser.close()))
        await browser.open_page()
        # Not logged in: the page sends the person to the login form.
        await browser.navigate(branch.url("/admin/"))
        self.assertTrue((await browser.evaluate("location.pathname")).startswith("/login"))
        loaded = browser.next_event("Page.loadEventFired")
        await browser.evaluate(
            f"document.querySelector('input[name=token]').value = {json.dumps(reader)};"
            "document.querySelector('form').submit(); true")
        await loaded
        self.assertEqual(await browser.evaluate("location.pathname"), "/admin/")
        await self.poll(lambda: defer.ensureDeferred(browser.evaluate(
            "document.getElementById('live').textContent === 'live' || null")), 20,
            "the page follows the event stream")
        self.assertIn("foo", await browser.evaluate("document.getElementById('apps').innerText"))
        await browser.evaluate(WATCH_ROWS)

        # Created (without waiting for it): its row appears, then running
        # (a forked worker may be up before the page first reads the row,
        # which it then shows running at once).
        await self.ok("PUT", branch, "/foo/instances/!/w1/", expected=(202,),
                      data={"pool": "solo"}, headers=auth)
        mark = await self.seen(browser, "w1=running", 0, "w1 running")
        code, shown = await self.request("GET", branch.url("/foo/instances/w1/"), headers=auth)
        self.assertEqual(code, 200, shown)

        # Killed: stopped, started again, running.
        os.kill(shown["pid"], signal.SIGKILL)
        mark = await self.seen(browser, "w1=stopped", mark, "w1 stopped after SIGKILL")
        mark = await self.seen(browser, "w1=running", mark, "w1 running again")

        # Stopped (SIGSTOP): unresponsive, then replaced.
        code, shown = await self.request("GET", branch.url("/foo/instances/w1/"), headers=auth)
        pid = shown["pid"]
        os.kill(pid, signal.SIGSTOP)
        self.addCleanup(_signal, pid, signal.SIGCONT)
        mark = await self.seen(browser, "w1=unresponsive", mark, "w1 unresponsive")
        events = await browser.evaluate("document.getElementById('events').innerText")
        self.assertIn(f"unresponsive adm / foo / w1: pid {pid} did not answer ping", events)
        self.assertIn("restarted adm / foo / w1", events)
        shot = self.path("admin.png")
        await browser.screenshot(shot)
        mark = await self.seen(browser, "w1=running", mark, "w1 replaced and running")
        await browser.screenshot(self.path("admin-after.png"))
        with open(shot, "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
        if os.environ.get("CYME_SCREENSHOTS"):
            os.makedirs(os.environ["CYME_SCREENSHOTS"], exist_ok=True)
            for name in ("admin.png", "admin-after.png"):
                shutil.copy(self.path(name), os.environ["CYME_SCREENSHOTS"])
        # Its drift cell says what is now (nothing: running as asked).
        self.assertEqual(await browser.evaluate(
            "document.querySelector('#instances tr[data-instance=w1]').cells[3].textContent"),
            "running")
        self.assertEqual(browser.errors, [], browser.output[-3000:])


def _signal(pid, signum):
    try:
        os.kill(pid, signum)
    except OSError:
        pass
