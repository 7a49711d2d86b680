"""Fast decoding of the records a DCP ``.metadata`` repeats by the hundred thousand.

A 1024-rank checkpoint's ``.metadata`` is 740,000 ``ChunkStorageMetadata`` records and as many
``MetadataIndex -> _StorageInfo`` pairs, each pickled by torch in one fixed opcode sequence that
differs only in its ints (and, for storage entries, in whether a string is new or memoised).
Decoding them one opcode at a time in Python is what made the bounded reader slower than torch's
C ``pickle.load``. Here a run of such records (at most `MAX_RUN`) is recognised by one compiled
regular expression of exactly that opcode sequence, its fields are taken out by ``findall`` and
its ints decoded with numpy, and the unpickler pushes one `ChunkRun` / `StorageRun` in their
place (`unpickler.BoundedUnpickler.fast_paths`).

Why this keeps every bound of the opcode loop:

- the expression matches a fixed, non-nested opcode sequence: every declared length in it is
  one byte (a short string, checked against what was matched) and every object it builds is a
  flat tuple of ints or a string; nothing is hashed but strings;
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
    index of each row's)``), ``offsets`` (count x ndim), ``hint`` / ``has_hint``,
    ``file_offset``, ``length``."""

    __slots__ = ("fqns", "paths", "offsets", "hint", "has_hint", "file_offset", "length")

    def __init__(self, fqns, paths, offsets, hint, has_hint, file_offset, length):
        self.fqns, self.paths, self.offsets = fqns, paths, offsets
        self.hint, self.has_hint = hint, has_hint
        self.file_offset, self.length = file_offset, length
        self.count, self.ndim = offsets.shape


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


def _storage_grammar(nd: int) -> tuple:
    # MetadataIndex {'fqn', 'index', 'offset'} -> _StorageInfo {'relative_path', 'offset',
    # 'length'}, in the order torch's dataclasses pickle their fields
    return (
        ("get", "cls"),
        *_NEWOBJ,
        ("get", "k_fqn"),
        ("str", "fqn"),
        ("get", "k_index"),
        ("int?", "hint"),
        ("get", "k_offset"),
        *_size("off", nd),
        ("lit", b"ub"),
        ("get", "info_cls"),
        *_NEWOBJ,
        ("get", "k_path"),
        ("str", "path"),
        ("get", "k_file_offset"),
        ("int", "file_offset"),
        ("get", "k_length"),
        ("int", "length"),
        ("lit", b"ub"),
    )


class _Shape:
    """One record's exact byte layout: ``length`` bytes whose opcode bytes (``fixed`` columns)
    must equal ``template``; ``fields[name] = (kind, column, width)`` with kind ``uint`` /
    ``int`` (signed) / ``none`` / ``new`` (a new string's bytes) / ``getstr``, or ``("const",
    memo index, width)`` for a GET every row repeats byte for byte (part of the template);
    ``memo`` entries made per record."""

    __slots__ = ("length", "fixed", "template", "fields", "memo")


_INT_OPS = {0x4B: ("uint", 1), 0x4D: ("uint", 2), 0x4A: ("int", 4)}


def _probe(grammar: tuple, data: bytes, pos: int, memo_base: int) -> _Shape | None:
    """The `_Shape` of the record at ``pos`` following ``grammar``, or None when the bytes
    there are not such a record (``memo_base``: memo entries the record makes besides its new
    strings)."""
    tpl = bytearray()
    fixed: list[int] = []
    fields: dict = {}
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
                    w = data[p + 1]
                    keep(2)
                    fields[arg] = ("new", len(tpl), w)
                    free(w)
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
    shape.memo = memo_base + made
    return shape


def _rows(data: bytes, pos: int, shape: _Shape, most: int) -> np.ndarray:
    """The longest run (at most ``most``) of records of ``shape`` from ``pos``, as a (rows x
    length) uint8 view: a row belongs when every opcode byte equals the template."""
    most = min(most, (len(data) - pos) // shape.length)
    m = np.frombuffer(data, np.uint8, count=most * shape.length, offset=pos)
    m = m.reshape(most, shape.length)
    # check rows in growing blocks, so a short run costs little
    done, block = 0, 16
    while done < most:
        upto = min(most, done + block)
        ok = (m[done:upto, shape.fixed] == shape.template).all(axis=1)
        if not ok.all():
            return m[: done + int(np.argmin(ok))]
        done, block = upto, block * 4
    return m


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


def _made(made: list, i: int):
    """The new string a run made at memo index ``i`` (None when it made none there)."""
    for at, names, inv in made:
        j = int(np.searchsorted(at, i))
        if j < len(at) and at[j] == i:
            return names[inv[j]]
    return None


def _merge_names(parts: list) -> tuple[list, np.ndarray]:
    """One ``(distinct strings, index)`` of the segments' ones, in order."""
    if len(parts) == 1:
        return parts[0]
    names: list = []
    ids: dict = {}
    idx = []
    for seg_names, seg_idx in parts:
        lut = np.array([ids.setdefault(n, len(ids)) for n in seg_names], np.int64)
        idx.append(lut[seg_idx])
    names = list(ids)
    return names, np.concatenate(idx)


def _in_container(stack, marks, kind) -> bool:
    # records of a list (APPENDS) or a dict (SETITEMS), pushed after its MARK
    return bool(marks) and 0 < marks[-1] <= len(stack) and type(stack[marks[-1] - 1]) is kind


def _strs(m, shape, name, at: int, row_memo: np.ndarray, run_start: int, memo, made: list):
    """The str field ``name`` of every row as ``(distinct strings, index of each row's)``: new
    strings decoded, memoised ones looked up; None when one is not a str made before it. A new
    string is memo entry ``at`` of its record (noted in ``made``, for later GETs of the run)."""
    kind, col, w = shape.fields[name]
    if kind == "new":
        if w:
            rows = np.ascontiguousarray(m[:, col : col + w]).view(np.dtype((np.void, w)))
            uniq, inv = np.unique(rows.reshape(-1), return_inverse=True)
            blob, count = uniq.tobytes(), len(uniq)
        else:
            blob, count, inv = b"", 1, np.zeros(len(m), np.int64)
        try:
            names = [str(blob[i * w : i * w + w], "utf-8", "surrogatepass") for i in range(count)]
        except UnicodeDecodeError:
            return None
        inv = inv.reshape(-1)
        made.append((row_memo + at, names, inv))
        return names, inv
    idx = _field(m, shape.fields[name])
    if (idx >= row_memo).any():  # a GET of what the pickle has not memoised yet
        return None
    uniq, inv = np.unique(idx, return_inverse=True)
    names = []
    for i in uniq.tolist():
        if i >= run_start:
            v = _made(made, i)
        else:
            try:
                v = memo[i]  # (may build a record of an earlier run)
            except KeyError:
                return None
        if type(v) is not str:
            return None
        names.append(v)
    return names, inv.reshape(-1)


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
        off = tuple(run.offsets[i].tolist())
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
        p, count, segments, ends = pos, 0, [], []
        made: list = []  # (memo indices, names, index) of the run's new strings
        memo_at = nmemo
        while count < MAX_RUN:
            shape = _probe(grammar, data, p, memo_base)
            if shape is None:
                break
            m = _rows(data, p, shape, MAX_RUN - count)
            row_memo = memo_at + shape.memo * np.arange(len(m), dtype=np.int64)
            got = decode(m, shape, nd, row_memo, nmemo, memo, made)
            if got is None:
                break
            segments.append(got)
            ends.append(memo_at - nmemo + shape.memo * np.arange(1, len(m) + 1))
            memo_at += shape.memo * len(m)
            count += len(m)
            p += shape.length * len(m)
        if not count:
            return None
        budget.charge(count * (nd + 12), "records")
        return p, segments, np.concatenate(ends), nd

    def decode_chunks(m, shape, nd, row_memo, run_start, memo, made):
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

    def decode_storage(m, shape, nd, row_memo, run_start, memo, made):
        want = {
            "cls": index_cls,
            "k_fqn": "fqn",
            "k_index": "index",
            "k_offset": "offset",
            "off_size": size_fn,
            "info_cls": info_cls,
            "k_path": "relative_path",
            "k_file_offset": "offset",
            "k_length": "length",
        }
        if not _check_gets(shape, want, memo):
            return None
        # memo entries of a pair: MetadataIndex, its dict, [fqn], offset tuple, (tuple,), Size,
        # _StorageInfo, its dict, [path]
        fqns = _strs(m, shape, "fqn", 2, row_memo, run_start, memo, made)
        if fqns is None:
            return None
        at = 7 + (shape.fields["fqn"][0] == "new")
        paths = _strs(m, shape, "path", at, row_memo, run_start, memo, made)
        if paths is None:
            return None
        f = shape.fields
        off = np.stack([_field(m, f[f"off{i}"]) for i in range(nd)], axis=1)
        hint = _field(m, f["hint"])
        has_hint = np.full(len(m), hint is not None)
        if hint is None:
            hint = np.zeros(len(m), np.int64)
        fresh = (f["fqn"][0] == "new", f["path"][0] == "new")
        return (
            fqns,
            paths,
            off,
            hint,
            has_hint,
            _field(m, f["file_offset"]),
            _field(m, f["length"]),
            fresh,
        )

    def storage(data, pos, memo, nmemo, stack, marks):
        if not _in_container(stack, marks, dict):
            return None
        got = run(data, pos, memo, nmemo, _storage_grammar, 7, decode_storage)
        if got is None:
            return None
        end, segs, ends, nd = got
        out = StorageRun(
            _merge_names([s[0] for s in segs]),
            _merge_names([s[1] for s in segs]),
            *(np.concatenate([s[i] for s in segs]) for i in range(2, 7)),
        )
        fresh_fqn = np.concatenate([np.full(len(s[2]), s[7][0]) for s in segs])
        fresh_path = np.concatenate([np.full(len(s[2]), s[7][1]) for s in segs])
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
