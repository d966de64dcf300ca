"""A replicated memring cluster in cluster mode, for the tests: a private etcd, three shard
nodes in the layout with three copies of every partition, the control plane (failover), and two
routers with the built-in embedder that require API keys — locked as in production (the cluster
token on every process, an admin key made by ``memring-control keys bootstrap``).

Everything runs on free ``127.0.0.1`` ports under one temporary directory, one log per process;
:meth:`EtcdCluster.stop` stops it all (routers first, etcd last).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import httpx

from ._cluster import Proc, _live, bin_dir, child_env, free_port

TEST_SHARD_FLAGS = ("--log-keep-secs", "1", "--lease-ttl-secs", "5")
"""As the Rust harness's cluster tests run shard nodes (tests/src/etcd.rs): logs trimmed after
one second, so replication runs with trimmed logs under it; 5 s leases."""


class Etcd(Proc):
    """etcd 3.4 (Debian's ``etcd-server``), ready when ``/health`` answers."""

    def __init__(self, root: Path, logs: Path) -> None:
        client, peer = free_port(), free_port()
        self.peer = f"http://127.0.0.1:{peer}"
        super().__init__("etcd", "etcd", [], f"127.0.0.1:{client}", logs)
        found = shutil.which("etcd")
        if found is None:
            raise RuntimeError("etcd is not installed (Debian: apt-get install etcd-server)")
        self.binary = Path(found)
        self.args = [
            "--name",
            "t",
            "--data-dir",
            str(root / "etcd"),
            "--listen-client-urls",
            self.url,
            "--advertise-client-urls",
            self.url,
            "--listen-peer-urls",
            self.peer,
            "--initial-advertise-peer-urls",
            self.peer,
            "--initial-cluster",
            f"t={self.peer}",
            "--initial-cluster-state",
            "new",
        ]

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0, trust_env=False) as http:
            while True:
                if self.popen is not None and self.popen.poll() is not None:
                    raise RuntimeError(f"etcd exited:\n{self.log_tail()}")
                try:
                    if http.get(f"{self.url}/health").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"etcd was not healthy in {timeout}s:\n{self.log_tail()}")
                time.sleep(0.1)


class EtcdCluster:
    """etcd, ``shards`` shard nodes with ``copies`` copies of every partition, the control
    plane and ``routers`` routers (API keys required; :attr:`admin_key` works everywhere)."""

    def __init__(
        self,
        root: Path,
        *,
        shards: int = 3,
        copies: int = 3,
        routers: int = 2,
        router_flags: tuple[str, ...] = ("--embedder", "builtin"),
    ) -> None:
        self.root = root
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.n_shards, self.copies, self.n_routers = shards, copies, routers
        self.router_flags = list(router_flags)
        self.token_file = root / "cluster-token"
        self.etcd = Etcd(root, self.logs)
        self.shards: list[Proc] = []
        self.routers: list[Proc] = []
        self.control: Proc | None = None
        self.admin_key = ""

    @property
    def etcd_url(self) -> str:
        return self.etcd.url

    def urls(self) -> list[str]:
        return [r.url for r in self.routers]

    def control_cli(self, *args: str) -> str:
        """``memring-control --etcd URL args``: its standard output, stripped."""
        done = subprocess.run(
            [str(bin_dir() / "memring-control"), "--etcd", self.etcd_url, *args],
            capture_output=True,
            env=child_env(),
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"memring-control {list(args)}: {done.stderr.decode(errors='replace')}"
            )
        return done.stdout.decode().strip()

    def start(self) -> EtcdCluster:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.etcd.start(ready_timeout=30)
        self.control_cli("token", "generate", str(self.token_file))
        token = ["--cluster-token-file", str(self.token_file)]
        for i in range(1, self.n_shards + 1):
            addr = f"127.0.0.1:{free_port()}"
            args = ["--node-id", f"shard-{i}", "--listen", addr]
            args += ["--data-dir", str(self.root / f"shard-{i}"), "--etcd", self.etcd_url]
            shard = Proc(
                f"shard-{i}", "memring-shard", [*args, *token, *TEST_SHARD_FLAGS], addr, self.logs
            )
            self.shards.append(shard.start())
            self.control_cli("layout", "add-node", f"shard-{i}", addr)
        if self.copies > 1:
            self.control_cli("layout", "set-replication", str(self.copies))
        self.admin_key = self.control_cli("keys", "bootstrap", "--label", "python tests")
        addr = f"127.0.0.1:{free_port()}"
        self.control = Proc(
            "control",
            "memring-control",
            [
                "--etcd",
                self.etcd_url,
                *token,
                "serve",
                "--listen",
                addr,
                "--lease-ttl-secs",
                "2",
                "--auth",
                "false",
            ],
            addr,
            self.logs,
        ).start()
        for r in range(1, self.n_routers + 1):
            addr = f"127.0.0.1:{free_port()}"
            args = ["--listen", addr, "--etcd", self.etcd_url, *token, *self.router_flags]
            self.routers.append(
                Proc(f"router-{r}", "memring-router", args, addr, self.logs).start(
                    ready_timeout=120
                )
            )
        for router in self.routers:
            self.wait_writable(router.url)

    def wait_writable(self, url: str, timeout: float = 60.0) -> None:
        """Waits until a replicated write through ``url`` is acknowledged and readable."""
        deadline = time.monotonic() + timeout
        headers = {"authorization": f"Bearer {self.admin_key}"}
        body = {"id": "probe", "scope": "shared", "content": "", "embedding": [1.0]}
        last = ""
        with httpx.Client(timeout=10.0, trust_env=False, headers=headers) as http:
            while time.monotonic() < deadline:
                try:
                    w = http.post(f"{url}/v1/tenants/probe/memories", json=body)
                    if w.status_code < 300:
                        r = http.get(
                            f"{url}/v1/tenants/probe/memories/probe", params={"scope": "shared"}
                        )
                        if r.status_code == 200:
                            return
                        last = f"read {r.status_code} {r.text}"
                    else:
                        last = f"write {w.status_code} {w.text}"
                except httpx.TransportError as e:
                    last = repr(e)
                time.sleep(0.2)
        raise RuntimeError(f"{url} never took a write: {last}\n{self.logs_tail()}")

    def logs_tail(self) -> str:
        procs = [*self.shards, *self.routers, *([self.control] if self.control else []), self.etcd]
        return "\n".join(f"--- {p.name}\n{p.log_tail(15)}" for p in procs)

    def stop(self) -> None:
        procs = [*self.routers, *([self.control] if self.control else []), *self.shards, self.etcd]
        for proc in procs:
            try:
                proc.stop()
            except Exception:
                if proc.popen is not None:
                    proc.popen.kill()
                    _live.discard(proc.popen)
