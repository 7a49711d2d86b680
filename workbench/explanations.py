"""Explanations of torch's DCP error strings: what a pasted message means and what to check.

`explain(text, metadata=None, target=None)` recognises torch 2.13's messages (size mismatch,
missing key, plan validation, ``CheckpointException`` dumps, ...) and returns an `Explanation`;
given the checkpoint and the target it also names the chunks, ranks and fixes. Imports the core
(helpers, planning, diagnosis) and `sources`; never torch.
"""

from __future__ import annotations

import difflib
import math
import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .diagnosis import rank_suffix
from .errors import MetadataError, PlanError
from .formatting import list_text, ranks_text
from .planner_helpers import PARTIAL_MESSAGE, VALIDATION_ERROR
from .records import TensorStorageMetadata
from .sharding import Layout, RankValue, bytes_layout, format_placements
from .sources import as_record, as_value
from .versions import resolve_torch_version, semantics

__all__ = ["explain", "Explanation", "ReportedFailure", "REPORTED_FAILURES"]


@dataclass(frozen=True, slots=True)
class ReportedFailure:
    """A public report of a reshard failure that the workbench reproduces (real gloo runs,
    ``tools/record_reported_failures.py`` -> ``tests/data/reported/<key>/``) and predicts from the
    checkpoint's files and the target (notebook ``09_reported_failures``). ``error`` matches
    torch's message in the report (None when the failure is silent); ``saved_key``, when set, a
    key the checkpoint must hold for the report to apply (the message alone cannot tell it from
    another cause; `explain` checks it when given the metadata, and prefers such reports);
    ``torch_version`` is set when only some versions behave so (the version it was reported on
    and reproduced with)."""

    key: str
    url: str
    title: str
    error: re.Pattern | None
    diagnosis: str
    fix: str
    torch_version: str | None = None
    saved_key: re.Pattern | None = None


# a key of an optimizer's per-parameter state (get_optimizer_state_dict's flattened names)
_OPTIM_STATE = r"\S*\bstate\.\S+\.(?:step|exp_avg|exp_avg_sq|max_exp_avg_sq)\b"

REPORTED_FAILURES: tuple[ReportedFailure, ...] = (
    ReportedFailure(
        key="torchtitan-811",
        url="https://github.com/pytorch/torchtitan/issues/811",
        title="FSDP checkpoints don't load when run is restarted with greater world size",
        error=re.compile(r"Missing key in checkpoint state_dict: dataloader\.dp_rank_\d+"),
        diagnosis="the data loader's state is saved per data-parallel rank "
        "(dataloader.dp_rank_<r>); the new ranks ask for keys no old rank saved",
        fix="Exclude the data loader from loading (torchtitan: checkpoint.exclude_from_loading = "
        "['dataloader']) or keep the data-parallel degree; the model and optimizer reshard.",
    ),
    ReportedFailure(
        key="torchtitan-816",
        url="https://github.com/pytorch/torchtitan/pull/816",
        title="dp_degree mismatch during dataloader loading (save dp:4 -> load dp:2)",
        error=None,
        diagnosis="loading on fewer data-parallel ranks succeeds without a word: the saved "
        "dataloader.dp_rank_2 / dp_rank_3 are never read, their data positions are lost",
        fix="Store the data-parallel degree with the loader state and refuse a mismatch "
        "(torchtitan's fix), or re-split the loader state yourself.",
    ),
    ReportedFailure(
        key="pytorch-148252",
        url="https://github.com/pytorch/pytorch/issues/148252",
        title="Can't pass strict=False when loading a distributed checkpoint (missing keys)",
        # any other key: the per-rank and optimizer-state reports above and below are specific
        error=re.compile(
            r"Missing key in checkpoint state_dict: (?!dataloader\.dp_rank_)(?!"
            + _OPTIM_STATE
            + r")[^\s{]+"
        ),
        diagnosis="the target model has parameters the checkpoint never saved; dcp.load is "
        "strict by default and every rank raises on its first missing key",
        fix="dcp.load(..., planner=DefaultLoadPlanner(allow_partial_load=True)) and initialise "
        "the new parameters yourself.",
    ),
    ReportedFailure(
        key="nemo-automodel-2779",
        url="https://github.com/NVIDIA-NeMo/Automodel/pull/2779",
        title="fix(checkpoint): materialize lazy Adam optimizer state (resume fails on "
        "optim.state.<param>.step)",
        error=re.compile(r"Missing key in checkpoint state_dict: " + _OPTIM_STATE),
        diagnosis="AdamW creates a parameter's state at its first step: a parameter without a "
        "gradient before the save (frozen, an unused expert, a branch not taken) has no "
        "optim.state.<param>.* in the checkpoint, and the resumed optimizer, whose state is "
        "materialised for every parameter, asks for it; each rank raises on its first such key",
        fix="Materialise the state before saving (NeMo's fix: zero step / exp_avg / exp_avg_sq "
        "for parameters without state), or load with DefaultLoadPlanner(allow_partial_load=True) "
        "so those parameters' state starts at zero.",
    ),
    ReportedFailure(
        key="rlinf-655",
        url="https://github.com/RLinf/RLinf/issues/655",
        title="Cannot resume from checkpoints (Size mismatch: saved [257152, 2048], current "
        "[131661824])",
        error=re.compile(
            r"Size mismatch between saved torch\.Size\(\[\d+, \d+\]\) and current: "
            r"torch\.Size\(\[\d+\]\)"
        ),
        diagnosis="the checkpoint holds the tensor's global 2-d shape; the state dict given to "
        "dcp.load holds a flattened local shard (an FSDP1 flat parameter: numel / world size), so "
        "every rank fails the size check",
        fix="Give dcp.load the global view: get_model_state_dict / set_model_state_dict "
        "(torch.distributed.checkpoint.state_dict) or FSDP1's SHARDED_STATE_DICT, never the flat "
        "local parameter.",
    ),
    ReportedFailure(
        key="pytorch-126604",
        url="https://github.com/pytorch/pytorch/issues/126604",
        title="Distributed Checkpoint doesn't verify shapes are correct",
        error=None,
        diagnosis="torch 2.4 / 2.5 have no size check: a [8, 4] checkpoint loads into an [8, 3] "
        "target without a word, each rank getting the saved rows' first 3 columns (the 4th is "
        "dropped); 2.6 raises 'Size mismatch' (PyTorch PR 141571)",
        fix="Upgrade to torch 2.6+, or compare the target's sizes with the checkpoint's "
        "(workbench.plan_load(..., torch_version='2.5') names them) before loading.",
        torch_version="2.5",
    ),
    ReportedFailure(
        key="pytorch-187138",
        url="https://github.com/pytorch/pytorch/issues/187138",
        title="[DCP] load silently casts checkpoint tensors to the template dtype",
        error=None,
        diagnosis="dcp.load checks sizes but not dtypes: a float32 checkpoint read into a bfloat16 "
        "template is copy_()'d and rounded (x.25 -> x for values from 128 on) without a warning",
        fix="Load into the saved dtype (the checkpoint's TensorProperties.dtype) and cast "
        "explicitly afterwards if the narrower dtype is intended.",
    ),
    ReportedFailure(
        key="kempnerforge-115",
        url="https://github.com/KempnerInstitute/KempnerForge/pull/115",
        title="Fix optimizer momentum reset on checkpoint resume",
        error=None,
        diagnosis="optimizer.state_dict() round-tripped through DCP: on resume the optimizer is "
        "freshly built and has no exp_avg / exp_avg_sq yet (AdamW creates them at the first "
        "step), so the state dict given to dcp.load asks only for param_groups and the saved "
        "moments are never read; momentum restarts from zero without a word",
        fix="Use get_optimizer_state_dict / set_optimizer_state_dict "
        "(torch.distributed.checkpoint.state_dict): the getter materialises the state in its "
        "sharded layout, so dcp.load fills it.",
    ),
    ReportedFailure(
        key="rlinf-1570",
        url="https://github.com/RLinf/RLinf/pull/1570",
        title="fix(fsdp): preserve per-rank RNG in DCP checkpoints (each rank's RNG under the "
        "same keys)",
        error=None,
        diagnosis="each rank saves its own RNG state under the same keys (rng.torch, a tensor; "
        "rng.numpy, an object); dcp.save keeps one rank's copy of each, possibly from different "
        "ranks, and on resume every rank loads those copies: the other ranks' streams are lost "
        "without a word",
        fix="Save per-rank state under per-rank keys (rng.rank<r>.*), or gather it into one "
        "entry that holds every rank's state (RLinf's fix), and restore the current rank's.",
    ),
    ReportedFailure(
        key="torchtitan-2622",
        url="https://github.com/pytorch/torchtitan/issues/2622",
        title="DCP loading fails when torch.compile target is nested inside CheckpointWrapper",
        error=re.compile(r"Missing key in checkpoint state_dict: [^\s{]+"),
        saved_key=re.compile(r"(?:^|\.)_orig_mod\."),
        diagnosis="activation checkpointing wrapped around a compiled module makes "
        "get_model_state_dict keep torch.compile's '_orig_mod.' segment (layer._orig_mod.weight); "
        "a model without that wrapping asks for layer.weight, which the checkpoint never saved",
        fix="Apply torch.compile outside activation checkpointing (Compile(AC(module))), or load "
        "under the saved names (strip or add the '_orig_mod.' segment in the state dict given to "
        "dcp.load).",
    ),
    ReportedFailure(
        key="transformers-48802",
        url="https://github.com/huggingface/transformers/pull/48802",
        title="FSDP x TP Saving / Loading (_StridedShard produces overlapping checkpoint metadata)",
        # 2.12+ append the reasons to the message
        error=re.compile(r"Failed to validate global plan: .*has overlapping chunks", re.S),
        diagnosis="FSDP2 on a tensor-parallel DTensor keeps placements [_StridedShard(0, tp), "
        "Shard(0)]; with rows not divisible by dp * tp a rank's rows are not one contiguous "
        "block, DCP records one box per rank anyway, the boxes overlap and the save fails "
        "validation",
        fix="Redistribute _StridedShard parameters to plain Shard before saving (transformers' "
        "fix) or pad the sharded dim to a multiple of dp * tp.",
    ),
    ReportedFailure(
        key="pytorch-150862",
        url="https://github.com/pytorch/pytorch/pull/150862",
        title="[DTensor] Fix empty shard global-offset calculation (DCP failed to save)",
        # 2.4 - 2.11 raise the bare text (the reasons go to the log)
        error=re.compile(r"Failed to validate global plan(?!:)"),
        diagnosis="through torch 2.7 an empty DTensor shard's offset was another rank's: a (6,) "
        "tensor on a (2, 4) mesh [Shard(0), Shard(0)] puts empty ranks 3 and 7 at offset 3, where "
        "rank 4's real row starts; dedup keys chunks by (fqn, offset), keeps the empty one and "
        "drops rank 4's, and the global plan fails validation (invalid fill 6 vs 5)",
        fix="Upgrade to torch 2.8+ (empty shards sit at offset = the dim size), or choose sizes "
        "divisible by the mesh so no shard is empty.",
        torch_version="2.6",
    ),
)


@dataclass(frozen=True)
class Explanation:
    """What a torch DCP error string means: ``pattern`` (which message was recognised), ``cause``,
    ``what_to_check`` (steps), the ``fqn`` named, the parsed ``numbers``, for a
    ``CheckpointException`` dump the failing ``ranks`` and the ``inner`` explanations, and the
    public ``reports`` (`REPORTED_FAILURES`) whose error text this is."""

    pattern: str
    cause: str
    what_to_check: tuple[str, ...] = ()
    fqn: str | None = None
    numbers: dict = field(default_factory=dict)
    ranks: tuple[int, ...] = ()
    inner: tuple[Explanation, ...] = ()
    text: str = ""
    torch_version: str | None = None
    reports: tuple[ReportedFailure, ...] = ()

    def __str__(self) -> str:
        head = f"{self.fqn}: " if self.fqn else ""
        lines = [f"{head}{self.cause} [{self.pattern}]"]
        lines += [f"  - {w}" for w in self.what_to_check]
        lines += [f"  - reported: {r.url} ({r.title}); fix: {r.fix}" for r in self.reports]
        for e in self.inner:
            lines += ["  " + ln for ln in str(e).splitlines()]
        return "\n".join(lines)


_SIZE = r"torch\.Size\(\[(?P<{}>[^\]]*)\]\)"
_MDI = (
    r"MetadataIndex\(fqn='(?P<fqn>[^']*)', offset=(?:torch\.Size\(\[(?P<offset>[^\]]*)\]\)|"
    r"None), index=(?P<index>\w+)\)"
)
_MESSAGE_PATTERNS = [
    (
        "checkpoint_exception",
        re.compile(r"CheckpointException ranks:dict_keys\(\[(?P<ranks>[^\]]*)\]\)"),
    ),
    # 2.12+ append the error strings; 2.4 - 2.11 raise the bare text and log the strings
    (
        "validate_global_plan",
        re.compile(r"Failed to validate global plan(?:: (?P<body>.*))?", re.S),
    ),
    ("missing_key", re.compile(r"Missing key in checkpoint state_dict: (?P<fqn>.+?)\.?$", re.M)),
    (
        "size_mismatch",
        re.compile(
            r"Size mismatch between saved "
            + _SIZE.format("saved")
            + r" and current: "
            + _SIZE.format("current")
            + r" for (?P<fqn>\S+)"
        ),
    ),
    (
        "read_size_mismatch",
        re.compile(
            r"req "
            + _MDI
            + r" mismatch sizes,? "
            + _SIZE.format("dst")
            + r" vs "
            + _SIZE.format("src")
        ),
    ),
    ("partial", re.compile(re.escape(PARTIAL_MESSAGE))),
    (
        "invalid_metadata",
        re.compile(
            r"Invalid checkpoint metadata for (?P<fqn>\S+), expected "
            r"BytesStorageMetadata but found (?P<found>.+)"
        ),
    ),
    (
        "unsupported_type",
        re.compile(
            r"Unsupported Type, expecting one of \[Tensor, DTensor, "
            r"ShardedTensor\] ?,but got (?P<type>.+)"
        ),
    ),
    # KeyError(MetadataIndex(...)) as printed in a traceback, as repr, or the bare key (str(e))
    ("missing_storage", re.compile(r"(?:KeyError:? *\(?)?" + _MDI)),
]


def _ints_of(text: str | None) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"-?\d+", text or ""))


def _explain_inputs(metadata, target) -> tuple[Any, dict[str, Layout]]:
    """`explain`'s metadata (torch's converted) and target as ``{fqn: Layout}``: real tensors
    described by their layout, other values as bytes entries; anything else refused."""
    metadata = as_record(metadata)
    if metadata is not None and not hasattr(metadata, "state_dict_metadata"):
        raise MetadataError(
            None,
            f"metadata is a {type(metadata).__name__}",
            "a DCP Metadata or None",
            "Read it with workbench.load_metadata(path).",
            value_type=type(metadata),
        )
    if target is None:
        return metadata, {}
    if not isinstance(target, Mapping):
        raise PlanError(
            None,
            f"target is a {type(target).__name__}",
            "a dict {fqn: Layout} or a state dict",
            "Pass the layouts (or the state dict) dcp.load was given.",
            value_type=type(target),
        )
    layouts: dict[str, Layout | None] = {}
    for fqn, v in target.items():
        if not isinstance(v, Layout):
            v = as_value(v)
            v = v.layout if isinstance(v, RankValue) else None
        layouts[fqn] = v
    ws = next((lay.world_size for lay in layouts.values() if lay is not None), 1)
    return metadata, {f: lay if lay is not None else bytes_layout(ws) for f, lay in layouts.items()}


def explain(
    text: str,
    metadata=None,
    target: Mapping[str, Any] | None = None,
    *,
    torch_version: str | None = None,
) -> Explanation:
    """Explain a torch DCP error string (or a whole ``CheckpointException`` dump) as raised by
    ``torch_version`` (default `versions.default_torch_version`; kept in ``.torch_version``).
    A message that version never raises (the size check before 2.6) says so.

    With the checkpoint's ``metadata`` and the ``target`` (``{fqn: Layout}``), point at the tensor
    and the numbers: a current size that is the saved size divided by the world size (a local
    shard was passed), a transposed shape, a vocabulary padding, per-rank keys, Partial targets.
    Unknown text gives pattern ``"unknown"``. torch's own ``Metadata`` and a real state dict
    (Tensors, DTensors, ShardedTensors, other values as bytes) are accepted too.
    """
    tv = resolve_torch_version(torch_version)
    text = str(text)
    metadata, target = _explain_inputs(metadata, target)
    for name, rx in _MESSAGE_PATTERNS:
        m = rx.search(text)
        if m:
            e = _EXPLAINERS[name](m, text, metadata, target or {})
            if name == "size_mismatch" and not semantics(tv).size_mismatch_raises:
                e = replace(
                    e,
                    what_to_check=(
                        f"torch {tv} never raises this (the size check arrived in 2.6): the "
                        "job ran a newer torch than assumed.",
                        *e.what_to_check,
                    ),
                )
            return replace(e, torch_version=tv, reports=_reports(text, metadata))
    return Explanation(
        pattern="unknown",
        cause="This is not one of the DCP error messages the workbench knows.",
        what_to_check=("Paste the last line of the traceback (the exception message).",),
        text=text,
        torch_version=tv,
    )


def _reports(text: str, metadata) -> tuple[ReportedFailure, ...]:
    """The reports whose error text this is; a report whose ``saved_key`` the checkpoint's keys
    confirm is more specific than those matched on the text alone, and replaces them."""
    keys = list(getattr(metadata, "state_dict_metadata", None) or ())
    found = [r for r in REPORTED_FAILURES if r.error and r.error.search(text)]
    confirmed = [r for r in found if r.saved_key and any(r.saved_key.search(k) for k in keys)]
    return tuple(confirmed or [r for r in found if r.saved_key is None])


def _x_checkpoint_exception(m, text, md, target):
    ranks = _ints_of(m["ranks"])
    blocks = re.split(r"Traceback \(most recent call last\): \(RANK (\d+)\)\n", text)
    seen: dict[str, Explanation] = {}
    by_rank: dict[str, list[int]] = defaultdict(list)
    for r, body in zip(blocks[1::2], blocks[2::2]):
        # Frame lines are indented ("  File ...", "    code"); the exception's own lines are not.
        # Skipping the code lines matters: they quote torch's f-strings ("...state_dict: {fqn}.").
        msg = "\n".join(ln for ln in body.splitlines() if ln and not ln[0].isspace())
        inner = explain(msg, md, target)
        key = f"{inner.pattern}:{inner.fqn}"
        seen.setdefault(key, inner)
        by_rank[key].append(int(r))
    inner = tuple(seen.values())
    parts = "; ".join(
        f"{ranks_text(by_rank[k])}: {e.pattern}" + (f" ({e.fqn})" if e.fqn else "")
        for k, e in seen.items()
    )
    return Explanation(
        pattern="checkpoint_exception",
        cause=f"dcp.save / dcp.load failed on {ranks_text(ranks)} ({parts or 'no traceback given'}). "
        "CheckpointException derives from BaseException, so 'except Exception' does not catch it; "
        "errors of the global step are reported by rank 0 and re-raised on every rank.",
        what_to_check=(
            "Read the inner error of the lowest failing rank first; the others usually repeat it.",
        ),
        fqn=inner[0].fqn if len(inner) == 1 else None,
        numbers={"ranks": ranks},
        ranks=ranks,
        inner=inner,
        text=text,
    )


def _x_validate(m, text, md, target):
    body = m["body"] or ""
    found = [(k.group("fqn"), k.group("what")) for k in VALIDATION_ERROR.finditer(body)]
    truncated = body.rstrip().endswith("(truncated)")
    fqns = list(dict.fromkeys(f for f, _ in found))
    checks = []
    for fqn in fqns:
        lay = target.get(fqn)
        if lay is not None and lay.misdescribed_ranks:
            checks.append(
                f"{fqn}: the save layout [{format_placements(lay.placements)}] on mesh "
                f"{lay.mesh_shape} is a _StridedShard whose ranks "
                f"{list_text(lay.misdescribed_ranks)}"
                " hold rows their DCP boxes do not describe; the boxes cannot tile the tensor."
            )
    whats = {w for _, w in found}
    if "overlapping chunks" in whats:
        checks.append(
            "Overlapping chunks: a _StridedShard placement with an uneven size (FSDP2 + TP: "
            "[_StridedShard(0, tp), Shard(0)] with rows not divisible by dp*tp), ShardedTensor "
            "shards that overlap, or ranks saving different-size chunks at one offset."
        )
    if "invalid fill" in whats:
        checks.append(
            "Invalid fill: the saved chunks do not add up to the tensor (a rank missing "
            "from the save, ShardedTensor shards missing, a mesh smaller than the world)."
        )
    if "out of bounds chunk" in whats:
        checks.append(
            "Out of bounds: a chunk extends past the tensor's size (a local shape "
            "inconsistent with the global one)."
        )
    if truncated:
        checks.append(
            "The message is truncated at 500 characters: plan the save with "
            "workbench.plan_save to list every error."
        )
    if not body:
        checks.append(
            "torch 2.4 - 2.11 raise this bare text: the reasons were logged as warnings "
            "(logger torch.distributed.checkpoint.default_planner); plan the save with "
            "workbench.plan_save(..., torch_version=...) to list them."
        )
    return Explanation(
        pattern="validate_global_plan",
        cause=f"The coordinator's _validate_global_plan rejected the save plan ({len(found)} error(s) on "
        f"{list_text(fqns, 4)}): every tensor's saved chunks must lie inside it, not overlap, and "
        "(with more than one rank) fill it exactly. Nothing was written.",
        what_to_check=tuple(checks),
        fqn=fqns[0] if len(fqns) == 1 else None,
        numbers={"errors": found, "truncated": truncated},
        text=text,
    )


def _x_missing(m, text, md, target):
    fqn = m["fqn"]
    checks, numbers = [], {}
    saved = list(md.state_dict_metadata) if md is not None else []
    if saved:
        close = difflib.get_close_matches(fqn, saved, n=3, cutoff=0.6)
        stripped = [
            k
            for k in saved
            if k.endswith(fqn) or fqn.endswith(k) or _unwrapped(k) == _unwrapped(fqn)
        ]
        if stripped:
            checks.append(
                f"A saved key differs only by a prefix or a wrapper's segment: {stripped[0]!r} (DDP "
                "'module.', torch.compile '_orig_mod.', activation checkpointing, or a "
                "{'model': ...} nesting)."
            )
        elif close:
            checks.append(f"Closest saved keys: {', '.join(map(repr, close))}.")
        rm = rank_suffix(fqn)
        if rm:
            fam = sorted(x[1] for x in map(rank_suffix, saved) if x and x[0] == rm[0])
            if fam:
                numbers["saved_ranks"] = fam
                checks.insert(
                    0,
                    f"Per-rank key: the checkpoint has {rm[0]}<r> for ranks "
                    f"{list_text(fam)} only; it was saved by {len(fam)} ranks and this "
                    f"world is larger (rank {rm[1]} did not exist). Re-split the per-rank "
                    "state for the new world size.",
                )
    checks.append(
        "Load with allow_partial_load=True to skip keys the checkpoint lacks (they keep "
        "their current values)."
    )
    return Explanation(
        pattern="missing_key",
        cause="A key of the state dict passed to dcp.load is not in the "
        "checkpoint (strict loading requires every requested key).",
        what_to_check=tuple(checks),
        fqn=fqn,
        numbers=numbers,
        text=text,
    )


def _unwrapped(fqn: str) -> str:
    """``fqn`` without the segments wrappers insert (torch.compile's ``_orig_mod``, DDP's
    ``module``, activation checkpointing's ``_checkpoint_wrapped_module``)."""
    return ".".join(
        s for s in fqn.split(".") if s not in ("_orig_mod", "module", "_checkpoint_wrapped_module")
    )


def _x_size(m, text, md, target):
    fqn = m["fqn"]
    saved, current = _ints_of(m["saved"]), _ints_of(m["current"])
    ns, nc = math.prod(saved), math.prod(current)
    numbers = {"saved": saved, "current": current, "saved_numel": ns, "current_numel": nc}
    checks = []
    lay = target.get(fqn)
    ws = lay.world_size if lay is not None else None
    if nc and ns % nc == 0 and ns != nc:
        k = ns // nc
        numbers["ratio"] = k
        which = f" = the world size {ws}" if ws == k else ""
        if len(current) == 1 and len(saved) > 1:
            checks.append(
                f"The current tensor is 1-d with numel {nc} = {ns} / {k}{which}: a flattened "
                "local shard (FSDP1 flat parameter or to_local().flatten()) was passed instead "
                "of the full / DTensor value."
            )
        else:
            dims = (
                [d for d, (a, b) in enumerate(zip(saved, current)) if a != b]
                if len(saved) == len(current)
                else []
            )
            checks.append(
                f"The current size is the saved size divided by {k}{which}"
                + (f" on dim {dims[0]}" if len(dims) == 1 else "")
                + ": a local shard (dtensor.to_local() or a per-rank slice) was passed where "
                "DCP needs the global DTensor; pass the DTensor itself."
            )
    elif len(saved) == 2 and tuple(reversed(saved)) == current:
        checks.append(
            f"The shapes are transposed ({saved[0]}x{saved[1]} vs {current[0]}x{current[1]}): "
            "Conv1D (HF GPT-2) weights are stored (in, out), nn.Linear weights (out, in); "
            "transpose when converting."
        )
    elif len(saved) == len(current) and sum(a != b for a, b in zip(saved, current)) == 1:
        d = next(d for d, (a, b) in enumerate(zip(saved, current)) if a != b)
        a, b = saved[d], current[d]
        big = max(a, b)
        pad = next((p for p in (256, 128, 64, 32, 8) if big % p == 0 and abs(a - b) < p), None)
        numbers["dim"], numbers["difference"] = d, b - a
        if pad:
            checks.append(
                f"Dim {d} differs by {abs(a - b)} ({a} saved vs {b} current) and {big} is a "
                f"multiple of {pad}: a vocabulary padded to a multiple of {pad} on one side "
                "(e.g. GPT-2's 50257 vs nanoGPT's 50304). Pad or slice the embedding rows."
            )
        else:
            checks.append(
                f"Only dim {d} differs ({a} saved vs {b} current): a config difference "
                "(hidden / intermediate size, heads, vocab) between the saving and the "
                "loading model."
            )
    elif ns == nc:
        checks.append(
            f"Same number of elements ({ns}), different shape: the tensor was reshaped or "
            "fused (e.g. separate q/k/v vs fused qkv, or a flattened parameter)."
        )
    else:
        checks.append("The models differ (architecture or config): compare the configs.")
    if md is not None and fqn in md.state_dict_metadata:
        sm = md.state_dict_metadata[fqn]
        if isinstance(sm, TensorStorageMetadata) and tuple(sm.size) != saved:
            checks.append(
                f"The given metadata says {list(sm.size)}, not {list(saved)}: this error came "
                "from another checkpoint."
            )
    return Explanation(
        pattern="size_mismatch",
        cause=f"The checkpoint's global size {list(saved)} differs from the "
        f"size {list(current)} of the value passed to dcp.load (DCP reshards chunks of "
        "one global shape; it cannot change the shape).",
        what_to_check=tuple(checks),
        fqn=fqn,
        numbers=numbers,
        text=text,
    )


def _x_read_size(m, text, md, target):
    fqn = m["fqn"]
    dst, src = _ints_of(m["dst"]), _ints_of(m["src"])
    offset = _ints_of(m["offset"]) if m["offset"] is not None else None
    checks = [
        "The destination's local tensor is smaller than the chunk DCP computed for it: a DTensor whose "
        "real local shape differs from compute_local_shape_and_global_offset (FSDP2 + TP with "
        "uneven sizes: FSDP2 chunks right to left, DCP computes left to right), or a local tensor "
        "resized after planning.",
        "Or the saved file holds less data than .metadata claims (an edited or merged .metadata).",
    ]
    lay = target.get(fqn)
    if lay is not None and lay.misdescribed_ranks:
        checks.insert(
            0,
            f"The target layout [{format_placements(lay.placements)}] is a _StridedShard "
            f"whose ranks {list_text(lay.misdescribed_ranks)} are misdescribed.",
        )
    return Explanation(
        pattern="read_size_mismatch",
        cause=f"While reading saved chunk at offset {list(offset or ())}, the narrowed "
        "destination "
        f"has size {list(dst)} but the saved slice has size {list(src)} (the reader "
        "asserts they match before copy_).",
        what_to_check=tuple(checks),
        fqn=fqn,
        numbers={"dst": dst, "src": src, "offset": offset},
        text=text,
    )


def _x_partial(m, text, md, target):
    fqns = [f for f, lay in target.items() if lay.has_partial]
    return Explanation(
        pattern="partial",
        cause="A DTensor with a Partial placement (a pending sum / reduction) "
        "was saved; DCP saves only Shard / Replicate placements.",
        what_to_check=("Redistribute it to Replicate() or Shard() before dcp.save.",)
        + ((f"Partial entries in the target: {list_text(fqns, 5)}.",) if fqns else ()),
        fqn=fqns[0] if len(fqns) == 1 else None,
        text=text,
    )


def _x_invalid(m, text, md, target):
    fqn = m["fqn"]
    lay = target.get(fqn)
    checks = []
    if lay is not None and lay.has_partial:
        checks.append(
            f"The target DTensor has placements [{format_placements(lay.placements)}]: a "
            "Partial placement. _create_read_items catches the Partial error and re-raises "
            "this unrelated message; redistribute the target to Replicate / Shard."
        )
    elif lay is not None and lay.is_bytes:
        checks.append("The target value is not a tensor although the checkpoint saved a tensor.")
    else:
        checks += [
            "The value passed for this key is not a Tensor / DTensor / ShardedTensor (an int, "
            "a list, or None: _init_state_dict turns unknown types into None).",
            "Or it is a DTensor with a Partial placement: this message hides the Partial "
            "error; redistribute it to Replicate / Shard.",
        ]
    return Explanation(
        pattern="invalid_metadata",
        cause="The checkpoint has a tensor under this key, but the value "
        "to load into cannot take tensor chunks.",
        what_to_check=tuple(checks),
        fqn=fqn,
        numbers={"found": m["found"].strip()},
        text=text,
    )


def _x_unsupported(m, text, md, target):
    return Explanation(
        pattern="unsupported_type",
        cause=f"_create_chunk_list got a {m['type'].strip()} where it needs "
        "a Tensor, DTensor or ShardedTensor.",
        what_to_check=(
            "Pass tensors for tensor keys of the checkpoint; wrap other state in a "
            "Stateful object or save it under another key.",
        ),
        fqn=None,
        numbers={"type": m["type"].strip()},
        text=text,
    )


def _x_storage(m, text, md, target):
    fqn = m["fqn"]
    offset = _ints_of(m["offset"]) if m["offset"] is not None else None
    checks = [
        "The .metadata lists this chunk but its storage_data has no entry for it: the "
        ".metadata was edited, merged from two saves, or comes from another checkpoint."
    ]
    if md is not None and md.storage_data is not None:
        have = [k for k in md.storage_data if getattr(k, "fqn", None) == fqn]
        checks.append(
            f"storage_data holds {len(have)} entries for {fqn}, at offsets "
            f"{list_text([list(k.offset) if k.offset is not None else None for k in have], 6)}."
        )
    return Explanation(
        pattern="missing_storage",
        cause=f"The reader looked up the saved chunk of {fqn} at offset "
        f"{list(offset) if offset is not None else None} in storage_data and found "
        "nothing (KeyError).",
        what_to_check=tuple(checks),
        fqn=fqn,
        numbers={"offset": offset},
        text=text,
    )


_EXPLAINERS = {
    "checkpoint_exception": _x_checkpoint_exception,
    "validate_global_plan": _x_validate,
    "missing_key": _x_missing,
    "size_mismatch": _x_size,
    "read_size_mismatch": _x_read_size,
    "partial": _x_partial,
    "invalid_metadata": _x_invalid,
    "unsupported_type": _x_unsupported,
    "missing_storage": _x_storage,
}
