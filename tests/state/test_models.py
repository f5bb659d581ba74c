"""Tests for cyme.state.models: validation, defaults and JSON round trips."""

import attrs
from twisted.trial.unittest import SynchronousTestCase

from cyme.errors import BadRequest, Conflict, NotFound
from cyme.state.models import (
    DEFAULT_BROKER_URL,
    EXCHANGE_TYPES,
    RESERVED_APP_NAMES,
    App,
    Broker,
    Instance,
    Queue,
    check_app_name,
    check_hostname,
    check_name,
    check_seconds,
    reserved_apps,
)

#: The broker the original Cyme shows for an app created without broker
#: parameters, and whether it is over TLS (cyme's own field).
ORIGINAL_BROKER = {
    "password": "guest",
    "hostname": "127.0.0.1",
    "userid": "guest",
    "port": 5672,
    "virtual_host": "/",
    "ssl": False,
}

GOOD_NAMES = ["a", "A", "0", "_x", "w1.example.com", "tasks-2_b.c", "a" * 64, "x."]
BAD_NAMES = [
    "",
    ".",
    "..",
    ".hidden",
    "-x",
    "a..b",
    "../x",
    "x/..",
    "a/b",
    "a\\b",
    "a b",
    "a\n",
    "a\0",
    "caf\u00e9",
    "a" * 65,
    "%2e%2e",
]
WRONG_TYPES = [5, None, b"foo", ["a"], {"a": 1}, True]


class BadRequestAssertions:
    def assertBadRequest(self, field, f, *args, **kwargs):
        """C{f(*args, **kwargs)} raises L{BadRequest} naming C{field}."""
        error = self.assertRaises(BadRequest, f, *args, **kwargs)
        self.assertEqual(error.field, field)
        self.assertEqual(error.status, 400)
        self.assertEqual(error.to_json()["field"], field)
        self.assertIsInstance(error.to_json()["error"], str)
        return error


class NameTests(BadRequestAssertions, SynchronousTestCase):
    def test_good_names(self):
        for name in GOOD_NAMES:
            self.assertEqual(check_name(name), name)
            self.assertEqual(App(name=name).name, name)
            self.assertEqual(Queue(name=name).name, name)
            self.assertEqual(Instance(name=name, app=name).name, name)

    def test_bad_names(self):
        for name in BAD_NAMES:
            with self.subTest(name=name):
                self.assertBadRequest("name", check_name, name)
                self.assertBadRequest("name", App, name=name)
                self.assertBadRequest("name", Queue, name=name)
                self.assertBadRequest("name", Instance, name=name, app="foo")
                self.assertBadRequest("app", Instance, name="w1", app=name)

    def test_wrong_types(self):
        for value in WRONG_TYPES:
            with self.subTest(value=value):
                self.assertBadRequest("name", check_name, value)
                self.assertBadRequest("name", App, name=value)
                self.assertBadRequest("name", Queue, name=value)
                self.assertBadRequest("name", Instance, name=value, app="foo")

    def test_field_is_named(self):
        self.assertBadRequest("queue", check_name, "..", "queue")

    def test_reserved_app_names(self):
        expected = {
            "ping", "admin", "branches", "metrics", "instances", "queues", "queue", "query",
            "tokens", "openapi.json", "events", "drift", "restarts", "health", "login",
        }
        self.assertEqual(RESERVED_APP_NAMES, expected)
        for name in expected:
            with self.subTest(name=name):
                error = self.assertBadRequest("name", check_app_name, name)
                self.assertIn(name, error.message)
                # Only apps sit at the root of the URL space.
                self.assertEqual(Queue(name=name).name, name)
                self.assertEqual(Instance(name=name, app="foo").name, name)
        self.assertEqual(check_app_name("foo"), "foo")

    def test_an_app_of_a_reserved_name_still_loads(self):
        # Written by an older version: the state file must load, and the
        # start warns about it (reserved_apps).
        old = App.from_json({"name": "tokens"})
        self.assertEqual(old.name, "tokens")
        self.assertEqual(reserved_apps([old, App("foo")]), ["tokens"])

    def test_reserved_words_are_case_sensitive(self):
        self.assertEqual(App(name="Ping").name, "Ping")


class SecondsTests(BadRequestAssertions, SynchronousTestCase):
    """L{check_seconds}: the one parser of durations."""

    def test_numbers_and_their_text(self):
        for value, seconds in [(5, 5.0), (2.5, 2.5), ("10", 10.0), (" 0.25 ", 0.25),
                               ("1e2", 100.0), (3600, 3600.0)]:
            self.assertEqual(check_seconds(value, "t", 3600), seconds, value)
            self.assertIsInstance(check_seconds(value, "t"), float)

    def test_not_a_duration(self):
        for value in ["", "x", "nan", "inf", "-inf", float("nan"), float("inf"), None,
                      True, False, [], {}, b"5", -1, "-0.5", 0, "0"]:
            error = self.assertBadRequest("t", check_seconds, value, "t")
            self.assertEqual(error.message, "t must be a positive number of seconds")

    def test_upper_bound(self):
        error = self.assertBadRequest("timeout", check_seconds, "300.5", "timeout", 300)
        self.assertEqual(error.message, "timeout must be a number of seconds in (0, 300]")
        self.assertEqual(check_seconds("300", "timeout", 300), 300.0)

    def test_zero_allowed(self):
        self.assertEqual(check_seconds("0", "--kill-timeout", zero=True), 0.0)
        error = self.assertBadRequest("--kill-timeout", check_seconds, "-1",
                                      "--kill-timeout", zero=True)
        self.assertEqual(error.message, "--kill-timeout must be a number of seconds")
        error = self.assertBadRequest("w", check_seconds, 11, "w", 10, zero=True)
        self.assertEqual(error.message, "w must be a number of seconds in [0, 10]")


class BrokerTests(BadRequestAssertions, SynchronousTestCase):
    def test_defaults_are_the_original_cymes(self):
        self.assertEqual(Broker().to_json(), ORIGINAL_BROKER)

    def test_round_trip(self):
        broker = Broker(
            hostname="w1", port=5673, userid="me", password="", virtual_host="prod"
        )
        self.assertEqual(Broker.from_json(broker.to_json()), broker)
        self.assertEqual(
            broker.to_json(),
            {
                "hostname": "w1",
                "port": 5673,
                "userid": "me",
                "password": "",
                "virtual_host": "prod",
                "ssl": False,
            },
        )

    def test_from_json_defaults(self):
        self.assertEqual(Broker.from_json({}), Broker())
        self.assertEqual(Broker.from_json({"hostname": "w1"}).port, 5672)

    def test_ports(self):
        self.assertEqual(Broker(port=1).port, 1)
        self.assertEqual(Broker(port=65535).port, 65535)
        self.assertEqual(Broker(port="5673").port, 5673)
        for port in [0, -1, 65536, "0", "abc", "", 5672.0, True, None, [5672]]:
            with self.subTest(port=port):
                self.assertBadRequest("port", Broker, port=port)
                self.assertBadRequest("port", Broker.from_json, {"port": port})

    def test_text_fields(self):
        for field in ["hostname", "userid", "password", "virtual_host"]:
            for value in [5, None, ["x"], "x" * 256, "a\nb"]:
                with self.subTest(field=field, value=value):
                    self.assertBadRequest(field, Broker, **{field: value})
        # A broker needs a host and a virtual host, but the credentials
        # may be empty.
        self.assertBadRequest("hostname", Broker, hostname="")
        self.assertBadRequest("virtual_host", Broker, virtual_host="")
        self.assertEqual(Broker(userid="", password="").userid, "")

    def test_from_json_refuses(self):
        self.assertBadRequest("bogus", Broker.from_json, {"bogus": 1})
        self.assertBadRequest("broker", Broker.from_json, "amqp://h//")
        self.assertBadRequest("broker", Broker.from_json, ["h"])

    def test_frozen_and_evolve_validates(self):
        broker = Broker()
        self.assertRaises(attrs.exceptions.FrozenInstanceError, setattr, broker, "port", 1)
        self.assertBadRequest("port", attrs.evolve, broker, port=0)
        self.assertEqual(attrs.evolve(broker, port="1").port, 1)

    def test_from_url_default(self):
        self.assertEqual(Broker.from_url(DEFAULT_BROKER_URL), Broker())

    def test_from_url_double_slash_is_root_vhost(self):
        broker = Broker.from_url("amqp://me:secret@w1:5673//")
        self.assertEqual(
            broker.to_json(),
            {
                "hostname": "w1",
                "port": 5673,
                "userid": "me",
                "password": "secret",
                "virtual_host": "/",
                "ssl": False,
            },
        )

    def test_from_url_vhosts(self):
        self.assertEqual(Broker.from_url("amqp://h").virtual_host, "/")
        self.assertEqual(Broker.from_url("amqp://h/").virtual_host, "/")
        self.assertEqual(Broker.from_url("amqp://h/%2F").virtual_host, "/")
        self.assertEqual(Broker.from_url("amqp://h/prod").virtual_host, "prod")
        self.assertEqual(Broker.from_url("amqp://h/a%2Fb").virtual_host, "a/b")

    def test_from_url_escapes(self):
        broker = Broker.from_url("amqp://u%40x:p%3Aw%2F%25@h:1234/v%20h")
        self.assertEqual(broker.userid, "u@x")
        self.assertEqual(broker.password, "p:w/%")
        self.assertEqual(broker.virtual_host, "v h")
        self.assertEqual(broker.port, 1234)

    def test_from_url_defaults(self):
        broker = Broker.from_url("pyamqp://rabbit.example.com")
        self.assertEqual(
            (broker.hostname, broker.port, broker.userid, broker.password),
            ("rabbit.example.com", 5672, "guest", "guest"),
        )

    def test_from_url_refuses(self):
        for url in [
            "http://h/",
            "h:5672",
            "amqp:///",
            "amqp://h:99999/",
            "amqp://h:port/",
            "",
            "amqp://h/\n",
            "amqp://[/",  # an IPv6 literal never closed: urlsplit raises
            "amqp://[::1/",
            "amqp://a%20b/",
            "amqp://u:p@-h/",
        ]:
            with self.subTest(url=url):
                self.assertBadRequest("broker", Broker.from_url, url)
        self.assertBadRequest("broker", Broker.from_url, 5)
        self.assertBadRequest("url", Broker.from_url, "http://h/", "url")

    def test_hostnames(self):
        for good, canonical in [
            ("rabbit.example.com", "rabbit.example.com"), ("w1", "w1"),
            ("my_host.lan", "my_host.lan"), ("10.0.0.1", "10.0.0.1"),
            ("::1", "::1"), ("[fe80::1]", "fe80::1"), ("host.", "host."),
        ]:
            with self.subTest(host=good):
                self.assertEqual(check_hostname(good), canonical)
        for bad in ["[", "]", "a b", "a..b", "-h", "h-", "u@h", "h:1", "[h]", ".", "",
                    "a" * 64 + ".com", "h/x", "[::1"]:
            with self.subTest(host=bad):
                self.assertBadRequest("hostname", check_hostname, bad)

    def test_from_url_port_zero(self):
        # Port 0 is no port at all, not "the default port".
        self.assertBadRequest("port", Broker.from_url, "amqp://h:0/")

    def test_as_url_round_trip(self):
        for broker in [
            Broker(),
            Broker(hostname="w1", port=5673, userid="me", password="me", virtual_host="prod"),
            Broker(userid="u@x", password="p:w/%", virtual_host="a/b"),
            Broker(hostname="::1"),
        ]:
            with self.subTest(broker=broker):
                self.assertEqual(Broker.from_url(broker.as_url()), broker)

    def test_as_url(self):
        self.assertEqual(Broker().as_url(), "amqp://guest:guest@127.0.0.1:5672/%2F")
        self.assertEqual(Broker(hostname="::1").as_url(), "amqp://guest:guest@[::1]:5672/%2F")


class BrokerTLSTests(BadRequestAssertions, SynchronousTestCase):
    """C{ssl}: a broker over TLS (amqps://), on 5671 unless told otherwise."""

    def test_tls_defaults_the_port_to_5671(self):
        self.assertEqual((Broker().ssl, Broker().port), (False, 5672))
        self.assertEqual(Broker(ssl=True).port, 5671)
        self.assertEqual(Broker(ssl=True, port=5672).port, 5672)
        self.assertEqual(Broker.from_json({"hostname": "w1", "ssl": True}).port, 5671)
        self.assertEqual(Broker.from_json({"ssl": "true", "port": "5999"}).port, 5999)

    def test_a_record_of_an_older_version_is_plain_amqp(self):
        old = {k: v for k, v in ORIGINAL_BROKER.items() if k != "ssl"}
        self.assertEqual(Broker.from_json(old), Broker())
        self.assertEqual(App.from_json({"name": "foo", "broker": old}).broker.ssl, False)

    def test_ssl_is_a_boolean(self):
        self.assertEqual(Broker(ssl="yes").ssl, True)
        self.assertEqual(Broker.from_json({"ssl": "0"}).ssl, False)
        for value in ["maybe", 2, None, [], "", {"x": 1}]:
            with self.subTest(ssl=value):
                self.assertBadRequest("ssl", Broker, ssl=value)
                self.assertBadRequest("ssl", Broker.from_json, {"ssl": value})

    def test_amqps_urls(self):
        broker = Broker.from_url("amqps://me:pw@rabbit.example.com/prod")
        self.assertEqual(broker.to_json(), {
            "hostname": "rabbit.example.com", "port": 5671, "userid": "me",
            "password": "pw", "virtual_host": "prod", "ssl": True,
        })
        self.assertEqual(Broker.from_url("pyamqps://h:5999//"),
                         Broker(hostname="h", port=5999, ssl=True))
        self.assertEqual(Broker.from_url("AMQPS://h").ssl, True)
        self.assertEqual(Broker.from_url("amqp://h").ssl, False)
        for url, field in [("amqps://", "broker"), ("amqpss://h/", "broker"),
                           ("https://h/", "broker"), ("amqps://h:0/", "port")]:
            with self.subTest(url=url):
                self.assertBadRequest(field, Broker.from_url, url)

    def test_as_url_says_amqps(self):
        broker = Broker(hostname="::1", ssl=True, password="p@ss")
        self.assertEqual(broker.as_url(), "amqps://guest:p%40ss@[::1]:5671/%2F")
        for broker in [broker, Broker(ssl=True, port=5672), Broker(hostname="h", ssl=True)]:
            with self.subTest(broker=broker):
                self.assertEqual(Broker.from_url(broker.as_url()), broker)
                self.assertEqual(Broker.from_json(broker.to_json()), broker)


class AppTests(BadRequestAssertions, SynchronousTestCase):
    def test_imports_shown_only_when_there_are_some(self):
        # An app without task modules is the JSON older branches know.
        self.assertNotIn("imports", App("foo").to_json())
        app = App("foo", imports="myproject.tasks, other.tasks")
        self.assertEqual(app.to_json()["imports"], ["myproject.tasks", "other.tasks"])
        self.assertEqual(App.from_json(app.to_json()), app)
        self.assertBadRequest("imports", App, "foo", imports=["not a module"])

    def test_original_shape(self):
        data = App(name="foo").to_json()
        self.assertEqual(data["name"], "foo")
        self.assertEqual(data["broker"], ORIGINAL_BROKER)

    def test_round_trip(self):
        app = App(
            name="foo",
            broker=Broker(hostname="w1", userid="me", password="me"),
            arguments="--without-gossip",
            extra_config={"task_acks_late": True},
        )
        self.assertEqual(App.from_json(app.to_json()), app)

    def test_from_json_defaults(self):
        self.assertEqual(App.from_json({"name": "foo"}), App(name="foo"))
        self.assertEqual(App.from_json({"name": "foo", "broker": None}).broker, Broker())

    def test_from_json_refuses(self):
        self.assertBadRequest("name", App.from_json, {})
        self.assertBadRequest("name", App.from_json, {"name": ".."})
        self.assertBadRequest("bogus", App.from_json, {"name": "foo", "bogus": 1})
        self.assertBadRequest("broker", App.from_json, {"name": "foo", "broker": "amqp://h//"})
        self.assertBadRequest("port", App.from_json, {"name": "foo", "broker": {"port": 0}})
        self.assertBadRequest("app", App.from_json, ["foo"])

    def test_wrong_types(self):
        self.assertBadRequest("broker", App, name="foo", broker="amqp://h//")
        self.assertBadRequest("broker", App, name="foo", broker=None)
        self.assertBadRequest("broker", App, name="foo", broker={"hostname": "h"})
        self.assertBadRequest("extra_config", App, name="foo", extra_config=["x"])
        self.assertBadRequest("extra_config", App, name="foo", extra_config="{}")
        self.assertBadRequest("extra_config", App, name="foo", extra_config={1: "x"})
        self.assertBadRequest("arguments", App, name="foo", arguments=5)


class QueueTests(BadRequestAssertions, SynchronousTestCase):
    def test_defaults(self):
        queue = Queue(name="tasks")
        self.assertEqual(
            queue.to_json(),
            {
                "name": "tasks",
                "exchange": "tasks",
                "exchange_type": "direct",
                "routing_key": "tasks",
                "options": {},
            },
        )

    def test_from_json_defaults(self):
        self.assertEqual(Queue.from_json({"name": "tasks"}), Queue(name="tasks"))
        queue = Queue.from_json({"name": "tasks", "exchange": "ex"})
        self.assertEqual((queue.exchange, queue.routing_key), ("ex", "tasks"))

    def test_evolved_name_keeps_explicit_exchange(self):
        queue = Queue(name="a", exchange="ex", routing_key="rk")
        self.assertEqual(
            (queue.exchange, queue.routing_key, queue.exchange_type), ("ex", "rk", "direct")
        )

    def test_round_trip(self):
        queue = Queue(
            name="tasks",
            exchange="ex",
            exchange_type="topic",
            routing_key="tasks.#",
            options={"x-max-priority": 10, "durable": False},
        )
        self.assertEqual(Queue.from_json(queue.to_json()), queue)

    def test_exchange_types(self):
        self.assertEqual(EXCHANGE_TYPES, ("direct", "topic", "fanout", "headers"))
        for kind in EXCHANGE_TYPES:
            self.assertEqual(Queue(name="q", exchange_type=kind).exchange_type, kind)
        for kind in ["", "Direct", "x-delayed", None, 5, ["direct"]]:
            with self.subTest(kind=kind):
                self.assertBadRequest("exchange_type", Queue, name="q", exchange_type=kind)

    def test_options(self):
        self.assertEqual(Queue(name="q", options=None).options, {})
        for options in [[], "{}", 5, True, {1: 2}]:
            with self.subTest(options=options):
                self.assertBadRequest("options", Queue, name="q", options=options)
                self.assertBadRequest(
                    "options", Queue.from_json, {"name": "q", "options": options}
                )

    def test_wrong_types(self):
        self.assertBadRequest("exchange", Queue, name="q", exchange=5)
        self.assertBadRequest("routing_key", Queue, name="q", routing_key=["a"])
        self.assertBadRequest("bogus", Queue.from_json, {"name": "q", "bogus": "x"})
        self.assertBadRequest("name", Queue.from_json, {"exchange": "x"})
        self.assertBadRequest("queue", Queue.from_json, "q")


class InstanceTests(BadRequestAssertions, SynchronousTestCase):
    def test_defaults(self):
        instance = Instance(name="w1", app="foo")
        self.assertEqual(instance.queues, ())
        self.assertEqual(instance.max_concurrency, 1)
        self.assertEqual(instance.min_concurrency, 1)
        self.assertIs(instance.is_enabled, True)
        self.assertIsNone(instance.broker)
        self.assertEqual(instance.pool, "prefork")

    def test_original_fields(self):
        data = Instance(name="w1", app="foo").to_json()
        self.assertEqual(
            {k: data[k] for k in ["name", "queues", "max_concurrency", "min_concurrency",
                                  "is_enabled", "broker"]},
            {
                "name": "w1",
                "queues": [],
                "max_concurrency": 1,
                "min_concurrency": 1,
                "is_enabled": True,
                "broker": None,
            },
        )

    def test_round_trip(self):
        for instance in [
            Instance(name="w1", app="foo"),
            Instance(
                name="w2",
                app="foo",
                queues=["tasks", "images"],
                max_concurrency=8,
                min_concurrency=0,
                is_enabled=False,
                broker=Broker(hostname="w1", virtual_host="prod"),
                pool="solo",
                arguments="-O fair",
                extra_config={"worker_prefetch_multiplier": 1},
            ),
        ]:
            with self.subTest(instance=instance):
                self.assertEqual(Instance.from_json(instance.to_json()), instance)

    def test_concurrency(self):
        instance = Instance(name="w", app="a", max_concurrency=4, min_concurrency=0)
        self.assertEqual((instance.max_concurrency, instance.min_concurrency), (4, 0))
        instance = Instance(name="w", app="a", max_concurrency="4", min_concurrency="4")
        self.assertEqual((instance.max_concurrency, instance.min_concurrency), (4, 4))

    def test_min_not_above_max(self):
        self.assertBadRequest(
            "min_concurrency", Instance, name="w", app="a", max_concurrency=2, min_concurrency=3
        )
        instance = Instance(name="w", app="a", max_concurrency=4, min_concurrency=2)
        self.assertBadRequest("min_concurrency", attrs.evolve, instance, max_concurrency=1)
        self.assertBadRequest("min_concurrency", attrs.evolve, instance, min_concurrency=5)

    def test_concurrency_bounds_and_types(self):
        for value in [0, -1, 10001, "four", "", 2.5, True, None, [1]]:
            with self.subTest(max=value):
                self.assertBadRequest(
                    "max_concurrency", Instance, name="w", app="a", max_concurrency=value
                )
        for value in [-1, "x", 1.0, False, None]:
            with self.subTest(min=value):
                self.assertBadRequest(
                    "min_concurrency", Instance, name="w", app="a", min_concurrency=value
                )

    def test_is_enabled(self):
        for value, expected in [("false", False), ("0", False), ("yes", True), (1, True),
                                (False, False)]:
            self.assertIs(Instance(name="w", app="a", is_enabled=value).is_enabled, expected)
        for value in ["maybe", 2, None, []]:
            with self.subTest(value=value):
                self.assertBadRequest("is_enabled", Instance, name="w", app="a", is_enabled=value)

    def test_queues(self):
        instance = Instance(name="w", app="a", queues=["x", "y"])
        self.assertEqual(instance.queues, ("x", "y"))
        for queues in ["abc", 5, None, {"x": 1}, ["ok", "bad/name"], ["x", "x"], [1], [".."]]:
            with self.subTest(queues=queues):
                self.assertBadRequest("queues", Instance, name="w", app="a", queues=queues)
        self.assertBadRequest(
            "queues", Instance.from_json, {"name": "w", "app": "a", "queues": "abc"}
        )

    def test_broker(self):
        broker = Broker(hostname="w1")
        self.assertEqual(Instance(name="w", app="a", broker=broker).broker, broker)
        self.assertBadRequest("broker", Instance, name="w", app="a", broker="amqp://h//")
        self.assertBadRequest("broker", Instance, name="w", app="a", broker={"hostname": "h"})
        instance = Instance.from_json({"name": "w", "app": "a", "broker": {"hostname": "h"}})
        self.assertEqual(instance.broker, Broker(hostname="h"))
        self.assertBadRequest(
            "port", Instance.from_json, {"name": "w", "app": "a", "broker": {"port": "x"}}
        )

    def test_pool_and_text(self):
        self.assertEqual(Instance(name="w", app="a", pool="threads").pool, "threads")
        self.assertBadRequest("pool", Instance, name="w", app="a", pool="fork")
        self.assertBadRequest("arguments", Instance, name="w", app="a", arguments=5)
        self.assertBadRequest("extra_config", Instance, name="w", app="a", extra_config=[])

    def test_from_json_refuses(self):
        self.assertBadRequest("app", Instance.from_json, {"name": "w"})
        self.assertBadRequest("name", Instance.from_json, {"app": "a"})
        self.assertBadRequest("bogus", Instance.from_json, {"name": "w", "app": "a", "bogus": 1})
        self.assertBadRequest("instance", Instance.from_json, ["w"])


class ErrorTests(SynchronousTestCase):
    def test_not_found_names_the_record(self):
        error = NotFound("queue", "tasks")
        self.assertEqual(error.status, 404)
        self.assertEqual(
            error.to_json(), {"error": "no such queue: tasks", "kind": "queue", "name": "tasks"}
        )

    def test_conflict(self):
        error = Conflict("taken", name="w1")
        self.assertEqual((error.status, error.to_json()), (409, {"error": "taken", "name": "w1"}))
