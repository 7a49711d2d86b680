"""Torch bridge: everything that touches real torch objects or real checkpoints.

Modules here import torch **inside functions only** (except where noted), so importing this
package stays cheap: ``convert`` (workbench records <-> torch records and objects), ``fake_pg``
(torch's own planners for every rank under the ``fake`` process group), ``runs`` (real
multi-process ``dcp.save`` / ``dcp.load`` over gloo), ``capture`` (a user's own ``build()``
under the fake process group as a target), ``program_runs`` (that ``build()`` on real gloo
processes).
"""

from __future__ import annotations

import importlib

_LAZY = {
    "verify_with_torch": "fake_pg",
    "torch_save_plans": "fake_pg",
    **{
        n: "convert"
        for n in ("to_torch", "from_torch", "layout_from_torch", "local_tensor_from_torch")
    },
    "torch_load_plans": "fake_pg",
    # (not `capture` itself: the module of that name would shadow it; workbench.capture is it)
    **{n: "capture" for n in ("CapturedTarget", "run_rank")},
    **{n: "program_runs" for n in ("ProgramStep", "ProgramRank", "run_program")},
    **{
        n: "runs"
        for n in (
            "run_save",
            "run_load",
            "run_steps",
            "make_checkpoint",
            "make_checkpoints",
            "load_scenarios",
            "SCENARIO_KINDS",
        )
    },
}


__all__ = list(_LAZY)


def __getattr__(name: str):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'workbench.torch_bridge' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value
