#!/usr/bin/env python3
"""BM25 quality: memring's keyword search against bm25s (an established BM25 library) on the
same corpus and queries, with the same k1 = 1.2, b = 0.75 and Lucene idf.

It starts its own shard node and router (the release binaries, a temp dir, no embedder: the
memories are text only), writes a seeded Zipf-distributed corpus through the router, and asks
every query both of memring (`"mode": "keyword"`, k = 10) and of bm25s over the same tokens
(the corpus is lower-case ASCII words, where memring's Unicode word boundaries and a split on
spaces agree). Prints a Markdown report: mean top-10 overlap (plain, and counting ties at the
tenth score as agreement), the largest score difference, and per-query latency of each.

Then it hands the same corpus and queries to `memring-keyword-bench` (when built: `make bench-bm25`
builds it with tantivy), which puts memring's index beside tantivy in one process and prints a
second table.

Usage: scripts/bm25-overlap.py [--docs N] [--queries N] [--seed S]
Needs bm25s and numpy (`make bench-bm25` installs them into ~/.cache/memring/bench-venv).
"""

import argparse
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import bm25s
import numpy as np

K1, B = 1.2, 0.75


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(url: str, body=None, method=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data else "GET"))
    req.add_header("content-type", "application/json")
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read() or b"null")


def wait_ready(url: str, proc: subprocess.Popen, name: str) -> None:
    for _ in range(300):
        if proc.poll() is not None:
            sys.exit(f"bm25-overlap: {name} exited early")
        try:
            urllib.request.urlopen(url + "/ready", timeout=1)
            return
        except Exception:
            time.sleep(0.1)
    sys.exit(f"bm25-overlap: {name} did not become ready")


def corpus(docs: int, queries: int, seed: int):
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = sorted({"".join(rng.choice(letters) for _ in range(rng.randint(3, 9))) for _ in range(9000)})
    rng.shuffle(vocab)
    vocab = vocab[:8000]
    weights = [1.0 / (rank + 1) ** 1.1 for rank in range(len(vocab))]
    texts = [" ".join(rng.choices(vocab, weights, k=rng.randint(10, 80))) for _ in range(docs)]
    asks = []
    for _ in range(queries):
        words = set()
        want = rng.randint(2, 4)
        while len(words) < want:
            words.add(rng.choices(vocab, weights)[0])
        asks.append(sorted(words))
    return texts, asks


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=20000)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--bin-dir", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "release"))
    args = ap.parse_args()
    texts, asks = corpus(args.docs, args.queries, args.seed)

    tmp = Path(tempfile.mkdtemp(prefix="memring-bm25-"))
    shard_port, router_port = free_port(), free_port()
    log = (tmp / "log.txt").open("w")
    ring = str(tmp / "ring")
    shard = subprocess.Popen([f"{args.bin_dir}/memring-shard", "--node-id", "s1", "--listen", f"127.0.0.1:{shard_port}",
                              "--data-dir", str(tmp / "s1"), "--ring-dir", ring], stdout=log, stderr=log)
    procs = [shard]
    try:
        wait_ready(f"http://127.0.0.1:{shard_port}", shard, "shard")
        router = subprocess.Popen([f"{args.bin_dir}/memring-router", "--listen", f"127.0.0.1:{router_port}",
                                   "--ring-dir", ring, "--embedder", "none"], stdout=log, stderr=log)
        procs.append(router)
        base = f"http://127.0.0.1:{router_port}"
        wait_ready(base, router, "router")
        for start in range(0, len(texts), 1000):
            items = [{"id": f"d{i}", "scope": "shared", "content": texts[i]} for i in range(start, min(start + 1000, len(texts)))]
            answer = call(f"{base}/v1/tenants/bm25/memories:batch", {"items": items})
            assert all("error" not in r for r in answer["results"]), answer

        retriever = bm25s.BM25(k1=K1, b=B, method="lucene")
        started = time.perf_counter()
        retriever.index([t.split() for t in texts], show_progress=False)
        index_secs = time.perf_counter() - started

        overlaps, tie_overlaps, worst_gap = [], [], 0.0
        ours_ms, theirs_ms = [], []
        for words in asks:
            t0 = time.perf_counter()
            answer = call(f"{base}/v1/tenants/bm25/memories/search",
                          {"scopes": ["shared"], "query": " ".join(words), "mode": "keyword", "k": 10})
            ours_ms.append((time.perf_counter() - t0) * 1000)
            ours = [(int(h["id"][1:]), h["score"]) for h in answer["results"]]
            t0 = time.perf_counter()
            scores = retriever.get_scores(words)
            theirs_ms.append((time.perf_counter() - t0) * 1000)
            top = [int(i) for i in np.argsort(-scores, kind="stable")[:10] if scores[i] > 0]
            if not top and not ours:
                overlaps.append(1.0)
                tie_overlaps.append(1.0)
                continue
            denominator = max(len(top), len(ours))
            overlaps.append(len(set(top) & {d for d, _ in ours}) / denominator)
            tenth = scores[top[-1]] if top else 0.0
            agree = sum(1 for d, _ in ours if d in top or abs(scores[d] - tenth) <= 1e-5 * max(1.0, tenth))
            tie_overlaps.append(min(agree, denominator) / denominator)
            # bm25s (like Lucene since 8) leaves out BM25's constant (k1 + 1) numerator factor,
            # which changes no ranking; memring keeps the textbook form.
            for d, s in ours:
                theirs = (K1 + 1) * float(scores[d])
                worst_gap = max(worst_gap, abs(theirs - s) / max(1e-9, theirs))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)

    def p(xs, q):
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(q * len(xs)))]

    print(f"### BM25 against bm25s {bm25s.__version__} (k1 {K1}, b {B}, Lucene idf)\n")
    print(f"{len(texts):,} memories of 10–80 words (Zipf 1.1 over 8,000 words), {len(asks)} queries of 2–4 words, seed {args.seed}.\n")
    print("| measure | value |\n|---|---|")
    print(f"| mean top-10 overlap | {statistics.mean(overlaps):.4f} |")
    print(f"| mean top-10 overlap, ties at the tenth score counted as agreement | {statistics.mean(tie_overlaps):.4f} |")
    print(f"| queries with overlap < 1 | {sum(1 for o in overlaps if o < 1)} of {len(overlaps)} |")
    print(f"| largest relative score difference on a returned memory (bm25s × (k1 + 1)) | {worst_gap:.2e} |")
    print(f"| memring keyword search through the router, p50 / p99 | {p(ours_ms, 0.5):.2f} / {p(ours_ms, 0.99):.2f} ms |")
    print(f"| bm25s `get_scores` in-process, p50 / p99 | {p(theirs_ms, 0.5):.2f} / {p(theirs_ms, 0.99):.2f} ms |")
    print(f"| bm25s indexing | {index_secs:.1f} s |")

    peer = Path(args.bin_dir) / "memring-keyword-bench"
    if peer.exists():
        corpus_file = tmp / "corpus.json"
        corpus_file.write_text(json.dumps({"texts": texts, "queries": asks}))
        print("\n### memring's index against tantivy, in one process, on the same corpus and queries\n")
        sys.stdout.flush()
        subprocess.run([str(peer), "--corpus", str(corpus_file)], check=True)
    else:
        print(f"\n({peer} not built: `make bench-bm25` builds it with tantivy)")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
