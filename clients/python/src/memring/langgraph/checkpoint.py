"""``MemringSaver``: LangGraph's checkpointer (a ``BaseCheckpointSaver``) on memring.

Each thread is two memring partitions of the tenant, so a thread's state replicates, migrates
and fails over like any memory:

* ``agent:lgcr<label(thread_id)>`` (or ``agent:lgch<sha256>``): one memory per checkpoint, id
  ``c<reverse_key(checkpoint_id)>.<digest(checkpoint_ns)>``. ``reverse_key`` turns the
  checkpoint id's order upside down, so memring's listing (by id) gives the newest checkpoint
  first: ``get_tuple`` without an id reads one short page, ``list`` pages newest first.
* ``agent:lgdr<label(thread_id)>``: the channel values, one memory per (namespace, channel,
  version) as LangGraph's Postgres saver keeps them (a checkpoint re-stores only the channels
  it changed), and the pending writes, one memory per (namespace, checkpoint, task, index).
  Each carries a group field ``g``, so a checkpoint's values and writes come back in one
  filtered search.

Payloads are the serializer's bytes in ``content``, written with 32 characters that are not
letters or digits (no words for the keyword index); a payload over 600 KiB is cut into parts
(memories ``<id>.<digest>.<i>``, listed by the head). Every memory is written with
``"embed": false``: no vector, no embedding cost, no model fixed for the thread's partitions.
"""

from __future__ import annotations

import builtins
import itertools
import random
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    get_checkpoint_id,
    get_serializable_checkpoint_metadata,
    writes_sort_key,
)
from langgraph.checkpoint.serde.base import SerializerProtocol

from .._errors import PreconditionFailed, Unavailable
from .._retry import RetryPolicy
from .._types import Memory, SearchHit
from . import _codec as codec
from ._common import check_batch, compact, is_not_found, strong_token
from ._driver import Clients, Lifecycle, Logic, call, run_async, run_sync, values

__all__ = ["MemringSaver"]

BUCKETS: Final = 4096
"""Data memories carry ``h``, a hash bucket, so a fetch of more than a page can be split."""
FETCH_PAGE: Final = 256
"""Results per filtered search of payloads (each up to ~1 MiB of content)."""
LIST_PAGES: Final = (8, 100, 1000)
"""Growing page sizes when listing checkpoints newest first."""
MAX_HEAD_ID: Final = 100


def checkpoint_scope(thread_id: str) -> str:
    return "agent:" + codec.named_id("lgc", str(thread_id))


def data_scope(thread_id: str) -> str:
    return "agent:" + codec.named_id("lgd", str(thread_id))


def checkpoint_record_id(checkpoint_id: str, checkpoint_ns: str) -> str:
    rid = "c" + codec.reverse_key(checkpoint_id) + "." + codec.digest(checkpoint_ns, n=12)
    if len(rid) > MAX_HEAD_ID:
        raise ValueError(
            f"checkpoint id {checkpoint_id!r} is too long for MemringSaver (at most "
            f"{(MAX_HEAD_ID - 15) // 2} characters; LangGraph's own ids are 36)"
        )
    return rid


def blob_group(checkpoint_ns: str, channel: str, version: Any) -> str:
    return "b" + codec.digest(checkpoint_ns, channel, str(version))


def writes_group(checkpoint_ns: str, checkpoint_id: str) -> str:
    return "w" + codec.digest(checkpoint_ns, checkpoint_id)


def _bucket(id: str) -> int:
    return int(codec.digest(id, n=8), 16) % BUCKETS


def _records(
    scope: str, head_id: str, payload: bytes, metadata: dict[str, Any]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The head memory of a payload and its extra parts (empty unless over 600 KiB)."""
    pieces = codec.chunks(payload)
    tag = codec.digest(payload.hex() if len(pieces) > 1 else "", n=12)
    part_ids = [f"{head_id}.{tag}.{i}" for i in range(1, len(pieces))]
    group = metadata.get("g", head_id)
    base: dict[str, Any] = {"scope": scope, "embed": False}
    head = {
        **base,
        "id": head_id,
        "content": codec.encode_bytes(pieces[0]),
        "metadata": {
            **metadata,
            "h": _bucket(head_id),
            **({"parts": part_ids} if part_ids else {}),
        },
    }
    parts = [
        {
            **base,
            "id": pid,
            "content": codec.encode_bytes(piece),
            "metadata": {"t": "part", "g": group, "h": _bucket(pid)},
        }
        for pid, piece in zip(part_ids, pieces[1:], strict=True)
    ]
    return head, parts


@dataclass
class _Head:
    """A checkpoint memory, decoded as far as listing needs."""

    id: str
    ns: str
    checkpoint_id: str
    parent_id: str | None
    checkpoint: dict[str, Any]
    metadata: CheckpointMetadata


class MemringSaver(Lifecycle, BaseCheckpointSaver[str]):
    """A LangGraph checkpointer on memring: ``MemringSaver(url, tenant, api_key=None)``.

    Sync (``get_tuple``, ``list``, ``put``, ``put_writes``, ``delete_thread``, ``copy_thread``,
    ``prune``) and async (``a``-prefixed) methods alike; use it as a (async) context manager or
    call ``close()``. ``consistent_reads`` (default on) sends reads to each partition's owner,
    so a thread resumed by another process, through another router, sees the last checkpoint
    any process wrote; off, followers may answer up to the shard nodes' replica staleness late.
    """

    def __init__(
        self,
        url: str | None = None,
        tenant: str | None = None,
        api_key: str | None = None,
        *,
        serde: SerializerProtocol | None = None,
        consistent_reads: bool = True,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        super().__init__(serde=serde)
        if not tenant:
            raise ValueError("MemringSaver needs a tenant")
        self.tenant = tenant
        self.consistent_reads = consistent_reads
        self._clients = Clients(url, tenant, api_key, timeout, retry)

    # -- BaseCheckpointSaver: sync ---------------------------------------------------------

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return run_sync(self._get_tuple(config), self._clients)

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        state = _ListState(config, filter, before, limit)
        while not state.done:
            yield from run_sync(self._list_page(state), self._clients)

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return run_sync(self._put(config, checkpoint, metadata, new_versions), self._clients)

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        run_sync(self._put_writes(config, writes, task_id, task_path), self._clients)

    def delete_thread(self, thread_id: str) -> None:
        run_sync(self._delete_thread(str(thread_id)), self._clients)

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        run_sync(self._copy_thread(str(source_thread_id), str(target_thread_id)), self._clients)

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        run_sync(self._prune(thread_ids, strategy), self._clients)

    # -- BaseCheckpointSaver: async --------------------------------------------------------

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await run_async(self._get_tuple(config), self._clients)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        state = _ListState(config, filter, before, limit)
        while not state.done:
            for item in await run_async(self._list_page(state), self._clients):
                yield item

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return await run_async(self._put(config, checkpoint, metadata, new_versions), self._clients)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        await run_async(self._put_writes(config, writes, task_id, task_path), self._clients)

    async def adelete_thread(self, thread_id: str) -> None:
        await run_async(self._delete_thread(str(thread_id)), self._clients)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await run_async(
            self._copy_thread(str(source_thread_id), str(target_thread_id)), self._clients
        )

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        await run_async(self._prune(thread_ids, strategy), self._clients)

    def get_next_version(self, current: str | None, channel: None) -> str:
        """Versions as LangGraph's in-memory and Postgres savers make them: a zero-padded
        counter and a random fraction, so they sort as strings."""
        if current is None:
            current_v = 0
        elif isinstance(current, int):
            current_v = current
        else:
            current_v = int(str(current).split(".")[0])
        return f"{current_v + 1:032}.{random.random():016}"

    # -- the logic (see _driver.py) --------------------------------------------------------

    def _token(self, *scopes: str) -> str | None:
        return strong_token(scopes) if self.consistent_reads else None

    def _put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> Logic[RunnableConfig]:
        conf = config["configurable"]
        thread_id = str(conf["thread_id"])
        ns = str(conf.get("checkpoint_ns", ""))
        parent_id = conf.get("checkpoint_id")
        cp: dict[str, Any] = dict(checkpoint)
        channel_values: dict[str, Any] = cp.pop("channel_values", {}) or {}
        dscope, cscope = data_scope(thread_id), checkpoint_scope(thread_id)
        heads: builtins.list[dict[str, Any]] = []
        parts: builtins.list[dict[str, Any]] = []
        for channel, version in new_versions.items():
            typed = (
                self.serde.dumps_typed(channel_values[channel])
                if channel in channel_values
                else ("empty", b"")
            )
            group = blob_group(ns, channel, version)
            head, extra = _records(
                dscope, group, codec.typed_to_bytes(typed), {"t": "b", "g": group, "ch": channel}
            )
            heads.append(head)
            parts.extend(extra)
        # Values before the checkpoint that names them; parts before their head.
        for batch in (parts, heads):
            if batch:
                result = yield call("add_many", batch)
                check_batch(result, "writing channel values")
        md = get_serializable_checkpoint_metadata(config, metadata)
        payload = codec.typed_to_bytes(self.serde.dumps_typed({"c": cp, "m": md}))
        rid = checkpoint_record_id(checkpoint["id"], ns)
        head, extra = _records(
            cscope,
            rid,
            payload,
            compact(
                {
                    "t": "cp",
                    "ns": ns,
                    "cp": checkpoint["id"],
                    "parent": parent_id,
                    "run": md.get("run_id") if isinstance(md.get("run_id"), str) else None,
                }
            ),
        )
        if extra:
            result = yield call("add_many", extra)
            check_batch(result, "writing a checkpoint")
        result = yield call("add_many", [head])
        check_batch(result, "writing a checkpoint")
        return {
            "configurable": {
                "thread_id": thread_id,
                "checkpoint_ns": ns,
                "checkpoint_id": checkpoint["id"],
            }
        }

    def _put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str,
    ) -> Logic[None]:
        conf = config["configurable"]
        thread_id = str(conf["thread_id"])
        ns = str(conf.get("checkpoint_ns", ""))
        checkpoint_id = str(conf["checkpoint_id"])
        scope = data_scope(thread_id)
        group = writes_group(ns, checkpoint_id)
        create_only: builtins.list[tuple[dict[str, Any], builtins.list[dict[str, Any]]]] = []
        replace: builtins.list[dict[str, Any]] = []
        for i, (channel, value) in enumerate(writes):
            idx = WRITES_IDX_MAP.get(channel, i)
            wid = "w" + codec.digest(ns, checkpoint_id, str(task_id), str(idx))
            payload = codec.typed_to_bytes(self.serde.dumps_typed(value))
            head, extra = _records(
                scope,
                wid,
                payload,
                {
                    "t": "w",
                    "g": group,
                    "task": str(task_id),
                    "idx": idx,
                    "ch": channel,
                    "path": task_path,
                },
            )
            if idx >= 0:
                # A task's regular write is stored once: a repeat keeps the first (as
                # LangGraph's savers do); special writes (errors, interrupts) replace.
                create_only.append((head, extra))
            else:
                replace.extend([*extra, head])
        if replace:
            result = yield call("add_many", replace)
            check_batch(result, "writing pending writes")
        extra_parts = [p for _, extra in create_only for p in extra]
        if extra_parts:
            # Parts have their own ids (a digest of the payload), so they never clobber the
            # parts of a write that is already there.
            result = yield call("add_many", extra_parts)
            check_batch(result, "writing pending writes")
        if create_only:
            outcomes = yield [
                call(
                    "add",
                    head["scope"],
                    head["content"],
                    id=head["id"],
                    embed=False,
                    metadata=head["metadata"],
                    if_none_match=True,
                )
                for head, _ in create_only
            ]
            values(outcomes, ignore=lambda e: isinstance(e, PreconditionFailed))

    # reads

    def _get_tuple(self, config: RunnableConfig) -> Logic[CheckpointTuple | None]:
        conf = config["configurable"]
        thread_id = str(conf["thread_id"])
        ns = str(conf.get("checkpoint_ns", ""))
        checkpoint_id = get_checkpoint_id(config)
        cscope = checkpoint_scope(thread_id)
        memory: Memory | None = None
        if checkpoint_id:
            try:
                memory = yield call(
                    "get",
                    cscope,
                    checkpoint_record_id(checkpoint_id, ns),
                    read_token=self._token(cscope),
                )
            except Exception as exc:
                if is_not_found(exc):
                    return None
                raise
        else:
            cursor: str | None = None
            for size in itertools.chain(LIST_PAGES, itertools.repeat(LIST_PAGES[-1])):
                page = yield call(
                    "list", cscope, limit=size, cursor=cursor, read_token=self._token(cscope)
                )
                memory = next(
                    (
                        m
                        for m in page.items
                        if m.metadata.get("t") == "cp" and m.metadata.get("ns") == ns
                    ),
                    None,
                )
                cursor = page.next_cursor
                if memory is not None or not cursor:
                    break
        if memory is None:
            return None
        heads = yield from self._decode_heads(cscope, [memory])
        tuples = yield from self._load(thread_id, heads)
        return tuples[0]

    def _decode_heads(
        self, cscope: str, memories: builtins.list[Memory]
    ) -> Logic[builtins.list[_Head]]:
        """Checkpoint memories as :class:`_Head`, their parts read where they have any."""
        wanted = [pid for m in memories for pid in m.metadata.get("parts") or []]
        parts: dict[str, str] = {}
        if wanted:
            outcomes = yield [
                call("get", cscope, pid, read_token=self._token(cscope)) for pid in wanted
            ]
            for got in values(outcomes):
                parts[got.id] = got.content
        heads: builtins.list[_Head] = []
        for m in memories:
            raw = codec.decode_bytes(m.content) + b"".join(
                codec.decode_bytes(parts[p]) for p in m.metadata.get("parts") or []
            )
            doc = self.serde.loads_typed(codec.bytes_to_typed(raw))
            heads.append(
                _Head(
                    id=m.id,
                    ns=str(m.metadata.get("ns", "")),
                    checkpoint_id=str(m.metadata.get("cp")),
                    parent_id=m.metadata.get("parent"),
                    checkpoint=doc["c"],
                    metadata=doc["m"],
                )
            )
        return heads

    def _fetch(
        self, scope: str, groups: builtins.list[str], lo: int = 0, hi: int = BUCKETS
    ) -> Logic[builtins.list[SearchHit]]:
        """Every data memory of ``groups`` (heads and parts), however many."""
        if not groups:
            return []
        where: dict[str, Any] = {"g": {"$in": groups}}
        if (lo, hi) != (0, BUCKETS):
            where["h"] = {"$gte": lo, "$lt": hi}
        answer = yield call(
            "search", scope, k=FETCH_PAGE, where=where, read_token=self._token(scope)
        )
        if answer.partial:
            raise Unavailable(f"{scope} did not answer; try again", status=503, code="unavailable")
        if len(answer.results) < FETCH_PAGE:
            return list(answer.results)
        if hi - lo <= 1:
            raise RuntimeError(f"more than {FETCH_PAGE} memories in one bucket of {scope}")
        mid = (lo + hi) // 2
        first = yield from self._fetch(scope, groups, lo, mid)
        second = yield from self._fetch(scope, groups, mid, hi)
        return first + second

    def _load(
        self, thread_id: str, heads: builtins.list[_Head]
    ) -> Logic[builtins.list[CheckpointTuple]]:
        """Full tuples of ``heads``: their channel values and pending writes, in one fetch."""
        groups: set[str] = set()
        for h in heads:
            for channel, version in (h.checkpoint.get("channel_versions") or {}).items():
                groups.add(blob_group(h.ns, channel, version))
            groups.add(writes_group(h.ns, h.checkpoint_id))
        hits = yield from self._fetch(data_scope(thread_id), sorted(groups))
        by_id = {hit.id: hit for hit in hits}
        blobs: dict[str, Any] = {}
        writes: dict[str, builtins.list[tuple[tuple[str, str, int], tuple[str, str, Any]]]] = {}
        for hit in hits:
            md = hit.metadata
            if md.get("t") not in ("b", "w"):
                continue
            part_ids = md.get("parts") or []
            if any(p not in by_id for p in part_ids):
                continue  # parts not (yet) there: an unfinished write
            raw = codec.decode_bytes(hit.content) + b"".join(
                codec.decode_bytes(by_id[p].content) for p in part_ids
            )
            typed = codec.bytes_to_typed(raw)
            if md["t"] == "b":
                if typed[0] != "empty":
                    blobs[hit.id] = self.serde.loads_typed(typed)
            else:
                key = writes_sort_key(str(md.get("path", "")), str(md.get("task")), int(md["idx"]))
                entry = (str(md.get("task")), str(md.get("ch")), self.serde.loads_typed(typed))
                writes.setdefault(str(md["g"]), []).append((key, entry))
        out: builtins.list[CheckpointTuple] = []
        for h in heads:
            values_: dict[str, Any] = {}
            for channel, version in (h.checkpoint.get("channel_versions") or {}).items():
                bid = blob_group(h.ns, channel, version)
                if bid in blobs:
                    values_[channel] = blobs[bid]
            pending = sorted(writes.get(writes_group(h.ns, h.checkpoint_id), []))
            out.append(
                CheckpointTuple(
                    config={
                        "configurable": {
                            "thread_id": thread_id,
                            "checkpoint_ns": h.ns,
                            "checkpoint_id": h.checkpoint_id,
                        }
                    },
                    checkpoint={**h.checkpoint, "channel_values": values_},  # type: ignore[typeddict-item]
                    metadata=h.metadata,
                    parent_config=(
                        {
                            "configurable": {
                                "thread_id": thread_id,
                                "checkpoint_ns": h.ns,
                                "checkpoint_id": h.parent_id,
                            }
                        }
                        if h.parent_id
                        else None
                    ),
                    pending_writes=[entry for _, entry in pending],
                )
            )
        return out

    def _list_page(self, state: _ListState) -> Logic[builtins.list[CheckpointTuple]]:
        """The next page of ``list``: reads one page of checkpoint memories, newest first."""
        if state.thread_id is None:
            raise NotImplementedError(
                "MemringSaver.list needs a config with a thread_id: memring keeps each thread "
                "in partitions of its own and has no index of threads"
            )
        cscope = checkpoint_scope(state.thread_id)
        size = LIST_PAGES[min(state.pages, len(LIST_PAGES) - 1)]
        if state.limit is not None:
            size = min(LIST_PAGES[-1], max(size, state.limit - state.given + 1))
        page = yield call(
            "list", cscope, limit=size, cursor=state.cursor, read_token=self._token(cscope)
        )
        state.pages += 1
        state.cursor = page.next_cursor
        if not state.cursor:
            state.done = True
        candidates = [
            m
            for m in page.items
            if m.metadata.get("t") == "cp"
            and (state.ns is None or m.metadata.get("ns") == state.ns)
            and (state.checkpoint_id is None or m.metadata.get("cp") == state.checkpoint_id)
            and (state.before is None or str(m.metadata.get("cp")) < state.before)
        ]
        heads = yield from self._decode_heads(cscope, candidates)
        if state.filter:
            heads = [
                h for h in heads if all(h.metadata.get(k) == v for k, v in state.filter.items())
            ]
        if state.limit is not None:
            heads = heads[: max(0, state.limit - state.given)]
        state.given += len(heads)
        if state.limit is not None and state.given >= state.limit:
            state.done = True
        if not heads:
            return []
        return (yield from self._load(state.thread_id, heads))

    # deletes and copies

    def _all(self, scope: str) -> Logic[builtins.list[Memory]]:
        out: builtins.list[Memory] = []
        cursor: str | None = None
        while True:
            page = yield call(
                "list", scope, limit=LIST_PAGES[-1], cursor=cursor, read_token=self._token(scope)
            )
            out.extend(page.items)
            cursor = page.next_cursor
            if not cursor:
                return out

    def _delete(self, scope: str, ids: builtins.list[str]) -> Logic[None]:
        if ids:
            outcomes = yield [call("delete", scope, i, missing_ok=True) for i in ids]
            values(outcomes)

    def _delete_thread(self, thread_id: str) -> Logic[None]:
        # Checkpoints first: a reader never finds a checkpoint whose values are gone.
        for scope in (checkpoint_scope(thread_id), data_scope(thread_id)):
            while True:
                page = yield call(
                    "list", scope, limit=LIST_PAGES[-1], read_token=self._token(scope)
                )
                yield from self._delete(scope, [m.id for m in page.items])
                if not page.next_cursor:
                    break

    def _copy_thread(self, source: str, target: str) -> Logic[None]:
        # Values and writes first, checkpoints last (as a put orders them).
        for src, dst in (
            (data_scope(source), data_scope(target)),
            (checkpoint_scope(source), checkpoint_scope(target)),
        ):
            memories = yield from self._all(src)
            items = [
                {
                    "id": m.id,
                    "scope": dst,
                    "content": m.content,
                    "metadata": m.metadata,
                    "embed": False,
                }
                for m in memories
            ]
            if items:
                result = yield call("add_many", items)
                check_batch(result, f"copying thread {source} to {target}")

    def _prune(self, thread_ids: Sequence[str], strategy: str) -> Logic[None]:
        if strategy not in ("keep_latest", "delete"):
            raise ValueError(f"unknown prune strategy {strategy!r}: keep_latest or delete")
        for thread_id in thread_ids:
            thread_id = str(thread_id)
            if strategy == "delete":
                yield from self._delete_thread(thread_id)
                continue
            cscope, dscope = checkpoint_scope(thread_id), data_scope(thread_id)
            memories = yield from self._all(cscope)
            latest: dict[str, Memory] = {}
            for m in memories:  # newest first
                if m.metadata.get("t") == "cp":
                    latest.setdefault(str(m.metadata.get("ns", "")), m)
            kept = set()
            for m in latest.values():
                kept.add(m.id)
                kept.update(m.metadata.get("parts") or [])
            heads = yield from self._decode_heads(cscope, list(latest.values()))
            groups: set[str] = set()
            for h in heads:
                for channel, version in (h.checkpoint.get("channel_versions") or {}).items():
                    groups.add(blob_group(h.ns, channel, version))
                groups.add(writes_group(h.ns, h.checkpoint_id))
            yield from self._delete(cscope, [m.id for m in memories if m.id not in kept])
            data = yield from self._all(dscope)
            yield from self._delete(
                dscope, [m.id for m in data if str(m.metadata.get("g")) not in groups]
            )


class _ListState:
    """Where a ``list`` stands between its pages."""

    def __init__(
        self,
        config: RunnableConfig | None,
        filter: Mapping[str, Any] | None,
        before: RunnableConfig | None,
        limit: int | None,
    ) -> None:
        conf = (config or {}).get("configurable") or {}
        self.thread_id: str | None = str(conf["thread_id"]) if "thread_id" in conf else None
        ns = conf.get("checkpoint_ns")
        self.ns: str | None = None if ns is None else str(ns)
        self.checkpoint_id: str | None = conf.get("checkpoint_id")
        self.before: str | None = get_checkpoint_id(before) if before else None
        self.filter = dict(filter or {})
        self.limit = limit
        self.given = 0
        self.pages = 0
        self.cursor: str | None = None
        self.done = limit is not None and limit <= 0
