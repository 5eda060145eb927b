"""HTTP details of `c3fs serve`: byte ranges, download headers, and the guard every request
passes (GET/HEAD only, the optional token, security headers on every response).

Artifacts are untrusted. A file is served as `application/octet-stream` with
`Content-Disposition: attachment`, or, for the image types below only, as that image type
for an `<img>`; every response carries `X-Content-Type-Options: nosniff` and a strict
Content-Security-Policy, and raw bytes get a sandboxing one of their own, so an SVG or HTML
artifact opened directly runs no script.
"""

from __future__ import annotations

import hmac
import logging
import re
import urllib.parse
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
               ".gif": "image/gif", ".svg": "image/svg+xml", ".webp": "image/webp"}
PAGE_CSP = ("default-src 'none'; img-src 'self'; style-src 'self'; script-src 'self'; "
            "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
RAW_CSP = "default-src 'none'; style-src 'unsafe-inline'; sandbox; frame-ancestors 'none'"
COOKIE = "c3fs_token"
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class RangeNotSatisfiable(Exception):
    pass


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end) with `end` exclusive for a `Range` header, None for the whole file (no
    header, several ranges or a unit we do not serve: RFC 9110 lets a server ignore it).
    RangeNotSatisfiable for a range that starts past the end or is malformed."""
    if not header or "," in header:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None if not header.strip().startswith("bytes=") else _unsatisfiable()
    first, last = match.groups()
    if not first and not last:
        return _unsatisfiable()
    if not first:  # the last N bytes
        return (max(size - int(last), 0), size) if int(last) and size else _unsatisfiable()
    start = int(first)
    end = min(int(last) + 1, size) if last else size
    if start >= size or (last and int(last) < start):
        return _unsatisfiable()
    return start, end


def _unsatisfiable() -> tuple[int, int]:
    raise RangeNotSatisfiable


def image_type(name: bytes) -> str | None:
    """The image type an `<img>` may show for a file named `name`, else None."""
    dot = name.rfind(b".")
    return IMAGE_TYPES.get(name[dot:].lower().decode("latin-1")) if dot > 0 else None


def disposition(kind: str, name: bytes) -> str:
    """`attachment; filename="..."; filename*=UTF-8''...`: the ASCII fallback has no quote,
    backslash or control character, the second form is the exact name percent-encoded."""
    text = name.decode("utf-8", "replace")
    plain = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in text)
    return f"{kind}; filename=\"{plain}\"; filename*=UTF-8''{urllib.parse.quote(name, safe='')}"


@dataclass(frozen=True)
class Guard:
    """ASGI middleware around the whole app: refuses anything but GET and HEAD, asks for the
    token when one is set (bearer header or cookie; `?token=` once sets the cookie), and adds
    the security headers to every response."""

    app: ASGIApp
    token: str | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["method"] not in ("GET", "HEAD"):
            return await _plain(send, 405, b"read-only: GET and HEAD only",
                                [(b"allow", b"GET, HEAD")])
        if self.token is not None:
            given = _query_token(scope)
            if given is not None and _same(given, self.token):
                return await _set_cookie(scope, send, self.token)
            if not self._authorized(scope):
                return await _plain(send, 401, b"a token is required (c3fs serve --token)",
                                    [(b"www-authenticate", b"Bearer")])
        await self.app(scope, receive, _with_headers(send))

    def _authorized(self, scope: Scope) -> bool:
        headers = dict(scope["headers"])
        auth = headers.get(b"authorization", b"").decode("latin-1")
        if auth.lower().startswith("bearer ") and _same(auth[7:].strip(), self.token):
            return True
        for part in headers.get(b"cookie", b"").decode("latin-1").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE and _same(urllib.parse.unquote(value), self.token):
                return True
        return False


def _same(given: str, token: str | None) -> bool:
    return token is not None and hmac.compare_digest(given.encode(), token.encode())


def _query_token(scope: Scope) -> str | None:
    query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"))
    values = query.get("token")
    return values[0] if values else None


async def _set_cookie(scope: Scope, send: Send, token: str) -> None:
    """Answer `?token=` with the cookie and a redirect to the same page without it."""
    query = [(k, v) for k, v in urllib.parse.parse_qsl(scope.get("query_string", b"").decode(
        "latin-1")) if k != "token"]
    target = urllib.parse.quote(scope.get("raw_path", b"/") or b"/", safe="/%")
    if query:
        target += "?" + urllib.parse.urlencode(query)
    cookie = f"{COOKIE}={urllib.parse.quote(token, safe='')}; HttpOnly; SameSite=Strict; Path=/"
    await _plain(send, 303, b"", [(b"location", target.encode()),
                                  (b"set-cookie", cookie.encode())])


def security_headers(raw: bool = False) -> list[tuple[bytes, bytes]]:
    return [(b"x-content-type-options", b"nosniff"),
            (b"content-security-policy", (RAW_CSP if raw else PAGE_CSP).encode()),
            (b"referrer-policy", b"no-referrer"),
            (b"x-frame-options", b"DENY"),
            (b"cross-origin-resource-policy", b"same-origin")]


def _with_headers(send: Send) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            present = {name.lower() for name, _ in headers}
            headers += [h for h in security_headers() if h[0] not in present]
            message["headers"] = headers
        await send(message)

    return wrapped


async def _plain(send: Send, status: int, body: bytes,
                 extra: list[tuple[bytes, bytes]]) -> None:
    headers = [(b"content-type", b"text/plain; charset=utf-8"),
               (b"content-length", str(len(body)).encode()), *extra, *security_headers()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
