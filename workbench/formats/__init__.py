"""Checkpoint formats on disk: readers that turn a directory's files into workbench records.

Readers here never import torch and never run code from the files they read: ``dcp`` is the
allow-list ``.metadata`` unpickler of a plain DCP directory, ``megatron`` reads Megatron-Core
torch_dist checkpoints (its extra pickled records allowed by name), ``hf_safetensors`` reads
safetensors headers, ``detect`` recognises the format of a path. ``load_metadata`` reads any of
them.
"""

from __future__ import annotations

from .dcp import metadata_path
from .detect import FORMATS, FormatRead, detect_format, load_metadata, read_checkpoint

__all__ = [
    "load_metadata",
    "metadata_path",
    "FORMATS",
    "FormatRead",
    "detect_format",
    "read_checkpoint",
]
