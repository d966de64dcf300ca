#!/usr/bin/env python3
"""Measures what memring stores per memory, for docs/capacity.md: starts one shard node and a
router (embedded ring store) in a temporary directory, writes N memories of D dimensions
(200-character content, a small metadata object) in batches, loads the partition's index with
a search, reads the shard's resident memory, stops it cleanly (which also writes the HNSW
graph file) and measures the data directory. Usage:
    scripts/measure-capacity.py [N] [DIMS...]      (default 20000 384 768 1536)
Needs the release binaries (make build)."""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

BIN = os.path.join(os.path.dirname(__file__), "..", "target", "release")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait(url):
    for _ in range(300):
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except Exception:
            time.sleep(0.1)
    raise SystemExit(f"{url} never answered")


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def du(path):
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            total += os.path.getsize(os.path.join(root, name))
    return total


def measure(n, dims):
    tmp = tempfile.mkdtemp(prefix="memring-capacity-")
    shard_port, router_port = free_port(), free_port()
    ring = os.path.join(tmp, "ring")
    data = os.path.join(tmp, "shard")
    log = open(os.path.join(tmp, "log"), "w")
    shard = subprocess.Popen([os.path.join(BIN, "memring-shard"), "--node-id", "s1", "--listen", f"127.0.0.1:{shard_port}",
                              "--data-dir", data, "--ring-dir", ring], stdout=log, stderr=log)
    wait(f"http://127.0.0.1:{shard_port}/ready")
    router = subprocess.Popen([os.path.join(BIN, "memring-router"), "--listen", f"127.0.0.1:{router_port}", "--ring-dir", ring],
                              stdout=log, stderr=log)
    wait(f"http://127.0.0.1:{router_port}/ready")
    base = f"http://127.0.0.1:{router_port}/v1/tenants/cap"
    rng = random.Random(7)
    idle = rss_kib(shard.pid)
    for start in range(0, n, 500):
        items = [{"id": f"m{i}", "scope": "shared", "content": "c" * 200, "metadata": {"kind": "fact", "n": i},
                  "embedding": [rng.uniform(-1, 1) for _ in range(dims)]} for i in range(start, min(n, start + 500))]
        post(f"{base}/memories:batch", {"items": items})
    # The first search builds the partition's HNSW graph (503 with Retry-After until it is in).
    for _ in range(600):
        try:
            post(f"{base}/memories/search", {"scopes": ["shared"], "embedding": [0.1] * dims, "k": 10})
            break
        except urllib.error.HTTPError as e:
            if e.code != 503:
                raise
            time.sleep(0.5)
    loaded = rss_kib(shard.pid)
    shard.send_signal(signal.SIGTERM)
    shard.wait(timeout=120)
    router.send_signal(signal.SIGTERM)
    router.wait(timeout=30)
    graphs = du(os.path.join(data, "graphs"))
    rocks = du(data) - graphs
    subprocess.run(["rm", "-rf", tmp])
    return {"n": n, "dims": dims, "rocksdb_bytes_per_memory": rocks / n, "graph_bytes_per_memory": graphs / n,
            "rss_growth_bytes_per_memory": (loaded - idle) * 1024 / n, "idle_rss_mib": idle / 1024}


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    dims = [int(d) for d in sys.argv[2:]] or [384, 768, 1536]
    print("| dims | memories | RocksDB on disk / memory | HNSW graph file / memory | shard RSS growth / memory |")
    print("|---|---|---|---|---|")
    for d in dims:
        m = measure(n, d)
        print(f"| {d} | {n:,} | {m['rocksdb_bytes_per_memory']:,.0f} B | {m['graph_bytes_per_memory']:,.0f} B | "
              f"{m['rss_growth_bytes_per_memory']:,.0f} B |", flush=True)
