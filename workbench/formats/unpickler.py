"""A pure-Python unpickler whose memory and time are bounded by its input's size.

CPython's C unpickler (and so ``pickle.Unpickler`` subclasses, torch's ``read_metadata``) trusts
the file: ``LONG_BINPUT 0x30000000`` makes it allocate and zero a memo array of gigabytes; a
million nested ``TUPLE1`` used as a dict key crashes the interpreter (tuple hashing recurses in C
without a guard); ``BINBYTES8`` allocates its declared length before reading; 40,000 int keys that
share one hash make ``SETITEMS`` quadratic (14 s for 600 KB). This reader decodes every opcode of
protocols 0-5 itself and checks before it allocates:

- the memo is a dict, and a ``PUT`` index must not exceed the number of objects memoised so far
  (pickle's own writers number them 0, 1, 2, ...);
- every declared length (strings, bytes, ``LONG4``, ``FRAME``) is checked against the bytes left;
- dict keys and set elements must be `limits.is_safe_key` values or objects the caller allows
  (`safe_key`), so no crafted hash collision and no deep key is ever hashed;
- every call (``REDUCE``, ``NEWOBJ``, ``BUILD``, ``INST`` / ``OBJ``) goes through the caller's
  hooks and is charged the size of its arguments to a `limits.Budget`, as are container copies,
  so repeated references to one big object cannot multiply work;
- text opcodes (protocol 0) are limited to short lines.

So memory is a small multiple of the input (every object on the stack or in the memo was built
by an opcode of the input) and time is linear in it. The caller supplies ``find_class`` (the
allow-list) and the hooks; nothing is imported or called that they do not return.

A caller may also give ``fast_paths``: decoders of runs of records that repeat by the hundred
thousand (a ``.metadata``'s chunks, `formats.dcp_fast`). When a ``GET`` fetches one of their
classes, the decoder may consume the whole run at once and push one object in its place; the
memo entries the run would have made are registered with `LazyMemo` and built only if the
pickle refers back to one. A decoder declines (returns None) whatever it does not recognise
exactly, and the loop below then reads the same bytes one opcode at a time.

Imports the standard library, ``workbench.errors`` and ``formats.limits`` only.
"""

from __future__ import annotations

import codecs
import struct
from bisect import bisect_right
from typing import Any

from ..errors import WorkbenchError
from .limits import Budget, brief, is_safe_key

__all__ = ["BoundedUnpickler", "UnpicklingError", "LazyMemo", "MAX_LINE"]

# Longest line of a protocol-0 text opcode (an int, a float, a module or class name, a string).
MAX_LINE = 1 << 16

_unpack_I = struct.Struct("<I").unpack_from
_unpack_i = struct.Struct("<i").unpack_from
_unpack_H = struct.Struct("<H").unpack_from
_unpack_Q = struct.Struct("<Q").unpack_from
_unpack_d = struct.Struct(">d").unpack_from


class UnpicklingError(Exception):
    """The bytes are not a valid pickle (``truncated`` says whether they end too early)."""

    def __init__(self, message: str, truncated: bool = False):
        super().__init__(message)
        self.truncated = truncated


def _utf8(b: bytes) -> str:
    return str(b, "utf-8", "surrogatepass")


def _ascii(b: bytes) -> str:
    return b.decode("ascii", "strict")


def _long(b: bytes) -> int:
    return int.from_bytes(b, "little", signed=True)


def _same(b: bytes) -> bytes:
    return b


# The rarer length-prefixed opcodes: opcode -> (bytes of the length, name, conversion).
_COUNTED = {
    0x58: (4, "BINUNICODE", _utf8),
    0x8D: (8, "BINUNICODE8", _utf8),
    0x43: (1, "SHORT_BINBYTES", _same),
    0x42: (4, "BINBYTES", _same),
    0x8E: (8, "BINBYTES8", _same),
    0x96: (8, "BYTEARRAY8", bytearray),
    0x55: (1, "SHORT_BINSTRING", _ascii),  # a Python 2 str
    0x54: (4, "BINSTRING", _ascii),
    0x8B: (4, "LONG4", _long),
}


class LazyMemo(dict):
    """The unpickler's memo (index -> object). Ranges of indices a fast path consumed are
    registered with `add_range` and built by their ``build(index)`` (which stores the objects
    of the record it belongs to with `dict.__setitem__` and returns the one asked for) on the
    first reference; a plain dict otherwise."""

    __slots__ = ("starts", "ranges")

    def __init__(self):
        super().__init__()
        self.starts: list[int] = []
        self.ranges: list[tuple[int, int, object]] = []

    def add_range(self, start: int, stop: int, build) -> None:
        self.starts.append(start)
        self.ranges.append((start, stop, build))

    def __missing__(self, idx):
        if self.starts and type(idx) is int:
            i = bisect_right(self.starts, idx) - 1
            if i >= 0:
                start, stop, build = self.ranges[i]
                if idx < stop:
                    return build(idx)
        raise KeyError(idx)


class _NoFastPath:
    """No memo object has this type: the loop's fast-path test is one ``is`` when none is set."""


# protocol-2 compatibility names a Python 2 pickle uses (what pickle's fix_imports maps)
_OLD_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class BoundedUnpickler:
    """Unpickle ``data`` (bytes) within bounds. Subclasses give the allow-list and the hooks:

    - ``find_class(module, name)``: the object a global names, or raise;
    - ``call(func, args)``: ``REDUCE`` / ``INST`` / ``OBJ`` (``func(*args)``);
    - ``new_object(cls, args, kwargs)``: ``NEWOBJ`` / ``NEWOBJ_EX`` (``cls.__new__(cls, *args)``);
    - ``build(obj, state)``: ``BUILD``;
    - ``persistent_load(pid)``;
    - ``safe_key(obj)``: whether a non-plain object (an identity-hashed record) may be a key.

    ``budget`` is charged for copies and calls; ``load()`` returns the unpickled object.

    ``fast_paths`` maps a memoised object (a record class) to ``decode(data, pos, memo, nmemo,
    stack, marks)``, tried when a ``GET`` at ``pos`` fetches that object and its type is
    ``fast_type``; it returns None or ``(end, objects to push, memo entries made)``.
    """

    fast_paths: dict = {}
    fast_type: type = _NoFastPath

    def __init__(self, data: bytes, *, budget: Budget | None = None, source: str = "<pickle>"):
        self.data = bytes(data)
        self.source = source
        self.budget = budget or Budget(len(self.data), source=source)
        self.proto = 0

    # ------------------------------------------------------------------ hooks
    def find_class(self, module: str, name: str):
        raise UnpicklingError(f"global {module}.{name} is not allowed")

    def call(self, func, args: tuple):
        raise UnpicklingError(f"call of {brief(func, 60)} is not allowed")

    def new_object(self, cls, args: tuple, kwargs: dict):
        raise UnpicklingError(f"NEWOBJ of {brief(cls, 60)} is not allowed")

    def build(self, obj, state) -> None:
        raise UnpicklingError(f"BUILD of {brief(obj, 60)} is not allowed")

    def persistent_load(self, pid):
        raise UnpicklingError(f"persistent id {brief(pid, 60)} is not allowed")

    def safe_key(self, obj) -> bool:
        return False

    # ------------------------------------------------------------------ helpers
    def _check_key(self, k):
        if not (is_safe_key(k) or self.safe_key(k)):
            raise UnpicklingError(
                f"a dict key or set element of type {type(k).__name__} ({brief(k, 60)}): only "
                "strings, bytes, int64 ints, None, bools, tuples of strings and records may be "
                "hashed"
            )

    def _charge_args(self, args):
        n = 1
        for a in args if type(args) is tuple else (args,):
            if type(a) in (list, tuple, dict, set, frozenset, str, bytes, bytearray):
                n += len(a)
        self.budget.charge(n, "arguments of calls")

    # ------------------------------------------------------------------ the loop
    def load(self) -> Any:  # noqa: C901 - one dispatch loop, kept flat for speed
        data = self.data
        n = len(data)
        pos = 0
        stack: list = []
        marks: list = []
        memo = LazyMemo()
        nmemo = 0
        fast = self.fast_paths
        fast_type = self.fast_type
        append = stack.append
        source = self.source
        check_key = self._check_key
        new_object = self.new_object
        build = self.build

        def need(k):
            if pos + k > n:
                raise UnpicklingError("pickle data was truncated", truncated=True)

        def counted(k, what):
            # a declared length read from k bytes at pos; returns (length, new pos)
            need(k)
            if k == 1:
                ln = data[pos]
            elif k == 4:
                ln = _unpack_I(data, pos)[0]
            else:
                ln = _unpack_Q(data, pos)[0]
            p = pos + k
            if ln > n - p:
                raise UnpicklingError(
                    f"{what} declares {ln:,} bytes but only {n - p:,} are left", truncated=True
                )
            return ln, p

        def line():
            end = data.find(b"\n", pos, pos + MAX_LINE + 1)
            if end < 0:
                if n - pos <= MAX_LINE:
                    raise UnpicklingError("pickle data was truncated", truncated=True)
                raise UnpicklingError(f"a text opcode's line is longer than {MAX_LINE} bytes")
            return data[pos:end], end + 1

        def pop_mark():
            if not marks:
                raise UnpicklingError("unexpected MARK-consuming opcode without a MARK")
            m = marks.pop()
            items = stack[m:]
            del stack[m:]
            return items

        def put(idx):
            # memo keys stay within 0 .. nmemo - 1 (nmemo: entries made so far, fast runs'
            # unbuilt ones included), so a PUT can grow the memo by one entry at most
            if type(idx) is not int or idx < 0 or idx > nmemo:
                raise UnpicklingError(
                    f"memo index {idx!r:.30} beyond the {nmemo} objects memoised so far"
                )
            if not stack:
                raise UnpicklingError("PUT on an empty stack")
            memo[idx] = stack[-1]
            return max(nmemo, idx + 1)

        def get(idx):
            try:
                append(memo[idx])
            except KeyError:
                raise UnpicklingError(f"memo index {idx!r:.30} was never memoised") from None

        def top(what):
            if not stack or (marks and len(stack) <= marks[-1]):
                raise UnpicklingError(f"{what} on an empty stack")
            return stack.pop()

        def as_int(text: bytes, what):
            try:
                return int(text)
            except ValueError:
                raise UnpicklingError(f"{what} {text[:30]!r} is not an int") from None

        def name_pair(what):
            nonlocal pos
            mod, pos = line()
            nm, pos = line()
            try:
                return mod.decode("ascii"), nm.decode("ascii")
            except UnicodeDecodeError:
                raise UnpicklingError(f"{what} names are not ASCII") from None

        def find(mod, nm):
            if self.proto < 3:
                mod = _OLD_MODULES.get(mod, mod)
            return self.find_class(mod, nm)

        budget = self.budget
        sized = (list, tuple, dict, set, frozenset, str, bytes, bytearray)

        def call(func, args):
            if type(args) is not tuple:
                raise UnpicklingError(f"call arguments {brief(args, 40)} are not a tuple")
            w = 1
            for a in args:
                if type(a) in sized:
                    w += len(a)
            budget.used += w
            if budget.used > budget.limit:
                budget.charge(0, "arguments of calls")
            return self.call(func, args)

        try:
            while True:
                op = data[pos]  # IndexError past the end: truncated (handled below)
                pos += 1
                # the opcodes of real torch pickles first, by frequency
                # (struct.error / IndexError past the end, KeyError of a missing memo entry and
                # IndexError of an empty stack are turned into UnpicklingErrors below)
                if op == 0x94:  # MEMOIZE
                    memo[nmemo] = stack[-1]
                    nmemo += 1
                elif op == 0x6A or op == 0x68:  # LONG_BINGET, BINGET
                    if op == 0x68:
                        v, width = memo[data[pos]], 1
                    else:
                        v, width = memo[_unpack_I(data, pos)[0]], 4
                    if type(v) is fast_type and v in fast:
                        got = fast[v](data, pos - 1, memo, nmemo, stack, marks)
                        if got is not None:
                            pos, objs, made = got
                            stack.extend(objs)
                            nmemo += made
                            continue
                    append(v)
                    pos += width
                elif op == 0x4D:  # BININT2
                    append(_unpack_H(data, pos)[0])
                    pos += 2
                elif op == 0x85:  # TUPLE1
                    stack[-1] = (stack[-1],)
                elif op == 0x28:  # MARK
                    marks.append(len(stack))
                elif op == 0x75:  # SETITEMS
                    m = marks.pop()
                    items = stack[m:]
                    del stack[m:]
                    if len(items) % 2:
                        raise UnpicklingError("SETITEMS with an odd number of items")
                    d = stack[-1]
                    if type(d) is not dict:
                        raise UnpicklingError(f"SETITEMS on {brief(d, 40)}")
                    for i in range(0, len(items), 2):
                        k = items[i]
                        if type(k) is not str:
                            check_key(k)
                        d[k] = items[i + 1]
                elif op == 0x29:  # EMPTY_TUPLE
                    append(())
                elif op == 0x81:  # NEWOBJ
                    args = stack.pop()
                    if type(args) is not tuple:
                        raise UnpicklingError("NEWOBJ arguments are not a tuple")
                    if args:
                        self._charge_args(args)
                    stack[-1] = new_object(stack[-1], args, {})
                elif op == 0x62:  # BUILD
                    state = stack.pop()
                    build(stack[-1], state)
                elif op == 0x7D:  # EMPTY_DICT
                    append({})
                elif op == 0x52:  # REDUCE
                    args = stack.pop()
                    stack[-1] = call(stack[-1], args)
                elif op == 0x4B:  # BININT1
                    append(data[pos])
                    pos += 1
                elif op == 0x86:  # TUPLE2
                    b = stack.pop()
                    stack[-1] = (stack[-1], b)
                elif op == 0x8C:  # SHORT_BINUNICODE
                    ln, p = counted(1, "SHORT_BINUNICODE")
                    append(str(data[p : p + ln], "utf-8", "surrogatepass"))
                    pos = p + ln
                elif op == 0x4A:  # BININT
                    append(_unpack_i(data, pos)[0])
                    pos += 4
                elif op == 0x8A:  # LONG1
                    ln, p = counted(1, "LONG1")
                    append(int.from_bytes(data[p : p + ln], "little", signed=True))
                    pos = p + ln
                elif op == 0x95:  # FRAME: a length hint, checked, then ignored
                    ln, p = counted(8, "FRAME")
                    pos = p
                elif op == 0x89:  # NEWFALSE
                    append(False)
                elif op == 0x88:  # NEWTRUE
                    append(True)
                elif op == 0x4E:  # NONE
                    append(None)
                elif op == 0x5D:  # EMPTY_LIST
                    append([])
                elif op == 0x65:  # APPENDS
                    items = pop_mark()
                    lst = top("APPENDS")
                    if type(lst) is not list:
                        raise UnpicklingError(f"APPENDS on {brief(lst, 40)}")
                    lst.extend(items)
                    append(lst)
                elif op == 0x61:  # APPEND
                    v = top("APPEND")
                    lst = top("APPEND")
                    if type(lst) is not list:
                        raise UnpicklingError(f"APPEND on {brief(lst, 40)}")
                    lst.append(v)
                    append(lst)
                elif op == 0x74:  # TUPLE
                    append(tuple(pop_mark()))
                elif op == 0x87:  # TUPLE3
                    c = top("TUPLE3")
                    b = top("TUPLE3")
                    a = top("TUPLE3")
                    append((a, b, c))
                elif op == 0x93:  # STACK_GLOBAL
                    nm = top("STACK_GLOBAL")
                    mod = top("STACK_GLOBAL")
                    if type(nm) is not str or type(mod) is not str:
                        raise UnpicklingError("STACK_GLOBAL names are not strings")
                    append(find(mod, nm))
                elif op == 0x71:  # BINPUT
                    need(1)
                    nmemo = put(data[pos])
                    pos += 1
                elif op == 0x72:  # LONG_BINPUT
                    need(4)
                    nmemo = put(_unpack_I(data, pos)[0])
                    pos += 4
                elif op == 0x80:  # PROTO
                    need(1)
                    self.proto = data[pos]
                    if self.proto > 5:
                        raise UnpicklingError(f"unsupported pickle protocol {self.proto}")
                    pos += 1
                elif op == 0x2E:  # STOP
                    return top("STOP")
                elif op in _COUNTED:  # a length-prefixed string, bytes or long
                    width, name, convert = _COUNTED[op]
                    # (a negative signed length reads as a huge unsigned one: refused as such)
                    ln, p = counted(width, name)
                    append(convert(data[p : p + ln]))
                    pos = p + ln
                elif op == 0x47:  # BINFLOAT
                    need(8)
                    append(_unpack_d(data, pos)[0])
                    pos += 8
                elif op == 0x30:  # POP
                    if marks and len(stack) == marks[-1]:
                        pop_mark()
                    else:
                        top("POP")
                elif op == 0x31:  # POP_MARK
                    pop_mark()
                elif op == 0x32:  # DUP
                    if not stack:
                        raise UnpicklingError("DUP on an empty stack")
                    append(stack[-1])
                elif op == 0x6C:  # LIST
                    append(pop_mark())
                elif op == 0x64:  # DICT
                    items = pop_mark()
                    if len(items) % 2:
                        raise UnpicklingError("DICT with an odd number of items")
                    d = {}
                    for i in range(0, len(items), 2):
                        check_key(items[i])
                        d[items[i]] = items[i + 1]
                    append(d)
                elif op == 0x73:  # SETITEM
                    v = top("SETITEM")
                    k = top("SETITEM")
                    d = top("SETITEM")
                    if type(d) is not dict:
                        raise UnpicklingError(f"SETITEM on {brief(d, 40)}")
                    check_key(k)
                    d[k] = v
                    append(d)
                elif op == 0x8F:  # EMPTY_SET
                    append(set())
                elif op == 0x90:  # ADDITEMS
                    items = pop_mark()
                    s = top("ADDITEMS")
                    if type(s) is not set:
                        raise UnpicklingError(f"ADDITEMS on {brief(s, 40)}")
                    for k in items:
                        check_key(k)
                    s.update(items)
                    append(s)
                elif op == 0x91:  # FROZENSET
                    items = pop_mark()
                    for k in items:
                        check_key(k)
                    append(frozenset(items))
                elif op == 0x92:  # NEWOBJ_EX
                    kwargs = top("NEWOBJ_EX")
                    args = top("NEWOBJ_EX")
                    cls = top("NEWOBJ_EX")
                    if type(args) is not tuple or type(kwargs) is not dict:
                        raise UnpicklingError("NEWOBJ_EX arguments are not a tuple and a dict")
                    self._charge_args(args)
                    self._charge_args(tuple(kwargs.values()))
                    append(self.new_object(cls, args, kwargs))
                elif op == 0x63:  # GLOBAL (text)
                    append(find(*name_pair("GLOBAL")))
                elif op == 0x69:  # INST (text): class, then the marked arguments
                    cls = find(*name_pair("INST"))
                    append(call(cls, tuple(pop_mark())))
                elif op == 0x6F:  # OBJ: marked class and arguments
                    items = pop_mark()
                    if not items:
                        raise UnpicklingError("OBJ without a class")
                    append(call(items[0], tuple(items[1:])))
                elif op == 0x70:  # PUT (text)
                    text, pos = line()
                    nmemo = put(as_int(text, "PUT index"))
                elif op == 0x67:  # GET (text)
                    text, pos = line()
                    get(as_int(text, "GET index"))
                elif op == 0x49:  # INT (text): also the protocol-0 booleans
                    text, pos = line()
                    if text == b"00":
                        append(False)
                    elif text == b"01":
                        append(True)
                    else:
                        append(as_int(text, "INT"))
                elif op == 0x4C:  # LONG (text)
                    text, pos = line()
                    append(as_int(text[:-1] if text.endswith(b"L") else text, "LONG"))
                elif op == 0x46:  # FLOAT (text)
                    text, pos = line()
                    try:
                        append(float(text))
                    except ValueError:
                        raise UnpicklingError(f"FLOAT {text[:30]!r} is not a float") from None
                elif op == 0x53:  # STRING (text, quoted)
                    text, pos = line()
                    if len(text) < 2 or text[0] != text[-1] or text[0] not in b"\"'":
                        raise UnpicklingError("STRING is not quoted")
                    append(codecs.escape_decode(text[1:-1])[0].decode("ascii"))
                elif op == 0x56:  # UNICODE (text)
                    text, pos = line()
                    append(str(text, "raw-unicode-escape"))
                elif op == 0x50:  # PERSID (text)
                    text, pos = line()
                    append(self.persistent_load(text.decode("ascii", "replace")))
                elif op == 0x51:  # BINPERSID
                    append(self.persistent_load(top("BINPERSID")))
                elif op in (0x82, 0x83, 0x84):
                    raise UnpicklingError("extension codes (EXT1/2/4) are not allowed")
                elif op in (0x97, 0x98):
                    raise UnpicklingError("out-of-band buffers are not allowed")
                else:
                    raise UnpicklingError(f"invalid load key {bytes([op])!r} at byte {pos - 1}")
        except (UnpicklingError, WorkbenchError):
            raise
        except (IndexError, struct.error):
            if pos >= n - 8:
                raise UnpicklingError("pickle data was truncated", truncated=True) from None
            raise UnpicklingError(f"stack underflow near byte {pos} of {source}") from None
        except KeyError as e:
            raise UnpicklingError(f"memo index {e} was never memoised") from None
        except (UnicodeDecodeError, ValueError, OverflowError) as e:
            raise UnpicklingError(f"bad value near byte {pos}: {type(e).__name__}: {e}") from None
        except RecursionError:
            raise UnpicklingError(f"nesting too deep near byte {pos}") from None
