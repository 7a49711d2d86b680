"""Widgets: the explorers, the chunk canvas and the plain functions behind them.

One module per part, so that a test or another front end loads only what it uses:

- `explore`: the plain functions and their results (`explore_reshard`, `plan_checkpoint`,
  `explore_checkpoint`, `step_read_order`); imports no ipywidgets;
- `scenes`: what the canvas draws, as numpy columns + JSON (`chunk_scene`, `model_scene`,
  `traffic_scene`, `bytes_scene`); imports no ipywidgets;
- `canvas`: `ChunkCanvas`, the anywidget (its ES module and CSS in ``static/``);
- `controls`: the ipywidgets plumbing every explorer shares;
- `reshard` (`ReshardExplorer`), `checkpoint` (`CheckpointExplorer`), `stepper`
  (`ReadOrderStepper`), `model` (`ModelExplorer`).

Names are resolved lazily (PEP 562): ``from workbench.widgets import explore_reshard`` loads
`explore` only, never ipywidgets.
"""

from __future__ import annotations

from importlib import import_module

__all__ = [
    "CLASSIC_RESHARDS",
    "DEFAULT_CLASSIC",
    "ReshardSpec",
    "ReshardResult",
    "CheckpointPlan",
    "CheckpointResult",
    "StepResult",
    "explore_reshard",
    "plan_checkpoint",
    "explore_checkpoint",
    "step_read_order",
    "ChunkCanvas",
    "ReshardExplorer",
    "CheckpointExplorer",
    "ReadOrderStepper",
    "ModelExplorer",
]

_WHERE = {
    "ChunkCanvas": "canvas",
    "ReshardExplorer": "reshard",
    "CheckpointExplorer": "checkpoint",
    "ReadOrderStepper": "stepper",
    "ModelExplorer": "model",
}


def __getattr__(name: str):
    if name in __all__:
        module = import_module(f"{__name__}.{_WHERE.get(name, 'explore')}")
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
