"""Real memring processes for the tests: shard nodes, routers and the control plane on the
embedded ring store, each on a free 127.0.0.1 port with its own log file in a temp dir.

The binaries come from ``$MEMRING_BIN_DIR``, else ``$CARGO_TARGET_DIR/release``, else
``<repo>/target/release``. Every process started here is stopped by :meth:`LocalCluster.stop`
(fixture teardown) and, as a last resort, at interpreter exit.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[3]
BINARIES = ("memring-shard", "memring-router", "memring-control", "shardctl")

_live: set[subprocess.Popen[bytes]] = set()


def _kill_leftovers() -> None:
    for popen in list(_live):
        if popen.poll() is None:
            popen.kill()
            popen.wait(timeout=10)


atexit.register(_kill_leftovers)


def bin_dir() -> Path:
    """Where the memring binaries are."""
    if os.environ.get("MEMRING_BIN_DIR"):
        return Path(os.environ["MEMRING_BIN_DIR"])
    if os.environ.get("CARGO_TARGET_DIR"):
        return Path(os.environ["CARGO_TARGET_DIR"]) / "release"
    return REPO / "target" / "release"


def missing_binaries() -> list[str]:
    """The binaries that are not there (empty when all are)."""
    return [b for b in BINARIES if not os.access(bin_dir() / b, os.X_OK)]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def child_env() -> dict[str, str]:
    """The environment of a child process: ours without MEMRING_* settings that would change
    how it runs (a developer's MEMRING_AUTH, MEMRING_CONFIG, ...)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMRING_")}
    env.setdefault("RUST_LOG", "warn")
    return env


class Proc:
    """One memring process listening on ``addr``."""

    def __init__(self, name: str, binary: str, args: Sequence[str], addr: str, logs: Path):
        self.name = name
        self.binary = bin_dir() / binary
        self.args = list(args)
        self.addr = addr
        self.log_path = logs / f"{name}.log"
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.addr}"

    def start(self, ready_timeout: float = 60.0) -> Proc:
        """Starts the process and waits until ``GET /ready`` answers 200."""
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                [str(self.binary), *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=child_env(),
            )
        _live.add(self.popen)
        self.wait_ready(ready_timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0, trust_env=False) as http:
            while True:
                if self.popen is not None and self.popen.poll() is not None:
                    raise RuntimeError(
                        f"{self.name} exited with {self.popen.returncode}:\n{self.log_tail()}"
                    )
                try:
                    if http.get(f"{self.url}/ready").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{self.name} was not ready in {timeout}s:\n{self.log_tail()}"
                    )
                time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        popen = self.popen
        if popen is None:
            return
        if popen.poll() is None:
            popen.send_signal(signal.SIGTERM)
            try:
                popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait(timeout=10)
        _live.discard(popen)
        self.popen = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


class LocalCluster:
    """Shard nodes, a router and (optionally) the control plane on one embedded ring store."""

    def __init__(
        self,
        root: Path,
        *,
        shards: int = 3,
        router_flags: Sequence[str] = (),
        control: bool = True,
    ) -> None:
        self.root = root
        self.ring_dir = root / "ring"
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.n_shards = shards
        self.router_flags = list(router_flags)
        self.with_control = control
        self.shards: list[Proc] = []
        self.routers: list[Proc] = []
        self.control: Proc | None = None

    @property
    def url(self) -> str:
        """The first router's URL."""
        return self.routers[0].url

    def start(self) -> LocalCluster:
        try:
            for i in range(1, self.n_shards + 1):
                self.start_shard(f"shard-{i}")
            self.start_router("router", self.router_flags)
            self.wait_ring_size(self.n_shards)
            if self.with_control:
                addr = f"127.0.0.1:{free_port()}"
                self.control = Proc(
                    "control",
                    "memring-control",
                    ["--ring-dir", str(self.ring_dir), "serve", "--listen", addr],
                    addr,
                    self.logs,
                ).start()
        except BaseException:
            self.stop()
            raise
        return self

    def start_shard(self, node_id: str, addr: str | None = None) -> Proc:
        addr = addr or f"127.0.0.1:{free_port()}"
        args = ["--node-id", node_id, "--listen", addr]
        args += ["--data-dir", str(self.root / node_id), "--ring-dir", str(self.ring_dir)]
        proc = Proc(node_id, "memring-shard", args, addr, self.logs)
        self.shards.append(proc)
        return proc.start()

    def restart_shard(self, proc: Proc) -> Proc:
        """Starts a stopped shard node again, same id, address and data."""
        return proc.start()

    def start_router(self, name: str, flags: Sequence[str] = ()) -> Proc:
        addr = f"127.0.0.1:{free_port()}"
        args = ["--listen", addr, "--ring-dir", str(self.ring_dir), *flags]
        proc = Proc(name, "memring-router", args, addr, self.logs)
        self.routers.append(proc)
        return proc.start(ready_timeout=120.0)

    def wait_ring_size(self, n: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0, trust_env=False) as http:
            while True:
                ring = http.get(f"{self.url}/v1/ring").json()
                if len(ring.get("nodes") or []) == n:
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the router's ring never reached {n} nodes: {ring}")
                time.sleep(0.05)

    def shardctl(self, *args: str, api_key: str | None = None) -> str:
        """``shardctl --control <control> args``: its standard output, stripped."""
        assert self.control is not None, "this cluster has no control plane"
        env = child_env()
        if api_key:
            env["MEMRING_API_KEY"] = api_key
        done = subprocess.run(
            [str(bin_dir() / "shardctl"), "--control", self.control.url, *args],
            capture_output=True,
            env=env,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"shardctl {list(args)}: {done.stderr.decode(errors='replace')}")
        return done.stdout.decode().strip()

    def logs_tail(self) -> str:
        procs = [*self.shards, *self.routers, *([self.control] if self.control else [])]
        return "\n".join(f"--- {p.name}\n{p.log_tail(15)}" for p in procs)

    def stop(self) -> None:
        """Stops every process this cluster started (routers first)."""
        procs = [*self.routers, *([self.control] if self.control else []), *self.shards]
        for proc in procs:
            try:
                proc.stop()
            except Exception:
                if proc.popen is not None:
                    proc.popen.kill()
