"""Tests for cyme.cli.status: ``cyme status`` marks what runs unlike what was asked."""

from twisted.trial.unittest import SynchronousTestCase

from cyme.cli.status import pretty, row, rows


def instance(name="w1", **changes):
    """An instance's JSON as GET /<app>/instances/<name>/ answers it: all as asked."""
    data = {"name": name, "app": "foo", "queues": ["tasks"], "max_concurrency": 4,
            "min_concurrency": 1, "is_enabled": True, "branch": "b1", "state": "running",
            "pid": 4242, "restarts": 0, "last_error": None, "quarantined_until": None,
            "live": {"queues": [f"dq.{name}", "tasks"], "max": 4, "min": 1, "seen_at": 1.0}}
    data.update(changes)
    return data


class RowTests(SynchronousTestCase):
    def test_as_asked(self):
        r = row(instance())
        self.assertEqual(r["differs"], [])
        self.assertEqual((r["wanted"], r["state"], r["live_queues"]),
                         ("running", "running", ["tasks"]))

    def test_each_difference_is_named(self):
        live = {"queues": ["dq.w1"], "max": 2, "min": 1, "seen_at": 1.0}
        self.assertEqual(row(instance(live=live))["differs"], ["queues", "autoscale"])
        self.assertEqual(row(instance(state="quarantined", pid=None))["differs"], ["state"])
        self.assertEqual(row(instance(is_enabled=False))["differs"], ["state"])
        self.assertEqual(row(instance(is_enabled=False, state="stopped"))["differs"], [])

    def test_what_is_not_known_is_not_judged(self):
        # No answer from the worker yet, or a pool without autoscale (solo).
        self.assertEqual(row(instance(live=None))["differs"], [])
        solo = {"queues": ["dq.w1", "tasks"], "max": None, "min": None, "seen_at": 1.0}
        self.assertEqual(row(instance(live=solo))["differs"], [])

    def test_an_instance_of_an_offline_branch(self):
        r = row({"name": "w9", "app": "foo", "branch": "b2", "state": "offline",
                 "last_heartbeat": 1.0})
        self.assertEqual((r["state"], r["wanted"], r["differs"]), ("offline", None, ["state"]))

    def test_an_instance_whose_branch_did_not_answer(self):
        r = row({"name": "w9", "app": "foo", "state": "unknown",
                 "last_error": "instance w9 did not answer within 2 s"})
        self.assertEqual((r["state"], r["differs"], r["last_error"]),
                         ("unknown", ["state"], "instance w9 did not answer within 2 s"))


class PrettyTests(SynchronousTestCase):
    def test_one_line_each_the_differing_ones_marked(self):
        live = {"queues": ["dq.w2"], "max": 4, "min": 1, "seen_at": 1.0}
        found = rows([instance("w2", branch="b2", live=live),
                      instance("w1", last_error="exit 1\nboom")])
        text = pretty(["b1", "b2"], found).splitlines()
        self.assertEqual(text[0], "branches: b1, b2")
        self.assertEqual(text[1].split(), ["INSTANCE", "APP", "BRANCH", "WANTED", "STATE", "PID",
                                           "QUEUES", "AUTOSCALE", "RESTARTS", "LAST_ERROR"])
        self.assertEqual(text[2].split(), ["w1", "foo", "b1", "running", "running", "4242",
                                           "tasks", "4,1", "0", "exit", "1", "boom"])
        self.assertEqual(text[3].split(), ["*", "w2", "foo", "b2", "running", "running", "4242",
                                           "tasks", "(live:", "-)", "4,1", "0", "-"])
        self.assertEqual(text[4], "* what runs differs from what was asked")
        self.assertEqual(len(text), 5)

    def test_no_instances(self):
        self.assertEqual(pretty([], []), "branches: none live\nno instances")
