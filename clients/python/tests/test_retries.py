"""Retries against real refusals: a tenant rate limit (429), a stopped node (503), and answers
lost on the way back (a proxy that drops them after the router acted)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass

import httpx
import pytest

import memring
from memring import Memring, RetryPolicy

from ._cluster import LocalCluster
from ._proxy import LossyProxy
from .conftest import new_tenant, vec


@dataclass
class Exchange:
    sent_at: float
    status: int = 0
    answered_at: float = 0.0
    retry_after: float | None = None


class Recorder:
    """httpx event hooks noting when each request left and what came back."""

    def __init__(self) -> None:
        self.exchanges: list[Exchange] = []

    def request(self, request: httpx.Request) -> None:
        self.exchanges.append(Exchange(sent_at=time.monotonic()))

    def response(self, response: httpx.Response) -> None:
        ex = self.exchanges[-1]
        ex.status = response.status_code
        ex.answered_at = time.monotonic()
        ra = response.headers.get("retry-after")
        ex.retry_after = float(ra) if ra is not None else None

    def client(self) -> httpx.Client:
        return httpx.Client(event_hooks={"request": [self.request], "response": [self.response]})


def limited_tenant(cluster: LocalCluster, per_sec: str) -> str:
    """A new tenant with a request rate limit that is already in force at the router."""
    tenant = new_tenant("limited")
    cluster.shardctl("limits", "set", "--tenant", tenant, "--requests-per-sec", per_sec)
    deadline = time.monotonic() + 10
    with Memring(cluster.url, tenant=tenant, retry=RetryPolicy(max_attempts=1)) as m:
        while True:
            try:
                m.list("shared")
            except memring.RateLimited:
                return tenant
            assert time.monotonic() < deadline, "the limit never applied"


def test_the_client_waits_out_429s_and_succeeds(cluster: LocalCluster) -> None:
    tenant = limited_tenant(cluster, "2")
    rec = Recorder()
    with rec.client() as http, Memring(cluster.url, tenant=tenant, http_client=http) as m:
        for n in range(6):
            m.add("shared", f"n{n}", id=f"n{n}", embedding=vec(4, n))
        assert len(m.list("shared")) == 6
    refused = [i for i, ex in enumerate(rec.exchanges) if ex.status == 429]
    assert refused, "the test never met the limit"
    assert rec.exchanges[-1].status == 200
    for i in refused:
        ex, after = rec.exchanges[i], rec.exchanges[i + 1]
        assert ex.retry_after is not None
        assert ex.retry_after >= 1
        waited = after.sent_at - ex.answered_at
        assert waited >= ex.retry_after - 0.01, (
            f"retried after {waited:.3f}s, asked {ex.retry_after}"
        )


def test_a_retry_after_beyond_the_budget_is_raised_at_once(cluster: LocalCluster) -> None:
    tenant = limited_tenant(cluster, "0.5")
    policy = RetryPolicy(max_elapsed=0.5)
    with Memring(cluster.url, tenant=tenant, retry=policy) as m:
        started = time.monotonic()
        with pytest.raises(memring.RateLimited) as err:
            m.list("shared")
        assert err.value.retry_after is not None
        assert err.value.retry_after > 0.5
        assert time.monotonic() - started < 0.5, "it slept although the budget could not cover it"


def test_503s_are_retried_until_the_node_is_back(lonely: LocalCluster, tenant: str) -> None:
    shard = lonely.shards[0]
    with Memring(lonely.url, tenant=tenant) as m:
        m.add("shared", "survives", id="s", embedding=[0.2, 1.0])
        shard.stop()
        back = threading.Timer(1.5, lambda: lonely.restart_shard(shard))
        started = time.monotonic()
        back.start()
        try:
            got = m.get("shared", "s")
        finally:
            back.join()
            if shard.popen is None:
                lonely.restart_shard(shard)
        assert got.content == "survives"
        assert time.monotonic() - started >= 1.5


# -- lost answers --------------------------------------------------------------------------


def test_a_write_whose_answer_was_lost_is_stored_once(cluster: LocalCluster, tenant: str) -> None:
    with LossyProxy(cluster.routers[0].addr) as proxy:
        proxy.drop("POST", "/memories")
        with Memring(proxy.url, tenant=tenant) as m:
            written = m.add("shared", "exactly once", embedding=vec(4, 0))
            assert (written.created, written.version) == (False, 1), "answered as unchanged"
            assert [x.id for x in m.iter_list("shared")] == [written.id]
        posts = [s for s in proxy.seen if s.method == "POST"]
        assert [p.dropped for p in posts] == [True, False]
        assert posts[0].body == posts[1].body, "the retry sent the same id and body"
        assert json.loads(posts[0].body)["id"] == written.id


def test_a_batch_whose_answer_was_lost_is_stored_once(cluster: LocalCluster, tenant: str) -> None:
    with LossyProxy(cluster.routers[0].addr) as proxy:
        proxy.drop("POST", ":batch")
        with Memring(proxy.url, tenant=tenant) as m:
            items: list[memring.MemoryInput] = [
                {"scope": "shared", "content": f"b{n}", "embedding": vec(4, n)} for n in range(20)
            ]
            result = m.add_many(items)
            assert result.ok
            assert {r.outcome for r in result} == {"unchanged"}
            assert sum(1 for _ in m.iter_list("shared")) == 20


def test_a_delete_whose_answer_was_lost_is_done(cluster: LocalCluster, tenant: str) -> None:
    with LossyProxy(cluster.routers[0].addr) as proxy:
        with Memring(proxy.url, tenant=tenant) as m:
            m.add("shared", "bye", id="bye", embedding=vec(4, 0))
            proxy.drop("DELETE")
            m.delete("shared", "bye")
            with pytest.raises(memring.NotFound):
                m.get("shared", "bye")
        assert [s.status for s in proxy.seen if s.method == "DELETE"] == [204, 404]


def test_reads_are_retried_after_a_broken_connection(cluster: LocalCluster, tenant: str) -> None:
    with LossyProxy(cluster.routers[0].addr) as proxy, Memring(proxy.url, tenant=tenant) as m:
        m.add("shared", "read me", id="r", embedding=vec(4, 0))
        proxy.drop("GET", times=2)
        assert m.get("shared", "r").content == "read me"
        proxy.drop("POST", "/search")
        assert [h.id for h in m.search("shared", embedding=vec(4, 0))] == ["r"]


def test_the_attempts_are_bounded(cluster: LocalCluster, tenant: str) -> None:
    with LossyProxy(cluster.routers[0].addr) as proxy:
        proxy.drop("GET", times=100)
        policy = RetryPolicy(max_attempts=3, base_delay=0.01)
        with (
            Memring(proxy.url, tenant=tenant, retry=policy) as m,
            pytest.raises(memring.TransportError),
        ):
            m.get("shared", "anything")
        assert len([s for s in proxy.seen if s.method == "GET"]) == 3
