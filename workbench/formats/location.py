"""Where a checkpoint's files are: a local directory or an fsspec URL (``s3://``, ``gs://``,
``az://``, ``hf://``, ``file://``), behind one small record the readers ask for bytes, byte
ranges, sizes and the listing.

A local `Location` reads through pathlib; a remote one through fsspec, imported only when a URL
is opened (the ``remote`` extra). Remote faults (no such bucket or key, access denied, timeouts,
throttling, an unreachable endpoint) become one `MetadataError` naming the URL.

Must not import torch; fsspec only lazily.
"""

from __future__ import annotations

import errno
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import MetadataError, missing_extra

__all__ = [
    "Location",
    "is_url",
    "open_location",
    "local_location",
    "remote_error",
    "storage_options_from",
]

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


def is_url(path) -> bool:
    """Whether ``path`` is an fsspec URL (``<protocol>://...``) rather than a local path."""
    return isinstance(path, str) and _URL.match(path) is not None


@dataclass(frozen=True, slots=True)
class Location:
    """A checkpoint directory: ``url`` names it in messages; ``fs`` is the fsspec filesystem
    (None for a local directory) and ``root`` the directory in that filesystem's own terms."""

    url: str
    root: str
    fs: Any = None

    def path_of(self, name: str) -> str:
        return (
            f"{self.root.rstrip('/')}/{name}"
            if self.fs is not None
            else str(Path(self.root) / name)
        )

    def url_of(self, name: str) -> str:
        return f"{self.url.rstrip('/')}/{name}"

    def read_bytes(self, name: str) -> bytes:
        """The whole file ``name``."""
        if self.fs is None:
            return (Path(self.root) / name).read_bytes()
        with _faults(self.url_of(name)):
            return self.fs.cat_file(self.path_of(name))

    def read_range(self, name: str, start: int, length: int) -> bytes:
        """Bytes ``start`` to ``start + length`` of ``name`` (one ranged request remotely)."""
        if self.fs is None:
            with open(Path(self.root) / name, "rb") as f:
                f.seek(start)
                return f.read(length)
        with _faults(self.url_of(name)):
            return self.fs.cat_file(self.path_of(name), start=start, end=start + length)

    def open(self, name: str):
        """``name`` as a binary file object; remotely each read is a ranged request (for
        formats that seek, such as a zip's directory at its end)."""
        if self.fs is None:
            return open(Path(self.root) / name, "rb")
        with _faults(self.url_of(name)):
            return self.fs.open(self.path_of(name), "rb")

    def is_dir(self, name: str) -> bool:
        """Whether ``name`` is a subdirectory."""
        if self.fs is None:
            return (Path(self.root) / name).is_dir()
        with _faults(self.url_of(name)):
            return bool(self.fs.isdir(self.path_of(name)))

    def list(self) -> dict[str, int]:
        """Every file directly in the directory -> its size in bytes (from the listing: no
        file is opened)."""
        if self.fs is None:
            d = Path(self.root)
            return {p.name: p.stat().st_size for p in sorted(d.iterdir()) if p.is_file()}
        with _faults(self.url):
            entries = self.fs.ls(self.root, detail=True)
        out = {}
        for e in entries:
            if e.get("type") == "file":
                out[e["name"].rstrip("/").rsplit("/", 1)[-1]] = int(e.get("size") or 0)
        return dict(sorted(out.items()))


def open_location(url: str, storage_options: dict | None = None) -> Location:
    """The `Location` of an fsspec URL, with ``storage_options`` passed to its filesystem
    (credentials, ``client_kwargs={"endpoint_url": ...}``, ...) as ``fsspec.url_to_fs`` takes
    them. Nothing is read yet."""
    try:
        import fsspec.core  # the remote extra: only when a URL is opened
    except ImportError as e:
        raise missing_extra(e, "remote", url) from None
    try:
        fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    except ImportError as e:  # fsspec without the protocol's backend (s3fs, gcsfs, adlfs...)
        raise missing_extra(e, "remote", url) from None
    except ValueError as e:  # an unknown protocol
        raise MetadataError(
            url,
            f"fsspec cannot open this URL: {e}",
            "a local directory or an fsspec URL such as s3://bucket/checkpoint",
            "Check the protocol, or install its fsspec backend.",
            path=url,
        ) from None
    return Location(url=url, root=root, fs=fs)


def local_location(path) -> Location:
    """The `Location` of a local directory."""
    p = Path(os.fspath(path))
    return Location(url=str(p), root=str(p))


class _faults:
    """Turns an fsspec / cloud SDK exception into one `remote_error` naming ``url``."""

    def __init__(self, url: str):
        self.url = url

    def __enter__(self):
        return self

    def __exit__(self, kind, e, tb):
        if e is None or not isinstance(e, Exception) or isinstance(e, MetadataError):
            return False
        raise remote_error(self.url, e) from None


def remote_error(url: str, e: BaseException) -> MetadataError:
    """One clear error for a failed remote read of ``url``: which fault, the library's words."""
    name = type(e).__name__
    text = f"{e}"
    words = f"{name}: {text}"[:300]
    low = f"{name} {text}".lower()
    if "nosuchbucket" in low or "bucket does not exist" in low or "specified bucket" in low:
        what, fix, reason = "no such bucket", "Check the bucket name and the account.", "no_bucket"
    elif isinstance(e, FileNotFoundError) or "nosuchkey" in low or "not found" in low:
        what, fix, reason = (
            "no such object",
            "Point at the directory dcp.save wrote (its .metadata must be there).",
            "not_found",
        )
    elif isinstance(e, PermissionError) or "accessdenied" in low or "forbidden" in low:
        what, fix, reason = (
            "access denied",
            "Check the credentials fsspec uses (environment, profile or storage options).",
            "denied",
        )
    elif (
        getattr(e, "errno", None) == errno.EBUSY  # s3fs's SlowDown / 503
        or any(w in low for w in ("throttl", "slowdown", "toomanyrequests", "request rate"))
    ):
        what, fix, reason = "the storage throttled the requests", "Retry later.", "throttled"
    elif isinstance(e, TimeoutError) or "timeout" in low or "timed out" in low:
        what, fix, reason = "the request timed out", "Check the network, or retry.", "timeout"
    elif "connect" in low or "endpoint" in low or "resolve" in low:
        what, fix, reason = (
            "cannot reach the storage endpoint",
            "Check the endpoint URL (storage option client_kwargs.endpoint_url) and the network.",
            "unreachable",
        )
    else:
        what, fix, reason = (
            "the remote read failed",
            "Check the URL and the storage options.",
            "remote",
        )
    return MetadataError(
        url,
        f"{what}: {words}",
        "a readable checkpoint in object storage",
        fix,
        path=url,
        reason=reason,
    )


def storage_options_from(texts) -> dict:
    """The storage options of the CLI's repeated ``--storage-option KEY=VALUE``: dotted keys
    make nested dicts (``client_kwargs.endpoint_url=...`` is ``{"client_kwargs":
    {"endpoint_url": ...}}``); a value is parsed as JSON when it is JSON (``true``, ``3``,
    ``{"a": 1}``), else kept as the string."""
    out: dict = {}
    for text in texts or ():
        key, sep, value = text.partition("=")
        parts = key.split(".")
        if not sep or any(not part for part in parts):
            raise MetadataError(
                "--storage-option",
                f"{text!r} is not KEY=VALUE",
                "e.g. anon=true or client_kwargs.endpoint_url=http://127.0.0.1:9000",
                "Give each option as KEY=VALUE; dotted keys make nested options.",
            )
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise MetadataError(
                    "--storage-option",
                    f"{text!r} nests under {part!r}, which is already a value",
                    "a key set either as a value or as a dict of dotted keys",
                    "Give the option once.",
                )
        node[parts[-1]] = parsed
    return out
