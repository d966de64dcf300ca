"""Pieces both integrations share: strong reads, timestamps, batch checks.

Every memory the integrations write that must have no vector (all of the saver's, the store's
registry entries, store items without an index) is written with ``"embed": false``: a router
with an embedder stores it without one, and it fixes no model or dimension for its partition
(docs/client.md, "LangGraph").
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any, Final

from .._errors import BadRequest, MemringError, NotFound
from .._types import BatchResult

MAX_POSITION: Final = (1 << 63) - 1
"""A read-token position no follower has reached: a read carrying it is answered by the
partition's owner, which holds every acknowledged write (architecture.md, "Replica reads")."""

SEARCH_WINDOW: Final = 1000
"""memring ranks at most this many results per search (``offset + k``)."""
MAX_SCOPES: Final = 64
"""Scopes per search request."""
LIST_PAGE: Final = 1000
"""The largest list page."""


def strong_token(scopes: Iterable[str]) -> str:
    """A read token that sends reads of ``scopes`` to their owners."""
    return ",".join(f"{s}={MAX_POSITION}" for s in sorted(set(scopes)))


def parse_time(text: str | None) -> datetime:
    """memring's RFC 3339 timestamps (``...Z``) as aware datetimes (Python 3.10 included)."""
    if not text:
        return datetime.now(timezone.utc)
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    # 3.10's fromisoformat takes 3 or 6 fraction digits only.
    head, dot, rest = text.partition(".")
    if dot:
        digits = ""
        i = 0
        while i < len(rest) and rest[i].isdigit():
            digits += rest[i]
            i += 1
        text = f"{head}.{(digits + '000000')[:6]}{rest[i:]}"
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def is_not_found(error: BaseException) -> bool:
    return isinstance(error, NotFound)


def check_batch(result: BatchResult, what: str) -> None:
    """Raises the first refused item of a batch write."""
    for item in result.failed:
        err = item.error
        code = err.code if err else "error"
        message = err.message if err else "refused"
        raise BadRequest(f"{what}: item {item.index} ({item.id}) refused: {message}", code=code)


def first_error(errors: list[BaseException]) -> MemringError | None:
    for e in errors:
        if isinstance(e, MemringError):
            return e
    return None


def compact(d: dict[str, Any]) -> dict[str, Any]:
    """``d`` without ``None`` values."""
    return {k: v for k, v in d.items() if v is not None}
