"""Every endpoint as a request description, shared by the sync and the async client.

A builder checks its arguments, encodes the body once (so every retry sends the same bytes),
decides whether the request may be repeated (``retry_safe``) and names the parser of its
answer. The clients only send requests and run the retry loop.
"""

from __future__ import annotations

import enum
import json
import os
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Final, Generic, TypeVar
from urllib.parse import quote

import httpx

from ._errors import MemringError
from ._tokens import ReadTokens, merge_tokens
from ._types import (
    BatchItemResult,
    BatchResult,
    Embeddings,
    Memory,
    MemoryPage,
    SearchHit,
    SearchMode,
    SearchResults,
    WriteResult,
)

T = TypeVar("T")

BatchAnswer = tuple[list[dict[str, Any]], str | None]
"""A batch request's per-item answers and its read token."""

DEFAULT_URL: Final = "http://127.0.0.1:7700"
MAX_BATCH_ITEMS: Final = 1000
"""The most items one batch request may hold (API.md)."""
MAX_SEARCH_WINDOW: Final = 1000
"""``offset + k`` may not pass this."""
READ_TOKEN_HEADER: Final = "x-memring-read-token"
IDEMPOTENCY_KEY_HEADER: Final = "idempotency-key"
DEFAULT_BATCH_BYTES: Final = 16 << 20
"""A batch request is split before its JSON passes this size (the router's default body limit
admits a full batch of 1536-dim vectors, ~20 MiB, so this stays under it)."""


class Unset(enum.Enum):
    """Marks a ``patch`` field that is left as it is (``None`` removes it, as in RFC 7396)."""

    UNSET = 0

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = Unset.UNSET


def agent(agent_id: str) -> str:
    """The private scope of agent ``agent_id``: ``"agent:<agent_id>"``."""
    return f"agent:{agent_id}"


def rrf(k: int = 60) -> dict[str, Any]:
    """Hybrid fusion by reciprocal rank (the server's default)."""
    return {"method": "rrf", "k": k}


def weighted(alpha: float = 0.7) -> dict[str, Any]:
    """Hybrid fusion by ``alpha`` x vector score + (1 - alpha) x keyword score (each min-max
    normalised)."""
    return {"method": "weighted", "alpha": alpha}


@dataclass
class Request(Generic[T]):
    """One endpoint call, ready to send (possibly several times)."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: dict[str, str] | None = None
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    retry_safe: bool = True
    """Sending it again cannot apply a change twice."""
    tenant: str | None = None
    """Whose read token this request updates (writes) or sends (reads)."""
    read_scopes: list[str] | None = None
    """A read of these scopes: send the client's read token for them."""
    absent_ok_after_retry: bool = False
    """A delete: a 404 after an ambiguous try means the first try deleted it."""
    ok_statuses: frozenset[int] = frozenset()
    """Statuses besides 2xx that the parser handles itself."""
    retry: bool = True
    """False: one try only, whatever the policy (health probes)."""


def encode_json(body: Any) -> bytes:
    """Compact UTF-8 JSON; NaN and infinities are refused here rather than by the server."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _json(response: httpx.Response) -> Any:
    return json.loads(response.content) if response.content else None


def _mapping(response: httpx.Response) -> dict[str, Any]:
    body = _json(response)
    if not isinstance(body, dict):
        raise MemringError(
            f"expected a JSON object from {response.request.method} {response.request.url.path}",
            status=response.status_code,
            code="invalid_response",
        )
    return body


def _floats(values: Sequence[float] | Any) -> list[float]:
    return [float(x) for x in values]


def _time(value: str | datetime) -> str:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    return value


def if_match_header(value: int | str) -> str:
    """An ``If-Match`` value from a version (``3``), an ``ETag`` (``'"3"'``) or ``"*"``."""
    if isinstance(value, bool):
        raise TypeError("if_match takes a version, an ETag or '*', not a bool")
    if isinstance(value, int):
        return f'"{value}"'
    text = value.strip()
    if text == "*" or text.startswith(('"', "W/")):
        return text
    if text.isdigit():
        return f'"{text}"'
    raise ValueError(f"if_match must be a version, an ETag such as '\"3\"' or '*', got {value!r}")


def new_id() -> str:
    """A fresh memory id (a UUID), chosen before the first try so retries are idempotent."""
    return str(uuid.uuid4())


def new_idempotency_key() -> str:
    """A fresh ``Idempotency-Key``: one per logical change, the same on every retry."""
    return uuid.uuid4().hex


def _item(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A write body from a :class:`MemoryInput`, with an id filled in when it has none."""
    item = dict(raw)
    if item.get("id") is None:
        item["id"] = new_id()
    if item.get("embedding") is not None:
        item["embedding"] = _floats(item["embedding"])
    if item.get("metadata") is not None:
        item["metadata"] = dict(item["metadata"])
    return {k: v for k, v in item.items() if v is not None}


def chunk_items(
    items: Iterable[Mapping[str, Any]], max_items: int, max_bytes: int
) -> Iterable[list[tuple[dict[str, Any], bytes]]]:
    """Prepared items (with their JSON) grouped into requests of at most ``max_items`` items and
    about ``max_bytes`` of JSON (an item bigger than that goes alone)."""
    chunk: list[tuple[dict[str, Any], bytes]] = []
    size = 0
    for raw in items:
        item = _item(raw)
        encoded = encode_json(item)
        if chunk and (len(chunk) >= max_items or size + len(encoded) + 1 > max_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append((item, encoded))
        size += len(encoded) + 1
    if chunk:
        yield chunk


class Base:
    """Configuration and request builders shared by :class:`Memring` and :class:`AsyncMemring`."""

    def __init__(
        self,
        url: str | None,
        api_key: str | None,
        tenant: str | None,
    ) -> None:
        self.url = (url or os.environ.get("MEMRING_URL") or DEFAULT_URL).rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("MEMRING_API_KEY")
        self.tenant = tenant
        self._tokens = ReadTokens()

    # -- helpers ---------------------------------------------------------------------------

    def _tenant(self, tenant: str | None) -> str:
        chosen = tenant if tenant is not None else self.tenant
        if not chosen:
            raise ValueError("no tenant: pass tenant=... here or to the client")
        return chosen

    def _base_headers(self) -> dict[str, str]:
        headers = {"user-agent": "memring-python/0.1", "accept": "application/json"}
        if self.api_key:
            headers["authorization"] = f"Bearer {self.api_key}"
        return headers

    @staticmethod
    def _memories(tenant: str, suffix: str = "") -> str:
        return f"/v1/tenants/{quote(tenant, safe='')}/memories{suffix}"

    def read_token(self, tenant: str | None = None) -> str | None:
        """This client's read-your-writes token for ``tenant`` (every scope it wrote), to hand
        to another client or process (see :meth:`note_read_token`)."""
        return self._tokens.header(self._tenant(tenant))

    def note_read_token(self, token: str | None, tenant: str | None = None) -> None:
        """Merges a token from elsewhere (another client's write) into this client's, so this
        client's reads see those writes too."""
        self._tokens.note(self._tenant(tenant), token)

    def _token_for(self, request: Request[Any], extra: str | None = None) -> str | None:
        if request.tenant is None or request.read_scopes is None:
            return None
        mine = self._tokens.header(request.tenant, request.read_scopes)
        if extra and mine:
            return merge_tokens(mine, extra)
        # A token given alone goes as it is (the server judges it).
        return extra or mine

    def _after(self, request: Request[Any], response: httpx.Response) -> None:
        if request.tenant is not None:
            self._tokens.note(request.tenant, response.headers.get(READ_TOKEN_HEADER))

    # -- builders --------------------------------------------------------------------------

    def _add(
        self,
        scope: str,
        content: str,
        *,
        id: str | None,
        embedding: Sequence[float] | None,
        embedding_model: str | None,
        metadata: Mapping[str, Any] | None,
        ttl_seconds: int | None,
        embed: bool | None,
        if_match: int | str | None,
        if_none_match: bool,
        idempotency_key: str | None,
        tenant: str | None,
    ) -> Request[WriteResult]:
        t = self._tenant(tenant)
        body: dict[str, Any] = {"id": id or new_id(), "scope": scope, "content": content}
        if embedding is not None:
            body["embedding"] = _floats(embedding)
        if embedding_model is not None:
            body["embedding_model"] = embedding_model
        if metadata is not None:
            body["metadata"] = dict(metadata)
        if ttl_seconds is not None:
            body["ttl_seconds"] = ttl_seconds
        if embed is not None:
            body["embed"] = embed
        headers: dict[str, str] = {}
        if if_match is not None:
            headers["if-match"] = if_match_header(if_match)
        if if_none_match:
            headers["if-none-match"] = "*"
        if headers or idempotency_key:
            headers[IDEMPOTENCY_KEY_HEADER] = idempotency_key or new_idempotency_key()

        def parse(response: httpx.Response) -> WriteResult:
            return WriteResult.from_json(
                _mapping(response),
                status=response.status_code,
                etag=response.headers.get("etag"),
                read_token=response.headers.get(READ_TOKEN_HEADER),
            )

        # With an id (always: one is chosen here when none is given) a write is idempotent: the
        # same body again is answered as before. A condition is retried safely thanks to its key.
        return Request(
            "POST",
            self._memories(t),
            parse,
            body=encode_json(body),
            headers=headers,
            retry_safe=True,
            tenant=t,
        )

    def _batch(self, chunk: list[bytes], tenant: str) -> Request[BatchAnswer]:
        """One batch request of items already encoded (each with its id)."""
        body = b'{"items":[' + b",".join(chunk) + b"]}"

        def parse(response: httpx.Response) -> BatchAnswer:
            results = _mapping(response).get("results")
            answers = [r if isinstance(r, dict) else {} for r in results or []]
            if len(answers) != len(chunk):
                raise MemringError(
                    f"the batch answer has {len(answers)} results for {len(chunk)} items",
                    status=response.status_code,
                    code="invalid_response",
                )
            return answers, response.headers.get(READ_TOKEN_HEADER)

        return Request(
            "POST",
            self._memories(tenant, ":batch"),
            parse,
            body=body,
            retry_safe=True,  # every item has an id, so the same batch again changes nothing
            tenant=tenant,
        )

    @staticmethod
    def _batch_result(
        parts: list[tuple[int, list[dict[str, Any]]]], token: str | None
    ) -> BatchResult:
        results: list[BatchItemResult] = []
        for offset, answers in parts:
            results.extend(BatchItemResult.from_json(offset + i, a) for i, a in enumerate(answers))
        return BatchResult(results=results, read_token=token)

    def _get(
        self, scope: str, id: str, *, tenant: str | None, read_token: str | None
    ) -> Request[Memory]:
        t = self._tenant(tenant)

        def parse(response: httpx.Response) -> Memory:
            return Memory.from_json(_mapping(response), etag=response.headers.get("etag"))

        req: Request[Memory] = Request(
            "GET",
            self._memories(t, "/" + quote(id, safe="")),
            parse,
            params={"scope": scope},
            tenant=t,
            read_scopes=[scope],
        )
        return self._with_token(req, read_token)

    def _with_token(self, req: Request[T], extra: str | None) -> Request[T]:
        token = self._token_for(req, extra)
        if token:
            req.headers[READ_TOKEN_HEADER] = token
        return req

    def _patch(
        self,
        scope: str,
        id: str,
        *,
        content: str | Unset,
        metadata: Mapping[str, Any] | Unset | None,
        embedding: Sequence[float] | Unset | None,
        embedding_model: str | Unset | None,
        ttl_seconds: int | Unset | None,
        if_match: int | str | None,
        idempotency_key: str | None,
        tenant: str | None,
    ) -> Request[Memory]:
        t = self._tenant(tenant)
        body: dict[str, Any] = {}
        if not isinstance(content, Unset):
            body["content"] = content
        if not isinstance(metadata, Unset):
            body["metadata"] = None if metadata is None else dict(metadata)
        if not isinstance(embedding, Unset):
            body["embedding"] = None if embedding is None else _floats(embedding)
        if not isinstance(embedding_model, Unset):
            body["embedding_model"] = embedding_model
        if not isinstance(ttl_seconds, Unset):
            body["ttl_seconds"] = ttl_seconds
        # The key makes a retried patch answer as applied instead of applying it again (or
        # failing its If-Match against the version its own first try made).
        headers = {IDEMPOTENCY_KEY_HEADER: idempotency_key or new_idempotency_key()}
        if if_match is not None:
            headers["if-match"] = if_match_header(if_match)

        def parse(response: httpx.Response) -> Memory:
            return Memory.from_json(
                _mapping(response),
                etag=response.headers.get("etag"),
                read_token=response.headers.get(READ_TOKEN_HEADER),
            )

        return Request(
            "PATCH",
            self._memories(t, "/" + quote(id, safe="")),
            parse,
            params={"scope": scope},
            body=encode_json(body),
            headers={"content-type": "application/merge-patch+json", **headers},
            retry_safe=True,
            tenant=t,
        )

    def _delete(
        self, scope: str, id: str, *, if_match: int | str | None, tenant: str | None
    ) -> Request[None]:
        t = self._tenant(tenant)
        headers = {} if if_match is None else {"if-match": if_match_header(if_match)}
        return Request(
            "DELETE",
            self._memories(t, "/" + quote(id, safe="")),
            lambda _: None,
            params={"scope": scope},
            headers=headers,
            retry_safe=True,
            tenant=t,
            absent_ok_after_retry=True,
        )

    def _list(
        self,
        scope: str,
        *,
        limit: int | None,
        cursor: str | None,
        tenant: str | None,
        read_token: str | None,
    ) -> Request[MemoryPage]:
        t = self._tenant(tenant)
        params = {"scope": scope}
        if limit is not None:
            params["limit"] = str(limit)
        if cursor is not None:
            params["cursor"] = cursor

        def parse(response: httpx.Response) -> MemoryPage:
            body = _mapping(response)
            items = [Memory.from_json(m) for m in body.get("items") or []]
            return MemoryPage(items=items, next_cursor=body.get("next_cursor"))

        req: Request[MemoryPage] = Request(
            "GET", self._memories(t), parse, params=params, tenant=t, read_scopes=[scope]
        )
        return self._with_token(req, read_token)

    def _search(
        self,
        scopes: str | Sequence[str],
        *,
        query: str | None,
        embedding: Sequence[float] | None,
        k: int | None,
        offset: int | None,
        mode: SearchMode | None,
        fusion: Mapping[str, Any] | None,
        where: Mapping[str, Any] | None,
        created_after: str | datetime | None,
        created_before: str | datetime | None,
        tenant: str | None,
        read_token: str | None,
    ) -> Request[SearchResults]:
        t = self._tenant(tenant)
        scope_list = [scopes] if isinstance(scopes, str) else list(scopes)
        body: dict[str, Any] = {"scopes": scope_list}
        if query is not None:
            body["query"] = query
        if embedding is not None:
            body["embedding"] = _floats(embedding)
        if k is not None:
            body["k"] = k
        if offset is not None:
            body["offset"] = offset
        if mode is not None:
            body["mode"] = mode
        if fusion is not None:
            body["fusion"] = dict(fusion)
        flt: dict[str, Any] = {}
        if where is not None:
            flt["metadata"] = dict(where)
        if created_after is not None:
            flt["created_after"] = _time(created_after)
        if created_before is not None:
            flt["created_before"] = _time(created_before)
        if flt:
            body["filter"] = flt

        def parse(response: httpx.Response) -> SearchResults:
            answer = _mapping(response)
            hits = [SearchHit.from_json(h) for h in answer.get("results") or []]
            return SearchResults(results=hits, partial=bool(answer.get("partial", False)))

        req: Request[SearchResults] = Request(
            "POST",
            self._memories(t, "/search"),
            parse,
            body=encode_json(body),
            tenant=t,
            read_scopes=scope_list,
        )
        return self._with_token(req, read_token)

    def _delete_tenant(self, tenant: str) -> Request[None]:
        if not tenant:
            raise ValueError("delete_tenant needs the tenant named explicitly")
        return Request(
            "DELETE",
            f"/v1/tenants/{quote(tenant, safe='')}",
            lambda _: None,
            retry_safe=True,
        )

    def _embeddings(self, input: str | Sequence[str], *, model: str | None) -> Request[Embeddings]:
        body: dict[str, Any] = {"input": input if isinstance(input, str) else list(input)}
        if model is not None:
            body["model"] = model
        return Request(
            "POST",
            "/v1/embeddings",
            lambda r: Embeddings.from_json(_mapping(r)),
            body=encode_json(body),
        )

    def _get_json(self, path: str) -> Request[dict[str, Any]]:
        return Request("GET", path, _mapping)

    @staticmethod
    def _probe(path: str) -> Request[bool]:
        return Request(
            "GET",
            path,
            lambda r: r.status_code == 200,
            ok_statuses=frozenset({503}),
            retry=False,
        )


def search_pages(
    k: int | None, offset: int | None, page_size: int, limit: int | None
) -> tuple[int, int]:
    """The first page's (offset, k) of a paged search, checked."""
    start = offset or 0
    size = k if k is not None else page_size
    if size < 1:
        raise ValueError("page_size must be at least 1")
    if limit is not None and limit < 1:
        raise ValueError("limit must be at least 1")
    if start >= MAX_SEARCH_WINDOW:
        raise ValueError(f"offset must be below {MAX_SEARCH_WINDOW}")
    return start, size


def next_page_k(start: int, size: int, produced: int, limit: int | None) -> int:
    """``k`` of the page at ``start`` (0 when paging must stop)."""
    room = MAX_SEARCH_WINDOW - start
    if limit is not None:
        room = min(room, limit - produced)
    return max(0, min(size, room))


def parsed(request: Request[T], response: httpx.Response) -> T:
    """The parsed answer; a body that does not parse is a :class:`MemringError`."""
    try:
        return request.parse(response)
    except ValueError as exc:
        raise MemringError(
            f"the answer of {request.method} {request.path} does not parse: {exc}",
            status=response.status_code,
            code="invalid_response",
        ) from exc


def check_batch_size(batch_size: int) -> None:
    """``batch_size`` is 1..=1000."""
    if not 1 <= batch_size <= MAX_BATCH_ITEMS:
        raise ValueError(f"batch_size must be from 1 to {MAX_BATCH_ITEMS}, got {batch_size}")
