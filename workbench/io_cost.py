"""The I/O cost model of a load: files opened, reads, bytes needed and read, per rank and per file.

`load_io(load_result)` computes a `LoadIO` from a load plan (``planning.plan_load``'s result,
also its ``.io``): what ``FileSystemReader`` opens and reads on every rank, and the rank-to-file
traffic. Reads the result's columns only, so it never imports planning (planning offers ``.io``
by importing this module). Imports geometry, records and formats.dcp (file names); no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .errors import MetadataError
from .formats.dcp_files import PlannedStorage, file_name, writer_of_file
from .geometry import box_arrays
from .records import BytesStorageMetadata, MetadataIndex

__all__ = ["LoadIO", "load_io"]


@dataclass(frozen=True, eq=False)
class LoadIO:
    """What a load costs, per load rank and per file (see ``LoadPlanResult.io``).

    Per load rank (arrays of ``world_size``): ``files_opened``, ``reads`` (read items),
    ``bytes_needed`` (elements the rank receives x the saved element size), ``bytes_read`` (what
    ``FileSystemReader.read_data`` reads: the whole stored item for every read item, its
    ``StorageInfo.length`` when known, else the saved chunk's bytes), ``amplification``
    (bytes_read / bytes_needed, nan when nothing is needed). Per file (``files``, sorted by writer
    rank then name): ``file_writers`` (rank parsed from ``__<rank>_<n>.distcp``, -1 otherwise),
    ``readers[file]`` (load ranks opening it), ``file_reads`` / ``file_bytes_read`` (read items
    served, bytes loaded). Rank-to-file traffic as pairs (``pair_rank``, ``pair_file`` index into
    ``files``, ``pair_reads``, ``pair_bytes``; one row per rank that reads a file) and as dense
    ranks x files matrices ``traffic`` (bytes) and ``read_counts`` (items), built on first access
    (4096 x 4096 ranks and files is 128 MB each). ``bytes_written``: per save rank, from
    ``StorageInfo.length`` or the chunks' bytes, or None when no file names a rank. Reads whose
    chunk has no storage entry count in the per-rank numbers but in no file."""

    files_opened: np.ndarray
    reads: np.ndarray
    bytes_needed: np.ndarray
    bytes_read: np.ndarray
    amplification: np.ndarray
    files: tuple[str, ...]
    file_writers: np.ndarray
    readers: dict
    file_reads: np.ndarray
    file_bytes_read: np.ndarray
    pair_rank: np.ndarray
    pair_file: np.ndarray
    pair_reads: np.ndarray
    pair_bytes: np.ndarray
    bytes_written: np.ndarray | None

    def _dense(self, values: np.ndarray) -> np.ndarray:
        out = np.zeros((len(self.reads), len(self.files)), np.int64)
        out[self.pair_rank, self.pair_file] = values
        return out

    @cached_property
    def traffic(self) -> np.ndarray:
        return self._dense(self.pair_bytes)

    @cached_property
    def read_counts(self) -> np.ndarray:
        return self._dense(self.pair_reads)


class _Files:
    """File names of a checkpoint numbered in order of first sight, and each fqn's saved chunks
    as (file id, bytes a read of the chunk loads) columns; planned storage is answered from its
    writer arrays, a real ``storage_data`` by one lookup per chunk."""

    def __init__(self, res):
        self.res = res
        self.ids: dict[str, int] = {}
        self._rank_fid = np.zeros(0, np.int64)
        self._path_fid = np.zeros(0, np.int64)  # by StorageColumns path id
        self._columns: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._chunk_cache: dict = {}

    def _id(self, name: str) -> int:
        return self.ids.setdefault(name, len(self.ids))

    def _writer_ids(self, w: np.ndarray) -> np.ndarray:
        """The file id of each writer rank in ``w``: a file name is made once per writer, not
        once per fqn and writer (16,384 ranks x 723 fqns)."""
        if not len(w):
            return np.zeros(0, np.int64)
        self._rank_fid, fid = self._lookup(self._rank_fid, w, int(w.max()) + 1, file_name)
        return fid

    def _path_ids(self, sd, path_id: np.ndarray) -> np.ndarray:
        """The file id of each of a reader's path ids (``StorageColumns.paths``): a name is
        numbered once, not once per fqn and file (2048 files x 1137 fqns)."""
        self._path_fid, fid = self._lookup(
            self._path_fid, path_id, len(sd.paths), lambda p: str(sd.paths[p])
        )
        return fid

    def _lookup(self, table: np.ndarray, keys: np.ndarray, size: int, name_of):
        """(the table grown to ``size``, the file id of each key): a lookup table indexed by
        key (-1: not numbered yet); new names are numbered in key order, as one fqn's files
        are met."""
        if len(table) < size:
            table = np.concatenate([table, np.full(size - len(table), -1, np.int64)])
        fid = table[keys]
        if (fid < 0).any():
            for k in np.unique(keys[fid < 0]).tolist():
                table[k] = self._id(name_of(k))
            fid = table[keys]
        return table, fid

    def columns(self, fqn: str, md) -> tuple[np.ndarray, np.ndarray]:
        """(file id, bytes) of each of ``fqn``'s saved chunks (computed once per fqn: the reads
        and the written files both ask)."""
        got = self._columns.get(fqn)
        if got is None:
            got = self._columns[fqn] = self._compute_columns(fqn, md)
        return got

    def _compute_columns(self, fqn: str, md) -> tuple[np.ndarray, np.ndarray]:
        sd = self.res.metadata.storage_data
        if isinstance(md, BytesStorageMetadata):
            nbytes = np.zeros(1, np.int64)
            keys = [MetadataIndex(fqn)]
        else:
            saved = self.res.saved.get(fqn)
            offs, sizes = (
                saved
                if saved is not None
                else box_arrays(md.chunks, md.size, fqn, self._chunk_cache, MetadataError)
            )
            nbytes = np.prod(sizes, axis=1) * md.properties.element_size
            keys = None
        w = (
            sd.writer_array(fqn, md.chunks)
            if isinstance(sd, PlannedStorage) and keys is None
            else None
        )
        if w is not None:
            return self._writer_ids(w), nbytes
        fid = np.full(len(nbytes), -1, np.int64)
        if sd is None or (not isinstance(sd, PlannedStorage) and not sd):
            return fid, nbytes
        if keys is None and getattr(sd, "box_rows", None) is not None:
            # a reader's columns (formats.columns.StorageColumns): one tensor's rows at once,
            # not a MetadataIndex and a StorageInfo per chunk (50 s at 16,384 ranks)
            rows = sd.rows_of(fqn, offs)
            found = rows >= 0
            if found.any():
                fid[found] = self._path_ids(sd, sd.path_id[rows[found]])
                nbytes = nbytes.copy()
                nbytes[found] = sd.length[rows[found]]
            return fid, nbytes
        if keys is None:
            keys = [MetadataIndex(fqn, c.offsets) for c in md.chunks]
        nbytes = nbytes.copy()
        for i, k in enumerate(keys):
            info = sd.get(k)
            if info is None:
                continue
            fid[i] = self._id(str(info.relative_path))
            if getattr(info, "length", None) is not None:
                nbytes[i] = int(info.length)
        return fid, nbytes


def load_io(res) -> LoadIO:
    """The `LoadIO` of a load result (``planning.plan_load``'s). Sums are taken once per distinct (read pattern, files,
    chunk bytes) group and multiplied by the number of fqns in the group, so a 1000-rank model
    costs a few group computations, not one per fqn and item."""
    ws = res.world_size
    sdm = res.metadata.state_dict_metadata
    files = _Files(res)
    # A group is keyed by the files and bytes of the saved chunks its reads touch, not of all its
    # chunks: a load-balanced save gives every fqn its own writers for the chunks nobody reads
    # (the empty shards of a tensor smaller than the mesh), and keying on those made one group
    # per fqn (723 x 1M (rank, file) pairs at 16,384 ranks: out of memory).
    used_of: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    groups: dict = {}
    for fqn, block in res.blocks.items():
        md = sdm[fqn]
        fid, item_bytes = files.columns(fqn, md)
        esize = 0 if block.kind == "bytes" else md.properties.element_size
        hit = used_of.get(id(block.saved_idx))
        if hit is None:
            si = np.maximum(block.saved_idx, 0)  # a bytes entry's one "chunk"
            used, local = np.unique(si, return_inverse=True)
            hit = used_of[id(block.saved_idx)] = (used, local.reshape(-1))
        used, local = hit
        fid_u, bytes_u = fid[used], item_bytes[used]
        g = (id(block.rank), id(block.saved_idx), fid_u.tobytes(), bytes_u.tobytes(), esize)
        if g in groups:
            groups[g][1] += 1
        else:
            groups[g] = [(block, local, fid_u, bytes_u, esize), 1]
    n_reads = np.zeros(ws, np.int64)
    needed = np.zeros(ws, np.int64)
    read = np.zeros(ws, np.int64)
    pair_keys, pair_bytes, pair_counts = [], [], []
    stride = ws + 1
    for (block, si, fid, item_bytes, esize), mult in groups.values():
        rb = item_bytes[si]
        n_reads += mult * np.bincount(block.rank, minlength=ws)
        if esize:
            nb = np.prod(block.lengths, axis=1) * esize
            needed += mult * _sum_by(block.rank, nb, ws)
        read += mult * _sum_by(block.rank, rb, ws)
        f = fid[si]
        known = f >= 0
        flat = f[known] * stride + block.rank[known]
        uniq, inv = np.unique(flat, return_inverse=True)
        pair_keys.append(uniq)
        pair_bytes.append(mult * _sum_by(inv.reshape(-1), rb[known], len(uniq)))
        pair_counts.append(mult * np.bincount(inv.reshape(-1), minlength=len(uniq)))
    # every file of the checkpoint, read or not, with what was written to it
    written: dict = {}
    for fqn, md in sdm.items():
        fid, item_bytes = files.columns(fqn, md)
        g = (fid.tobytes(), item_bytes.tobytes())
        if g in written:
            written[g][2] += 1
        else:
            written[g] = [fid, item_bytes, 1]
    names = list(files.ids)
    nf = len(names)
    per_file = np.zeros(nf, np.int64)
    for fid, item_bytes, mult in written.values():
        known = fid >= 0
        per_file += mult * _sum_by(fid[known], item_bytes[known], nf)
    writers = [writer_of_file(n) for n in names]
    order = sorted(range(nf), key=lambda i: (writers[i] is None, writers[i] or 0, names[i]))
    remap = np.empty(nf, np.int64)
    remap[order] = np.arange(nf)
    # merge the groups' (file, rank) pairs; the dense matrices are filled from the merged pairs
    # and the readers come from the pairs, never from scanning ranks x files
    keys = np.concatenate(pair_keys) if pair_keys else np.zeros(0, np.int64)
    uniq, inv = np.unique(keys, return_inverse=True)
    inv = inv.reshape(-1)
    pb = _sum_by(inv, np.concatenate(pair_bytes) if pair_bytes else keys, len(uniq))
    pc = _sum_by(inv, np.concatenate(pair_counts) if pair_counts else keys, len(uniq))
    pr, pf = uniq % stride, remap[uniq // stride] if nf else uniq
    files_t = tuple(names[i] for i in order)
    file_writers = np.array([-1 if writers[i] is None else writers[i] for i in order], np.int64)
    by_file = np.lexsort((pr, pf))
    cuts = np.searchsorted(pf[by_file], np.arange(nf + 1))
    ranks_by_file = pr[by_file].tolist()
    readers = {files_t[j]: tuple(ranks_by_file[cuts[j] : cuts[j + 1]]) for j in range(nf)}
    with np.errstate(divide="ignore", invalid="ignore"):
        amp = np.where(needed > 0, read / np.maximum(needed, 1), np.nan)
    bytes_written = None
    if (file_writers >= 0).any():
        bytes_written = np.zeros(int(file_writers.max()) + 1, np.int64)
        known = file_writers >= 0
        np.add.at(bytes_written, file_writers[known], per_file[order][known])
    return LoadIO(
        files_opened=np.bincount(pr, minlength=ws),
        reads=n_reads,
        bytes_needed=needed,
        bytes_read=read,
        amplification=amp,
        files=files_t,
        file_writers=file_writers,
        readers=readers,
        file_reads=_sum_by(pf, pc, nf),
        file_bytes_read=_sum_by(pf, pb, nf),
        pair_rank=pr,
        pair_file=pf,
        pair_reads=pc,
        pair_bytes=pb,
        bytes_written=bytes_written,
    )


def _sum_by(index: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Exact int64 per-bin sums (``np.bincount`` weights are float64 and round above 2**53)."""
    out = np.zeros(n, np.int64)
    np.add.at(out, index, values)
    return out
