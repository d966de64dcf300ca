"""Read-your-writes tokens: kept per client (per tenant), merged across writes, sent on reads
of the scopes they name."""

from __future__ import annotations

import httpx
import pytest

from memring import Memring
from memring._tokens import parse_token

from ._cluster import LocalCluster
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


@pytest.mark.skip(
    reason="read-your-writes across a failover needs an etcd-replicated cluster "
    "(reads from followers); not started by these tests yet"
)
def test_a_token_reads_a_write_after_a_failover() -> None:
    raise AssertionError("not written yet")
