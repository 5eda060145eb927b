"""`mount.c3fs`: c3fs as a mount(8) helper, for /etc/fstab and systemd mount units.

    mount.c3fs SPEC DIR [-sfnv] [-N NS] [-o OPTIONS]       (what mount(8) runs for -t c3fs)
    c3fs SPEC DIR -o OPTIONS          (what mount.fuse3 runs for c3fs#SPEC and fuse.c3fs:
                                       SPEC starts with "/", and it always passes -o)

SPEC is a ref (`/jobs/<id>`, `/projects/<p>/jobs/<id>`, `/datasets/<name>`, a folder inside
one, `/` for everything), optionally written `c3fs#REF`; `c3fs` alone is the whole namespace.
OPTIONS are mount's comma-separated list: c3fs's own (`OPTIONS` below) and the generic ones
mount(8), mount.fuse3 and systemd pass along (`IGNORED`: a c3fs mount is always read-only,
nosuid and nodev). It mounts as `c3fs mount` does and returns once the mount answers, the
daemon in the background. mount(8) gives helpers no PATH and, from fstab or systemd, none of
the caller's environment: the store and cache directory are options.

Exit status as mount(8) documents for helpers: 0 mounted, 1 bad usage or option, 32 the mount
failed (the reason on stderr, one line).
"""

from __future__ import annotations

import os
import sys

USAGE = ("usage: mount.c3fs SPEC DIR [-sfnv] [-o store=URL,cache_dir=DIR,allow_other,...]\n"
         "  SPEC: /jobs/<id>, /projects/<p>/jobs/<id>, /datasets/<name>, a folder in one, "
         "/ or c3fs (everything); c3fs#SPEC too")
# option -> where it goes: a global option of `c3fs`, an option of `c3fs mount`, or a
# variable of the mount's environment; flags take no value
OPTIONS = {
    "store": ("global", "--store"),
    "disk_cache": ("global", "--disk-cache"),
    "profile": ("global", "--profile"),
    "endpoint": ("global", "--endpoint"),
    "region": ("global", "--region"),
    "cache_dir": ("env", "C3FS_CACHE_DIR"),
    "cache_size": ("mount", "--cache-size"),
    "log_file": ("mount", "--log-file"),
    "expect": ("mount", "--expect"),
    "allow_other": ("mount", "--allow-other"),
}
FLAGS = {"allow_other"}
IGNORED = {"ro", "rw", "defaults", "auto", "noauto", "user", "users", "nouser", "owner",
           "group", "nofail", "_netdev", "dev", "nodev", "suid", "nosuid", "exec", "noexec",
           "atime", "noatime", "relatime", "norelatime", "strictatime", "diratime",
           "nodiratime", "lazytime", "async", "sync", "loud", "silent"}
MOUNT_FAILED, BAD_USAGE = 32, 1


class Usage(Exception):
    """A bad invocation or option (exit 1)."""


class Request:
    """What mount(8) asks for, as `c3fs [GLOBAL] mount [MOUNT] REF DIR` with `env` set."""

    def __init__(self) -> None:
        self.ref = self.directory = ""
        self.global_args: list[str] = []
        self.mount_args: list[str] = []
        self.env: dict[str, str] = {}
        self.fake = False

    def argv(self) -> list[str]:
        return [*self.global_args, "mount", self.ref, self.directory, *self.mount_args]


def parse(args: list[str]) -> Request:
    """The helper's arguments (mount(8)'s protocol) as a Request; Usage when they are bad."""
    request, positional, options, sloppy = Request(), [], [], False
    it = iter(args)
    for arg in it:
        if arg == "-o":
            options += next(it, "").split(",")
        elif arg.startswith("-o"):
            options += arg[2:].split(",")
        elif arg in ("-N", "--namespace"):
            raise Usage("mount namespaces (-N) are not supported")
        elif arg == "-t":
            next(it, None)  # mount(8) says the type again (fuse.c3fs): it is ours
        elif arg.startswith("-") and len(arg) > 1 and set(arg[1:]) <= set("sfnvrw"):
            sloppy |= "s" in arg
            request.fake |= "f" in arg
            if "v" in arg:
                request.global_args.append("-v")
        elif arg.startswith("-"):
            raise Usage(f"unknown flag {arg}")
        else:
            positional.append(arg)
    if len(positional) != 2:
        raise Usage(f"expected SPEC and DIR, got {len(positional)} arguments")
    request.ref, request.directory = _ref(positional[0]), positional[1]
    request.mount_args += ["--source", positional[0]]  # `mount -a` finds the line mounted
    for option in options:
        if option:
            _option(request, option, sloppy)
    return request


def _ref(spec: str) -> str:
    spec = spec.removeprefix("c3fs#")
    if spec in ("", "c3fs"):
        return "/"
    if not spec.startswith("/"):
        raise Usage(f"SPEC {spec!r} is not a ref: /jobs/<id>, /datasets/<name>, ... or c3fs")
    return spec


def _option(request: Request, option: str, sloppy: bool) -> None:
    name, has_value, value = option.partition("=")
    if name in IGNORED or name.startswith("x-") or name == "comment":
        return
    if name not in OPTIONS:
        if sloppy:  # -s: ignore what we do not know
            return
        known = ", ".join(n if n in FLAGS else f"{n}=" for n in OPTIONS)
        raise Usage(f"unknown option {option!r} (c3fs's: {known})")
    if (name in FLAGS) == bool(has_value) or (has_value and not value):
        raise Usage(f"option {name} " + ("takes no value" if name in FLAGS else "needs a value"))
    kind, target = OPTIONS[name]
    if kind == "env":
        request.env[target] = value
    else:
        args = request.global_args if kind == "global" else request.mount_args
        args += [target] + ([value] if has_value else [])


def run(args: list[str], prog: str = "mount.c3fs") -> int:
    """Mount as mount(8) asks; the exit status for mount(8)."""
    if not args or args[0] in ("-h", "--help"):
        print(f"{__doc__.split(chr(10) * 2)[0]}\n\n{USAGE}", file=sys.stdout if args else sys.stderr)
        return 0 if args else BAD_USAGE
    try:
        request = parse(args)
    except Usage as exc:
        print(f"{prog}: {exc}\n{USAGE}", file=sys.stderr)
        return BAD_USAGE
    if request.fake:  # -f: everything but the mount itself
        return 0
    os.environ.update(request.env)
    from .main import main as c3fs_main

    try:
        c3fs_main(request.argv())
    except SystemExit as exc:  # c3fs's exit codes, as mount(8) expects them of a helper
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        return 0 if code == 0 else (BAD_USAGE if code == 2 else MOUNT_FAILED)
    return 0


def main() -> None:
    """The `mount.c3fs` console script (install it as /sbin/mount.c3fs: README)."""
    prog = os.path.basename(sys.argv[0]) or "mount.c3fs"
    sys.exit(run(sys.argv[1:], prog))
