"""Tests for cyme.cli.output: what ``cyme`` prints of an answer."""

import json

from twisted.trial.unittest import SynchronousTestCase

from cyme.cli.output import render, table

APP = {"name": "foo", "broker": {"hostname": "127.0.0.1", "port": 5672, "userid": "guest",
                                 "password": "guest", "virtual_host": "/"},
       "arguments": "", "extra_config": {"task_acks_late": True}, "allowed_hosts": [],
       "task_timeout": 60.0}


class RenderTests(SynchronousTestCase):
    def test_json_is_the_answer_unchanged(self):
        for answer in (APP, ["foo", "bar"], {"ok": "ok"}, [], {"max": 4, "min": 1}):
            self.assertEqual(json.loads(render(answer, "json")), answer)
            self.assertNotIn("\n", render(answer, "json"))

    def test_a_record_is_aligned_fields_and_never_shows_a_password(self):
        text = render(APP, "pretty")
        lines = text.splitlines()
        self.assertEqual([line.split() for line in lines], [
            ["name", "foo"],
            ["broker", "amqp://guest@127.0.0.1:5672//"],
            ["arguments", "-"],
            ["extra_config.task_acks_late", "yes"],
            ["allowed_hosts", "-"],
            ["task_timeout", "60"],
        ])
        # The values start in one column, two spaces after the longest key.
        column = len("extra_config.task_acks_late") + 2
        self.assertEqual({line[column - 2:column] for line in lines}, {"  "})
        self.assertNotIn(" ", {line[column] for line in lines})
        self.assertNotIn("guest:guest", text)

    def test_a_broker_over_tls(self):
        broker = {**APP["broker"], "ssl": True, "port": 5671, "virtual_host": "ops/a"}
        self.assertEqual(render({"broker": broker}, "pretty"),
                         "broker  amqps://guest@127.0.0.1:5671/ops%2Fa")
        self.assertEqual(render({"broker": {**broker, "ssl": False}}, "pretty"),
                         "broker  amqp://guest@127.0.0.1:5671/ops%2Fa")

    def test_a_listing_is_one_name_a_line(self):
        self.assertEqual(render(["foo", "bar"], "pretty"), "foo\nbar")
        self.assertEqual(render([], "pretty"), "")
        self.assertEqual(render({"ok": "ok"}, "pretty"), "ok")

    def test_moments_are_times_and_lists_are_joined(self):
        text = render({"live": {"queues": ["dq.w1", "tasks"], "seen_at": 0.0}}, "pretty")
        self.assertEqual(text.splitlines(), ["live.queues   dq.w1,tasks",
                                             "live.seen_at  1970-01-01 00:00:00Z"])

    def test_records_are_a_table(self):
        text = render([{"name": "ci", "scopes": ["read"]}, {"name": "ops", "scopes": []}],
                      "pretty")
        self.assertEqual(text.splitlines(), ["NAME  SCOPES", "ci    read", "ops   -"])

    def test_a_value_stays_on_its_line_and_long_ones_are_cut(self):
        text = table(["name", "last_error"], [["w1", "exit 1:\nTraceback\n  boom"]],
                     {"last_error": 12})
        self.assertEqual(text.splitlines(), ["NAME  LAST_ERROR", "w1    exit 1: Tra…"])
