"""`python -m c3fs.fuse [options] REF MOUNTPOINT`: start a mount daemon from a fresh process.

Used by `c3fs.fuse.mount` when its caller has threads (forking those is unsafe). Prints the
daemon's pid on stdout once the mount answers; on failure, one error line on stderr
(`c3fs.fuse.error_line`) and the error's exit code. The daemon gets `--ack-fd`, the read end
of the pipe through which the process that started this one acknowledges the mount (if it
dies first, the daemon unmounts).
"""

from __future__ import annotations

import argparse
import logging
import sys

from c3fs.errors import C3fsError
from c3fs.fuse import DEFAULT_CACHE, error_line
from c3fs.fuse import _fork_daemon as fork_daemon
from c3fs.fuse import _wait_answering as wait_answering


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m c3fs.fuse")
    parser.add_argument("ref")
    parser.add_argument("mountpoint")
    parser.add_argument("--store")
    parser.add_argument("--allow-other", action="store_true")
    parser.add_argument("--source")
    parser.add_argument("--cache-bytes", type=int, default=DEFAULT_CACHE)
    parser.add_argument("--log-file", required=True)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--ack-fd", type=int, required=True)
    opts = parser.parse_args(argv)
    # the daemon's warnings for the user, one "warning MESSAGE" line each (see _spawn_daemon)
    logging.basicConfig(level=logging.WARNING, format="warning %(message)s", force=True)
    args = (opts.store, opts.ref, opts.mountpoint, opts.allow_other, opts.cache_bytes,
            opts.source)
    try:
        pid = fork_daemon(args, opts.log_file, opts.timeout, opts.ack_fd)
        wait_answering(opts.mountpoint, pid, opts.log_file, opts.timeout)
    except C3fsError as exc:
        print(error_line(exc), file=sys.stderr)
        return exc.exit_code
    print(pid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
