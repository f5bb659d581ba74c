"""The local HTTP target the benchmarks' queued URLs request.

One server for every benchmark that queues URLs: it answers ``ok`` after
C{delay} seconds (0: at once) and remembers the C{n} of each request's
query, so a benchmark can check that every URL it queued was requested.
"""

import http.server
import threading
import time
import urllib.parse


class Target(http.server.ThreadingHTTPServer):
    """Serves in a daemon thread from construction; C{close()} stops it."""

    daemon_threads = True

    def __init__(self, delay=0.0):
        self.delay = delay
        self.seen = set()
        super().__init__(("127.0.0.1", 0), _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def close(self):
        self.shutdown()
        self.server_close()


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.server.delay:
            time.sleep(self.server.delay)
        n = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query).get("n")
        if n and n[0].isdigit():
            self.server.seen.add(int(n[0]))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass  # one line per task would drown the benchmark's figures
