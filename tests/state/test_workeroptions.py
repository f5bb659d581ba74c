"""Tests for cyme.state.workeroptions: the allow-list and the operator's policy."""

from twisted.trial.unittest import SynchronousTestCase

from cyme.errors import BadRequest
from cyme.state.models import App, Instance
from cyme.state.workeroptions import (
    OPTIONS, REFUSED, SETTINGS, WorkerPolicy, default_max_concurrency, parse_arguments,
    parse_imports, parse_settings,
)


class Assertions:
    def assertRefused(self, call, *args, field=None, option=None, says=()):
        with self.assertRaises(BadRequest) as caught:
            call(*args)
        error = caught.exception.to_json()
        if field is not None:
            self.assertEqual(error["field"], field)
        if option is not None:
            self.assertEqual(error.get("option"), option)
        for text in says:
            self.assertIn(text, error["error"])
        return error


class ArgumentTests(Assertions, SynchronousTestCase):
    def test_allowed_options_in_every_spelling_are_kept_as_written(self):
        for text in [
            "", "--prefetch-multiplier=4", "--prefetch-multiplier 4", "-O fair", "-Ofair",
            "--optimization=default", "--max-tasks-per-child 100",
            "--max-memory-per-child=204800", "--time-limit 300 --soft-time-limit=240.5",
            "--heartbeat-interval 10", "--without-heartbeat", "--without-gossip",
            "--without-mingle", "-E", "--task-events", "--disable-prefetch",
            "--pool-start-method spawn",
        ]:
            with self.subTest(text=text):
                self.assertEqual(parse_arguments(text), text)

    def test_never_allowed_options_name_themselves_and_point_to_the_list(self):
        for option in [
            "--logfile", "-f", "--pidfile", "--statedb", "-S", "--schedule", "-s",
            "--detach", "-D", "-n", "--hostname", "-Q", "--queues", "-X",
            "--exclude-queues", "-I", "--include", "-c", "--concurrency", "--autoscale",
            "-P", "--pool", "-A", "-b", "--broker", "--workdir", "-B", "--beat",
            "--purge", "--uid", "--gid", "--umask", "--executable", "-l", "--loglevel",
        ]:
            with self.subTest(option=option):
                for text in (f"{option} x", f"{option}=x" if option.startswith("--") else
                             f"{option}x"):
                    error = self.assertRefused(parse_arguments, text, field="arguments",
                                               option=option)
                    self.assertIn("README's Security section", error["error"])
                    self.assertIn(option, error["error"])

    def test_unknown_options_and_stray_words(self):
        for text, option in [("--frobnicate", "--frobnicate"), ("foo", "foo"),
                             ("-O fair extra", "extra"), ("--prefetch-multiplier=4 -Z", "-Z")]:
            with self.subTest(text=text):
                self.assertRefused(parse_arguments, text, field="arguments", option=option,
                                   says=["not an allowed option"])

    def test_values_are_typed(self):
        for text, option in [
            ("--prefetch-multiplier=x", "--prefetch-multiplier"),
            ("--prefetch-multiplier 0", "--prefetch-multiplier"),
            ("--prefetch-multiplier", "--prefetch-multiplier"),
            ("--time-limit=-1", "--time-limit"), ("--time-limit nan", "--time-limit"),
            ("--soft-time-limit=inf", "--soft-time-limit"),
            ("-O unfair", "-O"), ("--max-memory-per-child=1", "--max-memory-per-child"),
            ("--without-heartbeat=1", "--without-heartbeat"), ("-Eyes", "-E"),
        ]:
            with self.subTest(text=text):
                self.assertRefused(parse_arguments, text, field="arguments", option=option)

    def test_unreadable_text(self):
        for text in ['"', "'", "--time-limit '3"]:
            with self.subTest(text=text):
                self.assertRefused(parse_arguments, text, field="arguments",
                                   says=["cannot be read as a command line"])
        self.assertRefused(parse_arguments, 5, field="arguments")
        self.assertRefused(parse_arguments, "-E " * 2000, field="arguments")

    def test_the_lists_do_not_overlap(self):
        self.assertEqual(set(OPTIONS) & set(REFUSED), set())


class SettingTests(Assertions, SynchronousTestCase):
    def test_allowed_settings_are_parsed_to_their_type(self):
        self.assertEqual(
            parse_settings({
                "worker_prefetch_multiplier": "4", "task_time_limit": "30",
                "task_soft_time_limit": 2.5, "task_acks_late": "false",
                "broker_heartbeat": 0, "task_default_rate_limit": "10/s",
                "timezone": "Europe/Oslo", "accept_content": "json",
                "cyme_webhook_timeout": 5,
            }),
            {
                "worker_prefetch_multiplier": 4, "task_time_limit": 30,
                "task_soft_time_limit": 2.5, "task_acks_late": False,
                "broker_heartbeat": 0, "task_default_rate_limit": "10/s",
                "timezone": "Europe/Oslo", "accept_content": ["json"],
                "cyme_webhook_timeout": 5,
            },
        )

    def test_every_setting_refuses_a_value_of_another_type(self):
        for name in SETTINGS:
            with self.subTest(setting=name):
                self.assertRefused(parse_settings, {name: {"not": "a value"}},
                                   field="extra_config", option=name)

    def test_never_allowed_settings(self):
        for name, reason in [
            ("worker_concurrency", "max_concurrency"), ("imports", "imports"),
            ("include", "imports"), ("task_queues", "queues"), ("task_routes", "queues"),
            ("task_default_queue", "queues"), ("broker_url", "broker"),
            ("result_backend", "cyme"), ("worker_state_db", "files"),
            ("worker_pool", "pool"), ("anything_else", ""),
        ]:
            with self.subTest(setting=name):
                self.assertRefused(parse_settings, {name: 1}, field="extra_config",
                                   option=name, says=[name, reason, "README"])

    def test_no_setting_that_imports_code_or_opens_remote_commands(self):
        """Celery settings that import a module named by a value (class
        paths, routers, annotations), or enable a remote command that does
        (pool_restart), or change who commands the worker, or widen its
        fence: none is on the allow-list."""
        for name, value in [
            ("worker_pool_restarts", True), ("worker_enable_remote_control", False),
            ("imports", ["os"]), ("include", ["os"]), ("task_routes", "os.system"),
            ("task_annotations", "os.system"), ("worker_consumer", "os:system"),
            ("worker_timer", "os:system"), ("worker_autoscaler", "os:system"),
            ("worker_logfile", "/tmp/x"), ("beat_scheduler", "os:system"),
            ("task_cls", "os:system"), ("task_protocol", 1), ("broker_transport", "os"),
            ("result_backend", "os:system"), ("control_exchange", "x"),
            ("cyme_webhook_allowed_hosts", ["127.0.0.1"]), ("cyme_webhook_opened", ["0.0.0.0/0"]),
            ("cyme_webhook_deny_private", False),
        ]:
            with self.subTest(setting=name):
                self.assertNotIn(name, SETTINGS)
                self.assertRefused(parse_settings, {name: value}, field="extra_config",
                                   option=name)
        self.assertRefused(parse_settings, {"worker_pool_restarts": True},
                           says=["import any module"])

    def test_not_an_object(self):
        self.assertRefused(parse_settings, ["x"], field="extra_config")


class PolicyTests(Assertions, SynchronousTestCase):
    def test_by_default_no_task_module_and_json_only(self):
        policy = WorkerPolicy()
        self.assertEqual(policy.max_concurrency, default_max_concurrency())
        self.assertEqual(policy.max_instances, 100)
        policy.check_imports(())
        self.assertRefused(policy.check_imports, ("myproject.tasks",), field="imports",
                           option="myproject.tasks", says=["patterns: none"])
        policy.check_settings({"accept_content": ["json"], "task_serializer": "json"})
        for name, value in [("accept_content", ["json", "pickle"]),
                            ("result_accept_content", ["yaml"]),
                            ("task_serializer", "pickle"), ("result_serializer", "msgpack")]:
            with self.subTest(setting=name):
                self.assertRefused(policy.check_settings, {name: value},
                                   field="extra_config", option=name,
                                   says=["--accept-content"])

    def test_the_operator_opens_modules_by_pattern(self):
        policy = WorkerPolicy.from_options(["myproject.tasks*", "shared.jobs"])
        policy.check_imports(("myproject.tasks", "myproject.tasks.emails", "shared.jobs"))
        for module in ("myproject", "myproject.other", "shared.jobs.x", "os", "subprocess"):
            with self.subTest(module=module):
                self.assertRefused(policy.check_imports, (module,), option=module,
                                   says=["myproject.tasks*, shared.jobs"])

    def test_the_operator_opens_serializers(self):
        policy = WorkerPolicy.from_options(accept_content=["pickle", "application/x-yaml"])
        self.assertEqual(policy.accept_content, {"pickle", "yaml"})
        policy.check_settings(parse_settings({"accept_content": ["json", "pickle", "yaml"]}))
        self.assertRefused(policy.check_settings, {"accept_content": ["msgpack"]},
                           option="accept_content")

    def test_bad_operator_options(self):
        self.assertRefused(WorkerPolicy.from_options, ["my project"], field="--task-module")
        self.assertRefused(WorkerPolicy.from_options, (), ["marshal"],
                           field="--accept-content")

    def test_bad_operator_counts_name_the_option_and_the_value(self):
        self.assertEqual(WorkerPolicy.from_options(max_concurrency="16", max_instances="5").limits(),
                         {"max_concurrency": 16, "max_instances": 5})
        for kwargs, option in [({"max_concurrency": "0"}, "--max-concurrency"),
                               ({"max_concurrency": 10001}, "--max-concurrency"),
                               ({"max_instances": "many"}, "--max-instances")]:
            with self.subTest(**kwargs):
                with self.assertRaises(BadRequest) as caught:
                    WorkerPolicy.from_options(**kwargs)
                self.assertEqual(caught.exception.field, option)
                self.assertIn(f"not {next(iter(kwargs.values()))!r}", caught.exception.message)

    def test_the_operator_opens_the_webhook_fence(self):
        self.assertEqual((WorkerPolicy().webhook_allow, WorkerPolicy().webhook_deny_private),
                         ((), False))
        policy = WorkerPolicy.from_options(webhook_allow=[" 127.0.0.1:8080", "10.0.0.0/8",
                                                          "Metadata.Internal", "[::1]"],
                                           webhook_deny_private=True)
        self.assertEqual(policy.webhook_allow,
                         ("127.0.0.1:8080", "10.0.0.0/8", "metadata.internal", "[::1]"))
        self.assertTrue(policy.webhook_deny_private)
        for entry in ("http://127.0.0.1/", "10.0.0.0/33", "[1:2]", "", "a b"):
            with self.subTest(entry=entry):
                self.assertRefused(WorkerPolicy.from_options, (), (), None, 100, None, [entry],
                                   field="--webhook-allow")

    def test_concurrency_cap(self):
        policy = WorkerPolicy(max_concurrency=4)
        policy.check_concurrency(4)
        self.assertRefused(policy.check_concurrency, 5, field="max_concurrency",
                           says=["at most 4", "--max-concurrency"])

    def test_check_of_whole_records(self):
        policy = WorkerPolicy(task_modules=("t.*",))
        policy.check(App("foo", arguments="-O fair", imports=["t.a"]), Instance("w1", "foo"))
        for app, instance, says in [
            (App("foo", arguments='"'), Instance("w1", "foo"), "app arguments"),
            (App("foo"), Instance("w1", "foo", arguments="--detach"), "--detach"),
            (App("foo", extra_config={"worker_concurrency": 2}), Instance("w1", "foo"),
             "worker_concurrency"),
            (App("foo", imports=["u"]), Instance("w1", "foo"), "module u"),
        ]:
            with self.subTest(says=says):
                self.assertRefused(policy.check, app, instance, says=[says])


class ImportTests(Assertions, SynchronousTestCase):
    def test_module_names(self):
        self.assertEqual(parse_imports("a.b, c"), ("a.b", "c"))
        self.assertEqual(parse_imports(["a_1.b2"]), ("a_1.b2",))
        for bad in [["a b"], ["a..b"], ["1a"], [".a"], ["a;b"], [5], "a,a", {"a": 1}]:
            with self.subTest(value=bad):
                self.assertRefused(parse_imports, bad, field="imports")
