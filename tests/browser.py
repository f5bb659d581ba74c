"""Debian's Chromium, headless, driven through the DevTools protocol.

Not a test module: the helper of the admin page's browser test.  The
protocol runs over the pipe Chromium opens with C{--remote-debugging-pipe}
(commands in on its fd 3, answers and events out on its fd 4, each a JSON
message ended by a NUL byte), so no port is opened and no WebSocket
library is needed; it is the protocol DevTools and Playwright speak.
L{Chromium} sends commands (a Deferred of each result), keeps the page's
console errors, exceptions and error log entries, and writes screenshots.
"""

import base64
import json
import os

from twisted.internet import defer, protocol, reactor

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-pipe", "--window-size=1400,1000"]


class Chromium(protocol.ProcessProtocol):
    """One headless browser and one page of it (L{open_page})."""

    def __init__(self):
        self._buffer = b""
        self._next = 0
        self._waiting = {}
        self._listeners = {}
        self.session = None
        #: What the page said went wrong: console errors, exceptions, log errors.
        self.errors = []
        self.output = b""
        self.ended = defer.Deferred()

    @classmethod
    def start(cls, executable, profile):
        """The browser C{executable} with a fresh profile in C{profile}."""
        browser = cls()
        reactor.spawnProcess(
            browser, executable, [executable, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            env=dict(os.environ), childFDs={0: "w", 1: "r", 2: "r", 3: "w", 4: "r"})
        return browser

    # The pipe

    def childDataReceived(self, fd, data):
        if fd != 4:
            self.output = (self.output + data)[-20000:]
            return
        self._buffer += data
        while b"\0" in self._buffer:
            raw, self._buffer = self._buffer.split(b"\0", 1)
            self._message(json.loads(raw))

    def processEnded(self, reason):
        for d in self._waiting.values():
            d.errback(RuntimeError(f"chromium ended: {self.output[-2000:]!r}"))
        self._waiting.clear()
        self.ended.callback(None)

    def _message(self, message):
        if "id" in message:
            d = self._waiting.pop(message["id"], None)
            if d is None:
                return
            if "error" in message:
                d.errback(RuntimeError(f"{message['error']}"))
            else:
                d.callback(message.get("result", {}))
            return
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            self.errors.append(("console", [a.get("value", a.get("description"))
                                            for a in params.get("args", [])]))
        elif method == "Runtime.exceptionThrown":
            self.errors.append(("exception", params.get("exceptionDetails")))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            self.errors.append(("log", params["entry"].get("text"), params["entry"].get("url")))
        for listener in self._listeners.pop(method, []):
            listener.callback(params)

    def send(self, method, params=None, session=True):
        """A Deferred of the result of command C{method} (to the page's session)."""
        self._next += 1
        message = {"id": self._next, "method": method, "params": params or {}}
        if session and self.session is not None:
            message["sessionId"] = self.session
        d = self._waiting[self._next] = defer.Deferred()
        self.transport.writeToChild(3, json.dumps(message).encode() + b"\0")
        return d

    def next_event(self, method):
        """A Deferred of the params of the next event C{method}."""
        d = defer.Deferred()
        self._listeners.setdefault(method, []).append(d)
        return d

    # The page

    async def open_page(self):
        target = await self.send("Target.createTarget", {"url": "about:blank"}, session=False)
        attached = await self.send("Target.attachToTarget",
                                   {"targetId": target["targetId"], "flatten": True},
                                   session=False)
        self.session = attached["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            await self.send(f"{domain}.enable")

    async def navigate(self, url):
        loaded = self.next_event("Page.loadEventFired")
        await self.send("Page.navigate", {"url": url})
        await loaded

    async def evaluate(self, expression):
        """The value of C{expression} in the page (awaited if a promise)."""
        result = await self.send("Runtime.evaluate", {
            "expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def screenshot(self, path):
        shot = await self.send("Page.captureScreenshot", {"format": "png"})
        with open(path, "wb") as f:
            f.write(base64.b64decode(shot["data"]))

    async def close(self):
        """Close the browser (KILL if it has not ended within 5 s)."""
        if self.transport is None or self.ended.called:
            return
        self.send("Browser.close", session=False).addErrback(lambda f: None)
        timer = reactor.callLater(5, self.transport.signalProcess, "KILL")
        await self.ended
        if timer.active():
            timer.cancel()
