"""A state file of the version before issue 10 that this one refuses to
start from (cyme.state.store, cyme.state.models): the README says such a
file loads, and only what its bad values concern is not started."""

import json

from twisted.trial.unittest import SynchronousTestCase

from cyme.state.models import App
from cyme.state.store import SCHEMA_VERSION, JSONFileStore


class OlderAllowedHostsTests(SynchronousTestCase):
    """
    The version before the fence took as C{allowed_hosts} anything its
    pattern matched (C{(\\*\\.)?name(:port)?} or C{[hex:.](:port)?}), with
    the same schema version: an entry such as C{[1:2]} (a mistyped IPv6
    address) was stored, and this version calls the whole file corrupt and
    does not start, with every app and instance of the branch.
    """

    def test_a_state_file_with_an_older_allowed_hosts_entry_loads(self):
        path = self.mktemp()
        app = App(name="foo").to_json()
        other = App(name="bar").to_json()
        for entry in ("[1:2]", "[:]", "[...]"):
            with self.subTest(entry=entry):
                with open(path, "w") as f:
                    json.dump({"schema": SCHEMA_VERSION, "apps": {
                        "foo": {**app, "allowed_hosts": [entry, "api.example.com"]},
                        "bar": other,
                    }, "queues": {}, "instances": {}}, f)
                store = JSONFileStore(path)
                self.assertEqual(sorted(a.name for a in store.apps()), ["bar", "foo"])
