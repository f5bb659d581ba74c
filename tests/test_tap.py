"""The twistd plugin and the branch's command line (cyme.tap)."""

import os

from twisted.application import service
from twisted.application.service import IServiceMaker
from twisted.logger import ILogObserver, LogLevel
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from cyme import logs, tap
from cyme.addresses import address_to_endpoint
from cyme.jsonlog import JSONLinesObserver
from cyme.state.rootdir import RootDir


class PluginTests(SynchronousTestCase):
    def test_found_by_twistd(self):
        """twistd finds exactly one plugin called cyme-branch, backed by cyme.tap."""
        makers = [
            m for m in getPlugins(IServiceMaker) if m.tapname == "cyme-branch"
        ]
        self.assertEqual(len(makers), 1)
        self.assertIs(makers[0].options, tap.Options)
        self.assertIs(makers[0].makeService, tap.makeService)
        self.assertTrue(makers[0].description)


class OptionsTestsMixin:
    """
    Helpers: a fresh root directory, and Options whose root gets closed;
    each test has a home of its own for its default cluster key.
    """

    def setUp(self):
        super().setUp()
        self.config_home = os.path.abspath(self.mktemp())
        self.patch(os, "environ", dict(os.environ, XDG_CONFIG_HOME=self.config_home))

    def root_path(self):
        return os.path.abspath(self.mktemp())

    def parse(self, argv):
        options = tap.Options()
        options.parseOptions(argv)
        self.addCleanup(options["root"].close)
        return options

    def usage_error(self, argv):
        """The UsageError parsing C{argv} raises; nothing is left locked."""
        options = tap.Options()
        error = self.assertRaises(usage.UsageError, options.parseOptions, argv)
        self.assertNotIn("root", options)
        return str(error)


class ParseTests(OptionsTestsMixin, SynchronousTestCase):
    def test_original_order(self):
        """The original Cyme's order: the address first, options after it."""
        root = self.root_path()
        options = self.parse([":8001", "-i", "branch1", "-D", root])
        self.assertEqual(options["address"], ":8001")
        self.assertEqual(options["id"], "branch1")
        self.assertEqual(options["branch-id"], "branch1")
        self.assertEqual(options["instance-dir"], root)
        self.assertEqual(options["endpoint"], "tcp:8001")
        self.assertEqual(options["root"].path, root)

    def test_options_first(self):
        root = self.root_path()
        options = self.parse(["-i", "branch1", "-D", root, ":8001"])
        self.assertEqual(options["id"], "branch1")
        self.assertEqual(options["instance-dir"], root)
        self.assertEqual(options["endpoint"], "tcp:8001")

    def test_options_around_address(self):
        root = self.root_path()
        options = self.parse(["-i", "b2", "localhost:8002", "--without-http", "-D", root])
        self.assertEqual(options["id"], "b2")
        self.assertTrue(options["without-http"])
        self.assertEqual(options["endpoint"], "tcp:8002:interface=localhost")

    def test_long_forms(self):
        root = self.root_path()
        options = self.parse(
            [
                ":8001",
                "--id=branch1",
                "--instance-dir", root,
                "--broker=amqp://user:secret@rabbit:5673/vh",
                "--sup-interval=2.5",
                "--loglevel=debug",
            ]
        )
        self.assertEqual(options["branch-id"], "branch1")
        self.assertEqual(options["root"].path, root)
        self.assertEqual(options["sup-interval"], 2.5)
        self.assertEqual(options["log-level"], LogLevel.debug)
        broker = options["default-broker"]
        self.assertEqual(
            (broker.hostname, broker.port, broker.userid, broker.password,
             broker.virtual_host),
            ("rabbit", 5673, "user", "secret", "vh"),
        )

    def test_short_forms(self):
        root = self.root_path()
        options = self.parse(
            ["-b", "amqp://u:p@h//", "-l", "warning", "-D", root, "-i", "x"]
        )
        self.assertEqual(options["default-broker"].hostname, "h")
        self.assertEqual(options["default-broker"].virtual_host, "/")
        self.assertEqual(options["log-level"], LogLevel.warn)

    def test_defaults(self):
        root = self.root_path()
        options = self.parse(["-D", root])
        self.assertEqual(options["address"], ":8000")
        self.assertEqual(options["endpoint"], "tcp:8000")
        self.assertEqual(options["sup-interval"], 5.0)
        self.assertEqual(options["log-level"], LogLevel.info)
        self.assertFalse(options["without-http"])
        broker = options["default-broker"]
        self.assertEqual((broker.hostname, broker.port), ("127.0.0.1", 5672))

    def test_broker_from_the_environment(self):
        # Out of the command line, the password stays out of ps.
        self.patch(os, "environ", dict(os.environ, CYME_BROKER_URL="amqp://u:secret@envhost//"))
        broker = self.parse(["-D", self.root_path()])["default-broker"]
        self.assertEqual((broker.hostname, broker.password), ("envhost", "secret"))
        # The command line still wins.
        broker = self.parse(["-D", self.root_path(), "-b", "amqp://u:p@cli//"])["default-broker"]
        self.assertEqual(broker.hostname, "cli")

    def test_argv_default_parses_gnu_way(self):
        """Without an argument, parseOptions reads sys.argv the same way."""
        import sys

        root = self.root_path()
        self.patch(sys, "argv", ["cyme-branch", ":8001", "-i", "argv1", "-D", root])
        options = tap.Options()
        options.parseOptions()
        self.addCleanup(options["root"].close)
        self.assertEqual(options["branch-id"], "argv1")
        self.assertEqual(options["endpoint"], "tcp:8001")

    def test_help_documents_every_option(self):
        text = tap.Options().getUsage()
        for option in ("--id", "-i", "--instance-dir", "-D", "--broker", "-b",
                       "--http", "--without-http", "--sup-interval",
                       "--loglevel", "-l"):
            self.assertIn(option, text)


class AddressTests(OptionsTestsMixin, SynchronousTestCase):
    def test_address_forms(self):
        cases = {
            ":8001": "tcp:8001",
            "8001": "tcp:8001",
            "localhost:8001": "tcp:8001:interface=localhost",
            "127.0.0.1:8001": "tcp:8001:interface=127.0.0.1",
            "[::1]:8001": "tcp6:8001:interface=\\:\\:1",
            "[::]:80": "tcp6:80:interface=\\:\\:",
            ":0": "tcp:0",
        }
        for address, endpoint in cases.items():
            self.assertEqual(address_to_endpoint(address), endpoint, address)

    def test_port_only_is_never_split(self):
        """C{8001} is port 8001, not host C{800} on port 1 (a former bug)."""
        self.assertEqual(address_to_endpoint("8001"), "tcp:8001")
        self.assertEqual(address_to_endpoint("65535"), "tcp:65535")

    def test_positional_address(self):
        for address, endpoint in [
            ("8001", "tcp:8001"),
            ("localhost:8001", "tcp:8001:interface=localhost"),
            ("[::1]:8001", "tcp6:8001:interface=\\:\\:1"),
        ]:
            options = self.parse([address, "-D", self.root_path()])
            self.assertEqual(options["endpoint"], endpoint)

    def test_http_overrides_address(self):
        sock = os.path.abspath(self.mktemp())
        options = self.parse(
            [":8001", "--http", f"unix:{sock}", "-D", self.root_path()]
        )
        self.assertEqual(options["endpoint"], f"unix:{sock}:mode=600")
        options = self.parse(["--http=tcp:9001:interface=127.0.0.1", "-D",
                              self.root_path()])
        self.assertEqual(options["endpoint"], "tcp:9001:interface=127.0.0.1")

    def test_bad_addresses(self):
        for address in ["abc", "localhost8001x", ":", "", "[::1]8001",
                        "host:80:90", "a=b:80", "[zz]:80"]:
            message = self.usage_error([address, "-D", self.root_path()])
            self.assertIn("address must be [host]:port", message, address)
            self.assertIn(repr(address), message)

    def test_port_out_of_range(self):
        message = self.usage_error([":99999", "-D", self.root_path()])
        self.assertIn("port must be 0-65535", message)

    def test_bad_http_endpoint(self):
        """A bad --http is a usage error now, not a traceback in makeService."""
        for endpoint in ["nonsense:1", "tcp:notaport", "tcp:80:nosuchkw=1"]:
            message = self.usage_error(["--http", endpoint, "-D", self.root_path()])
            self.assertIn("invalid endpoint", message)
            self.assertIn(repr(endpoint), message)


class BadOptionTests(OptionsTestsMixin, SynchronousTestCase):
    def test_bad_sup_interval(self):
        for value in ["0", "-1", "x", "", "nan", "inf", "-inf"]:
            message = self.usage_error(["--sup-interval", value, "-D",
                                        self.root_path()])
            self.assertIn("--sup-interval must be a positive number", message,
                          value)

    def test_max_wait(self):
        """--max-wait bounds a task's /wait/ (the fuzzed branch's is short)."""
        self.assertEqual(self.parse(["-D", self.root_path()])["max-wait"], 300.0)
        self.assertEqual(self.parse(["--max-wait", "0.5", "-D", self.root_path()])["max-wait"],
                         0.5)
        for value in ["0", "-1", "soon"]:
            self.assertIn("--max-wait must be a positive number",
                          self.usage_error(["--max-wait", value, "-D", self.root_path()]))

    def test_bad_sup_interval_message(self):
        message = self.usage_error(["--sup-interval", "x", "-D", self.root_path()])
        self.assertEqual(message, "--sup-interval must be a positive number of seconds, not 'x'")

    def test_bad_timeouts(self):
        for option in ["--kill-timeout", "--ready-timeout", "--wait-after-broker-revived",
                       "--result-expires"]:
            for value in ["x", "", "-1", "nan", "inf"]:
                message = self.usage_error([option, value, "-D", self.root_path()])
                self.assertEqual(
                    message, f"{option} must be a number of seconds, not {value!r}"
                )

    def test_timeouts_may_be_zero(self):
        options = self.parse(["--kill-timeout", "0", "--ready-timeout", "2.5",
                              "-D", self.root_path()])
        self.assertEqual((options["kill-timeout"], options["ready-timeout"]), (0.0, 2.5))

    def test_bad_loglevel(self):
        message = self.usage_error(["-l", "loud", "-D", self.root_path()])
        self.assertIn("log level must be one of", message)
        self.assertIn("debug", message)

    def test_bad_broker(self):
        for url in ["http://host/", "amqp://", "amqp://host:99999//", "nonsense"]:
            message = self.usage_error(["-b", url, "-D", self.root_path()])
            self.assertIn("--broker", message, url)

    def test_bad_id(self):
        for value in ["../x", "a/b", "-x", ".hidden", "", "x" * 65, "a b"]:
            message = self.usage_error([f"--id={value}", "-D", self.root_path()])
            self.assertIn("--id must be", message, value)

    def test_unknown_option(self):
        message = self.usage_error(["--bogus", "-D", self.root_path()])
        self.assertIn("bogus", message)

    def test_two_addresses(self):
        self.usage_error([":8001", ":8002", "-D", self.root_path()])

    def test_bad_option_touches_no_directory(self):
        """Options are checked before the root directory is created."""
        root = self.root_path()
        self.usage_error(["-l", "loud", "-D", root])
        self.usage_error(["--id=../x", "-D", root])
        self.assertFalse(os.path.exists(root))


class RootDirTests(OptionsTestsMixin, SynchronousTestCase):
    def test_created_if_missing(self):
        root = os.path.join(self.root_path(), "deep", "branch1")
        options = self.parse(["-D", root])
        self.assertTrue(os.path.isdir(root))
        self.assertTrue(os.path.isdir(os.path.join(root, "instances")))
        self.assertEqual(options["store"].path, os.path.join(root, "state.json"))

    def test_relative_root_made_absolute(self):
        parent = self.root_path()
        os.makedirs(parent)
        cwd = os.getcwd()
        os.chdir(parent)
        self.addCleanup(os.chdir, cwd)
        options = self.parse(["-D", "rel/"])
        self.assertEqual(options["root"].path, os.path.join(parent, "rel"))

    def test_unwritable_root(self):
        """A root under a regular file cannot be created: a clear usage error."""
        parent = self.root_path()
        os.makedirs(parent)
        blocker = os.path.join(parent, "file")
        with open(blocker, "w") as f:
            f.write("not a directory")
        for root in [os.path.join(blocker, "sub"), blocker]:
            message = self.usage_error(["-D", root])
            self.assertIn(root, message)
            self.assertIn("not writable", message)
            self.assertNotIn("Traceback", message)

    def test_corrupt_state_file(self):
        root = self.root_path()
        os.makedirs(root)
        state = os.path.join(root, "state.json")
        garbage = b'{"schema": 1, "apps": {not json'
        with open(state, "wb") as f:
            f.write(garbage)
        options = tap.Options()
        error = self.assertRaises(usage.UsageError, options.parseOptions, ["-D", root])
        self.assertIsInstance(error, tap.StartupFailed)
        self.assertIn(state, str(error))
        self.assertIn("corrupt", str(error))
        self.assertNotIn("\n", str(error))
        with open(state, "rb") as f:
            self.assertEqual(f.read(), garbage)
        self.assertEqual(sorted(os.listdir(root)), ["branch.lock", "instances",
                                                   "state.json"])
        # twistd prints the usage text above a usage error: not for this one.
        self.assertEqual(options.getUsage(), "")

    def test_usage_after_a_bad_value(self):
        """
        twistd prints the usage text above a usage error: after a bad value,
        a pointer to --help, not the options that bury the message.
        """
        options = tap.Options()
        self.assertIn("--instance-dir", options.getUsage())
        self.assertRaises(usage.UsageError, options.parseOptions,
                          ["-b", "notaurl", "-D", self.root_path()])
        self.assertEqual(options.getUsage(), "Try 'cyme-branch --help' for the options.")

    def test_wrong_schema_version(self):
        root = self.root_path()
        os.makedirs(root)
        state = os.path.join(root, "state.json")
        with open(state, "w") as f:
            f.write('{"schema": 99, "apps": {}, "queues": {}, "instances": {}}')
        message = self.usage_error(["-D", root])
        self.assertIn(state, message)
        self.assertIn("99", message)

    def test_failed_start_releases_lock(self):
        """A start-up failure after the lock was taken lets the lock go."""
        root = self.root_path()
        os.makedirs(root)
        state = os.path.join(root, "state.json")
        with open(state, "w") as f:
            f.write("garbage")
        self.usage_error(["-D", root])
        os.unlink(state)
        options = self.parse(["-D", root])
        self.assertEqual(options["store"].apps(), [])

    def test_root_in_use(self):
        root = self.root_path()
        first = self.parse([":8001", "-D", root])
        message = self.usage_error([":8002", "-D", root])
        self.assertIn("another cyme-branch", message)
        self.assertIn(root, message)
        self.assertIn(f"pid {os.getpid()}", message)
        first["root"].close()
        self.parse([":8002", "-D", root])

    def test_generated_id_is_kept(self):
        root = self.root_path()
        first = self.parse(["-D", root])
        branch_id = first["branch-id"]
        self.assertTrue(branch_id)
        with open(os.path.join(root, "branch.id")) as f:
            self.assertEqual(f.read().strip(), branch_id)
        first["root"].close()
        second = self.parse(["-D", root])
        self.assertEqual(second["branch-id"], branch_id)

    def test_given_id_wins_and_keeps_generated(self):
        root = self.root_path()
        first = self.parse(["-D", root])
        generated = first["branch-id"]
        first["root"].close()
        named = self.parse(["-D", root, "-i", "named"])
        self.assertEqual(named["branch-id"], "named")
        named["root"].close()
        self.assertEqual(self.parse(["-D", root])["branch-id"], generated)

    def test_state_is_loaded(self):
        root = self.root_path()
        first = self.parse(["-D", root])
        from cyme.state.models import App

        first["store"].put_app(App(name="foo"))
        first["root"].close()
        second = self.parse(["-D", root])
        self.assertEqual([a.name for a in second["store"].apps()], ["foo"])


def keep_umask(test):
    """makeService sets the process's umask (077): give the test process its own back."""
    old = os.umask(0o022)
    os.umask(old)
    test.addCleanup(os.umask, old)


class MakeServiceTests(OptionsTestsMixin, SynchronousTestCase):
    def setUp(self):
        super().setUp()
        # makeService sets cyme's log level for the whole process.
        self.addCleanup(logs.set_level, LogLevel.info)
        keep_umask(self)

    def test_files_made_from_now_on_are_the_branchs_alone(self):
        import stat

        root = self.root_path()
        tap.makeService(self.parse(["--without-http", "-D", root]))
        journal = os.path.join(root, "results.jsonl")
        self.assertEqual(stat.S_IMODE(os.stat(journal).st_mode), 0o600)

    def test_http_child(self):
        options = self.parse(["127.0.0.1:0", "-D", self.root_path(), "-i", "b1"])
        branch = tap.makeService(options)
        self.assertIsInstance(branch, tap.BranchService)
        self.assertIs(branch.root, options["root"])
        self.assertEqual(branch.branch_id, "b1")
        http = branch.getServiceNamed("http")
        self.assertIs(http.parent, branch)
        self.assertFalse(branch.running)

    def test_without_http(self):
        options = self.parse(["--without-http", "-D", self.root_path()])
        branch = tap.makeService(options)
        self.assertRaises(KeyError, branch.getServiceNamed, "http")

    def test_webhook_fence(self):
        """The task service judges queued URLs by their addresses, with the
        reactor's resolver; --webhook-deny-private refuses private ranges."""
        from twisted.internet import reactor

        tasks = tap.makeService(self.parse(["-D", self.root_path()])).getServiceNamed("tasks")
        check = tasks.url_check
        self.assertIs(check.resolver, reactor.nameResolver)
        self.assertFalse(check.deny_private)
        options = self.parse(["--webhook-deny-private", "-D", self.root_path()])
        self.assertTrue(tap.makeService(options).getServiceNamed("tasks").url_check.deny_private)
        self.assertTrue(options["worker-policy"].webhook_deny_private)

    def test_webhook_allow(self):
        """--webhook-allow, repeatable: where an app's allowed_hosts may open
        the refused ranges, for the branch's check and its workers alike;
        nowhere by default."""
        options = self.parse(["-D", self.root_path()])
        self.assertEqual(options["worker-policy"].webhook_allow, ())
        self.assertEqual(tap.makeService(options).getServiceNamed("tasks").url_check.opened, ())
        options = self.parse(["-D", self.root_path(), "--webhook-allow", "127.0.0.1:8080",
                              "--webhook-allow=10.0.0.0/8", "--webhook-allow", "Metadata.internal"])
        opened = ("127.0.0.1:8080", "10.0.0.0/8", "metadata.internal")
        self.assertEqual(options["worker-policy"].webhook_allow, opened)
        branch = tap.makeService(options)
        self.assertEqual(branch.getServiceNamed("tasks").url_check.opened, opened)
        self.assertIs(branch.getServiceNamed("supervisor").worker_policy, options["worker-policy"])
        self.assertIn("--webhook-allow", tap.Options().getUsage())
        for bad in ("http://127.0.0.1/", "10.0.0.0/33", "[1:2]", "a b"):
            with self.subTest(entry=bad):
                message = self.usage_error(["-D", self.root_path(), "--webhook-allow", bad])
                self.assertIn("--webhook-allow", message)

    def test_sets_log_level(self):
        options = self.parse(["-l", "error", "-D", self.root_path()])
        tap.makeService(options)
        self.assertEqual(logs._predicate.defaultLogLevel, LogLevel.error)


class LogFormatTests(OptionsTestsMixin, SynchronousTestCase):
    def setUp(self):
        self.addCleanup(logs.set_level, LogLevel.info)
        keep_umask(self)

    def test_text_by_default(self):
        branch = tap.makeService(self.parse(["--without-http", "-D", self.root_path()]))
        application = service.Application("cyme-branch")
        branch.setServiceParent(application)
        # twistd's own observer (--logfile, stdout) stays.
        self.assertIsNone(application.getComponent(ILogObserver, None))

    def test_json_is_twistds_observer(self):
        options = self.parse(["--log-format", "json", "--without-http", "-D", self.root_path()])
        branch = tap.makeService(options)
        # What twistd does with a plugin's service before it starts logging.
        application = service.Application("cyme-branch")
        branch.setServiceParent(application)
        observer = application.getComponent(ILogObserver)
        self.assertIsInstance(observer, JSONLinesObserver)
        self.assertIs(observer, branch.log_observer)

    def test_bad_format(self):
        self.assertIn("--log-format must be text or json, not 'xml'",
                      self.usage_error(["--log-format", "xml", "-D", self.root_path()]))


class SystemdWiringTests(OptionsTestsMixin, SynchronousTestCase):
    def setUp(self):
        self.addCleanup(logs.set_level, LogLevel.info)
        keep_umask(self)
        saved = {k: os.environ.get(k) for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}

        def restore():
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

        self.addCleanup(restore)

    def test_not_under_systemd(self):
        os.environ.pop("NOTIFY_SOCKET", None)
        branch = tap.makeService(self.parse(["127.0.0.1:0", "-D", self.root_path()]))
        self.assertRaises(KeyError, branch.getServiceNamed, "systemd")

    def test_under_systemd(self):
        os.environ.update(NOTIFY_SOCKET="@cyme-test", WATCHDOG_USEC="10000000",
                          WATCHDOG_PID=str(os.getpid()))
        branch = tap.makeService(self.parse(["127.0.0.1:0", "-D", self.root_path()]))
        notify = branch.getServiceNamed("systemd")
        self.assertEqual((notify.notifier.address, notify.watchdog), ("@cyme-test", 10.0))
        # Started after the API listens, stopped before anything else.
        self.assertIs(list(branch)[-1], notify)
        # The fork server and the workers do not inherit systemd's socket.
        self.assertNotIn("NOTIFY_SOCKET", os.environ)
        self.assertNotIn("WATCHDOG_USEC", os.environ)


class WorkerLogLevelTests(SynchronousTestCase):
    def test_every_branch_level_is_a_celery_level(self):
        from cyme.logs import LEVELS, parse_level
        from cyme.tap import CELERY_LEVELS

        for name in (*LEVELS, "warning"):
            self.assertIn(
                CELERY_LEVELS[parse_level(name).name],
                ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
            )


class AuthOptionTests(OptionsTestsMixin, SynchronousTestCase):
    def test_no_trust_loopback(self):
        root = self.root_path()
        self.assertFalse(self.parse(["-D", root])["no-trust-loopback"])
        self.assertIn("--no-trust-loopback", tap.Options().getUsage())

    def test_flag(self):
        options = self.parse(["-D", self.root_path(), "--no-trust-loopback"])
        self.assertTrue(options["no-trust-loopback"])


class APIURLFileTests(SynchronousTestCase):
    """The branch writes where its API is for ``cyme-branch token``."""

    def test_written_while_running(self):
        root = RootDir.open(os.path.abspath(self.mktemp()))
        self.addCleanup(root.close)
        path = os.path.join(root.path, "api.url")
        branch = tap.BranchService(root, "b1", api_url="http://127.0.0.1:8001/")
        branch.startService()
        with open(path, encoding="utf-8") as f:
            self.assertEqual(f.read(), "http://127.0.0.1:8001/\n")
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        branch.stopService()
        self.assertFalse(os.path.exists(path))

    def test_none_without_http(self):
        root = RootDir.open(os.path.abspath(self.mktemp()))
        self.addCleanup(root.close)
        branch = tap.BranchService(root, "b1")
        branch.startService()
        self.assertFalse(os.path.exists(os.path.join(root.path, "api.url")))
        branch.stopService()


class UnixEndpointTests(OptionsTestsMixin, SynchronousTestCase):
    def test_only_the_owner_by_default(self):
        options = self.parse(["-D", self.root_path(), "--http", "unix:/tmp/x.sock"])
        self.assertEqual(options["endpoint"], "unix:/tmp/x.sock:mode=600")

    def test_mode_given(self):
        options = self.parse(["-D", self.root_path(), "--http", "unix:/tmp/x.sock:mode=660"])
        self.assertEqual(options["endpoint"], "unix:/tmp/x.sock:mode=660")


class WorkerPolicyOptionTests(OptionsTestsMixin, SynchronousTestCase):
    def test_defaults_open_nothing(self):
        policy = self.parse(["-D", self.root_path()])["worker-policy"]
        self.assertEqual(policy.task_modules, ())
        self.assertEqual(policy.accept_content, frozenset())
        self.assertEqual(policy.max_concurrency, 4 * (os.cpu_count() or 1))
        self.assertEqual(policy.max_instances, 100)

    def test_repeatable_task_modules_and_serializers(self):
        policy = self.parse([
            "-D", self.root_path(), "--task-module", "myproject.tasks*",
            "--task-module=shared.jobs", "--accept-content", "pickle,yaml",
            "--accept-content=msgpack", "--max-concurrency", "16", "--max-instances=5",
        ])["worker-policy"]
        self.assertEqual(policy.task_modules, ("myproject.tasks*", "shared.jobs"))
        self.assertEqual(policy.accept_content, {"pickle", "yaml", "msgpack"})
        self.assertEqual((policy.max_concurrency, policy.max_instances), (16, 5))

    def test_bad_values_are_usage_errors(self):
        for argv, says in [
            (["--task-module", "my project"], "--task-module"),
            (["--accept-content", "marshal"], "--accept-content"),
            (["--max-concurrency", "0"], "--max-concurrency"),
            (["--max-instances", "many"], "--max-instances"),
        ]:
            with self.subTest(argv=argv):
                self.assertIn(says, self.usage_error(argv + ["-D", self.root_path()]))

    def test_the_policy_reaches_supervisor_and_operations(self):
        self.addCleanup(logs.set_level, LogLevel.info)
        keep_umask(self)
        options = self.parse(["--without-http", "-D", self.root_path(),
                              "--task-module", "t.*", "--max-instances", "3"])
        branch = tap.makeService(options)
        supervisor = branch.getServiceNamed("supervisor")
        self.assertIs(supervisor.worker_policy, options["worker-policy"])


class BrokerTLSOptionTests(OptionsTestsMixin, SynchronousTestCase):
    """C{-b amqps://...} and C{--broker-ca}: the pool and the workers verify brokers."""

    def ca_file(self):
        from tests.tlsbroker import PrivateCA

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        return PrivateCA(directory).path

    def test_an_amqps_broker_and_a_private_ca(self):
        ca = self.ca_file()
        relative = os.path.relpath(ca)
        options = self.parse(["-D", self.root_path(), "-b", "amqps://u:p@rabbit/vh",
                              "--broker-ca", relative])
        broker = options["default-broker"]
        self.assertEqual((broker.ssl, broker.port, broker.hostname), (True, 5671, "rabbit"))
        # Absolute: workers run in directories of their own.
        self.assertEqual(options["broker-tls"].ca_file, ca)
        self.assertEqual(options["worker-policy"].broker_ca, ca)

    def test_without_a_ca_the_systems(self):
        options = self.parse(["-D", self.root_path()])
        self.assertIsNone(options["broker-tls"].ca_file)
        self.assertIsNone(options["worker-policy"].broker_ca)

    def test_a_file_that_is_no_ca_is_a_usage_error(self):
        missing = os.path.abspath(self.mktemp())
        self.assertIn(f"--broker-ca: cannot read {missing}",
                      self.usage_error(["-D", self.root_path(), "--broker-ca", missing]))
        with open(missing, "w") as f:
            f.write("not a certificate\n")
        self.assertEqual(self.usage_error(["-D", self.root_path(), "--broker-ca", missing]),
                         f"--broker-ca: {missing} holds no PEM certificate")

    def test_the_pool_verifies_with_it(self):
        from cyme.amqp import BrokerPool

        self.addCleanup(logs.set_level, LogLevel.info)
        keep_umask(self)
        options = self.parse(["--without-http", "-D", self.root_path(),
                              "--broker-ca", self.ca_file()])
        branch = tap.makeService(options)
        [pool] = [s for s in branch if isinstance(s, BrokerPool)]
        self.assertIs(pool.client("amqps://guest:guest@rabbit//").tls, options["broker-tls"])
        self.assertIs(branch.getServiceNamed("supervisor").worker_policy.broker_ca,
                      options["broker-tls"].ca_file)


class RootModeTests(OptionsTestsMixin, SynchronousTestCase):
    def test_root_and_its_files_are_the_branchs_alone(self):
        import stat

        root = self.root_path()
        os.makedirs(os.path.join(root, "instances"), mode=0o755)
        os.chmod(root, 0o755)
        with open(os.path.join(root, "state.json"), "w") as f:
            f.write('{"schema": 0}')
        os.chmod(os.path.join(root, "state.json"), 0o644)
        with open(os.path.join(root, "results.jsonl"), "w") as f:
            f.write("")
        os.chmod(os.path.join(root, "results.jsonl"), 0o644)
        from cyme.state.rootdir import RootDir

        opened = RootDir.open(root)
        self.addCleanup(opened.close)
        opened.branch_id()
        mode = lambda *p: stat.S_IMODE(os.stat(os.path.join(root, *p)).st_mode)  # noqa: E731
        self.assertEqual(mode(), 0o700)
        self.assertEqual(mode("instances"), 0o700)
        for name in ("state.json", "branch.lock", "branch.id", "results.jsonl"):
            with self.subTest(file=name):
                self.assertEqual(mode(name), 0o600)

    def test_a_state_file_with_a_reserved_app_name_still_loads_with_a_warning(self):
        import json

        from twisted.logger import globalLogPublisher

        from cyme.state.store import SCHEMA_VERSION

        root = self.root_path()
        os.makedirs(root)
        app = {"name": "tokens", "broker": {"hostname": "h", "port": 5672, "userid": "u",
               "password": "p", "virtual_host": "/"}}
        with open(os.path.join(root, "state.json"), "w") as f:
            json.dump({"schema": SCHEMA_VERSION, "apps": {"tokens": app}, "queues": {},
                       "instances": {}}, f)
        options = self.parse(["--without-http", "-D", root])
        self.assertEqual([a.name for a in options["store"].apps()], ["tokens"])
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.addCleanup(logs.set_level, LogLevel.info)
        keep_umask(self)
        tap.makeService(options)
        warnings = [e for e in events if e.get("app") == "tokens"]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["log_level"], LogLevel.warn)


class ClusterKeyOptionTests(OptionsTestsMixin, SynchronousTestCase):
    def default_key(self):
        return os.path.join(self.config_home, "cyme", "cluster.key")

    def test_the_default_key_is_made_at_the_first_start_then_used(self):
        import stat

        self.assertFalse(os.path.exists(self.default_key()))
        [key] = self.parse(["-D", self.root_path()])["cluster-keys"]
        self.assertEqual(key.path, self.default_key())
        self.assertEqual(stat.S_IMODE(os.stat(key.path).st_mode), 0o600)
        self.assertEqual(self.parse(["-D", self.root_path()])["cluster-keys"], [key])

    def test_a_key_file_and_a_previous_one(self):
        from cyme.cluster.keys import new_key_file

        new = new_key_file(os.path.join(self.config_home, "new.key"))
        old = new_key_file(os.path.join(self.config_home, "old.key"))
        options = self.parse(["-D", self.root_path(), "--cluster-key-file", new.path,
                              "--previous-cluster-key-file", old.path])
        self.assertEqual(options["cluster-keys"], [new, old])
        self.assertFalse(os.path.exists(self.default_key()))

    def test_a_missing_or_open_key_file_stops_the_start_in_one_line(self):
        from cyme.cluster.keys import new_key_file

        missing = os.path.join(self.config_home, "missing.key")
        options = tap.Options()
        failure = self.assertRaises(tap.StartupFailed, options.parseOptions,
                                    ["-D", self.root_path(), "--cluster-key-file", missing])
        self.assertIn(f"no cluster key file {missing}", str(failure))
        self.assertEqual(options.getUsage(), "")
        readable = new_key_file(os.path.join(self.config_home, "open.key"))
        os.chmod(readable.path, 0o640)
        error = self.usage_error(["-D", self.root_path(), "--cluster-key-file", readable.path])
        self.assertIn("may be read by others (mode 0640)", error)
        self.assertNotIn(readable.secret.decode(), error)

    def test_an_open_bus_has_no_key_and_takes_none(self):
        options = self.parse(["-D", self.root_path(), "--insecure-open-bus"])
        self.assertEqual(options["cluster-keys"], [])
        self.assertFalse(os.path.exists(self.default_key()))
        error = self.usage_error(["-D", self.root_path(), "--insecure-open-bus",
                                  "--cluster-key-file", "k"])
        self.assertIn("--insecure-open-bus runs the bus without a key", error)

    def test_the_bus_broker(self):
        root = self.root_path()
        self.assertEqual(self.parse(["-D", root, "-b", "amqp://u:p@apps//"])["bus-broker-url"],
                         "amqp://u:p@apps:5672/%2F")
        options = self.parse(["-D", self.root_path(), "-b", "amqp://u:p@apps//",
                              "--bus-broker", "amqp://cyme:s@bus:5673/cyme"])
        self.assertEqual(options["bus-broker-url"], "amqp://cyme:s@bus:5673/cyme")
        self.assertEqual(options["default-broker"].hostname, "apps")
        self.patch(os, "environ", dict(os.environ, CYME_BUS_BROKER_URL="amqp://e:s@envbus//"))
        self.assertEqual(self.parse(["-D", self.root_path()])["bus-broker-url"],
                         "amqp://e:s@envbus:5672/%2F")
        error = self.usage_error(["-D", self.root_path(), "--bus-broker", "http://x/"])
        self.assertIn("--bus-broker must be an amqp://", error)


class BusWiringTests(OptionsTestsMixin, SynchronousTestCase):
    def setUp(self):
        super().setUp()
        self.addCleanup(logs.set_level, LogLevel.info)
        keep_umask(self)

    def test_the_bus_is_sealed_with_the_key_on_its_own_broker(self):
        options = self.parse(["--without-http", "-D", self.root_path(),
                              "--bus-broker", "amqp://cyme:s@bus:5673/cyme"])
        bus = tap.makeService(options).getServiceNamed("bus")
        self.assertTrue(bus.seal.sealed)
        self.assertEqual(bus.seal.source, options["cluster-keys"][0].path)
        self.assertEqual(bus.transport.url, "amqp://cyme:s@bus:5673/cyme")
        self.assertEqual(bus.transport.broadcast_exchange, "cyme.bus")

    def test_the_workers_are_kept_off_the_bus_of_the_branchs_cluster(self):
        options = self.parse(["--without-http", "-D", self.root_path(), "--cluster", "prod"])
        service = tap.makeService(options)
        self.assertEqual(service.getServiceNamed("bus").transport.broadcast_exchange,
                         "prod.bus")
        # The names its workers may not consume (cyme.supervision.workers).
        self.assertEqual(service.getServiceNamed("supervisor").cluster, "prod")

    def test_an_open_bus(self):
        options = self.parse(["--without-http", "-D", self.root_path(), "--insecure-open-bus"])
        self.assertFalse(tap.makeService(options).getServiceNamed("bus").seal.sealed)

    def test_what_the_start_changed_is_logged(self):
        import json

        from twisted.logger import formatEvent, globalLogPublisher

        root = self.root_path()
        os.makedirs(root)
        with open(os.path.join(root, "state.json"), "w") as f:
            json.dump({"schema": 1, "apps": {}, "queues": {}, "instances": {}}, f)
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        options = self.parse(["--without-http", "-D", root])
        tap.makeService(options)
        lines = [formatEvent(e) for e in events]
        key = os.path.join(self.config_home, "cyme", "cluster.key")
        self.assertIn(f"made the cluster key {key}: copy it to the machines of the other "
                      "branches of this cluster (README: Security)", lines)
        state = os.path.join(root, "state.json")
        self.assertIn(f"state file {state} is of schema 1, an older cyme's: it is rewritten "
                      f"in schema 2 at the first change, the old one kept as {state}.schema-1",
                      lines)
