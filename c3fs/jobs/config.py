"""The `.c3` job config (YAML): project, extra `output:` dirs, `datasets:` to mount.

Everything is checked before the job runs: malformed YAML or wrong types is an error, an
unknown key is a warning, an output dir that would leave the working directory (`../x`, an
absolute path elsewhere, a symlink pointing out) is refused.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import msgspec
import yaml

from c3fs.errors import UsageError
from c3fs.objects.ids import check_name

log = logging.getLogger(__name__)
KNOWN_KEYS = {"project", "output", "datasets", "name", "command", "image", "resources", "env"}


class ConfigError(UsageError):
    """The .c3 file is malformed or asks for something not allowed."""


class DatasetMount(msgspec.Struct, forbid_unknown_fields=True):
    ref: str
    mount: str


class JobConfig(msgspec.Struct):
    project: str | None = None
    output: list[str] = []
    datasets: list[DatasetMount] = []


def load_config(path: Path | None, workdir: Path) -> JobConfig:
    """Read `path` (default: `.c3` in `workdir`, if present) and check it."""
    explicit = path is not None
    path = path or workdir / ".c3"
    if not path.exists():
        if explicit:
            raise ConfigError(f"{path}: no such config file")
        return JobConfig()
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML{_yaml_problem(exc)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys (project, output, datasets)")
    for key in sorted(set(raw) - KNOWN_KEYS):
        log.warning("%s: unknown key %r ignored", path, key)
    known = {k: v for k, v in raw.items() if k in ("project", "output", "datasets")}
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
    return config


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
