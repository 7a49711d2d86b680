"""Reference jobs of the scale benchmarks (bench_readers.py, bench_scale.py).

- ``flat(ranks)``: the Llama-70B-like state dict of DESIGN.md (723 tensors, bfloat16) saved
  ``Shard(0)`` on ``ranks`` ranks (1024 ranks: 740,340 chunks).
- ``realistic(stages, dp, tp)``: a Llama-405B-like state dict (126 layers, hidden 16384, FFN
  53248, 8 KV heads) under pipeline x FSDP x TP: stage s (of ``stages``) holds its layers on a
  ``(dp, tp)`` submesh of global ranks ``s*dp*tp ...``; column-parallel weights ``[S(0), S(0)]``,
  row-parallel ``[S(0), S(1)]``, norms ``[S(0), R]`` (PP16 x DP128 x TP8 = 16,384 ranks,
  937,600 chunks).
- ``torch_metadata_bytes(layouts)``: the ``.metadata`` torch 2.13's ``FileSystemWriter`` writes for
  a save of those layouts, built from torch's own records the way a real multi-process save
  assembles them: chunks in plan order, ``storage_data`` rank by rank (each rank's write results
  arrive through ``all_gather_object``, so their key strings are each rank's own objects: a new
  string per entry in the pickle, the file name shared within a rank), byte offsets per file.
"""

from __future__ import annotations

import pathlib
import pickle
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_plans import llama70b_shapes  # noqa: E402

from workbench.sharding import dtensor_layout  # noqa: E402

__all__ = ["flat", "realistic", "torch_metadata_bytes", "llama405b_shapes"]

V405, H405, KV405, FFN405, L405 = 128256, 16384, 1024, 53248, 126


def flat(ranks: int, placements: str = "S(0)", mesh=None) -> dict:
    mesh = mesh or (ranks,)
    return {
        k: dtensor_layout(s, mesh, placements if len(s) > 1 else "S(0)", "bfloat16")
        if len(mesh) == 1
        else dtensor_layout(s, mesh, placements if len(s) > 1 else "S(0), R", "bfloat16")
        for k, s in llama70b_shapes().items()
    }


def llama405b_shapes() -> dict[str, tuple[tuple[int, ...], str, int]]:
    """``{fqn: (shape, kind, layer)}``; kind: col / row / norm / embed / head; layer -1 / L."""
    out = {"model.embed_tokens.weight": ((V405, H405), "col", -1)}
    for i in range(L405):
        p = f"model.layers.{i}."
        out.update(
            {
                p + "self_attn.q_proj.weight": ((H405, H405), "col", i),
                p + "self_attn.k_proj.weight": ((KV405, H405), "col", i),
                p + "self_attn.v_proj.weight": ((KV405, H405), "col", i),
                p + "self_attn.o_proj.weight": ((H405, H405), "row", i),
                p + "mlp.gate_proj.weight": ((FFN405, H405), "col", i),
                p + "mlp.up_proj.weight": ((FFN405, H405), "col", i),
                p + "mlp.down_proj.weight": ((H405, FFN405), "row", i),
                p + "input_layernorm.weight": ((H405,), "norm", i),
                p + "post_attention_layernorm.weight": ((H405,), "norm", i),
            }
        )
    out["model.norm.weight"] = ((H405,), "norm", L405)
    out["lm_head.weight"] = ((V405, H405), "col", L405)
    return out


def realistic(stages: int, dp: int, tp: int) -> dict:
    per = dp * tp
    world = stages * per
    spec = {"col": "S(0), S(0)", "row": "S(0), S(1)", "norm": "S(0), R"}
    out = {}
    for fqn, (shape, kind, layer) in llama405b_shapes().items():
        stage = min(stages - 1, max(0, layer) * stages // L405) if layer < L405 else stages - 1
        ranks = range(stage * per, (stage + 1) * per)
        out[fqn] = dtensor_layout(
            shape, (dp, tp), spec[kind], "bfloat16", world, mesh_ranks=ranks, fqn=fqn
        )
    return out


def torch_metadata_bytes(layouts: dict) -> bytes:
    import torch
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import (
        ChunkStorageMetadata,
        Metadata,
        MetadataIndex,
        StorageMeta,
        TensorProperties,
        TensorStorageMetadata,
    )

    from workbench.planning import plan_save

    save = plan_save(layouts)
    sdm = {}
    per_rank: dict[int, list] = {}
    for fqn, md in save.metadata.state_dict_metadata.items():
        esize = md.properties.element_size
        chunks = []
        for i, (c, w) in enumerate(zip(md.chunks, save.writers[fqn])):
            chunks.append(ChunkStorageMetadata(torch.Size(c.offsets), torch.Size(c.sizes)))
            per_rank.setdefault(w, []).append((fqn, c, i, c.volume * esize))
        sdm[fqn] = TensorStorageMetadata(
            TensorProperties(dtype=torch.bfloat16), torch.Size(md.size), chunks
        )
    storage = {}
    for r in sorted(per_rank):
        path = f"__{r}_0.distcp"  # one object per rank's results
        own: dict[str, str] = {}
        offset = 0
        for fqn, c, i, nbytes in per_rank[r]:
            name = own.get(fqn)
            if name is None:  # the rank's own copy of the key string
                name = own[fqn] = fqn.encode().decode()
            storage[MetadataIndex(name, torch.Size(c.offsets), i)] = _StorageInfo(
                path, offset, nbytes
            )
            offset += nbytes
    md = Metadata(
        sdm,
        planner_data={fqn: (fqn,) for fqn in sdm},
        storage_data=storage,
        storage_meta=StorageMeta(checkpoint_id=pathlib.PosixPath("/ckpt"), save_id="bench"),
    )
    return pickle.dumps(md)
