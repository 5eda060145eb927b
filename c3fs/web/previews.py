"""Previews of a file's first bytes: JSON metrics as a table, CSV as rows, text as lines.
Everything returned is plain data (strings), escaped by the templates."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field

from c3fs.errors import FormatError
from c3fs.objects.nesting import check_json_depth
from c3fs.web.http import image_type

PREVIEW_BYTES = 256 * 1024  # what a page reads of a file to preview it
JSON_BYTES = 1024 * 1024  # a JSON file up to this size is parsed whole
LINES = 200
ROWS = 50
COLUMNS = 40
JSON_DEPTH = 32
TEXT_SUFFIXES = (b".txt", b".log", b".md", b".yaml", b".yml", b".toml", b".ini", b".cfg",
                 b".py", b".sh", b".out", b".err", b".c3")


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    truncated: bool = False


@dataclass
class Preview:
    kind: str  # image, json, csv, text, binary, empty
    table: Table | None = None
    lines: list[str] = field(default_factory=list)
    truncated: bool = False
    note: str = ""


def kind_of(name: bytes) -> str:
    lower = name.lower()
    if image_type(name):
        return "image"
    if lower.endswith(b".json"):
        return "json"
    if lower.endswith((b".csv", b".tsv")):
        return "csv"
    if lower.endswith(TEXT_SUFFIXES):
        return "text"
    return "other"


def preview(name: bytes, head: bytes, size: int) -> Preview:
    """A preview of a file named `name` of `size` bytes from its first bytes `head`
    (at least min(size, JSON_BYTES) of them for a .json file)."""
    kind = kind_of(name)
    if size == 0:
        return Preview("empty")
    if kind == "image":
        return Preview("image")
    if kind == "json" and size <= JSON_BYTES:
        table = json_table(head)
        if table is not None:
            return Preview("json", table=table)
    if kind == "csv":
        return Preview("csv", table=csv_table(head, b"\t" if name.lower().endswith(b".tsv")
                                              else b","), truncated=size > len(head))
    if kind in ("text", "json") or _looks_like_text(head):
        return text_preview(head, size)
    return Preview("binary")


def _looks_like_text(head: bytes) -> bool:
    sample = head[:8192]
    if b"\0" in sample:
        return False
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start > len(sample) - 4  # only a character cut at the sample's end
    return True


def text_preview(head: bytes, size: int) -> Preview:
    lines = head.decode("utf-8", "replace").splitlines()
    return Preview("text", lines=lines[:LINES], truncated=len(lines) > LINES or size > len(head))


def json_table(raw: bytes) -> Table | None:
    """Metrics as rows: an object as (key, value) rows, nested objects by dotted keys; a list
    of objects as one row each. None if `raw` is not such JSON."""
    try:
        check_json_depth(raw, "JSON file", JSON_DEPTH)
        data = json.loads(raw)
    except (FormatError, ValueError, RecursionError):
        return None
    if isinstance(data, dict):
        rows = [[key, _cell(value)] for key, value in _flatten(data)]
        return Table(["key", "value"], rows[:LINES], len(rows) > LINES)
    if isinstance(data, list) and data and all(isinstance(item, dict) for item in data):
        return _records_table(data)
    return None


def _flatten(data: dict, prefix: str = "") -> list[tuple[str, object]]:
    """(dotted key, leaf value) pairs, breadth first with an explicit stack (no recursion)."""
    out: list[tuple[str, object]] = []
    stack = [(prefix, data)]
    while stack and len(out) <= LINES:
        base, node = stack.pop(0)
        for key, value in node.items():
            name = f"{base}.{key}" if base else str(key)
            if isinstance(value, dict) and value:
                stack.append((name, value))
            else:
                out.append((name, value))
    return out


def _records_table(items: list[dict]) -> Table:
    header: list[str] = []
    for item in items[:ROWS]:
        header += [str(k) for k in item if str(k) not in header]
    header = header[:COLUMNS]
    rows = [[_cell(item.get(k, "")) for k in header] for item in items[:ROWS]]
    return Table(header, rows, len(items) > ROWS)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (dict, list)):
        text = json.dumps(value)
        return text if len(text) <= 200 else text[:200] + "…"
    return str(value)


def csv_table(head: bytes, delimiter: bytes) -> Table:
    text = head.decode("utf-8", "replace")
    reader = csv.reader(io.StringIO(text), delimiter=delimiter.decode())
    rows: list[list[str]] = []
    try:
        for row in reader:
            rows.append([cell[:200] for cell in row[:COLUMNS]])
            if len(rows) > ROWS:
                break
    except csv.Error:
        pass
    header = rows[0] if rows else []
    return Table(header, rows[1 : ROWS + 1], len(rows) > ROWS)
