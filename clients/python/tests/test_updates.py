"""Updates (API part 2): PATCH as a JSON Merge Patch, ETags, If-Match / If-None-Match, and the
Idempotency-Key that makes a retried conditional change answer as applied."""

from __future__ import annotations

import httpx
import pytest

import memring
from memring import Memring

from ._cluster import LocalCluster
from ._proxy import LossyProxy
from .conftest import MODEL, vec


def etag_header(cluster: LocalCluster, tenant: str, scope: str, id: str) -> str | None:
    r = httpx.get(
        f"{cluster.url}/v1/tenants/{tenant}/memories/{id}", params={"scope": scope}, trust_env=False
    )
    etag: str | None = r.headers.get("etag")
    return etag


def test_every_memory_answer_has_an_etag(
    client: Memring, cluster: LocalCluster, tenant: str
) -> None:
    written = client.add("shared", "tea", id="tea", embedding=vec(4, 0))
    assert written.raw
    assert written.etag == '"1"'
    assert etag_header(cluster, tenant, "shared", "tea") == '"1"'
    patched = client.patch("shared", "tea", metadata={"k": 1})
    assert patched.etag == '"2"'
    assert etag_header(cluster, tenant, "shared", "tea") == '"2"'


def test_a_patch_merges_and_reembeds(client: Memring) -> None:
    client.add(
        "agent:a", "The user likes black tea.", id="note", metadata={"kind": "pref", "x": {"y": 1}}
    )
    before = client.get("agent:a", "note")
    after = client.patch(
        "agent:a",
        "note",
        content="The user likes green tea.",
        metadata={"x": {"z": 2}, "kind": None},
    )
    assert (after.version, after.content) == (2, "The user likes green tea.")
    assert after.metadata == {"x": {"y": 1, "z": 2}}
    assert after.embedding is not None
    assert after.embedding != before.embedding
    assert after.embedded_by == MODEL
    found = client.search("agent:a", query="green", mode="keyword")
    assert [h.id for h in found] == ["note"]
    assert len(client.search("agent:a", query="black", mode="keyword")) == 0
    same = client.patch("agent:a", "note")
    assert same.version == 2, "an empty patch changes nothing"
    timed = client.patch("agent:a", "note", ttl_seconds=3600)
    assert timed.expires_at is not None
    forever = client.patch("agent:a", "note", ttl_seconds=None)
    assert forever.expires_at is None
    cleared = client.patch("agent:a", "note", metadata=None)
    assert cleared.metadata == {}


def test_a_patch_of_a_client_vector_needs_the_new_vector(client: Memring) -> None:
    client.add("agent:v", "v1", id="mine", embedding=vec(384, 1))
    with pytest.raises(memring.BadRequest) as err:
        client.patch("agent:v", "mine", content="v2")
    assert "embedding" in err.value.message
    ok = client.patch("agent:v", "mine", content="v2", embedding=vec(384, 4))
    assert ok.embedded_by is None
    assert ok.embedding is not None
    assert ok.embedding == pytest.approx(vec(384, 4), abs=1e-6)


def test_if_match_on_patch(client: Memring) -> None:
    m = client.add("shared", "counter", id="c", embedding=vec(4, 0), metadata={"n": 0})
    stale = m.etag
    client.patch("shared", "c", metadata={"n": 1}, if_match=m.etag)
    with pytest.raises(memring.PreconditionFailed) as err:
        client.patch("shared", "c", metadata={"n": 2}, if_match=stale)
    assert (err.value.status, err.value.code) == (412, "precondition_failed")
    assert "version 2" in err.value.message
    now = client.get("shared", "c")
    assert now.metadata == {"n": 1}
    done = client.patch("shared", "c", metadata={"n": 2}, if_match=now.version)
    assert (done.version, done.metadata) == (3, {"n": 2})
    assert client.patch("shared", "c", metadata={"n": 3}, if_match="*").version == 4
    with pytest.raises(memring.NotFound):
        client.patch("shared", "missing", metadata={}, if_match="*")
    with pytest.raises(memring.NotFound):
        client.patch("shared", "missing", content="x")


def test_an_idempotency_key_answers_a_repeat_as_applied(client: Memring) -> None:
    client.add("shared", "k", id="k", embedding=vec(4, 0), metadata={"n": 0})
    first = client.patch("shared", "k", metadata={"n": 1}, if_match=1, idempotency_key="inc-1")
    again = client.patch("shared", "k", metadata={"n": 1}, if_match=1, idempotency_key="inc-1")
    assert (first.version, again.version) == (2, 2)
    with pytest.raises(memring.PreconditionFailed):
        client.patch("shared", "k", metadata={"n": 1}, if_match=1, idempotency_key="inc-2")
    with pytest.raises(memring.BadRequest):
        client.patch("shared", "k", metadata={}, idempotency_key="has space")


def test_conditional_writes_by_id(client: Memring) -> None:
    made = client.add("shared", "once", id="o", embedding=vec(4, 0), if_none_match=True)
    assert (made.created, made.etag) == (True, '"1"')
    same = client.add("shared", "once", id="o", embedding=vec(4, 0), if_none_match=True)
    assert (same.created, same.version) == (False, 1), "the same body again is the idempotent 200"
    with pytest.raises(memring.PreconditionFailed):
        client.add("shared", "other", id="o", embedding=vec(4, 0), if_none_match=True)
    with pytest.raises(memring.PreconditionFailed):
        client.add("shared", "other", id="o", embedding=vec(4, 0), if_match=2)
    replaced = client.add("shared", "other", id="o", embedding=vec(4, 0), if_match=made.etag)
    assert replaced.etag == '"2"'


def test_conditional_deletes(client: Memring) -> None:
    client.add("shared", "d", id="d", embedding=vec(4, 0))
    client.patch("shared", "d", metadata={"a": 1})
    with pytest.raises(memring.PreconditionFailed):
        client.delete("shared", "d", if_match=1)
    assert client.get("shared", "d").version == 2, "a refused delete deleted nothing"
    client.delete("shared", "d", if_match='"2"')
    with pytest.raises(memring.NotFound):
        client.get("shared", "d")


def test_a_conditional_patch_whose_answer_was_lost_applies_once(
    cluster: LocalCluster, tenant: str
) -> None:
    with LossyProxy(cluster.routers[0].addr) as proxy:
        with Memring(proxy.url, tenant=tenant) as m:
            m.add("shared", "n", id="n", embedding=vec(4, 0), metadata={"n": 0})
            proxy.drop("PATCH")
            # Without the client's key the retry would find version 2 (made by its own first
            # try) and fail If-Match with 412.
            done = m.patch("shared", "n", metadata={"n": 1}, if_match=1)
            assert done.version == 2
            assert done.metadata == {"n": 1}
        patches = [s for s in proxy.seen if s.method == "PATCH"]
        assert [p.dropped for p in patches] == [True, False]
        keys = {p.headers.get("idempotency-key") for p in patches}
        assert len(keys) == 1, "one key, sent on every try"
        assert None not in keys


def test_a_conditional_write_whose_answer_was_lost_applies_once(
    cluster: LocalCluster, tenant: str
) -> None:
    with LossyProxy(cluster.routers[0].addr) as proxy, Memring(proxy.url, tenant=tenant) as m:
        m.add("shared", "v1", id="w", embedding=vec(4, 0))
        proxy.drop("POST", "/memories")
        done = m.add("shared", "v2", id="w", embedding=vec(4, 0), if_match=1)
        assert done.version == 2
        assert m.get("shared", "w").content == "v2"
    posts = [s for s in proxy.seen if s.method == "POST"][1:]
    assert [p.dropped for p in posts] == [True, False]
    assert posts[0].body == posts[1].body
    keys = {p.headers.get("idempotency-key") for p in posts}
    assert len(keys) == 1, "one key, sent on every try"
    assert None not in keys
