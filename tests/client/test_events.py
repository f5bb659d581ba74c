"""The client's reading of the event stream: messages, and reconnecting from
the last event of each branch."""

import contextlib
import json

from twisted.trial.unittest import SynchronousTestCase

from cyme.client.errors import ConnectionFailed, Unauthorized
from cyme.client.events import follow, messages


def message(event_id, data, kind=None):
    lines = ([f"event: {kind}"] if kind else []) + ([f"id: {event_id}"] if event_id else [])
    return [line + "\n" for line in lines] + [f"data: {json.dumps(data)}\n", "\n"]


class StreamOnce:
    """A transport whose streams give C{answers} in turn (lines, or an error)."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.asked = []

    def stream(self, target, params=None, headers=None, silence=60.0):
        self.asked.append((target, dict(params), dict(headers)))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return contextlib.nullcontext(iter(answer))


class MessagesTests(SynchronousTestCase):
    def test_messages_comments_and_multiline_data(self):
        lines = [": events of the cluster\n", "retry: 2000\n", "\n",
                 "id: b1:5\n", "data: {\"a\":\n", "data: 1}\n", "\r\n",
                 "event: reset\n", "data: {}\n", "\n", "data: incomplete\n"]
        self.assertEqual(list(messages(lines)), [
            ("message", "b1:5", '{"a":\n1}'), ("reset", None, "{}")])


class FollowTests(SynchronousTestCase):
    def test_reconnects_after_the_last_event_of_each_branch(self):
        first = (message("b1:5", {"type": "created"}) + message("b2:9", {"type": "ready"})
                 + message("b1:6", {"type": "started"}))
        second = message(None, {"type": "reset", "branch": "b2"}, "reset") + message(
            "b1:7", {"type": "ready"})
        transport = StreamOnce(first, ConnectionFailed("lost"), second)
        stream = follow(transport, app="foo", types=["ready", "created"], last=5,
                        sleep=lambda s: None)
        got = [next(stream)["type"] for _ in range(5)]
        self.assertEqual(got, ["created", "ready", "started", "reset", "ready"])
        (path, params, headers), (_, _, again), (_, params2, third) = transport.asked
        self.assertEqual(path, "/events/")
        self.assertEqual(params, {"app": "foo", "type": "ready,created", "last": 5})
        self.assertNotIn("Last-Event-ID", headers)
        self.assertEqual(again["Last-Event-ID"], "b1:6,b2:9")
        self.assertIsNone(params2["last"])  # not the latest again: what followed

    def test_a_first_connection_that_fails_is_raised_at_once(self):
        # A mistyped URL or a branch down: an error, not a wait without end.
        slept = []
        transport = StreamOnce(ConnectionFailed("cannot reach"), message("b1:1", {}))
        stream = follow(transport, sleep=slept.append)
        self.assertRaises(ConnectionFailed, next, stream)
        self.assertEqual((len(transport.asked), slept), (1, []))

    def test_once_open_a_stream_is_reopened_until_the_branch_is_back(self):
        transport = StreamOnce(message("b1:1", {"type": "ready"}), ConnectionFailed("down"),
                               ConnectionFailed("still down"), message("b1:2", {"type": "started"}))
        slept = []
        stream = follow(transport, sleep=slept.append)
        self.assertEqual([next(stream)["type"], next(stream)["type"]], ["ready", "started"])
        self.assertEqual((len(transport.asked), slept), (4, [1.0, 1.0, 1.0]))

    def test_an_error_of_the_api_is_raised(self):
        stream = follow(StreamOnce(Unauthorized("no token", 401)), sleep=lambda s: None)
        self.assertRaises(Unauthorized, next, stream)

    def test_without_reconnecting_a_lost_connection_is_raised(self):
        stream = follow(StreamOnce(ConnectionFailed("lost")), reconnect=False)
        self.assertRaises(ConnectionFailed, next, stream)
