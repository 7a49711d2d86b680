"""The bounded primitives of ``workbench.formats.limits`` that every reader of untrusted files
shares: JSON within size / depth / digit bounds, length-prefixed headers (safetensors' layout,
checked on files the ``safetensors`` package writes), work budgets, bounded reprs and the
hash-collision guard."""

from __future__ import annotations

import json

import numpy as np
import pytest
import safetensors.numpy as stn

from workbench import Chunk
from workbench.errors import InputLimitError, MetadataError, PlanError
from workbench.formats.limits import (
    Budget,
    JsonLimits,
    brief,
    check_declared_length,
    check_hash_spread,
    json_depth,
    read_json,
    read_length_prefixed_json,
)


def test_read_json_parses_what_json_parses():
    doc = {"a": [1, 2.5, {"b": None, "c": "x\\"}], "d": "[[[", "e": '"{'}
    assert read_json(json.dumps(doc)) == doc
    assert read_json(json.dumps(doc).encode()) == doc
    assert json_depth(json.dumps(doc)) == 3  # brackets inside strings do not count


@pytest.mark.parametrize(
    "text, words",
    [
        ("[" * 100 + "]" * 100, "nests 100 levels deep"),
        ('{"a": ' + "1" * 101 + "}", "a number of 101 characters"),
        ("[" + "9" * 200 + ".5]", "a number of 202 characters"),
    ],
)
def test_read_json_refuses_beyond_its_bounds(text, words):
    with pytest.raises(InputLimitError, match=words):
        read_json(text, "t.json")


def test_read_json_size_cap_and_errors_name_the_source():
    with pytest.raises(InputLimitError, match="t.json: the JSON document has 12 bytes"):
        read_json("[1, 2, 3, 4]", "t.json", JsonLimits(max_bytes=10))
    with pytest.raises(PlanError, match="t.json: invalid JSON"):
        read_json("{oops", "t.json", error=PlanError)
    with pytest.raises(MetadataError, match="not UTF-8"):
        read_json(b"\xff\xfe", "t.json")
    # a million-deep document is refused by the linear pre-scan (json.loads would recurse)
    with pytest.raises(InputLimitError, match="1,000,000|1000000"):
        read_json("[" * 1_000_000 + "]" * 1_000_000)


def test_safetensors_headers_written_by_the_package():
    meta = {"DCP_SHARDING_INFO": json.dumps({"w": {"saved_offsets": [2, 0]}}), "format": "pt"}
    data = stn.save({"w": np.zeros((2, 3), np.float32)}, metadata=meta)
    header, end = read_length_prefixed_json(data, "shard.safetensors")
    assert header["__metadata__"] == meta
    assert header["w"] == {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}
    assert len(data) - end == 24
    # a declared length past the file, or past the cap, is refused before slicing
    bad = (1 << 60).to_bytes(8, "little") + data[8:]
    with pytest.raises(InputLimitError, match="header length declares 1152921504606846976"):
        read_length_prefixed_json(bad, "shard.safetensors")
    with pytest.raises(InputLimitError, match="fewer than its 8-byte header length"):
        read_length_prefixed_json(data[:5])
    with pytest.raises(InputLimitError, match="declares"):
        read_length_prefixed_json(data, limits=JsonLimits(max_bytes=16))


def test_check_declared_length():
    assert check_declared_length(5, 5, "x") == 5
    for bad in (-1, 6, 2.0, None):
        with pytest.raises(InputLimitError):
            check_declared_length(bad, 5, "x")


def test_budget_counts_work():
    b = Budget(10, factor=2, constant=5, source="f")
    b.charge(25)
    with pytest.raises(InputLimitError, match="f: reading it needs more than 25 units"):
        b.charge(1)


def test_brief_is_bounded_for_shared_structures():
    inner = list(range(1000))
    huge = [inner] * 1000  # repr() would be ~5 MB
    text = brief(huge, 80)
    assert len(text) <= 80 and text.startswith("[[0, 1, 2")
    deep = None
    for _ in range(10_000):
        deep = (deep,)
    assert len(brief(deep)) <= 80  # repr() would raise RecursionError


def test_hash_spread_guard():
    m = (1 << 61) - 1
    ok = [Chunk((i,), (1,)) for i in range(1000)] + [Chunk((0,), (1,))] * 500  # duplicates: fine
    check_hash_spread(ok, "chunks")
    colliding = [k * m for k in range(1, 100)]  # distinct ints, one hash value
    assert len({hash(x) for x in colliding}) == 1
    with pytest.raises(InputLimitError, match="99 distinct offsets share one hash value"):
        check_hash_spread(colliding, "offsets", "f")


@pytest.mark.parametrize(
    "text, refused",
    [
        ('["' + "9" * 300 + '", 1]', False),  # digits inside a string are text
        ('{"k": "\\"' + "[" * 100 + '"}', False),  # so are brackets after an escaped quote
        ("[1." + "0" * 99 + "e5]", True),  # 103 characters of one float
        ("[" + "1" * 100 + "]", False),  # exactly the cap
        ("[true, false, null, " + "1" * 101 + "]", True),
    ],
)
def test_read_json_checks_numbers_and_depth_outside_strings_only(text, refused):
    if refused:
        with pytest.raises(InputLimitError, match="a number of"):
            read_json(text)
    else:
        assert read_json(text) == json.loads(text)
