"""Which torch's DCP semantics the workbench computes: the supported versions, the default (the
torch installed beside the workbench, read WITHOUT importing it) and one frozen record of the
behaviours that differ between torch 2.4 and 2.15.

A torch newer than the newest recorded version is never refused (the package sets no upper bound
on torch, so installing it never downgrades one): planning assumes the newest recorded semantics
and says so once per process (`NewerTorchWarning`, `assumed_version_note` for headers). Naming an
unrecorded version explicitly (``torch_version="2.16"``) is an error: nothing was recorded for it.

Every flag names the torch code that shows it; each was measured by diffing the versions' sources
and is proved by ``tests/test_torch_versions.py`` against what each version's own code computed
(``tools/record_torch_versions.py`` -> ``tests/data/torch-<X.Y>/``).

Imports errors only (stdlib otherwise); never torch.
"""

from __future__ import annotations

import functools
import importlib.metadata
import re
import warnings
from dataclasses import dataclass

from .errors import WorkbenchError

__all__ = [
    "NEWEST_TORCH_VERSION",
    "NewerTorchWarning",
    "SUPPORTED_TORCH_VERSIONS",
    "TorchSemantics",
    "TorchVersionError",
    "assumed_version_note",
    "default_torch_version",
    "installed_torch_version",
    "require_torch",
    "resolve_torch_version",
    "semantics",
    "version_key",
]

SUPPORTED_TORCH_VERSIONS: tuple[str, ...] = tuple(f"2.{m}" for m in range(4, 16))
NEWEST_TORCH_VERSION = SUPPORTED_TORCH_VERSIONS[-1]


class TorchVersionError(WorkbenchError):
    """A torch version the workbench has no semantics for."""


class NewerTorchWarning(UserWarning):
    """The installed torch is newer than every recorded version: its newest known semantics are
    assumed (issued once per process)."""


def version_key(v: str) -> tuple[int, int]:
    """``"2.10"`` -> ``(2, 10)`` (numeric order: 2.9 < 2.10)."""
    major, minor = v.split(".")[:2]
    return int(major), int(minor)


def _major_minor(text: str) -> str | None:
    m = re.match(r"^\s*(\d+)\.(\d+)(?:[.+\-a-z0-9]*)\s*$", str(text))
    return f"{int(m[1])}.{int(m[2])}" if m else None


@functools.cache  # reading dist-info costs milliseconds; every planning call asks for it
def installed_torch_version() -> str | None:
    """The installed torch's ``major.minor`` from its distribution metadata (torch is NOT
    imported), or None when torch is not installed. Read once per process."""
    try:
        return _major_minor(importlib.metadata.version("torch"))
    except importlib.metadata.PackageNotFoundError:
        return None


def _is_newer(v: str | None) -> bool:
    return v is not None and version_key(v) > version_key(NEWEST_TORCH_VERSION)


def assumed_version_note() -> str | None:
    """One line for headers and reports when the installed torch is newer than the newest
    recorded version (the semantics assumed for it), else None."""
    v = installed_torch_version()
    if not _is_newer(v):
        return None
    return (
        f"torch {v} is installed, newer than the newest version the workbench has recorded: "
        f"planning assumes torch {NEWEST_TORCH_VERSION}'s DCP semantics (re-record with "
        "tools/record_torch_versions.py to check them)"
    )


_warned_newer = False


def default_torch_version() -> str:
    """The installed torch's version when it is supported, else the newest supported one. A
    newer installed torch gets the newest supported semantics and one `NewerTorchWarning` per
    process naming the version assumed."""
    global _warned_newer
    v = installed_torch_version()
    if v in SUPPORTED_TORCH_VERSIONS:
        return v
    if _is_newer(v) and not _warned_newer:
        _warned_newer = True
        warnings.warn(assumed_version_note(), NewerTorchWarning, stacklevel=3)
    return NEWEST_TORCH_VERSION


def resolve_torch_version(v: str | None = None) -> str:
    """``None`` -> `default_torch_version`; ``"2.10"``, ``"2.10.0"``, ``"2.10.0+cpu"`` ->
    ``"2.10"``; anything else raises `TorchVersionError`."""
    if v is None:
        return default_torch_version()
    mm = _major_minor(v) if isinstance(v, str) else None
    if mm not in SUPPORTED_TORCH_VERSIONS:
        newer = mm is not None and _is_newer(mm)
        raise TorchVersionError(
            None,
            f"torch version {v!r} is "
            + ("newer than every recorded version" if newer else "not supported"),
            f"a recorded version: {', '.join(SUPPORTED_TORCH_VERSIONS)}",
            (
                f"Leave torch_version unset to assume {NEWEST_TORCH_VERSION}'s semantics (with a "
                "warning), or record it with tools/record_torch_versions.py (README, "
                "'Torch versions')."
                if newer
                else f"Give a version from {SUPPORTED_TORCH_VERSIONS[0]} to "
                f"{NEWEST_TORCH_VERSION}, e.g. torch_version='2.13' (--torch 2.13)."
            ),
            torch_version=v,
        )
    return mm


@dataclass(frozen=True, slots=True)
class TorchSemantics:
    """The DCP behaviours of one torch version that the workbench mirrors.

    read_item_order
        ``"nested"`` (2.4 - 2.10): ``create_read_items_for_chunk_list`` loops ``for local_idx:
        for storage_idx:`` in list order ("naive quadratic algo"); ``"sweep"`` (2.11+, PR
        #169115): locals by start on the sweep dim, then active saved chunks by (end, index).
    validation_overlap
        ``"pairwise"`` (2.4 - 2.9): ``_validate_global_plan`` checks chunk i against every later
        chunk j (``value.chunks[chunk_idx + 1:]``), message ``i j``; ``"sweep"`` (2.10+): sweep
        line on the first dim of largest global size, message ``current other``.
    validation_fill_single_plan
        True (2.4 - 2.8): the volume (fill) check runs for every save; 2.9+ only when
        ``len(global_plan) > 1``.
    validation_returns_errors
        False (2.4 - 2.11): ``_validate_global_plan`` returns a bool and *logs* its findings
        (multi-line texts for bounds and fill); ``create_global_plan`` raises ``ValueError("Failed
        to validate global plan")``. True (2.12+): it returns the one-line error strings and the
        ValueError carries them joined by ``"; "``, cut at 500 characters.
    size_mismatch_raises
        True (2.6+): ``create_default_local_load_plan`` raises ``Size mismatch between saved ...``;
        2.4 / 2.5 plan read items against the wrong shape without a word.
    missing_key_raises
        ``Missing key in checkpoint state_dict`` when strict: every supported version.
    bytes_on_every_rank
        ``create_default_local_save_plan`` plans non-tensor values on every rank (dedup keeps
        one): every supported version (2.4+).
    save_to_lowest_rank
        ``dedup_save_plans(all_plans, save_to_lowest_rank)`` exists: every supported version;
        its load-balanced default gives the same writers in all of them (2.8 rewrote it).
    plan_caching
        2.7+: ``_compare_save_plans`` / ``_merge_delta_local_plans`` (``_contains_usable_plan``
        from 2.8) and ``DefaultSavePlanner(enable_plan_caching=...)``.
    init_state_dict_nones
        2.5+: ``_init_state_dict`` walks with ``_iterate_state_dict``, which turns unknown leaf
        types into None; 2.4 used ``tree_map_only_`` (non-tensor leaves untouched).
    checkpointable_tensor
        2.14+: ``protocol.CheckpointableTensor`` (plain tensors carrying ``global_shape`` and
        several chunks per rank); the size check uses their global shape.
    tensor_strides
        2.15+: ``TensorProperties.strides`` (the local tensor's stride), pickled as a 6-tuple.
    strided_shard
        2.5+: DTensor's ``_StridedShard`` placement exists (FSDP2 + TP).
    dtensor_maths
        Which ``compute_local_shape_and_global_offset`` (named by the first version that has
        it): ``"2.4"`` (2.4 - 2.7: nested offsets replaced-or-added, an empty shard at the LOCAL
        dim size, ``_StridedShard`` by shard-index strides), ``"2.8"`` (2.8, 2.9:
        ``_StridedShard`` reordered into plain shards, an empty shard at the global dim size),
        ``"2.10"`` (2.10+: the held global indices walked left to right, PR #150490 /
        #168146).
    """

    version: str
    read_item_order: str
    validation_overlap: str
    validation_fill_single_plan: bool
    validation_returns_errors: bool
    size_mismatch_raises: bool
    missing_key_raises: bool
    bytes_on_every_rank: bool
    save_to_lowest_rank: bool
    plan_caching: bool
    init_state_dict_nones: bool
    checkpointable_tensor: bool
    tensor_strides: bool
    strided_shard: bool
    dtensor_maths: str


def semantics(torch_version: str | None = None) -> TorchSemantics:
    """The `TorchSemantics` of a version (None: `default_torch_version`)."""
    return _semantics(resolve_torch_version(torch_version))


@functools.cache
def _semantics(v: str) -> TorchSemantics:
    minor = version_key(v)[1]
    return TorchSemantics(
        version=v,
        read_item_order="nested" if minor <= 10 else "sweep",
        validation_overlap="pairwise" if minor <= 9 else "sweep",
        validation_fill_single_plan=minor <= 8,
        validation_returns_errors=minor >= 12,
        size_mismatch_raises=minor >= 6,
        missing_key_raises=True,
        bytes_on_every_rank=True,
        save_to_lowest_rank=True,
        plan_caching=minor >= 7,
        init_state_dict_nones=minor >= 5,
        checkpointable_tensor=minor >= 14,
        tensor_strides=minor >= 15,
        strided_shard=minor >= 5,
        dtensor_maths="2.4" if minor <= 7 else "2.8" if minor <= 9 else "2.10",
    )


# The oldest torch each torch_bridge feature runs on: DTensor's public package
# (torch.distributed.tensor, with _StridedShard) arrived in 2.5; 2.4 has torch.distributed._tensor.
BRIDGE_MINIMUM = "2.5"


def require_torch(feature: str, minimum: str = BRIDGE_MINIMUM) -> str:
    """The installed torch's version when it is at least ``minimum``; else a `TorchVersionError`
    naming ``feature`` and the version it needs (torch is not imported)."""
    v = installed_torch_version()
    if v is not None and version_key(v) >= version_key(minimum):
        return v
    have = f"the installed torch is {v}" if v else "torch is not installed"
    raise TorchVersionError(
        None,
        f"{feature} needs torch {minimum} or newer; {have}",
        f"torch >= {minimum}",
        f"Install torch>={minimum} for it. Planning needs no torch: "
        f"plan_save / plan_load(..., torch_version='{v or NEWEST_TORCH_VERSION}').",
        feature=feature,
        installed=v,
    )
