"""Read-your-writes tokens: kept per client (per tenant), merged across writes, sent on reads
of the scopes they name; and, on a replicated cluster, still read the client's writes after the
primary of their partition is killed and the control plane fails over."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from memring import Memring, RetryPolicy
from memring._tokens import parse_token

from ._cluster import LocalCluster, Proc, bin_dir, missing_binaries
from ._etcd import EtcdCluster
from .conftest import new_tenant, vec


class Sent:
    """The read-token header of every request a client sends."""

    def __init__(self) -> None:
        self.tokens: list[tuple[str, str | None]] = []

    def hook(self, request: httpx.Request) -> None:
        self.tokens.append((request.url.path, request.headers.get("x-memring-read-token")))

    @property
    def last(self) -> str | None:
        return self.tokens[-1][1]


def test_writes_hand_back_tokens_that_the_client_merges_and_sends(
    cluster: LocalCluster, tenant: str
) -> None:
    sent = Sent()
    http = httpx.Client(event_hooks={"request": [sent.hook]})
    with http, Memring(cluster.url, tenant=tenant, http_client=http) as m:
        assert m.read_token() is None
        a = m.add("shared", "one", id="one", embedding=vec(4, 0))
        assert a.read_token is not None
        first = parse_token(a.read_token)["shared"]
        b = m.add("shared", "two", id="two", embedding=vec(4, 1))
        assert b.read_token is not None
        assert parse_token(b.read_token)["shared"] > first
        m.add("agent:x", "three", id="three", embedding=vec(4, 2))
        token = parse_token(m.read_token() or "")
        assert set(token) == {"shared", "agent:x"}
        assert token["shared"] == parse_token(b.read_token)["shared"], "the highest is kept"

        assert m.get("shared", "two").content == "two"
        assert parse_token(sent.last or "") == {"shared": token["shared"]}, "only the read scope"
        assert {h.id for h in m.search(["shared", "agent:x"], embedding=vec(4, 1))} == {
            "one",
            "two",
            "three",
        }
        assert parse_token(sent.last or "") == token
        m.list("agent:x")
        assert parse_token(sent.last or "") == {"agent:x": token["agent:x"]}
        m.list("agent:never-written")
        assert sent.last is None
        m.list("shared", tenant=new_tenant())
        assert sent.last is None, "a token is never sent to another tenant"

        m.delete("shared", "one")
        assert parse_token(m.read_token() or "")["shared"] > token["shared"], "deletes count too"
        batch = m.add_many([{"scope": "agent:y", "content": "y", "embedding": vec(4, 3)}])
        assert batch.read_token is not None
        assert "agent:y=" in batch.read_token
        assert "agent:y" in parse_token(m.read_token() or "")


def test_a_token_passes_from_one_client_to_another(cluster: LocalCluster, tenant: str) -> None:
    sent = Sent()
    http = httpx.Client(event_hooks={"request": [sent.hook]})
    with Memring(cluster.url, tenant=tenant) as writer:
        w = writer.add("shared", "handed over", id="h", embedding=vec(4, 0))
        with http, Memring(cluster.url, tenant=tenant, http_client=http) as reader:
            assert reader.get("shared", "h", read_token=w.read_token).content == "handed over"
            assert sent.last == w.read_token
            reader.note_read_token(writer.read_token())
            reader.get("shared", "h")
            assert sent.last == w.read_token
            assert reader.read_token() == writer.read_token()


# -- across a failover -----------------------------------------------------------------------

TOKEN_HEADER = "x-memring-read-token"
DIM = 8


@pytest.fixture
def replicated(tmp_path: Path) -> Iterator[EtcdCluster]:
    """A replicated cluster of the test's own (tests/_etcd.py: R = 3, W = 2, 5 s leases, one
    router, no embedder): the test kills one of its nodes, which the session's ``etcd_cluster``
    must not lose."""
    missing = missing_binaries()
    if missing:
        pytest.fail(f"memring binaries missing in {bin_dir()}: {', '.join(missing)}", pytrace=False)
    c = EtcdCluster(tmp_path, routers=1, router_flags=("--embedder", "none")).start()
    try:
        yield c
    finally:
        c.stop()


@dataclass(frozen=True)
class Exchange:
    """One answered try: the read token it carried, and what came back."""

    method: str
    path: str
    token: str | None
    status: int
    retry_after: str | None


@dataclass
class Traffic:
    """Every answered try of a client, per thread (httpx runs its hooks in the calling thread),
    so a test can tell which tries one call of its thread made."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    by_thread: dict[int, list[Exchange]] = field(default_factory=dict)

    def hook(self, response: httpx.Response) -> None:
        request = response.request
        exchange = Exchange(
            request.method,
            request.url.path,
            request.headers.get(TOKEN_HEADER),
            response.status_code,
            response.headers.get("retry-after"),
        )
        with self.lock:
            self.by_thread.setdefault(threading.get_ident(), []).append(exchange)

    def mark(self) -> int:
        """Where this thread's tries stand."""
        with self.lock:
            return len(self.by_thread.get(threading.get_ident(), []))

    def since(self, mark: int) -> list[Exchange]:
        """This thread's tries after ``mark``."""
        with self.lock:
            return list(self.by_thread.get(threading.get_ident(), [])[mark:])


@dataclass
class Acked:
    """An acknowledged write, read back at once."""

    id: str
    content: str
    seq: int
    """The position its read token names for ``shared``."""
    tries: list[Exchange]
    """The write's answered tries, the acknowledgement last."""
    acked_at: float


def carried(tries: list[Exchange], seq: int, what: str) -> None:
    """Every try of a read carried the client's token for ``shared`` alone, at ``seq`` or later."""
    assert tries, f"{what}: no try was answered"
    for t in tries:
        sent = parse_token(t.token or "")
        wrong = f"{what} carried the read token {t.token!r}, not shared={seq} or later"
        assert set(sent) == {"shared"}, wrong
        assert sent["shared"] >= seq, wrong
        assert 200 <= t.status < 300 or t.status == 503, f"{what}: {t}"


def write_and_read(m: Memring, traffic: Traffic, mid: str, n: int) -> Acked:
    """Writes ``mid`` to ``shared``, then reads it at once by id, by a search, in a filtered
    listing (a search without query) and in the listing, each read carrying the write's token."""
    content = f"memory {mid} on axis {n}"
    mark = traffic.mark()
    written = m.add("shared", content, id=mid, embedding=vec(DIM, n))
    acked_at = time.monotonic()
    tries = traffic.since(mark)
    assert written.read_token is not None, f"the write of {mid} answered no read token"
    token = parse_token(written.read_token)
    assert set(token) == {"shared"}, written.read_token
    seq = token["shared"]
    assert parse_token(m.read_token() or "").get("shared", -1) >= seq, "the client dropped it"

    mark = traffic.mark()
    got = m.get("shared", mid)
    assert (got.id, got.content) == (mid, content)
    carried(traffic.since(mark), seq, f"get {mid}")

    mark = traffic.mark()
    found = m.search("shared", embedding=vec(DIM, n), k=1000)
    assert not found.partial
    assert mid in {h.id for h in found}, f"a search right after {mid} (at {seq}) missed it"
    carried(traffic.since(mark), seq, f"search after {mid}")

    mark = traffic.mark()
    filtered = m.search("shared", k=1000)
    assert not filtered.partial
    assert mid in {h.id for h in filtered}, f"a filtered listing right after {mid} missed it"
    carried(traffic.since(mark), seq, f"filtered listing after {mid}")

    mark = traffic.mark()
    assert mid in {mem.id for mem in m.iter_list("shared", page_size=100)}, f"list after {mid}"
    carried(traffic.since(mark), seq, f"listing after {mid}")
    return Acked(mid, content, seq, tries, acked_at)


def cluster_view(c: EtcdCluster) -> dict[str, Any]:
    """The control plane's ``GET /v1/cluster``: every node (down or not) and every stored
    partition's replica set by the ring of the current layout, owner first."""
    assert c.control is not None
    with httpx.Client(timeout=10.0, trust_env=False) as http:
        answer = http.get(f"{c.control.url}/v1/cluster")
    answer.raise_for_status()
    view: dict[str, Any] = answer.json()
    return view


def replica_set(view: dict[str, Any], partition: str) -> dict[str, Any]:
    for rs in view["replica_sets"]:
        if rs["partition"] == partition:
            found: dict[str, Any] = rs
            return found
    raise AssertionError(f"{partition} has no replica set: {view['replica_sets']}")


def wait_failover(c: EtcdCluster, partition: str, victim: str, timeout: float) -> dict[str, Any]:
    """Waits until ``victim`` is marked down and ``partition`` has another owner; the view."""
    deadline = time.monotonic() + timeout
    while True:
        view = cluster_view(c)
        down = any(n["id"] == victim and n["down"] for n in view["nodes"])
        if down and replica_set(view, partition)["replicas"][0] != victim:
            return view
        assert time.monotonic() < deadline, f"no failover in {timeout}s: {view}\n{c.logs_tail()}"
        time.sleep(0.2)


def metric(procs: list[Proc], name: str, label: str = "") -> float:
    """The sum of counter ``name`` (its series with ``label``, e.g. ``role="replica"``) over
    the ``/metrics`` of ``procs`` (0 where it was never counted)."""
    total = 0.0
    with httpx.Client(timeout=10.0, trust_env=False) as http:
        for proc in procs:
            for line in http.get(f"{proc.url}/metrics").text.splitlines():
                series, _, value = line.rpartition(" ")
                if series.split("{")[0] == name and label in series:
                    total += float(value)
    return total


def replica_reads(shards: list[Proc]) -> float:
    """Reads the (running) ``shards`` answered as followers so far."""
    return metric(shards, "memring_shard_reads_total", 'role="replica"')


@pytest.mark.slow
def test_a_token_reads_a_write_after_a_failover(replicated: EtcdCluster) -> None:
    """R = 3, W = 2: reads go to a follower first (the owner answers when the follower is
    behind the token). One client writes to ``shared`` and reads each write back at once; the
    primary of the partition is SIGKILLed; three writes made in the failover window are refused
    (503, Retry-After) and retried by the client until the new owner acknowledges them; every
    acknowledged write, before, during and after, is read back at once and at the end, each
    read carrying a token that names the write's position or a later one."""
    c = replicated
    tenant = new_tenant("ryw")
    partition = f"{tenant}/shared"
    traffic = Traffic()
    # Patient enough for a failover: the lease (5 s) expires, the control plane's next round
    # marks the node down; until then a write to the partition is a 503 with Retry-After: 1.
    retry = RetryPolicy(max_attempts=100, max_elapsed=60.0, base_delay=0.1, max_delay=1.0)
    http = httpx.Client(event_hooks={"response": [traffic.hook]})
    with http, Memring(c.urls()[0], c.admin_key, tenant, retry=retry, http_client=http) as m:
        assert m.read_token() is None
        by_followers = replica_reads(c.shards)
        before = [write_and_read(m, traffic, f"before-{n}", n) for n in range(10)]
        seqs = [a.seq for a in before]
        assert seqs == sorted(set(seqs)), f"the token did not advance with each write: {seqs}"
        assert replica_reads(c.shards) > by_followers, "no read was answered by a follower"
        # The token steers reads: one naming a position no follower has goes to the owner.
        fallbacks = metric(c.routers, "memring_router_replica_fallbacks_total")
        ahead = f"shared={seqs[-1] + 1000}"
        assert m.get("shared", "before-0", read_token=ahead).content == before[0].content
        assert metric(c.routers, "memring_router_replica_fallbacks_total") == fallbacks + 1

        view = cluster_view(c)
        assert (view["replication_factor"], view["write_quorum"]) == (3, 2), view
        replicas = replica_set(view, partition)
        assert len(replicas["replicas"]) == 3, replicas
        assert not replicas["down"], replicas
        owner = replicas["replicas"][0]
        victim = next(s for s in c.shards if s.name == owner)
        assert m.ring()["epoch"] == view["epoch"], "the router routes by this layout"

        assert victim.popen is not None
        victim.popen.kill()
        victim.popen.wait(timeout=10)
        killed_at = time.monotonic()

        def in_window(i: int) -> Acked:
            time.sleep(0.5 * i)
            return write_and_read(m, traffic, f"during-{i}", 10 + i)

        with ThreadPoolExecutor(3) as pool:
            during = list(pool.map(in_window, range(3)))
        for a in during:
            refused = [t for t in a.tries if t.status == 503]
            assert refused, f"the write of {a.id} was never refused: {a.tries}"
            assert all(t.retry_after and float(t.retry_after) >= 1 for t in refused), a.tries
            assert 200 <= a.tries[-1].status < 300, a.tries
            assert a.seq > max(seqs), f"{a.id} at {a.seq}, before the kill up to {max(seqs)}"
        # Not necessarily distinct: a try whose answer was lost (a 503 after the quorum wait)
        # may have been applied, and the retry of the same write is then answered as unchanged
        # with the partition's position at that moment, which a later write may share.

        view = wait_failover(c, partition, owner, timeout=30.0)
        new_owner = replica_set(view, partition)["replicas"][0]
        assert m.ring()["epoch"] >= view["epoch"], "the router routes by the failover's layout"
        survivors = [s for s in c.shards if s is not victim]

        by_followers = replica_reads(survivors)
        after = [write_and_read(m, traffic, f"after-{n}", 20 + n) for n in range(10)]
        after_seqs = [a.seq for a in after]
        assert after_seqs == sorted(set(after_seqs)), after_seqs
        assert after_seqs[0] > max(a.seq for a in during), (after_seqs, during)
        followers_after = replica_reads(survivors) - by_followers

        acked = [*before, *during, *after]
        assert parse_token(m.read_token() or "") == {"shared": after_seqs[-1]}
        for a in acked:
            assert m.get("shared", a.id).content == a.content
        everything = {a.id: a.content for a in acked}
        found = m.search("shared", embedding=vec(DIM, 0), k=1000)
        assert not found.partial
        assert {h.id: h.content for h in found} == everything
        listed = {mem.id: mem.content for mem in m.iter_list("shared", page_size=7)}
        assert listed == everything
        print(
            f"{partition}: {owner} killed, {new_owner} owns it; writes in the window acked "
            f"{[round(a.acked_at - killed_at, 1) for a in during]} s after the kill after "
            f"{[len(a.tries) for a in during]} tries; positions {seqs[0]}..{after_seqs[-1]}; "
            f"{followers_after:.0f} reads answered by the follower after the failover"
        )
