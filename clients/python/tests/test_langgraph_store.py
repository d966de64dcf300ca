"""MemringStore against LangGraph's InMemoryStore as the reference: the same seeded random
sequences of put / get / delete / search (filters, paging, queries) / list_namespaces give the
same answers. Both embed with the same model (the reference through the router's
``/v1/embeddings``), so query searches are compared by membership and by their clear winner.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import pytest
from langgraph.store.base import IndexConfig, Item, ListNamespacesOp, Op, SearchItem
from langgraph.store.memory import InMemoryStore

from memring import Memring
from memring.langgraph import MemringStore, namespace_scope

from ._cluster import LocalCluster

NAMESPACES: list[tuple[str, ...]] = [
    ("users", "u1"),
    ("users", "u2"),
    ("users", "u1", "prefs"),
    ("docs",),
    ("docs", "x y"),
    ("caf\u00e9", "n_1", "deep"),
    ("users", "u3", "prefs"),
]
KEYS = ["k1", "k2", "k.3", "k 4", "\u00fcber"]
WORDS = [
    "flight",
    "lisbon",
    "budget",
    "euro",
    "hotel",
    "river",
    "vegetarian",
    "peanut",
    "meeting",
    "tuesday",
    "python",
    "rust",
    "garden",
    "tomato",
    "invoice",
    "train",
    "berlin",
    "coffee",
]


class Reference(InMemoryStore):
    """InMemoryStore listing only namespaces that hold items, as LangGraph's database stores
    (and MemringStore) do: InMemoryStore also lists a namespace a ``get`` touched or whose items
    were all deleted."""

    def _handle_list_namespaces(self, op: ListNamespacesOp) -> list[tuple[str, ...]]:
        for ns in [ns for ns, items in self._data.items() if not items]:
            del self._data[ns]
        return super()._handle_list_namespaces(op)


def _value(rng: random.Random) -> dict[str, Any]:
    value: dict[str, Any] = {
        "text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6))),
        "n": rng.randint(0, 9),
        "kind": rng.choice(["a", "b"]),
    }
    if rng.random() < 0.4:
        value["meta"] = {"lang": rng.choice(["en", "pt"]), "x": rng.randint(0, 2)}
    if rng.random() < 0.3:
        value["a.b"] = rng.randint(0, 1)
    if rng.random() < 0.3:
        value["tags"] = rng.sample(["x", "y", "z"], rng.randint(0, 2))
    return value


def _filter(rng: random.Random) -> dict[str, Any] | None:
    return rng.choice(
        [
            None,
            {"kind": "a"},
            {"n": {"$gt": rng.randint(0, 8)}},
            {"n": {"$lte": rng.randint(0, 9)}, "kind": rng.choice(["a", "b"])},
            {"n": {"$ne": rng.randint(0, 9)}},
            {"n": {"$gte": 2, "$lt": 7}},
            {"n": {"$eq": 3}},
            {"meta": {"lang": "en"}},
            {"meta": {"lang": "pt", "x": 1}},
            {"a.b": 1},
            {"tags": ["x", "y"]},
            {"kind": {"$ne": "a"}, "meta": {"x": 0}},
        ]
    )


def _prefix(rng: random.Random) -> tuple[str, ...]:
    ns = rng.choice(NAMESPACES)
    return ns[: rng.randint(0, len(ns))]


def _key(item: Item | None) -> tuple[tuple[str, ...], str, Any] | None:
    return None if item is None else (item.namespace, item.key, item.value)


class Checker:
    """Applies one op to both stores and compares."""

    def __init__(self, mine: MemringStore, ref: Reference, rng: random.Random) -> None:
        self.mine, self.ref, self.rng = mine, ref, rng
        self.ops = 0

    async def run(self, op: Op, use_async: bool) -> tuple[Any, Any]:
        self.ops += 1
        mine = (await self.mine.abatch([op]))[0] if use_async else self.mine.batch([op])[0]
        return mine, self.ref.batch([op])[0]


def _check_search(
    op_desc: str, mine: Sequence[SearchItem], full: Sequence[SearchItem], limit: int, offset: int
) -> None:
    """A filtered listing: the right number of items, all matching, newest first."""
    want = {(i.namespace, i.key) for i in full}
    got = [(i.namespace, i.key) for i in mine]
    assert len(got) == len(set(got)), op_desc
    assert len(got) == max(0, min(limit, len(want) - offset)), (op_desc, got, want)
    assert set(got) <= want, (op_desc, set(got) - want)
    by_key = {(i.namespace, i.key): i.value for i in full}
    for item in mine:
        assert item.value == by_key[(item.namespace, item.key)], op_desc
    times: list[datetime] = [i.updated_at for i in mine]
    assert times == sorted(times, reverse=True), op_desc


async def _random_run(mine: MemringStore, ref: Reference, seed: int, steps: int) -> int:
    rng = random.Random(seed)
    check = Checker(mine, ref, rng)
    use_async = bool(seed % 2)
    from langgraph.store.base import GetOp, MatchCondition, PutOp, SearchOp

    for step in range(steps):
        roll = rng.random()
        ns = rng.choice(NAMESPACES)
        key = rng.choice(KEYS)
        if roll < 0.45:
            await check.run(PutOp(ns, key, _value(rng)), use_async)
        elif roll < 0.55:
            await check.run(PutOp(ns, key, None), use_async)
        elif roll < 0.68:
            got, want = await check.run(GetOp(ns, key), use_async)
            assert _key(got) == _key(want), (step, ns, key)
        elif roll < 0.85:
            prefix, flt = _prefix(rng), _filter(rng)
            limit, offset = rng.choice([3, 10, 50]), rng.choice([0, 0, 2])
            desc = f"step {step}: search {prefix} {flt} limit {limit} offset {offset}"
            got, _ = await check.run(SearchOp(prefix, flt, limit, offset), use_async)
            full = ref.search(prefix, filter=flt, limit=10_000)
            _check_search(desc, got, full, limit, offset)
            if offset == 0 and limit < len(full):
                # Paging by offset covers everything once.
                pages: list[SearchItem] = []
                for start in range(0, len(full), limit):
                    page, _ = await check.run(SearchOp(prefix, flt, limit, start), use_async)
                    pages.extend(page)
                assert sorted((i.namespace, i.key) for i in pages) == sorted(
                    (i.namespace, i.key) for i in full
                ), desc
        elif roll < 0.93:
            conditions: list[MatchCondition] = []
            if rng.random() < 0.6:
                p = list(_prefix(rng))
                if p and rng.random() < 0.3:
                    p[rng.randrange(len(p))] = "*"
                if p:
                    conditions.append(MatchCondition("prefix", tuple(p)))
            if rng.random() < 0.3:
                conditions.append(MatchCondition("suffix", (rng.choice(["prefs", "u1", "*"]),)))
            op = ListNamespacesOp(
                tuple(conditions),
                max_depth=rng.choice([None, None, 1, 2]),
                limit=rng.choice([2, 100]),
                offset=rng.choice([0, 0, 1]),
            )
            got, want = await check.run(op, use_async)
            assert got == want, (step, op)
        else:
            prefix = _prefix(rng)
            query = " ".join(rng.sample(WORDS, 2))
            got, _ = await check.run(SearchOp(prefix, None, 100, 0, query), use_async)
            want = ref.search(prefix, query=query, limit=100)
            assert {(i.namespace, i.key) for i in got} == {(i.namespace, i.key) for i in want}
            if len(want) >= 2 and (want[0].score or 0) - (want[1].score or 0) > 0.02:
                assert (got[0].namespace, got[0].key) == (want[0].namespace, want[0].key)
                assert abs((got[0].score or 0) - (want[0].score or 0)) < 0.01
    # The end state, item by item.
    for ns in NAMESPACES:
        for key in KEYS:
            got, want = await check.run(GetOp(ns, key), use_async)
            assert _key(got) == _key(want), (ns, key)
    return check.ops


def _embedder(url: str) -> Any:
    client = Memring(url)

    def embed(texts: list[str]) -> list[list[float]]:
        out: list[list[float]] = []
        for i in range(0, len(texts), 256):
            out.extend(client.embeddings(texts[i : i + 256]).vectors)
        return out

    return embed


@pytest.mark.parametrize("seed", [1, 2])
def test_matches_in_memory_store(cluster: LocalCluster, seed: int) -> None:
    tenant = f"lgs-{uuid.uuid4().hex[:12]}"
    index: IndexConfig = {"dims": 384, "fields": ["text"]}
    ref = Reference(index={**index, "embed": _embedder(cluster.url)})
    with MemringStore(cluster.url, tenant, index=index) as mine:
        ops = asyncio.run(_random_run(mine, ref, seed, 220))
    assert ops > 200


def test_without_index_queries_are_keyword_searches(cluster: LocalCluster) -> None:
    tenant = f"lgs-{uuid.uuid4().hex[:12]}"
    with MemringStore(cluster.url, tenant) as store:
        store.put(("docs",), "a", {"text": "the TP1353 flight to Lisbon"})
        store.put(("docs",), "b", {"text": "a hotel by the river"})
        store.put(("docs", "sub"), "c", {"text": "Lisbon again"})
        hits = store.search(("docs",), query="lisbon")
        assert sorted(h.key for h in hits) == ["a", "c"]
        assert all(h.score is not None for h in hits)
        assert store.search(("docs", "sub"), query="hotel") == []
        assert [h.key for h in store.search(("docs",), query="TP1353")] == ["a"]
        # No vector was made for them.
        with Memring(cluster.url, tenant=tenant) as m:
            memory = m.get(namespace_scope(("docs",)), "kra")
            assert memory.embedded_by is None
            assert memory.embedding is None
            entry = m.list("agent:lgs-namespaces").items[0]
            assert m.get(entry.scope, entry.id).embedding is None


def test_index_per_item_and_ttl(cluster: LocalCluster) -> None:
    tenant = f"lgs-{uuid.uuid4().hex[:12]}"
    with MemringStore(
        cluster.url,
        tenant,
        index={"fields": ["text"]},
        ttl={"refresh_on_read": True},
    ) as store:
        store.put(("n",), "indexed", {"text": "vegetarian and allergic to peanuts"})
        store.put(("n",), "hidden", {"text": "peanut butter sandwich"}, index=False)
        store.put(("n",), "other", {"title": "no text field", "text": "tomato garden"})
        hits = store.search(("n",), query="food allergies", limit=10)
        assert "hidden" not in [h.key for h in hits]
        assert hits[0].key == "indexed"
        assert store.get(("n",), "hidden") is not None  # still stored, just not embedded
        # A put with index=False replaces an indexed item without its vector.
        store.put(("n",), "indexed", {"text": "vegetarian and allergic to peanuts"}, index=False)
        again = store.search(("n",), query="food allergies", limit=10)
        assert "indexed" not in [h.key for h in again]
        with Memring(cluster.url, tenant=tenant) as m:
            for key in ("indexed", "hidden"):
                assert m.get(namespace_scope(("n",)), f"kr{key}").embedding is None
            assert m.get(namespace_scope(("n",)), "krother").embedding is not None
        store.put(("t",), "short", {"text": "gone soon"}, ttl=2 / 60)
        time.sleep(1.2)
        assert store.get(("t",), "short") is not None  # refreshes: 2 s from now
        time.sleep(1.2)
        assert store.get(("t",), "short", refresh_ttl=False) is not None
        time.sleep(2.5)
        assert store.get(("t",), "short") is None
        assert store.list_namespaces() == [("n",)]


def test_a_namespace_written_without_an_index_takes_indexed_items_later(
    cluster: LocalCluster,
) -> None:
    """Items without a vector fix no model for their namespace's partition: a namespace first
    written without an index (by a store without one, or by put(..., index=False)) can later
    receive indexed items, and both kinds are found."""
    tenant = f"lgs-{uuid.uuid4().hex[:12]}"
    ns = ("users", "ana")
    with MemringStore(cluster.url, tenant) as plain:
        plain.put(ns, "state", {"text": "order 1187 shipped", "n": 1})
    with MemringStore(cluster.url, tenant, index={"fields": ["text"]}) as indexed:
        indexed.put(("fresh",), "raw", {"text": "order 1188 paid"}, index=False)
        indexed.put(("fresh",), "diet", {"text": "vegetarian and allergic to peanuts"})
        indexed.put(ns, "diet", {"text": "vegetarian and allergic to peanuts"})
        indexed.put(ns, "trip", {"text": "a flight to Lisbon on Tuesday"})
        # A vector search finds the indexed items only (the others have no vector).
        hits = indexed.search(ns, query="food allergies", limit=10)
        assert [h.key for h in hits][:1] == ["diet"]
        assert sorted(h.key for h in hits) == ["diet", "trip"]
        assert all(h.score is not None for h in hits)
        assert [h.key for h in indexed.search(("fresh",), query="food allergies")] == ["diet"]
        assert [h.key for h in indexed.search(ns, query="travel plans", limit=1)] == ["trip"]
        assert indexed.get(ns, "state") is not None
        assert indexed.get(("fresh",), "raw") is not None
        assert sorted(i.key for i in indexed.search(ns, limit=10)) == ["diet", "state", "trip"]
    with MemringStore(cluster.url, tenant) as plain:
        # Keyword search over the value's JSON still finds the unindexed item, and the same
        # namespace takes more unindexed items.
        assert [h.key for h in plain.search(ns, query="1187")] == ["state"]
        plain.put(ns, "state2", {"text": "order 1189 returned"})
        assert [h.key for h in plain.search(ns, query="1189")] == ["state2"]
    with Memring(cluster.url, tenant=tenant) as m:
        scope = namespace_scope(ns)
        assert m.get(scope, "krstate").embedding is None
        diet = m.get(scope, "krdiet")
        assert diet.embedding is not None
        assert len(diet.embedding) == 384
