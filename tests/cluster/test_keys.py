"""Cluster key files: where the default one is, made once 0600, read with care."""

import os
import stat

from twisted.trial.unittest import SynchronousTestCase

from cyme.cluster import keys
from cyme.errors import StartupError


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


class DefaultPathTests(SynchronousTestCase):
    def test_under_xdg_config_home_when_set_else_home(self):
        self.assertEqual(keys.default_path({"XDG_CONFIG_HOME": "/c", "HOME": "/h"}),
                         "/c/cyme/cluster.key")
        self.assertEqual(keys.default_path({"HOME": "/h"}), "/h/.cyme/cluster.key")
        # The XDG specification: a relative path is to be ignored.
        self.assertEqual(keys.default_path({"XDG_CONFIG_HOME": "rel", "HOME": "/h"}),
                         "/h/.cyme/cluster.key")
        self.assertEqual(keys.default_path({"XDG_CONFIG_HOME": "", "HOME": "/h"}),
                         "/h/.cyme/cluster.key")


class KeyFileTests(SynchronousTestCase):
    def setUp(self):
        self.home = os.path.abspath(self.mktemp())
        self.environ = {"HOME": self.home}

    def test_the_default_key_is_made_at_the_first_start_then_kept(self):
        [key], made = keys.keys_at_start(environ=self.environ)
        path = os.path.join(self.home, ".cyme", "cluster.key")
        self.assertTrue(made)
        self.assertEqual(key.path, path)
        self.assertEqual(mode(path), 0o600)
        self.assertEqual(mode(os.path.dirname(path)), 0o700)
        [again], made = keys.keys_at_start(environ=self.environ)
        self.assertFalse(made)
        self.assertEqual(again, key)
        self.assertEqual(os.listdir(os.path.dirname(path)), ["cluster.key"])

    def test_another_home_another_key(self):
        [mine], _ = keys.keys_at_start(environ=self.environ)
        [theirs], _ = keys.keys_at_start(environ={"HOME": os.path.abspath(self.mktemp())})
        self.assertNotEqual(mine.secret, theirs.secret)

    def test_the_secret_is_never_in_a_repr(self):
        [key], _ = keys.keys_at_start(environ=self.environ)
        self.assertNotIn(key.secret.decode(), repr(key))

    def test_a_named_file_must_exist(self):
        path = os.path.join(self.home, "nope.key")
        error = self.assertRaises(StartupError, keys.keys_at_start, path)
        self.assertIn(f"no cluster key file {path}", str(error))
        self.assertIn("cyme-branch cluster-key new FILE", str(error))
        self.assertFalse(os.path.exists(path))

    def test_new_key_file_never_overwrites(self):
        path = os.path.join(self.home, "k", "cluster.key")
        first = keys.new_key_file(path)
        error = self.assertRaises(StartupError, keys.new_key_file, path)
        self.assertIn("exists already", str(error))
        self.assertEqual(keys.read_key_file(path), first)
        self.assertEqual(mode(path), 0o600)

    def test_a_key_file_others_may_read_is_refused_without_quoting_it(self):
        path = os.path.join(self.home, "cluster.key")
        key = keys.new_key_file(path)
        os.chmod(path, 0o644)
        error = str(self.assertRaises(StartupError, keys.read_key_file, path))
        self.assertIn("may be read by others (mode 0644): chmod 600", error)
        self.assertNotIn(key.secret.decode(), error)

    def test_a_file_that_holds_no_key_is_refused_without_quoting_it(self):
        os.makedirs(self.home)
        for content in (b"", b"secret-password\n", b"x" * 44, b"\xff" * 10):
            path = os.path.join(self.home, "bad.key")
            with open(path, "wb") as f:
                f.write(content)
            os.chmod(path, 0o600)
            with self.subTest(content=content):
                error = str(self.assertRaises(StartupError, keys.read_key_file, path))
                self.assertIn(f"{path} holds no cluster key", error)
                self.assertNotIn("secret-password", error)

    def test_a_directory_is_no_key_file(self):
        os.makedirs(self.home)
        os.chmod(self.home, 0o700)
        error = str(self.assertRaises(StartupError, keys.read_key_file, self.home))
        self.assertIn("is not a regular file", error)

    def test_a_previous_key_comes_second(self):
        new = keys.new_key_file(os.path.join(self.home, "new.key"))
        old = keys.new_key_file(os.path.join(self.home, "old.key"))
        found, made = keys.keys_at_start(new.path, old.path)
        self.assertEqual((found, made), ([new, old], False))
        error = self.assertRaises(StartupError, keys.keys_at_start, new.path,
                                  os.path.join(self.home, "gone.key"))
        self.assertIn("--previous-cluster-key-file", str(error))
