"""Bounds for readers of untrusted files: every reader's memory and time stay a small multiple of
its input's size plus a constant.

The primitives every format reader shares (the ``.metadata`` unpickler, JSON targets, safetensors
headers and index files, Megatron's ``metadata.json``):

- `Budget`: a work counter; a reader charges it for every element it touches or copies and it
  raises `InputLimitError` past ``factor * input size + constant``, so a small file that
  references one big object many times cannot make the reader do quadratic work.
- `check_declared_length`: a length a file declares (a string, a header, a frame) checked against
  the bytes really left *before* anything is allocated for it.
- `is_safe_key`: the values a reader may put in a dict or set. Python hashes ints and tuples of
  ints without a random seed, so crafted keys can all collide and make a dict quadratic; str and
  bytes hash with a per-process seed and are safe.
- `read_json`: ``json.loads`` behind a size cap, a nesting-depth pre-scan (CPython's JSON decoder
  recurses: a deep array is a RecursionError) and a cap on numbers' digits (``int("9" * 10**6)``
  is quadratic); duplicate keys keep the last value, as ``json`` does.
- `brief`: a repr for error messages that is bounded in time and length whatever the object
  (``repr`` of a list holding one list a million times is a million lists long).

Imports the standard library and ``workbench.errors`` only (no torch, no numpy).
"""

from __future__ import annotations

import json
import re
import reprlib
from dataclasses import dataclass
from itertools import accumulate

from ..errors import InputLimitError, MetadataError

__all__ = [
    "Budget",
    "JsonLimits",
    "MAX_INT64",
    "brief",
    "check_declared_length",
    "check_hash_spread",
    "is_safe_key",
    "json_depth",
    "read_json",
    "read_length_prefixed_json",
]

MAX_INT64 = (1 << 63) - 1


class Budget:
    """Work allowed to a reader of ``size`` input bytes: ``factor * size + constant`` units (one
    unit ~ one element touched). `charge` raises `InputLimitError` naming ``source`` past it."""

    __slots__ = ("limit", "used", "source")

    def __init__(self, size: int, *, factor: int = 16, constant: int = 1 << 20, source="<input>"):
        self.limit = factor * size + constant
        self.used = 0
        self.source = source

    def charge(self, n: int = 1, what: str = "elements") -> None:
        self.used += n
        if self.used > self.limit:
            raise InputLimitError(
                self.source,
                f"reading it needs more than {self.limit:,} units of work ({what})",
                "work proportional to the file's size; a file that references one object "
                "many times is refused instead of expanded",
                "The file is damaged or crafted; it was not written by the tool it claims.",
                limit=self.limit,
            )


def check_declared_length(declared: int, available: int, what: str, source="<input>") -> int:
    """``declared`` (a length read from the file) if it is a non-negative int no larger than the
    ``available`` bytes left, else `InputLimitError`: call it before allocating anything."""
    if type(declared) is not int or declared < 0 or declared > available:
        raise InputLimitError(
            source,
            f"{what} declares {declared!r:.40} bytes but only {available:,} are left",
            "a declared length within the file",
            "The file is truncated or damaged.",
            declared=declared,
            available=available,
        )
    return declared


def is_safe_key(v) -> bool:
    """Whether ``v`` may be a dict key or set element of untrusted data without crafted hash
    collisions: str, bytes (seeded hashes), None, bool, ints within int64 (at most four share a
    hash), and tuples of str / None / bool (seeded as well). Objects hashed by identity are the
    caller's to allow."""
    t = type(v)
    if t is str or t is bytes or v is None or t is bool:
        return True
    if t is int:
        return -MAX_INT64 - 1 <= v <= MAX_INT64
    if t is tuple:
        return all(type(x) is str or x is None or type(x) is bool for x in v)
    return False


# reprlib stops at a few levels and a few elements per level: bounded work for any object.
_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxtuple = _REPR.maxlist = _REPR.maxdict = _REPR.maxset = _REPR.maxfrozenset = 6
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlong = 40


def brief(obj, width: int = 80) -> str:
    """A repr of ``obj`` cut to ``width`` characters, in time bounded whatever ``obj`` holds."""
    try:
        text = _REPR.repr(obj)
    except Exception:  # noqa: BLE001 - a broken __repr__ of a stand-in must not mask the error
        text = f"<{type(obj).__name__}>"
    return text if len(text) <= width else text[: width - 3] + "..."


# ----------------------------------------------------------------------------- JSON
@dataclass(frozen=True, slots=True)
class JsonLimits:
    """Bounds of `read_json`: bytes of the document, nesting depth of arrays / objects, digits of
    one number."""

    max_bytes: int = 64 << 20
    max_depth: int = 64
    max_number_digits: int = 100


# A JSON string: its quotes and what they hold, escapes included (the unrolled loop matches in
# C, linearly); what is left outside strings is the structure, numbers and literals.
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_BRACKET_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}.__getitem__
# number characters outside strings -> "#", anything else -> " ": a number longer than the
# digits cap is a run of "#" that long (true / false / null hold one "e", between letters)
_NUMBER_MARKS = bytes(35 if chr(b) in "-+.eE0123456789" else 32 for b in range(256))


def _outside_strings(text: str) -> str:
    """``text`` with its strings removed, cut where an unterminated string starts."""
    bare = _JSON_STRING.sub("", text)
    cut = bare.find('"')
    return bare if cut < 0 else bare[:cut]


def json_depth(text: str) -> int:
    """The deepest ``[`` / ``{`` nesting of a JSON text, strings skipped (linear, no recursion;
    an unterminated string ends the scan, json.loads reports it)."""
    return _depth(_outside_strings(text))


def _depth(bare: str) -> int:
    brackets = _NOT_BRACKET.sub("", bare).encode("ascii")
    return max(0, max(accumulate(map(_BRACKET_STEP, brackets)), default=0))


def _number(limit: int, source: str, kind):
    def parse(s: str):
        if len(s) > limit:
            raise InputLimitError(
                source,
                f"a number of {len(s):,} characters ({s[:20]}...)",
                f"at most {limit} characters per number",
                "The file is damaged or crafted.",
            )
        return kind(s)

    return parse


def read_json(data, source: str = "<json>", limits: JsonLimits = JsonLimits(), error=None):
    """``json.loads(data)`` (str or bytes, UTF-8) within ``limits``: `InputLimitError` for a
    document, a nesting or a number beyond them, ``error`` (a `WorkbenchError` subclass, default
    `MetadataError`) for text that is not JSON, both naming ``source``. Memory and time are
    linear in the input."""
    error = error or MetadataError
    size = len(data)
    if size > limits.max_bytes:
        raise InputLimitError(
            source,
            f"the JSON document has {size:,} bytes",
            f"at most {limits.max_bytes:,}",
            "Pass a smaller file or raise JsonLimits.max_bytes.",
            size=size,
        )
    if isinstance(data, (bytes, bytearray, memoryview)):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as e:
            raise error(
                source, f"the JSON document is not UTF-8: {e}", "a UTF-8 JSON text", "Re-save it."
            ) from None
    else:
        text = data
    bare = _outside_strings(text)
    depth = _depth(bare)
    if depth > limits.max_depth:
        raise InputLimitError(
            source,
            f"the JSON document nests {depth} levels deep",
            f"at most {limits.max_depth}",
            "The file is damaged or crafted.",
            depth=depth,
        )
    # json's own int and float parse numbers in C; the checking parsers (a Python call per
    # number) only when some number may be too long
    marks = bare.encode("utf-8", "surrogatepass").translate(_NUMBER_MARKS)
    long_number = b"#" * (limits.max_number_digits + 1) in marks
    numbers = (
        {
            "parse_int": _number(limits.max_number_digits, source, int),
            "parse_float": _number(limits.max_number_digits, source, float),
        }
        if long_number
        else {}
    )
    try:
        return json.loads(text, **numbers)
    except json.JSONDecodeError as e:
        raise error(
            source,
            f"invalid JSON: {e}",
            "a JSON document",
            "Fix the file (a JSON linter shows where).",
        ) from None
    except RecursionError:  # unreachable below max_depth; kept so no traceback escapes
        raise InputLimitError(
            source, "the JSON document nests too deep", "a shallow document", "Fix the file."
        ) from None


def check_hash_spread(keys, what: str, source="<input>", max_share: int = 64) -> None:
    """`InputLimitError` when more than ``max_share`` distinct ``keys`` share one hash.

    Python hashes ints and tuples of ints without a seed, so a file can hold offsets crafted to
    collide, and every dict or set keyed by them then costs quadratic time. Equal keys (duplicated
    entries) share a hash harmlessly and are counted once. Linear time plus a sort of the (rare)
    crowded groups."""
    counts: dict[int, int] = {}
    for k in keys:
        h = hash(k)
        counts[h] = counts.get(h, 0) + 1
    crowded = {h for h, c in counts.items() if c > max_share}
    if not crowded:
        return
    groups: dict[int, list] = {h: [] for h in crowded}
    for k in keys:
        g = groups.get(hash(k))
        if g is not None:
            g.append(k)
    for g in groups.values():
        distinct = len({repr(k) for k in g})  # repr: exact, and hashed with str's seeded hash
        if distinct > max_share:
            raise InputLimitError(
                source,
                f"{distinct} distinct {what} share one hash value",
                f"at most {max_share} (real files never come close)",
                "The file is crafted to make dictionaries quadratic; it was not written by torch.",
            )


def read_length_prefixed_json(
    data, source: str = "<header>", limits: JsonLimits = JsonLimits(), error=None
):
    """``(header, end)`` of a file that starts with an 8-byte little-endian length and that many
    bytes of JSON (safetensors' layout): the declared length is checked against the file's size
    and ``limits.max_bytes`` before anything is sliced, then `read_json` parses it; ``end`` is
    where the header stops (the data starts)."""
    if len(data) < 8:
        raise InputLimitError(
            source,
            f"the file has {len(data)} bytes, fewer than its 8-byte header length",
            "an 8-byte little-endian header length, then the JSON header",
            "The file is truncated.",
        )
    n = int.from_bytes(bytes(data[:8]), "little")
    check_declared_length(n, min(len(data) - 8, limits.max_bytes), "the header length", source)
    return read_json(bytes(data[8 : 8 + n]), source, limits, error), 8 + n
