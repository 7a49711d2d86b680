"""Tables: pandas DataFrames of layouts, checkpoints, save and load plans, problems and I/O.

Every ``*_table`` function returns a DataFrame with the documented columns, in the documented
order and with fixed dtypes whatever the input (an empty input gives an empty frame with the same
columns), so widgets, reports and tests can rely on them. Conventions shared by all tables:

- a region is a `Chunk` in slice notation, ``"[4:8, 0:6]"`` (global coordinates);
- ``offsets`` / ``sizes`` / ``lengths`` and rank sets are tuples (object columns);
- counts that can be unknown (bytes of a pickled entry, a byte range before a real save, a writer
  that no file name tells) are pandas nullable ``Int64`` and ``<NA>`` when unknown, never a fake 0;
- text columns are pandas ``str`` columns, missing text is NaN;
- the writer rank of a saved item is parsed from its file name ``__<rank>_<n>.distcp`` (torch's
  ``FileSystemWriter`` naming), the only place a checkpoint records it.

`style_by_rank` colours rank columns with `workbench.colors`, like every picture. This module is a
presentation layer: it imports pandas at the top and must not be imported by ``workbench``'s
``__init__``; it never imports torch or matplotlib.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable

import numpy as np

from .errors import missing_extra

try:
    import pandas as pd
except ImportError as e:  # the planning core needs no pandas; tables say which extra adds it
    raise missing_extra(e, "lab", "workbench.tables") from None

from .checkpoint import file_totals, saved_item_columns
from .colors import rank_color, text_color
from .errors import PlanError
from .formats.dcp_files import writer_of_file
from .formatting import format_bytes, format_held, format_ranks, ranks_text
from .records import (
    DTYPE_SIZES,
    BytesStorageMetadata,
    LoadItemType,
    MetadataIndex,
    chunk_storage,
    metadata_of,
    storage_data_of,
    tensor_entries,
)
from .sharding import Layout, StridedShard, chunk_holders
from .sources import as_layout, as_record

__all__ = [
    "layout_chunks_table",
    "checkpoint_chunks_table",
    "checkpoint_entries_table",
    "checkpoint_files_table",
    "write_items_table",
    "read_items_table",
    "problems_table",
    "io_table",
    "file_io_table",
    "targets_table",
    "distribution_table",
    "equal_rows_table",
    "format_tables",
    "style_by_rank",
]


def _frame(columns: dict[str, list], schema: dict[str, str]) -> pd.DataFrame:
    """A DataFrame with exactly ``schema``'s columns and dtypes (``Int64``, ``str``, ``bool``,
    ``int64``, ``object``), empty or not."""
    data = {}
    for name, dtype in schema.items():
        values = columns.get(name, [])
        if dtype == "object":
            arr = np.empty(len(values), dtype=object)
            arr[:] = values  # tuples stay tuples (np.array would make a 2-d array of them)
            data[name] = pd.Series(arr, dtype=object)
        else:
            data[name] = pd.Series(values, dtype=dtype)
    return pd.DataFrame(data)


# ----------------------------------------------------------------------------- layouts
_LAYOUT_SCHEMA = {
    "rank": "int64",
    "coordinate": "object",
    "chunk": "int64",
    "region": "str",
    "offsets": "object",
    "sizes": "object",
    "numel": "Int64",
    "bytes": "Int64",
    "replicas": "object",
    "is_empty": "bool",
    "misdescribed": "bool",
    "held": "str",
}


def layout_chunks_table(layout: Layout) -> pd.DataFrame:
    """One row per (rank, chunk) of a `Layout`, ranks ascending; ranks holding nothing (outside the
    mesh, or not among a plain tensor's holders) have no row.

    Columns:
      ``rank`` (int64); ``coordinate`` (mesh coordinate tuple, None without a mesh);
      ``chunk`` (int64, position among the rank's chunks); ``region`` (str, slice notation;
      ``"[]"`` for 0-d; NaN for a bytes entry); ``offsets``, ``sizes`` (tuples, DCP's box);
      ``numel``, ``bytes`` (Int64, of the box; <NA> for a bytes entry, whose pickled size is not
      known before a save); ``replicas`` (tuple of every rank holding the same box, this one
      included); ``is_empty`` (bool, a zero-size box, e.g. an uneven DTensor's last shards);
      ``misdescribed`` (bool, the box DCP records is not the data the rank holds, the
      ``_StridedShard`` hazard); ``held`` (str, for DTensors with a ``_StridedShard`` placement
      the global indices the rank really holds per sharded dim, ``"dim 0: 0:2, 4:6"``; NaN
      otherwise).
    """
    layout = as_layout(layout)
    esize = DTYPE_SIZES[layout.dtype]
    is_bytes = layout.is_bytes
    holders = chunk_holders(layout)
    mis = set(layout.misdescribed_ranks)
    strided = layout.kind == "dtensor" and any(
        isinstance(p, StridedShard) for p in layout.placements
    )
    cols: dict[str, list] = defaultdict(list)
    for r, chunks in enumerate(layout.rank_chunks):
        if not chunks:
            continue
        coord = layout.coordinate(r)
        held = format_held(layout.held_indices(r)) if strided else None
        for i, c in enumerate(chunks):
            n = None if is_bytes else c.volume
            cols["rank"].append(r)
            cols["coordinate"].append(coord)
            cols["chunk"].append(i)
            cols["region"].append(None if is_bytes else str(c))
            cols["offsets"].append(c.offsets)
            cols["sizes"].append(c.sizes)
            cols["numel"].append(n)
            cols["bytes"].append(None if n is None else n * esize)
            cols["replicas"].append(holders[c])
            cols["is_empty"].append(c.is_empty and not is_bytes)
            cols["misdescribed"].append(r in mis)
            cols["held"].append(held)
    return _frame(cols, _LAYOUT_SCHEMA)


# ----------------------------------------------------------------------------- checkpoints
_CHECKPOINT_SCHEMA = {
    "fqn": "str",
    "kind": "str",
    "chunk": "Int64",
    "region": "str",
    "offsets": "object",
    "sizes": "object",
    "numel": "Int64",
    "bytes": "Int64",
    "dtype": "str",
    "file": "str",
    "offset": "Int64",
    "length": "Int64",
    "writer": "Int64",
}


def checkpoint_chunks_table(metadata, fqn: str | None = None) -> pd.DataFrame:
    """One row per saved chunk of a checkpoint's `Metadata` (every entry in metadata order, or
    only ``fqn``), chunks in metadata order; a bytes entry is one row. Also accepts anything with
    a ``.metadata`` (a save result, a `checkpoint.Checkpoint`) or one `TensorStorageMetadata`
    (labelled ``fqn``).

    Columns:
      ``fqn`` (str); ``kind`` (str, ``"tensor"`` or ``"bytes"``); ``chunk`` (Int64, index in the
      entry's chunk list, DCP's ``MetadataIndex.index``; <NA> for bytes); ``region`` (str, slice
      notation; NaN for bytes); ``offsets``, ``sizes`` (tuples; None for bytes); ``numel``,
      ``bytes`` (Int64; for bytes entries ``bytes`` is the stored length when known);
      ``dtype`` (str; NaN for bytes); ``file`` (str, ``storage_data``'s relative path);
      ``offset``, ``length`` (Int64, the byte range in that file; <NA> until a real save);
      ``writer`` (Int64, rank parsed from the file name). Storage columns are NaN / <NA> when
      ``storage_data`` has no entry for the chunk (e.g. a bare `TensorStorageMetadata`).

    Raises `MetadataError` when ``fqn`` is not in the checkpoint.
    """
    metadata = as_record(metadata_of(metadata))  # once: converting torch's Metadata is not free
    entries = tensor_entries(metadata, fqn)
    storage = storage_data_of(metadata)
    cols: dict[str, list] = defaultdict(list)
    for name, md in entries.items():
        infos = chunk_storage(storage, name, md)
        for info in infos:
            path = getattr(info, "relative_path", None)
            cols["file"].append(path)
            cols["offset"].append(getattr(info, "offset", None))
            cols["length"].append(getattr(info, "length", None))
            cols["writer"].append(writer_of_file(path))
        if isinstance(md, BytesStorageMetadata):
            for k, v in (
                ("fqn", name),
                ("kind", "bytes"),
                ("chunk", None),
                ("region", None),
                ("offsets", None),
                ("sizes", None),
                ("numel", None),
                ("bytes", getattr(infos[0], "length", None)),
                ("dtype", None),
            ):
                cols[k].append(v)
            continue
        dtype = md.properties.dtype
        esize = DTYPE_SIZES[dtype]
        for i, c in enumerate(md.chunks):
            n = c.volume
            cols["fqn"].append(name)
            cols["kind"].append("tensor")
            cols["chunk"].append(i)
            cols["region"].append(str(c))
            cols["offsets"].append(c.offsets)
            cols["sizes"].append(c.sizes)
            cols["numel"].append(n)
            cols["bytes"].append(n * esize)
            cols["dtype"].append(dtype)
    return _frame(cols, _CHECKPOINT_SCHEMA)


def _distinct_per(group: np.ndarray, value: np.ndarray, n: int) -> np.ndarray:
    """How many distinct ``value`` (ignoring -1) each group of ``0 <= group < n`` holds."""
    keep = value >= 0
    width = int(value.max(initial=0)) + 1
    pairs = np.sort(group[keep] * width + value[keep])  # a sort: np.unique hashes, 10x slower here
    first = np.ones(len(pairs), bool)
    first[1:] = pairs[1:] != pairs[:-1]
    return np.bincount(pairs[first] // width, minlength=n)


_ENTRIES_SCHEMA = {
    "fqn": "str",
    "kind": "str",
    "shape": "object",
    "dtype": "str",
    "chunks": "int64",
    "bytes": "Int64",
    "files": "int64",
    "writers": "int64",
}


def checkpoint_entries_table(metadata) -> pd.DataFrame:
    """One row per entry of a checkpoint's `Metadata`, in metadata order: what
    `checkpoint_chunks_table` lists chunk by chunk, summed per entry with numpy (a 16,384-rank
    checkpoint has a million chunks and a thousand entries). Also accepts anything with a
    ``.metadata``.

    Columns:
      ``fqn`` (str); ``kind`` (str, ``"tensor"`` or ``"bytes"``); ``shape`` (tuple; None for
      bytes); ``dtype`` (str; NaN for bytes); ``chunks`` (int64, saved chunks; 1 for bytes);
      ``bytes`` (Int64, the tensor's bytes; for bytes entries the stored length, <NA> when
      unknown); ``files`` (int64, distinct data files holding its chunks); ``writers`` (int64,
      distinct writer ranks parsed from those files' names).
    """
    metadata = as_record(metadata_of(metadata))
    sdm = metadata.state_dict_metadata
    entry, path, length, names = saved_item_columns(metadata)
    n = len(sdm)
    writer_of = np.array(
        [-1 if (w := writer_of_file(p)) is None else w for p in names] + [-1], np.int64
    )
    files = _distinct_per(entry, path, n)
    writers = _distinct_per(entry, writer_of[path], n)  # path -1 -> the trailing -1
    first = np.concatenate([[0], np.cumsum(np.bincount(entry, minlength=n))[:-1]]).tolist()
    lengths = length.tolist()
    cols: dict[str, list] = defaultdict(list)
    for i, (fqn, md) in enumerate(sdm.items()):
        tensor = not isinstance(md, BytesStorageMetadata)
        stored = -1 if tensor else lengths[first[i]]  # a bytes entry is one item
        cols["fqn"].append(fqn)
        cols["kind"].append("tensor" if tensor else "bytes")
        cols["shape"].append(tuple(md.size) if tensor else None)
        cols["dtype"].append(md.properties.dtype if tensor else None)
        cols["chunks"].append(len(md.chunks) if tensor else 1)
        cols["bytes"].append(md.nbytes if tensor else (None if stored < 0 else stored))
    cols["files"], cols["writers"] = files.tolist(), writers.tolist()
    return _frame(cols, _ENTRIES_SCHEMA)


_FILES_SCHEMA = {"file": "str", "writer": "Int64", "items": "int64", "bytes": "Int64"}


def checkpoint_files_table(metadata) -> pd.DataFrame:
    """One row per data file the storage entries of a checkpoint's `Metadata` name, sorted by
    writer rank (files without one last) then name. Also accepts anything with a ``.metadata``.

    Columns:
      ``file`` (str, ``storage_data``'s relative path); ``writer`` (Int64, rank parsed from the
      name, <NA> for other names); ``items`` (int64, saved items stored in it, one per chunk and
      per bytes entry); ``bytes`` (Int64, the sum of their stored lengths, those known; <NA>
      when none is, as in a planned save before it runs).
    """
    _, path, length, names = saved_item_columns(as_record(metadata_of(metadata)))
    rows = file_totals(path, length, names)
    return _frame(
        {
            "file": [r[0] for r in rows],
            "writer": [r[1] for r in rows],
            "items": [r[2] for r in rows],
            "bytes": [nbytes if measured else None for *_, nbytes, measured in rows],
        },
        _FILES_SCHEMA,
    )


# ----------------------------------------------------------------------------- save plans
_WRITE_SCHEMA = {
    "rank": "int64",
    "order": "int64",
    "fqn": "str",
    "type": "str",
    "region": "str",
    "numel": "Int64",
    "bytes": "Int64",
    "kept": "bool",
    "writer": "Int64",
    "file": "str",
}


def _written_by(plans) -> dict[MetadataIndex, int]:
    """``MetadataIndex`` (fqn, offset) -> the rank whose final plan writes it."""
    return {item.index: r for r, plan in enumerate(plans) for item in plan.items}


def write_items_table(save_result) -> pd.DataFrame:
    """One row per write item of every rank's local save plan (``save_result.local_plans``, torch's
    ``create_default_local_save_plan`` before dedup), ranks ascending, items in plan order.

    Columns:
      ``rank`` (int64); ``order`` (int64, position in the rank's local plan); ``fqn`` (str);
      ``type`` (str, ``WriteItemType`` name: ``TENSOR``, ``SHARD``, ``BYTE_IO``); ``region`` (str,
      the chunk in slice notation; NaN for BYTE_IO); ``numel``, ``bytes`` (Int64, of the chunk;
      <NA> for BYTE_IO); ``kept`` (bool, the item survived ``dedup_save_plans`` on this rank);
      ``writer`` (Int64, the rank that writes this ``(fqn, offset)`` after dedup); ``file`` (str,
      ``metadata.storage_data``'s path for it, NaN when unknown).
    """
    final = [{item.index for item in plan.items} for plan in save_result.plans]
    writer = _written_by(save_result.plans)
    storage = storage_data_of(getattr(save_result, "metadata", None))
    cols: dict[str, list] = defaultdict(list)
    for r, plan in enumerate(save_result.local_plans):
        for i, item in enumerate(plan.items):
            td = item.tensor_data
            n = None if td is None else td.chunk.volume
            cols["rank"].append(r)
            cols["order"].append(i)
            cols["fqn"].append(item.index.fqn)
            cols["type"].append(item.type.name)
            cols["region"].append(None if td is None else str(td.chunk))
            cols["numel"].append(n)
            cols["bytes"].append(None if n is None else n * DTYPE_SIZES[td.properties.dtype])
            cols["kept"].append(item.index in final[r])
            cols["writer"].append(writer.get(item.index))
            cols["file"].append(getattr(storage.get(item.index), "relative_path", None))
    return _frame(cols, _WRITE_SCHEMA)


# ----------------------------------------------------------------------------- load plans
_READ_SCHEMA = {
    "rank": "int64",
    "order": "int64",
    "fqn": "str",
    "type": "str",
    "dest_region": "str",
    "storage_region": "str",
    "dest_offsets": "object",
    "storage_offsets": "object",
    "lengths": "object",
    "numel": "Int64",
    "bytes": "Int64",
    "bytes_read": "Int64",
    "dest_chunk": "Int64",
    "source_chunk": "Int64",
    "source_file": "str",
    "writer": "Int64",
}


def _storage_lookup(metadata):
    """``storage_data.get`` for a load plan's ``storage_index``es. A reader's columns answer by
    the saved chunk's row (``storage_index.index``, checked against its offsets) from the
    tensor's rows looked up at once (`StorageColumns.rows_of`, cached per fqn): one dict of
    offset tuples per fqn is 0.5 s for one rank's items at 16,384 ranks."""
    storage = storage_data_of(metadata)
    sdm = metadata.state_dict_metadata
    if getattr(storage, "box_rows", None) is None or not hasattr(storage, "rows_of"):
        return storage.get

    def get(index):
        md = sdm.get(index.fqn)
        arrays = getattr(getattr(md, "chunks", None), "box_arrays", None)
        i = index.index
        if arrays is None or i is None or not 0 <= i < len(arrays[0]):
            return storage.get(index)
        if tuple(arrays[0][i].tolist()) != tuple(index.offset or ()):
            return storage.get(index)  # a hint that is not the chunk's position
        row = storage.rows_of(index.fqn, arrays[0])[i]
        return storage.values_at(np.array([row]))[0]

    return get


def read_items_table(
    load_result, fqn: str | None = None, *, rank: int | None = None
) -> pd.DataFrame:
    """One row per read item of the load plans in ``load_result.plans`` (every entry, or ``fqn``;
    every rank, or ``rank``), ranks ascending, each rank's items in torch's order (state-dict
    order of fqns, then ``create_read_items_for_chunk_list`` order).

    Columns:
      ``rank`` (int64); ``order`` (int64, position in the rank's ``LoadPlan.items``, counted over
      all its fqns, so it is DCP's visiting order even when filtered); ``fqn`` (str); ``type``
      (str, ``LoadItemType`` name); ``dest_region`` (str, the box written, global slice notation);
      ``storage_region`` (str, the box read, global); ``dest_offsets`` (tuple, relative to the
      destination chunk), ``storage_offsets`` (tuple, relative to the saved chunk), ``lengths``
      (tuple) as in torch's ``ReadItem``; ``numel``, ``bytes`` (Int64, of the box copied,
      checkpoint dtype; <NA> for BYTE_IO); ``bytes_read`` (Int64, bytes loaded from the file for
      this item: torch's ``FileSystemReader.read_data`` ``torch.load``s the whole stored item and
      then narrows it, so this is the stored item's ``StorageInfo.length``, or the saved chunk's
      bytes before a real save (as ``LoadPlanResult.io`` counts); a BYTE_IO item's stored
      length, <NA> when unknown); ``dest_chunk`` (Int64, ``dest_index.index``, the rank's local
      chunk number); ``source_chunk`` (Int64, ``storage_index.index``, the saved chunk number in the
      metadata); ``source_file`` (str, from ``metadata.storage_data``); ``writer`` (Int64, rank
      parsed from the file name). Regions of BYTE_IO items are NaN.

    Raises `PlanError` for a rank outside the load world.
    """
    plans = load_result.plans
    if fqn is not None and not isinstance(fqn, str):
        raise PlanError(
            None,
            f"fqn {fqn!r} is not a string",
            "a state-dict key",
            "Pass the rank as rank=...",
            value=fqn,
        )
    if rank is not None and not 0 <= rank < len(plans):
        raise PlanError(
            fqn,
            f"rank {rank} is not in a load plan of {len(plans)} ranks",
            f"0 <= rank < {len(plans)}",
            "Pick a rank of the load world.",
            rank=rank,
        )
    sdm = load_result.metadata.state_dict_metadata
    storage_of = _storage_lookup(load_result.metadata)
    cols: dict[str, list] = defaultdict(list)
    for r in range(len(plans)) if rank is None else (rank,):
        for i, item in enumerate(plans[r].items):
            name = item.dest_index.fqn
            if fqn is not None and name != fqn:
                continue
            info = storage_of(item.storage_index)
            path = getattr(info, "relative_path", None)
            if item.type == LoadItemType.TENSOR:
                md = sdm[item.storage_index.fqn]
                esize = DTYPE_SIZES[md.properties.dtype]
                n = math.prod(item.lengths)
                nbytes = n * esize
                whole = getattr(info, "length", None)
                if whole is None:  # planned, not saved yet: the chunk's bytes
                    whole = md.chunks[item.storage_index.index].volume * esize
                dest, src = str(item.dest_chunk), str(item.storage_chunk)
            else:
                n = nbytes = dest = src = None
                whole = getattr(info, "length", None)
            cols["rank"].append(r)
            cols["order"].append(i)
            cols["fqn"].append(name)
            cols["type"].append(item.type.name)
            cols["dest_region"].append(dest)
            cols["storage_region"].append(src)
            cols["dest_offsets"].append(item.dest_offsets)
            cols["storage_offsets"].append(item.storage_offsets)
            cols["lengths"].append(item.lengths)
            cols["numel"].append(n)
            cols["bytes"].append(nbytes)
            cols["bytes_read"].append(whole)
            cols["dest_chunk"].append(item.dest_index.index)
            cols["source_chunk"].append(item.storage_index.index)
            cols["source_file"].append(path)
            cols["writer"].append(writer_of_file(path))
    return _frame(cols, _READ_SCHEMA)


# ----------------------------------------------------------------------------- problems
_PROBLEM_SCHEMA = {
    "fqn": "str",
    "kind": "str",
    "severity": "str",
    "ranks": "object",
    "rank_list": "str",
    "region": "str",
    "message": "str",
    "fix": "str",
}


def problems_table(problems) -> pd.DataFrame:
    """One row per `Problem` (``diagnosis.Problem`` or anything with its fields), in the given
    order.

    Columns:
      ``fqn`` (str); ``kind`` (str, e.g. ``uncovered``); ``severity`` (str: ``error`` = torch
      raises, ``silent`` = torch loads wrong or stale values, ``warning``); ``ranks`` (tuple of
      ints); ``rank_list`` (str, the ranks compactly, ``"r0-3,8"``); ``region`` (str, slice
      notation; NaN when the problem has no region); ``message`` (str); ``fix`` (str).
    """
    cols: dict[str, list] = defaultdict(list)
    for p in problems:
        ranks = tuple(p.ranks or ())
        cols["fqn"].append(p.fqn)
        cols["kind"].append(p.kind)
        cols["severity"].append(p.severity)
        cols["ranks"].append(ranks)
        cols["rank_list"].append(format_ranks(ranks))
        cols["region"].append(None if p.region is None else str(p.region))
        cols["message"].append(p.message)
        cols["fix"].append(p.fix)
    return _frame(cols, _PROBLEM_SCHEMA)


# ----------------------------------------------------------------------------- I/O
_IO_SCHEMA = {
    "rank": "int64",
    "files": "int64",
    "reads": "int64",
    "bytes_needed": "int64",
    "bytes_read": "int64",
    "amplification": "float64",
}
_FILE_IO_SCHEMA = {
    "file": "str",
    "writer": "Int64",
    "readers": "object",
    "n_readers": "int64",
    "reads": "int64",
    "bytes_read": "int64",
}


def io_table(load_result) -> pd.DataFrame:
    """Per rank of the load world (readers or not), what its load plan costs with torch's
    ``FileSystemReader``: the numbers of ``load_result.io`` (``io_cost.LoadIO``) as a table.

    Columns:
      ``rank`` (int64); ``files`` (int64, distinct data files the rank opens); ``reads`` (int64,
      read items); ``bytes_needed`` (int64, bytes its read items copy into its chunks);
      ``bytes_read`` (int64, bytes loaded from files: the whole stored item per read item);
      ``amplification`` (float64, ``bytes_read / bytes_needed``; NaN when nothing is needed).
    """
    io = load_result.io
    return _frame(
        {
            "rank": list(range(len(io.reads))),
            "files": io.files_opened.tolist(),
            "reads": io.reads.tolist(),
            "bytes_needed": io.bytes_needed.tolist(),
            "bytes_read": io.bytes_read.tolist(),
            "amplification": io.amplification.tolist(),
        },
        _IO_SCHEMA,
    )


def file_io_table(load_result) -> pd.DataFrame:
    """Per data file of the checkpoint (files nobody reads included), sorted by writer rank then
    name as in ``load_result.io``.

    Columns:
      ``file`` (str); ``writer`` (Int64, rank parsed from ``__<rank>_<n>.distcp``, <NA> for other
      names); ``readers`` (tuple of the load ranks reading it, ascending); ``n_readers``
      (int64); ``reads`` (int64, read items it serves); ``bytes_read`` (int64, bytes loaded from
      it, the whole stored item per read item).
    """
    io = load_result.io
    readers = [tuple(io.readers[f]) for f in io.files]
    return _frame(
        {
            "file": list(io.files),
            "writer": [None if w < 0 else w for w in io.file_writers.tolist()],
            "readers": readers,
            "n_readers": [len(r) for r in readers],
            "reads": io.file_reads.tolist(),
            "bytes_read": io.file_bytes_read.tolist(),
        },
        _FILE_IO_SCHEMA,
    )


_TARGETS_SCHEMA = {
    "target": "str",
    "world_size": "int64",
    "reads": "int64",
    "bytes_needed": "int64",
    "bytes_read": "int64",
    "amplification": "float64",
    "max_rank_bytes_read": "int64",
    "max_rank_reads": "int64",
    "max_rank_files": "int64",
    "failures": "int64",
}


def targets_table(costs) -> pd.DataFrame:
    """Candidate target layouts side by side (``candidates.compare_targets``'s `TargetCost` list),
    in the order given.

    Columns:
      ``target`` (str, the candidate's name); ``world_size`` (int64); ``reads`` (int64, read items
      over all ranks); ``bytes_needed`` / ``bytes_read`` (int64, totals; bytes read counts the
      whole stored item per read item); ``amplification`` (float64, read / needed);
      ``max_rank_bytes_read``, ``max_rank_reads``, ``max_rank_files`` (int64, the busiest rank:
      it sets the load time); ``failures`` (int64, entries torch would raise on).
    """
    return _frame(
        {
            name: [getattr(c, "name" if name == "target" else name) for c in costs]
            for name in _TARGETS_SCHEMA
        },
        _TARGETS_SCHEMA,
    )


# ----------------------------------------------------------------------------- summaries
def _numbers(df: pd.DataFrame, exclude: Iterable[str]) -> list[str]:
    return [c for c in df.columns if c not in set(exclude) and pd.api.types.is_numeric_dtype(df[c])]


def distribution_table(
    df: pd.DataFrame, *, exclude: Iterable[str] = ("rank", "writer"), label: str = "rows"
) -> pd.DataFrame:
    """Each numeric column of ``df`` (but ``exclude``) over all rows: four rows ``min``,
    ``median`` (the lower median: a value some row has, exact for integers), ``max`` and
    ``total`` (the sum, for integer columns; <NA> for floats such as an amplification).

    Columns: ``over all <label>`` (str, the statistic), then each summarised column (Int64 for
    integer columns, float64 otherwise; <NA> / NaN when the column has no value)."""
    out: dict[str, object] = {f"over all {label}": ["min", "median", "max", "total"]}
    for c in _numbers(df, exclude):
        v = df[c].dropna().to_numpy()
        whole = v.dtype.kind in "iub"
        if not len(v):
            values = [None] * 4
        else:
            med = np.quantile(v, 0.5, method="lower")
            values = [v.min(), med, v.max(), v.sum() if whole else None]
        out[c] = pd.Series(values, dtype="Int64" if whole else "float64")
    return pd.DataFrame(out)


def equal_rows_table(
    df: pd.DataFrame, *, members: str = "rank", by: str | None = None, limit: int = 8
) -> pd.DataFrame:
    """The rows of ``df`` grouped by equal values in every numeric column but ``members`` and
    the first column (a rank's or a file's name): a 16,384-rank `io_table` is a few dozen
    profiles. Sorted by ``by`` (descending; default: the last numeric column), then by count.

    Columns: ``count`` (int64, rows in the group); the grouped columns; ``<members>s`` (str, the
    group's ``members`` values, `formatting.ranks_text` of the first ``limit``)."""
    keys = _numbers(df, (df.columns[0], members))
    who = members + "s"
    if df.empty or not keys:
        return _frame({}, {"count": "int64", **{k: str(df[k].dtype) for k in keys}, who: "str"})
    grouped = df.groupby(keys, sort=False, dropna=False)[members]
    out = grouped.agg(
        **{
            "count": "size",
            who: lambda r: ranks_text(r.dropna().astype(int).tolist(), limit=limit),
        }
    ).reset_index()
    out = out[["count", *keys, who]]
    return out.sort_values(
        [by or keys[-1], "count"], ascending=False, kind="stable", ignore_index=True
    )


# ----------------------------------------------------------------------------- styling
def format_tables(checkpoint) -> dict[str, pd.DataFrame]:
    """What a checkpoint's format records beyond the chunks, one DataFrame per title
    (`checkpoint.Checkpoint.format_rows`; empty for plain DCP and HF)."""
    return {title: pd.DataFrame(rows) for title, rows in checkpoint.format_rows().items()}


def _rank_css(value) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return ""
    bg = rank_color(int(value))
    return f"background-color: {bg}; color: {text_color(bg)}"


def _bytes_text(value) -> str:
    # human units, the exact count on hover (digits and a unit only: nothing to escape)
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return ""
    return f'<span title="{int(value)} bytes">{format_bytes(value)}</span>'


def style_by_rank(df: pd.DataFrame, columns: Iterable[str] = ("rank", "writer")):
    """A pandas ``Styler`` of ``df`` for HTML: rank columns (those of ``columns`` present)
    coloured with each rank's colour from `workbench.colors`, as in every picture; byte counts
    (columns ``bytes``, ``bytes_*``, ``*_bytes_*`` and a byte range's ``length``) in human units (`formatting.format_bytes`,
    the exact count in the cell's hover title; the frame keeps the integers); missing values
    blank; every cell, header and index label HTML-escaped (keys, file names and messages come
    from a stranger's checkpoint, and the Styler does not escape by default)."""
    subset = [c for c in columns if c in df.columns]
    byte_columns = [
        c
        for c in df.columns
        if isinstance(c, str)
        and (c in ("bytes", "length") or c.startswith("bytes_") or "_bytes" in c)
        and pd.api.types.is_numeric_dtype(df[c])
    ]
    return (
        df.style.map(_rank_css, subset=subset)
        .format(escape="html", na_rep="")
        .format(_bytes_text, subset=byte_columns, escape="html")
        .format_index(escape="html", axis=0)
        .format_index(escape="html", axis=1)
    )
