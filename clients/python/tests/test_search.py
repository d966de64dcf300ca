"""Search in every mode, filters, paging by offset, and the embeddings endpoint."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

import memring
from memring import Memring

from ._cluster import Proc
from .conftest import MODEL, vec

TRIP: list[tuple[str, str, str, dict[str, object]]] = [
    ("flight", "agent:planner", "Book the 9:40 flight to Lisbon on TAP TP1353", {"kind": "task"}),
    ("budget", "shared", "The travel budget is 1200 EUR per trip", {"kind": "fact", "p": 3}),
    ("diet", "shared", "Ana is vegetarian and allergic to peanuts", {"kind": "fact", "p": 1}),
    ("hotel", "shared", "Hotel near the river with late check-in", {"kind": "pref", "p": 2}),
]
SCOPES = ["agent:planner", "shared"]


@pytest.fixture
def trip(client: Memring) -> Memring:
    for id, scope, content, meta in TRIP:
        client.add(scope, content, id=id, metadata={**meta, "tags": ["travel", id]})
    return client


def test_hybrid_finds_a_paraphrase_across_scopes(trip: Memring) -> None:
    hits = trip.search(SCOPES, query="how much money can we spend?", k=2)
    assert not hits.partial
    assert hits[0].id == "budget"
    assert hits[0].score is not None
    assert hits[0].scores.vector is not None
    assert len(hits) == 2


def test_keyword_finds_a_rare_word(trip: Memring) -> None:
    hits = trip.search(SCOPES, query="TP1353", mode="keyword")
    assert [h.id for h in hits] == ["flight"]
    assert hits[0].scope == "agent:planner"
    assert hits[0].scores.keyword is not None
    assert hits[0].scores.vector is None


def test_vector_mode_with_a_filter(trip: Memring) -> None:
    hits = trip.search(SCOPES, query="food restrictions", mode="vector", where={"kind": "fact"})
    assert hits[0].id == "diet"
    assert {h.id for h in hits} == {"diet", "budget"}


def test_weighted_fusion_and_rrf(trip: Memring) -> None:
    for fusion in (memring.weighted(0.7), memring.rrf(60)):
        hits = trip.search(SCOPES, query="budget per trip", mode="hybrid", fusion=fusion, k=3)
        assert hits[0].id == "budget", fusion
    with pytest.raises(memring.BadRequest):
        trip.search(SCOPES, query="x", fusion={"method": "magic"})


def test_operators_in_where(trip: Memring) -> None:
    def ids(where: dict[str, object]) -> set[str]:
        return {h.id for h in trip.search(SCOPES, where=where, k=10)}

    assert ids({"p": {"$gte": 2}}) == {"budget", "hotel"}
    assert ids({"kind": {"$in": ["task", "pref"]}}) == {"flight", "hotel"}
    assert ids({"kind": {"$ne": "fact"}}) == {"flight", "hotel"}
    assert ids({"tags": {"$contains": "diet"}}) == {"diet"}
    assert ids({"p": {"$exists": False}}) == {"flight"}
    assert ids({"$or": [{"p": {"$lt": 2}}, {"kind": "task"}]}) == {"diet", "flight"}
    assert ids({"$not": {"kind": "fact"}}) == {"flight", "hotel"}
    assert ids({"$and": [{"kind": "fact"}, {"p": {"$gt": 1, "$lte": 3}}]}) == {"budget"}
    assert ids({"kind": {"$nin": ["fact", "pref"]}}) == {"flight"}
    with pytest.raises(memring.BadRequest) as err:
        trip.search(SCOPES, where={"p": {"$regex": "x"}})
    assert err.value.code == "invalid_filter"
    assert "$regex" in err.value.message


def test_a_search_without_query_or_vector_is_a_filtered_listing(trip: Memring) -> None:
    hits = trip.search(SCOPES, where={"kind": "fact"})
    assert {h.id for h in hits} == {"budget", "diet"}
    assert all(h.score is None for h in hits)
    assert hits[0].updated_at is not None


def test_created_after_and_before(trip: Memring) -> None:
    now = datetime.now(timezone.utc)
    assert len(trip.search(SCOPES, created_after=now + timedelta(minutes=5))) == 0
    assert len(trip.search(SCOPES, created_before=now + timedelta(minutes=5))) == 4
    past = (now - timedelta(hours=1)).isoformat()
    assert len(trip.search(SCOPES, created_after=past)) == 4
    naive = (now + timedelta(minutes=5)).replace(tzinfo=None)  # the client takes it as UTC
    assert len(trip.search(SCOPES, created_before=naive)) == 4


def test_a_client_vector_search(client: Memring) -> None:
    for n in range(6):
        client.add("shared", f"v{n}", id=f"v{n}", embedding=vec(8, n))
    hits = client.search("shared", embedding=vec(8, 3), k=3)
    assert hits[0].id == "v3"
    assert hits[0].score is not None
    assert hits[0].score > 0.9


def test_offset_pages_and_iter_search(client: Memring) -> None:
    client.add_many(
        [
            {"id": f"n{n:02}", "scope": "shared", "content": f"n{n}", "embedding": vec(8, n)}
            for n in range(30)
        ]
    )
    one = client.search("shared", k=10)
    two = client.search("shared", k=10, offset=10)
    assert not {h.id for h in one} & {h.id for h in two}
    walked = [h.id for h in client.iter_search("shared", page_size=7)]
    assert len(walked) == 30
    assert len(set(walked)) == 30
    assert walked[:10] == [h.id for h in one]
    assert len(list(client.iter_search("shared", page_size=7, limit=12))) == 12
    assert len(list(client.iter_search("shared", page_size=7, offset=25))) == 5
    vector = [h.id for h in client.iter_search("shared", embedding=vec(8, 4), page_size=4)]
    assert vector[0] == "n04"
    assert len(vector) == 30
    with pytest.raises(memring.BadRequest):
        client.search("shared", k=10, offset=995)


def test_embeddings_in_openai_shape(client: Memring) -> None:
    one = client.embeddings("hello")
    assert (one.model, one.dimensions, len(one)) == (MODEL, 384, 1)
    many = client.embeddings(["a", "b", "c"], model=MODEL)
    assert len(many.vectors) == 3
    assert all(len(v) == 384 for v in many)
    assert many.vectors[0] == client.embeddings(["a"]).vectors[0]
    with pytest.raises(memring.BadRequest) as err:
        client.embeddings("x", model="no-such-model")
    assert err.value.code == "unknown_model"
    with pytest.raises(memring.BadRequest):
        client.embeddings(["x"] * 257)


def test_without_an_embedder(plain_router: Proc, tenant: str) -> None:
    with Memring(plain_router.url, tenant=tenant) as m:
        with pytest.raises(memring.BadRequest) as err:
            m.embeddings("hello")
        assert err.value.code == "no_embedder"
        written = m.add("shared", "stored without a vector, found by its words")
        assert written.embedded_by is None
        assert m.get("shared", written.id).embedding is None
        assert [h.id for h in m.search("shared", query="vector words")] == [written.id]
