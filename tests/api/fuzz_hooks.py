"""Schemathesis hooks of tests/api/test_fuzz.py (loaded by SCHEMATHESIS_HOOKS):
every broker a generated body names stays in the run's virtual host.

A broker named by its fields (C{hostname}, or C{broker} as an object) takes
vhost C{/} when the body leaves the vhost out, and the dictionaries of the
fuzz run only replace fields that were generated: a generated app then
had the shared broker's C{/} vhost.  This sets the vhost such a body
lacks (C{CYME_FUZZ_VHOST}) and keeps a broker object's host on loopback.
"""

import os

import schemathesis

LOOPBACK = ("127.0.0.1", "localhost")


def _absent(value):
    return value is None or value == ""


@schemathesis.hook
def map_case(context, case):
    body = case.body
    if not isinstance(body, dict):
        return case
    vhost = os.environ["CYME_FUZZ_VHOST"]
    if not _absent(body.get("hostname")) and _absent(body.get("virtual_host")) \
            and _absent(body.get("vhost")):
        body["virtual_host"] = vhost
    broker = body.get("broker")
    if isinstance(broker, dict):
        if _absent(broker.get("virtual_host")):
            broker["virtual_host"] = vhost
        if isinstance(broker.get("hostname"), str) and broker["hostname"] not in LOOPBACK:
            broker["hostname"] = LOOPBACK[0]
    return case
