"""Many instances created at once: the supervisor's side of a burst.

Workers the launcher holds back (the fork server forks standbys for
them) start as soon as it says they can, and their creations still answer
once they are up; each instance's command is made once, not once a round.
"""

from cyme.state.models import App, Instance
from cyme.supervision.fakes import FakeLauncher
from cyme.supervision.workers import WorkerCommands, worker_command

from tests.supervision.test_supervisor import SupervisorTestCase


class HeldBackTests(SupervisorTestCase):
    def setUp(self):
        super().setUp()
        self.launcher = FakeLauncher(self.reactor)

    def options(self):
        return {"launcher": self.launcher}

    def add_many(self, names):
        """Created at once (one converge round for all, as the API's changes make)."""
        for name in names:
            self.store.put_instance(Instance(name=name, app="foo"))
        self.supervisor.reconcile()
        self.reactor.advance(0)

    def test_workers_held_back_start_when_the_launcher_can(self):
        self.launcher.slots = 1
        self.start()
        names = [f"w{n}" for n in range(5)]
        waits = [self.supervisor.wait_ready(name, 10) for name in names]
        self.add_many(names)
        self.assertEqual(len(self.launcher.spawned), 1)
        self.assertEqual(self.launcher.asked, 4)
        # Held back, not failed: nothing to see but a worker not started yet.
        self.assertEqual({self.state(n) for n in names[1:]}, {"stopped"})
        self.assertEqual({self.supervisor.status(n)["last_error"] for n in names}, {None})
        self.launcher.give(4)
        self.reactor.advance(0)
        self.assertEqual(len(self.launcher.spawned), 5)
        for name in names:
            self.boot(name)
        self.assertEqual([self.successResultOf(d)["state"] for d in waits],
                         ["running"] * 5)
        self.assertEqual({self.supervisor.status(n)["restarts"] for n in names}, {0})

    def test_a_tick_starts_nothing_the_launcher_holds_back(self):
        self.launcher.slots = 0
        self.start()
        self.add_many(["w1", "w2"])
        self.pump(10)  # two ticks
        self.assertEqual(self.launcher.spawned, [])
        self.launcher.give(2)
        self.reactor.advance(0)
        self.assertEqual(len(self.launcher.spawned), 2)


class WorkerCommandsTests(SupervisorTestCase):
    """Each instance's command, made again only when one of its records is replaced."""

    def commands(self):
        return WorkerCommands("h", "/py")

    def test_the_same_records_make_the_same_command_once(self):
        commands = self.commands()
        app, instance = App("foo"), Instance(name="w1", app="foo")
        first = commands.get(instance, app, [], "/d/w1")
        self.assertIs(commands.get(instance, app, [], "/d/w1"), first)
        self.assertEqual(first, worker_command(instance, app, [], "/d/w1", "h", "/py"))

    def test_a_replaced_record_makes_a_new_command(self):
        commands = self.commands()
        instance = Instance(name="w1", app="foo")
        old = commands.get(instance, App("foo"), [], "/d/w1")
        new = commands.get(instance, App("foo", arguments="--prefetch-multiplier=4"),
                           [], "/d/w1")
        self.assertIn("--prefetch-multiplier=4", new[0])
        self.assertNotEqual(new[2], old[2])  # the spec: its worker is restarted
        solo = commands.get(Instance(name="w1", app="foo", pool="solo"), App("foo"),
                            [], "/d/w1")
        self.assertIn("solo", solo[0])
        queue = self.store.get_queue("foo", "tasks")
        with_queue = commands.get(Instance(name="w1", app="foo", queues=["tasks"]),
                                  App("foo"), [queue], "/d/w1")
        self.assertIn("dq.w1,tasks", with_queue[0])

    def test_a_forgotten_instance_is_made_again(self):
        commands = self.commands()
        app, instance = App("foo"), Instance(name="w1", app="foo")
        first = commands.get(instance, app, [], "/d/w1")
        commands.forget("w1")
        self.assertIsNot(commands.get(instance, app, [], "/d/w1"), first)
