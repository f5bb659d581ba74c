"""Tests for cyme.backoff: the one function of delays between tries."""

from twisted.trial.unittest import SynchronousTestCase

from cyme.backoff import DEFAULT_CAP, backoff_delay, backoff_policy


def no_jitter():
    return 0.0


def full_jitter():
    return 1.0


class BackoffDelayTests(SynchronousTestCase):
    def test_first_attempt_waits_nothing(self):
        for attempt in (0, -1):
            self.assertEqual(backoff_delay(attempt, rand=full_jitter), 0.0)

    def test_doubles_from_initial_up_to_the_cap(self):
        delays = [backoff_delay(n, rand=no_jitter) for n in range(1, 9)]
        self.assertEqual(delays, [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, DEFAULT_CAP, DEFAULT_CAP])

    def test_parameters(self):
        delays = [backoff_delay(n, initial=0.5, factor=3.0, cap=10.0, rand=no_jitter)
                  for n in range(1, 5)]
        self.assertEqual(delays, [0.5, 1.5, 4.5, 10.0])

    def test_jitter_scales_down_by_at_most_its_fraction(self):
        self.assertEqual(backoff_delay(3, jitter=0.5, rand=full_jitter), 0.2)
        self.assertAlmostEqual(backoff_delay(3, jitter=0.5, rand=lambda: 0.5), 0.3)
        self.assertEqual(backoff_delay(3, jitter=0.0, rand=full_jitter), 0.4)

    def test_default_random_source_stays_in_bounds(self):
        for _ in range(200):
            delay = backoff_delay(10)
            self.assertTrue(DEFAULT_CAP / 2 <= delay <= DEFAULT_CAP, delay)

    def test_huge_attempt_is_the_cap(self):
        self.assertEqual(backoff_delay(10 ** 6, rand=no_jitter), DEFAULT_CAP)
        self.assertEqual(backoff_delay(5000, factor=2, rand=no_jitter), DEFAULT_CAP)

    def test_worker_restart_policy(self):
        # Restarting a worker: at once, then 0.5 s doubling to 60 s, with
        # up to half of it taken off at random.
        delays = [backoff_delay(n, initial=0.5, cap=60.0, rand=no_jitter) for n in range(9)]
        self.assertEqual(delays, [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0])


class BackoffPolicyTests(SynchronousTestCase):
    def test_binds_the_parameters(self):
        policy = backoff_policy(initial=1.0, factor=2.0, cap=3.0, jitter=0.5, rand=full_jitter)
        self.assertEqual([policy(n) for n in range(4)], [0.0, 0.5, 1.0, 1.5])

    def test_same_as_the_function(self):
        policy = backoff_policy(rand=lambda: 0.25)
        for attempt in range(12):
            self.assertEqual(policy(attempt), backoff_delay(attempt, rand=lambda: 0.25))
