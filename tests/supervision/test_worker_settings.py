"""What reaches a worker, and what one bad record cannot do to the others.

The supervisor on the fake process reactor: the broker's password is in
the worker's environment, never its command line; the worker's files are
the branch's alone; a record this branch's API would refuse (an older
state file's, or one replicated from a branch whose operator allows more)
fails its own instance, with the reason and a backoff, while every other
instance is started, supervised and adopted as usual.
"""

import json
import os
import stat

import attrs

from cyme.state.models import App, Broker, Instance
from cyme.state.workeroptions import WorkerPolicy
from cyme.supervision.workers import worker_command

from tests.supervision.test_supervisor import SupervisorTestCase

SECRET = "s3cr3t-pw"


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


class PolicySupervisorTestCase(SupervisorTestCase):
    worker_policy = None

    def put(self, name, app, **fields):
        """Instance C{name} of C{app}, as a change of the store tells the supervisor."""
        self.store.put_instance(Instance(name=name, app=app, **fields))
        if self.supervisor is not None and self.supervisor.running:
            self.supervisor.reconcile()
            self.reactor.advance(0)

    def config(self, process):
        return json.loads(process.env["CYME_WORKER_CONFIG"])


class SecretsTests(PolicySupervisorTestCase):
    def test_the_broker_url_is_in_the_environment_not_on_the_command_line(self):
        self.store.put_app(App("secret", broker=Broker(hostname="rabbit", userid="me",
                                                        password=SECRET)))
        self.start()
        self.put("w1", "secret")
        process = self.process("w1")
        self.assertNotIn(SECRET, " ".join(process.args))
        self.assertNotIn("-b", process.args)
        self.assertEqual(process.env["CELERY_BROKER_URL"],
                         f"amqp://me:{SECRET}@rabbit:5672/%2F")
        # The remote control still talks to the worker's own broker.
        self.assertEqual(self.control.broker("w1@h"), process.env["CELERY_BROKER_URL"])

    def test_worker_directory_and_files_are_the_branchs_alone(self):
        self.start()
        self.add("w1")
        directory = os.path.join(self.root, "w1")
        self.assertEqual(mode(directory), 0o700)
        for name in ("worker.pid", "worker.spec"):
            with self.subTest(file=name):
                self.assertEqual(mode(os.path.join(directory, name)), 0o600)

    def test_a_worker_directory_of_an_older_version_is_tightened(self):
        directory = os.path.join(self.root, "w1")
        os.makedirs(directory, mode=0o755)
        os.chmod(directory, 0o755)
        self.start()
        self.add("w1")
        self.assertEqual(mode(directory), 0o700)


class BadRecordTests(PolicySupervisorTestCase):
    """Records no API of this branch would write, as an older state file holds them."""

    def failed_beside_w2(self, app, reason):
        """
        w1 of C{app} (a bad record) fails with C{reason}, and w2 beside it
        runs; w1's status.
        """
        self.store.put_app(app)
        self.start()
        self.put("w1", app.name)
        self.add("w2")
        self.boot("w2")
        self.assertEqual([p.node() for p in self.reactor.live()], ["w2@h"])
        status = self.supervisor.status("w1")
        self.assertEqual((status["state"], status["pid"]), ("failed", None))
        self.assertIn("cannot start: " + reason, status["last_error"])
        return status

    def test_unreadable_arguments_fail_their_instance_only(self):
        status = self.failed_beside_w2(App("bad", arguments='"'),
                                       "app arguments cannot be read as a command line")
        self.assertGreaterEqual(status["restarts"], 1)  # the first retry is at once
        # It keeps being tried with backoff, then quarantined, while w2
        # is supervised as ever: its death is noticed and it is restarted.
        self.pump(20)
        self.assertEqual(self.state("w1"), "quarantined")
        self.assertIn("cannot start: app arguments", self.supervisor.status("w1")["last_error"])
        self.process("w2").exit(status=1)
        self.reactor.advance(0)
        self.assertEqual(len([p for p in self.reactor.live() if p.node() == "w2@h"]), 1)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_a_forbidden_option_in_an_old_record_fails_its_instance(self):
        self.store.put_instance(Instance(name="w1", app="foo", arguments="--logfile=/tmp/x"))
        self.start()
        self.add("w2")
        self.assertEqual([p.node() for p in self.reactor.live()], ["w2@h"])
        self.assertIn("--logfile is not allowed", self.supervisor.status("w1")["last_error"])

    def test_worker_pool_restarts_in_an_old_record_fails_its_instance(self):
        # Allowed before: its pool_restart remote command imports any module.
        self.store.put_app(App("old", extra_config={"worker_pool_restarts": True}))
        self.start()
        self.put("w1", "old")
        self.add("w2", extra_config={"worker_pool_restarts": False})
        self.add("w3")
        self.assertEqual([p.node() for p in self.reactor.live()], ["w3@h"])
        for name in ("w1", "w2"):
            self.assertIn("setting 'worker_pool_restarts' is not allowed (it lets a remote "
                          "command import any module)", self.supervisor.status(name)["last_error"])

    def test_a_broker_host_no_url_can_carry_fails_its_instance_only(self):
        self.store.put_instance(Instance(name="w1", app="foo", broker=Broker(hostname="[")))
        self.start()
        self.add("w2")
        self.assertEqual([p.node() for p in self.reactor.live()], ["w2@h"])
        self.assertIn("broker hostname must be a host name",
                      self.supervisor.status("w1")["last_error"])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_an_apps_broker_host_no_url_can_carry_fails_its_instances_only(self):
        self.failed_beside_w2(App("bad", broker=Broker(hostname="[", password=SECRET)),
                              "broker hostname must be a host name")
        self.pump(20)
        self.assertEqual(self.state("w1"), "quarantined")
        self.assertNotIn(SECRET, self.supervisor.status("w1")["last_error"])
        self.assertEqual(self.state("w2"), "running")
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_fixing_the_record_starts_the_worker(self):
        self.store.put_app(App("bad", arguments='"'))
        self.store.put_instance(Instance(name="w1", app="bad"))
        self.start()
        self.assertEqual(self.reactor.live(), [])
        self.store.put_app(App("bad", arguments="-O fair"))
        self.supervisor.restart("w1")
        self.reactor.advance(0)
        self.assertIn("fair", self.process("w1").args)

    def test_adoption_skips_a_bad_record_and_adopts_the_others(self):
        self.store.put_instance(Instance(name="w1", app="foo", broker=Broker(hostname="[")))
        self.store.put_instance(Instance(name="w2", app="foo"))
        for name, pid in (("w1", 4241), ("w2", 4242)):
            directory = os.path.join(self.root, name)
            os.makedirs(directory)
            with open(os.path.join(directory, "worker.pid"), "w") as f:
                f.write(f"{pid}\n")
            self.processes.table[pid] = f"{name}@h"
        self.control.up("w2@h")
        self.start()
        self.pump(0.1)
        self.assertEqual(self.supervisor.status("w2")["state"], "running")
        self.assertEqual(self.supervisor.status("w2")["pid"], 4242)
        self.assertTrue(self.supervisor.running)
        self.flushLoggedErrors()


class PolicyAtSpawnTests(PolicySupervisorTestCase):
    """A record replicated from a branch whose operator opened more."""

    def test_modules_outside_this_branchs_patterns_are_not_imported(self):
        self.worker_policy = WorkerPolicy(task_modules=("myproject.tasks*",))
        self.store.put_app(App("mine", imports=["myproject.tasks.emails"]))
        self.store.put_app(App("theirs", imports=["os"]))
        self.start()
        self.store.put_instance(Instance(name="w1", app="mine"))
        self.put("w2", "theirs")
        self.assertEqual(self.config(self.process("w1"))["imports"], ["myproject.tasks.emails"])
        self.assertEqual([p.node() for p in self.reactor.live()], ["w1@h"])
        self.assertIn("module os is not allowed on this branch",
                      self.supervisor.status("w2")["last_error"])

    def test_a_serializer_this_branch_does_not_accept(self):
        self.store.put_app(App("p", extra_config={"accept_content": ["pickle"]}))
        self.start()
        self.put("w1", "p")
        self.assertEqual(self.reactor.live(), [])
        self.assertIn("pickle is not accepted", self.supervisor.status("w1")["last_error"])

    def test_an_instance_written_before_the_cap_was_lowered_still_starts(self):
        self.worker_policy = WorkerPolicy(max_concurrency=2)
        self.start()
        self.add("w1", max_concurrency=3)
        self.assertIn("--autoscale=3,1", self.process("w1").args)


class WorkerCommandTests(PolicySupervisorTestCase):
    def test_vetted_settings_reach_the_worker(self):
        app = App("foo", arguments="--prefetch-multiplier=4 -Ofair",
                  extra_config={"task_time_limit": 30}, imports=["myproject.tasks"])
        instance = Instance("w1", "foo", extra_config={"worker_max_tasks_per_child": 100})
        argv, env, spec = worker_command(
            instance, app, [], "/d", "h", "/py",
            policy=WorkerPolicy(task_modules=("myproject.*",)),
        )
        self.assertEqual(argv[-2:], ["--prefetch-multiplier=4", "-Ofair"])
        config = json.loads(env["CYME_WORKER_CONFIG"])
        self.assertEqual(config["extra_config"],
                         {"task_time_limit": 30, "worker_max_tasks_per_child": 100})
        self.assertEqual(config["imports"], ["myproject.tasks"])
        # Imports are part of what only a restart changes.
        _, _, other = worker_command(
            instance, attrs.evolve(app, imports=()), [], "/d", "h", "/py",
            policy=WorkerPolicy(task_modules=("myproject.*",)),
        )
        self.assertNotEqual(spec, other)


    def test_a_tls_broker_is_verified_by_the_worker_too(self):
        app = App("foo", broker=Broker(hostname="localhost", ssl=True, password=SECRET))
        policy = WorkerPolicy(broker_ca="/etc/cyme/ca.pem")
        argv, env, spec = worker_command(Instance("w1", "foo"), app, [], "/d", "h", "/py",
                                         policy=policy)
        self.assertEqual(env["CELERY_BROKER_URL"], f"amqps://guest:{SECRET}@localhost:5671/%2F")
        # With the branch's CA, and the URL's host name for the certificate.
        self.assertEqual(json.loads(env["CYME_WORKER_CONFIG"])["broker_tls"],
                         {"ca_certs": "/etc/cyme/ca.pem", "server_hostname": "localhost"})
        self.assertNotIn(SECRET, " ".join(argv))
        # Another CA bundle restarts the worker; a plain broker has no TLS.
        _, _, other = worker_command(Instance("w1", "foo"), app, [], "/d", "h", "/py")
        self.assertNotEqual(spec, other)
        _, env, _ = worker_command(Instance("w1", "foo"), App("foo"), [], "/d", "h", "/py",
                                   policy=policy)
        self.assertNotIn("broker_tls", json.loads(env["CYME_WORKER_CONFIG"]))

    def test_an_instances_own_tls_broker(self):
        instance = Instance("w1", "foo", broker=Broker.from_url("amqps://u:p@[::1]:5999/v"))
        _, env, _ = worker_command(instance, App("foo"), [], "/d", "h", "/py")
        self.assertEqual(env["CELERY_BROKER_URL"], "amqps://u:p@[::1]:5999/v")
        self.assertEqual(json.loads(env["CYME_WORKER_CONFIG"])["broker_tls"],
                         {"ca_certs": None, "server_hostname": "::1"})


class FilesAndSpecTests(PolicySupervisorTestCase):
    def test_the_exec_launchers_worker_log_is_0600(self):
        from cyme.supervision.fakes import FakeProcessReactor
        from cyme.supervision.launcher import ExecLauncher
        from cyme.supervision.workers import WorkerProtocol

        log_path = os.path.join(self.root, "worker.log")
        ExecLauncher(FakeProcessReactor()).spawn(
            WorkerProtocol(lambda reason: None), ["/py"], {}, self.root, log_path)
        self.assertEqual(mode(log_path), 0o600)

    def test_the_spec_of_a_worker_without_imports_is_as_before(self):
        # A branch upgraded to this version does not restart its workers.
        import hashlib

        app, instance = App("foo"), Instance("w1", "foo")
        _, _, spec = worker_command(instance, app, [], "/d", "h", "/py")
        before = hashlib.sha256("\0".join(
            [app.broker.as_url(), "prefork", "", "", "{}"]).encode("utf-8")).hexdigest()[:16]
        self.assertEqual(spec, before)


class FenceConfigTests(PolicySupervisorTestCase):
    """The worker's fence of queued URLs is its branch's word, in its
    configuration: a task message, which any user of the app's broker may
    write, can only narrow it."""

    def test_the_worker_gets_the_apps_list_and_the_operators_openings(self):
        self.worker_policy = WorkerPolicy.from_options(
            webhook_allow=["127.0.0.1:8080", "Metadata.internal"], webhook_deny_private=True)
        self.store.put_app(App("foo", allowed_hosts=["127.0.0.1:8080", "api.example.com"]))
        self.start()
        self.add("w1")
        self.assertEqual(self.config(self.process("w1"))["webhook"], {
            "allowed_hosts": ["127.0.0.1:8080", "api.example.com"], "deny_private": True,
            "opened": ["127.0.0.1:8080", "metadata.internal"]})
        self.add("w1")  # nothing changed: not restarted
        self.assertEqual(len(self.reactor.live()), 1)

    def test_by_default_nothing_is_opened(self):
        self.start()
        self.add("w1")
        self.assertEqual(self.config(self.process("w1"))["webhook"],
                         {"allowed_hosts": [], "deny_private": False, "opened": []})

    def test_changing_allowed_hosts_restarts_the_apps_workers(self):
        import signal

        self.store.put_app(App("bar"))
        self.start()
        self.add("w1")
        self.put("w2", "bar")
        first, other = self.boot("w1"), self.boot("w2")
        self.store.put_app(App("foo", task_timeout=30))  # not the worker's: no restart
        self.supervisor.reconcile()
        self.reactor.advance(0)
        self.assertEqual(first.signals, [])
        self.store.put_app(App("foo", allowed_hosts=["10.0.0.0/8"]))
        self.supervisor.reconcile()
        self.reactor.advance(0)
        self.assertIn(signal.SIGTERM, first.signals)
        second = self.process("w1")
        self.assertNotEqual(second.pid, first.pid)
        self.assertEqual(self.config(second)["webhook"]["allowed_hosts"], ["10.0.0.0/8"])
        self.assertEqual(other.signals, [])  # another app's worker

    def test_the_spec_changes_with_the_fence_and_only_then(self):
        app, instance = App("foo"), Instance("w1", "foo")

        def spec(app=app, **policy):
            return worker_command(instance, app, [], "/d", "h", "/py",
                                  policy=WorkerPolicy.from_options(**policy))[2]

        default = spec()
        self.assertEqual(spec(task_modules=["t.*"], accept_content=["pickle"]), default)
        others = [spec(app=App("foo", allowed_hosts=["127.0.0.1"])),
                  spec(app=App("foo", allowed_hosts=["127.0.0.2"])),
                  spec(webhook_deny_private=True), spec(webhook_allow=["127.0.0.1"]),
                  spec(webhook_allow=["127.0.0.1:80"])]
        self.assertEqual(len({default, *others}), 6)
        # The same records and options: the same spec (an adopted worker stays).
        self.assertEqual(spec(webhook_allow=["127.0.0.1"]), others[3])
        self.assertEqual(spec(app=App("foo", allowed_hosts=["127.0.0.1"])), others[0])
        # A module named like a flag is no flag: imports and fence differ.
        self.assertNotEqual(spec(app=App("foo", imports=["deny_private"]), task_modules=["*"]),
                            spec(webhook_deny_private=True))
