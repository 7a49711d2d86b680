"""What a real checkpoint directory holds: every key, its chunks, and for every saved chunk
the data file, byte range and writer rank, with the files' sizes on disk, for every format
`workbench.formats` reads (plain DCP, Megatron-Core torch_dist, DCP's HF safetensors).

Reads metadata only through the formats' readers (allow-list unpickler, safetensors headers), so
a checkpoint from a stranger is inspected without running anything and without torch. A data
file that is missing or shorter than a chunk's byte range is reported, never crashed on (torch's
reader fails on it mid-load). `find_file_problems` answers "are the files all there" as
`diagnosis.Problem` records, optionally reading every chunk's bytes.

Imports formats, diagnosis and numpy (and tqdm for the deep check's progress bar, `cluster` when it
runs on a Dask cluster); never torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import re
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .diagnosis import Problem, Problems, find_checkpoint_problems
from .errors import MetadataError, WorkbenchError
from .formats import read_checkpoint
from .formats.columns import StorageColumns
from .formats.dcp_files import writer_of_file
from .formats.distcp import describe_item, expected_storage_bytes
from .formats.hf_safetensors import INDEX_NAME
from .formats.location import Location
from .formats.megatron import model_metadata as megatron_model_metadata
from .formatting import format_ranks
from .geometry import Chunk
from .records import (
    BytesStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageInfo,
    TensorStorageMetadata,
    chunk_storage,
    storage_data_of,
)

__all__ = [
    "SavedChunk",
    "Checkpoint",
    "open_checkpoint",
    "find_file_problems",
    "describe_checkpoint",
    "summarize_checkpoint",
    "saved_item_columns",
    "file_totals",
    "COMPANION_FILES",
]


@dataclass(frozen=True, slots=True)
class SavedChunk:
    """One saved item: ``chunk`` is None for a bytes entry; ``storage`` is None when the metadata
    has no storage entry for it (torch's reader then raises ``KeyError(MetadataIndex(...))``)."""

    fqn: str
    position: int
    chunk: Chunk | None
    storage: StorageInfo | None
    writer_rank: int | None
    file_size: int | None  # bytes of the data file on disk; None when the file is missing

    @property
    def file(self) -> str | None:
        return None if self.storage is None else self.storage.relative_path

    @property
    def file_missing(self) -> bool:
        return self.storage is not None and self.file_size is None

    @property
    def truncated(self) -> bool:
        """The byte range runs past the end of the data file."""
        s = self.storage
        return s is not None and self.file_size is not None and s.offset + s.length > self.file_size


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint directory: its `Metadata` and every saved chunk in metadata order
    (``chunks``, built on first use: a 16,384-rank save lists a million; planning, the damage
    check and the pictures read the metadata's columns instead)."""

    path: str
    metadata: Metadata
    file_sizes: dict[str, int | None]  # every data file the metadata names -> size or None
    format: str = "dcp"  # "dcp", "megatron" or "hf" (formats.FORMATS)
    # what the format records beyond DCP's Metadata: formats.megatron.MegatronInfo,
    # formats.hf_safetensors.HfInfo, or None for plain DCP
    format_info: Any = None
    # where the files are when ``path`` is an fsspec URL (object storage); None for a local one
    location: Location | None = None

    @property
    def model_metadata(self) -> Metadata:
        """The metadata in the model's shapes: for Megatron tensors saved with
        ``flattened_range``, the model-shaped tensor with one chunk per box of each stored piece
        (`formats.megatron.model_metadata`); otherwise ``metadata`` itself. Pictures use it; DCP's
        planners see ``metadata`` (what is stored)."""
        if self.format == "megatron" and self.format_info.flattened:
            return megatron_model_metadata(self.metadata, self.format_info)
        return self.metadata

    def format_rows(self) -> dict[str, list[dict[str, Any]]]:
        """What the format records beyond the chunks, as rows per title (none for plain DCP and
        HF). Megatron-Core: ``flattened_range`` tensors (``fqn``, ``stored`` piece, ``model
        shape``, ``flat range``, ``model boxes``), sharded objects (``key``, ``shards``, ``global
        shape``) and who held each chunk per ``all_local_plans`` beside who wrote it (``fqn``,
        ``chunk``, ``held by``, ``written by``). `tables.format_tables` and the CLI show them."""
        info = self.format_info
        out: dict[str, list[dict[str, Any]]] = {}
        if self.format != "megatron":
            return out
        if info.flattened:
            out["flattened_range tensors (stored flat; model shape from mcore_data)"] = [
                {
                    "fqn": ft.fqn,
                    "stored": str(p.stored),
                    "model shape": "x".join(map(str, ft.shape)),
                    "flat range": f"{p.start}:{p.stop} of block {p.block}",
                    "model boxes": ", ".join(map(str, p.boxes)),
                }
                for ft in info.flattened.values()
                for p in ft.pieces
            ]
        if info.objects:
            out["sharded objects (bytes entries key/shard_<offsets>_<shape>)"] = [
                {"key": k, "shards": len(v), "global shape": "x".join(map(str, v[0].shape))}
                for k, v in info.objects.items()
            ]
        if info.local_plans is not None:
            rows = []
            held: dict = {}
            for c in self.chunks:  # metadata order, grouped by fqn
                if c.fqn not in held:
                    held[c.fqn] = info.held(c.fqn)
                rows.append(
                    {
                        "fqn": c.fqn,
                        "chunk": "" if c.chunk is None else str(c.chunk),
                        "held by": format_ranks(
                            held[c.fqn].get(None if c.chunk is None else c.chunk.offsets, ())
                        ),
                        "written by": c.writer_rank,
                    }
                )
            out["who held (all_local_plans) and who wrote"] = rows
        return out

    def facts(self) -> dict[str, Any]:
        """The format and what it records of itself (Megatron's metadata.json, the HF index...),
        for tables, the CLI and the report."""
        if self.format_info is None:
            md = self.metadata
            return {"format": "dcp", "version": md.version}
        return self.format_info.facts()

    @functools.cached_property
    def chunks(self) -> tuple[SavedChunk, ...]:
        """Every saved item in metadata order, with its storage entry (``storage_data[
        MetadataIndex(fqn, chunk.offsets)]``, as torch's readers look it up) and its file's size."""
        md, sizes = self.metadata, self.file_sizes
        storage = md.storage_data or {}
        chunks = []
        for fqn, entry in md.state_dict_metadata.items():
            if isinstance(entry, BytesStorageMetadata):
                items = [(0, None, MetadataIndex(fqn))]
            else:
                items = [(i, c, MetadataIndex(fqn, c.offsets)) for i, c in enumerate(entry.chunks)]
            for pos, chunk, key in items:
                info = storage.get(key)
                chunks.append(
                    SavedChunk(
                        fqn=fqn,
                        position=pos,
                        chunk=chunk,
                        storage=info,
                        writer_rank=None if info is None else writer_of_file(info.relative_path),
                        file_size=None if info is None else sizes[info.relative_path],
                    )
                )
        return tuple(chunks)

    @functools.cached_property
    def _undamaged(self) -> bool:
        """True when, on the metadata's columns, every data file is there, every chunk has a
        storage entry and every byte range is inside its file: the damage lists are then empty
        without a record per chunk (False: look chunk by chunk)."""
        storage = self.metadata.storage_data
        if not isinstance(storage, StorageColumns) or self.missing_files:
            return False
        rows = storage.chunk_rows(self.metadata.state_dict_metadata)
        if rows is None or (rows < 0).any():
            return False
        size_of = np.array([self.file_sizes.get(p, -1) for p in storage.paths], np.int64)
        ends = storage.offset[rows] + storage.length[rows]
        return bool((ends <= size_of[storage.path_id[rows]]).all())

    @property
    def keys(self) -> list[str]:
        return list(self.metadata.state_dict_metadata)

    @property
    def missing_files(self) -> list[str]:
        return [f for f, s in self.file_sizes.items() if s is None]

    @property
    def unlisted_chunks(self) -> list[SavedChunk]:
        """Chunks of the metadata without a storage entry."""
        if self._undamaged:
            return []
        return [c for c in self.chunks if c.storage is None]

    @property
    def truncated_chunks(self) -> list[SavedChunk]:
        if self._undamaged:
            return []
        return [c for c in self.chunks if c.truncated]

    @property
    def damaged_chunks(self) -> list[SavedChunk]:
        """Chunks torch's reader fails on: data file missing, byte range past its end, or no
        storage entry."""
        if self._undamaged:
            return []
        return [c for c in self.chunks if c.file_missing or c.truncated or c.storage is None]

    def chunks_of(self, fqn: str) -> list[SavedChunk]:
        return [c for c in self.chunks if c.fqn == fqn]

    def writers(self, fqn: str) -> list[int | None]:
        """Writer rank of each of ``fqn``'s chunks, in chunk order."""
        return [c.writer_rank for c in self.chunks_of(fqn)]

    def problems(self) -> Problems:
        """`Problem`s (severity ``error``: torch's reader raises mid-load) for missing data files
        and byte ranges past their file's end (fqn: the file; ranks: its writers) and chunks
        without a storage entry (fqn: the entry)."""
        return Problems([] if self._undamaged else _damage(self))

    def __repr__(self) -> str:
        # the chunks of a whole model are thousands of records: the plain text is a summary
        return (
            f"Checkpoint({self.path!r}, format={self.format!r}, "
            f"entries={len(self.metadata.state_dict_metadata)}, chunks={len(self.chunks)}, "
            f"files={len(self.file_sizes)}, missing_files={len(self.missing_files)})"
        )

    def _repr_html_(self) -> str:
        # the HTML layer sits above the checkpoint; loaded only when a notebook shows one
        from .reprs import checkpoint_html

        return checkpoint_html(self)


def open_checkpoint(
    path, rank: int | None = None, *, storage_options: dict | None = None
) -> Checkpoint:
    """Open a checkpoint directory of any supported format (plain DCP ``.metadata`` +
    ``__<rank>_<n>.distcp``, Megatron-Core torch_dist, DCP's HF safetensors) safely: the
    metadata via the format's reader, each chunk's storage entry (``storage_data[MetadataIndex(
    fqn, chunk.offsets)]``, as torch's readers look it up) and the data files' sizes on disk.

    ``path`` may be an fsspec URL of a checkpoint (``s3://bucket/ckpt``...), opened with
    ``storage_options``: the sizes then come from the listing and no tensor data is read."""
    listing = None
    if isinstance(path, (str, os.PathLike)) and os.path.isdir(path):
        # the directory's sizes are listed while the metadata is read (hashing it releases the
        # GIL): 16,384 stats take 0.2 s on their own
        pool = ThreadPoolExecutor(max_workers=1)
        listing = pool.submit(_listed_sizes, os.fspath(path))
        pool.shutdown(wait=False)
    read = read_checkpoint(path, rank, storage_options=storage_options)
    directory, md = read.directory, read.metadata
    listed = listing.result() if listing is not None else {}
    sizes = {}
    for name in _data_files(md.storage_data or {}):
        if read.files is not None:  # object storage: the listing's sizes
            sizes[name] = read.files.get(name)
        elif name in listed:
            sizes[name] = listed[name]
        else:  # in a subdirectory, or missing
            sizes[name] = _file_size(os.path.join(directory, name))
    return Checkpoint(
        path=str(directory),
        metadata=md,
        file_sizes=sizes,
        format=read.format,
        format_info=read.info,
        location=read.location,
    )


def _listed_sizes(directory: str) -> dict[str, int]:
    """``{name: size}`` of the regular files (symlinks followed) directly in ``directory``."""
    out = {}
    with os.scandir(directory) as entries:
        for e in entries:
            try:
                if e.is_file():
                    out[e.name] = e.stat().st_size
            except OSError:  # gone or unreadable since the listing: looked up again
                continue
    return out


def _file_size(path: str) -> int | None:
    """The size of a regular file, None when there is none (one stat: 16,384 files in ~50 ms)."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def _data_files(storage) -> list[str]:
    """The files the storage entries name, in order of first use."""
    rows = getattr(storage, "box_rows", None) if isinstance(storage, StorageColumns) else None
    if rows is None:
        return list(dict.fromkeys(info.relative_path for info in storage.values()))
    ids = storage.path_id[rows[1]]
    _, first = np.unique(ids, return_index=True)
    return [storage.paths[i] for i in ids[np.sort(first)].tolist()]


# ----------------------------------------------------------------------------- are the files all there
# Files a checkpoint directory holds besides the data files its metadata names.
COMPANION_FILES = {
    "dcp": {".metadata"},
    "megatron": {".metadata", "metadata.json", "common.pt"},
    "hf": {INDEX_NAME},
}
_LIST = 8
_SHARD_NUMBER = re.compile(r"^shard-(\d+)-")
_RANK_METADATA = re.compile(r"^__\d+\.metadata$")  # read_metadata(rank=r)'s per-rank files


def _names(items) -> str:
    items = list(items)
    return ", ".join(map(str, items[:_LIST])) + (
        f", ... ({len(items)} in all)" if len(items) > _LIST else ""
    )


def _problem(fqn, kind, ranks, region, severity, message, fix):
    return Problem(
        fqn=fqn,
        kind=kind,
        ranks=tuple(r for r in ranks if r is not None),
        region=region,
        severity=severity,
        message=message,
        fix=fix,
    )


def _damage(ck: Checkpoint) -> list[Problem]:
    out = []
    by_file: dict[str, list[SavedChunk]] = {}
    for c in ck.chunks:
        if c.storage is not None:
            by_file.setdefault(c.file, []).append(c)
    for f in ck.missing_files:
        cs = by_file.get(f, [])
        out.append(
            _problem(
                f,
                "missing_file",
                {c.writer_rank for c in cs},
                None,
                "error",
                f"{f}: data file is missing from {ck.path} "
                f"({len(cs)} saved items: {_names(dict.fromkeys(c.fqn for c in cs))}) (every "
                "file the metadata names exists). torch's reader fails on the first read from it.",
                "Copy every data file of the checkpoint, or re-save.",
            )
        )
    for f, cs in by_file.items():
        size = ck.file_sizes.get(f)
        short = [c for c in cs if c.truncated]
        if size is None or not short:
            continue
        end = max(c.storage.offset + c.storage.length for c in short)
        out.append(
            _problem(
                f,
                "truncated_file",
                {c.writer_rank for c in short},
                None,
                "error",
                f"{f}: {len(short)} saved items "
                f"({_names(f'{c.fqn} #{c.position}' for c in short)}) reach byte {end} of {f} "
                f"({size} bytes on disk) (every byte range inside its file). The copy or the "
                "save was cut short.",
                "Re-copy the file, or re-save.",
            )
        )
    for c in ck.unlisted_chunks:
        out.append(
            _problem(
                c.fqn,
                "unlisted_chunk",
                (),
                c.chunk,
                "error",
                f"{c.fqn}: chunk #{c.position} {c.chunk} has no storage entry (every chunk "
                "listed in storage_data). torch's reader raises KeyError(MetadataIndex(...)).",
                "The metadata was edited or merged; re-save the checkpoint.",
            )
        )
    return out


def _repeats_a_row(rows: np.ndarray) -> bool:
    """Whether two rows of an (n, k) array are equal: sorted rows compared with their
    neighbours (np.unique(axis=0) sorts a void view, 7x slower: 0.8 s for 1137 tensors)."""
    if len(rows) < 2:
        return False
    s = rows[np.lexsort(rows.T[::-1])] if rows.shape[1] else rows
    return bool((s[1:] == s[:-1]).all(axis=1).any())


def _duplicates(ck: Checkpoint) -> list:
    out = []
    for fqn, entry in ck.metadata.state_dict_metadata.items():
        if isinstance(entry, BytesStorageMetadata):
            continue
        arrays = getattr(entry.chunks, "box_arrays", None)
        if arrays is not None and not _repeats_a_row(arrays[0]):
            continue  # every offset once, seen on the columns
        seen: dict = {}
        for i, c in enumerate(entry.chunks):
            seen.setdefault(c.offsets, []).append((i, c))
        for off, cs in seen.items():
            if len(cs) < 2:
                continue
            out.append(
                _problem(
                    fqn,
                    "duplicate_chunk",
                    (),
                    cs[0][1],
                    "silent",
                    f"{fqn}: chunks {_names(f'#{i} {c}' for i, c in cs)} share the offsets "
                    f"{list(off)} (one chunk per offset): storage_data keeps one entry per "
                    "(fqn, offset), so only one of them is ever read.",
                    "The checkpoint was merged from several saves or written twice; re-save it.",
                )
            )
    return out


def _hf_index_problems(ck: Checkpoint) -> list:
    info = ck.format_info
    out = []
    wm = getattr(info, "weight_map", None) or {}
    present = {h.file for h in info.headers}
    held = {(h.file, fqn) for h in info.headers for fqn in h.tensors}
    absent: dict[str, list[str]] = {}
    for fqn, f in wm.items():
        if f not in present:
            absent.setdefault(f, []).append(fqn)
        elif (f, fqn) not in held:
            out.append(
                _problem(
                    fqn,
                    "unlisted_chunk",
                    (),
                    None,
                    "error",
                    f"{fqn}: {INDEX_NAME} maps it to {f}, whose header does not hold it (the "
                    "index matches the files).",
                    "Re-copy the checkpoint or regenerate its index.",
                )
            )
    for f, fqns in absent.items():
        out.append(
            _problem(
                f,
                "missing_file",
                (0,),
                None,
                "error",
                f"{f}: named by {INDEX_NAME} for {len(fqns)} weights ({_names(fqns)}) but missing "
                f"from {ck.path} (every indexed file exists). torch's HF reader ignores the "
                "index: the weights are simply absent and a load raises Missing key.",
                "Copy every model-*.safetensors file of the checkpoint.",
            )
        )
    # save_distributed names files shard-<rank+1>-...: a gap is a missing writer's file
    ranks = sorted(int(m[1]) for h in info.headers if (m := _SHARD_NUMBER.match(h.file)))
    if ranks:
        gaps = sorted(set(range(1, ranks[-1] + 1)) - set(ranks))
        for g in gaps:
            out.append(
                _problem(
                    f"shard-{g:05d}-*",
                    "missing_file",
                    (g - 1,),
                    None,
                    "silent",
                    f"shard-{g:05d}-*: rank {g - 1}'s safetensors file is missing between "
                    f"{_names(f'shard-{r:05d}' for r in ranks)} (one file per writing rank). "
                    "torch's HF reader reads what is there: that rank's chunks become holes "
                    "without an error (a missing LAST file shrinks tensors instead, which no file "
                    "can reveal: check the world size of the save).",
                    "Copy every shard-*.safetensors file of the checkpoint.",
                )
            )
    return out


def _hf_hole(p: Problem) -> Problem:
    """A hole in the files of HuggingFaceStorageWriter(save_distributed=True) has two known
    causes; say both."""
    return dataclasses.replace(
        p,
        fix="Either a rank held several chunks of this tensor (a ShardedTensor with several "
        "local shards: torch 2.13's HuggingFaceStorageWriter keeps only its last one, see "
        "plan_save(layouts, storage='hf')), or a shard file is missing. Re-save with "
        "FileSystemWriter or one chunk per rank.",
    )


def _strays(ck: Checkpoint) -> list:
    if ck.location is not None:
        files = ck.location.list()
    else:
        # scandir: the entry type without a stat per file, names sorted as strings (sorting
        # 16,384 Paths and a stat each took 1 s)
        with os.scandir(ck.path) as it:
            files = dict(sorted((e.name, e.path) for e in it if not e.is_dir()))
    named = set(ck.file_sizes) | COMPANION_FILES.get(ck.format, set())
    out = []
    for name, p in files.items():
        if name in named or _RANK_METADATA.match(name):
            continue
        if ck.format == "hf" and name.endswith(".safetensors"):
            continue
        what = (
            "a metadata write that did not finish (torch writes .metadata.tmp then renames it)"
            if name.endswith(".metadata.tmp")
            else "a file the metadata does not name"
        )
        size = p if isinstance(p, int) else os.stat(p).st_size
        out.append(
            _problem(
                name,
                "stray_file",
                (),
                None,
                "warning",
                f"{name}: {what} ({size} bytes in {ck.path}) (only files the "
                "metadata names). torch never reads it.",
                "Remove it, or check that it does not belong to another save of this directory.",
            )
        )
    return out


def _megatron_problems(ck: Checkpoint) -> list:
    info = ck.format_info
    out = []
    if info.metadata_json is None:
        out.append(
            _problem(
                "metadata.json",
                "no_metadata",
                (),
                None,
                "error",
                "metadata.json: " + "; ".join(info.notes or ("missing",)) + " (Megatron's "
                "backend record, written when the save finished). dist_checkpointing.load "
                "cannot pick a backend without it.",
                "Wait for the save to finish, or re-copy the checkpoint.",
            )
        )
    if info.common_error:
        out.append(
            _problem(
                "common.pt",
                "unread_file",
                (),
                None,
                "warning",
                f"common.pt: not read ({info.common_error})",
                "Inspect it only if you trust its author: torch.load(weights_only=False) runs "
                "its pickle.",
            )
        )
    return out


def _deep_problems(ck: Checkpoint, progress: bool, jobs: int = 1, dask=None) -> list:
    # tqdm.auto picks a notebook widget or a terminal bar: loaded only when a deep check runs
    from tqdm.auto import tqdm

    todo = [
        c for c in ck.chunks if c.storage is not None and not c.file_missing and not c.truncated
    ]
    # file by file, in byte order: sequential reads and one open file at a time per reader
    todo.sort(key=lambda c: (c.file, c.storage.offset))
    by_file: dict[str, list[SavedChunk]] = {}
    for c in todo:
        by_file.setdefault(c.file, []).append(c)
    entries = ck.metadata.state_dict_metadata
    checks = [
        _FileCheck(
            directory=ck.path,
            location=ck.location,
            format=ck.format,
            file=name,
            chunks=tuple(cs),
            dtypes=tuple(None if c.chunk is None else entries[c.fqn].properties.dtype for c in cs),
        )
        for name, cs in by_file.items()
    ]
    with contextlib.ExitStack() as stack:
        client = None
        if dask is not None:  # the user's Dask cluster: one task per file, results in file order
            # the cluster extra: loaded only when a cluster is asked for
            from .cluster import cluster_client, map_on_cluster

            # connected (and its workers checked) before the bar starts
            client = stack.enter_context(cluster_client(dask, _check_file))
        bar = stack.enter_context(
            tqdm(total=len(todo), desc="reading chunks", unit="chunk", disable=not progress)
        )
        if client is not None:
            results = map_on_cluster(
                client,
                _check_file,
                checks,
                [f"{ck.path}: {check.file}" for check in checks],
                done=lambda i: bar.update(len(checks[i].chunks)),
            )
        else:
            lock = threading.Lock()

            def one_file(check: _FileCheck) -> list:
                def tick() -> None:
                    with lock:  # one bar for every reader
                        bar.update(1)

                return _check_file(check, tick)

            if jobs == 1 or len(checks) < 2:
                results = [one_file(check) for check in checks]
            else:  # a bounded pool of readers, one file each at a time; results in file order
                with ThreadPoolExecutor(max_workers=jobs) as pool:
                    results = list(pool.map(one_file, checks))
    out = [p for found in results for p in found]
    if ck.format == "hf":
        out += _safetensors_layout_problems(ck)
    return out


@dataclass(frozen=True, slots=True)
class _FileCheck:
    """One data file's deep check, as a thread or a Dask worker runs it (`_check_file`): where
    the checkpoint is (``directory``: a local path, which a worker must see at the same path;
    ``location``: its object storage, whose fsspec filesystem carries the storage options) and
    the file's chunks in byte order with their entries' dtypes (None for bytes items). Small:
    never the file's contents."""

    directory: str
    location: Location | None
    format: str
    file: str
    chunks: tuple[SavedChunk, ...]
    dtypes: tuple[str | None, ...]


def _check_file(check: _FileCheck, tick=None) -> list[Problem]:
    """The ``bad_item`` problems of one data file, reading its chunks' byte ranges (one open
    file locally, one ranged request per chunk in object storage); ``tick()`` after each
    chunk. A top-level function: Dask workers import it by name."""
    out = []
    with _ChunkReader(check.directory, check.location, check.file) as read:
        for c, dtype in zip(check.chunks, check.dtypes):
            problem = _item_problem(check.format, dtype, c, read(c))
            if problem is not None:
                out.append(problem)
            if tick is not None:
                tick()
    return out


class _ChunkReader:
    """Reads one data file's chunks: a local file opened once and read in byte order, or one
    ranged request per chunk in object storage."""

    def __init__(self, directory: str, location: Location | None, name: str):
        self.directory, self.location, self.name, self.f = directory, location, name, None

    def __enter__(self):
        if self.location is None:
            self.f = open(Path(self.directory) / self.name, "rb")
        return self

    def __exit__(self, *exc):
        if self.f is not None:
            self.f.close()
        return False

    def __call__(self, c: SavedChunk) -> bytes:
        if self.f is None:
            return self.location.read_range(c.file, c.storage.offset, c.storage.length)
        self.f.seek(c.storage.offset)
        return self.f.read(c.storage.length)


def _item_problem(fmt: str, dtype: str | None, c: SavedChunk, blob: bytes) -> Problem | None:
    """The ``bad_item`` problem of one chunk's bytes, or None when they hold the chunk
    (``dtype``: its entry's, as the metadata says)."""
    if fmt == "hf":
        return None  # safetensors: the range is the raw elements (sizes checked on read)
    tensor = c.chunk is not None
    got = describe_item(blob, tensor)
    want = None
    if got.error is None and tensor:
        need = expected_storage_bytes(dtype, c.chunk.sizes)
        numel = c.chunk.volume
        got_numel = None if got.shape is None else _prod(got.shape)
        if got.dtype != dtype:
            want = f"dtype {got.dtype} (the metadata says {dtype})"
        elif got_numel != numel:
            want = f"{got_numel} elements of shape {list(got.shape)} (the chunk has {numel})"
        elif got.storage_bytes is None or got.storage_bytes < need:
            want = f"{got.storage_bytes} bytes of elements (the chunk needs {need})"
    msg = got.error or want
    if not msg:
        return None
    return _problem(
        c.fqn,
        "bad_item",
        (c.writer_rank,),
        c.chunk,
        "error",
        f"{c.fqn}: chunk #{c.position} {c.chunk if tensor else '(bytes)'} at "
        f"{c.file} bytes {c.storage.offset}:{c.storage.offset + c.storage.length} "
        f"holds {msg} (a torch.save archive of the chunk). torch's reader fails "
        "or reads wrong elements there.",
        "Re-copy the file, or re-save.",
    )


def _safetensors_layout_problems(ck: Checkpoint) -> list:
    """safetensors' own rule: a file's tensors tile its data region exactly (no gap, no
    overlap, nothing after the last one)."""
    out = []
    for h in ck.format_info.headers:
        ranges = sorted(r for _, _, r in h.tensors.values())
        pos = 8 + h.header_length
        for b, e in ranges + [(h.file_size, h.file_size)]:
            if b != pos:
                out.append(
                    _problem(
                        h.file,
                        "bad_item",
                        (writer_of_file(h.file),),
                        None,
                        "error",
                        f"{h.file}: the tensors' data_offsets leave bytes {min(b, pos)}:"
                        f"{max(b, pos)} {'unclaimed' if b > pos else 'claimed twice'} (the "
                        "tensors tile the data region, as the safetensors library checks). "
                        "safetensors refuses the file.",
                        "Re-copy the file, or re-save.",
                    )
                )
                break
            pos = e
    return out


def _prod(v) -> int:
    n = 1
    for x in v:
        n *= x
    return n


def find_file_problems(
    checkpoint,
    deep: bool = False,
    progress: bool = False,
    *,
    storage_options: dict | None = None,
    jobs: int = 1,
    dask=None,
) -> Problems:
    """Whether a checkpoint's files are all there, as `diagnosis.Problem` records: no metadata
    beside data files (an interrupted or asynchronous save), data files missing or shorter than
    the byte ranges the metadata names, chunks without a storage entry, duplicate chunks, holes
    and overlaps of the saved chunks (`find_checkpoint_problems`), stray files, and per format
    Megatron's ``metadata.json`` / ``common.pt`` and the HF index and shard numbering. With
    ``deep``, every chunk's bytes are read (``progress``: a tqdm bar) and a ``.distcp`` item's
    ``torch.save`` archive is checked (CRCs, dtype, element count; read with an allow-list, a
    bytes item's pickle never unpickled); ``jobs`` files are read at once by a bounded pool
    of threads (one progress bar). ``dask``: a Dask scheduler address (``tcp://host:8786``) or
    a ``distributed.Client`` (the ``cluster`` extra): the files are read by that cluster's
    workers instead, one task per file, with the same problems in the same order; a worker
    opens the file itself by the same local path (a filesystem every worker mounts) or fsspec
    URL, so no tensor data crosses the scheduler. ``checkpoint``: a path, an fsspec URL (opened
    with ``storage_options``, see `open_checkpoint`; only ``deep`` reads its data files) or a
    `Checkpoint`."""
    if type(jobs) is not int or jobs < 1:
        raise WorkbenchError(
            "jobs",
            f"{jobs!r} readers",
            "a whole number >= 1 of data files read at once",
            "Pass jobs=1 for one file at a time, more to read files in parallel.",
        )
    if dask is not None and (not deep or jobs != 1):
        raise WorkbenchError(
            "dask",
            f"a Dask cluster with deep={deep!r}, jobs={jobs!r}",
            "a cluster reads the data files of a deep check, in place of local readers",
            "Pass deep=True and leave jobs at 1 (--deep --dask ADDRESS without --jobs).",
        )
    if not isinstance(checkpoint, Checkpoint):
        try:
            checkpoint = open_checkpoint(checkpoint, storage_options=storage_options)
        except MetadataError as e:
            if getattr(e, "reason", None) != "no_metadata":
                raise
            return Problems(
                [
                    _problem(
                        e.fqn,
                        "no_metadata",
                        (),
                        None,
                        "error",
                        f"{e.what} ({e.expectation}).",
                        e.fix,
                    )
                ]
            )
    ck = checkpoint
    out = ck.problems()
    if ck.format == "megatron":
        out += _megatron_problems(ck)
    if ck.format == "hf":
        out += _hf_index_problems(ck)
    out += _duplicates(ck)
    saved = find_checkpoint_problems(ck.metadata)
    if ck.format == "hf" and ck.format_info.layout == "distributed":
        saved = [_hf_hole(p) if p.kind == "uncovered" else p for p in saved]
    out += saved
    out += _strays(ck)
    if deep:
        out += _deep_problems(ck, progress, jobs, dask)
    return out


def saved_item_columns(metadata) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Every saved item of a `Metadata` (each entry's chunks in metadata order; a bytes entry is
    one item) as columns: (entry number, file number or -1 without a storage entry, stored
    length or -1 when unknown, the file names). A reader's columns
    (``formats.columns.StorageColumns``) answer all items at once; other storage (a planned
    save, edited metadata) one lookup per item."""
    sdm = metadata.state_dict_metadata
    storage = storage_data_of(metadata)
    counts = [1 if isinstance(md, BytesStorageMetadata) else len(md.chunks) for md in sdm.values()]
    entry = np.repeat(np.arange(len(sdm), dtype=np.int64), counts)
    rows = storage.chunk_rows(sdm) if isinstance(storage, StorageColumns) else None
    if rows is not None:
        # a million items at 16,384 ranks: no StorageInfo per item
        known = rows >= 0
        at = np.where(known, rows, 0)
        path = np.where(known, storage.path_id[at], -1)
        length = np.where(known, storage.length[at], -1)
        return entry, path, length, [str(p) for p in storage.paths]
    ids: dict[str, int] = {}
    path, length = [], []
    for fqn, md in sdm.items():
        for info in chunk_storage(storage, fqn, md):
            name = getattr(info, "relative_path", None)
            n = getattr(info, "length", None)
            path.append(-1 if name is None else ids.setdefault(str(name), len(ids)))
            length.append(-1 if n is None else int(n))
    return entry, np.array(path, np.int64), np.array(length, np.int64), list(ids)


def summarize_checkpoint(metadata: Metadata) -> dict:
    """`describe_checkpoint` without a record per chunk: every entry's chunk count and writer
    ranks instead of its chunks (``{"fqn", "kind", "shape", "dtype", "nbytes", "n_chunks",
    "writers"}``), and the same ``files``. From `saved_item_columns` (a 16,384-rank
    checkpoint: 0.3 s, where a dict per chunk takes 20 s and 3 GB)."""
    sdm = metadata.state_dict_metadata
    entry, path, length, names = saved_item_columns(metadata)
    writer_of = np.array([-1 if (w := writer_of_file(p)) is None else w for p in names] + [-1])
    item_writer = writer_of[path]  # path -1 -> the trailing -1
    starts = np.searchsorted(entry, np.arange(len(sdm) + 1))
    entries = []
    for i, (fqn, md) in enumerate(sdm.items()):
        tensor = isinstance(md, TensorStorageMetadata)
        a, b = int(starts[i]), int(starts[i + 1])
        w = np.unique(item_writer[a:b])
        entries.append(
            {
                "fqn": fqn,
                "kind": "tensor" if tensor else "bytes",
                "shape": list(md.size) if tensor else None,
                "dtype": md.properties.dtype if tensor else None,
                "nbytes": md.nbytes if tensor else (int(length[a]) if length[a] >= 0 else None),
                "n_chunks": b - a,
                "writers": tuple(w[w >= 0].tolist()),
            }
        )
    files = [
        {"file": name, "writer": writer, "items": items, "bytes": nbytes}
        for name, writer, items, nbytes, _ in file_totals(path, length, names)
    ]
    return {"version": metadata.version, "entries": entries, "files": files}


def file_totals(
    path: np.ndarray, length: np.ndarray, names: list[str]
) -> list[tuple[str, int | None, int, int, bool]]:
    """Per data file holding saved items (`saved_item_columns`' ``path``, ``length`` and
    ``names``), sorted by writer rank (files without one last) then name: (name, writer rank,
    items, the sum of their known lengths, whether any length is known)."""
    known = path >= 0
    items = np.bincount(path[known], minlength=len(names))
    sized = known & (length >= 0)
    nbytes = np.zeros(len(names), np.int64)
    np.add.at(nbytes, path[sized], length[sized])
    measured = np.bincount(path[sized], minlength=len(names)) > 0
    out = [
        (name, writer_of_file(name), int(items[i]), int(nbytes[i]), bool(measured[i]))
        for i, name in enumerate(names)
        if items[i]
    ]
    out.sort(key=lambda f: (f[1] is None, f[1] or 0, f[0]))
    return out


def describe_checkpoint(metadata: Metadata) -> dict:
    """JSON-able summary of a checkpoint's `Metadata` (``workbench inspect --json``, the report):
    every entry with its chunks (region, offsets, sizes, file, byte range, writer rank) in
    metadata order, and every data file with its item count and bytes, by writer rank."""
    storage = storage_data_of(metadata)
    entries, files = [], {}
    for fqn, md in metadata.state_dict_metadata.items():
        tensor = isinstance(md, TensorStorageMetadata)
        boxes = md.chunks if tensor else [None]
        saved = []
        for box, info in zip(boxes, chunk_storage(storage, fqn, md)):
            path = getattr(info, "relative_path", None)
            length = getattr(info, "length", None)
            saved.append(
                {
                    "region": None if box is None else str(box),
                    "offsets": None if box is None else box.offsets,
                    "sizes": None if box is None else box.sizes,
                    "file": path,
                    "offset": getattr(info, "offset", None),
                    "length": length,
                    "writer": writer_of_file(path),
                }
            )
            f = files.setdefault(
                path, {"file": path, "writer": writer_of_file(path), "items": 0, "bytes": 0}
            )
            f["items"] += 1
            f["bytes"] += length or 0
        entries.append(
            {
                "fqn": fqn,
                "kind": "tensor" if tensor else "bytes",
                "shape": list(md.size) if tensor else None,
                "dtype": md.properties.dtype if tensor else None,
                "nbytes": md.nbytes if tensor else saved[0]["length"],
                "chunks": saved,
            }
        )
    order = sorted(
        files.values(), key=lambda f: (f["writer"] is None, f["writer"] or 0, str(f["file"]))
    )
    return {"version": metadata.version, "entries": entries, "files": order}
