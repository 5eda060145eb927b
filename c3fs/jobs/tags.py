"""Tags: named pointers to jobs, per project, kept in the store as create-only records.

Keys::

    tags/<project>/<name>/<generation>     a TagRecord (JSON), generation = 8 digits

A tag is never edited in place. Setting, moving or removing it creates the next generation
(`00000001`, `00000002`, ...), a record naming the job it points at (`job`, "" once removed)
and the job it pointed at before (`previous`). The newest generation is the tag. Two
machines that move the same tag at once both try to create the same next generation: the
store lets exactly one create it, and the other is told who won (`TagConflict`).

A record is read against its key: its project, name and generation must be the key's, so a
damaged or copied record cannot speak for another tag (`DamagedRef`, exit 6).

`/projects/<p>/jobs/latest` is not a tag: it is computed, the project's newest SUCCEEDED job.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass

import msgspec

from c3fs.errors import AlreadyExists, C3fsError, DamagedRef, FormatError, NotFound
from c3fs.objects.ids import check_name, is_name
from c3fs.objects.job import JOB, MAX_TEXT, MAX_TIME, SUCCEEDED, JobRecord
from c3fs.objects.nesting import check_json_depth
from c3fs.store.backend import KeyExists, KeyMissing
from c3fs.store.store import Store

log = logging.getLogger(__name__)
TAG_VERSION = 1
PREFIX = "tags/"
LATEST = "latest"
MAX_GENERATION = 99_999_999


class TagConflict(AlreadyExists):
    """Another process moved the tag between our read and our write."""


class TagRecord(msgspec.Struct, kw_only=True, frozen=True):
    format: str = "c3fs-tag"
    version: int = TAG_VERSION
    project: str
    name: str
    generation: int
    job: str  # "" when this generation removes the tag
    previous: str = ""  # the job the tag pointed at before ("" if none)
    created: float
    host: str = ""


@dataclass(frozen=True)
class Tag:
    project: str
    name: str
    job: str
    generation: int
    created: float
    host: str
    previous: str

    def as_dict(self) -> dict:
        return {"project": self.project, "name": self.name, "job": self.job,
                "generation": self.generation, "created": self.created, "host": self.host,
                "previous": self.previous}


def _key(project: str, name: str, generation: int) -> str:
    return f"{PREFIX}{project}/{name}/{generation:08d}"


def check_tag_name(name: str) -> str:
    check_name(name, "tag name")
    if name == LATEST:
        raise C3fsError("'latest' is not a tag name: /projects/<p>/jobs/latest is always the "
                        "project's newest SUCCEEDED job")
    return name


def _decode(raw: bytes, project: str, name: str, generation: int) -> TagRecord:
    where = f"{project}/{name}"
    try:
        check_json_depth(raw, "tag record", limit=2)
        record = msgspec.json.decode(raw, type=TagRecord)
    except (FormatError, msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise DamagedRef("tag", where, f"damaged tag record: {exc}") from None
    if record.format != "c3fs-tag" or record.version != TAG_VERSION:
        raise DamagedRef("tag", where, f"tag record format/version not supported: "
                         f"{record.format!r}/{record.version}")
    if (record.project, record.name, record.generation) != (project, name, generation):
        raise DamagedRef("tag", where, f"its record {generation:08d} is of tag "
                         f"{record.project!r}/{record.name!r} generation {record.generation}")
    if record.job and not is_name(record.job) or record.previous and not is_name(record.previous):
        raise DamagedRef("tag", where, "its record names an invalid job id")
    if not 0 <= record.created <= MAX_TIME or len(record.host) > MAX_TEXT:
        raise DamagedRef("tag", where, "its record has a field out of range")
    return record


def _generations(store: Store, project: str, name: str) -> list[int]:
    prefix = f"{PREFIX}{project}/{name}/"
    found = []
    for key, _ in store.backend.list(prefix):
        rest = key[len(prefix):]
        if len(rest) == 8 and rest.isdigit():
            found.append(int(rest))
        else:
            log.warning("ignoring %s in the store: not a tag record", key[:200])
    return sorted(found)


def _newest(store: Store, project: str, name: str) -> TagRecord | None:
    generations = _generations(store, project, name)
    if not generations:
        return None
    generation = generations[-1]
    try:
        raw = store.backend.get(_key(project, name, generation))
    except KeyMissing:  # removed meanwhile (a racing store cleanup): read again
        return _newest(store, project, name)
    return _decode(raw, project, name, generation)


def _tag(record: TagRecord) -> Tag:
    return Tag(record.project, record.name, record.job, record.generation, record.created,
               record.host, record.previous)


def get_tag(store: Store, project: str, name: str) -> Tag:
    """The tag `name` of `project`; NotFound if it was never set or has been removed."""
    check_name(project, "project")
    check_name(name, "tag name")
    record = _newest(store, project, name)
    if record is None or not record.job:
        raise NotFound(f"no tag {name!r} in project {project!r}")
    return _tag(record)


def set_tag(store: Store, project: str, name: str, job: str) -> Tag:
    """Point tag `name` of `project` at `job` (a new generation)."""
    check_tag_name(name)
    return _write(store, project, name, check_name(job))


def remove_tag(store: Store, project: str, name: str) -> Tag:
    """Remove the tag (a new generation naming no job); returns the tag as it was."""
    check_name(name, "tag name")
    old = get_tag(store, project, name)
    _write(store, project, name, "")
    return old


def _write(store: Store, project: str, name: str, job: str) -> Tag:
    old = _newest(store, project, name)
    generation = old.generation + 1 if old else 1
    if generation > MAX_GENERATION:
        raise C3fsError(f"tag {project}/{name} has been moved too often ({MAX_GENERATION})")
    record = TagRecord(project=project, name=name, generation=generation, job=job,
                       previous=old.job if old else "", created=time.time(),
                       host=socket.gethostname()[:MAX_TEXT])
    try:
        store.backend.create(_key(project, name, generation), msgspec.json.encode(record))
    except KeyExists:
        won = _newest(store, project, name)
        now = f"it now names job {won.job}" if won and won.job else "it is now removed"
        by = f" (by {won.host})" if won and won.host else ""
        raise TagConflict(f"tag {name!r} of project {project!r} was changed by another "
                          f"process meanwhile{by}: {now}; nothing changed here") from None
    return _tag(record)


def list_tags(store: Store, project: str | None = None) -> list[Tag]:
    """Every current tag (of `project`, or of every project), sorted by project and name."""
    prefix = PREFIX + (f"{check_name(project, 'project')}/" if project else "")
    names: set[tuple[str, str]] = set()
    for key, _ in store.backend.list(prefix):
        parts = key[len(PREFIX):].split("/")
        if len(parts) == 3 and is_name(parts[0]) and is_name(parts[1]):
            names.add((parts[0], parts[1]))
    tags = []
    for p, n in sorted(names):
        try:
            record = _newest(store, p, n)
        except DamagedRef as exc:
            log.warning("%s", exc)
            continue
        if record is not None and record.job:
            tags.append(_tag(record))
    return tags


def find_tag(store: Store, name: str, project: str | None) -> Tag:
    """The tag `name` of `project`, or of the one project that has it when none is given."""
    if project:
        return get_tag(store, project, name)
    found = [t for t in list_tags(store) if t.name == name]
    if not found:
        raise NotFound(f"no tag {name!r} in any project")
    if len(found) > 1:
        projects = ", ".join(t.project for t in found)
        raise C3fsError(f"tag {name!r} exists in several projects ({projects}): give --project")
    return found[0]


def latest(records: Iterable[JobRecord], project: str) -> JobRecord | None:
    """The newest SUCCEEDED job of `project` (by end time, then id), or None; `records` are
    read once, as they come (a store's 100,000 jobs: none held)."""
    done = (r for r in records if r.kind == JOB and r.project == project and r.status == SUCCEEDED)
    return max(done, key=lambda r: (r.ended or r.created, r.id), default=None)


def bare_id(ref: str) -> str | None:
    """The job id a JOB argument is, if it is one: `job_x`, or `job_x/` (as a shell completes
    the directory a pull made); None for a path (`/jobs/<id>`, latest, a tag)."""
    name = ref.rstrip("/")
    return name if name and "/" not in name else None


def resolve_job(repo, ref: str) -> JobRecord:
    """The job a JOB argument names: a job id (`bare_id`), or a ref resolving to a whole job
    (`/projects/<p>/jobs/latest`, `/projects/<p>/tags/<name>`, `/jobs/<id>`)."""
    from c3fs.errors import UsageError
    from c3fs.vfs import Vfs

    if (job_id := bare_id(ref)) is not None:
        return repo.record(JOB, job_id)
    node = Vfs(repo).resolve(ref)
    if node.ref is None or node.ref[0] != JOB or node.depth != 2:
        raise UsageError(f"{ref} is not a job: give a job id or a ref to a whole job")
    return repo.record(*node.ref)
