"""Errors of the workbench: one base class, subclasses by what the user fixes.

Every message follows the house form
``<fqn>: <what is wrong, naming the item> <the values> (<the expectation>). <what to do>``
and the facts are also kept as attributes. Imports nothing but the standard library.
"""

from __future__ import annotations

__all__ = [
    "WorkbenchError",
    "ChunkError",
    "PlacementError",
    "LayoutError",
    "PlanError",
    "MetadataError",
    "UnsafeCheckpointError",
    "DtypeError",
    "InputLimitError",
    "CaptureError",
    "MissingExtraError",
    "missing_extra",
]

PACKAGE = "dcp-reshard-workbench"


class WorkbenchError(ValueError):
    """Bad input to the workbench. ``fqn`` names the tensor (or ``"<input>"``)."""

    def __init__(self, fqn: str | None, what: str, expectation: str = "", fix: str = "", **facts):
        self.fqn = fqn if fqn is not None else "<input>"
        self.what = what
        self.expectation = expectation
        self.fix = fix
        self.facts = facts
        for k, v in facts.items():
            setattr(self, k, v)
        msg = f"{self.fqn}: {what}"
        if expectation:
            msg += f" ({expectation})"
        msg += "."
        if fix:
            msg += f" {fix}"
        super().__init__(msg)

    def __reduce__(self):
        # rebuilt from its parts (not from the one message args holds): an error raised in
        # another process (a Dask worker, a real run's rank) unpickles as itself
        return (_rebuild, (type(self), self.fqn, self.what, self.expectation, self.fix, self.facts))


def _rebuild(cls, fqn, what, expectation, fix, facts):
    return cls(fqn, what, expectation, fix, **facts)


class ChunkError(WorkbenchError):
    """A chunk (offsets / sizes) is malformed."""


class PlacementError(WorkbenchError):
    """A placement, a placement list or a mesh is malformed or does not fit the tensor."""


class LayoutError(WorkbenchError):
    """A layout (who holds which chunk) is malformed."""


class PlanError(WorkbenchError):
    """A plan or a state dict cannot be planned."""


class MetadataError(WorkbenchError):
    """A checkpoint's metadata is missing, truncated or corrupt."""


class UnsafeCheckpointError(MetadataError):
    """A ``.metadata`` pickle asked for a global outside the allow-list; nothing was executed."""


class DtypeError(WorkbenchError):
    """An unknown dtype name."""


class InputLimitError(WorkbenchError):
    """An input file exceeds a reader's bounds (size, nesting, declared length, work); the reader
    stopped before allocating or computing beyond them."""


class CaptureError(WorkbenchError):
    """A user's ``build()`` could not be captured: it raised, hung, needs a GPU or real data, or
    gave something DCP cannot save. ``fqn`` names the function; ``rank`` the rank it failed on."""


class MissingExtraError(WorkbenchError, ImportError):
    """A face of the workbench needs a library that is not installed (the planning core, the
    readers and the CLI's inspect / plan / check / explain need numpy alone). Also an
    ``ImportError``, so ``except ImportError`` around an optional feature keeps working."""


def missing_extra(error: ImportError, extra: str, feature: str) -> MissingExtraError:
    """The one-line error for ``feature`` when importing it failed with ``error``: which library
    is missing and which extra of the package installs it."""
    library = getattr(error, "name", None) or str(error)
    return MissingExtraError(
        feature,
        f"needs {library}, which is not installed",
        f"the [{extra}] extra of {PACKAGE}",
        f"Install it: pip install '{PACKAGE}[{extra}]'",
        library=library,
        extra=extra,
    )
