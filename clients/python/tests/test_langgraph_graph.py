"""A real LangGraph StateGraph (plain Python nodes, no model) on MemringStore and MemringSaver
from two processes on two routers of a replicated cluster: the first process runs the thread
until it is inside a node of a fan-out whose sibling already finished, and is killed there
(SIGKILL); the second, on the other router, resumes the thread from its checkpoint and pending
writes and finishes it. Every node ran exactly once, and the store written by the first process
is read by the second."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from langchain_core.runnables import RunnableConfig

from memring.langgraph import MemringSaver, MemringStore

from ._etcd import EtcdCluster

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("_langgraph_worker.py")


def _spawn(url: str, key: str, tenant: str, thread: str, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), url, key, tenant, thread, mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_processes_two_routers_resume_after_kill(etcd_cluster: EtcdCluster) -> None:
    tenant, thread = f"lgg-{uuid.uuid4().hex[:10]}", "conversation-1"
    key = etcd_cluster.admin_key
    first_url, second_url = etcd_cluster.urls()
    first = _spawn(first_url, key, tenant, thread, "first")
    try:
        assert first.stdout is not None
        line = first.stdout.readline()
        assert line.strip() == "WAITING", (line, first.stderr.read() if first.stderr else "")
        # c1 finished beside c2: wait until its write is a pending write of the checkpoint.
        config: RunnableConfig = {"configurable": {"thread_id": thread}}
        with MemringSaver(second_url, tenant, api_key=key) as saver:
            deadline = time.monotonic() + 30
            while True:
                tup = saver.get_tuple(config)
                writes = tup.pending_writes if tup else None
                if writes and any(w[2] == ["c1"] for w in writes):
                    break
                assert time.monotonic() < deadline, f"no pending write of c1: {writes}"
                time.sleep(0.1)
        first.kill()  # SIGKILL: no cleanup, no flush
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(timeout=10)

    second = _spawn(second_url, key, tenant, thread, "resume")
    out, err = second.communicate(timeout=180)
    assert second.returncode == 0, err
    lines = dict(line.split(" ", 1) for line in out.strip().splitlines())
    assert json.loads(lines["NEXT"]) == ["c2"], out
    result = json.loads(lines["DONE"])
    assert result == {"log": ["a", "b", "c1", "c2", "d"], "seen": "written by first"}

    with (
        MemringStore(first_url, tenant, api_key=key) as store,
        MemringSaver(first_url, tenant, api_key=key) as saver,
    ):
        runs = {i.key: i.value for i in store.search(("runs",), limit=20)}
        assert runs == {
            "a": {"n": 1, "by": ["first"]},
            "b": {"n": 1, "by": ["first"]},
            "c1": {"n": 1, "by": ["first"]},
            "c2": {"n": 1, "by": ["resume"]},
            "d": {"n": 1, "by": ["resume"]},
        }
        assert store.list_namespaces() == [("notes",), ("runs",)]
        final = saver.get_tuple(config)
        assert final is not None
        assert final.checkpoint["channel_values"]["log"] == ["a", "b", "c1", "c2", "d"]
        history = list(saver.list(config))
        steps = [int(t.metadata.get("step", -9)) for t in history]
        assert steps == sorted(steps, reverse=True)
        assert len(history) >= 5
