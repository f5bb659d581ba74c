"""What cyme.api.http bounds: the parsing of bodies (JSON depth, multipart
headers), each checked for what it refuses and for what it still lets
through."""

import time

from twisted.trial.unittest import SynchronousTestCase

from cyme.api.http import (
    MAX_HEADER_PARAMS, MAX_JSON_DEPTH, MAX_PART_HEADER, check_json_depth, multipart_fields,
)
from cyme.errors import BadRequest


class JSONDepthTests(SynchronousTestCase):
    def test_brackets_in_strings_do_not_count(self):
        deep = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
        check_json_depth(deep)
        for text in [b'{"a": "' + b"[" * 100 + b'"}', b'{"a": "\\"' + b"[" * 100 + b'"}',
                     b'{"a": "\\\\", "b": [1]}']:
            check_json_depth(text)
        self.assertRaises(BadRequest, check_json_depth, b"[" * (MAX_JSON_DEPTH + 1))
        # A string that ends with an escaped backslash ends there.
        self.assertRaises(BadRequest, check_json_depth,
                          b'["\\\\", ' + b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH + b"]")
        # An unclosed string runs to the end: the parser refuses the text.
        check_json_depth(b'["' + b"[" * 100)

    def test_linear(self):
        for body in (b'"\\' * 500_000, b'"' * 1_000_000, b'"a' * 500_000, b"[]" * 500_000):
            started = time.monotonic()
            check_json_depth(body)
            self.assertLess(time.monotonic() - started, 2.0)


class MultipartTests(SynchronousTestCase):
    def body(self, disposition, boundary=b"B", epilogue=b""):
        return (b"--%s\r\nContent-Disposition: %s\r\n\r\nv\r\n--%s--\r\n%s"
                % (boundary, disposition, boundary, epilogue))

    def test_part_header_parameters_bounded(self):
        ctype = b"multipart/form-data; boundary=B"
        params = b'form-data; name="f"' + b"; x=y" * (MAX_HEADER_PARAMS - 1)
        self.assertEqual(multipart_fields(self.body(params), ctype), {"f": "v"})
        error = self.assertRaises(BadRequest, multipart_fields,
                                  self.body(params + b"; x=y"), ctype)
        self.assertEqual(error.field, "body")
        self.assertIn(str(MAX_HEADER_PARAMS), error.message)
        long = b'form-data; name="f"; filename="' + b"a" * MAX_PART_HEADER + b'"'
        self.assertRaises(BadRequest, multipart_fields, self.body(long), ctype)
        self.assertRaises(BadRequest, multipart_fields, self.body(b'form-data; name="f"'),
                          ctype + b"; x=y" * MAX_HEADER_PARAMS)

    def test_what_still_parses(self):
        ctype = b"multipart/form-data; boundary=B"
        named = b'form-data; name="f"; filename="a;b.txt"'
        self.assertEqual(multipart_fields(self.body(named), ctype), {"f": "v"})
        # What follows the closing delimiter is no part, however long.
        self.assertEqual(multipart_fields(
            self.body(b'form-data; name="f"', epilogue=b"x; " * 10_000), ctype), {"f": "v"})
        # A part without headers is a part without a name: refused as such.
        error = self.assertRaises(BadRequest, multipart_fields,
                                  b"--B\r\n\r\nv\r\n--B--\r\n", ctype)
        self.assertIn("without a field name", error.message)
