"""Checkpoint formats on disk: readers that turn a directory's files into workbench records.

Readers here never import torch and never run code from the files they read: ``dcp`` is the
allow-list ``.metadata`` unpickler of a plain DCP directory.
"""

from __future__ import annotations

from .dcp import load_metadata, metadata_path

__all__ = ["load_metadata", "metadata_path"]
