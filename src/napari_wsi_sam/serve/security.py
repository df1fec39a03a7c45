"""What keeps ``serve`` safe to leave running: where it binds, the token, and size limits.

QuPath's SAM extension sends no headers of its own, so the token is accepted in a header
(``Authorization: Bearer T`` or ``X-Token: T``) or as the first part of the URL path
(``http://host:8000/t/T/sam/``, the extension's server URL setting). Bodies are read whole by
`Guard` up to `ServeLimits.max_body_bytes` before any route sees them; images are checked by
their header's size before their pixels are decoded (`context.decode_image`).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

TOKEN_PREFIX = "/t/"


@dataclass(frozen=True)
class ServeLimits:
    """max_body_bytes: a request body (the base64 image is most of it; 64 MiB holds a 4K
    screen's PNG several times over). max_image_pixels: width x height of a sent image.
    max_queue: requests waiting per model before new ones are turned away (503)."""

    max_body_bytes: int = 64 * 2**20
    max_image_pixels: int = 4096 * 4096
    max_queue: int = 64


def is_local(host: str) -> bool:
    """True for a loopback address or ``localhost`` (reachable from this machine only)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse a non-local bind without a token, in one line."""
    if token is not None and len(token) < 8:
        raise UsageError("--token must be at least 8 characters (e.g. from `python -c \"import "
                         "secrets; print(secrets.token_urlsafe())\"`)")
    if not is_local(host) and not token:
        raise UsageError(f"--host {host} lets other machines reach the server: give --token T "
                         "as well (clients send it as 'Authorization: Bearer T' or in the URL "
                         "http://HOST:PORT/t/T/sam/)")


class Guard:
    """ASGI middleware: the token (header or URL path), then the body size limit; what it
    refuses gets a 4xx with a one-line JSON ``detail``, as every other refusal."""

    def __init__(self, app: Callable[..., Awaitable[None]], *, token: str | None,
                 max_body_bytes: int) -> None:
        self.app = app
        self.token = token
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        given = None
        if path.startswith(TOKEN_PREFIX):
            given, _, rest = path[len(TOKEN_PREFIX):].partition("/")
            scope = dict(scope, path="/" + rest, raw_path=("/" + rest).encode())
        if self.token is not None:
            given = given or _header_token(scope)
            if not given or not hmac.compare_digest(given.encode(), self.token.encode()):
                await _refuse(send, 401, "a token is required: send 'Authorization: Bearer T' "
                                         "or put it in the URL as /t/T/sam/")
                return
        length = _header(scope, b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            await _refuse(send, 413, f"the request is larger than {self._limit_text()}; send a "
                                     "smaller viewer region (zoom in) or raise --max-body-mb")
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            more = bool(message.get("more_body", False))
            if len(body) > self.max_body_bytes:
                await _refuse(send, 413, f"the request is larger than {self._limit_text()}; "
                                         "send a smaller viewer region or raise --max-body-mb")
                return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _limit_text(self) -> str:
        return f"{self.max_body_bytes / 2**20:g} MiB"


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1").strip()
    return None


def _header_token(scope: Scope) -> str | None:
    auth = _header(scope, b"authorization")
    if auth and auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return _header(scope, b"x-token")


async def _refuse(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
