"""`c3fs serve`: the read-only web view (c3fs/web)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import click

from c3fs.errors import C3fsError, UsageError

from .main import Ctx, app, pass_ctx

if TYPE_CHECKING:  # (socket imported by the command only: every command loads this
    import socket  # module, and socket and selectors cost a push ~1.5 ms of its start)

log = logging.getLogger("c3fs")


class BindError(C3fsError):
    exit_code = 5


@app.command(context_settings={"max_content_width": 100})
@click.option("--bind", default="127.0.0.1:8484", show_default=True, metavar="HOST:PORT",
              help="Address to listen on (port 0: any free port). Not loopback: a warning.")
@click.option("--open", "open_browser", is_flag=True, help="Open the page in a web browser.")
@click.option("--token", envvar="C3FS_SERVE_TOKEN", metavar="TOKEN",
              help="Require this token: `Authorization: Bearer TOKEN`, or open "
                   "/?token=TOKEN once to get a cookie (env C3FS_SERVE_TOKEN).")
@pass_ctx
def serve(ctx: Ctx, bind: str, open_browser: bool, token: str | None) -> None:
    """Serve a read-only web view of the store: projects, jobs and datasets (sortable,
    filterable), each job's files (images inline, JSON metrics as tables, CSV and text
    previews, downloads with byte ranges), its lineage as a graph, and usage over time.

    Only GET and HEAD are answered; artifacts are never rendered as markup (HTML and SVG
    files download, or show as an image). Stop with Ctrl-C.

    \b
    Examples:
      c3fs serve                                   # http://127.0.0.1:8484/
      c3fs serve --open --bind 127.0.0.1:0         # any free port, open a browser
      c3fs --store s3://bucket/c3 serve --bind 0.0.0.0:8484 --token "$(openssl rand -hex 16)"
    """
    import uvicorn

    from c3fs.web import make_app

    sock = _listen(*parse_bind(bind, token))
    host, port = sock.getsockname()[:2]
    url = f"http://{_url_host(host)}:{port}/"
    click.echo(f"c3fs: serving {url} (Ctrl-C stops)", err=True)
    if open_browser:
        import webbrowser

        webbrowser.open(url + (f"?token={token}" if token else ""))
    config = uvicorn.Config(make_app(ctx.repo(), token), log_config=None, access_log=False,
                            lifespan="off", server_header=False)
    uvicorn.Server(config).run(sockets=[sock])


def parse_bind(bind: str, token: str | None = None) -> tuple[str, int]:
    """(host, port) of `--bind HOST:PORT`; warns when HOST is not a loopback address."""
    host, sep, port_text = bind.rpartition(":")
    host = host.strip("[]") if sep else bind
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise UsageError(f"--bind {bind!r}: expected HOST:PORT, e.g. 127.0.0.1:8484")
    if not _loopback(host):
        log.warning("serving on %s: anyone who can reach it can read every job in the store%s",
                    host, "" if token else " (consider --token)")
    return host, int(port_text)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        import ipaddress  # (with socket, see above)

        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _listen(host: str, port: int) -> socket.socket:
    import socket

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        raise BindError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
