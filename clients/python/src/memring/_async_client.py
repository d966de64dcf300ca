"""The asynchronous client, :class:`AsyncMemring` (asyncio or trio, through httpx and anyio)."""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar

import anyio
import httpx

from ._errors import MemringError, NotFound, error_from_response, error_from_transport
from ._requests import (
    DEFAULT_BATCH_BYTES,
    MAX_BATCH_ITEMS,
    UNSET,
    Base,
    Request,
    Unset,
    check_batch_size,
    chunk_items,
    next_page_k,
    parsed,
    search_pages,
)
from ._retry import Attempts, RetryPolicy
from ._tokens import merge_tokens
from ._types import (
    BatchResult,
    Embeddings,
    Memory,
    MemoryInput,
    MemoryPage,
    SearchHit,
    SearchMode,
    SearchResults,
    WriteResult,
)

T = TypeVar("T")

__all__ = ["AsyncMemring"]


class AsyncMemring(Base):
    """An asyncio client of one memring router: :class:`Memring` with ``await``.

    ``AsyncMemring("http://127.0.0.1:7700", api_key="mrk_...", tenant="acme")``. ``url`` defaults to
    ``$MEMRING_URL`` (else ``http://127.0.0.1:7700``), ``api_key`` to ``$MEMRING_API_KEY``.
    ``tenant`` is the default tenant of every call (each call may name another). ``timeout`` is
    per try, in seconds (or an ``httpx.Timeout``). ``retry`` bounds the retries of 429, 503 and
    lost connections (:class:`RetryPolicy`). Pass ``http_client`` to bring your own
    ``httpx.AsyncClient`` (proxies, TLS, event hooks; ``timeout`` still applies per request);
    the client then does not close it.

    Use it as ``async with``, or ``await client.aclose()``. One client may be shared by tasks.
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        tenant: str | None = None,
        timeout: float | httpx.Timeout = 30.0,
        *,
        retry: RetryPolicy | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(url, api_key, tenant)
        self.retry = retry or RetryPolicy()
        self._rng = random.Random()
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(timeout=timeout)
        self._timeout = timeout

    # -- lifecycle -------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Closes the connection pool (unless it was passed in as ``http_client``)."""
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncMemring:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- sending ---------------------------------------------------------------------------

    async def _send(self, request: Request[T]) -> T:
        headers = {**self._base_headers(), **request.headers}
        if request.body is not None:
            headers.setdefault("content-type", "application/json")
        policy = self.retry if request.retry else RetryPolicy(max_attempts=1)
        attempts = Attempts(policy, time.monotonic(), self._rng)
        url = self.url + request.path
        while True:
            attempts.tries += 1
            error: MemringError
            try:
                response = await self._http.request(
                    request.method,
                    url,
                    params=request.params,
                    content=request.body,
                    headers=headers,
                    timeout=self._timeout,
                )
            except httpx.TransportError as exc:
                error, sent = error_from_transport(exc)
            else:
                sent = True
                self._after(request, response)
                status = response.status_code
                if 200 <= status < 300 or status in request.ok_statuses:
                    return parsed(request, response)
                error = error_from_response(response)
                if status == 404 and request.absent_ok_after_retry and attempts.ambiguous:
                    # An earlier try of this delete was applied; its answer was lost.
                    return parsed(request, response)
            wait = attempts.next_wait(
                error, retry_safe=request.retry_safe, sent=sent, now=time.monotonic()
            )
            if wait is None:
                raise error
            await anyio.sleep(wait)

    # -- memories --------------------------------------------------------------------------

    async def add(
        self,
        scope: str,
        content: str,
        *,
        id: str | None = None,
        embedding: Sequence[float] | None = None,
        embedding_model: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        ttl_seconds: int | None = None,
        embed: bool | None = None,
        if_match: int | str | None = None,
        if_none_match: bool = False,
        idempotency_key: str | None = None,
        tenant: str | None = None,
    ) -> WriteResult:
        """Writes one memory (``POST /v1/tenants/{t}/memories``).

        Without ``id`` the client picks one (a UUID) before the first try, so a retried write
        is never stored twice. Without ``embedding`` the router embeds ``content`` when it has
        an embedder; ``embed=False`` stores the memory without a vector even then (for data
        that is not prose: found by keyword search, filters and listings, never by meaning; it
        fixes no model or dimension for its scope, and a ``patch`` of its content without an
        ``embedding`` leaves it without a vector). ``embed=False`` with ``embedding`` is refused
        (:class:`BadRequest`); ``embed`` left out (``None``) is not sent.

        A write with the ``id`` of an existing memory replaces it (version + 1); ``if_match`` (a
        version or an ``ETag``) makes that conditional, ``if_none_match=True`` makes it
        create-only; both raise :class:`PreconditionFailed` when they do not hold.
        """
        return await self._send(
            self._add(
                scope,
                content,
                id=id,
                embedding=embedding,
                embedding_model=embedding_model,
                metadata=metadata,
                ttl_seconds=ttl_seconds,
                embed=embed,
                if_match=if_match,
                if_none_match=if_none_match,
                idempotency_key=idempotency_key,
                tenant=tenant,
            )
        )

    async def add_many(
        self,
        items: Iterable[MemoryInput | Mapping[str, Any]],
        *,
        batch_size: int = MAX_BATCH_ITEMS,
        max_request_bytes: int = DEFAULT_BATCH_BYTES,
        tenant: str | None = None,
    ) -> BatchResult:
        """Writes any number of memories, ``batch_size`` (at most 1,000) per request.

        Items (:class:`MemoryInput`: ``scope``, ``content``, optionally ``id``, ``embedding``,
        ``embedding_model``, ``metadata``, ``ttl_seconds``, ``embed``) without an ``id`` get one
        first, so a retried request stores nothing twice; an item with ``"embed": False`` is
        stored without a vector (as :meth:`add`'s ``embed``). Each item succeeds or fails on its
        own: see ``result.failed``. A request that fails as a whole raises, and the requests
        before it stay applied.
        """
        t = self._tenant(tenant)
        check_batch_size(batch_size)
        parts: list[tuple[int, list[dict[str, Any]]]] = []
        token: str | None = None
        offset = 0
        for chunk in chunk_items(items, batch_size, max_request_bytes):
            answers, chunk_token = await self._send(self._batch([enc for _, enc in chunk], t))
            parts.append((offset, answers))
            token = merge_tokens(token, chunk_token)
            offset += len(chunk)
        return self._batch_result(parts, token)

    async def get(
        self, scope: str, id: str, *, tenant: str | None = None, read_token: str | None = None
    ) -> Memory:
        """One memory with its vector (``GET .../memories/{id}?scope=``); :class:`NotFound`
        when it does not exist. The client's read token makes it see the client's own writes;
        ``read_token`` adds another (from another client's write)."""
        return await self._send(self._get(scope, id, tenant=tenant, read_token=read_token))

    async def patch(
        self,
        scope: str,
        id: str,
        *,
        content: str | Unset = UNSET,
        metadata: Mapping[str, Any] | Unset | None = UNSET,
        embedding: Sequence[float] | Unset | None = UNSET,
        embedding_model: str | Unset | None = UNSET,
        ttl_seconds: int | Unset | None = UNSET,
        if_match: int | str | None = None,
        idempotency_key: str | None = None,
        tenant: str | None = None,
    ) -> Memory:
        """Changes some fields of a memory (JSON Merge Patch, RFC 7396) and returns it whole.

        A field left out stays; ``None`` removes it (``metadata={"k": None}`` removes key
        ``k``, ``ttl_seconds=None`` keeps the memory for ever). ``if_match`` makes the change
        conditional (:class:`PreconditionFailed` when the memory is at another version). The
        client sends an ``Idempotency-Key`` (its own, or ``idempotency_key``) so a retry after a
        lost answer is answered as applied, never applied twice.
        """
        return await self._send(
            self._patch(
                scope,
                id,
                content=content,
                metadata=metadata,
                embedding=embedding,
                embedding_model=embedding_model,
                ttl_seconds=ttl_seconds,
                if_match=if_match,
                idempotency_key=idempotency_key,
                tenant=tenant,
            )
        )

    async def delete(
        self,
        scope: str,
        id: str,
        *,
        if_match: int | str | None = None,
        missing_ok: bool = False,
        tenant: str | None = None,
    ) -> None:
        """Deletes a memory; :class:`NotFound` when there is none (unless ``missing_ok``),
        :class:`PreconditionFailed` when ``if_match`` does not hold."""
        try:
            await self._send(self._delete(scope, id, if_match=if_match, tenant=tenant))
        except NotFound:
            if not missing_ok:
                raise

    async def list(
        self,
        scope: str,
        *,
        limit: int | None = None,
        cursor: str | None = None,
        tenant: str | None = None,
        read_token: str | None = None,
    ) -> MemoryPage:
        """One page of a scope's memories in a stable order; pass ``page.next_cursor`` as
        ``cursor`` for the next (``None`` on the last page)."""
        return await self._send(
            self._list(scope, limit=limit, cursor=cursor, tenant=tenant, read_token=read_token)
        )

    async def iter_list(
        self,
        scope: str,
        *,
        page_size: int = 100,
        tenant: str | None = None,
        read_token: str | None = None,
    ) -> AsyncIterator[Memory]:
        """Every memory of a scope, fetched ``page_size`` at a time."""
        cursor: str | None = None
        while True:
            page = await self.list(
                scope, limit=page_size, cursor=cursor, tenant=tenant, read_token=read_token
            )
            for item in page.items:
                yield item
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    async def search(
        self,
        scopes: str | Sequence[str],
        *,
        query: str | None = None,
        embedding: Sequence[float] | None = None,
        k: int | None = None,
        offset: int | None = None,
        mode: SearchMode | None = None,
        fusion: Mapping[str, Any] | None = None,
        where: Mapping[str, Any] | None = None,
        created_after: str | datetime | None = None,
        created_before: str | datetime | None = None,
        tenant: str | None = None,
        read_token: str | None = None,
    ) -> SearchResults:
        """Searches one or more scopes, best first across all of them.

        ``query`` (words) and/or ``embedding`` (a vector); ``mode`` ``"vector"``,
        ``"keyword"`` or ``"hybrid"`` (default: decided by the server from what is given);
        ``fusion`` :func:`rrf` or :func:`weighted` for hybrid. ``where`` is the metadata
        filter (``{"kind": "fact", "priority": {"$gte": 2}}``, operators ``$eq $ne $gt $gte
        $lt $lte $in $nin $contains $exists $and $or $not``); ``created_after`` /
        ``created_before`` bound creation time. Neither ``query`` nor ``embedding``: the
        filtered memories, newest first, with ``score`` ``None``. ``offset + k <= 1000``.
        """
        return await self._send(
            self._search(
                scopes,
                query=query,
                embedding=embedding,
                k=k,
                offset=offset,
                mode=mode,
                fusion=fusion,
                where=where,
                created_after=created_after,
                created_before=created_before,
                tenant=tenant,
                read_token=read_token,
            )
        )

    async def iter_search(
        self,
        scopes: str | Sequence[str],
        *,
        query: str | None = None,
        embedding: Sequence[float] | None = None,
        mode: SearchMode | None = None,
        fusion: Mapping[str, Any] | None = None,
        where: Mapping[str, Any] | None = None,
        created_after: str | datetime | None = None,
        created_before: str | datetime | None = None,
        page_size: int = 100,
        offset: int | None = None,
        limit: int | None = None,
        tenant: str | None = None,
        read_token: str | None = None,
    ) -> AsyncIterator[SearchHit]:
        """The hits of :meth:`search`, page after page by ``offset`` (``page_size`` each),
        until there are no more, ``limit`` hits were given, or the server's window of 1,000
        results ends."""
        start, size = search_pages(None, offset, page_size, limit)
        produced = 0
        while True:
            k = next_page_k(start, size, produced, limit)
            if k == 0:
                return
            page = await self.search(
                scopes,
                query=query,
                embedding=embedding,
                k=k,
                offset=start,
                mode=mode,
                fusion=fusion,
                where=where,
                created_after=created_after,
                created_before=created_before,
                tenant=tenant,
                read_token=read_token,
            )
            for hit in page.results:
                yield hit
            produced += len(page.results)
            if len(page.results) < k:
                return
            start += len(page.results)

    async def delete_tenant(self, tenant: str) -> None:
        """Deletes every memory of ``tenant`` (named explicitly: never the default by
        accident)."""
        await self._send(self._delete_tenant(tenant))

    # -- text and cluster ------------------------------------------------------------------

    async def embeddings(
        self, input: str | Sequence[str], *, model: str | None = None
    ) -> Embeddings:
        """Embeds text with the router's model (``POST /v1/embeddings``, at most 256 inputs)."""
        return await self._send(self._embeddings(input, model=model))

    async def ring(self) -> dict[str, Any]:
        """The router's ring (``GET /v1/ring``: epoch, nodes); needs an admin or operator key
        when auth is on."""
        return await self._send(self._get_json("/v1/ring"))

    async def openapi(self) -> dict[str, Any]:
        """The router's OpenAPI 3 document."""
        return await self._send(self._get_json("/openapi.json"))

    async def health(self) -> bool:
        """The router process answers (``GET /health``)."""
        return await self._probe_ok("/health")

    async def ready(self) -> bool:
        """The router has its ring and can route (``GET /ready``)."""
        return await self._probe_ok("/ready")

    async def _probe_ok(self, path: str) -> bool:
        try:
            return await self._send(self._probe(path))
        except MemringError:
            return False
