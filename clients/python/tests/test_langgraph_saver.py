"""MemringSaver against a replicated cluster (three copies, two routers, keys required):
LangGraph's own checkpointer conformance suite, then what the suite does not reach (payloads
over memring's 1 MiB content limit, the sync methods, a second router reading a first's
writes)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator

import pytest
from langgraph.checkpoint.base import Checkpoint
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.report import ProgressCallbacks
from langgraph.checkpoint.conformance.test_utils import (
    generate_checkpoint,
    generate_config,
    generate_metadata,
)

from memring import Memring
from memring.langgraph import MemringSaver
from memring.langgraph.checkpoint import checkpoint_scope, data_scope

from ._etcd import EtcdCluster

pytestmark = pytest.mark.slow

IMPLEMENTED_EXTENDED = {"copy_thread", "prune"}
"""The extended capabilities MemringSaver implements (delete_for_runs is not: see
docs/client.md, "LangGraph")."""


def _tenant() -> str:
    return f"lg-{uuid.uuid4().hex[:12]}"


@pytest.mark.asyncio
async def test_conformance(etcd_cluster: EtcdCluster, capsys: pytest.CaptureFixture[str]) -> None:
    tenant = _tenant()
    url = etcd_cluster.urls()[0]

    @checkpointer_test(name="MemringSaver")
    async def factory() -> AsyncGenerator[MemringSaver, None]:
        async with MemringSaver(url, tenant, api_key=etcd_cluster.admin_key) as saver:
            yield saver

    report = await validate(factory, progress=ProgressCallbacks.verbose())
    report.print_report()
    with capsys.disabled():
        print("\n" + capsys.readouterr().out)
    failures = {k: r.failures for k, r in report.results.items() if r.failures}
    assert report.passed_all_base(), failures
    for cap in IMPLEMENTED_EXTENDED:
        assert report.results[cap].passed is True, (cap, failures)
    assert report.results["delete_for_runs"].detected is False


def _checkpoint(values: dict[str, object]) -> Checkpoint:
    cp = generate_checkpoint(channel_values=values)
    cp["channel_versions"] = dict.fromkeys(values, 1)
    return cp


def test_sync_methods_and_big_payloads(etcd_cluster: EtcdCluster) -> None:
    """Values and writes over 1 MiB are cut into parts and come back whole, through the sync
    methods, and a saver on the other router (another client) reads them."""
    tenant = _tenant()
    big = "x" * (2 << 20) + "end"
    blob = bytes(range(256)) * 9000
    config = generate_config("t1")
    key = etcd_cluster.admin_key
    with MemringSaver(etcd_cluster.urls()[0], tenant, api_key=key) as saver:
        stored = saver.put(
            config,
            _checkpoint({"big": big, "blob": blob}),
            generate_metadata(),
            {"big": 1, "blob": 1},
        )
        saver.put_writes(stored, [("w", big), ("w2", "small")], "task-1", "a:b")
        saver.put_writes(stored, [("w", "ignored: the task wrote index 0 already")], "task-1")
        got = saver.get_tuple(generate_config("t1"))
        assert got is not None
        assert got.checkpoint["channel_values"] == {"big": big, "blob": blob}
        assert [(w[1], len(str(w[2]))) for w in got.pending_writes or []] == [
            ("w", len(big)),
            ("w2", 5),
        ]
        assert len(list(saver.list(generate_config("t1")))) == 1
        # Checkpoints, values, writes and their parts are stored without vectors.
        with Memring(etcd_cluster.urls()[0], key, tenant) as m:
            stored_memories = [
                m.get(scope, memory.id)
                for scope in (checkpoint_scope("t1"), data_scope("t1"))
                for memory in m.iter_list(scope)
            ]
            assert len(stored_memories) >= 6
            assert all(mem.embedding is None for mem in stored_memories)
    with MemringSaver(etcd_cluster.urls()[1], tenant, api_key=key) as other:
        seen = other.get_tuple(stored)
        assert seen is not None
        assert seen.checkpoint["channel_values"]["big"] == big
        other.delete_thread("t1")
        assert other.get_tuple(generate_config("t1")) is None
        with Memring(etcd_cluster.urls()[1], key, tenant) as m:
            for scope in (checkpoint_scope("t1"), data_scope("t1")):
                assert len(m.list(scope)) == 0


def test_history_beyond_one_page(etcd_cluster: EtcdCluster) -> None:
    """More checkpoints than a list page and a search window: newest first, `before` pages."""
    tenant = _tenant()
    with MemringSaver(etcd_cluster.urls()[0], tenant, api_key=etcd_cluster.admin_key) as saver:
        parent = None
        ids = []
        for step in range(130):
            cfg = generate_config("long")
            if parent is not None:
                cfg["configurable"]["checkpoint_id"] = parent["configurable"]["checkpoint_id"]
            cp = _checkpoint({"n": step})
            cp["channel_versions"] = {"n": step + 1}
            parent = saver.put(cfg, cp, generate_metadata(step=step), {"n": step + 1})
            ids.append(cp["id"])
        listed = [t.checkpoint["id"] for t in saver.list(generate_config("long"))]
        assert listed == ids[::-1]
        latest = saver.get_tuple(generate_config("long"))
        assert latest is not None
        assert latest.checkpoint["channel_values"] == {"n": 129}
        before = generate_config("long", checkpoint_id=ids[20])
        page = [
            t.checkpoint["id"] for t in saver.list(generate_config("long"), before=before, limit=5)
        ]
        assert page == ids[19:14:-1]
        with pytest.raises(NotImplementedError, match="thread_id"):
            list(saver.list(None))
