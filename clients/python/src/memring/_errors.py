"""Exceptions: one base class, one subclass per class of failure.

Every answer the server refuses becomes a :class:`MemringError` carrying the HTTP ``status``,
the server's stable snake_case ``code`` (``"precondition_failed"``, ``"rate_limited"``, ...),
its ``message`` (which says how to fix the request), optional ``details`` and, for 429 and 503,
``retry_after`` in seconds. Failures below HTTP (refused connection, timeout) are
:class:`TransportError` with ``status`` ``None``.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

__all__ = [
    "BadRequest",
    "Conflict",
    "Forbidden",
    "MemringError",
    "NotFound",
    "PayloadTooLarge",
    "PreconditionFailed",
    "QuotaExceeded",
    "RateLimited",
    "ServerError",
    "Timeout",
    "TransportError",
    "Unauthorized",
    "Unavailable",
]


class MemringError(Exception):
    """A request memring refused, or one that never got an answer."""

    status: int | None
    code: str
    message: str
    details: Any
    retry_after: float | None
    request_id: str | None

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str = "error",
        details: Any = None,
        retry_after: float | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.retry_after = retry_after
        self.request_id = request_id

    def __str__(self) -> str:
        where = f"{self.status} " if self.status is not None else ""
        return f"{where}{self.code}: {self.message}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status!r}, code={self.code!r}, "
            f"message={self.message!r})"
        )


class BadRequest(MemringError):
    """400 (and other 4xx the client should not repeat as is): the request was wrong."""


class PayloadTooLarge(BadRequest):
    """413: the body is over the router's request-size limit; split it (smaller batches)."""


class Unauthorized(MemringError):
    """401: no API key, or one the server does not know (revoked, mistyped)."""


class Forbidden(MemringError):
    """403: the key is valid but not for this tenant or operation."""


class QuotaExceeded(Forbidden):
    """403 ``quota_exceeded``: the tenant is at its quota of memories or bytes."""


class NotFound(MemringError):
    """404: the memory (or tenant, or path) does not exist."""


class Conflict(MemringError):
    """409: the request conflicts with the current state."""


class PreconditionFailed(MemringError):
    """412: an ``If-Match`` / ``If-None-Match`` condition does not hold; read again and redo."""


class RateLimited(MemringError):
    """429: the tenant is over a rate limit; ``retry_after`` says when to try again."""


class Unavailable(MemringError):
    """503: no copy of the data could be reached right now; ``retry_after`` says when to retry."""


class ServerError(MemringError):
    """Any other 5xx: a failure on the server's side."""


class TransportError(MemringError):
    """No HTTP answer: the connection was refused or broke (``status`` is ``None``)."""


class Timeout(TransportError):
    """No answer within the client's timeout."""


_BY_STATUS: dict[int, type[MemringError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    412: PreconditionFailed,
    413: PayloadTooLarge,
    429: RateLimited,
    503: Unavailable,
}


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds: delta-seconds, or an HTTP date (seconds from now)."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def error_from_response(response: httpx.Response) -> MemringError:
    """The exception for a refused answer (``{"error": {"code", "message", "details"?}}``)."""
    status = response.status_code
    code = f"http_{status}"
    message = response.reason_phrase or "request failed"
    details: Any = None
    try:
        body = json.loads(response.content) if response.content else None
    except ValueError:
        body = None
        text = response.text.strip()
        if text:
            message = text[:500]
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        code = str(err.get("code") or code)
        message = str(err.get("message") or message)
        details = err.get("details")
    cls: type[MemringError]
    if status == 403 and code == "quota_exceeded":
        cls = QuotaExceeded
    elif status in _BY_STATUS:
        cls = _BY_STATUS[status]
    elif 400 <= status < 500:
        cls = BadRequest
    elif status >= 500:
        cls = ServerError
    else:
        cls = MemringError
    return cls(
        message,
        status=status,
        code=code,
        details=details,
        retry_after=parse_retry_after(response.headers.get("retry-after")),
        request_id=response.headers.get("x-request-id"),
    )


def error_from_transport(exc: httpx.TransportError) -> tuple[TransportError, bool]:
    """The exception for a request that got no answer, and whether it may have been sent
    (``False`` when the connection itself was never made)."""
    sent = not isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))
    cls = Timeout if isinstance(exc, httpx.TimeoutException) else TransportError
    code = "timeout" if cls is Timeout else "transport_error"
    error = cls(f"{type(exc).__name__}: {exc}".rstrip(": "), code=code)
    error.__cause__ = exc
    return error, sent
