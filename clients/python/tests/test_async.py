"""The async client against the same real cluster: every endpoint, errors, retries."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

import memring
from memring import AsyncMemring, RetryPolicy

from ._cluster import LocalCluster, Proc
from .conftest import MODEL, Auth, vec
from .test_retries import limited_tenant

pytestmark = pytest.mark.asyncio


async def test_write_get_list_delete(aclient: AsyncMemring) -> None:
    written = await aclient.add("shared", "Ana is vegetarian", metadata={"kind": "fact"})
    assert (written.created, written.version, written.embedded_by) == (True, 1, MODEL)
    got = await aclient.get("shared", written.id)
    assert (got.content, got.metadata, got.etag) == ("Ana is vegetarian", {"kind": "fact"}, '"1"')
    page = await aclient.list("shared", limit=10)
    assert [m.id for m in page] == [written.id]
    assert page.next_cursor is None
    await aclient.delete("shared", written.id)
    with pytest.raises(memring.NotFound):
        await aclient.get("shared", written.id)
    await aclient.delete("shared", written.id, missing_ok=True)


async def test_embed_false_writes_without_a_vector(aclient: AsyncMemring) -> None:
    written = await aclient.add("agent:s", "checkpoint blob zq81", id="cp", embed=False)
    assert written.embedded_by is None
    assert (await aclient.get("agent:s", "cp")).embedding is None
    batch = await aclient.add_many(
        [{"id": "b", "scope": "agent:s", "content": "blob zq82", "embed": False}]
    )
    assert batch.ok
    assert batch[0].embedded_by is None
    found = await aclient.search("agent:s", query="zq81 zq82", mode="keyword")
    assert sorted(h.id for h in found) == ["b", "cp"]
    assert (await aclient.add("agent:s", "Ana likes tea", id="t")).embedded_by == MODEL


async def test_batches_and_iterators(aclient: AsyncMemring) -> None:
    result = await aclient.add_many(
        [{"scope": "shared", "content": f"a{n}", "embedding": vec(8, n)} for n in range(1205)]
    )
    assert result.ok
    assert len(result) == 1205
    ids = [m.id async for m in aclient.iter_list("shared", page_size=500)]
    assert sorted(ids) == sorted(r.id or "" for r in result)
    hits = [h.id async for h in aclient.iter_search("shared", page_size=300)]
    assert len(hits) == 1000, "a search pages through at most its window of 1000"
    assert len(set(hits)) == 1000
    near = [h async for h in aclient.iter_search("shared", embedding=vec(8, 3), limit=5)]
    assert len(near) == 5
    assert near[0].score is not None


async def test_search_embeddings_and_cluster_endpoints(aclient: AsyncMemring) -> None:
    await aclient.add("agent:p", "Book the flight TP1353 to Lisbon", id="f")
    await aclient.add("shared", "The travel budget is 1200 EUR per trip", id="b")
    hits = await aclient.search(["agent:p", "shared"], query="how much money can we spend?", k=1)
    assert hits[0].id == "b"
    kw = await aclient.search(["agent:p", "shared"], query="tp1353", mode="keyword")
    assert [h.id for h in kw] == ["f"]
    emb = await aclient.embeddings(["x", "y"])
    assert (emb.model, emb.dimensions, len(emb)) == (MODEL, 384, 2)
    assert await aclient.health()
    assert await aclient.ready()
    assert len((await aclient.ring())["nodes"]) == 3
    assert "paths" in await aclient.openapi()


async def test_delete_tenant(aclient: AsyncMemring, tenant: str) -> None:
    await aclient.add("shared", "x", id="x", embedding=vec(4, 0))
    await aclient.delete_tenant(tenant)
    with pytest.raises(memring.NotFound):
        await aclient.get("shared", "x")


async def test_errors(aclient: AsyncMemring, auth: Auth, small_router: Proc) -> None:
    with pytest.raises(memring.BadRequest) as err:
        await aclient.add("nope", "x", embedding=[1.0])
    assert err.value.code == "invalid_scope"
    async with AsyncMemring(auth.url, tenant=auth.tenant) as anonymous:
        with pytest.raises(memring.Unauthorized):
            await anonymous.list("shared")
    async with AsyncMemring(auth.url, api_key=auth.other_key, tenant=auth.tenant) as other:
        with pytest.raises(memring.Forbidden):
            await other.list("shared")
    async with AsyncMemring(auth.url, api_key=auth.key, tenant=auth.tenant) as mine:
        assert (await mine.list("shared")) is not None
    async with AsyncMemring(small_router.url, tenant=auth.tenant) as small:
        with pytest.raises(memring.PayloadTooLarge):
            await small.add("shared", "x" * 100_000, embedding=[1.0])


async def test_retries_wait_out_429s(cluster: LocalCluster) -> None:
    tenant = await asyncio.to_thread(limited_tenant, cluster, "2")
    seen: list[tuple[float, int, str | None]] = []

    async def note(response: httpx.Response) -> None:
        seen.append((time.monotonic(), response.status_code, response.headers.get("retry-after")))

    async with (
        httpx.AsyncClient(event_hooks={"response": [note]}) as http,
        AsyncMemring(cluster.url, tenant=tenant, http_client=http) as m,
    ):
        started = time.monotonic()
        results = await asyncio.gather(
            *(m.add("shared", f"c{n}", id=f"c{n}", embedding=vec(4, n)) for n in range(6))
        )
        assert sorted(r.id for r in results) == [f"c{n}" for n in range(6)]
    limited = [s for s in seen if s[1] == 429]
    assert limited
    assert all(s[2] is not None for s in limited)
    # Six writes at two per second, after a burst that emptied the bucket: at least two seconds.
    assert time.monotonic() - started >= 2.0


async def test_updates(aclient: AsyncMemring) -> None:
    m = await aclient.add("shared", "v1", id="u", embedding=vec(4, 0), metadata={"a": 1})
    patched = await aclient.patch("shared", "u", metadata={"b": 2}, if_match=m.etag)
    assert (patched.version, patched.metadata, patched.etag) == (2, {"a": 1, "b": 2}, '"2"')
    with pytest.raises(memring.PreconditionFailed):
        await aclient.patch("shared", "u", content="v3", if_match=m.etag)
    with pytest.raises(memring.PreconditionFailed):
        await aclient.delete("shared", "u", if_match=m.etag)
    await aclient.delete("shared", "u", if_match=patched.etag)


async def test_retry_policy_off(cluster: LocalCluster) -> None:
    tenant = await asyncio.to_thread(limited_tenant, cluster, "1")
    async with AsyncMemring(cluster.url, tenant=tenant, retry=RetryPolicy(max_attempts=1)) as m:
        calls = [m.list("shared") for _ in range(5)]
        with pytest.raises(memring.RateLimited) as err:
            await asyncio.gather(*calls)
        assert err.value.retry_after is not None
