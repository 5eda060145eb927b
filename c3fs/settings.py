"""c3fs's settings: each from a flag, the environment, the config file or a built-in default.

The config file is `$C3FS_CONFIG`, else `$XDG_CONFIG_HOME/c3fs/config.toml`
(`~/.config/c3fs/config.toml`): flat TOML, one key per setting (`KEYS`). An unknown key or a
value of the wrong type is an error naming the file and line (a misspelt `endpiont` would
otherwise send requests, and credentials, to AWS). Precedence: flag > environment > file >
default. The CLI exports the flags it was given as the first environment variable of each
setting (`C3FS_*`), so the library, mount daemons and nested commands see them: the library
reads only the environment and the file.

Secrets have no place here: credentials come from the AWS chain (`c3fs.store.aws`).
Standard library only (the preload reads `cache_dir` before anything else is imported).
"""

from __future__ import annotations

import os
import re
from typing import NamedTuple

from c3fs.errors import UsageError

CONFIG_ENV = "C3FS_CONFIG"


class Key(NamedTuple):  # (not a dataclass: every command imports this; 1 ms less)
    name: str
    env: tuple[str, ...]  # the first one is c3fs's own (a flag is exported there)
    help: str
    flag: str | None = None
    types: tuple[type, ...] = (str,)


KEYS: dict[str, Key] = {k.name: k for k in (
    Key("store", ("C3FS_STORE",), "the store: a directory or s3://bucket/prefix", "--store"),
    Key("cache_dir", ("C3FS_CACHE_DIR",), "the local index, disk cache and mount logs"),
    Key("disk_cache", ("C3FS_DISK_CACHE",), "size of an s3:// store's disk cache (LRU)",
        "--disk-cache", (str, int)),
    Key("endpoint", ("C3FS_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
        "S3 endpoint URL (MinIO, Ceph, R2...); none: AWS", "--endpoint"),
    Key("region", ("C3FS_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"), "S3 region", "--region"),
    Key("profile", ("C3FS_PROFILE", "AWS_PROFILE"), "AWS profile (~/.aws/config, credentials)",
        "--profile"),
    Key("project", ("C3FS_PROJECT",), "default project of push and run"),
)}


class Setting(NamedTuple):
    value: str | None
    source: str  # "--store", "env C3FS_STORE", "file PATH:LINE", "default"


def config_path() -> str:
    """The config file's path (it may not exist)."""
    named = os.environ.get(CONFIG_ENV)
    if named:
        return named
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return os.path.join(base, "c3fs", "config.toml")


def defaults() -> dict[str, str | None]:
    from c3fs.preload import default_cache_dir

    data = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return {"store": os.path.join(data, "c3fs", "store"), "cache_dir": default_cache_dir(),
            "disk_cache": "1GiB", "endpoint": None, "region": None, "profile": None,
            "project": None}


def get(name: str) -> Setting:
    """The effective setting `name`: environment, else file, else default."""
    key = KEYS[name]
    for var in key.env:
        value = os.environ.get(var)
        if value:
            return Setting(value, f"env {var}")
    found = read_file().get(name)
    if found is not None:
        return found
    return Setting(defaults()[name], "default")


def value(name: str) -> str | None:
    return get(name).value


def effective() -> dict[str, Setting]:
    return {name: get(name) for name in KEYS}


_cache: tuple[tuple, dict[str, Setting]] | None = None


def read_file(path: str | None = None) -> dict[str, Setting]:
    """The settings of the config file (none if it does not exist), checked: an error names
    the file and the line. Read again only when the file changes."""
    global _cache
    named = path or os.environ.get(CONFIG_ENV)
    path = path or config_path()
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return {}
    except OSError as exc:  # the default path under a HOME this user cannot search: none
        if not named:
            return {}
        raise UsageError(f"{path}: cannot read the c3fs config: {exc.strerror}") from None
    stamp = (path, st.st_ino, st.st_size, st.st_mtime_ns)
    if _cache is not None and _cache[0] == stamp:
        return _cache[1]
    parsed = _parse(path)
    _cache = (stamp, parsed)
    return parsed


def _parse(path: str) -> dict[str, Setting]:
    import tomllib

    try:
        with open(path, "rb") as f:
            raw = f.read()
        data = tomllib.loads(raw.decode("utf-8"))
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the c3fs config: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: the c3fs config is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        where = f"{path}:{match.group(1)}" if match else path
        message = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc)) or "invalid TOML"
        raise UsageError(f"{where}: not valid TOML: {message}") from None
    text = raw.decode("utf-8")
    settings = {}
    for name, item in data.items():
        where = f"{path}:{_line_of(text, name)}"
        key = KEYS.get(name)
        if key is None:
            raise UsageError(f"{where}: unknown key {name!r} (known: {', '.join(KEYS)})")
        if not isinstance(item, key.types) or isinstance(item, bool):
            kinds = " or ".join("a string" if t is str else "an integer" for t in key.types)
            raise UsageError(f"{where}: {name} must be {kinds}, not {type(item).__name__}")
        if name == "disk_cache":
            _check_size(str(item), where)
        value = str(item)
        if name in ("store", "cache_dir") and value.startswith("~"):
            value = os.path.expanduser(value)  # (TOML has no shell to expand it)
        settings[name] = Setting(value, f"file {where}")
    return settings


def _check_size(text: str, where: str) -> None:
    from c3fs.store.cache import parse_size

    try:
        parse_size(text)
    except UsageError as exc:
        raise UsageError(f"{where}: disk_cache: {exc}") from None


def _line_of(text: str, name: str) -> int:
    """The line (1-based) where the top-level key or table `name` is set; 0 if not found."""
    pattern = re.compile(rf"""^\s*(\[+\s*)?(["']?){re.escape(name)}\2\s*[=.\]]""")
    for number, line in enumerate(text.splitlines(), 1):
        if pattern.match(line):
            return number
    return 0
