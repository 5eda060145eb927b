"""`c3fs serve`: a read-only web view of jobs, datasets, their files, lineage and usage.

It reads through the same `Vfs` and `FileReader` as the mount and `cp` (no second read
path), renders plain HTML with Jinja2 (autoescaped) and ships its CSS and one small script as
package data: nothing is fetched from elsewhere at run time. `make_app(repo)` returns the
ASGI app; the routes live in `c3fs.web.app`, request guarding in `c3fs.web.http`.
"""

from __future__ import annotations

from c3fs.web.app import make_app

__all__ = ["make_app"]
