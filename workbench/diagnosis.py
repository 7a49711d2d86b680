"""Diagnosis: everything that makes a reshard fail or load wrong values, as data (`Problem`).

`find_problems` reads a load plan (``planning.plan_load``'s result: metadata, target layouts,
torch's failures) and `find_save_problems` a save plan; both return `Problem` records in a stable
order (state-dict order of fqns, then kind). Severity ``error`` means torch raises, ``silent``
means torch loads wrong or stale values without a word, ``warning`` is worth knowing. Coverage is
checked cheaply first (saved chunks that tile their tensor cover every request) and exact holes
(`geometry.uncovered`) are computed only for tensors that do not tile. Must not import torch.
"""

from __future__ import annotations

import difflib
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, get_args

import numpy as np

from .errors import ChunkError, MetadataError, WorkbenchError
from .formats.dcp_files import writer_of_file
from .formatting import list_text, ranks_text
from .geometry import (
    MAX_OVERLAP_PAIRS,
    MAX_OVERLAP_REGIONS,
    Chunk,
    Coverage,
    box_arrays,
    coverage,
    overlap_mask,
    shares_elements,
    uncovered,
)
from .planner_helpers import (
    PARTIAL_MESSAGE,
    VALIDATION_ERROR,
    invalid_metadata_message,
    missing_key_message,
    size_mismatch_message,
    torch_size_text,
)
from .records import BytesStorageMetadata, MetadataIndex, TensorStorageMetadata
from .sharding import chunk_holders, format_placements
from .sources import as_record
from .versions import resolve_torch_version, semantics

__all__ = [
    "Problem",
    "Problems",
    "Kind",
    "Severity",
    "KINDS",
    "SEVERITIES",
    "BLOCKING",
    "find_problems",
    "find_save_problems",
    "find_checkpoint_problems",
    "rank_suffix",
]

# What a problem is about: one of these words, everywhere (tables, CLI, JSON, explain). A
# Literal, so a type checker catches a misspelt comparison; tests/test_problems.py checks every
# kind / severity word compared in the package against these tuples.
Kind = Literal[
    "missing_key",
    "unexpected_key",
    "shape_mismatch",
    "dtype_mismatch",
    "uncovered",
    "overlap",
    "strided_misdescribed",
    "dedup_loss",
    "per_rank_bytes",
    "partial",
    # a checkpoint's files (checkpoint.Checkpoint.problems, checkpoint.find_file_problems) and
    # storage-specific save problems (plan_save(storage="hf"))
    "missing_file",
    "unlisted_chunk",
    "truncated_file",
    "no_metadata",
    "duplicate_chunk",
    "bad_item",
    "stray_file",
    "unread_file",
    "hf_lost_chunk",
]
KINDS: tuple[Kind, ...] = get_args(Kind)
# error: torch raises; silent: torch loads (or saves) wrong values without a word; warning: works,
# but costs or risks something
Severity = Literal["error", "silent", "warning"]
SEVERITIES: tuple[Severity, ...] = get_args(Severity)
# severities that make a load raise or load wrong values: a job guarded by a plan must stop
BLOCKING: tuple[Severity, ...] = ("error", "silent")
_KIND_ORDER = {k: i for i, k in enumerate(KINDS)}


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a save or a load, for one state-dict entry.

    ``ranks``: the ranks affected (that raise, that read wrong values, whose copy is lost); for
    the kinds about a checkpoint's files (no load target), the writer ranks of the files concerned;
    ``region``: the box concerned (a hole, an overlap, a misdescribed rank's box) or None;
    ``message``: house form with the numbers (torch's own text quoted where torch raises);
    ``fix``: what to do.
    """

    fqn: str
    kind: Kind
    ranks: tuple[int, ...]
    region: Chunk | None
    severity: Severity
    message: str
    fix: str

    def __post_init__(self):
        if self.kind not in _KIND_ORDER:
            raise WorkbenchError(
                self.fqn,
                f"problem kind {self.kind!r} is unknown",
                "one of " + ", ".join(KINDS),
                "Use a kind from diagnosis.KINDS.",
                kind=self.kind,
            )
        if self.severity not in SEVERITIES:
            raise WorkbenchError(
                self.fqn,
                f"severity {self.severity!r} is unknown",
                "one of " + ", ".join(SEVERITIES),
                "Use a severity from diagnosis.SEVERITIES.",
                severity=self.severity,
            )
        if type(self.ranks) is not tuple:
            object.__setattr__(self, "ranks", tuple(int(r) for r in self.ranks))

    @property
    def blocking(self) -> bool:
        """torch raises or loads wrong values (severity in `BLOCKING`)."""
        return self.severity in BLOCKING

    def __str__(self) -> str:
        return f"[{self.severity}] {self.kind}: {self.message} {self.fix}"


class Problems(list):
    """What every ``find_*problems`` returns: a list of `Problem` in every way (equal to a list
    of the same problems, sliced into lists, ``+=`` keeps it a `Problems`) that shows itself in
    a notebook: counts by severity and the problems table as HTML (`reprs.problems_html`), one
    problem per line as IPython's plain text. ``repr`` stays the list's."""

    __slots__ = ()

    def _repr_html_(self) -> str:
        # the HTML layer sits above the diagnosis; loaded only when a notebook shows the list
        from .reprs import problems_html

        return problems_html(self)

    def _repr_pretty_(self, printer, cycle: bool) -> None:
        if not self:
            printer.text("Problems([])")
            return
        counts = ", ".join(
            f"{n} {s}" for s in SEVERITIES if (n := sum(p.severity == s for p in self))
        )
        printer.text("\n".join([f"{len(self)} problems ({counts})", *map(str, self)]))


# ----------------------------------------------------------------------------- formatting
# ----------------------------------------------------------------------------- saved chunks
def _hole_problems(
    fqn, layout, saved: list[Chunk], cov: Coverage, severity: str, torch_text: str = ""
) -> list[Problem]:
    """One `uncovered` problem per distinct hole of a requested chunk, with the ranks that request
    it (or, with no target layout, one per global hole)."""
    total = sum(c.volume for c in cov.holes)
    numel = math.prod(layout.shape) if layout is not None else None
    fix = (
        "Save the missing region (every element must belong to a saved chunk), or load with a "
        "layout that does not request it."
    )
    said = f" torch raises: {torch_text}" if torch_text else ""
    if layout is None:
        return [
            Problem(
                fqn=fqn,
                kind="uncovered",
                ranks=(),
                region=h,
                severity=severity,
                message=f"{fqn}: no saved chunk covers {h} ({h.volume} elements; {total} uncovered in "
                f"all) (saved chunks {list_text(saved, 6)} must tile the tensor).{said}",
                fix=fix,
            )
            for h in cov.holes
        ]
    by_region: dict[Chunk, list[int]] = defaultdict(list)
    off = np.array([c.offsets for c in saved], dtype=np.int64).reshape(len(saved), layout.ndim)
    siz = np.array([c.sizes for c in saved], dtype=np.int64).reshape(off.shape)
    for want, ranks in chunk_holders(layout).items():
        if want.is_empty or not any(shares_elements(want, h) for h in cov.holes):
            continue
        # only the saved chunks that meet the request matter to its exact holes (torch's
        # predicate is a strict overlap here: ``saved`` and ``want`` are non-empty)
        near = overlap_mask(off, siz, np.array(want.offsets), np.array(want.sizes))
        for region in uncovered(want, [saved[i] for i in np.flatnonzero(near)]):
            by_region[region].extend(ranks)
    out = []
    for region, ranks in by_region.items():
        out.append(
            Problem(
                fqn=fqn,
                kind="uncovered",
                ranks=tuple(sorted(ranks)),
                region=region,
                severity=severity,
                message=f"{fqn}: no saved chunk covers {region}, requested by {ranks_text(ranks)} "
                f"({region.volume} elements; the checkpoint covers {numel - total} of {numel}) "
                "(uncovered elements keep their previous values, uninitialised memory for meta-device "
                "targets, and torch says nothing).",
                fix=fix,
            )
        )
    return out


def _coverage_of(fqn, saved: TensorStorageMetadata, memo: dict | None = None) -> Coverage:
    """`geometry.coverage` of a saved tensor; its bounds' errors name the tensor. With a
    ``memo`` (one per plan), tensors with the same chunk geometry (the 80 layers of a model)
    are checked once."""
    try:
        if memo is None:
            return coverage(tuple(saved.size), saved.chunks)
        size = tuple(saved.size)
        arrays = box_arrays(saved.chunks, size, fqn, memo.setdefault("boxes", {}))
        key = (size, arrays[0].tobytes(), arrays[1].tobytes())
        hit = memo.get(key)
        if hit is None:
            hit = memo[key] = coverage(size, saved.chunks, arrays)
        return hit
    except ChunkError as e:
        raise ChunkError(fqn, e.what, e.expectation, e.fix, **e.facts) from None


def _overlap_problems(fqn, layout, saved, cov: Coverage, severity: str | None) -> list[Problem]:
    out = []
    reqs = chunk_holders(layout) if layout is not None else {}
    for region, ix in cov.overlaps:
        readers = sorted(
            r for want, ranks in reqs.items() if shares_elements(want, region) for r in ranks
        )
        sev = severity or ("silent" if readers else "warning")
        who = (
            f"readers ({ranks_text(readers)}) get whichever chunk torch applies last "
            "(read-item and file order), without an error"
            if layout is not None and readers
            else "nobody in this target reads it"
            if layout is not None
            else "a load gets whichever is applied last"
        )
        out.append(
            Problem(
                fqn=fqn,
                kind="overlap",
                ranks=tuple(readers),
                region=region,
                severity=sev,
                message=f"{fqn}: saved chunks "
                + ", ".join(f"#{i} {saved[i]}" for i in ix[:4])
                + (f" and {len(ix) - 4} more" if len(ix) > 4 else "")
                + f" overlap on {region} ({region.volume} elements) (every element saved once); {who}.",
                fix="Rewrite the checkpoint so every element is saved by exactly one chunk (torch's save "
                "validation rejects overlaps; they come from custom planners, edited metadata or "
                "per-rank shards of different sizes at one offset).",
            )
        )
    if cov.more_overlaps:
        # hostile or badly damaged metadata: n boxes that all overlap make n**2 / 2 regions;
        # the listing stops at geometry's bounds and says how much it left out
        out.append(
            Problem(
                fqn=fqn,
                kind="overlap",
                ranks=(),
                region=None,
                severity=severity or "silent",
                message=f"{fqn}: {cov.more_overlaps:,} more overlapping chunk pairs or regions "
                f"among its {len(saved):,} saved chunks are not listed (at most "
                f"{MAX_OVERLAP_REGIONS} regions and {MAX_OVERLAP_PAIRS:,} pairs are analysed) "
                "(every element saved once); the metadata is badly damaged or crafted.",
                fix="Do not load this checkpoint; re-save it from the training job.",
            )
        )
    return out


# ----------------------------------------------------------------------------- strided shards
def _misdescribed_problems(
    fqn, layout, severity: str, side: str, torch_text: str = "", reads=None
) -> list[Problem]:
    """One problem per rank whose DCP box is not its data: which positions get which indices.
    ``reads`` (load side): the fqn's `ReadBlock`, to tell which reads into a local tensor
    smaller than its box raise."""
    out = []
    said = f" torch raises: {torch_text}" if torch_text else ""
    # FSDP2 + TP (Layout.data_held): the rows are FSDP2's torch.chunk of the TP-local rows over
    # dp, possibly another count than DCP's box (dcp-semantics 3, last bullet).
    holds = (
        "FSDP2 really holds rows (torch.chunk of its TP-local rows over dp)"
        if layout.data_held is not None
        else "it holds indices"
    )
    for r in layout.misdescribed_ranks:
        box = layout.chunks(r)[0]
        held = layout.held_indices(r)
        parts = []
        short = {}  # dim -> the local count, where it is below the box's
        for d, should in held.items():
            gets = list(range(box.offsets[d], box.offsets[d] + box.sizes[d]))
            if len(gets) != len(should):
                if len(should) < len(gets):
                    short[d] = len(should)
                parts.append(
                    f"dim {d}: {holds} {list_text(should)} ({len(should)}) but DCP's box "
                    f"{box} names {list_text(gets)} ({len(gets)})"
                )
                continue
            wrong = [k for k, (g, s) in enumerate(zip(gets, should)) if g != s]
            if wrong:
                parts.append(
                    f"dim {d}: {holds} {list_text(should)} but its box {box} names "
                    f"{list_text(gets)}, so local positions {list_text(wrong)} get indices "
                    f"{list_text(gets[k] for k in wrong)} instead of "
                    f"{list_text(should[k] for k in wrong)}"
                )
        sev = severity
        if side == "load" and short and reads is not None and _short_read_raises(reads, r, short):
            sev = "error"
            what = (
                "torch raises reading into its smaller local tensor (narrow_tensor_by_index "
                "narrows it only when the read is shorter: a longer read fails the reader's "
                "'mismatch sizes' assert, a read past its end fails narrow)"
            )
        elif side == "load":
            what = "loading into it reads the box's indices, not the held ones, without an error"
        elif sev == "error":
            what = "a save from this layout fails validation (the boxes overlap or leave holes)"
        else:
            what = "the checkpoint would record boxes that are not the saved data"
        out.append(
            Problem(
                fqn=fqn,
                kind="strided_misdescribed",
                ranks=(r,),
                region=box,
                severity=sev,
                message=f"{fqn}: rank {r} (coordinate {layout.coordinate(r)}, placements "
                f"[{format_placements(layout.placements)}]) {'; '.join(parts)} (a DCP box must "
                f"describe the data); {what}.{said}",
                fix="Use sizes that the _StridedShard mesh dims divide evenly, or "
                + (
                    "load into a layout without _StridedShard (e.g. FSDP only) and redistribute."
                    if side == "load"
                    else "save from a layout without _StridedShard (redistribute "
                    "first, or get_state_dict with full_state_dict)."
                ),
            )
        )
    return out


def _short_read_raises(reads, r: int, short: dict[int, int]) -> bool:
    """Whether one of rank r's read items fails on a dim where its local tensor has only
    ``short[d]`` rows: ``narrow_tensor_by_index`` skips the narrow when the length is not below
    the local size (then a longer read fails the reader's size assert) and otherwise narrows,
    which raises past the end. A read of exactly the local size copies silently."""
    rows = reads.of_rank(r)
    for d, n in short.items():
        for off, ln in zip(reads.dest_offsets[rows, d], reads.lengths[rows, d]):
            if ln > n or (ln < n and off + ln > n):
                return True
    return False


# ----------------------------------------------------------------------------- per-rank keys
_RANK_SUFFIX = re.compile(r"^(?P<stem>.*?)(?P<rank>\d+)$")


def rank_suffix(key: str) -> tuple[str, int] | None:
    """``(stem, rank)`` of a key ending in a rank number (``dataloader.dp_rank_3`` ->
    ``("dataloader.dp_rank_", 3)``), else None: how per-rank keys are told apart."""
    m = _RANK_SUFFIX.match(key)
    return (m["stem"], int(m["rank"])) if m else None


def _rank_families(saved_keys: Iterable[str], target_keys: Iterable[str]):
    """Rank-suffixed key families present on both sides: ``{stem: (saved ranks, target ranks)}``.

    A family is a stem (``dataloader.dp_rank_``) whose keys end in a rank number, with at least
    two ranks on one side; only families whose rank sets differ are returned.
    """
    fam: dict[str, tuple[set, set]] = defaultdict(lambda: (set(), set()))
    for side, keys in ((0, saved_keys), (1, target_keys)):
        for k in keys:
            stem_rank = rank_suffix(k)
            if stem_rank:
                fam[stem_rank[0]][side].add(stem_rank[1])
    return {
        stem: (s, t)
        for stem, (s, t) in fam.items()
        if s and t and s != t and max(len(s), len(t)) >= 2
    }


def _per_rank_problems(families, md_items, layouts, failures, strict: bool):
    out, handled = [], set()
    for stem, (saved, wanted) in families.items():
        saved_n, want_n = len(saved), len(wanted)
        family = f"{stem}{{0..{max(saved)}}}" if saved == set(range(saved_n)) else f"{stem}<r>"
        for r in sorted(saved - wanted):
            fqn = f"{stem}{r}"
            if not isinstance(md_items.get(fqn), BytesStorageMetadata):
                continue
            handled.add(fqn)
            out.append(
                Problem(
                    fqn=fqn,
                    kind="per_rank_bytes",
                    ranks=(),
                    region=None,
                    severity="silent",
                    message=f"{fqn}: the checkpoint holds per-rank entries {family} from {saved_n} ranks but the "
                    f"target requests only {want_n} of them (one per rank of the new world); rank {r}'s "
                    "state is loaded by nobody and torch says nothing.",
                    fix="Re-split the per-rank state for the new world size before loading (or load the old "
                    "keys explicitly and merge them); save such state under rank-independent keys.",
                )
            )
        for r in sorted(wanted - saved):
            fqn = f"{stem}{r}"
            if fqn not in layouts:
                continue
            handled.add(fqn)
            text = failures.get(fqn, (None, None))[1] or missing_key_message(fqn)
            out.append(
                Problem(
                    fqn=fqn,
                    kind="per_rank_bytes",
                    ranks=layouts[fqn].key_ranks(),
                    region=None,
                    severity="error" if strict else "warning",
                    message=f"{fqn}: the target asks for per-rank entry {fqn} but the checkpoint was saved by "
                    f"{saved_n} ranks and has only {family} (rank {r} did not exist at save time)"
                    + (f"; torch raises: {text}" if strict else "; allow_partial_load skips it."),
                    fix="Give the new ranks state derived from the saved ranks (re-split it), or load the "
                    "per-rank entries with allow_partial_load=True and initialise the new ranks' state.",
                )
            )
    return out, handled


# ----------------------------------------------------------------------------- load side
def _failures(result) -> dict[str, tuple[tuple[int, ...], str]]:
    out = {}
    for fqn, ranks, text in getattr(result, "failures", ()) or ():
        out.setdefault(fqn, (tuple(ranks), str(text)))
    return out


def find_problems(load_result, *, torch_version: str | None = None) -> Problems:
    """Problems of a whole load plan (``planning.plan_load``'s result), sorted by fqn (target order,
    then checkpoint-only keys) and kind, under the plan's torch version; a different
    ``torch_version`` re-plans the same load with that version first (e.g. a size mismatch is an
    ``error`` from 2.6, ``silent`` before: torch 2.4 / 2.5 read the chunks into the wrong shape).

    Reads ``.metadata``, ``.layouts`` (the target) and ``.failures`` (torch's messages for entries
    torch raises on); mirrors ``create_default_local_load_plan`` and the reader's silent paths
    (dcp-semantics sections 3-5, 8).
    """
    if torch_version is not None and resolve_torch_version(torch_version) != getattr(
        load_result, "torch_version", None
    ):
        load_result = load_result.replan(torch_version)  # diagnosis never imports planning
    tv = getattr(load_result, "torch_version", "2.13")
    md = load_result.metadata
    layouts: Mapping[str, Any] = load_result.layouts
    items = md.state_dict_metadata
    failures = _failures(load_result)
    # an entry no rank's state dict holds is not requested at all (torch never sees it)
    layouts = {f: lay for f, lay in layouts.items() if lay.key_ranks()}
    families = _rank_families(
        [k for k, v in items.items() if isinstance(v, BytesStorageMetadata)], list(layouts)
    )
    out, handled = _per_rank_problems(
        families, items, layouts, failures, not getattr(load_result, "allow_partial_load", False)
    )
    memo: dict = {}
    for fqn, layout in layouts.items():
        if fqn in handled:
            continue
        saved = items.get(fqn)
        # where torch raises, the ranks it raises on; otherwise every rank holding the key
        ranks, text = failures.get(fqn, (layout.key_ranks(), None))
        # torch's order of checks: missing key, size (tensor metadata only), then the chunk list
        # (a non-tensor value or a Partial DTensor raise there).
        if saved is None:
            out.append(_missing(fqn, ranks, text, items, load_result))
            continue
        if layout.per_rank_values and len(layout.key_ranks()) > 1:
            out.append(_one_copy_for_all(fqn, layout, md))
        elif isinstance(saved, TensorStorageMetadata):
            out.extend(
                _tensor_problems(
                    fqn,
                    layout,
                    saved,
                    ranks,
                    text,
                    lambda fqn=fqn: load_result.reads(fqn),
                    tv,
                    memo,
                )
            )
        elif not layout.is_bytes:
            # a DTensor rank outside its mesh creates no read item, so keeps its tensor
            silent = tuple(r for r in ranks if layout.kind != "dtensor" or layout.chunks(r))
            out.append(
                Problem(
                    fqn=fqn,
                    kind="shape_mismatch",
                    ranks=silent,
                    region=None,
                    severity="silent",
                    message=f"{fqn}: the checkpoint saved a non-tensor (BytesStorageMetadata) but the target holds "
                    f"a {layout.kind} of shape {layout.shape} (a tensor in place); torch replaces the state "
                    "dict entry with the unpickled object and never writes the tensor.",
                    fix="Check that the key names the same thing on both sides.",
                )
            )
    for fqn in items:
        if fqn not in layouts and fqn not in handled:
            opt = _unloaded_optimizer_state(fqn, layouts)
            if opt is None:
                severity, why = "warning", "(loads ignore unrequested keys); it is not loaded."
                fix = (
                    "Add it to the state dict passed to dcp.load if it is needed (or rename a "
                    "key that changed)."
                )
            else:
                severity = "silent"
                why = (
                    f"although the target loads the same optimizer ({opt}.param_groups): a "
                    "freshly built optimizer has no per-parameter state until its first step, "
                    "so its state dict asks for none and the saved state is dropped without a "
                    "word."
                )
                fix = (
                    "Build the optimizer's state dict with "
                    "torch.distributed.checkpoint.state_dict.get_optimizer_state_dict (it "
                    "materialises the state) and apply it with set_optimizer_state_dict."
                )
            out.append(
                Problem(
                    fqn=fqn,
                    kind="unexpected_key",
                    ranks=(),
                    region=None,
                    severity=severity,
                    message=f"{fqn}: the checkpoint holds {_describe_saved(items[fqn])} that no "
                    f"rank requests {why}",
                    fix=fix,
                )
            )
    order = {f: i for i, f in enumerate(list(layouts) + [k for k in items if k not in layouts])}
    out.sort(key=lambda p: _sort_key(p, order))
    return Problems(out)


def _one_copy_for_all(fqn, layout, md) -> Problem:
    """A target whose plain tensor / bytes value differs per rank: the checkpoint holds one copy
    (save-time dedup kept one rank's), and every rank loads that same copy. The writer (known from
    its ``__<rank>_<n>.distcp`` file) gets its own value back; the other holders load wrong values,
    and they are the problem's ranks (all holders when the writer is unknown)."""
    holders = layout.key_ranks()
    storage = md.storage_data if isinstance(md.storage_data, Mapping) else {}
    info = storage.get(
        MetadataIndex(fqn) if layout.is_bytes else MetadataIndex(fqn, (0,) * len(layout.shape))
    )
    writer = writer_of_file(info.relative_path) if info is not None else None
    wrong = tuple(r for r in holders if r != writer)
    if writer is None:
        src = f" ({info.relative_path})" if info is not None else ""
        who = f"the checkpoint has one copy{src}, written by a rank it does not name"
    else:
        who = f"the checkpoint has only rank {writer}'s copy ({info.relative_path})"
    back = (
        f"; rank {writer} gets its own value back, {ranks_text(wrong)} load rank {writer}'s"
        if writer in holders
        else f"; {ranks_text(wrong)} all load that copy"
    )
    return Problem(
        fqn=fqn,
        kind="dedup_loss",
        ranks=wrong,
        region=None,
        severity="silent",
        message=f"{fqn}: the target holds a different value on each of {ranks_text(holders)} but "
        f"{who} (dcp.save keeps one rank's copy of a plain tensor or bytes entry){back}, so "
        "per-rank values are not restored.",
        fix="Save per-rank state under per-rank keys (e.g. suffix the rank) or as a DTensor / "
        "ShardedTensor.",
    )


def _sort_key(p: Problem, order: dict):
    """fqn (state-dict order), kind, then ranks and region: a stable order for tables and tests."""
    return (
        order.get(p.fqn, len(order)),
        p.fqn,
        _KIND_ORDER[p.kind],
        p.ranks,
        p.region.offsets if p.region is not None else (),
    )


def _unloaded_optimizer_state(fqn: str, layouts) -> str | None:
    """The optimizer prefix when ``fqn`` is per-parameter optimizer state
    (``<prefix>.state.<param>.<name>``, as ``optimizer.state_dict()`` flattens) of an optimizer
    whose ``param_groups`` the target does load; else None."""
    head, sep, rest = ("." + fqn).partition(".state.")
    if not sep or "." not in rest:
        return None
    groups = f"{head[1:]}.param_groups." if head else "param_groups."
    if not any(f.startswith(groups) for f in layouts):
        return None
    return head[1:] or "<top level>"


def _describe_saved(saved) -> str:
    if isinstance(saved, TensorStorageMetadata):
        return f"a {saved.properties.dtype} tensor of size {list(saved.size)} in {len(saved.chunks)} chunks"
    return "a non-tensor (bytes) entry"


def _missing(fqn, ranks, text, items, result) -> Problem:
    close = difflib.get_close_matches(fqn, list(items), n=1, cutoff=0.8)
    hint = f" The closest saved key is {close[0]!r}." if close else ""
    if not getattr(result, "allow_partial_load", False):
        text = text or missing_key_message(fqn)
        return Problem(
            fqn=fqn,
            kind="missing_key",
            ranks=ranks,
            region=None,
            severity="error",
            message=f"{fqn}: the checkpoint lacks this key, requested by {ranks_text(ranks)} "
            f"(every requested key must be saved); torch raises: {text}",
            fix="Rename the key to the saved name (prefixes such as 'model.' or '_orig_mod.' "
            "differ often), drop it from the state dict, or load with "
            f"allow_partial_load=True.{hint}",
        )
    # allow_partial_load: no error, no warning from torch; the entry keeps whatever it held
    # (torch.empty garbage for a meta-device target, None for values _init_state_dict dropped)
    return Problem(
        fqn=fqn,
        kind="missing_key",
        ranks=ranks,
        region=None,
        severity="silent",
        message=f"{fqn}: the checkpoint lacks this key, requested by {ranks_text(ranks)} "
        "(allow_partial_load skips it without a word); it keeps its current value, "
        "uninitialised memory for a meta-device target.",
        fix=f"Initialise it yourself or rename it to the saved key.{hint}",
    )


def _tensor_problems(
    fqn, layout, saved: TensorStorageMetadata, ranks, text, reads, tv: str = "2.13", memo=None
) -> list[Problem]:
    # reads: a callable giving the fqn's ReadBlock, built only for a misdescribed layout
    if layout.is_bytes:
        return [
            Problem(
                fqn=fqn,
                kind="shape_mismatch",
                ranks=ranks,
                region=None,
                severity="error",
                message=f"{fqn}: the checkpoint saved a tensor of {torch_size_text(saved.size)} but the target holds "
                f"a non-tensor value (not a Tensor, DTensor or ShardedTensor); torch raises: "
                + (text or invalid_metadata_message(fqn)),
                fix="Pass a tensor of the saved size (a value that _init_state_dict turned into None is a "
                "common cause), or drop the key.",
            )
        ]
    if tuple(saved.size) != tuple(layout.shape):
        raises = semantics(tv).size_mismatch_raises
        consequence = (
            "torch raises: " + (text or size_mismatch_message(fqn, saved.size, layout.shape))
            if raises
            else f"torch {tv} has no size check (it raises from 2.6 on): it reads the saved "
            "chunks into the target's boxes as if the shapes matched, so the values land in the "
            "wrong places (or the read asserts on mismatched sizes)."
        )
        return [
            Problem(
                fqn=fqn,
                kind="shape_mismatch",
                ranks=ranks,
                region=None,
                severity="error" if raises else "silent",
                message=f"{fqn}: saved size {list(saved.size)} differs from the target's "
                f"{list(layout.shape)} (global sizes must match; DCP reshards chunks, not shapes); "
                + consequence,
                fix="Build the target with the checkpoint's config (vocab padding, hidden sizes), pass the "
                "global DTensor rather than a local shard, or convert the checkpoint.",
            )
        ]
    if layout.has_partial:
        # _create_read_items raises only on ranks inside the DTensor's mesh
        in_mesh = tuple(r for r in ranks if layout.chunks(r))
        if not in_mesh:
            return []
        return [
            Problem(
                fqn=fqn,
                kind="partial",
                ranks=in_mesh,
                region=None,
                severity="error",
                message=f"{fqn}: the target DTensor has a Partial placement [{format_placements(layout.placements)}]"
                f" (DCP loads only Shard / Replicate); torch raises the unrelated message: "
                + (text or invalid_metadata_message(fqn))
                + " (_create_read_items swallows the Partial error and re-raises this).",
                fix="Redistribute the target to Replicate() / Shard() placements before dcp.load.",
            )
        ]
    out = []
    if saved.properties.dtype != layout.dtype:
        out.append(
            Problem(
                fqn=fqn,
                kind="dtype_mismatch",
                # ranks that receive elements (a zero-size shard or no chunk casts nothing)
                ranks=tuple(r for r in ranks if any(not c.is_empty for c in layout.chunks(r))),
                region=None,
                severity="silent",
                message=f"{fqn}: saved dtype {saved.properties.dtype} differs from the target's {layout.dtype} "
                f"(torch copy_()s without a check, so values are cast {saved.properties.dtype} -> "
                f"{layout.dtype} silently).",
                fix="Load into the saved dtype and convert explicitly if the cast is intended.",
            )
        )
    cov = _coverage_of(fqn, saved, memo)
    if not cov.tiles:
        live = [c for c in saved.chunks if not c.is_empty]
        out.extend(_hole_problems(fqn, layout, live, cov, "silent"))
        out.extend(_overlap_problems(fqn, layout, saved.chunks, cov, None))
    if layout.misdescribed_ranks:
        out.extend(_misdescribed_problems(fqn, layout, "silent", "load", reads=reads()))
    return out


# ----------------------------------------------------------------------------- checkpoint alone
def find_checkpoint_problems(metadata) -> Problems:
    """Problems a checkpoint has whatever the target: per tensor, the regions no saved chunk
    covers and the regions several saved chunks cover (``uncovered`` / ``overlap``, ranks ``()``,
    severity ``silent``: a load requesting them gets stale or last-applied values without an
    error). torch's save validation refuses both, so they come from edited or merged
    ``.metadata`` files or custom planners. ``metadata``: a workbench or torch ``Metadata``."""
    md = as_record(metadata)
    sdm = getattr(md, "state_dict_metadata", None)
    if not isinstance(sdm, Mapping):
        raise MetadataError(
            None,
            f"metadata is a {type(metadata).__name__}",
            "a DCP Metadata",
            "Read it with workbench.load_metadata(path).",
        )
    out = []
    memo: dict = {}
    for fqn, entry in sdm.items():
        if not isinstance(entry, TensorStorageMetadata):
            continue
        cov = _coverage_of(fqn, entry, memo)
        if cov.tiles:
            continue
        live = [c for c in entry.chunks if not c.is_empty]
        out.extend(_hole_problems(fqn, None, live, cov, "silent"))
        out.extend(_overlap_problems(fqn, None, entry.chunks, cov, "silent"))
    return Problems(out)


# ----------------------------------------------------------------------------- save side
def _validation_quote(errs: list[str], all_errs: list[str], torch_version: str = "2.13") -> str:
    """What torch raises for a key's validation errors: DefaultSavePlanner's exact ValueError text
    (every key's errors joined, cut at 500 characters) when this key's are all of them, else the
    key's own strings behind an elision. torch 2.4 - 2.11 raise the bare text and only log the
    strings (as warnings of ``torch.distributed.checkpoint.default_planner``)."""
    if not semantics(torch_version).validation_returns_errors:
        logged = "; ".join(" ".join(e.split()) for e in errs)
        return f"Failed to validate global plan (torch {torch_version} logs: {logged})"
    if list(errs) == list(all_errs):
        summary = "; ".join(errs)
        if len(summary) > 500:
            summary = summary[:500] + "... (truncated)"
        return "Failed to validate global plan: " + summary
    return "Failed to validate global plan: ... with, for this key: " + "; ".join(errs)


def find_save_problems(save_result) -> Problems:
    """Problems of a whole save plan (``planning.plan_save``'s result): Partial placements (save
    raises), ``_StridedShard`` layouts whose boxes are not their data (validation fails: such a
    checkpoint cannot exist), chunks that overlap or leave holes (validation raises when more than
    one rank saves; a single-rank save is not fill-checked), and per-rank plain values that
    ``dedup_save_plans`` reduces to one rank's copy. Sorted like `find_problems`.
    """
    layouts = save_result.layouts
    md = getattr(save_result, "metadata", None)
    items = md.state_dict_metadata if md is not None else {}
    writers = getattr(save_result, "writers", {}) or {}
    errors: dict[str, list[str]] = defaultdict(list)
    all_errs = list(getattr(save_result, "errors", ()) or ())
    for e in all_errs:
        m = VALIDATION_ERROR.search(e)
        if m:
            errors[m["fqn"]].append(e)
    failed = {f: tuple(r) for f, r, _ in getattr(save_result, "failures", ()) or ()}
    tv = getattr(save_result, "torch_version", "2.13")
    out = []
    # per layout object (the 80 layers of a model share a few) and per chunk geometry: computed
    # once, so 16,384-rank saves are checked in seconds
    memo: dict = {}
    for fqn, layout in layouts.items():
        ranks = _per_layout(memo, "holders", layout, lambda lay: tuple(lay.holders()))
        if layout.has_partial:
            out.append(
                Problem(
                    fqn=fqn,
                    kind="partial",
                    ranks=failed.get(fqn, ranks),
                    region=None,
                    severity="error",
                    message=f"{fqn}: placements [{format_placements(layout.placements)}] include Partial (a "
                    f"pending reduction DCP cannot save); torch raises ValueError: {PARTIAL_MESSAGE}",
                    fix="Redistribute to Replicate() or Shard() (e.g. dtensor.redistribute(mesh, "
                    "[Replicate()])) before saving.",
                )
            )
            continue
        errs = errors.get(fqn, [])
        if layout.misdescribed_ranks:
            # Validation rejects these boxes (dcp-semantics 3); without an error the checkpoint
            # would record boxes that are not the data.
            out.extend(
                _misdescribed_problems(
                    fqn,
                    layout,
                    "error" if errs else "silent",
                    "save",
                    _validation_quote(errs, all_errs, tv) if errs else "",
                )
            )
            continue
        if layout.per_rank_values and len(ranks) > 1:
            kept = writers.get(fqn, [None])[0]
            lost = tuple(r for r in ranks if r != kept)
            out.append(
                Problem(
                    fqn=fqn,
                    kind="dedup_loss",
                    ranks=lost,
                    region=None,
                    severity="silent",
                    message=f"{fqn}: {ranks_text(ranks)} each hold their own value of this "
                    f"{'non-tensor entry' if layout.is_bytes else 'plain tensor'} but DCP dedups by "
                    f"(fqn, offset) and writes only rank {kept}'s copy (dedup_save_plans); "
                    f"the values of {ranks_text(lost)} are lost and every rank loads rank {kept}'s.",
                    fix="Give each rank's value its own key (e.g. f'{fqn}.rank{r}') or make it a DTensor "
                    "sharded over the ranks.",
                )
            )
        saved = items.get(fqn)
        if layout.kind == "dtensor" and isinstance(saved, TensorStorageMetadata):
            out.extend(_offset_collisions(fqn, layout, saved, writers.get(fqn, []), errs, tv, memo))
        if isinstance(saved, TensorStorageMetadata) and saved.size:
            out.extend(
                _saved_chunk_problems(
                    fqn, saved, errs, writers.get(fqn, []), all_errs, tv, memo=memo
                )
            )
    out.extend(_lost_chunk_problems(save_result))
    order = {f: i for i, f in enumerate(layouts)}
    out.sort(key=lambda p: _sort_key(p, order))
    return Problems(out)


def _per_layout(memo: dict | None, what: str, layout, compute):
    """``compute(layout)``, once per layout object with a ``memo`` (which keeps the layout, so
    its id stays its own)."""
    if memo is None:
        return compute(layout)
    hit = memo.get((what, id(layout)))
    if hit is None:
        hit = memo[(what, id(layout))] = (layout, compute(layout))
    return hit[1]


def _colliding_offsets(layout) -> dict[tuple, dict]:
    """The offsets several different chunks of ``layout`` start at: ``{offset: {chunk:
    ranks}}``."""
    by_offset: dict[tuple, dict] = defaultdict(dict)
    for r, cs in enumerate(layout.rank_chunks):
        for c in cs:
            by_offset[c.offsets].setdefault(c, []).append(r)
    return {off: v for off, v in by_offset.items() if len(v) >= 2}


def _offset_collisions(fqn, layout, saved, writers, errs, tv, memo=None) -> list[Problem]:
    """DTensor chunks of one offset but different sizes: dedup keys on (fqn, offset) and writes
    one of them, so a real chunk can be dropped for an empty one at the same offset (torch 2.4 -
    2.7 put an empty shard at its LOCAL dim size, another rank's real start)."""
    by_offset = _per_layout(memo, "collisions", layout, _colliding_offsets)
    if not by_offset:
        return []
    kept = {c.offsets: (c, w) for c, w in zip(saved.chunks, writers)}
    out = []
    for off, variants in by_offset.items():
        if off not in kept:
            continue
        chunk, writer = kept[off]
        for c, ranks in variants.items():
            if c == chunk or c.volume == 0:
                continue
            others = sorted(r for v, rs in variants.items() if v != c for r in rs)
            out.append(
                Problem(
                    fqn=fqn,
                    kind="dedup_loss",
                    ranks=tuple(ranks),
                    region=c,
                    severity="error" if errs else "silent",
                    message=f"{fqn}: torch {tv}'s compute_local_shape_and_global_offset gives "
                    f"{ranks_text(ranks)} the chunk {c} and {ranks_text(others)} the chunk "
                    f"{chunk if chunk.volume else 'of size 0'} at the same offset "
                    f"{list(off)}; dedup_save_plans keys chunks by (fqn, offset) and writes "
                    f"rank {writer}'s, so {c} is never written"
                    + (
                        f" and the save fails validation ({_validation_quote(errs, errs, tv)})."
                        if errs
                        else "."
                    ),
                    fix="Use torch 2.8 or newer (empty shards at the dim's end, PyTorch PR "
                    "150862), or a mesh / placements that shard the dim evenly.",
                )
            )
    return out


def _lost_chunk_problems(save_result) -> list[Problem]:
    """The chunks a storage writer drops (``plan_save(..., storage="hf")``: several chunks of one
    fqn on one rank keep only the last), one problem per (fqn, rank)."""
    by: dict[tuple[str, int], list] = defaultdict(list)
    for lc in getattr(save_result, "lost", ()) or ():
        by[(lc.fqn, lc.rank)].append(lc)
    out = []
    for (fqn, r), lcs in by.items():
        lost = ", ".join(str(lc.chunk) for lc in lcs)
        out.append(
            Problem(
                fqn=fqn,
                kind="hf_lost_chunk",
                ranks=(r,),
                region=lcs[0].chunk,
                severity="silent",
                message=f"{fqn}: rank {r} holds {len(lcs) + 1} chunks of this tensor but torch's "
                f"HuggingFaceStorageWriter writes one entry per fqn in rank {r}'s file and keeps "
                f"the last ({lcs[0].kept}); {lost} {'is' if len(lcs) == 1 else 'are'} lost without "
                "an error and a load leaves those elements stale.",
                fix="Save with FileSystemWriter, or hold one chunk per rank (a DTensor rather than "
                "a ShardedTensor with several local shards).",
            )
        )
    return out


def _saved_chunk_problems(
    fqn,
    saved: TensorStorageMetadata,
    errs: list[str],
    writers: list[int],
    all_errs: list[str],
    tv: str = "2.13",
    *,
    memo: dict | None = None,
) -> list[Problem]:
    """Holes, overlaps and out-of-bounds chunks of a planned checkpoint; ``error`` where torch's
    validation (``errs``, its strings for this key) raises. Every validation string is quoted by
    some problem, also when the geometry finds nothing of its kind (torch's overlap predicate
    counts a zero-size chunk inside another; the fill check counts chunks past the end)."""
    by_kind = {
        k: [e for e in errs if k in e]
        for k in ("out of bounds chunk", "invalid fill", "overlapping chunks")
    }
    out = []

    def quote(sub: list[str]) -> str:
        return _validation_quote(sub, all_errs, tv)

    if by_kind["out of bounds chunk"]:
        outside = [i for i, c in enumerate(saved.chunks) if not c.within(saved.size)]
        out.append(
            Problem(
                fqn=fqn,
                kind="shape_mismatch",
                ranks=tuple(sorted({writers[i] for i in outside if i < len(writers)})),
                region=None,
                severity="error",
                message=f"{fqn}: saved chunks {list_text([str(saved.chunks[i]) for i in outside], 4)} reach past "
                f"the tensor's size {list(saved.size)} (every chunk inside the tensor); torch raises: "
                + quote(by_kind["out of bounds chunk"]),
                fix="Check the local shapes against the global one (a ShardedTensor's shard metadata, a "
                "DTensor built with from_local and a wrong shape).",
            )
        )
    cov = _coverage_of(fqn, saved, memo)
    fill, over = by_kind["invalid fill"], by_kind["overlapping chunks"]
    live = [] if cov.tiles else [c for c in saved.chunks if not c.is_empty]
    holes = _hole_problems(
        fqn, None, live, cov, "error" if fill else "silent", quote(fill) if fill else ""
    )
    overlaps = _overlap_problems(fqn, None, saved.chunks, cov, "error" if over else "silent")
    if fill and not holes:
        holes = [
            Problem(
                fqn=fqn,
                kind="uncovered",
                ranks=(),
                region=None,
                severity="error",
                message=f"{fqn}: the saved chunks' volumes do not add up to the tensor's "
                f"{math.prod(saved.size)} elements although they leave no hole (chunks past "
                f"the end or overlapping count twice); torch raises: {quote(fill)}",
                fix="Make every element belong to exactly one chunk inside the tensor.",
            )
        ]
    if over and not overlaps:
        overlaps = [
            Problem(
                fqn=fqn,
                kind="overlap",
                ranks=(),
                region=None,
                severity="error",
                message=f"{fqn}: torch's overlap predicate counts a zero-size chunk strictly "
                "inside another as overlapping (no data overlaps); torch raises: "
                f"{quote(over)}",
                fix="Drop the zero-size chunk or move it to the end of the dim (DTensor "
                "puts empty shards at offset = dim size).",
            )
        ]
    elif over:
        overlaps = [
            replace(p, message=f"{p.message} torch raises: {quote(over)}") for p in overlaps
        ]
    return out + holes + overlaps
