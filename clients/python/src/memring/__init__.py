"""memring: a Python client for the memring memory store for AI agents.

>>> from memring import Memring
>>> with Memring("http://127.0.0.1:7700", tenant="acme") as m:  # doctest: +SKIP
...     m.add("shared", "The travel budget is 1200 EUR per trip", metadata={"kind": "fact"})
...     hits = m.search(["shared"], query="how much can we spend?")

:class:`Memring` is synchronous, :class:`AsyncMemring` the same with ``await``. Errors are
:class:`MemringError` subclasses; 429 and 503 are retried by :class:`RetryPolicy`.
"""

from ._async_client import AsyncMemring
from ._client import Memring
from ._errors import (
    BadRequest,
    Conflict,
    Forbidden,
    MemringError,
    NotFound,
    PayloadTooLarge,
    PreconditionFailed,
    QuotaExceeded,
    RateLimited,
    ServerError,
    Timeout,
    TransportError,
    Unauthorized,
    Unavailable,
)
from ._requests import UNSET, Unset, agent, rrf, weighted
from ._retry import RetryPolicy
from ._tokens import merge_tokens
from ._types import (
    BatchItemResult,
    BatchResult,
    Embeddings,
    ItemError,
    Memory,
    MemoryInput,
    MemoryPage,
    Scores,
    SearchHit,
    SearchMode,
    SearchResults,
    WriteResult,
    etag_of,
)

__version__ = "0.1.0"

__all__ = [
    "UNSET",
    "AsyncMemring",
    "BadRequest",
    "BatchItemResult",
    "BatchResult",
    "Conflict",
    "Embeddings",
    "Forbidden",
    "ItemError",
    "Memory",
    "MemoryInput",
    "MemoryPage",
    "Memring",
    "MemringError",
    "NotFound",
    "PayloadTooLarge",
    "PreconditionFailed",
    "QuotaExceeded",
    "RateLimited",
    "RetryPolicy",
    "Scores",
    "SearchHit",
    "SearchMode",
    "SearchResults",
    "ServerError",
    "Timeout",
    "TransportError",
    "Unauthorized",
    "Unavailable",
    "Unset",
    "WriteResult",
    "__version__",
    "agent",
    "etag_of",
    "merge_tokens",
    "rrf",
    "weighted",
]
