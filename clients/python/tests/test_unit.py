"""The client's pure parts, without a server: tokens, conditions, backoff, error mapping,
batch chunking. (Everything that talks HTTP is tested against real processes elsewhere.)"""

from __future__ import annotations

import json
import random
from typing import Any

import httpx
import pytest

import memring
from memring import RetryPolicy
from memring._errors import error_from_response, parse_retry_after
from memring._requests import chunk_items, if_match_header, next_page_k
from memring._retry import Attempts
from memring._tokens import ReadTokens, parse_token


def test_tokens_merge_keeping_the_highest_position_per_scope() -> None:
    assert memring.merge_tokens("shared=4,agent:a=2", None, "shared=3,agent:b=9") == (
        "agent:a=2,agent:b=9,shared=4"
    )
    assert memring.merge_tokens(None, "") is None
    assert parse_token("shared=x,=3,agent:a=5, shared=2") == {"agent:a": 5, "shared": 2}
    tokens = ReadTokens()
    tokens.note("t1", "shared=5")
    tokens.note("t1", "shared=3,agent:a=1")
    tokens.note("t2", "shared=99")
    assert tokens.header("t1") == "agent:a=1,shared=5"
    assert tokens.header("t1", ["shared", "global"]) == "shared=5"
    assert tokens.header("t1", ["agent:zzz"]) is None
    tokens.forget("t1")
    assert tokens.header("t1") is None
    assert tokens.header("t2") == "shared=99"


def test_if_match_takes_versions_etags_and_star() -> None:
    assert if_match_header(3) == '"3"'
    assert if_match_header('"3"') == '"3"'
    assert if_match_header("3") == '"3"'
    assert if_match_header("*") == "*"
    with pytest.raises(ValueError, match="if_match"):
        if_match_header("three")
    with pytest.raises(TypeError):
        if_match_header(True)


def test_backoff_is_full_jitter_capped_and_floored_by_retry_after() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=4.0)
    rng = random.Random(7)
    for retry in range(10):
        ceiling = min(4.0, 0.5 * 2**retry)
        waits = [policy.backoff(retry, None, rng) for _ in range(200)]
        assert all(0 <= w <= ceiling for w in waits)
        assert max(waits) > ceiling * 0.8, "full jitter spans the whole range"
    assert all(policy.backoff(0, 3.0, rng) >= 3.0 for _ in range(50))


def test_attempts_stop_at_the_budget() -> None:
    limited = memring.RateLimited("slow down", status=429, code="rate_limited", retry_after=2.0)
    unavailable = memring.Unavailable("down", status=503, code="unavailable", retry_after=1.0)
    a = Attempts(RetryPolicy(max_attempts=3, max_elapsed=100), started=0.0, rng=random.Random())
    a.tries = 1
    assert a.next_wait(limited, retry_safe=False, sent=True, now=0.0) == pytest.approx(2.0, 0.5)
    a.tries = 3
    assert a.next_wait(limited, retry_safe=True, sent=True, now=0.0) is None, "max_attempts"
    b = Attempts(RetryPolicy(max_elapsed=5), started=0.0, rng=random.Random())
    b.tries = 1
    assert b.next_wait(limited, retry_safe=True, sent=True, now=4.0) is None, "max_elapsed"
    c = Attempts(RetryPolicy(), started=0.0, rng=random.Random())
    c.tries = 1
    assert c.next_wait(unavailable, retry_safe=False, sent=True, now=0) is None, "maybe applied"
    assert c.next_wait(unavailable, retry_safe=True, sent=True, now=0) is not None
    assert c.ambiguous
    bad = memring.BadRequest("no", status=400, code="invalid_scope")
    assert c.next_wait(bad, retry_safe=True, sent=True, now=0) is None
    refused = memring.TransportError("refused", code="transport_error")
    assert c.next_wait(refused, retry_safe=False, sent=False, now=0) is not None
    assert c.next_wait(refused, retry_safe=False, sent=True, now=0) is None


def _response(status: int, body: object, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, content=json.dumps(body).encode(), headers=headers or {})


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (400, "invalid_scope", memring.BadRequest),
        (401, "unauthorized", memring.Unauthorized),
        (403, "forbidden", memring.Forbidden),
        (403, "quota_exceeded", memring.QuotaExceeded),
        (404, "not_found", memring.NotFound),
        (405, "method_not_allowed", memring.BadRequest),
        (409, "conflict", memring.Conflict),
        (412, "precondition_failed", memring.PreconditionFailed),
        (413, "payload_too_large", memring.PayloadTooLarge),
        (429, "rate_limited", memring.RateLimited),
        (500, "internal", memring.ServerError),
        (503, "unavailable", memring.Unavailable),
    ],
)
def test_every_status_maps_to_its_exception(
    status: int, code: str, cls: type[memring.MemringError]
) -> None:
    body = {"error": {"code": code, "message": "m", "details": {"current_version": 3}}}
    err = error_from_response(_response(status, body, {"retry-after": "2"}))
    assert type(err) is cls
    assert (err.status, err.code, err.message, err.details) == (
        status,
        code,
        "m",
        {"current_version": 3},
    )
    assert err.retry_after == 2.0
    assert str(err) == f"{status} {code}: m"


def test_an_answer_that_is_not_json_still_makes_an_error() -> None:
    err = error_from_response(httpx.Response(502, content=b"Bad Gateway"))
    assert isinstance(err, memring.ServerError)
    assert (err.code, err.message) == ("http_502", "Bad Gateway")
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert parse_retry_after("soon") is None


def test_chunks_hold_at_most_the_items_and_bytes_asked_and_every_item_gets_an_id() -> None:
    items = [{"scope": "shared", "content": "x" * (i % 50)} for i in range(2500)]
    chunks = list(chunk_items(items, 1000, 1 << 30))
    assert [len(c) for c in chunks] == [1000, 1000, 500]
    ids = {item["id"] for chunk in chunks for item, _ in chunk}
    assert len(ids) == 2500
    small = list(chunk_items(items[:100], 1000, 2000))
    assert all(sum(len(enc) + 1 for _, enc in c) <= 2000 for c in small)
    assert sum(len(c) for c in small) == 100
    kept = next(iter(chunk_items([{"scope": "s", "content": "c", "id": "mine"}], 10, 100)))
    assert kept[0][0]["id"] == "mine"


def test_embed_is_sent_only_when_given() -> None:
    base = memring.Memring("http://127.0.0.1:9", tenant="t")
    plain = json.loads(base._add("shared", "x", **_ADD_DEFAULTS).body or b"")
    assert "embed" not in plain
    off = json.loads(base._add("shared", "x", **{**_ADD_DEFAULTS, "embed": False}).body or b"")
    assert off["embed"] is False
    on = json.loads(base._add("shared", "x", **{**_ADD_DEFAULTS, "embed": True}).body or b"")
    assert on["embed"] is True
    items: list[memring.MemoryInput] = [
        {"scope": "s", "content": "a", "embed": False},
        {"scope": "s", "content": "b", "embed": None},
        {"scope": "s", "content": "c"},
    ]
    [chunk] = chunk_items(items, 10, 1 << 20)
    assert [json.loads(enc).get("embed") for _, enc in chunk] == [False, None, None]
    assert ["embed" in item for item, _ in chunk] == [True, False, False]
    base.close()


_ADD_DEFAULTS: dict[str, Any] = {
    "id": None,
    "embedding": None,
    "embedding_model": None,
    "metadata": None,
    "ttl_seconds": None,
    "embed": None,
    "if_match": None,
    "if_none_match": False,
    "idempotency_key": None,
    "tenant": None,
}


def test_search_pages_never_pass_the_window() -> None:
    assert next_page_k(0, 100, 0, None) == 100
    assert next_page_k(950, 100, 950, None) == 50
    assert next_page_k(1000, 100, 1000, None) == 0
    assert next_page_k(20, 100, 20, 25) == 5
