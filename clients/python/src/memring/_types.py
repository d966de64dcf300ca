"""What the client sends and what it gets back, as typed values.

Results are frozen dataclasses built from the server's JSON; each keeps the whole answer in
``raw`` so fields a newer server adds are not lost. Inputs to a batch write are plain dicts
typed by :class:`MemoryInput`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

__all__ = [
    "BatchItemResult",
    "BatchResult",
    "Embeddings",
    "ItemError",
    "Memory",
    "MemoryInput",
    "MemoryPage",
    "Scores",
    "SearchHit",
    "SearchMode",
    "SearchResults",
    "WriteResult",
    "etag_of",
]

SearchMode = Literal["vector", "keyword", "hybrid"]
"""How a search ranks: by meaning, by exact words (BM25), or both fused."""


class _MemoryInputRequired(TypedDict):
    scope: str
    content: str


class MemoryInput(_MemoryInputRequired, total=False):
    """One memory of a batch write: ``scope`` and ``content``, the rest optional.

    ``embed``: ``False`` stores the item without a vector even when the router has an embedder
    (as ``embed`` of :meth:`Memring.add`); with ``embedding`` the item is refused
    (``invalid_request``). Left out or ``None``, nothing is sent: the router embeds a text-only
    item when it has an embedder.
    """

    id: str
    embedding: Sequence[float]
    embedding_model: str
    metadata: Mapping[str, Any]
    ttl_seconds: int
    embed: bool | None


def etag_of(version: int) -> str:
    """The ``ETag`` of a memory at ``version``: the version, quoted (``"3"``)."""
    return f'"{version}"'


def _str(value: Any) -> str:
    return "" if value is None else str(value)


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _dict(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


@dataclass(frozen=True)
class WriteResult:
    """The answer to a single write: the memory's id, scope and new version."""

    id: str
    scope: str
    version: int
    created_at: str
    created: bool
    """True when this write made a new memory (HTTP 201); False when it replaced or repeated one."""
    etag: str
    """The memory's ``ETag`` after the write: pass it as ``if_match`` to change this version."""
    embedded_by: str | None = None
    """The model the router embedded ``content`` with, when it did."""
    embedded_truncated: bool = False
    read_token: str | None = None
    """The ``x-memring-read-token`` of this write (the client keeps and merges it by itself)."""
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(
        cls, body: Mapping[str, Any], *, status: int, etag: str | None, read_token: str | None
    ) -> WriteResult:
        version = int(body.get("version", 0))
        return cls(
            id=_str(body.get("id")),
            scope=_str(body.get("scope")),
            version=version,
            created_at=_str(body.get("created_at")),
            created=status == 201,
            etag=etag or etag_of(version),
            embedded_by=_opt_str(body.get("embedded_by")),
            embedded_truncated=bool(body.get("embedded_truncated", False)),
            read_token=read_token,
            raw=dict(body),
        )


@dataclass(frozen=True)
class Memory:
    """A whole memory, as ``get``, ``patch`` and ``list`` answer it."""

    id: str
    scope: str
    content: str
    metadata: dict[str, Any]
    embedding: list[float] | None = field(repr=False)
    created_at: str
    updated_at: str
    version: int
    etag: str
    """``ETag`` of this version (``"<version>"``): pass as ``if_match`` for a conditional change."""
    expires_at: str | None = None
    embedded_by: str | None = None
    read_token: str | None = None
    """For a ``patch``: its ``x-memring-read-token``."""
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(
        cls,
        body: Mapping[str, Any],
        *,
        etag: str | None = None,
        read_token: str | None = None,
    ) -> Memory:
        version = int(body.get("version", 0))
        embedding = body.get("embedding")
        return cls(
            id=_str(body.get("id")),
            scope=_str(body.get("scope")),
            content=_str(body.get("content")),
            metadata=_dict(body.get("metadata")),
            embedding=None if embedding is None else [float(x) for x in embedding],
            created_at=_str(body.get("created_at")),
            updated_at=_str(body.get("updated_at")),
            version=version,
            etag=etag or etag_of(version),
            expires_at=_opt_str(body.get("expires_at")),
            embedded_by=_opt_str(body.get("embedded_by")),
            read_token=read_token,
            raw=dict(body),
        )


@dataclass(frozen=True)
class MemoryPage:
    """One page of a listing; pass ``next_cursor`` back as ``cursor`` for the next one."""

    items: list[Memory]
    next_cursor: str | None

    def __iter__(self) -> Iterator[Memory]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


@dataclass(frozen=True)
class Scores:
    """The parts of a hit's score: cosine similarity and BM25, where they took part."""

    vector: float | None = None
    keyword: float | None = None


@dataclass(frozen=True)
class SearchHit:
    """One search result; ``score`` is ``None`` in a filtered listing (no query, no vector)."""

    id: str
    scope: str
    score: float | None
    scores: Scores
    content: str
    metadata: dict[str, Any]
    created_at: str
    updated_at: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> SearchHit:
        parts = _dict(body.get("scores"))
        return cls(
            id=_str(body.get("id")),
            scope=_str(body.get("scope")),
            score=_opt_float(body.get("score")),
            scores=Scores(
                vector=_opt_float(parts.get("vector")), keyword=_opt_float(parts.get("keyword"))
            ),
            content=_str(body.get("content")),
            metadata=_dict(body.get("metadata")),
            created_at=_str(body.get("created_at")),
            updated_at=_opt_str(body.get("updated_at")),
            raw=dict(body),
        )


@dataclass(frozen=True)
class SearchResults:
    """A search answer: hits best first across all scopes; ``partial`` when a scope's node did
    not answer (its hits are missing)."""

    results: list[SearchHit]
    partial: bool

    def __iter__(self) -> Iterator[SearchHit]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, index: int) -> SearchHit:
        return self.results[index]


@dataclass(frozen=True)
class ItemError:
    """Why one batch item was refused (nothing of it was stored)."""

    code: str
    message: str
    details: Any = None


@dataclass(frozen=True)
class BatchItemResult:
    """The outcome of one batch item; ``index`` is its position in what was passed in."""

    index: int
    id: str | None
    ok: bool
    status: int | None = None
    outcome: str | None = None
    """``created``, ``updated`` or ``unchanged``."""
    scope: str | None = None
    created_at: str | None = None
    version: int | None = None
    embedded_by: str | None = None
    error: ItemError | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def etag(self) -> str | None:
        """``ETag`` of the stored version, for a stored item."""
        return None if self.version is None else etag_of(self.version)

    @classmethod
    def from_json(cls, index: int, body: Mapping[str, Any]) -> BatchItemResult:
        err = body.get("error")
        if isinstance(err, Mapping):
            return cls(
                index=index,
                id=_opt_str(body.get("id")),
                ok=False,
                error=ItemError(
                    code=_str(err.get("code")),
                    message=_str(err.get("message")),
                    details=err.get("details"),
                ),
                raw=dict(body),
            )
        version = body.get("version")
        status = body.get("status")
        return cls(
            index=index,
            id=_opt_str(body.get("id")),
            ok=True,
            status=None if status is None else int(status),
            outcome=_opt_str(body.get("outcome")),
            scope=_opt_str(body.get("scope")),
            created_at=_opt_str(body.get("created_at")),
            version=None if version is None else int(version),
            embedded_by=_opt_str(body.get("embedded_by")),
            raw=dict(body),
        )


@dataclass(frozen=True)
class BatchResult:
    """Every item's outcome of a batch write, in the order given (over all its requests)."""

    results: list[BatchItemResult]
    read_token: str | None = None

    def __iter__(self) -> Iterator[BatchItemResult]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, index: int) -> BatchItemResult:
        return self.results[index]

    @property
    def ok(self) -> bool:
        """Every item was stored."""
        return all(r.ok for r in self.results)

    @property
    def failed(self) -> list[BatchItemResult]:
        """The refused items."""
        return [r for r in self.results if not r.ok]

    @property
    def ids(self) -> list[str | None]:
        """The ids, in order (``None`` for an item refused before it had a valid id)."""
        return [r.id for r in self.results]


@dataclass(frozen=True)
class Embeddings:
    """``POST /v1/embeddings``: one vector per input, in input order."""

    model: str
    dimensions: int
    vectors: list[list[float]]
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Embeddings:
        data = sorted(body.get("data") or [], key=lambda d: int(d.get("index", 0)))
        vectors = [[float(x) for x in d.get("embedding") or []] for d in data]
        dims = body.get("dimensions")
        return cls(
            model=_str(body.get("model")),
            dimensions=int(dims) if dims is not None else (len(vectors[0]) if vectors else 0),
            vectors=vectors,
            raw=dict(body),
        )

    def __iter__(self) -> Iterator[list[float]]:
        return iter(self.vectors)

    def __len__(self) -> int:
        return len(self.vectors)
