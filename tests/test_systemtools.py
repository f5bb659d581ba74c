"""L{tests.systemtools.need}: a missing tool skips a test, or fails it under CI."""

from twisted.trial.unittest import FailTest, SkipTest, SynchronousTestCase

from tests.systemtools import need

MISSING = "cyme-test-no-such-tool"


class NeedTests(SynchronousTestCase):
    def test_a_tool_found_is_its_path(self):
        self.assertTrue(need("sh", "dash", {"CYME_REQUIRE_TOOLS": "1"}).endswith("/sh"))

    def test_a_missing_tool_skips_naming_its_package(self):
        for environ in ({}, {"CYME_REQUIRE_TOOLS": ""}, {"CYME_REQUIRE_TOOLS": "0"}):
            with self.subTest(environ=environ):
                e = self.assertRaises(SkipTest, need, MISSING, "cyme-pkg", environ)
                self.assertEqual(str(e), f"{MISSING} is not installed (Debian package cyme-pkg)")

    def test_a_missing_tool_fails_when_required(self):
        e = self.assertRaises(FailTest, need, MISSING, "cyme-pkg", {"CYME_REQUIRE_TOOLS": "1"})
        self.assertEqual(str(e), f"{MISSING} is not installed (Debian package cyme-pkg), "
                                 "and CYME_REQUIRE_TOOLS=1 requires it")
