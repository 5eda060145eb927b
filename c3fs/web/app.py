"""The routes of `c3fs serve`. Handlers are plain functions: Starlette runs them in worker
threads, since the vfs and the reader block (LMDB, the store, zstd, blake3).

    /                          projects
    /jobs, /datasets           tables: ?project= &status= &q= &sort= &order= &page=
    /browse/<namespace path>   a directory (entries, thumbnails, the record) or a file preview
    /raw/<namespace path>      a file's bytes (attachment; ?inline=1 for an image), ranges
    /lineage/<jobs|datasets>/<id>   upstream and downstream as SVG
    /balance                   stored and logical bytes per project over time
"""

from __future__ import annotations

import itertools
import logging
import time
import urllib.parse
from collections.abc import Iterator

import blake3
import jinja2
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from c3fs.errors import (
    C3fsError,
    DataError,
    FormatError,
    IsADirectory,
    NotADirectory,
    NotFound,
    UsageError,
)
from c3fs.fsutil import age, human
from c3fs.objects.job import DATASET, JOB, STATUSES, JobRecord
from c3fs.objects.tree import DIR, FILE
from c3fs.repo import Repo
from c3fs.vfs import Node, Vfs, split_path
from c3fs.web import catalog, previews
from c3fs.web.http import (
    Guard,
    RangeNotSatisfiable,
    byte_range,
    disposition,
    image_type,
    security_headers,
)

log = logging.getLogger(__name__)
BLOCK = 1024 * 1024  # bytes per piece of a download
ENTRIES = 500  # directory entries per page
THUMBNAILS = 100  # images per page of a folder
EAGER = 24  # thumbnails loaded at once; later ones when scrolled to
LOG_LINES = 50  # the last lines of each log shown on a job's page


class _AnyPath(Convertor):
    """starlette's `path`, newlines included: its `.*` stops at one, so a file or folder
    whose name holds one (and all below it) was a bare 404."""

    regex = r"[\s\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("anypath", _AnyPath())


def make_app(repo: Repo, token: str | None = None) -> Guard:
    """The ASGI app over `repo`, wrapped in the guard (GET/HEAD only, token, headers)."""
    site = Site(repo)
    routes = [
        Route("/", site.home), Route("/jobs", site.jobs), Route("/datasets", site.datasets),
        Route("/browse/{path:anypath}", site.browse), Route("/raw/{path:anypath}", site.raw),
        Route("/lineage/{kind}/{name}", site.lineage), Route("/balance", site.balance),
        Route("/logs/{kind}/{name}/{stream}", site.log),
        Mount("/static", StaticFiles(packages=[("c3fs.web", "static")]), name="static"),
    ]
    handlers = {NotFound: site.not_found, NotADirectory: site.not_found,
                IsADirectory: site.not_found, UsageError: site.bad_request,
                DataError: site.damaged, FormatError: site.damaged, C3fsError: site.damaged}
    return Guard(Starlette(routes=routes, exception_handlers=handlers), token)


def node_url(prefix: str, path: tuple[bytes, ...]) -> str:
    return prefix + "/".join(urllib.parse.quote(p, safe="") for p in path)


def show(name: bytes) -> str:
    return name.decode("utf-8", "backslashreplace")


class Site:
    def __init__(self, repo: Repo) -> None:
        self.repo = repo
        self.vfs = Vfs(repo)
        self.env = jinja2.Environment(loader=jinja2.PackageLoader("c3fs.web", "templates"),
                                      autoescape=True, undefined=jinja2.StrictUndefined)
        self.env.globals.update(human=human, age=age, when=_when, show=show,
                                quote=lambda s: urllib.parse.quote(s, safe=""),
                                ref_url=lambda ref: "/browse/" + urllib.parse.quote(
                                    ref.lstrip("/"), safe="/"),
                                kind_dir=catalog.KIND_DIR, log_lines=LOG_LINES)

    def page(self, template: str, status: int = 200, **context) -> HTMLResponse:
        return HTMLResponse(self.env.get_template(template).render(**context), status)

    # lists --------------------------------------------------------------------------------
    def home(self, request: Request) -> HTMLResponse:
        self.repo.refresh()
        projects: dict[str, dict[str, int]] = {}
        for kind in (JOB, DATASET):
            for record in self.repo.iter_records(kind):
                row = projects.setdefault(record.project, {"jobs": 0, "datasets": 0,
                                                           "logical": 0, "stored": 0})
                row["jobs" if kind == JOB else "datasets"] += 1
                row["logical"] += record.logical_bytes
                row["stored"] += record.stored_delta
        return self.page("home.html", projects=sorted(projects.items()))

    def jobs(self, request: Request) -> HTMLResponse:
        return self._listing(request, JOB)

    def datasets(self, request: Request) -> HTMLResponse:
        return self._listing(request, DATASET)

    def _listing(self, request: Request, kind: str) -> HTMLResponse:
        params = request.query_params
        query = catalog.Query(kind, params.get("project", ""), params.get("status", ""),
                              params.get("q", ""), params.get("sort", "age"),
                              params.get("order") == "desc", _int(params.get("page"), 1))
        self.repo.refresh()
        result = catalog.listing(self.repo.iter_records(kind), query)
        return self.page("list.html", kind=kind, query=query, result=result,
                         statuses=STATUSES, link=_list_link(kind, query),
                         page=min(max(query.page, 1), result.pages))

    # a node -------------------------------------------------------------------------------
    def browse(self, request: Request) -> Response:
        node = self._resolve(request, "/browse/")
        if node.ref is None:  # /, /jobs, /projects/<p>/...: the tables list those
            return RedirectResponse("/datasets" if node.path[:1] == (b"datasets",) else "/jobs",
                                    303)
        record = self.repo.record(*node.ref)
        context = dict(node=node, record=record, crumbs=_crumbs(node),
                       raw_url=node_url("/raw/", node.path), is_root=len(node.path) == 2,
                       subpath="".join("/" + show(p) for p in node.path[2:]))
        if node.is_dir:
            if len(node.path) == 2:
                context.update(self._relations(record), logs=self._log_tails(record))
            return self.page("dir.html", **context, **self._directory(node, request))
        if node.kind != FILE:
            return self.page("link.html", **context, target=show(self.vfs.readlink(node)))
        return self.page("file.html", **context, preview=self._preview(node))

    def _log_tails(self, record: JobRecord) -> dict[str, str] | None:
        """The last lines of the job's stdout and stderr (None: it kept no logs)."""
        from c3fs.jobs.logs import STREAMS, read_log

        if not record.logs:
            return None
        return {stream: read_log(self.repo, record, stream, tail=LOG_LINES).decode(
                "utf-8", "replace") for stream in STREAMS}

    def log(self, request: Request) -> Response:
        """A job's whole stdout or stderr, as a text file to save (never rendered)."""
        from c3fs.jobs.logs import STREAMS, read_log

        kinds = {v: k for k, v in catalog.KIND_DIR.items()}
        kind, stream = kinds.get(request.path_params["kind"]), request.path_params["stream"]
        if kind is None or stream not in STREAMS:
            raise NotFound(f"no such log {request.url.path}")
        record = self.repo.record(kind, request.path_params["name"])
        name = f"{record.id}.{stream}.txt".encode()
        return Response(read_log(self.repo, record, stream), media_type="text/plain",
                        headers={"content-disposition": disposition("attachment", name)})

    def _directory(self, node: Node, request: Request) -> dict:
        page = max(_int(request.query_params.get("page"), 1), 1)
        total, shown = self.vfs.children_slice(node, (page - 1) * ENTRIES, page * ENTRIES)
        pages = max(1, -(-total // ENTRIES))
        if page > pages:  # past the end: the last page
            page = pages
            total, shown = self.vfs.children_slice(node, (page - 1) * ENTRIES, page * ENTRIES)
        entries = [_entry(name, child) for name, child in shown]
        images = [e for e in entries if e["image"]][:THUMBNAILS]
        return dict(entries=entries, images=images, eager=EAGER, page=page, pages=pages,
                    total=total)

    def _relations(self, record: JobRecord) -> dict:
        records = catalog.indexed_records(self.repo)
        inputs = []
        for item in record.inputs:
            ref = catalog.input_ref(item)
            found = records.get(ref) if ref else None
            url = node_url("/browse/", split_path(item.resolved or item.ref)) if found else None
            inputs.append(dict(ref=item.ref, root=item.root, mount=item.mount, url=url,
                               record=found))
        users = records.users((record.kind, record.id))
        return dict(inputs=inputs, consumers=sorted(users, key=lambda r: r.created))

    def _preview(self, node: Node) -> previews.Preview:
        name = node.path[-1]
        want = previews.JSON_BYTES if previews.kind_of(name) == "json" else previews.PREVIEW_BYTES
        if previews.kind_of(name) == "image" or node.size == 0:
            return previews.preview(name, b"", node.size)
        head = self.vfs.open(node, readahead=0).read(0, min(want, node.size))
        return previews.preview(name, head, node.size)

    def _resolve(self, request: Request, prefix: str) -> Node:
        """The node a request names, from the raw bytes of its path (any name survives)."""
        raw = request.scope.get("raw_path") or request.url.path.encode()
        raw = raw.split(b"?", 1)[0]
        path = urllib.parse.unquote_to_bytes(raw[len(prefix):])
        return self.vfs.resolve(path)

    # bytes --------------------------------------------------------------------------------
    def raw(self, request: Request) -> Response:
        node = self._resolve(request, "/raw/")
        if node.kind != FILE or node.ref is None:
            raise NotFound(f"{node.display} is not a file")
        etag = _etag(self.repo.record(*node.ref), node)
        name = node.path[-1]
        kind = image_type(name) if request.query_params.get("inline") == "1" else None
        headers = {"accept-ranges": "bytes", "etag": etag, "cache-control": "private, max-age=3600",
                   "content-disposition": disposition("inline" if kind else "attachment", name)}
        headers.update((k.decode(), v.decode()) for k, v in security_headers(raw=True))
        if etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        return self._bytes(request, node, headers, kind or "application/octet-stream", etag)

    def _bytes(self, request: Request, node: Node, headers: dict[str, str], media: str,
               etag: str) -> Response:
        if_range = request.headers.get("if-range")
        try:
            span = None if if_range and if_range != etag else \
                byte_range(request.headers.get("range"), node.size)
        except RangeNotSatisfiable:
            return Response(status_code=416, headers={**headers,
                                                      "content-range": f"bytes */{node.size}"})
        start, end = span or (0, node.size)
        status = 206 if span else 200
        if span:
            headers["content-range"] = f"bytes {start}-{end - 1}/{node.size}"
        headers["content-length"] = str(end - start)
        if request.method == "HEAD" or start == end:
            return Response(status_code=status, headers=headers, media_type=media)
        reader = self.vfs.open(node, readahead=16)
        first = reader.read(start, min(BLOCK, end - start))  # damage here is still a 500
        return StreamingResponse(_pieces(reader, node, start + len(first), end, first), status,
                                 headers, media)

    # lineage and usage --------------------------------------------------------------------
    def lineage(self, request: Request) -> HTMLResponse:
        kinds = {v: k for k, v in catalog.KIND_DIR.items()}
        kind = kinds.get(request.path_params["kind"])
        if kind is None:
            raise NotFound(f"no such kind {request.path_params['kind']!r}")
        record = self.repo.record(kind, request.path_params["name"])
        graph = catalog.lineage(catalog.indexed_records(self.repo), (kind, record.id))
        from c3fs.web.svg import lineage_svg

        return self.page("lineage.html", record=record, graph=graph,
                         svg=Markup(lineage_svg(graph)))

    def balance(self, request: Request) -> HTMLResponse:
        from c3fs.jobs.accounting import balance
        from c3fs.web.svg import usage_svg

        measure = "logical" if request.query_params.get("measure") == "logical" else "stored"
        totals = balance(self.repo)
        records = itertools.chain(self.repo.iter_records(JOB), self.repo.iter_records(DATASET))
        series = catalog.usage_series(records, measure)
        series = sorted(series, key=lambda s: -s.points[-1][1])[:10]
        return self.page("balance.html", totals=totals, measure=measure,
                         svg=Markup(usage_svg(series)), shown=len(series))

    # errors -------------------------------------------------------------------------------
    def not_found(self, request: Request, exc: Exception) -> HTMLResponse:
        return self.page("error.html", 404, title="Not found", message=str(exc))

    def bad_request(self, request: Request, exc: Exception) -> HTMLResponse:
        return self.page("error.html", 400, title="Bad request", message=str(exc))

    def damaged(self, request: Request, exc: Exception) -> HTMLResponse:
        log.error("%s: %s", request.url.path, exc)
        return self.page("error.html", 500, title="Cannot read this", message=str(exc))


def _etag(record: JobRecord, node: Node) -> str:
    """A file's bytes are fixed by its job's root tree and its path in it."""
    key = record.root.encode() + b"\0" + b"/".join(node.path)
    return '"' + blake3.blake3(key).hexdigest(length=16) + '"'


def _pieces(reader, node: Node, offset: int, end: int, first: bytes) -> Iterator[bytes]:
    """The bytes of [offset - len(first), end) in pieces of BLOCK, read as they are sent. A
    piece that cannot be read ends the response early (never wrong bytes), logged once."""
    yield first
    while offset < end:
        try:
            data = reader.read(offset, min(BLOCK, end - offset))
        except (DataError, FormatError) as exc:
            log.error("download of %s stopped at byte %d: %s", node.display, offset, exc)
            raise
        if not data:
            return
        offset += len(data)
        yield data


def _entry(name: bytes, node: Node) -> dict:
    kind = {FILE: "file", DIR: "dir"}.get(node.kind, "link")
    return dict(name=show(name), kind=kind, size=node.size, mtime=node.mtime_ns / 1e9,
                url=node_url("/browse/", node.path), raw=node_url("/raw/", node.path),
                image=kind == "file" and image_type(name) is not None,
                target=show(node.entry.target) if kind == "link" and node.entry else "")


def _crumbs(node: Node) -> list[tuple[str, str]]:
    return [(show(node.path[i]), node_url("/browse/", node.path[: i + 1]))
            for i in range(1, len(node.path))]


def _list_link(kind: str, query: catalog.Query):
    base = "/jobs" if kind == JOB else "/datasets"

    def link(**changes) -> str:
        values = {"project": query.project, "status": query.status, "q": query.text,
                  "sort": query.sort, "order": "desc" if query.descending else "asc",
                  "page": query.page}
        values.update(changes)
        return base + "?" + urllib.parse.urlencode({k: v for k, v in values.items() if v})

    return link


def _int(text: str | None, default: int) -> int:
    try:
        return int(text) if text else default
    except ValueError:
        return default


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"
