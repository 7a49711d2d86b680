"""``wb.load_metadata`` (the allow-list ``.metadata`` reader, workbench.formats.dcp) from the top
level: a pickle torch wrote reads as torch's Metadata converted; hostile or broken files raise the
house error and execute nothing.
"""

from __future__ import annotations

import pickle

import pytest
import torch
from support import house_form
from torch.distributed.checkpoint import metadata as TM
from torch_support import torch_tensor_md

import workbench as wb
from workbench.torch_bridge.convert import from_torch


def test_load_metadata_top_level_reads_torch_pickle(tmp_path):
    tmd = TM.Metadata(
        {
            "w": torch_tensor_md((8, 6), [((0, 0), (4, 6)), ((4, 0), (4, 6))], torch.bfloat16),
            "step": TM.BytesStorageMetadata(),
        }
    )
    with open(tmp_path / ".metadata", "wb") as f:
        pickle.dump(tmd, f)
    md = wb.load_metadata(tmp_path)
    assert isinstance(md, wb.Metadata)
    assert md.state_dict_metadata == from_torch(tmd).state_dict_metadata
    assert wb.load_metadata(tmp_path / ".metadata").state_dict_metadata == md.state_dict_metadata
    assert wb.load_metadata(str(tmp_path)).state_dict_metadata == md.state_dict_metadata


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize(
    "payload,cls",
    [
        (pickle.dumps(_Evil()), wb.UnsafeCheckpointError),
        (pickle.dumps(_Evil(), protocol=0), wb.UnsafeCheckpointError),
        (pickle.dumps(TM.Metadata({}))[:-5], wb.MetadataError),  # truncated
        (b"", wb.MetadataError),
    ],
)
def test_load_metadata_hostile_or_broken(tmp_path, capfd, payload, cls):
    (tmp_path / ".metadata").write_bytes(payload)
    with pytest.raises(cls) as e:
        wb.load_metadata(tmp_path)
    assert "pwned" not in capfd.readouterr().out
    house_form(e.value, str(tmp_path / ".metadata"))
