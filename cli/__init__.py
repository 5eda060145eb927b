"""The `c3fs` command line. Importing it starts reading ahead, in the background, the files
the command is about to load (`c3fs.preload`), before click and the library are imported."""

import os
import sys


def _open_standard_streams() -> None:
    """A command started with stdin, stdout or stderr closed (`c3fs ls >&-`) gets /dev/null
    there. Else the next file it opened would take that number and receive what is printed
    (a pack of the store, a copied file), and Python's sys.stdout is None (a traceback at
    the first print). What it prints there is discarded, as the closed stream asked."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # the lowest free number: this one
    for name, fd, mode in (("stdin", 0, "r"), ("stdout", 1, "w"), ("stderr", 2, "w")):
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, mode, closefd=False))


_open_standard_streams()

from c3fs import preload  # noqa: E402  (after the streams: it opens files in a thread)

preload.start(sys.argv[1:])
