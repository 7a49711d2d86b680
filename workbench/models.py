"""Model presets (state dicts of shapes and dtypes) and parallelism recipes (state dict ->
``{fqn: Layout}``), for planning whole models without building them.

A preset state dict is an ordered ``dict[fqn, (shape, dtype)]``; a non-tensor entry (lr scheduler,
a per-rank dataloader state) has shape ``()`` and dtype ``"bytes"``. Optimizer state follows
``torch.distributed.checkpoint.state_dict.get_state_dict`` flattened by DCP: the model under
``model.<fqn>``, then ``optim.state.<param fqn>.step`` (a 0-d float32 tensor),
``.exp_avg``, ``.exp_avg_sq`` per parameter, then ``optim.param_groups.0.<key>`` as bytes.
Recipes mirror what ``fully_shard`` (FSDP2, ``_fsdp_param.py``) and ``parallelize_module``
(``ColwiseParallel`` / ``RowwiseParallel``) give each parameter. Never imports torch:
`state_dict_from_module` reads a real module's ``state_dict()`` by its values' ``shape`` and
``dtype`` only.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Callable, Mapping

from .errors import LayoutError, PlanError
from .records import canonical_dtype
from .sharding import (
    Layout,
    Replicate,
    Shard,
    bytes_layout,
    dtensor_layout,
    fsdp2_tp_layout,
    mesh_coordinate,
    tensor_layout,
)

__all__ = [
    "PRESETS",
    "RECIPES",
    "MESH_DIMS",
    "SIZES",
    "TP_PLANS",
    "model_state_dict",
    "apply_recipe",
    "state_dict_from_module",
    "Entry",
]

Entry = tuple[tuple[int, ...], str]
BYTES = "bytes"

# AdamW's param_groups keys in torch 2.13, in the order get_state_dict flattens them.
_ADAMW_GROUP_KEYS = (
    "lr",
    "betas",
    "eps",
    "weight_decay",
    "amsgrad",
    "maximize",
    "foreach",
    "capturable",
    "differentiable",
    "fused",
    "decoupled_weight_decay",
    "params",
)


# ----------------------------------------------------------------------------- presets
def _llama(layers, hidden, ffn, kv_dim, vocab, dtype, experts=0):
    sd: dict[str, Entry] = {"embed_tokens.weight": ((vocab, hidden), dtype)}
    for i in range(layers):
        p = f"layers.{i}."
        sd[p + "self_attn.q_proj.weight"] = ((hidden, hidden), dtype)
        sd[p + "self_attn.k_proj.weight"] = ((kv_dim, hidden), dtype)
        sd[p + "self_attn.v_proj.weight"] = ((kv_dim, hidden), dtype)
        sd[p + "self_attn.o_proj.weight"] = ((hidden, hidden), dtype)
        if experts:
            # Grouped experts as one 3-D tensor each (expert dim first), as grouped-GEMM MoEs keep them.
            sd[p + "moe.router.weight"] = ((experts, hidden), dtype)
            sd[p + "moe.experts.w1"] = ((experts, ffn, hidden), dtype)
            sd[p + "moe.experts.w2"] = ((experts, hidden, ffn), dtype)
            sd[p + "moe.experts.w3"] = ((experts, ffn, hidden), dtype)
        else:
            sd[p + "mlp.gate_proj.weight"] = ((ffn, hidden), dtype)
            sd[p + "mlp.up_proj.weight"] = ((ffn, hidden), dtype)
            sd[p + "mlp.down_proj.weight"] = ((hidden, ffn), dtype)
        sd[p + "input_layernorm.weight"] = ((hidden,), dtype)
        sd[p + "post_attention_layernorm.weight"] = ((hidden,), dtype)
    sd["norm.weight"] = ((hidden,), dtype)
    sd["lm_head.weight"] = ((vocab, hidden), dtype)
    return sd


def _gpt2(layers, hidden, vocab, context, dtype):
    sd: dict[str, Entry] = {
        "transformer.wte.weight": ((vocab, hidden), dtype),
        "transformer.wpe.weight": ((context, hidden), dtype),
    }
    for i in range(layers):
        p = f"transformer.h.{i}."
        for name, shape in (
            ("ln_1.weight", (hidden,)),
            ("ln_1.bias", (hidden,)),
            ("attn.c_attn.weight", (3 * hidden, hidden)),
            ("attn.c_attn.bias", (3 * hidden,)),
            ("attn.c_proj.weight", (hidden, hidden)),
            ("attn.c_proj.bias", (hidden,)),
            ("ln_2.weight", (hidden,)),
            ("ln_2.bias", (hidden,)),
            ("mlp.c_fc.weight", (4 * hidden, hidden)),
            ("mlp.c_fc.bias", (4 * hidden,)),
            ("mlp.c_proj.weight", (hidden, 4 * hidden)),
            ("mlp.c_proj.bias", (hidden,)),
        ):
            sd[p + name] = (shape, dtype)
    sd["transformer.ln_f.weight"] = ((hidden,), dtype)
    sd["transformer.ln_f.bias"] = ((hidden,), dtype)
    sd["lm_head.weight"] = ((vocab, hidden), dtype)
    return sd


# Sizes: "70b" is DESIGN.md's reference (723 tensors); "tiny" / "small" are for tests and notebooks.
SIZES: dict[str, dict[str, dict]] = {
    "llama": {
        "tiny": dict(layers=2, hidden=16, ffn=48, kv_dim=8, vocab=40),
        "small": dict(layers=4, hidden=256, ffn=688, kv_dim=64, vocab=1000),
        "8b": dict(layers=32, hidden=4096, ffn=14336, kv_dim=1024, vocab=128256),
        "70b": dict(layers=80, hidden=8192, ffn=28672, kv_dim=1024, vocab=128256),
    },
    "moe": {
        "tiny": dict(layers=2, hidden=16, ffn=24, kv_dim=8, vocab=40, experts=4),
        "8x7b": dict(layers=32, hidden=4096, ffn=14336, kv_dim=1024, vocab=32000, experts=8),
    },
    "gpt2": {
        "tiny": dict(layers=2, hidden=16, vocab=50, context=32),
        "small": dict(layers=12, hidden=768, vocab=50257, context=1024),
        # nanoGPT pads the vocabulary to a multiple of 64: the classic shape-mismatch source.
        "small-padded": dict(layers=12, hidden=768, vocab=50304, context=1024),
    },
}

PRESETS: dict[str, Callable[..., dict[str, Entry]]] = {
    "llama": lambda layers, hidden, ffn, kv_dim, vocab, dtype="bfloat16": _llama(
        layers, hidden, ffn, kv_dim, vocab, dtype
    ),
    "moe": lambda layers, hidden, ffn, kv_dim, vocab, experts, dtype="bfloat16": _llama(
        layers, hidden, ffn, kv_dim, vocab, dtype, experts
    ),
    "gpt2": lambda layers, hidden, vocab, context, dtype="float32": _gpt2(
        layers, hidden, vocab, context, dtype
    ),
}


def model_state_dict(
    preset: str = "llama",
    size: str | None = "tiny",
    *,
    optimizer: bool = False,
    lr_scheduler: bool = False,
    dataloader_ranks: int = 0,
    **overrides,
) -> dict[str, Entry]:
    """The flattened state dict of a preset as ``{fqn: (shape, dtype)}``, in ``state_dict()``
    order.

    ``size`` names an entry of ``SIZES[preset]``; keyword ``overrides`` change single numbers
    (``layers=1``, ``vocab=50304``, ``dtype="float32"``) or give all of them with ``size=None``.
    With ``optimizer`` (AdamW), ``lr_scheduler`` or ``dataloader_ranks`` the layout is DCP's
    flattening of ``{"model": ..., "optim": ..., "lr_scheduler": ..., "dataloader": ...}``;
    ``dataloader_ranks=n`` adds ``dataloader.dp_rank_<r>`` for r < n (each held by one DP rank).
    """
    if preset not in PRESETS:
        raise PlanError(
            preset,
            f"unknown model preset {preset!r}",
            "one of " + ", ".join(PRESETS),
            "Pick a preset from workbench.models.PRESETS.",
        )
    sizes = SIZES[preset]
    if size is not None and size not in sizes:
        raise PlanError(
            preset,
            f"unknown size {size!r}",
            "one of " + ", ".join(sizes),
            "Pick a size from workbench.models.SIZES or pass the numbers.",
        )
    params = {**(sizes[size] if size is not None else {}), **overrides}
    if "dtype" in params:
        params["dtype"] = canonical_dtype(params["dtype"])
    try:
        model = PRESETS[preset](**params)
    except TypeError as e:
        raise PlanError(
            preset,
            f"size parameters {sorted(params)} do not fit the preset ({e})",
            "the keys of a SIZES entry",
            "Pass size=... or every number.",
        ) from None
    if not (optimizer or lr_scheduler or dataloader_ranks):
        return model
    sd = {f"model.{k}": v for k, v in model.items()}
    if optimizer:
        for k, (shape, dtype) in model.items():
            # AdamW keeps step as a 0-d float32 tensor and the moments in the parameter's dtype.
            sd[f"optim.state.{k}.step"] = ((), "float32")
            sd[f"optim.state.{k}.exp_avg"] = (shape, dtype)
            sd[f"optim.state.{k}.exp_avg_sq"] = (shape, dtype)
        for key in _ADAMW_GROUP_KEYS:
            sd[f"optim.param_groups.0.{key}"] = ((), BYTES)
    if lr_scheduler:
        sd["lr_scheduler"] = ((), BYTES)
    for r in range(dataloader_ranks):
        sd[f"dataloader.dp_rank_{r}"] = ((), BYTES)
    return sd


def state_dict_from_module(module) -> dict[str, Entry]:
    """``{fqn: (shape, dtype)}`` of a real ``torch.nn.Module`` (build it on the meta device:
    ``with torch.device("meta"): model = Model()``); follows ``module.state_dict()`` order,
    DTensor entries give their global shape. A state dict (a mapping) is taken as is."""
    if isinstance(module, Mapping):
        sd = module
    elif callable(getattr(module, "state_dict", None)):
        sd = module.state_dict()
    else:
        raise PlanError(
            None,
            f"{type(module).__name__} is neither a module nor a state dict",
            "a torch.nn.Module or its state_dict()",
            "Build the model on the meta device and pass it.",
            value_type=type(module),
        )
    out: dict[str, Entry] = {}
    for k, v in sd.items():
        if hasattr(v, "shape") and hasattr(v, "dtype"):
            out[k] = (tuple(int(s) for s in v.shape), canonical_dtype(v.dtype, k))
        else:
            out[k] = ((), BYTES)
    return out


# ----------------------------------------------------------------------------- TP plans
# parallelize_module plans by module-name pattern (fnmatch), as torchtitan writes them.
TP_PLANS: dict[str, dict[str, str]] = {
    "llama": {
        "embed_tokens": "rowwise",
        "layers.*.self_attn.q_proj": "colwise",
        "layers.*.self_attn.k_proj": "colwise",
        "layers.*.self_attn.v_proj": "colwise",
        "layers.*.self_attn.o_proj": "rowwise",
        "layers.*.mlp.gate_proj": "colwise",
        "layers.*.mlp.up_proj": "colwise",
        "layers.*.mlp.down_proj": "rowwise",
        "lm_head": "colwise",
    },
    "gpt2": {
        "transformer.wte": "rowwise",
        "transformer.h.*.attn.c_attn": "colwise",
        "transformer.h.*.attn.c_proj": "rowwise",
        "transformer.h.*.mlp.c_fc": "colwise",
        "transformer.h.*.mlp.c_proj": "rowwise",
        "lm_head": "colwise",
    },
}
TP_PLANS["moe"] = TP_PLANS["llama"]
_EMBEDDINGS = {"embed_tokens", "tok_embeddings", "wte", "wpe", "embedding", "embeddings"}
_OPTIM = re.compile(r"^optim\.state\.(?P<param>.+)\.(?:exp_avg|exp_avg_sq|step|momentum_buffer)$")
_DP_KEY = re.compile(r"^dataloader\.dp_rank_(\d+)$")


def _tp_shard_dim(param_fqn: str, ndim: int, tp_plan: dict[str, str]) -> int | None:
    """The tensor dim TP shards (ColwiseParallel / RowwiseParallel's rule), None if replicated.

    Linear: colwise -> weight and bias Shard(0); rowwise -> weight Shard(1), bias Replicate.
    Embedding: colwise -> Shard(1); rowwise -> Shard(0).
    """
    module, _, leaf = param_fqn.rpartition(".")
    for pattern, style in tp_plan.items():
        if fnmatch.fnmatchcase(module, pattern):
            if style not in ("colwise", "rowwise"):
                raise PlanError(
                    param_fqn,
                    f"TP style {style!r} for pattern {pattern!r} is not known",
                    "'colwise' or 'rowwise'",
                    "Use ColwiseParallel/RowwiseParallel names.",
                )
            embedding = module.rpartition(".")[2] in _EMBEDDINGS
            if embedding:
                return 1 if style == "colwise" else 0
            if style == "colwise":
                return 0
            return 1 if leaf == "weight" and ndim >= 2 else None
    return None


RECIPES: dict[str, str] = {
    "replicate": "plain tensors on every rank (DDP, or a single-rank save); mesh (world,)",
    "fsdp": "FSDP2 fully_shard: [Shard(0)] on mesh (dp,)",
    "hsdp": "FSDP2 with a replicate dim: [Replicate(), Shard(0)] on mesh (replicas, dp)",
    "tp": "parallelize_module colwise / rowwise by module pattern: [Shard(d)] on mesh (tp,); "
    "parameters outside the plan stay plain tensors",
    "fsdp2+tp": "FSDP2 + TP on mesh (dp, tp): [_StridedShard(0, tp), Shard(0)] for TP dim-0 params "
    "(FSDP2's real rows: torch.chunk of the TP-local rows over dp), "
    "[Shard(0), Shard(d)] otherwise, [Shard(0), Replicate()] for TP-replicated ones",
    "hsdp+tp": "as fsdp2+tp with a leading Replicate() on mesh (replicas, dp, tp)",
}
# Each recipe's mesh dims by name, in mesh order (the names the CLI's target specs use).
MESH_DIMS: dict[str, tuple[str, ...]] = {
    "replicate": ("world",),
    "fsdp": ("dp",),
    "hsdp": ("replicate", "dp"),
    "tp": ("tp",),
    "fsdp2+tp": ("dp", "tp"),
    "hsdp+tp": ("replicate", "dp", "tp"),
}


def _placements(recipe, mesh, tp_dim):
    """The DTensor placements of a parameter under ``recipe`` (``tp_dim``: the dim TP shards)."""
    if recipe == "fsdp":
        return (Shard(0),)
    if recipe == "hsdp":
        return (Replicate(), Shard(0))
    tp = Replicate() if tp_dim is None else Shard(tp_dim)
    if recipe == "tp":
        return (tp,)
    # FSDP2 + TP: parameters TP shards on dim 0 never get here (apply_recipe gives them
    # fsdp2_tp_layout's real rows); FSDP2 shards the others' dim 0 plainly. A TP-replicated
    # parameter is really a DTensor on the DP sub-mesh only ([Shard(0)]); on the full mesh
    # [Shard(0), Replicate()] gives every rank the same chunk, so DCP plans are identical.
    return (Shard(0), tp) if recipe == "fsdp2+tp" else (Replicate(), Shard(0), tp)


def apply_recipe(
    state_dict: dict[str, Entry],
    recipe: str,
    mesh_shape,
    *,
    world_size: int | None = None,
    tp_plan: dict[str, str] | str | None = None,
) -> dict[str, Layout]:
    """``{fqn: Layout}`` for a preset state dict parallelised by ``recipe`` (see `RECIPES`).

    ``mesh_shape`` is an int or a tuple whose length fits the recipe (ranks are row-major
    ``0..prod-1``). Parameters (and their optimizer moments, which follow them) become DTensors;
    0-d tensors (AdamW's ``step``) stay plain tensors on every rank; bytes entries are saved by
    every rank, except ``dataloader.dp_rank_<r>``, held by the ranks of DP coordinate r.
    ``tp_plan`` is a ``{module pattern: "colwise" | "rowwise"}`` dict or a `TP_PLANS` name
    (default: guessed from the keys).
    """
    if recipe not in RECIPES:
        raise PlanError(
            recipe,
            f"unknown recipe {recipe!r}",
            "one of " + ", ".join(RECIPES),
            "Pick a recipe from workbench.models.RECIPES.",
        )
    mesh = (int(mesh_shape),) if isinstance(mesh_shape, int) else tuple(int(m) for m in mesh_shape)
    if len(mesh) != len(MESH_DIMS[recipe]):
        raise LayoutError(
            recipe,
            f"mesh shape {mesh} has {len(mesh)} dims",
            f"{len(MESH_DIMS[recipe])} for recipe {recipe!r}: {RECIPES[recipe]}",
            "Give one size per mesh dim of the recipe.",
            mesh_shape=mesh,
        )
    n = math.prod(mesh)
    ws = n if world_size is None else int(world_size)
    if ws < n:
        raise LayoutError(
            recipe,
            f"world size {ws} is smaller than the mesh's {n} ranks",
            "world_size >= prod(mesh_shape)",
            "Pass a world size of at least the mesh's ranks, or None.",
            world_size=ws,
        )
    if isinstance(tp_plan, str) or tp_plan is None:
        name = tp_plan or _guess_family(state_dict)
        plan = TP_PLANS.get(name, {})
    else:
        plan = tp_plan
    # DP coordinate of every rank: the flattened mesh dims other than tp (dp for fsdp / fsdp2+tp,
    # (replicate, dp) for hsdp*, the whole world for replicate, none: rank 0 for tp).
    dp_dims = sum(d != "tp" for d in MESH_DIMS[recipe])
    out: dict[str, Layout] = {}
    for fqn, (shape, dtype) in state_dict.items():
        if dtype == BYTES:
            m = _DP_KEY.match(fqn)
            ranks = None
            if m:
                r = int(m[1])
                ranks = [k for k in range(n) if _dp_coord(k, mesh, dp_dims) == r]
            out[fqn] = bytes_layout(ws, ranks=ranks)
            continue
        if not shape or recipe == "replicate":
            out[fqn] = tensor_layout(shape, ws, dtype, fqn=fqn)
            continue
        param = _param_name(fqn)
        tp_dim = (
            _tp_shard_dim(param, len(shape), plan)
            if recipe in ("tp", "fsdp2+tp", "hsdp+tp")
            else None
        )
        if recipe == "tp" and tp_dim is None:
            # parallelize_module leaves parameters outside the plan as plain tensors
            out[fqn] = tensor_layout(shape, ws, dtype, fqn=fqn)
            continue
        if tp_dim == 0 and recipe != "tp":
            # FSDP2 shards the TP-local rows, not what [_StridedShard(0, tp), Shard(0)] describes
            out[fqn] = fsdp2_tp_layout(shape, mesh, dtype, ws, fqn=fqn)
            continue
        out[fqn] = dtensor_layout(
            shape, mesh, _placements(recipe, mesh, tp_dim), dtype, ws, fqn=fqn
        )
    return out


def _dp_coord(rank, mesh, dp_dims):
    """Row-major index of ``rank``'s coordinate over the first ``dp_dims`` mesh dims."""
    idx = 0
    for c, s in zip(mesh_coordinate(rank, mesh)[:dp_dims], mesh[:dp_dims]):
        idx = idx * s + c
    return idx


def _param_name(fqn: str) -> str:
    """The parameter fqn inside the model: strips DCP's ``model.`` nesting and optimizer suffixes."""
    m = _OPTIM.match(fqn)
    if m:
        return m["param"]
    return fqn[len("model.") :] if fqn.startswith("model.") else fqn


def _guess_family(state_dict) -> str:
    keys = " ".join(list(state_dict)[:8])
    if "transformer.wte" in keys:
        return "gpt2"
    return "llama"
