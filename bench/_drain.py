"""Consume a queue as fast as it fills, as the workers of a fleet that keeps up.

    python bench/_drain.py <broker url> <queue>

Runs until terminated.  Prints ``draining`` once it consumes, then acks
what it got every few milliseconds in one ``multiple`` ack, so that it
takes little of the machine from what the benchmark measures.
"""

import sys
import time
from urllib.parse import unquote, urlsplit

import amqp


def main(url, queue):
    parts = urlsplit(url)
    connection = amqp.Connection(
        host=f"{parts.hostname or '127.0.0.1'}:{parts.port or 5672}",
        userid=unquote(parts.username or "guest"),
        password=unquote(parts.password or "guest"),
        virtual_host=unquote(parts.path[1:]) or "/",
    )
    connection.connect()
    channel = connection.channel()
    channel.basic_qos(0, 2000, False)
    unacked = []

    channel.basic_consume(queue, callback=lambda message: unacked.append(message.delivery_tag))
    print("draining", flush=True)
    while True:
        deadline = time.monotonic() + 0.005
        while time.monotonic() < deadline:
            try:
                connection.drain_events(timeout=0.005)
            except TimeoutError:
                break
        if unacked:
            channel.basic_ack(unacked[-1], multiple=True)
            unacked.clear()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
