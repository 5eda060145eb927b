"""The `.c3` job config (YAML): project, extra `output:` dirs, `datasets:` to mount, `env:`.

Everything is checked before the job runs: malformed YAML or wrong types is an error, an
unknown key is an error (a typo must not be ignored), an output dir that would leave the
working directory (`../x`, an absolute path elsewhere, a symlink pointing out) is refused.
`env:` maps variable names to strings (quoted: `SEED: "42"`), set for the command; the
variables `c3fs run` sets itself (C3_*) cannot be overridden. The platform's own keys
(name, command, image, resources) are accepted and ignored, with a warning.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import msgspec
import yaml

from c3fs.errors import UsageError
from c3fs.objects.ids import check_name

log = logging.getLogger(__name__)
USED_KEYS = ("project", "output", "datasets", "env")
PLATFORM_KEYS = ("name", "command", "image", "resources")  # the platform's; ignored here
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
RESERVED_ENV = ("C3_ARTIFACTS_DIR", "C3_JOB_ID", "C3_PROJECT")


class ConfigError(UsageError):
    """The .c3 file is malformed or asks for something not allowed."""


class DatasetMount(msgspec.Struct, forbid_unknown_fields=True):
    ref: str
    mount: str
    digest: str = ""  # the root id `ref` must resolve to (a pin), or "" for any


class JobConfig(msgspec.Struct):
    project: str | None = None
    output: list[str] = []
    datasets: list[DatasetMount] = []
    env: dict[str, str] = {}


def load_config(path: Path | None, workdir: Path) -> JobConfig:
    """Read `path` (default: `.c3` in `workdir`, if present) and check it."""
    explicit = path is not None
    path = path or workdir / ".c3"
    if not path.exists():
        if explicit:
            raise ConfigError(f"{path}: no such config file")
        return JobConfig()
    try:
        data = path.read_bytes()
    except OSError as exc:  # (a directory, or mode 000 to a user: one line, as config.toml's)
        raise ConfigError(f"{path}: cannot read the job config: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(data.decode()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML{_yaml_problem(exc)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys (project, output, datasets, env)")
    _check_keys(path, raw)
    known = {k: v for k, v in raw.items() if k in USED_KEYS}
    if known.get("env") is None:  # `env:` with nothing after it
        known.pop("env", None)
    else:
        _check_env(path, known["env"])
    if known.get("output") is None:  # `output:` with nothing after it
        known.pop("output", None)
    elif isinstance(known["output"], str):  # `output: results` is a list of one
        known["output"] = [known["output"]]
    try:
        config = msgspec.convert(known, JobConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if config.project is not None:
        check_name(config.project, "project")
    for rel in config.output:
        output_dir(workdir, rel)
    for dataset in config.datasets:
        check_mount_path(dataset.mount, workdir)
        if ".." in dataset.ref.split("/"):
            raise ConfigError(f"dataset ref {dataset.ref!r} must not contain '..'")
        if dataset.digest and not _is_root_id(dataset.digest):
            raise ConfigError(f"{path}: dataset {dataset.ref!r}: digest {dataset.digest!r} is "
                              "not a root id (64 hex digits, as `root` in `c3fs ls --json`)")
    return config


def _is_root_id(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text)


def _check_keys(path: Path, raw: dict) -> None:
    unknown = sorted(map(str, set(raw) - set(USED_KEYS) - set(PLATFORM_KEYS)))
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r} (known: "
                          f"{', '.join(USED_KEYS + PLATFORM_KEYS)})")
    for key in (k for k in PLATFORM_KEYS if k in raw):
        log.warning("%s: key %r is the platform's; c3fs run ignores it", path, key)


def _check_env(path: Path, env: object) -> None:
    """`env:` is a mapping of variable names to strings (a number must be quoted)."""
    if not isinstance(env, dict):
        raise ConfigError(f"{path}: env must be a mapping of NAME: value")
    for name, value in env.items():
        if not isinstance(name, str) or not ENV_NAME.fullmatch(name):
            raise ConfigError(f"{path}: env: {name!r} is not a variable name")
        if name in RESERVED_ENV:
            raise ConfigError(f"{path}: env: {name} is set by c3fs run; it cannot be overridden")
        if not isinstance(value, str):
            raise ConfigError(f"{path}: env: {name} must be a string (quote it: "
                              f"{name}: \"{value}\")")
        if "\0" in value:
            raise ConfigError(f"{path}: env: {name} holds a NUL character")


def _yaml_problem(exc: Exception) -> str:
    """': <problem> at line L, column C (<context> on line L)' for a YAML error, one line."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is None or problem is None:  # not a parse error with a position (bad encoding, ...)
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f": {text}"
    where = f" at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and context_mark is not None and context_mark.line != mark.line:
        return f"{where} ({context} on line {context_mark.line + 1})"
    return f"{where} ({context})" if context else where


def output_dirs(workdir: Path, entries: list[str]) -> list[tuple[tuple[str, ...], Path]]:
    """Each `output:` dir to collect, as (parts, path), in the order listed. An entry naming a
    dir listed before it (`results`, `./results/`, a symlink to it), or a dir inside another
    entry, is collected once, with a warning: nothing is stored twice."""
    listed = [(rel, output_dir(workdir, rel)) for rel in entries]
    names: dict[tuple[str, ...], list[str]] = {}
    for rel, parts in listed:
        outer = next((o for o, p in listed if len(p) < len(parts) and parts[:len(p)] == p), None)
        if outer is not None:
            log.warning("output dir %r is inside output dir %r; collected once, as part of it",
                        rel, outer)
        else:
            names.setdefault(parts, []).append(rel)
    for same in names.values():
        if len(same) > 1:
            times = "twice" if len(same) == 2 else f"{len(same)} times"
            log.warning("output dir %r is listed %s in .c3 (%s); collected once",
                        same[0], times, ", ".join(map(repr, same)))
    return [(parts, workdir / same[0]) for parts, same in names.items()]


def output_dir(workdir: Path, rel: str) -> tuple[str, ...]:
    """The parts of an `output:` entry, relative to `workdir`; refuses anything outside it."""
    base = workdir.resolve()
    target = (base / rel).resolve()  # follows symlinks: a link out of the tree is refused
    if not rel.strip() or target == base or not target.is_relative_to(base):
        raise ConfigError(f"output dir {rel!r} is not inside the working directory {base}")
    parts = target.relative_to(base).parts
    if any(p in ("", ".", "..") for p in parts):
        raise ConfigError(f"output dir {rel!r} is not a plain relative path")
    return parts


def check_mount_path(mount: str, workdir: Path) -> Path:
    path = Path(mount) if os.path.isabs(mount) else workdir / mount
    if ".." in Path(mount).parts:
        raise ConfigError(f"dataset mount path {mount!r} must not contain '..'")
    return path
