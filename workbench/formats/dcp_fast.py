"""Fast decoding of the records a DCP ``.metadata`` repeats by the hundred thousand.

A 1024-rank checkpoint's ``.metadata`` is 740,000 ``ChunkStorageMetadata`` records and as many
``MetadataIndex -> _StorageInfo`` pairs, each pickled by torch in one fixed opcode sequence that
differs only in its ints (and, for storage entries, in whether a string is new or memoised).
Decoding them one opcode at a time in Python is what made the bounded reader slower than torch's
C ``pickle.load``. Here a run of such records (at most `MAX_RUN`) is decoded at once and the
unpickler pushes one `ChunkRun` / `StorageRun` in its place
(`unpickler.BoundedUnpickler.fast_paths`):

- chunk records of one tensor differ only in the widths of their ints, a few times per list:
  the first record's exact byte layout (a `_Shape`: which bytes are opcodes, which operands) is
  read by `_probe`, and the following records of that layout are checked and decoded as rows
  of a numpy matrix, layout after layout;
- storage entries change layout from one entry to the next (dims, int widths, new or memoised
  strings), so a run of them is found by one possessive regular expression of exactly their
  opcode sequences, its fields taken out by ``findall`` and decoded column by column.

Why this keeps every bound of the opcode loop:

- layouts and expressions match fixed, non-nested opcode sequences: every declared length in
  them is one byte (a short string, checked against what was matched) and every object they
  stand for is a flat tuple of ints or a string; nothing is hashed but strings;
- the memoised objects a run refers to (its record class, its key strings, ``torch.Size``) are
  checked to be exactly those; anything else and the decoder declines, and the opcode loop reads
  the same bytes as before;
- the memo entries the run makes are counted as the loop would count them and built on demand
  (`unpickler.LazyMemo`) only if the pickle refers back to one;
- a run is charged to the reading's `limits.Budget` like the records it replaces.

The conversion to records (`formats.dcp`) treats a run like the records it stands for.

Imports numpy, re, the unpickler's `LazyMemo` and limits; no torch.
"""

from __future__ import annotations

import re

import numpy as np

from .limits import Budget

__all__ = ["ChunkRun", "StorageRun", "FastRun", "fast_paths", "MAX_RUN"]

# records per run: bounds the temporary findall list (a few hundred bytes per record)
MAX_RUN = 4096


class FastRun:
    """Records decoded at once; ``count`` records, each of ``ndim`` dims."""

    __slots__ = ("count", "ndim")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {self.count} records>"


class ChunkRun(FastRun):
    """``count`` consecutive ``ChunkStorageMetadata`` records: ``offsets`` and ``sizes``
    (count x ndim int64)."""

    __slots__ = ("offsets", "sizes")

    def __init__(self, offsets: np.ndarray, sizes: np.ndarray):
        self.offsets, self.sizes = offsets, sizes
        self.count, self.ndim = offsets.shape


class StorageRun(FastRun):
    """``count`` consecutive ``storage_data`` entries ``MetadataIndex(fqn, offset, index) ->
    _StorageInfo(relative_path, offset, length)``: ``fqns`` / ``paths`` (``(distinct strings,
    index of each row's)``), ``offsets`` (count x 3, row i's first ``nd[i]`` used), ``hint`` /
    ``has_hint``, ``file_offset``, ``length``."""

    __slots__ = ("fqns", "paths", "offsets", "nd", "hint", "has_hint", "file_offset", "length")

    def __init__(self, fqns, paths, offsets, nd, hint, has_hint, file_offset, length):
        self.fqns, self.paths, self.offsets, self.nd = fqns, paths, offsets, nd
        self.hint, self.has_hint = hint, has_hint
        self.file_offset, self.length = file_offset, length
        self.count, self.ndim = len(offsets), None


# ----------------------------------------------------------------------------- record shapes
# A record's grammar: ("lit", bytes) opcodes that never vary; ("get", name) a BINGET /
# LONG_BINGET; ("int", name) BININT1 / BININT2 / BININT / LONG1 (up to 8 bytes); ("int?", name)
# the same or NONE; ("str", name) a new SHORT_BINUNICODE + MEMOIZE, or a GET.
_NEWOBJ = (("lit", b")\x81\x94}\x94("),)  # EMPTY_TUPLE NEWOBJ MEMOIZE EMPTY_DICT MEMOIZE MARK
_TUPLE_OPS = {1: b"\x85", 2: b"\x86", 3: b"\x87"}


def _size(name: str, nd: int) -> tuple:
    """``torch.Size((i0, ...))``: GET(torch.Size) ints TUPLEn MEMOIZE TUPLE1 MEMOIZE REDUCE
    MEMOIZE (MARK ints TUPLE beyond 3 dims)."""
    ints = tuple(("int", f"{name}{i}") for i in range(nd))
    if nd <= 3:
        return (("get", f"{name}_size"), *ints, ("lit", _TUPLE_OPS[nd] + b"\x94\x85\x94R\x94"))
    return (("get", f"{name}_size"), ("lit", b"("), *ints, ("lit", b"t\x94\x85\x94R\x94"))


def _chunk_grammar(nd: int) -> tuple:
    # ChunkStorageMetadata: {'offsets': Size, 'sizes': Size}
    return (
        ("get", "cls"),
        *_NEWOBJ,
        ("get", "k_offsets"),
        *_size("off", nd),
        ("get", "k_sizes"),
        *_size("siz", nd),
        ("lit", b"ub"),
    )


class _Shape:
    """One record's exact byte layout: ``length`` bytes whose opcode bytes (``fixed`` columns)
    must equal ``template``; ``fields[name] = (kind, column, width)`` with kind ``uint`` /
    ``int`` (signed) / ``none`` / ``new`` (a new string's bytes) / ``getstr``, or ``("const",
    memo index, width)`` for a GET every row repeats byte for byte (part of the template);
    ``memo`` entries made per record. A new string's bytes are not in the layout: its length
    varies from row to row; ``strings`` lists where each one's bytes are inserted (after its
    length byte), and a ``new`` field is ``("new", its number, 0)``."""

    __slots__ = ("length", "fixed", "template", "fields", "strings", "memo")


_INT_OPS = {0x4B: ("uint", 1), 0x4D: ("uint", 2), 0x4A: ("int", 4)}


def _probe(grammar: tuple, data: bytes, pos: int, memo_base: int) -> _Shape | None:
    """The `_Shape` of the record at ``pos`` following ``grammar``, or None when the bytes
    there are not such a record (``memo_base``: memo entries the record makes besides its new
    strings)."""
    tpl = bytearray()
    fixed: list[int] = []
    fields: dict = {}
    strings: list[int] = []
    p = pos
    made = 0
    n = len(data)

    def keep(k):  # k opcode bytes that must repeat exactly
        nonlocal p
        if p + k > n:
            raise IndexError
        fixed.extend(range(len(tpl), len(tpl) + k))
        tpl.extend(data[p : p + k])
        p += k

    def free(k):  # k operand bytes that may differ
        nonlocal p
        if p + k > n:
            raise IndexError
        tpl.extend(bytes(k))
        p += k

    def get(name, kind="get"):
        op = data[p]
        if op not in (0x68, 0x6A):
            return False
        w = 1 if op == 0x68 else 4
        if kind == "get":  # a record's class, keys and torch.Size: the same entry on every row
            fields[name] = ("const", int.from_bytes(data[p + 1 : p + 1 + w], "little"), w)
            keep(1 + w)
        else:
            keep(1)
            fields[name] = (kind, len(tpl), w)
            free(w)
        return True

    try:
        for kind, arg in grammar:
            if kind == "lit":
                if data[p : p + len(arg)] != arg:
                    return None
                keep(len(arg))
            elif kind == "get":
                if not get(arg):
                    return None
            elif kind in ("int", "int?"):
                op = data[p]
                if op == 0x4E and kind == "int?":
                    keep(1)
                    fields[arg] = ("none", len(tpl), 0)
                elif op in _INT_OPS:
                    keep(1)
                    sign, w = _INT_OPS[op]
                    fields[arg] = (sign, len(tpl), w)
                    free(w)
                elif op == 0x8A and data[p + 1] <= 8:  # LONG1: n bytes, two's complement
                    w = data[p + 1]
                    keep(2)
                    fields[arg] = ("int", len(tpl), w)
                    free(w)
                else:
                    return None
            else:  # str
                op = data[p]
                if op == 0x8C:
                    keep(1)
                    w = data[p]
                    free(1)  # its length byte: the string's bytes are not part of the shape
                    fields[arg] = ("new", len(strings), 0)
                    strings.append(len(tpl))
                    p += w
                    if data[p] != 0x94:  # MEMOIZE: the string is a memo entry of the record
                        return None
                    keep(1)
                    made += 1
                elif not get(arg, "getstr"):
                    return None
    except IndexError:
        return None
    shape = _Shape()
    shape.length = len(tpl)
    shape.fixed = np.array(fixed, np.int64)
    shape.template = np.frombuffer(bytes(tpl), np.uint8)[shape.fixed]
    shape.fields = fields
    shape.strings = strings
    shape.memo = memo_base + made
    return shape


class _Rows:
    """Consecutive records of one shape: ``m`` (rows x shape length, the layout's bytes of each
    row, new strings' bytes left out), ``starts`` (where each row begins), ``lens`` (rows x
    strings: each new string's length), ``end`` (where the last row ends)."""

    __slots__ = ("m", "starts", "lens", "end")

    def __init__(self, m, starts, lens, end):
        self.m, self.starts, self.lens, self.end = m, starts, lens, end

    def __len__(self) -> int:
        return len(self.m)


def _rows(data: bytes, arr: np.ndarray, pos: int, shape: _Shape, most: int) -> _Rows:
    """The longest run (at most ``most``, at least the probed row) of records of ``shape`` from
    ``pos``: a row belongs when every opcode byte equals the template. Rows are checked in
    growing blocks, so a short run costs little."""
    n, size, ins = len(data), shape.length, shape.strings
    if not ins:  # fixed-length rows: a view
        most = min(most, (n - pos) // size)
        m = arr[pos : pos + most * size].reshape(most, size)
        done, block = 0, 16
        while done < most:
            upto = min(most, done + block)
            ok = (m[done:upto, shape.fixed] == shape.template).all(axis=1)
            if not ok.all():
                most = done + int(np.argmin(ok))
                break
            done, block = upto, block * 4
        starts = pos + size * np.arange(most, dtype=np.int64)
        return _Rows(m[:most], starts, np.zeros((most, 0), np.int64), pos + most * size)
    # rows of varying length: hop from row to row by the strings' length bytes, then gather each
    # row's layout bytes and check them
    cols = np.arange(size, dtype=np.int64)
    after = [(cols >= c).astype(np.int64) for c in ins]
    starts: list[int] = []
    lens: list[list[int]] = []
    parts = []
    p, block, done = pos, 16, 0
    while len(starts) < most:
        stop = False
        for _ in range(min(block, most - len(starts))):
            ls, q = [], p
            for c in ins:  # the length byte is just before the string's bytes
                b = q + c - 1
                if b >= n:
                    break
                ls.append(data[b])
                q += data[b]
            if len(ls) < len(ins) or p + size + sum(ls) > n:
                stop = True
                break
            starts.append(p)
            lens.append(ls)
            p += size + sum(ls)
        if len(starts) == done:
            break
        st = np.array(starts[done:], np.int64)
        ln = np.array(lens[done:], np.int64).reshape(len(st), len(ins))
        idx = st[:, None] + cols[None, :]
        for j, a in enumerate(after):
            idx += a[None, :] * ln[:, j : j + 1]
        m = arr[idx]
        ok = (m[:, shape.fixed] == shape.template).all(axis=1)
        if not ok.all():
            cut = int(np.argmin(ok))
            parts.append(m[:cut])
            del starts[done + cut :], lens[done + cut :]
            break
        parts.append(m)
        done, block = len(starts), block * 4
        if stop:
            break
    m = np.concatenate(parts) if parts else np.zeros((0, size), np.uint8)
    st = np.array(starts, np.int64)
    ln = np.array(lens, np.int64).reshape(len(st), len(ins))
    end = int(st[-1] + size + ln[-1].sum()) if len(st) else pos
    return _Rows(m, st, ln, end)


def _field(m: np.ndarray, spec) -> np.ndarray | None:
    """A numeric field of every row as int64 (None for a NONE field)."""
    kind, col, w = spec
    if kind == "none":
        return None
    if w == 0:
        return np.zeros(len(m), np.int64)
    if w == 1:
        v = m[:, col].astype(np.int64)
        return v
    b = np.zeros((len(m), 8), np.uint8)
    b[:, :w] = m[:, col : col + w]
    v = b.view("<i8").reshape(-1)
    if kind == "int" and w < 8:  # sign-extend w bytes
        return (v << np.int64(64 - 8 * w)) >> np.int64(64 - 8 * w)
    return v


def _check_gets(shape, names_to_objects: dict, memo) -> bool:
    """Whether each named constant GET of the shape fetches exactly the given object (or an
    equal str)."""
    for name, want in names_to_objects.items():
        try:
            got = memo[shape.fields[name][1]]
        except KeyError:
            return False
        if not (got is want or (type(want) is str and type(got) is str and got == want)):
            return False
    return True


# ----------------------------------------------------------------------------- storage entries
# One storage_data entry, MetadataIndex {'fqn': str, 'index': int | None, 'offset': Size} ->
# _StorageInfo {'relative_path': str, 'offset': int, 'length': int}, as torch's dataclasses
# pickle it, for offsets of 1 to 3 dims. The entries vary in their ints' widths, their dims and
# whether a string is new or memoised from one entry to the next, so they are matched one by one
# by a regular expression (anchored, one after the other: re's scanner), which captures every
# field; the fields are then decoded column by column. Every GET is captured and checked.
_G = rb"(h[\s\S]|j[\s\S]{4})"
_I = (
    rb"(K[\s\S]|M[\s\S]{2}|J[\s\S]{4}|\x8a(?:\x00"
    + b"".join(rb"|\x0%d[\s\S]{%d}" % (k, k) for k in range(1, 9))
    + rb"))"
)
_HINT = _I[:-1] + rb"|N)"
# a memoised string, or a new one (SHORT_BINUNICODE + MEMOIZE) without the MEMOIZE byte inside
# (so the match is unambiguous); its length byte is checked against the match afterwards
_S = rb"(h[\s\S]|j[\s\S]{4}|\x8c[\s\S][^\x94]{0,255}\x94)"
_OPEN = rb"\)\x81\x94\}\x94\("  # EMPTY_TUPLE NEWOBJ MEMOIZE EMPTY_DICT MEMOIZE MARK
_SIZE_RX = _G + rb"(?:" + _I + rb"\x85|" + _I + _I + rb"\x86|" + _I * 3 + rb"\x87)\x94\x85\x94R\x94"
_PAIR_RX = (
    _G + _OPEN + _G + _S + _G + _HINT + _G + _SIZE_RX + rb"ub"  # MetadataIndex
    + _G + _OPEN + _G + _S + _G + _I + _G + _I + rb"ub"  # _StorageInfo
)  # fmt: skip
_PAIR = re.compile(_PAIR_RX)
# a run of pairs, possessive (no backtracking state kept), without groups
_PAIR_RUN = re.compile(
    rb"(?:" + re.sub(rb"(?<!\\)\((?!\?)", b"(?:", _PAIR_RX) + rb"){1,%d}+" % MAX_RUN
)
# group -> (ndim of the alternative, offset dim) of the Size's ints
_SIZE_COLUMNS = {7: (1, 0), 8: (2, 0), 9: (2, 1), 10: (3, 0), 11: (3, 1), 12: (3, 2)}


# int opcodes: operand width, whether signed (two's complement), and the shift that
# sign-extends a w-byte value to 64 bits
_WIDTH = np.zeros(256, np.int64)
_WIDTH[[0x4B, 0x4D, 0x4A]] = [1, 2, 4]
_SIGNED = np.zeros(256, np.int64)
_SIGNED[[0x4A, 0x8A]] = 1
_SHIFT = np.array([0] + [64 - 8 * w for w in range(1, 9)], np.int64)
_BYTE = np.arange(8)


def _first_byte(col) -> np.ndarray:
    """The first byte of each token (0 for an empty one: an alternative not taken)."""
    return np.array(col, "S1").view(np.uint8).reshape(-1) if len(col) else np.zeros(0, np.uint8)


def _int_column(col) -> np.ndarray:
    """int64 values of int tokens (BININT1 / BININT2 / BININT / LONG1 of 0 to 8 bytes); 0 for
    an empty or NONE token."""
    t = np.array(col, "S10").view(np.uint8).reshape(len(col), 10)
    op = t[:, 0]
    long = op == 0x8A
    b = t[:, 1:9].copy()
    if long.any():
        b[long] = t[long, 2:10]
    width = _WIDTH[op]
    if long.any():
        width[long] = t[long, 1]
    b[_BYTE[None, :] >= width[:, None]] = 0
    v = b.view("<i8").reshape(-1)
    shift = _SHIFT[width] * _SIGNED[op]
    return (v << shift) >> shift


def _same_get(col, want, memo) -> bool:
    """Whether every GET token of ``col`` is the same one and fetches ``want`` (or an equal
    str)."""
    toks = set(col)
    if len(toks) != 1:
        return False
    (tok,) = toks
    idx = tok[1] if tok[:1] == b"h" else int.from_bytes(tok[1:5], "little")
    try:
        got = memo[idx]
    except KeyError:
        return False
    return got is want or (type(want) is str and type(got) is str and got == want)


def _str_column(col, fresh: np.ndarray, at: np.ndarray, run_start: int, memo, made: list):
    """A column of string tokens as ``(distinct strings, index of each row's)``: a new string
    (memo entry ``at[i]``; its rows are noted in ``made``) or a GET of a str memoised before it;
    None when any is not."""
    lut: dict = {}
    names: list = []
    fresh_rows = np.flatnonzero(fresh)
    fresh_at = at[fresh_rows]
    for tok in dict.fromkeys(col):  # distinct tokens, in order
        if tok[0] == 0x8C:
            if tok[1] != len(tok) - 3:
                return None
            try:
                v = str(tok[2:-1], "utf-8", "surrogatepass")
            except UnicodeDecodeError:
                return None
        else:
            k = tok[1] if tok[0] == 0x68 else int.from_bytes(tok[1:5], "little")
            if k >= run_start:  # a string of this run: made before the row that refers to it?
                if k >= int(at[col.index(tok)]):
                    return None
                v = _made(made, k)
                j = int(np.searchsorted(fresh_at, k))
                if v is None and j < len(fresh_at) and fresh_at[j] == k:
                    # a new string of this column, on an earlier row (so already in lut)
                    v = names[lut[col[int(fresh_rows[j])]]]
            else:
                try:
                    v = memo[k]  # (may build a record of an earlier run)
                except KeyError:
                    return None
            if type(v) is not str:
                return None
        lut[tok] = len(names)
        names.append(v)
    index = np.fromiter(map(lut.__getitem__, col), np.int64, len(col))
    if fresh.any():
        made.append((at[fresh], names, index[fresh]))
    return names, index


def _made(made: list, k: int):
    """The new string this run made as memo entry ``k`` (None when it made none there)."""
    for at, names, index in made:
        j = int(np.searchsorted(at, k))
        if j < len(at) and at[j] == k:
            return names[index[j]]
    return None


def _in_container(stack, marks, kind) -> bool:
    # records of a list (APPENDS) or a dict (SETITEMS), pushed after its MARK
    return bool(marks) and 0 < marks[-1] <= len(stack) and type(stack[marks[-1] - 1]) is kind


def fast_paths(*, chunk_cls, index_cls, info_cls, size_fn, budget: Budget) -> dict:
    """The ``fast_paths`` of a `BoundedUnpickler` reading a DCP ``.metadata``: record runs of
    ``chunk_cls`` (ChunkStorageMetadata, inside a list) and of ``index_cls`` / ``info_cls``
    pairs (storage_data entries, inside a dict), whose memoised ``torch.Size`` is ``size_fn``.
    The classes are the reader's stand-ins (``cls.__new__(cls)`` then ``.state``): a record the
    pickle refers back to is built as the opcode loop would have built it."""

    def new(cls, state):
        obj = cls.__new__(cls)
        obj.state = state
        return obj

    def chunk_entries(run, i):
        # the 8 memo entries of chunk record i, in the order the opcodes make them
        off = tuple(run.offsets[i].tolist())
        siz = tuple(run.sizes[i].tolist())
        state = {"offsets": off, "sizes": siz}
        return [new(chunk_cls, state), state, off, (off,), off, siz, (siz,), siz]

    def storage_entries(run, i, fresh_fqn, fresh_path):
        off = tuple(run.offsets[i, : run.nd[i]].tolist())
        hint = int(run.hint[i]) if run.has_hint[i] else None
        fqn = run.fqns[0][run.fqns[1][i]]
        path = run.paths[0][run.paths[1][i]]
        mi_state = {"fqn": fqn, "index": hint, "offset": off}
        si_state = {
            "relative_path": path,
            "offset": int(run.file_offset[i]),
            "length": int(run.length[i]),
        }
        return [
            new(index_cls, mi_state),
            mi_state,
            *([fqn] if fresh_fqn[i] else []),
            off,
            (off,),
            off,
            new(info_cls, si_state),
            si_state,
            *([path] if fresh_path[i] else []),
        ]

    def lazy(memo, start, ends, entries):
        # memo[k] for k in a run made from `start`: build k's record (every entry of it)
        def build(k):
            i = int(np.searchsorted(ends, k - start, side="right"))
            first = start + (int(ends[i - 1]) if i else 0)
            for j, v in enumerate(entries(i)):
                dict.__setitem__(memo, first + j, v)
            return dict.__getitem__(memo, k)

        return build

    def run(data, pos, memo, nmemo, grammar_of, memo_base, decode):
        """Records of one grammar from ``pos`` (shape by shape, at most MAX_RUN): ``(end,
        per-segment decoded fields, memo ends)`` or None when not even one record is there."""
        nd = _probe_ndim(data, pos, 1 if memo_base == 8 else 0)
        if nd is None:
            return None
        grammar = grammar_of(nd)
        arr = np.frombuffer(data, np.uint8)
        p, count, segments, ends = pos, 0, [], []
        made: list = []  # (memo indices, names, index) of the run's new strings
        memo_at = nmemo
        while count < MAX_RUN:
            shape = _probe(grammar, data, p, memo_base)
            if shape is None:
                break
            rows = _rows(data, arr, p, shape, MAX_RUN - count)
            if not len(rows):
                break
            row_memo = memo_at + shape.memo * np.arange(len(rows), dtype=np.int64)
            got = decode(rows, data, shape, nd, row_memo, nmemo, memo, made)
            if got is None:
                break
            segments.append(got)
            ends.append(memo_at - nmemo + shape.memo * np.arange(1, len(rows) + 1))
            memo_at += shape.memo * len(rows)
            count += len(rows)
            p = rows.end
        if not count:
            return None
        budget.charge(count * (nd + 12), "records")
        return p, segments, np.concatenate(ends), nd

    def decode_chunks(rows, data, shape, nd, row_memo, run_start, memo, made):
        m = rows.m
        want = {"cls": chunk_cls, "k_offsets": "offsets", "k_sizes": "sizes"}
        want.update({"off_size": size_fn, "siz_size": size_fn})
        if not _check_gets(shape, want, memo):
            return None
        f = shape.fields
        off = np.stack([_field(m, f[f"off{i}"]) for i in range(nd)], axis=1)
        siz = np.stack([_field(m, f[f"siz{i}"]) for i in range(nd)], axis=1)
        return off, siz

    def chunks(data, pos, memo, nmemo, stack, marks):
        if not _in_container(stack, marks, list):
            return None
        got = run(data, pos, memo, nmemo, _chunk_grammar, 8, decode_chunks)
        if got is None:
            return None
        end, segs, ends, nd = got
        out = ChunkRun(np.concatenate([s[0] for s in segs]), np.concatenate([s[1] for s in segs]))
        total = int(ends[-1])
        memo.add_range(
            nmemo, nmemo + total, lazy(memo, nmemo, ends, lambda i: chunk_entries(out, i))
        )
        return end, [out], total

    def storage(data, pos, memo, nmemo, stack, marks):
        if not _in_container(stack, marks, dict):
            return None
        m = _PAIR_RUN.match(data, pos)
        if m is None:
            return None
        end = m.end()
        # the same expression matched record after record from pos: findall finds exactly
        # those records (b"" for an alternative not taken)
        groups = _PAIR.findall(data, pos, end)
        cols = list(zip(*groups))
        want = {0: index_cls, 1: "fqn", 3: "index", 5: "offset", 6: size_fn}
        want.update({13: info_cls, 14: "relative_path", 16: "offset", 18: "length"})
        for c, obj in want.items():
            if not _same_get(cols[c], obj, memo):
                return None
        n = len(groups)
        fresh_fqn = _first_byte(cols[2]) == 0x8C
        fresh_path = _first_byte(cols[15]) == 0x8C
        per = 7 + fresh_fqn.astype(np.int64) + fresh_path
        ends = np.cumsum(per)
        row_memo = nmemo + ends - per
        made: list = []
        fqns = _str_column(cols[2], fresh_fqn, row_memo + 2, nmemo, memo, made)
        if fqns is None:
            return None
        paths = _str_column(cols[15], fresh_path, row_memo + 7 + fresh_fqn, nmemo, memo, made)
        if paths is None:
            return None
        nd = np.where(_first_byte(cols[7]) > 0, 1, np.where(_first_byte(cols[8]) > 0, 2, 3)).astype(
            np.int64
        )
        offsets = np.zeros((n, 3), np.int64)
        for c, (d, j) in _SIZE_COLUMNS.items():
            rows = nd == d
            if rows.any():
                offsets[:, j] = np.where(rows, _int_column(cols[c]), offsets[:, j])
        hint_tok = _first_byte(cols[4])
        has_hint = hint_tok != ord("N")
        hint = np.where(has_hint, _int_column(cols[4]), 0)
        budget.charge(n * 16, "storage records")
        out = StorageRun(
            fqns, paths, offsets, nd, hint, has_hint, _int_column(cols[17]), _int_column(cols[19])
        )
        total = int(ends[-1])
        memo.add_range(
            nmemo,
            nmemo + total,
            lazy(memo, nmemo, ends, lambda i: storage_entries(out, i, fresh_fqn, fresh_path)),
        )
        return end, [out, None], total

    return {chunk_cls: chunks, index_cls: storage}


# bytes of an int opcode with its operand (0: LONG1, 2 + its length byte)
_INT_WIDTH = {0x4B: 2, 0x4D: 3, 0x4A: 5, 0x8A: 0}


def _probe_ndim(data: bytes, pos: int, which: int) -> int | None:
    """The ndim of the first ``torch.Size`` of the record at ``pos``, from its opcodes (None if
    the record does not start as expected); ``which``: 1 for a chunk record (the Size follows
    GET 'offsets'), 0 for a MetadataIndex (the Size comes after 'fqn', 'index', 'offset')."""
    p = pos
    try:
        p += 2 if data[p] == 0x68 else 5  # GET(class)
        if data[p : p + 6] != b")\x81\x94}\x94(":
            return None
        p += 6
        if which == 1:
            p += 2 if data[p] == 0x68 else 5  # GET('offsets')
        else:
            for _ in range(2):  # 'fqn' str, 'index' value
                p += 2 if data[p] == 0x68 else 5
                op = data[p]
                if op == 0x8C:
                    p += 2 + data[p + 1] + 1
                elif op in (0x68, 0x4B):
                    p += 2
                elif op in (0x6A, 0x4A):
                    p += 5
                elif op == 0x4D:
                    p += 3
                elif op == 0x4E:
                    p += 1
                elif op == 0x8A:
                    p += 2 + data[p + 1]
                else:
                    return None
            p += 2 if data[p] == 0x68 else 5  # GET('offset')
        p += 2 if data[p] == 0x68 else 5  # GET(torch.Size)
        if data[p] == 0x28:  # MARK ints TUPLE: count the ints
            p += 1
            nd = 0
            while data[p] != 0x74:
                op = data[p]
                if op not in _INT_WIDTH:
                    return None
                p += _INT_WIDTH[op] or 2 + data[p + 1]
                nd += 1
                if nd > 64:
                    return None
            return nd if nd >= 4 else None
        nd = 0
        while nd < 4:
            op = data[p]
            if op in (0x85, 0x86, 0x87):
                return nd if nd == op - 0x84 else None
            if op not in _INT_WIDTH:
                return None
            p += _INT_WIDTH[op] or 2 + data[p + 1]
            nd += 1
        return None
    except IndexError:
        return None
