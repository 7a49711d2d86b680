"""The explorers (workbench.widgets) headless: CheckpointExplorer on a checkpoint directory torch
wrote (its reads equal torch's), ReshardExplorer keeping its result on bad input, and the plots
and tables they show.
"""

from __future__ import annotations

import pickle

import torch
from torch.distributed.checkpoint import metadata as TM
from torch.distributed.checkpoint import planner_helpers as TH
from torch_support import torch_tensor_md

import workbench as wb
from workbench.torch_bridge.convert import from_torch


def test_checkpoint_explorer_on_a_directory(tmp_path):
    from workbench import widgets

    tmd = TM.Metadata(
        {
            "w": torch_tensor_md((8, 6), [((0, 0), (4, 6)), ((4, 0), (4, 6))]),
            "step": TM.BytesStorageMetadata(),
        }
    )
    with open(tmp_path / ".metadata", "wb") as f:
        pickle.dump(tmd, f)
    c = widgets.CheckpointExplorer(
        tmp_path, {"w": wb.dtensor_layout((8, 6), (4,), "S(1)"), "step": wb.bytes_layout(4)}
    )
    assert c.result is not None and c.message.value == ""
    # rank 2 of S(1) on 4 ranks wants [0:8, 4:6]; state-dict order: w's reads, then step's
    assert c.plan.load.plans[2].items == [
        from_torch(x)
        for x in TH.create_read_items_for_chunk_list(
            "w",
            tmd.state_dict_metadata["w"],
            [TM.ChunkStorageMetadata(torch.Size([0, 4]), torch.Size([8, 2]))],
        )
    ] + [
        wb.ReadItem(
            wb.LoadItemType.BYTE_IO,
            wb.MetadataIndex("step"),
            (0,),
            wb.MetadataIndex("step"),
            (0,),
            (0,),
        )
    ]
    import matplotlib.pyplot as plt

    plt.close("all")


def test_plots_tables_widgets_headless():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from workbench import plots, tables, widgets

    lay = wb.dtensor_layout((8, 6), (2, 2), "S(0), S(1)")
    out = plots.plot_layout(lay)
    assert isinstance(out, (Axes, Figure))
    fig, ax = plt.subplots()
    assert plots.plot_layout(lay, ax=ax) is ax
    save = wb.plan_save({"w": lay})
    load = wb.plan_load(save.metadata, {"w": wb.dtensor_layout((8, 6), (4,), "S(1)")})
    assert isinstance(plots.plot_reshard(save.metadata, load, "w", 1), (Axes, Figure))
    plt.close("all")
    df = tables.layout_chunks_table(lay)
    assert len(df) == 4
    assert len(tables.read_items_table(load, "w", rank=1)) == len(load.plans[1].items)
    assert len(tables.checkpoint_chunks_table(save.metadata)) == 4
    assert tables.problems_table(load.problems).shape[0] == 0
    r = widgets.ReshardExplorer()
    good = r.result
    assert good is not None and r.message.value == ""
    r.load_placements.value = "S(5)"  # bad input: message in the panel, result kept
    assert r.result is good and "S(5)" in r.message.value
    c = widgets.CheckpointExplorer(save.metadata, {"w": wb.dtensor_layout((8, 6), (4,), "S(1)")})
    assert c.result is not None
    plt.close("all")
