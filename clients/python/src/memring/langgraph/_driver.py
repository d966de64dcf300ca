"""One implementation, two ways to run it.

LangGraph calls a store and a checkpointer both synchronously (``graph.invoke``) and
asynchronously (``graph.ainvoke``). The logic of every operation is written once, as a generator
that *yields* the client calls it needs (:class:`Call`, or a list of them to run concurrently)
and receives their results; :func:`run_sync` runs it with a :class:`memring.Memring`,
:func:`run_async` with a :class:`memring.AsyncMemring` (the two clients have the same methods).
An exception of a call is thrown into the generator at its ``yield``, so the logic catches
``NotFound`` and friends as if it had made the call itself.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

from .._async_client import AsyncMemring
from .._client import Memring
from .._retry import RetryPolicy

T = TypeVar("T")

CONCURRENCY = 16
"""Calls of one list in flight at once."""


@dataclass(frozen=True)
class Call:
    """A call of a client method by name: ``client.<method>(*args, **kwargs)``."""

    method: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    """The result of one call of a concurrent list, or its exception."""

    value: Any = None
    error: BaseException | None = None

    def get(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


Step = Call | list[Call]
"""What a logic generator yields: one call (answered with its result, or its exception thrown
in), or a list run concurrently (answered with a list of :class:`Outcome`)."""

Logic = Generator[Step, Any, T]


def call(method: str, *args: Any, **kwargs: Any) -> Call:
    """``Call(method, args, kwargs)``."""
    return Call(method, args, kwargs)


class Clients:
    """A sync and an async client of one router, made on first use, sharing read tokens.

    The async client is bound to the event loop it was first used on (httpx's connection pool
    is); used from another loop, a new one is made for that loop.
    """

    def __init__(
        self,
        url: str | None,
        tenant: str,
        api_key: str | None,
        timeout: float,
        retry: RetryPolicy | None,
    ) -> None:
        self.url = url
        self.tenant = tenant
        self.api_key = api_key
        self.timeout = timeout
        self.retry = retry
        self._lock = threading.Lock()
        self._sync: Memring | None = None
        self._async: AsyncMemring | None = None
        self._async_loop: asyncio.AbstractEventLoop | None = None
        self._pool: ThreadPoolExecutor | None = None

    @property
    def sync(self) -> Memring:
        with self._lock:
            if self._sync is None:
                self._sync = Memring(
                    self.url, self.api_key, self.tenant, self.timeout, retry=self.retry
                )
            return self._sync

    @property
    def aio(self) -> AsyncMemring:
        loop = asyncio.get_running_loop()
        shared = self.sync  # the sync client owns the read tokens both share
        with self._lock:
            if self._async is None or self._async_loop is not loop:
                self._async = AsyncMemring(
                    self.url,
                    self.api_key,
                    self.tenant,
                    self.timeout,
                    retry=self.retry,
                )
                self._async._tokens = shared._tokens
                self._async_loop = loop
            return self._async

    def pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(CONCURRENCY, thread_name_prefix="memring-lg")
            return self._pool

    def close(self) -> None:
        with self._lock:
            # An async client cannot be closed from sync code; its pool goes with it.
            self._async = None
            if self._sync is not None:
                self._sync.close()
                self._sync = None
            if self._pool is not None:
                self._pool.shutdown(wait=False)
                self._pool = None

    async def aclose(self) -> None:
        client, loop = self._async, self._async_loop
        self._async = None
        if client is not None and loop is asyncio.get_running_loop():
            await client.aclose()
        self.close()


def run_sync(logic: Logic[T], clients: Clients) -> T:
    """Runs ``logic`` with the sync client (a list's calls on a small thread pool)."""
    client = clients.sync
    to_send: Any = None
    to_throw: BaseException | None = None
    while True:
        try:
            step = logic.throw(to_throw) if to_throw is not None else logic.send(to_send)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        to_send, to_throw = None, None
        if isinstance(step, list):
            if len(step) <= 1:
                to_send = [_outcome_sync(client, c) for c in step]
            else:
                pool = clients.pool()
                to_send = list(pool.map(lambda c: _outcome_sync(client, c), step))
            continue
        try:
            to_send = getattr(client, step.method)(*step.args, **step.kwargs)
        except Exception as exc:
            to_throw = exc


def _outcome_sync(client: Memring, c: Call) -> Outcome:
    try:
        return Outcome(getattr(client, c.method)(*c.args, **c.kwargs))
    except Exception as exc:
        return Outcome(error=exc)


async def run_async(logic: Logic[T], clients: Clients) -> T:
    """Runs ``logic`` with the async client (a list's calls concurrently, at most
    :data:`CONCURRENCY` at a time)."""
    client = clients.aio
    to_send: Any = None
    to_throw: BaseException | None = None
    while True:
        try:
            step = logic.throw(to_throw) if to_throw is not None else logic.send(to_send)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        to_send, to_throw = None, None
        if isinstance(step, list):
            gate = asyncio.Semaphore(CONCURRENCY)

            async def one(c: Call, gate: asyncio.Semaphore = gate) -> Outcome:
                async with gate:
                    try:
                        return Outcome(await getattr(client, c.method)(*c.args, **c.kwargs))
                    except Exception as exc:
                        return Outcome(error=exc)

            to_send = list(await asyncio.gather(*(one(c) for c in step)))
            continue
        try:
            to_send = await getattr(client, step.method)(*step.args, **step.kwargs)
        except Exception as exc:
            to_throw = exc


def values(
    outcomes: list[Outcome], ignore: Callable[[BaseException], bool] | None = None
) -> list[Any]:
    """The results of a concurrent list; raises the first error that ``ignore`` does not
    accept (an ignored error's result is ``None``)."""
    out: list[Any] = []
    for o in outcomes:
        if o.error is not None:
            if ignore is not None and ignore(o.error):
                out.append(None)
                continue
            raise o.error
        out.append(o.value)
    return out


_L = TypeVar("_L", bound="Lifecycle")


class Lifecycle:
    """``close``/``aclose`` and both context managers of an object that owns :class:`Clients`
    (the store and the saver)."""

    _clients: Clients

    def close(self) -> None:
        self._clients.close()

    async def aclose(self) -> None:
        await self._clients.aclose()

    def __enter__(self: _L) -> _L:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self: _L) -> _L:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
