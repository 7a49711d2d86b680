"""Training programs written the way users write them, for the capture tests, the notebook and
the benchmark: a torchtitan-like Llama with torchtitan's tensor-parallel plan, an MoE with
expert-parallel experts, a Hugging Face ``transformers`` Llama built from a config (no weights,
nothing fetched), and ``build_*`` functions that create their own mesh with ``init_device_mesh``
and parallelise with ``fully_shard`` / ``parallelize_module``.

Every ``build_*`` takes ``device`` ("meta" for capture) and ``index_values``: build on the CPU and
fill every parameter with its flat global index + 0.25 before parallelising, so that a real gloo
run (`program_runs`) reads the indices each rank really holds from its local values.
"""

from __future__ import annotations

import os

import torch
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import Replicate, Shard, distribute_tensor
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

os.environ["HF_HUB_OFFLINE"] = "1"  # the transformers model is built from a config in code

TINY = dict(dim=16, n_layers=2, n_heads=2, n_kv_heads=1, vocab=13, hidden=24)


# ----------------------------------------------------------------------------- models
class Attention(nn.Module):
    def __init__(self, dim, n_heads, n_kv_heads):
        super().__init__()
        head = dim // n_heads
        self.wq = nn.Linear(dim, n_heads * head, bias=False)
        self.wk = nn.Linear(dim, n_kv_heads * head, bias=False)
        self.wv = nn.Linear(dim, n_kv_heads * head, bias=False)
        self.wo = nn.Linear(n_heads * head, dim, bias=False)


class FeedForward(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x):
        return self.w2(nn.functional.silu(self.w1(x)) * self.w3(x))


class GroupedExperts(nn.Module):
    """Experts as 3-D parameters, expert dim first (grouped GEMM), as torchtitan keeps them."""

    def __init__(self, dim, hidden, n_experts):
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(n_experts, hidden, dim))
        self.w2 = nn.Parameter(torch.empty(n_experts, dim, hidden))
        self.w3 = nn.Parameter(torch.empty(n_experts, hidden, dim))
        for p in self.parameters():
            nn.init.normal_(p, std=0.02)


class MoE(nn.Module):
    def __init__(self, dim, hidden, n_experts):
        super().__init__()
        self.router = nn.Linear(dim, n_experts, bias=False)
        self.experts = GroupedExperts(dim, hidden, n_experts)


class Block(nn.Module):
    def __init__(self, dim, n_heads, n_kv_heads, hidden, n_experts=0):
        super().__init__()
        self.attention_norm = nn.RMSNorm(dim)
        self.attention = Attention(dim, n_heads, n_kv_heads)
        self.ffn_norm = nn.RMSNorm(dim)
        if n_experts:
            self.moe = MoE(dim, hidden, n_experts)
        else:
            self.feed_forward = FeedForward(dim, hidden)

    def forward(self, x):
        # attention reduced to its projections: enough for a real backward and optimizer step
        a = self.attention
        h = x + a.wo(a.wq(self.attention_norm(x)))
        return h + self.feed_forward(self.ffn_norm(h))


class Llama(nn.Module):
    """torchtitan's Llama module tree (tok_embeddings, layers as a ModuleDict, norm, output)."""

    def __init__(
        self, dim, n_layers, n_heads, n_kv_heads, vocab, hidden, n_experts=0, layer_ids=None
    ):
        super().__init__()
        ids = range(n_layers) if layer_ids is None else layer_ids
        self.tok_embeddings = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleDict(
            {str(i): Block(dim, n_heads, n_kv_heads, hidden, n_experts) for i in ids}
        )
        self.norm = nn.RMSNorm(dim)
        self.output = nn.Linear(dim, vocab, bias=False)

    def forward(self, tokens):
        h = self.tok_embeddings(tokens)
        for layer in self.layers.values():
            h = layer(h)
        return self.output(self.norm(h))


def index_values(model: nn.Module) -> nn.Module:
    """Every parameter holds its flat global index + 0.25 (a real run reads indices back)."""
    with torch.no_grad():
        for p in model.parameters():
            idx = torch.arange(p.numel(), dtype=torch.float64).reshape(p.shape) + 0.25
            p.copy_(idx.to(p.dtype))
    return model


def _make(cls, device, index, **kw):
    with torch.device("cpu" if index else device):
        model = cls(**kw)
    return index_values(model) if index else model


# ----------------------------------------------------------------------------- parallelisms
def tp_plan_llama(model: Llama, tp_mesh, *, sequence_parallel=True):
    """torchtitan's tensor-parallel plan: rowwise embedding, colwise q/k/v/w1/w3 and output,
    rowwise wo/w2, sequence-parallel norms."""
    sp = SequenceParallel() if sequence_parallel else None
    top = {
        "tok_embeddings": RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1)),
        "output": ColwiseParallel(input_layouts=Shard(1), output_layouts=Replicate()),
    }
    if sp is not None:
        top["norm"] = SequenceParallel()
    parallelize_module(model, tp_mesh, top)
    for block in model.layers.values():
        plan = {
            "attention": PrepareModuleInput(
                input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)
            ),
            "attention.wq": ColwiseParallel(),
            "attention.wk": ColwiseParallel(),
            "attention.wv": ColwiseParallel(),
            "attention.wo": RowwiseParallel(output_layouts=Shard(1)),
        }
        if hasattr(block, "feed_forward"):
            plan.update(
                {
                    "feed_forward.w1": ColwiseParallel(),
                    "feed_forward.w2": RowwiseParallel(output_layouts=Shard(1)),
                    "feed_forward.w3": ColwiseParallel(),
                }
            )
        if sp is not None:
            plan.update({"attention_norm": SequenceParallel(), "ffn_norm": SequenceParallel()})
        parallelize_module(block, tp_mesh, plan)
    return model


def fsdp(model: Llama, mesh):
    for block in model.layers.values():
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


# ----------------------------------------------------------------------------- builds
def build_fsdp(device="meta", index=False, world=4, **sizes):
    """FSDP2 on a 1-D mesh of the whole world."""
    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("dp",))
    return fsdp(_make(Llama, device, index, **{**TINY, **sizes}), mesh["dp"])


def build_tp(device="meta", index=False, world=2, **sizes):
    """parallelize_module only: colwise / rowwise / sequence parallel on a 1-D tp mesh."""
    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("tp",))
    return tp_plan_llama(_make(Llama, device, index, **{**TINY, **sizes}), mesh["tp"])


def build_hsdp(device="meta", index=False, replicate=2, shard=2, **sizes):
    """HSDP: replicate x shard mesh, fully_shard on both dims."""
    mesh = init_device_mesh("cpu", (replicate, shard), mesh_dim_names=("replicate", "shard"))
    return fsdp(_make(Llama, device, index, **{**TINY, **sizes}), mesh)


def build_fsdp_tp(device="meta", index=False, dp=3, tp=2, **sizes):
    """FSDP2 + TP on a (dp, tp) mesh: TP first, then fully_shard over dp (``_StridedShard``)."""
    mesh = init_device_mesh("cpu", (dp, tp), mesh_dim_names=("dp", "tp"))
    model = tp_plan_llama(_make(Llama, device, index, **{**TINY, **sizes}), mesh["tp"])
    return fsdp(model, mesh["dp"])


def build_pipeline(device="meta", index=False, pp=2, dp=2, **sizes):
    """Pipeline stages on submeshes: stage s (ranks s*dp .. s*dp+dp-1) keeps its layers
    (torchtitan keeps their original names), the first stage the embedding, the last the norm
    and output; each stage fully_shards over its own dp submesh. Also per-DP-rank data loader
    state, as a bytes entry per rank."""
    mesh = init_device_mesh("cpu", (pp, dp), mesh_dim_names=("pp", "dp"))
    stage, dp_rank = mesh.get_coordinate()
    kw = {**TINY, **sizes}
    per = kw["n_layers"] // pp
    model = _make(Llama, device, index, **kw, layer_ids=range(stage * per, stage * per + per))
    if stage != 0:
        model.tok_embeddings = None
    if stage != pp - 1:
        model.norm = model.output = None
    fsdp(model, mesh["dp"])
    return {"model": model, "dataloader": {f"dp_rank_{dp_rank}": {"position": 17 * dp_rank}}}


def build_moe(device="meta", index=False, dp=2, ep=2, n_experts=6, **sizes):
    """An MoE with expert parallelism: each expert tensor Shard(0) (expert dim) over the ep dim
    of a (dp, ep) mesh, then fully_shard over dp (experts included: FSDP2 + EP)."""
    mesh = init_device_mesh("cpu", (dp, ep), mesh_dim_names=("dp", "ep"))
    model = _make(Llama, device, index, **{**TINY, **sizes}, n_experts=n_experts)
    for block in model.layers.values():
        ex = block.moe.experts
        for name, p in list(ex.named_parameters()):
            dt = distribute_tensor(p.data, mesh["ep"], [Shard(0)], src_data_rank=0)
            setattr(ex, name, nn.Parameter(dt))
    return fsdp(model, mesh["dp"])


def hf_config(**kw):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=13,
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=False,
        **kw,
    )


def build_hf(device="meta", index=False, world=2):
    """A Hugging Face transformers LlamaForCausalLM built from a config written here (no
    weights, nothing from a hub), each decoder layer and the root fully_shard-ed."""
    from transformers import LlamaForCausalLM

    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("dp",))
    model = _make(LlamaForCausalLM, device, index, config=hf_config())
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh["dp"])
    fully_shard(model, mesh=mesh["dp"])
    return model


def build_adamw(device="cpu", index=False, world=2, **sizes):
    """FSDP2 + AdamW after one real optimizer step (forward, backward, step on the CPU):
    returns (model, optimizer), saved as get_state_dict gives them."""
    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("dp",))
    model = fsdp(_make(Llama, "cpu", index, **{**TINY, **sizes}), mesh["dp"])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tokens = torch.arange(8).reshape(2, 4) % TINY["vocab"]
    model(tokens).float().pow(2).mean().backward()
    opt.step()
    opt.zero_grad()
    return model, opt


# ----------------------------------------------------------------------------- checks
def full_held(layout, rank) -> dict[int, list[int]]:
    """Every dim's held global indices (unsharded dims in full), from a workbench layout."""
    held = layout.held_indices(rank)
    return {d: list(held.get(d, range(n))) for d, n in enumerate(layout.shape)}


def target_keys(target, rank) -> list[str]:
    """The keys ``rank`` holds in a captured target, in its order."""
    return [
        k
        for k, lay in target.items()
        if lay.chunks(rank) or (lay.kind == "dtensor" and lay.coordinate(rank) is not None)
    ]


class PredictedError(Exception):
    """torch's reader would raise on this read (narrow past the end, or 'mismatch sizes')."""


def predict_load(load, target, rank, fqn, fill=-1.0):
    """What torch's FileSystemReader leaves in ``rank``'s local tensor of ``fqn`` when it
    applies ``load`` (`plan_load` of a checkpoint whose every element is its flat index + 0.25)
    to a local tensor of the data the rank really holds, filled with ``fill``:
    ``narrow_tensor_by_index`` narrows a dim only when the read is shorter than the local
    tensor, then the sizes must match ('mismatch sizes') and the saved region is copied."""
    import math

    import numpy as np

    lay = target[fqn]
    counts = tuple(len(v) for v in full_held(lay, rank).values())
    local = np.full(counts, fill, dtype=np.float64)
    g = (np.arange(math.prod(lay.shape), dtype=np.float64) + 0.25).reshape(lay.shape)
    g = g.astype(np.dtype(lay.dtype)).astype(np.float64)
    chunks = load.metadata.state_dict_metadata[fqn].chunks
    for item in load.plans[rank].items:
        if item.dest_index.fqn != fqn:
            continue
        saved = chunks[item.storage_index.index]
        src = g[
            tuple(
                slice(o + s, o + s + n)
                for o, s, n in zip(saved.offsets, item.storage_offsets, item.lengths)
            )
        ]
        where = []
        for d, (off, n) in enumerate(zip(item.dest_offsets, item.lengths)):
            if n < local.shape[d]:
                if off + n > local.shape[d]:
                    raise PredictedError(f"{fqn}: narrow past the end on rank {rank}")
                where.append(slice(off, off + n))
            else:
                where.append(slice(None))
        if local[tuple(where)].shape != src.shape:
            raise PredictedError(f"{fqn}: mismatch sizes on rank {rank}")
        local[tuple(where)] = src
    return local


def fsdp_checkpoint_layouts(target, world=4):
    """The same keys as ``target`` as a ``world``-rank FSDP job saves them (Shard(0))."""
    from workbench import bytes_layout, dtensor_layout, tensor_layout

    out = {}
    for k, lay in target.items():
        if lay.kind == "bytes":
            out[k] = bytes_layout(world)
        elif lay.ndim == 0:
            out[k] = tensor_layout((), world, lay.dtype)
        else:
            out[k] = dtensor_layout(lay.shape, (world,), "S(0)", lay.dtype, world)
    return out
