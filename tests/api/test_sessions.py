"""The login sessions a branch keeps in memory (cyme.api.sessions): each
ends with its token or after its lifetime, and there are never more than
the limits, however many logins come."""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cyme.api.sessions import LIFETIME, Sessions
from cyme.state.tokens import Token, hash_secret

SECRET = "cyme_secret"


def token(name="ci", expires=None):
    return Token(name=name, scopes=("read",), hash=hash_secret(SECRET), expires=expires)


class SessionsTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_000_000)

    def test_a_session_holds_its_token_until_it_ends(self):
        sessions = Sessions(self.clock.seconds)
        sid, expires = sessions.open(SECRET, token())
        self.assertEqual(expires, self.clock.seconds() + LIFETIME)
        self.assertEqual(sessions.secret(sid), SECRET)
        self.assertIsNone(sessions.secret("another"))
        self.clock.advance(LIFETIME)
        self.assertIsNone(sessions.secret(sid))
        self.assertEqual(len(sessions), 0)

    def test_no_later_than_its_token(self):
        sessions = Sessions(self.clock.seconds)
        sid, expires = sessions.open(SECRET, token(expires=self.clock.seconds() + 60))
        self.assertEqual(expires, self.clock.seconds() + 60)
        self.clock.advance(60)
        self.assertIsNone(sessions.secret(sid))

    def test_ids_are_random_and_closed_ones_gone(self):
        sessions = Sessions(self.clock.seconds)
        ids = {sessions.open(SECRET, token(f"t{i}"))[0] for i in range(50)}
        self.assertEqual(len(ids), 50)
        self.assertTrue(all(len(i) >= 40 and SECRET not in i for i in ids))
        one = ids.pop()
        sessions.close(one)
        self.assertIsNone(sessions.secret(one))
        sessions.close("unknown")

    def test_bounded_oldest_first(self):
        sessions = Sessions(self.clock.seconds, limit=3)
        first, second, third, fourth = (
            sessions.open(SECRET, token(f"t{i}"))[0] for i in range(4))
        self.assertEqual(len(sessions), 3)
        self.assertIsNone(sessions.secret(first))
        self.assertEqual([sessions.secret(s) for s in (second, third, fourth)], [SECRET] * 3)

    def test_a_token_pushes_out_only_its_own(self):
        sessions = Sessions(self.clock.seconds, limit=10, per_token=2)
        other = sessions.open(SECRET, token("other"))[0]
        mine = [sessions.open(SECRET, token("ci"))[0] for _ in range(5)]
        self.assertEqual(len(sessions), 3)
        self.assertEqual(sessions.secret(other), SECRET)
        self.assertEqual([sessions.secret(s) is not None for s in mine],
                         [False, False, False, True, True])

    def test_ended_sessions_make_room(self):
        sessions = Sessions(self.clock.seconds, limit=2)
        old = sessions.open(SECRET, token("a", expires=self.clock.seconds() + 1))[0]
        kept = sessions.open(SECRET, token("b"))[0]
        self.clock.advance(1)
        sessions.open(SECRET, token("c"))
        self.assertIsNone(sessions.secret(old))
        self.assertEqual(sessions.secret(kept), SECRET)
