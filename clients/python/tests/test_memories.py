"""Writes, reads, listing, batches and deletes with the sync client against a real cluster."""

from __future__ import annotations

import uuid

import httpx
import pytest

import memring
from memring import Memring

from ._cluster import LocalCluster
from .conftest import MODEL, vec


def test_a_text_memory_round_trips(client: Memring) -> None:
    written = client.add(
        "agent:planner",
        "Book the 9:40 flight to Lisbon on TAP TP1353",
        id="flight",
        metadata={"kind": "task", "priority": 2},
    )
    assert (written.id, written.scope, written.version, written.created) == (
        "flight",
        "agent:planner",
        1,
        True,
    )
    assert written.embedded_by == MODEL
    assert written.etag == '"1"'
    assert written.created_at
    got = client.get("agent:planner", "flight")
    assert got.content == "Book the 9:40 flight to Lisbon on TAP TP1353"
    assert got.metadata == {"kind": "task", "priority": 2}
    assert got.embedding is not None
    assert len(got.embedding) == 384
    assert (got.version, got.etag, got.created_at) == (1, '"1"', written.created_at)
    assert got.updated_at


def test_a_write_without_id_gets_one_and_the_same_write_again_changes_nothing(
    client: Memring,
) -> None:
    first = client.add("shared", "The travel budget is 1200 EUR", embedding=vec(4, 1))
    assert str(uuid.UUID(first.id)) == first.id, "the client picked a UUID"
    again = client.add("shared", "The travel budget is 1200 EUR", embedding=vec(4, 1), id=first.id)
    assert (again.created, again.version) == (False, 1)
    replaced = client.add("shared", "The budget is 1500 EUR", embedding=vec(4, 1), id=first.id)
    assert (replaced.created, replaced.version, replaced.etag) == (False, 2, '"2"')
    assert client.get("shared", first.id).content == "The budget is 1500 EUR"


def test_a_memory_with_a_ttl_says_when_it_expires(client: Memring) -> None:
    client.add("shared", "temporary", id="tmp", embedding=vec(4, 0), ttl_seconds=3600)
    got = client.get("shared", "tmp")
    assert got.expires_at is not None


def test_embed_false_stores_text_without_a_vector(client: Memring) -> None:
    written = client.add(
        "agent:state", "serialized state zq81 of thread t1", id="state", embed=False
    )
    assert (written.created, written.embedded_by) == (True, None)
    got = client.get("agent:state", "state")
    assert got.embedding is None
    assert got.embedded_by is None
    # Found by its words and by listings; not by meaning (it has no vector).
    found = client.search("agent:state", query="zq81", mode="keyword")
    assert [h.id for h in found] == ["state"]
    assert [m.id for m in client.list("agent:state")] == ["state"]
    assert len(client.search("agent:state", query="the state of a thread", mode="vector")) == 0
    # It fixed no model for its scope: text written there later is embedded as usual.
    text = client.add("agent:state", "Ana is vegetarian", id="text")
    assert text.embedded_by == MODEL
    got_text = client.get("agent:state", "text")
    assert got_text.embedding is not None
    assert len(got_text.embedding) == 384
    hits = client.search("agent:state", query="food preferences", mode="vector")
    assert [h.id for h in hits] == ["text"]
    # A patch of its content leaves it without a vector.
    patched = client.patch("agent:state", "state", content="serialized state zq99")
    assert (patched.version, patched.embedding) == (2, None)
    # The same write again changes nothing; embed=True (sent) embeds as the default does.
    again = client.add("agent:state", "serialized state zq99", id="state", embed=False)
    assert (again.created, again.version) == (False, 2)
    assert client.add("agent:state", "tea", id="tea", embed=True).embedded_by == MODEL
    # A vector with embed=False says two things at once.
    with pytest.raises(memring.BadRequest) as err:
        client.add("agent:state", "x", id="both", embedding=vec(384, 0), embed=False)
    assert err.value.code == "invalid_request"


def test_add_many_items_may_say_embed_false(client: Memring) -> None:
    result = client.add_many(
        [
            {"id": "plain", "scope": "shared", "content": "second blob zq82", "embed": False},
            {"id": "prose", "scope": "shared", "content": "a plain sentence about tea"},
            {"id": "unset", "scope": "shared", "content": "green tea", "embed": None},
            {"id": "bad", "scope": "shared", "content": "x", "embedding": [1.0], "embed": False},
        ]
    )
    assert [r.ok for r in result] == [True, True, True, False]
    assert [r.embedded_by for r in result][:3] == [None, MODEL, MODEL]
    assert result[3].error is not None
    assert result[3].error.code == "invalid_request"
    assert client.get("shared", "plain").embedding is None
    assert client.get("shared", "prose").embedding is not None
    assert [h.id for h in client.search("shared", query="zq82", mode="keyword")] == ["plain"]


def test_delete_removes_and_a_second_delete_is_not_found(client: Memring) -> None:
    client.add("shared", "to forget", id="gone", embedding=vec(4, 2))
    client.delete("shared", "gone")
    with pytest.raises(memring.NotFound) as err:
        client.get("shared", "gone")
    assert (err.value.status, err.value.code) == (404, "not_found")
    with pytest.raises(memring.NotFound):
        client.delete("shared", "gone")
    client.delete("shared", "gone", missing_ok=True)


def test_list_pages_in_a_stable_order_and_iter_list_walks_them_all(client: Memring) -> None:
    result = client.add_many(
        [
            {"id": f"m{n:02}", "scope": "shared", "content": f"note {n}", "embedding": vec(4, n)}
            for n in range(25)
        ]
    )
    assert result.ok
    assert len(result) == 25
    first = client.list("shared", limit=10)
    assert len(first) == 10
    assert first.next_cursor
    second = client.list("shared", limit=10, cursor=first.next_cursor)
    third = client.list("shared", limit=10, cursor=second.next_cursor)
    assert (len(second), len(third), third.next_cursor) == (10, 5, None)
    paged = [m.id for page in (first, second, third) for m in page]
    assert sorted(paged) == [f"m{n:02}" for n in range(25)]
    assert [m.id for m in client.iter_list("shared", page_size=7)] == paged
    assert list(client.iter_list("agent:nobody")) == []


def test_add_many_splits_any_number_of_items_into_requests_of_at_most_1000(
    cluster: LocalCluster, tenant: str
) -> None:
    sizes: list[int] = []

    def count(request: httpx.Request) -> None:
        if request.url.path.endswith(":batch"):
            request.read()
            sizes.append(request.content.count(b'"scope"'))

    http = httpx.Client(event_hooks={"request": [count]}, timeout=60)
    with http, Memring(cluster.url, tenant=tenant, http_client=http) as m:
        items: list[memring.MemoryInput] = [
            {"scope": "shared", "content": f"item {n}", "embedding": vec(8, n)} for n in range(2300)
        ]
        items[1500] = {"scope": "no such scope", "content": "refused"}
        result = m.add_many(items)
        assert sizes == [1000, 1000, 300]
        assert len(result) == 2300
        assert not result.ok
        [bad] = result.failed
        assert bad.index == 1500
        assert bad.error is not None
        assert bad.error.code == "invalid_scope"
        stored = [r for r in result if r.ok]
        assert len({r.id for r in stored}) == 2299
        assert all(r.status == 201 and r.outcome == "created" and r.etag == '"1"' for r in stored)
        assert sum(1 for _ in m.iter_list("shared", page_size=1000)) == 2299
        # The same items again, with the ids the answer gave them, change nothing.
        again = m.add_many(
            [
                {
                    "id": r.id or "",
                    "scope": "shared",
                    "content": f"item {r.index}",
                    "embedding": vec(8, r.index),
                }
                for r in stored[:10]
            ]
        )
        assert [r.outcome for r in again] == ["unchanged"] * 10
        assert "id" not in items[0], "the caller's items are left as they were"


def test_add_many_with_small_requests(client: Memring) -> None:
    result = client.add_many(
        ({"scope": "shared", "content": f"x{n}", "embedding": vec(4, n)} for n in range(12)),
        batch_size=5,
    )
    assert result.ok
    assert len(result.ids) == 12
    assert [r.index for r in result] == list(range(12))
    with pytest.raises(ValueError, match="batch_size"):
        client.add_many([], batch_size=1001)
    assert len(client.add_many([])) == 0


def test_delete_tenant_removes_every_memory(client: Memring, tenant: str) -> None:
    client.add("shared", "a", id="a", embedding=vec(4, 0))
    client.add("agent:x", "b", id="b", embedding=vec(4, 1))
    client.delete_tenant(tenant)
    for scope, id in (("shared", "a"), ("agent:x", "b")):
        with pytest.raises(memring.NotFound):
            client.get(scope, id)
    assert len(client.list("shared")) == 0


def test_health_ready_ring_and_openapi(client: Memring, cluster: LocalCluster) -> None:
    assert client.health()
    assert client.ready()
    ring = client.ring()
    assert len(ring["nodes"]) == 3
    doc = client.openapi()
    assert doc["openapi"].startswith("3")
    with Memring("http://127.0.0.1:9", tenant="x", retry=memring.RetryPolicy(max_attempts=1)) as m:
        assert not m.health()
        assert not m.ready()


def test_a_tenant_is_needed_somewhere(cluster: LocalCluster) -> None:
    with Memring(cluster.url) as m:
        with pytest.raises(ValueError, match="tenant"):
            m.get("shared", "x")
        with pytest.raises(memring.NotFound):
            m.get("shared", "x", tenant="someone")


def test_ids_and_tenants_are_sent_escaped(client: Memring) -> None:
    client.add("shared", "dotted", id="a.b-c_d", embedding=vec(4, 0))
    assert client.get("shared", "a.b-c_d").content == "dotted"
    with pytest.raises(memring.BadRequest) as err:
        client.get("shared", "not/an id")
    assert err.value.code in ("invalid_id", "route_not_found", "invalid_request")
