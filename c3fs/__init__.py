"""c3fs: a content-addressed filesystem for the outputs of compute jobs.

The Python API (README: "Python API and fsspec")::

    import c3fs

    with c3fs.open("s3://bucket/c3", "/jobs/job_abc123/model.pt") as f:  # or a Store
        state = torch.load(f)
    c3fs.ls(None, "/projects/vision/jobs/")            # None: the default store
    record = c3fs.push("./out", project="vision")     # the job's record (+ .changed, .vanished)
    c3fs.pull(record.id, "./runs")
    store = c3fs.Store("/data/c3fs-store")            # one store, many reads
    errors: c3fs.errors (NotFound, IsADirectory, DataError, ...); fsspec: "c3fs://" paths.

`import c3fs` loads nothing else: the names are imported on first use (every CLI command
imports this package, and its start-up is timed).
"""

__version__ = "0.2.0"

TYPE_CHECKING = False
if TYPE_CHECKING:
    from c3fs import errors
    from c3fs.api import File, Info, Pushed, Store, info, ls, open, pull, push

__all__ = ["File", "Info", "Pushed", "Store", "errors", "info", "ls", "open", "pull", "push"]
_API = {"File", "Info", "Pushed", "Store", "info", "ls", "open", "pull", "push"}


def __getattr__(name: str):
    # import_module, not `from c3fs import ...`: that asks this function again (recursion)
    if name in _API:
        from importlib import import_module

        return getattr(import_module("c3fs.api"), name)
    if name == "errors":
        from importlib import import_module

        return import_module("c3fs.errors")
    raise AttributeError(f"module 'c3fs' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
