"""memring.langgraph without a server: names, orders, escapes, payloads, filters."""

from __future__ import annotations

import random
import re

import pytest

from memring.langgraph import _codec as codec
from memring.langgraph.checkpoint import checkpoint_record_id
from memring.langgraph.store import item_id, namespace_scope, translate_filter

ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


def _text(rng: random.Random, n: int) -> str:
    alphabet = "ab.-_~$ é🙂/:Z09"
    return "".join(rng.choice(alphabet) for _ in range(n))


def test_labels_round_trip_and_are_id_characters() -> None:
    rng = random.Random(7)
    for _ in range(500):
        text = _text(rng, rng.randint(1, 20))
        enc = codec.label(text)
        assert "." not in enc
        assert re.fullmatch(r"[A-Za-z0-9_-]+", enc), enc
        assert codec.unlabel(enc) == text


def test_scopes_and_ids_are_valid_and_distinct() -> None:
    rng = random.Random(8)
    seen: dict[str, tuple[str, ...]] = {}
    for _ in range(500):
        ns = tuple(_text(rng, rng.randint(1, 8)).replace(".", "") or "x" for _ in range(3))
        scope = namespace_scope(ns)
        assert scope.startswith("agent:")
        assert ID.match(scope.removeprefix("agent:")), scope
        assert seen.setdefault(scope, ns) == ns
    long = ("x" * 100, "y" * 100)
    assert ID.match(namespace_scope(long).removeprefix("agent:"))
    assert namespace_scope(long) != namespace_scope(("x" * 100, "y" * 99))
    assert ID.match(item_id("k" * 500))
    assert ID.match(item_id(""))
    # Labels joined by "." cannot be confused with one label holding the separator's code.
    assert namespace_scope(("a", "b")) != namespace_scope(("a_2eb",))


def test_reverse_key_reverses_order() -> None:
    rng = random.Random(9)
    words = ["", "a", "ab", "b", "a\u00e9", "\U0001f642", "1f0c-", "1f0c"]
    words += [_text(rng, rng.randint(0, 12)) for _ in range(300)]
    words = sorted(set(words))
    keys = [codec.reverse_key(w) for w in words]
    assert keys == sorted(keys, reverse=True)
    assert [codec.unreverse_key(k) for k in keys] == words
    assert all(re.fullmatch(r"[0-9a-fz]+", k) for k in keys)


def test_checkpoint_record_ids_sort_newest_first() -> None:
    from langgraph.checkpoint.base.id import uuid6

    ids = [str(uuid6(clock_seq=i)) for i in range(50)]
    assert ids == sorted(ids)
    rids = [checkpoint_record_id(i, "") for i in ids]
    assert all(ID.match(r) for r in rids)
    assert rids == sorted(rids, reverse=True)
    with pytest.raises(ValueError, match="too long"):
        checkpoint_record_id("x" * 60, "")


def test_keys_escape_and_unescape() -> None:
    for key in ["a.b", "~", "~1", "$gt", "$", "a$", "~a", "..", "plain", ""]:
        esc = codec.escape_key(key)
        assert "." not in esc
        assert not esc.startswith("$")
        assert not (len(esc) > 1 and esc[0] == "~" and esc[1].isalpha())
        assert codec.unescape_key(esc) == key
    value = {"a.b": {"$c": [{"d.e": 1}]}, "~x": None}
    assert codec.unescape_value(codec.escape_value(value)) == value


def test_payloads_have_no_words_and_round_trip() -> None:
    rng = random.Random(10)
    for n in [0, 1, 4, 5, 7, 8, 100, 1000]:
        data = bytes(rng.randrange(256) for _ in range(n))
        text = codec.encode_bytes(data)
        assert not re.search(r"\w", text.replace("_", "")), text[:50]
        assert codec.decode_bytes(text) == data
    assert codec.bytes_to_typed(codec.typed_to_bytes(("msgpack", b"\x00\x01"))) == (
        "msgpack",
        b"\x00\x01",
    )
    assert [len(c) for c in codec.chunks(b"x" * 10, 4)] == [4, 4, 2]
    assert codec.chunks(b"") == [b""]


def test_filters_read_literal_keys() -> None:
    assert translate_filter(None) is None
    assert translate_filter({}) is None
    assert translate_filter({"a.b": 1}) == {"a~1b": {"$eq": 1}}
    assert translate_filter({"$weird": "x"}) == {"~2weird": {"$eq": "x"}}
    assert translate_filter({"n": {"$gt": 2, "$lte": 5}}) == {"n": {"$gt": 2, "$lte": 5}}
    assert translate_filter({"u": {"c": "PT", "d.x": {"e": 1}}}) == {
        "u.c": {"$eq": "PT"},
        "u.d~1x.e": {"$eq": 1},
    }
    assert translate_filter({"tags": ["a", "b"]}) == {"tags": {"$eq": ["a", "b"]}}
    with pytest.raises(ValueError, match="Unsupported operator"):
        translate_filter({"n": {"$regex": "x"}})
