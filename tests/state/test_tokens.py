"""Tests for cyme.state.tokens: the token record, its parsing, the store's
tokens (hash only, on disk too) and their replication (versions and
tombstones: a revocation wins over an older copy)."""

import json
import os

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from cyme.errors import BadRequest, NotFound, StartupError
from cyme.state.replica import Replica
from cyme.state.store import IStore, JSONFileStore, MemoryStore
from cyme.state.tokens import (
    Token, check_duration, check_scopes, hash_secret, new_secret, token_key,
)


def make(name="ci", scopes=("read",), secret=None, expires=None):
    secret = secret or new_secret()
    return Token(name=name, scopes=scopes, hash=hash_secret(secret), created=1.0,
                 expires=expires), secret


class ParsingTests(SynchronousTestCase):
    def test_scopes(self):
        self.assertEqual(check_scopes("write,read"), ("read", "write"))
        self.assertEqual(check_scopes(["admin", "read", "read"]), ("read", "admin"))
        for bad in ("", "root", "read,,write", [], None, ["read", 1]):
            with self.assertRaises(BadRequest, msg=repr(bad)):
                check_scopes(bad)

    def test_durations(self):
        self.assertEqual(check_duration("30d"), 30 * 86400)
        self.assertEqual(check_duration("12h"), 12 * 3600)
        self.assertEqual(check_duration("90m"), 5400)
        self.assertEqual(check_duration("3600"), 3600)
        self.assertEqual(check_duration(60), 60)
        for bad in ("0", "-1d", "1y", "1.5h", "", "d", None, True, "9999999999"):
            with self.assertRaises(BadRequest, msg=repr(bad)):
                check_duration(bad)

    def test_secret(self):
        a, b = new_secret(), new_secret()
        self.assertNotEqual(a, b)
        self.assertTrue(a.startswith("cyme_"))
        self.assertGreaterEqual(len(a), 40)

    def test_record(self):
        token, secret = make(expires=10.0)
        self.assertTrue(token.matches(secret))
        self.assertFalse(token.matches(secret + "x"))
        self.assertFalse(token.expired(9.9))
        self.assertTrue(token.expired(10.0))
        self.assertNotIn(secret, repr(token))
        self.assertEqual(Token.from_json(token.to_json()), token)
        self.assertNotIn("hash", token.public_json())
        with self.assertRaises(BadRequest):
            Token(name="../x", scopes="read", hash=token.hash)
        with self.assertRaises(BadRequest):
            Token(name="x", scopes="read", hash="not-a-hash")


class StoreTokensTests(SynchronousTestCase):
    def setUp(self):
        self.store = MemoryStore()
        self.assertTrue(verifyObject(IStore, self.store))

    def test_find_by_secret(self):
        token, secret = make()
        other, other_secret = make("other")
        self.store.put_token(token, (1, "b1"))
        self.store.put_token(other, (1, "b1"))
        self.assertEqual(self.store.find_token(secret), token)
        self.assertEqual(self.store.find_token(other_secret), other)
        self.assertIsNone(self.store.find_token(new_secret()))
        self.assertIsNone(self.store.find_token(token.hash))  # the hash is no secret
        self.assertIsNone(self.store.find_token(None))
        self.assertEqual([t.name for t in self.store.tokens()], ["ci", "other"])

    def test_delete_leaves_a_tombstone(self):
        token, secret = make()
        changes = []
        self.store.subscribe(changes.append)
        self.store.put_token(token, (1, "b1"))
        self.store.delete_token("ci", (2, "b1"))
        self.assertIsNone(self.store.find_token(secret))
        self.assertRaises(NotFound, self.store.get_token, "ci")
        self.assertRaises(NotFound, self.store.delete_token, "ci", (3, "b1"))
        self.assertEqual(self.store.version(token_key("ci")), (2, "b1"))
        self.assertEqual([c.kind for c in changes], ["put_token", "delete_token"])

    def test_replicated_and_revoked_everywhere(self):
        token, secret = make()
        other = MemoryStore()
        self.store.put_token(token, (10, "b1"))
        other.merge(Replica.from_json(self.store.replica()))
        self.assertEqual(other.find_token(secret), token)
        self.assertEqual(other.digest(), self.store.digest())
        before = self.store.replica()
        self.store.delete_token("ci", (20, "b1"))
        other.merge(Replica.from_json(self.store.replica()))
        self.assertIsNone(other.find_token(secret))
        # An older copy (a branch that was away) does not bring it back.
        other.merge(Replica.from_json(before))
        self.assertIsNone(other.find_token(secret))
        self.assertEqual(other.digest(), self.store.digest())

    def test_file_keeps_the_hash_only(self):
        path = self.mktemp()
        store = JSONFileStore(path)
        token, secret = make(expires=99.0)
        store.put_token(token, (1, "b1"))
        with open(path, encoding="utf-8") as f:
            text = f.read()
        self.assertNotIn(secret, text)
        self.assertIn(token.hash, text)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        self.assertEqual(JSONFileStore(path).find_token(secret), token)

    def test_old_state_file_without_tokens_loads(self):
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"schema": 1, "apps": {}, "queues": {}, "instances": {}}, f)
        self.assertEqual(JSONFileStore(path).tokens(), [])

    def test_token_under_another_key_refused(self):
        path = self.mktemp()
        token, _ = make()
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"schema": 2, "apps": {}, "queues": {}, "instances": {},
                       "tokens": {"admin": token.to_json()}}, f)
        self.assertRaises(StartupError, JSONFileStore, path)
