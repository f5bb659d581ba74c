"""An open-loop HTTP load at a fixed rate, for latency at a given throughput.

wrk sends the next request as soon as the last one is answered, so its
latency is that of a saturated server.  Here requests are due on a fixed
schedule (``rate`` per second, spread evenly over ``connections``
keep-alive connections) and each latency counts from the moment the
request was due, not from when it could be sent: a stalled server is
charged for every request it held up (no coordinated omission).

One thread, one ``selectors`` loop, raw sockets: a few tens of
microseconds of CPU per request, so that the client takes little of the
machine from the server it measures.
"""

import selectors
import socket
import time


class _Connection:
    def __init__(self, address, request):
        self.sock = socket.create_connection(address)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.request = request
        self.due = []  # times of requests due but not sent yet
        self.sent_due = None  # due time of the request in flight
        self.buffer = b""

    def send(self, due):
        self.sent_due = due
        self.sock.sendall(self.request)

    def receive(self):
        """The status of a complete response, or None while it is partial."""
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buffer += chunk
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return None
        head = self.buffer[:head_end].split(b"\r\n")
        length = 0
        for line in head[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        end = head_end + 4 + length
        if len(self.buffer) < end:
            return None
        self.buffer = self.buffer[end:]
        return int(head[0].split()[1])


def paced_get(host, port, path, rate, seconds, connections=16):
    """
    GET C{path} C{rate} times a second for C{seconds}.

    Returns C{(latencies, statuses)}: the seconds from each request's due
    time to its complete response, and the count of each status code.
    """
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n"
    ).encode("latin-1")
    conns = [_Connection((host, port), request) for _ in range(connections)]
    selector = selectors.DefaultSelector()
    for conn in conns:
        selector.register(conn.sock, selectors.EVENT_READ, conn)
    latencies = []
    statuses = {}
    total = int(rate * seconds)
    start = time.perf_counter() + 0.05
    issued = 0
    outstanding = 0
    try:
        while issued < total or outstanding:
            now = time.perf_counter()
            # Hand every request now due to its connection (round robin).
            while issued < total and start + issued / rate <= now:
                conn = conns[issued % connections]
                conn.due.append(start + issued / rate)
                issued += 1
                outstanding += 1
            for conn in conns:
                if conn.sent_due is None and conn.due:
                    conn.send(conn.due.pop(0))
            wait = (start + issued / rate - now) if issued < total else 1.0
            for key, _ in selector.select(max(0.0, wait)):
                conn = key.data
                status = conn.receive()
                if status is None:
                    continue
                latencies.append(time.perf_counter() - conn.sent_due)
                statuses[status] = statuses.get(status, 0) + 1
                conn.sent_due = None
                outstanding -= 1
                if conn.due:
                    conn.send(conn.due.pop(0))
    finally:
        selector.close()
        for conn in conns:
            conn.sock.close()
    return latencies, statuses


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]
