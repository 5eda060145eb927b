"""Terminal output for the CLI: sizes, ages, tables, JSON and progress bars (rich).

`out` and `err` (rich consoles) are made on first use: rich takes ~25 ms to import, which
`c3fs mount` and `c3fs --help` need not pay.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from c3fs.errors import UsageError
from c3fs.fsutil import age, count, human  # noqa: F401  (output.age, .count, .human)

if TYPE_CHECKING:
    from rich.console import Console

    out: Console
    err: Console
quiet = False  # -q: no progress, no summaries, no warnings; errors and results only
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2,
          "mib": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "t": 1000**4,
          "tb": 1000**4, "tib": 1024**4}


def __getattr__(name: str) -> Console:
    if name not in ("out", "err"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return _console(name)


def _console(name: str) -> Console:
    """The console `out` or `err`, made on the first call."""
    if name not in globals():
        from rich.console import Console

        console = Console(stderr=name == "err", highlight=False, soft_wrap=True)
        console.on_broken_pipe = _reader_gone  # type: ignore[method-assign]
        if not console.is_terminal:  # a pipe or a file: rows are never folded (grep, cut)
            console.width = 100_000
        globals()[name] = console
    return globals()[name]



_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r", "\a": "\\a", "\b": "\\b",
            "\f": "\\f", "\v": "\\v"}


def escape(text: str | bytes) -> str:
    """Untrusted text (a name, a link target, a record field) as GNU `ls -b` shows it: C
    escapes for control characters and backslashes, octal for other unprintable bytes, so
    no escape sequence reaches the terminal and every name stays on one line. Bytes are
    decoded as UTF-8; a byte that is not is shown in octal."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "surrogateescape")
    if text.isprintable() and "\\" not in text:  # (most names: no character to escape)
        return text
    return "".join(c if c.isprintable() and c != "\\" else _escape_char(c) for c in text)


def _reader_gone() -> None:
    """Instead of rich's own handling (stdout to /dev/null, then exit 1): the command ends
    as any other whose stdout's reader went away (see `c3fs_cli.main._run`)."""
    raise BrokenPipeError(32, "Broken pipe")


def _escape_char(c: str) -> str:
    code = ord(c)
    if c in _ESCAPES:
        return _ESCAPES[c]
    if 0xDC80 <= code <= 0xDCFF:  # a byte that is not UTF-8 (surrogateescape)
        return f"\\{code - 0xDC00:03o}"
    return f"\\{code:03o}" if code < 256 else f"\\u{code:04x}"


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise UsageError(f"not a size: {text!r} (examples: 500MiB, 50GiB, 1TB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def print_json(value) -> None:
    import msgspec

    sys.stdout.write(json.dumps(msgspec.to_builtins(value), indent=2, sort_keys=True) + "\n")


def timing(what: str, started: float, nbytes: int | None = None) -> None:
    """Under -v: how long `what` took since `started` (time.monotonic), and its rate."""
    import logging

    elapsed = time.monotonic() - started
    rate = f", {human(nbytes / elapsed)}/s" if nbytes and elapsed > 0 else ""
    logging.getLogger("c3fs.cli").info("%s in %.3f s%s", what, elapsed, rate)


def _plain(stream) -> bool:
    """Whether `stream` is surely no terminal, by rich's own rule (`Console.is_terminal`:
    TTY_COMPATIBLE and FORCE_COLOR, when set, decide; else `isatty`), asked without rich,
    whose import and console cost a command ~25 ms of CPU (a pull in a script)."""
    if os.environ.get("TTY_COMPATIBLE") in ("0", "1") or "FORCE_COLOR" in os.environ:
        return os.environ.get("TTY_COMPATIBLE") == "0"
    try:
        return not stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return True


def result_line(text: str) -> None:
    """One line of a command's result to stdout: on a terminal through rich (as
    `out.print(text, markup=False)`), to a pipe or a file as it is (see `_plain`)."""
    if _plain(sys.stdout):
        sys.stdout.write(text + "\n")
    else:
        _console("out").print(text, markup=False)


def note(text: str) -> None:
    """A summary or notice for the person at the terminal (stderr); silent under -q."""
    if not quiet:
        _console("err").print(text, markup=False, highlight=False)


def no_bar() -> bool:
    """Whether surely no progress bar is drawn (-q, or stderr no terminal), asked without
    importing rich (see `_plain`)."""
    return quiet or _plain(sys.stderr)


@contextlib.contextmanager
def progress_bar(label: str, total: int | None, files: int | None = None) -> Iterator:
    """Yields an `advance(n, files=0)` callable (n bytes, and files, more done); draws a bar
    only when stderr is a terminal (and not under -q). Sizes in IEC units (KiB, MiB), as
    every summary; `files`: how many files there are, shown as done/total beside them."""
    if no_bar():
        yield lambda n, files=0: None
        return
    console = _console("err")
    if not console.is_terminal:
        yield lambda n, files=0: None
        return
    from rich.progress import Progress

    with Progress(*progress_columns(files), console=console, transient=True) as bar:
        task = bar.add_task(label, total=total, files_done=0)
        done = itertools.count(1)

        def advance(n: int, files: int = 0) -> None:
            if files:  # (next() of a count: atomic under the GIL, as the copy's threads need)
                bar.update(task, advance=n, files_done=max(next(done) for _ in range(files)))
            else:
                bar.advance(task, n)

        yield advance


def progress_columns(files: int | None = None) -> tuple:
    from rich.progress import BarColumn, DownloadColumn, TextColumn, TimeRemainingColumn

    counted = () if files is None else (
        TextColumn(f"{{task.fields[files_done]}}/{files} files", style="progress.download"),)
    return (TextColumn("[bold]{task.description}"), BarColumn(),
            DownloadColumn(binary_units=True), *counted, _speed_column(),
            TimeRemainingColumn())


def _speed_column():
    """rich's TransferSpeedColumn counts in decimal units (MB/s): this one in MiB/s."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class SpeedColumn(ProgressColumn):
        def render(self, task) -> Text:
            speed = task.finished_speed or task.speed
            return Text("?" if speed is None else f"{human(speed)}/s", style="progress.data.speed")

    return SpeedColumn()


@contextlib.contextmanager
def status(label: str) -> Iterator:
    """Yields an `update(text)` callable; shows a status line only when stderr is a terminal
    (and not under -q)."""
    console = _console("err")
    if quiet or not console.is_terminal:
        yield lambda text: None
        return
    with console.status(label) as line:
        yield lambda text: line.update(f"{label}: {text}")


def mtime(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ns / 1e9))


def row(table, *cells: str) -> None:
    """Add a row of plain text: a cell is never read as rich markup (`[/bold]` in a reason)."""
    from rich.text import Text

    table.add_row(*(Text(cell) for cell in cells))


def write_lines(lines: Iterator[str] | list[str], batch: int = 4096) -> int:
    """Print lines to stdout as they come, many to a write: rich's console costs ~0.1 ms a
    line, which made `ls` of 100,000 names take 10 s. The lines are printed as given:
    escape untrusted text first (`escape`). Returns how many were printed."""
    chunk: list[str] = []
    written = 0
    for line in lines:
        chunk.append(line)
        if len(chunk) >= batch:
            sys.stdout.write("\n".join(chunk) + "\n")
            written += len(chunk)
            chunk = []
    if chunk:
        sys.stdout.write("\n".join(chunk) + "\n")
        written += len(chunk)
    sys.stdout.flush()
    return written


def columns(headers: tuple[str, ...], rows: Iterable[tuple[str, ...]],
            right: tuple[int, ...] = ()) -> Iterator[str]:
    """A table as plain lines: columns as wide as their widest cell, two spaces apart, the
    header bold on a terminal; `right`: the columns aligned right. Linear in the rows (a
    rich table of 100,000 jobs took minutes); cells must be escaped already (no control
    character in them: a row is held as one line).

    The widths are known only once every row is seen: the rows are held meanwhile, in
    memory up to `SPILL` bytes and in a temporary file past that, so a listing of 100,000
    jobs does not hold them all."""
    import tempfile  # (here: a push or pull need not load it, nor random and shutil)

    widths = [len(h) for h in headers]
    with tempfile.SpooledTemporaryFile(SPILL, mode="w+", encoding="utf-8", newline="\n",
                                       errors="surrogateescape") as held:
        for batch in _batched(rows, ROWS):
            for i, column in enumerate(zip(*batch, strict=True)):  # (zip, map, max run in C)
                widths[i] = max(widths[i], *map(len, column))
            held.write("".join(map(_held_line, batch)))
        held.seek(0)
        # one format string for every line: a call a row, not a call a cell
        spec = "  ".join(f"{{:{'>' if i in right else '<'}{w}}}" for i, w in enumerate(widths))
        line = spec.format

        head = line(*headers).rstrip()
        yield f"\033[1m{head}\033[0m" if sys.stdout.isatty() else head
        for text in held:
            yield line(*text[:-1].split(_CELL)).rstrip()


SPILL = 4 * 1024 * 1024  # bytes of a table's rows held in memory; past that, in a file
ROWS = 1024  # rows measured at once (the widths: zip, map and max, in C)
_CELL = "\x1f"  # between a held row's cells (escaped cells have no control characters)


def _held_line(row: tuple[str, ...]) -> str:
    return _CELL.join(row) + "\n"


def _batched(items: Iterable, size: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def table(*headers: str):
    from rich.table import Table

    t = Table(box=None, pad_edge=False, header_style="bold")
    for i, h in enumerate(headers):  # the first column names the row: never folded
        t.add_column(h, overflow="fold", no_wrap=i == 0)
    return t


JSON_BATCH = 1024  # items of a streamed JSON list encoded at once (one call: ~4x faster than each)


def print_json_listing(fields: dict, key: str, items: Iterable) -> int:
    """`print_json({**fields, key: list(items)})`, the same text, with the items written as
    they come instead of held: `ls --json` of 100,000 jobs. Returns how many items."""
    return print_json_lists(fields, {key: items})[key]


def print_json_lists(fields: dict, lists: dict[str, Iterable]) -> dict[str, int]:
    """`print_json({**fields, **lists})` with each of `lists` (top-level keys) written item
    by item as it is read. Returns how many items each had."""
    import msgspec

    markers = {key: json.dumps(f"\0items{k}\0") for k, key in enumerate(lists)}
    text = json.dumps(msgspec.to_builtins({**fields, **{key: json.loads(marker) for key, marker
                                                         in markers.items()}}),
                      indent=2, sort_keys=True)
    write = sys.stdout.write
    counts: dict[str, int] = {}
    for key in sorted(lists, key=lambda key: text.index(markers[key])):  # as the text has them
        head, _, text = text.partition(markers[key])
        write(head)
        written = 0
        items = iter(lists[key])
        while batch := list(itertools.islice(items, JSON_BATCH)):
            # a batch as the list's items are in the whole document: one level in
            inner = json.dumps({"": msgspec.to_builtins(batch)}, indent=2, sort_keys=True)
            write(("[\n" if not written else ",\n") + inner[len('{\n  "": [\n'):-len("\n  ]\n}")])
            written += len(batch)
        write("\n  ]" if written else "[]")
        counts[key] = written
    write(text + "\n")
    sys.stdout.flush()
    return counts
