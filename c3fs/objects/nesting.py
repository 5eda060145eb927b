"""How deeply a document read from a store may nest, checked before it is decoded.

Every format c3fs reads is flat: a job record is an object whose deepest values are the
objects in its `inputs` list (depth 3); the store config, a lock and a pull mark are one
object (depth 1). A decoder that meets deeper nesting could only be reading a crafted or
damaged document, and decoding it would recurse once per level. msgpack formats (trees,
pack trailers) need no check: their schemas are closed (no field of any type, no extra
array items), so the decoder refuses a container where the schema has none, at once.
JSON documents may carry fields a later version adds, so those are checked here, in one
pass and without recursion, against `MAX_JSON_DEPTH`: the deepest legal document with room
to grow.
"""

from __future__ import annotations

import re

from c3fs.errors import FormatError

MAX_JSON_DEPTH = 8
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)  # a JSON string, escapes included
_BRACKET = re.compile(rb"[\[\]{}]")


def _deeper_than(raw: bytes, limit: int) -> bool:
    """Whether JSON text `raw` nests arrays and objects more than `limit` deep (brackets
    inside strings do not count); stops at the first level past `limit`."""
    if raw.count(b"[") + raw.count(b"{") <= limit:  # the usual case: no scan needed
        return False
    depth = 0
    for match in _BRACKET.finditer(_STRING.sub(b'""', raw)):
        if match.group() in b"[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def check_json_depth(raw: bytes, what: str, limit: int = MAX_JSON_DEPTH) -> None:
    """Raise FormatError naming `what` if `raw` nests deeper than `limit`."""
    if _deeper_than(raw, limit):
        raise FormatError(f"damaged {what}: nested deeper than {limit} levels")
