"""What keeps a local server safe from the web pages its user visits, and a public one
from strangers.

Any page in the user's browser can send requests to 127.0.0.1, and a DNS-rebinding
page can make them look same-origin. So, in front of every route: the Host header must
be one this server answers to; a state-changing request that carries an Origin (every
browser's does) must come from this server's own origin or a configured CORS origin
(``Origin: null`` never does); bodies are JSON only and bounded in size; and every answer
carries a strict Content-Security-Policy. A server reachable from other machines needs a
bearer token, compared in constant time.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from dataclasses import dataclass, field

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# The page loads only its own script, style and images (and blob: URLs it makes from
# fetched images); nothing may frame it.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class AccessRules:
    token: str | None = None  # required as ``Authorization: Bearer TOKEN`` on /v1/
    # Host names (no port) requests may name; empty: any (only with a token or --insecure).
    allowed_hosts: tuple[str, ...] = LOOPBACK_NAMES
    cors_origins: tuple[str, ...] = ()  # extra origins allowed to call the API
    max_body_bytes: int = 16 * 1024
    protected_prefix: str = "/v1/"
    extra: dict[str, str] = field(default_factory=dict)

    def host_allowed(self, host_header: str | None) -> bool:
        if not self.allowed_hosts:
            return True
        if not host_header:
            return False
        name = host_header.rsplit(":", 1)[0] if not host_header.endswith("]") else host_header
        if host_header.startswith("[") and "]:" in host_header:
            name = host_header.split("]:", 1)[0] + "]"
        return name.lower() in self.allowed_hosts

    def origin_allowed(self, origin: str, host_header: str | None) -> bool:
        """Same-origin (scheme + the Host this request names) or a configured origin."""
        if origin in self.cors_origins:
            return True
        return host_header is not None and origin in (f"http://{host_header}",
                                                      f"https://{host_header}")  # fmt: skip

    def token_ok(self, authorization: str | None) -> bool:
        if self.token is None:
            return True
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.strip().encode(), self.token.encode())


class Guard:
    """Pure ASGI middleware (it must not buffer the event stream's answers)."""

    def __init__(self, app: ASGIApp, rules: AccessRules) -> None:
        self.app, self.rules = app, rules

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rejection = self._check(scope)
        if rejection is not None:
            await _reject(send, *rejection)
            return
        if scope["method"] in BODY_METHODS:
            body = await _read_body(receive, self.rules.max_body_bytes)
            if body is None:
                limit = self.rules.max_body_bytes
                await _reject(send, 413, f"the request body is larger than {limit} bytes")
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, _with_headers(send))

    def _check(self, scope: Scope) -> tuple[int, str, dict[str, str]] | None:
        headers, rules = Headers(scope=scope), self.rules
        host, method = headers.get("host"), scope["method"]
        if not rules.host_allowed(host):
            return 400, f"this server does not answer to host {host!r}", {}
        origin = headers.get("origin")
        changes = method not in SAFE_METHODS
        if changes and origin is not None and not rules.origin_allowed(origin, host):
            return 403, f"requests from origin {origin!r} are not allowed", {}
        protected = scope["path"].startswith(rules.protected_prefix) and method != "OPTIONS"
        if protected and not rules.token_ok(headers.get("authorization")):
            return 401, "a bearer token is required", {"www-authenticate": "Bearer"}
        if method in BODY_METHODS:
            kind = headers.get("content-type", "").split(";")[0].strip().lower()
            if kind != "application/json":
                return 415, "send JSON (Content-Type: application/json)", {}
            length = headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > rules.max_body_bytes):
                return 413, f"the request body is larger than {rules.max_body_bytes} bytes", {}
        return None


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole body, or None as soon as it passes ``limit`` bytes (chunked uploads
    included, which carry no Content-Length)."""
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def _with_headers(send: Send) -> Send:
    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            names = {name for name, _ in message.get("headers", [])}
            extra = [(k, v) for k, v in SECURITY_HEADERS if k not in names]
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return sending


async def _reject(
    send: Send, status: int, message: str, headers: dict[str, str] | None = None
) -> None:
    body = json.dumps({"error": {"message": message}}).encode()
    extra = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            *SECURITY_HEADERS, *extra]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})
