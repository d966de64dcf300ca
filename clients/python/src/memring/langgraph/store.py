"""``MemringStore``: LangGraph's long-term memory (a ``BaseStore``) on memring.

Mapping (docs/client.md, "LangGraph", has the why):

* every LangGraph namespace is one memring partition of the tenant: scope
  ``agent:lgsr<label>.<label>...`` (each label's bytes outside ``[A-Za-z0-9-]`` as ``_xx``;
  LangGraph forbids ``.`` in labels, so ``.`` separates them), or ``agent:lgsh<sha256>`` when
  that is longer than memring's 128 characters;
* an item is one memory of that partition: id ``kr<label(key)>`` (or ``kh<sha256>``), its value
  in ``metadata`` (keys escaped so memring's filters read LangGraph's literal keys), the text of
  its indexed fields in ``content`` (the router embeds it), and the original namespace and key
  under the bookkeeping keys ``~ns`` and ``~key``; an item without an index (no ``index``, or
  ``put(..., index=False)``) is written with ``"embed": false``, so it has no vector and fixes
  no model for its partition (a namespace can mix items with and without one);
* a registry partition ``agent:lgs-namespaces`` holds one small memory per namespace ever
  written, so ``list_namespaces`` and a prefix ``search`` know which partitions to read: a
  search touches the registry and the partitions under its prefix, never the whole tenant.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, Literal

from langgraph.store.base import (
    BaseStore,
    GetOp,
    IndexConfig,
    InvalidNamespaceError,
    Item,
    ListNamespacesOp,
    MatchCondition,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
    TTLConfig,
    get_text_at_path,
    tokenize_path,
    validate_op_namespace,
)

from .._retry import RetryPolicy
from .._types import Memory, SearchHit
from . import _codec as codec
from ._common import (
    LIST_PAGE,
    MAX_SCOPES,
    SEARCH_WINDOW,
    check_batch,
    is_not_found,
    parse_time,
    strong_token,
)
from ._driver import Clients, Lifecycle, Logic, call, run_async, run_sync, values

__all__ = ["MemringStore", "namespace_scope", "translate_filter"]

REGISTRY_SCOPE: Final = "agent:lgs-namespaces"
"""The partition listing every namespace the store has written to."""
KEY_FIELD: Final = "~key"
NS_FIELD: Final = "~ns"
TTL_FIELD: Final = "~ttl"
REGISTRY_LABELS: Final = 16
"""Registry entries carry their first and last 16 labels as filterable fields."""
MAX_CONTENT: Final = 1_000_000
"""Content is cut (at a character) below memring's 1 MiB."""
MAX_TTL_SECONDS: Final = 10 * 365 * 24 * 3600

OPERATORS: Final = frozenset({"$eq", "$ne", "$gt", "$gte", "$lt", "$lte"})
"""LangGraph's filter operators."""
EXTRA_OPERATORS: Final = frozenset({"$in", "$nin", "$exists", "$contains"})
"""memring's, accepted as an extension."""

SearchMode = Literal["vector", "hybrid", "keyword"]


def namespace_scope(namespace: Sequence[str]) -> str:
    """The memring scope holding the items of ``namespace``."""
    return "agent:" + codec.named_id("lgs", *namespace)


def item_id(key: str) -> str:
    """The memory id of the item ``key`` (within its namespace's partition)."""
    return codec.named_id("k", key)


def translate_filter(flt: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A LangGraph filter as a memring metadata filter.

    LangGraph reads each key as one literal top-level key of the value; a dict value without
    operators matches a nested dict containing those keys (at any depth); a list matches an
    equal list; ``{"$gt": 3}`` and friends compare. Keys are escaped as the stored metadata's
    are, so ``"a.b"`` stays the key ``"a.b"`` and never becomes memring's path ``a`` → ``b``;
    nested dicts become memring paths of escaped keys.
    """
    if not flt:
        return None
    out: dict[str, Any] = {}
    for key, value in flt.items():
        _translate(out, codec.escape_key(str(key)), value)
    return out or None


def _translate(out: dict[str, Any], path: str, value: Any) -> None:
    if isinstance(value, Mapping):
        if any(str(k).startswith("$") for k in value):
            ops: dict[str, Any] = {}
            for op, arg in value.items():
                if op not in OPERATORS and op not in EXTRA_OPERATORS:
                    raise ValueError(f"Unsupported operator: {op}")
                ops[op] = codec.escape_value(arg)
            out[path] = ops
            return
        if not value:
            # {} matches any dict in LangGraph; memring cannot ask "is an object": present.
            out[path] = {"$exists": True}
            return
        for k, v in value.items():
            _translate(out, f"{path}.{codec.escape_key(str(k))}", v)
        return
    out[path] = {"$eq": codec.escape_value(value)}


def _registry_entry(namespace: tuple[str, ...]) -> dict[str, Any]:
    scope = namespace_scope(namespace)
    md: dict[str, Any] = {"ns": list(namespace), "n": len(namespace)}
    for i, lab in enumerate(namespace[:REGISTRY_LABELS]):
        md[f"p{i}"] = lab
    for i, lab in enumerate(reversed(namespace[-REGISTRY_LABELS:])):
        md[f"s{i}"] = lab
    return {
        "id": scope.removeprefix("agent:"),
        "scope": REGISTRY_SCOPE,
        "content": "",
        "metadata": md,
        "embed": False,
    }


def _matches(condition: MatchCondition, namespace: tuple[str, ...]) -> bool:
    path = tuple(condition.path)
    if len(namespace) < len(path):
        return False
    pairs = (
        zip(namespace, path, strict=False)
        if condition.match_type == "prefix"
        else zip(reversed(namespace), reversed(path), strict=False)
    )
    return all(p == "*" or k == p for k, p in pairs)


def _registry_filter(conditions: Sequence[MatchCondition]) -> dict[str, Any] | None:
    flt: dict[str, Any] = {}
    longest = 0
    for cond in conditions:
        path = tuple(cond.path)
        longest = max(longest, len(path))
        if cond.match_type == "prefix":
            labels = path
            field = "p"
        else:
            labels = tuple(reversed(path))
            field = "s"
        for i, lab in enumerate(labels[:REGISTRY_LABELS]):
            if lab != "*":
                flt[f"{field}{i}"] = lab
    if longest:
        flt["n"] = {"$gte": longest}
    return flt or None


def _value_of(metadata: Mapping[str, Any]) -> dict[str, Any]:
    user = {k: v for k, v in metadata.items() if not _is_bookkeeping(k)}
    value = codec.unescape_value(user)
    assert isinstance(value, dict)
    return value


def _is_bookkeeping(key: str) -> bool:
    return len(key) > 1 and key[0] == "~" and key[1].isalpha()


def _truncate(text: str) -> str:
    raw = text.encode()
    if len(raw) <= MAX_CONTENT:
        return text
    return raw[:MAX_CONTENT].decode(errors="ignore")


class MemringStore(Lifecycle, BaseStore):
    """A LangGraph store on memring, for sync (``batch``) and async (``abatch``) graphs alike.

    ``MemringStore(url, tenant, api_key=None, index=None, ttl=None)``:

    * ``index``: ``{"fields": ["text", "meta.title"]}`` embeds the text at those paths (joined by
      newlines into the memory's ``content``) with the **router's** embedder; ``dims`` may be
      given (it is the router model's, 384 for the built-in one) and ``embed`` may not (the router
      embeds). ``None``: no vectors (a ``query`` is then a keyword search over the value's JSON).
    * ``ttl``: LangGraph's ``TTLConfig`` (minutes): ``default_ttl``, ``refresh_on_read``
      (default true). memring expires items itself; ``sweep_interval_minutes`` is not needed.
    * ``search_mode``: how a ``query`` ranks when ``index`` is set: ``"vector"`` (LangGraph's
      meaning, score = cosine similarity; default), ``"hybrid"`` or ``"keyword"``.
    * ``consistent_reads``: reads go to each partition's owner, so every process sees every
      acknowledged write at once (default). ``False`` lets followers answer (bounded staleness,
      the router's ``replica_staleness_ms``) except for this store's own writes.

    Use it as a context manager (``with`` or ``async with``) or call ``close()``.
    """

    supports_ttl: bool = True

    def __init__(
        self,
        url: str | None = None,
        tenant: str | None = None,
        api_key: str | None = None,
        index: IndexConfig | Mapping[str, Any] | None = None,
        ttl: TTLConfig | Mapping[str, Any] | None = None,
        *,
        search_mode: SearchMode = "vector",
        consistent_reads: bool = True,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        if not tenant:
            raise ValueError("MemringStore needs a tenant")
        self._clients = Clients(url, tenant, api_key, timeout, retry)
        self.tenant = tenant
        self.index_config: dict[str, Any] | None = None
        self._fields: list[tuple[str, str | list[str]]] = []
        if index is not None:
            if index.get("embed") is not None:
                raise ValueError(
                    "MemringStore embeds on the memring router (its configured model); leave "
                    "out index['embed']"
                )
            self.index_config = dict(index)
            self._fields = [
                (p, p if p == "$" else tokenize_path(p)) for p in (index.get("fields") or ["$"])
            ]
        if search_mode not in ("vector", "hybrid", "keyword"):
            raise ValueError(f"search_mode must be vector, hybrid or keyword, got {search_mode!r}")
        self.search_mode: SearchMode = search_mode
        self.ttl_config = TTLConfig(**ttl) if ttl is not None else None  # type: ignore[typeddict-item]
        self.consistent_reads = consistent_reads
        self._registered: set[tuple[str, ...]] = set()

    # -- BaseStore -------------------------------------------------------------------------

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        return run_sync(self._batch(list(ops)), self._clients)

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        return await run_async(self._batch(list(ops)), self._clients)

    # -- the logic (see _driver.py) --------------------------------------------------------

    def _token(self, scopes: Iterable[str]) -> str | None:
        return strong_token(scopes) if self.consistent_reads else None

    def _batch(self, ops: list[Op]) -> Logic[list[Result]]:
        for op in ops:
            validate_op_namespace(op)
        results: list[Result] = [None] * len(ops)
        puts: dict[tuple[tuple[str, ...], str], PutOp] = {}
        refresh: dict[tuple[str, str], int] = {}
        gets = [(i, op) for i, op in enumerate(ops) if isinstance(op, GetOp)]
        if gets:
            outcomes = yield [
                call(
                    "get",
                    namespace_scope(op.namespace),
                    item_id(op.key),
                    read_token=self._token([namespace_scope(op.namespace)]),
                )
                for _, op in gets
            ]
            for (i, op), memory in zip(gets, values(outcomes, ignore=is_not_found), strict=True):
                if memory is None:
                    continue
                results[i] = self._item(memory)
                self._note_refresh(
                    refresh, memory.scope, memory.id, memory.metadata, op.refresh_ttl
                )
        for i, op in enumerate(ops):
            if isinstance(op, SearchOp):
                hits = yield from self._search(op)
                results[i] = [self._search_item(h) for h in hits]
                for h in hits:
                    self._note_refresh(refresh, h.scope, h.id, h.metadata, op.refresh_ttl)
            elif isinstance(op, ListNamespacesOp):
                results[i] = yield from self._list_namespaces(op)
            elif isinstance(op, PutOp):
                puts[(tuple(op.namespace), op.key)] = op
            elif not isinstance(op, GetOp):
                raise ValueError(f"Unknown operation type: {type(op)}")
        if refresh:
            yield from self._refresh(refresh)
        if puts:
            yield from self._apply_puts(list(puts.values()))
        return results

    # reads

    def _item(self, memory: Memory) -> Item:
        md = memory.metadata
        return Item(
            value=_value_of(md),
            key=str(md.get(KEY_FIELD, "")),
            namespace=tuple(md.get(NS_FIELD) or ()),
            created_at=parse_time(memory.created_at),
            updated_at=parse_time(memory.updated_at or memory.created_at),
        )

    def _search_item(self, hit: SearchHit) -> SearchItem:
        md = hit.metadata
        return SearchItem(
            namespace=tuple(md.get(NS_FIELD) or ()),
            key=str(md.get(KEY_FIELD, "")),
            value=_value_of(md),
            created_at=parse_time(hit.created_at),
            updated_at=parse_time(hit.updated_at or hit.created_at),
            score=hit.score,
        )

    def _note_refresh(
        self,
        refresh: dict[tuple[str, str], int],
        scope: str,
        id: str,
        metadata: Mapping[str, Any],
        wanted: bool,
    ) -> None:
        minutes = metadata.get(TTL_FIELD)
        if wanted and isinstance(minutes, (int, float)) and minutes > 0:
            refresh[(scope, id)] = _ttl_seconds(float(minutes))

    def _refresh(self, refresh: dict[tuple[str, str], int]) -> Logic[None]:
        outcomes = yield [
            call("patch", scope, id, ttl_seconds=seconds)
            for (scope, id), seconds in refresh.items()
        ]
        values(outcomes, ignore=is_not_found)  # expired or deleted meanwhile: nothing to do

    def _registry(self, conditions: Sequence[MatchCondition]) -> Logic[list[tuple[str, ...]]]:
        """Every registered namespace matching ``conditions`` (sorted)."""
        flt = _registry_filter(conditions)
        token = self._token([REGISTRY_SCOPE])
        entries: list[dict[str, Any]] = []
        page = yield call("search", REGISTRY_SCOPE, k=SEARCH_WINDOW, where=flt, read_token=token)
        if len(page.results) < SEARCH_WINDOW:
            entries = [h.metadata for h in page.results]
        else:
            cursor: str | None = None
            while True:
                listed = yield call(
                    "list", REGISTRY_SCOPE, limit=LIST_PAGE, cursor=cursor, read_token=token
                )
                entries.extend(m.metadata for m in listed.items)
                cursor = listed.next_cursor
                if not cursor:
                    break
        found = {tuple(md.get("ns") or ()) for md in entries}
        return sorted(ns for ns in found if ns and all(_matches(c, ns) for c in conditions))

    def _search(self, op: SearchOp) -> Logic[list[SearchHit]]:
        if op.limit <= 0:
            return []
        if op.offset < 0:
            raise ValueError("offset must not be negative")
        window = op.offset + op.limit
        if window > SEARCH_WINDOW:
            raise ValueError(
                f"offset + limit is {window}; memring ranks at most {SEARCH_WINDOW} results per "
                "search"
            )
        prefix = tuple(op.namespace_prefix)
        conditions = [MatchCondition("prefix", prefix)] if prefix else []
        namespaces = yield from self._registry(conditions)
        if not namespaces:
            return []
        scopes = [namespace_scope(ns) for ns in namespaces]
        where = translate_filter(op.filter)
        mode: SearchMode | None = None
        query = op.query or None
        if query is not None:
            mode = self.search_mode if self.index_config is not None else "keyword"
        groups = [scopes[i : i + MAX_SCOPES] for i in range(0, len(scopes), MAX_SCOPES)]
        single = len(groups) == 1
        outcomes = yield [
            call(
                "search",
                group,
                query=query,
                mode=mode,
                where=where,
                k=op.limit if single else window,
                offset=op.offset if single else 0,
                read_token=self._token(group),
            )
            for group in groups
        ]
        answers = values(outcomes)
        hits = [h for answer in answers for h in answer.results]
        if single:
            return hits
        if query is not None:
            hits.sort(key=lambda h: (-(h.score or 0.0), h.scope, h.id))
        else:
            hits.sort(key=lambda h: (h.id, h.scope))
            hits.sort(key=lambda h: parse_time(h.updated_at or h.created_at), reverse=True)
        return hits[op.offset : window]

    def _list_namespaces(self, op: ListNamespacesOp) -> Logic[list[tuple[str, ...]]]:
        conditions = list(op.match_conditions or ())
        candidates = yield from self._registry(conditions)
        # The registry keeps namespaces whose items are gone (deleted or expired): only those
        # still holding an item are listed, as LangGraph's database stores do.
        outcomes = yield [
            call(
                "list",
                namespace_scope(ns),
                limit=1,
                read_token=self._token([namespace_scope(ns)]),
            )
            for ns in candidates
        ]
        pages = values(outcomes)
        live = [ns for ns, page in zip(candidates, pages, strict=True) if page.items]
        if op.max_depth is not None:
            live = sorted({ns[: op.max_depth] for ns in live})
        return live[op.offset : op.offset + op.limit]

    # writes

    def _apply_puts(self, puts: list[PutOp]) -> Logic[None]:
        writes = [op for op in puts if op.value is not None]
        deletes = [op for op in puts if op.value is None]
        new = sorted({tuple(op.namespace) for op in writes} - self._registered)
        for ns in new:
            if not ns:
                raise InvalidNamespaceError("Namespace cannot be empty.")
        if new:
            # The registry entry first: an item never exists in a namespace the registry does
            # not know (a crash between the two leaves only an empty registered namespace).
            result = yield call("add_many", [_registry_entry(ns) for ns in new])
            check_batch(result, "registering namespaces")
            self._registered.update(new)
        if writes:
            result = yield call("add_many", [self._body(op) for op in writes])
            check_batch(result, "writing items")
        if deletes:
            outcomes = yield [
                call("delete", namespace_scope(op.namespace), item_id(op.key), missing_ok=True)
                for op in deletes
            ]
            values(outcomes)

    def _body(self, op: PutOp) -> dict[str, Any]:
        """The memory of a put: embedded by the router when it is indexed and has text at its
        fields, else written with ``"embed": false`` (no vector; a put that replaces an indexed
        item drops its vector)."""
        value = op.value
        assert value is not None
        if not isinstance(value, Mapping):
            raise TypeError(f"a store value must be a dict, got {type(value).__name__}")
        metadata = codec.escape_value(value)
        assert isinstance(metadata, dict)
        metadata[KEY_FIELD] = op.key
        metadata[NS_FIELD] = list(op.namespace)
        if op.ttl is not None:
            metadata[TTL_FIELD] = op.ttl
        size = codec.json_size(metadata)
        if size > 64 * 1024:
            raise ValueError(
                f"the value of {codec.namespace_path(op.namespace)}/{op.key} is {size} bytes as "
                "JSON with its bookkeeping; MemringStore keeps values in memring metadata, "
                "whose limit is 65536 bytes"
            )
        body: dict[str, Any] = {
            "id": item_id(op.key),
            "scope": namespace_scope(op.namespace),
            "metadata": metadata,
        }
        if op.ttl is not None:
            body["ttl_seconds"] = _ttl_seconds(op.ttl)
        if self.index_config is None:
            body["content"] = _truncate(json.dumps(value, sort_keys=True, ensure_ascii=False))
            body["embed"] = False
        elif op.index is False:
            body["content"] = ""
            body["embed"] = False
        else:
            fields = (
                self._fields
                if op.index is None
                else [(p, p if p == "$" else tokenize_path(p)) for p in op.index]
            )
            texts: list[str] = []
            for _, path in fields:
                texts.extend(get_text_at_path(value, path))
            body["content"] = _truncate("\n".join(texts))
            if not texts:
                body["embed"] = False
        return body


def _ttl_seconds(minutes: float) -> int:
    # A hair under the whole second: 2/60 minutes is 2 s, not 3 after rounding error.
    return max(1, min(MAX_TTL_SECONDS, math.ceil(minutes * 60 - 1e-6)))
