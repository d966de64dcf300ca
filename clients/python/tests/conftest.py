"""Fixtures: one real local cluster for the session (three shard nodes, a router with the
built-in embedder, the control plane), extra routers on its ring store for auth and body
limits, and a one-node cluster whose node the 503 tests stop. Each test gets a tenant of its
own, so tests never see each other's memories."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import httpx
import pytest
import pytest_asyncio

from memring import AsyncMemring, Memring

from ._cluster import LocalCluster, Proc, bin_dir, missing_binaries
from ._etcd import EtcdCluster

MODEL = "all-MiniLM-L6-v2"
"""The built-in embedder's model name."""


@pytest.fixture(scope="session", autouse=True)
def _no_client_env() -> Iterator[None]:
    """The client reads MEMRING_URL / MEMRING_API_KEY; a developer's must not leak in."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MEMRING_URL", raising=False)
        mp.delenv("MEMRING_API_KEY", raising=False)
        yield


def _need_binaries() -> None:
    missing = missing_binaries()
    if missing:
        pytest.fail(
            f"memring binaries missing in {bin_dir()}: {', '.join(missing)}. Build them "
            "(`cargo build --release --bins`, which `make test` does) or point MEMRING_BIN_DIR "
            "at them.",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    _need_binaries()
    c = LocalCluster(
        tmp_path_factory.mktemp("cluster"), shards=3, router_flags=["--embedder", "builtin"]
    )
    c.start()
    try:
        yield c
    finally:
        c.stop()


def new_tenant(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def tenant() -> str:
    return new_tenant()


@pytest.fixture
def client(cluster: LocalCluster, tenant: str) -> Iterator[Memring]:
    with Memring(cluster.url, tenant=tenant) as m:
        yield m


@pytest_asyncio.fixture
async def aclient(cluster: LocalCluster, tenant: str) -> AsyncIterator[AsyncMemring]:
    async with AsyncMemring(cluster.url, tenant=tenant) as m:
        yield m


def vec(dim: int, axis: int, noise: float = 0.1) -> list[float]:
    """A vector near the unit vector on ``axis``."""
    return [1.0 if i == axis % dim else noise * ((i * 7 + axis) % 5) / 5 for i in range(dim)]


# -- auth, body limits -----------------------------------------------------------------------


@dataclass
class Auth:
    """A router requiring keys on the session cluster's ring store, and keys for it."""

    router: Proc
    tenant: str
    key: str
    other_tenant: str
    other_key: str
    admin_key: str

    @property
    def url(self) -> str:
        return self.router.url


@pytest.fixture(scope="session")
def auth(cluster: LocalCluster) -> Auth:
    router = cluster.start_router("router-auth", ["--auth", "true", "--embedder", "none"])
    a, b = new_tenant("alpha"), new_tenant("beta")
    key_a = cluster.shardctl("keys", "create", "--tenant", a, "--label", "python tests")
    key_b = cluster.shardctl("keys", "create", "--tenant", b)
    admin = cluster.shardctl("keys", "create", "--admin")
    # Routers reload keys about every second.
    deadline = time.monotonic() + 10
    with httpx.Client(trust_env=False) as http:
        for key in (key_a, admin):
            while (
                http.get(
                    f"{router.url}/v1/tenants/{a}/memories",
                    params={"scope": "shared"},
                    headers={"authorization": f"Bearer {key}"},
                ).status_code
                != 200
            ):
                assert time.monotonic() < deadline, "a new key never worked"
                time.sleep(0.1)
    return Auth(router, a, key_a, b, key_b, admin)


@pytest.fixture(scope="session")
def small_router(cluster: LocalCluster) -> Proc:
    """A router whose request-size limit is 64 KiB."""
    return cluster.start_router(
        "router-small", ["--body-limit-bytes", str(64 * 1024), "--embedder", "none"]
    )


@pytest.fixture(scope="session")
def plain_router(cluster: LocalCluster) -> Proc:
    """A router without an embedder."""
    return cluster.start_router("router-plain", ["--embedder", "none"])


@pytest.fixture(scope="module")
def lonely(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One shard node and a router without replication: stop the node and its partitions
    answer 503 until it is back."""
    _need_binaries()
    c = LocalCluster(
        tmp_path_factory.mktemp("lonely"),
        shards=1,
        router_flags=["--embedder", "none"],
        control=False,
    )
    c.start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="session")
def etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """A replicated cluster on a private etcd (tests/_etcd.py): three shard nodes, three copies
    of every partition, the control plane, two routers with the built-in embedder and keys."""
    _need_binaries()
    c = EtcdCluster(tmp_path_factory.mktemp("etcd-cluster")).start()
    try:
        yield c
    finally:
        c.stop()
