"""The ``workbench`` command: inspect a DCP checkpoint, plan a reshard onto a target and gate a
training job on it, capture the target (or the checkpoint) of the user's own training code,
explain a torch error string, write an HTML report, open the tour notebook.

Exit status: 0 fine; 1 ``plan`` found a problem that makes torch raise or load wrong values;
2 bad input (a missing checkpoint, an unreadable ``.metadata``, a bad target spec), reported as
one line on stderr, never a traceback. A checkpoint is read only through
`workbench.formats.load_metadata` (allow-list unpickler), so inspecting a stranger's
checkpoint runs none of its code. Target specs (see ``workbench plan --help``)::

    PRESET[-SIZE][+optim]:RECIPE:DIM=N,...    e.g. llama-tiny:fsdp2+tp:dp=2,tp=2
    PATH.json                                 {fqn: {"shape": [...], "dtype": "float32",
                                                     "mesh": [2, 2], "placements": "S(0), R"}}

This module sits at the top layer: it may import everything. Lazy imports: the helpers are
imported inside the commands so that ``workbench --help`` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from .errors import PlanError, WorkbenchError
from .formatting import format_ranks
from .targets import TARGET_HELP, parse_ints, parse_target, preset_listing, target_json
from .versions import NEWEST_TORCH_VERSION, SUPPORTED_TORCH_VERSIONS

# the range the help texts name, from the one list of recorded versions
_TORCH_RANGE = f"{SUPPORTED_TORCH_VERSIONS[0]} to {NEWEST_TORCH_VERSION}"

__all__ = ["main", "build_parser", "torch_versions"]

# exit status
OK, FOUND_PROBLEMS, BAD_INPUT = 0, 1, 2
MAX_ROWS = 40  # problems printed as a table; --json gives all


# ----------------------------------------------------------------------------- output helpers
def _open(path: str, args):
    """The checkpoint (`checkpoint.Checkpoint`): metadata read with the allow-list unpickler
    (never torch's pickle.load), plus the data files' sizes on disk (or in the listing of an
    fsspec URL, opened with the ``--storage-option``s)."""
    from .checkpoint import open_checkpoint

    return open_checkpoint(path, storage_options=_storage_options(args))


def _storage_options(args) -> dict | None:
    from .formats.location import storage_options_from

    return storage_options_from(getattr(args, "storage_option", None)) or None


def _add_storage_option(s) -> None:
    s.add_argument(
        "--storage-option",
        action="append",
        metavar="KEY=VALUE",
        help="an fsspec storage option for a URL checkpoint (s3://, gs://, az://, hf://), "
        "repeatable; dotted keys nest (client_kwargs.endpoint_url=http://...), values are "
        "JSON when they parse (anon=true)",
    )


def _print_damage(messages: list[str]) -> None:
    if messages:
        print(f"damaged checkpoint ({len(messages)}):")
        for m in messages:
            print("  " + m)


def _console():
    from rich.console import Console

    return Console(file=sys.stdout, width=max(100, Console().width), highlight=False)


# Rows of one terminal table: rich lays out every row before printing (~2 ms a row), so a
# damaged checkpoint with 100,000 chunks or problems would take minutes and a 16,384-rank one's
# entries and files tables 2 s; --json prints them all.
MAX_TABLE_ROWS = 200


def _table(title: str, columns: list[str], rows: list[list]) -> None:
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows[:MAX_TABLE_ROWS]:
        t.add_row(*(str(v) for v in r))
    if len(rows) > MAX_TABLE_ROWS:
        more = f"... {len(rows) - MAX_TABLE_ROWS:,} more rows (--json prints every row)"
        t.add_row(more, *[""] * (len(columns) - 1))
    _console().print(t)


def _json_out(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _problem_dict(p) -> dict:
    """A `Problem` as plain JSON-able data."""
    return {
        "fqn": p.fqn,
        "kind": p.kind,
        "severity": p.severity,
        "ranks": list(p.ranks),
        "region": None if p.region is None else str(p.region),
        "message": p.message,
        "fix": p.fix,
    }


# ----------------------------------------------------------------------------- commands
def _cmd_inspect(args) -> int:
    from .checkpoint import describe_checkpoint, summarize_checkpoint
    from .diagnosis import find_checkpoint_problems
    from .formatting import format_bytes
    from .report import shape_text

    ckpt = _open(args.checkpoint, args)
    problems = find_checkpoint_problems(ckpt.metadata)  # holes / overlaps, whatever the target
    written_by = _writer_versions(ckpt, args.checkpoint)
    if args.json:
        info = describe_checkpoint(ckpt.metadata)  # every chunk's record: 20 s at 16,384 ranks
        _json_out(
            {
                "checkpoint": args.checkpoint,
                "format": ckpt.format,
                "facts": ckpt.facts(),
                "format_records": _format_records(ckpt),
                "written_by": None
                if written_by is None
                else {
                    "low": written_by.low,
                    "high": written_by.high,
                    "text": str(written_by),
                    "evidence": list(written_by.evidence),
                },
                **info,
                "damage": [p.message for p in ckpt.problems()],
                "problems": [_problem_dict(p) for p in problems],
            }
        )
        return OK
    info = summarize_checkpoint(ckpt.metadata)
    rows = [
        [
            e["fqn"],
            e["kind"],
            shape_text(e["shape"]),
            e["dtype"] or "",
            e["n_chunks"],
            format_ranks(e["writers"]),
            "" if e["nbytes"] is None else format_bytes(e["nbytes"]),
        ]
        for e in info["entries"]
    ]
    print("  ".join(f"{k}: {v}" for k, v in ckpt.facts().items()))
    if written_by is not None:
        print(f"written by {written_by} ({'; '.join(written_by.evidence)})")
    _table(
        f"{args.checkpoint}: {len(rows)} entries",
        ["fqn", "kind", "shape", "dtype", "chunks", "writers", "bytes"],
        rows,
    )
    _format_tables(ckpt)
    if args.chunks:
        rows = [
            [e["fqn"], c["region"] or "", c["writer"], c["file"], c["offset"], c["length"]]
            for e in describe_checkpoint(ckpt.metadata)["entries"]
            for c in e["chunks"]
        ]
        _table("chunks", ["fqn", "chunk", "writer", "file", "byte offset", "bytes"], rows)
    _table(
        "files",
        ["file", "writer", "items", "bytes"],
        [[f["file"], f["writer"], f["items"], format_bytes(f["bytes"])] for f in info["files"]],
    )
    if problems:
        _table(
            f"{len(problems)} problems in the saved chunks (any load reading them is silently "
            "wrong)",
            ["kind", "fqn", "region", "message"],
            [[p.kind, p.fqn, "" if p.region is None else p.region, p.message] for p in problems],
        )
    _print_damage([p.message for p in ckpt.problems()])
    return OK


def _format_records(ckpt) -> dict:
    """What the format records beyond the chunks, as JSON-able data (Megatron: who held each
    chunk per all_local_plans, flattened tensors' model boxes, sharded objects)."""
    info = ckpt.format_info
    if ckpt.format != "megatron":
        return {}
    return {
        "held": {
            fqn: {
                "bytes" if off is None else ",".join(map(str, off)): list(ranks)
                for off, ranks in info.held(fqn).items()
            }
            for fqn in ckpt.keys
        }
        if info.local_plans is not None
        else None,
        "flattened": {
            ft.fqn: {
                "shape": list(ft.shape),
                "stored_size": list(ft.stored_size),
                "pieces": [
                    {
                        "stored": str(p.stored),
                        "flat_range": [p.start, p.stop],
                        "boxes": [str(b) for b in p.boxes],
                    }
                    for p in ft.pieces
                ],
            }
            for ft in info.flattened.values()
        },
        "objects": {k: [o.fqn for o in v] for k, v in info.objects.items()},
    }


def _format_tables(ckpt) -> None:
    """The format's own records (`checkpoint.Checkpoint.format_rows`)."""
    for title, rows in ckpt.format_rows().items():
        columns = list(rows[0]) if rows else []
        _table(title, columns, [[str(r[c]) for c in columns] for r in rows])


def _cmd_check(args) -> int:
    from .checkpoint import find_file_problems

    problems = find_file_problems(
        args.checkpoint,
        deep=args.deep,
        progress=not args.json,
        storage_options=_storage_options(args),
        jobs=args.jobs,
        dask=args.dask,
    )
    blocking = [p for p in problems if p.blocking]
    if args.json:
        _json_out(
            {
                "checkpoint": args.checkpoint,
                "deep": args.deep,
                "ok": not blocking,
                "problems": [_problem_dict(p) for p in problems],
            }
        )
        return FOUND_PROBLEMS if blocking else OK
    if problems:
        _table(
            f"{args.checkpoint}: {len(problems)} problems",
            ["severity", "kind", "item", "message"],
            [[p.severity, p.kind, p.fqn, p.message + " " + p.fix] for p in problems],
        )
    else:
        what = "every chunk's bytes read and checked" if args.deep else "sizes checked"
        print(f"{args.checkpoint}: every file is there ({what})")
    return FOUND_PROBLEMS if blocking else OK


def torch_versions(spec: str | None) -> list[str]:
    """``--torch`` values: ``"2.10"`` or ``"2.10,2.13"`` (None: the default version)."""
    from .versions import resolve_torch_version

    if spec is None:
        return [resolve_torch_version(None)]
    return [resolve_torch_version(v.strip()) for v in spec.split(",") if v.strip()] or [
        resolve_torch_version(spec)
    ]


def _one_version(spec: str | None) -> str:
    versions = torch_versions(spec)
    if len(versions) > 1:
        raise PlanError(
            "<--torch>",
            f"{spec!r} names {len(versions)} versions",
            "one version here",
            "Compare versions with `workbench plan --torch A,B`.",
        )
    return versions[0]


def _version_header(v: str) -> str:
    from .versions import assumed_version_note, installed_torch_version

    installed = installed_torch_version()
    note = f"installed torch {installed}" if installed else "no torch installed"
    assumed = assumed_version_note()  # a newer torch than recorded: say which semantics we assume
    return f"DCP semantics of torch {v} ({note})" + (f"\nnote: {assumed}" if assumed else "")


def _writer_versions(ckpt, path: str):
    """`formats.dcp.infer_writer_versions` of a checkpoint's ``.metadata`` (Megatron's with its
    extra records allowed); None for a format without a pickled metadata (HF)."""
    from .formats.dcp import infer_writer_versions, load_writer_versions
    from .formats.megatron import MEGATRON_GLOBALS

    if ckpt.format == "hf":
        return None
    extra = MEGATRON_GLOBALS if ckpt.format == "megatron" else None
    if ckpt.location is not None:  # object storage: fetched again, it is small
        where = ckpt.location.url_of(".metadata")
        return infer_writer_versions(ckpt.location.read_bytes(".metadata"), where, extra)
    return load_writer_versions(path, extra_globals=extra)  # cached by the open when it can


def _cmd_plan(args) -> int:
    from .planning import plan_load

    versions = torch_versions(args.torch)
    if len(versions) > 1:
        return _cmd_compare_versions(args, versions)
    ckpt = _open(args.checkpoint, args)
    layouts = parse_target(args.target)
    result = plan_load(
        ckpt.metadata,
        layouts,
        allow_partial_load=args.allow_partial_load,
        torch_version=versions[0],
    )
    problems = list(result.problems)
    blocking = [p for p in problems if p.blocking]
    # a missing or short data file makes torch's reader raise mid-load, for the keys it holds
    damage = [p.message for p in ckpt.problems()]
    broken = sorted({c.fqn for c in ckpt.damaged_chunks if c.fqn in layouts})
    ok = not blocking and not broken
    if args.json:
        io = _io_summary(result)
        _json_out(
            {
                "checkpoint": args.checkpoint,
                "target": args.target,
                "torch_version": result.torch_version,
                "ok": ok,
                "world_size": result.world_size,
                "problems": [_problem_dict(p) for p in problems],
                "damage": damage,
                "damaged_keys": broken,
                "io": io,
            }
        )
    else:
        print(_version_header(result.torch_version))
        if problems:
            # blocking problems first; a wrong preset can give one problem per key
            shown = sorted(problems, key=lambda p: not p.blocking)[:MAX_ROWS]
            _table(
                f"{len(problems)} problems ({len(blocking)} blocking)",
                ["severity", "kind", "fqn", "ranks", "region", "message"],
                [
                    [p.severity, p.kind, p.fqn, format_ranks(p.ranks), p.region or "", p.message]
                    for p in shown
                ],
            )
            if len(problems) > len(shown):
                print(f"... {len(problems) - len(shown)} more problems (--json lists all)")
        else:
            print("no problems found")
        _print_damage(damage)
        sys.stdout.flush()  # the verdict's facts show while the I/O is costed (0.3 s at 16k ranks)
        io = _io_summary(result)
        _table(
            f"I/O on {result.world_size} ranks", ["", "value"], [[k, v] for k, v in _io_lines(io)]
        )
        print("OK" if ok else "BLOCKED: this load would raise or load wrong values")
    return OK if ok else FOUND_PROBLEMS


def _cmd_compare_versions(args, versions: list[str]) -> int:
    from .version_compare import compare_versions

    ckpt = _open(args.checkpoint, args)
    layouts = parse_target(args.target)
    cmp = compare_versions(
        ckpt.metadata, layouts, versions, allow_partial_load=args.allow_partial_load
    )
    blocked = {v: any(p.blocking for p in r.problems) for v, r in cmp.results.items()}
    if args.json:
        _json_out(
            {
                "checkpoint": args.checkpoint,
                "target": args.target,
                "torch_versions": list(cmp.versions),
                "blocked": blocked,
                "changes": [dataclasses.asdict(c) for c in cmp.changed()],
            }
        )
    else:
        print(f"DCP semantics of torch {', '.join(cmp.versions)} compared with {cmp.versions[0]}")
        rows = [
            [*c.row(), "" if c.files_before == c.files_after else " ".join(c.files_after)]
            for c in cmp.changed()
        ]
        if rows:
            _table(
                f"{len(rows)} (version, rank) pairs change",
                ["torch", "rank", "read order", "reads", "problems +", "problems -", "files now"],
                rows[:MAX_ROWS],
            )
            if len(rows) > MAX_ROWS:
                print(f"... {len(rows) - MAX_ROWS} more (--json lists all)")
        else:
            print("no rank's reads, problems or files change")
        for v, b in blocked.items():
            print(f"torch {v}: " + ("BLOCKED" if b else "OK"))
    return FOUND_PROBLEMS if any(blocked.values()) else OK


def _io_summary(result) -> dict:
    """The plan's I/O as a few numbers a script can compare (from ``result.io``,
    `io_cost.LoadIO`, the numbers `tables.io_table` lists per rank)."""
    io = result.io
    return {
        "reads": int(io.reads.sum()),
        "max_reads_per_rank": int(io.reads.max()),
        "bytes_needed": int(io.bytes_needed.sum()),
        "bytes_read": int(io.bytes_read.sum()),
        "max_bytes_read_per_rank": int(io.bytes_read.max()),
        "max_files_per_rank": int(io.files_opened.max()),
        "files_read": sum(1 for f in io.files if io.readers[f]),
    }


def _io_lines(io: dict):
    from .formatting import format_bytes

    for k, v in io.items():
        yield k.replace("_", " "), format_bytes(v) if "bytes" in k else v


def _cmd_explain(args) -> int:
    from .explanations import explain

    metadata = _open(args.checkpoint, args).metadata if args.checkpoint else None
    target = parse_target(args.target) if args.target else None
    exp = explain(
        args.text, metadata=metadata, target=target, torch_version=_one_version(args.torch)
    )
    if args.json:
        _json_out(_explanation_dict(exp))
    else:
        print(exp)
    return OK


def _explanation_dict(exp) -> dict:
    """An `Explanation` (its inner ones included) as plain JSON-able data."""
    return {f.name: _json_value(getattr(exp, f.name)) for f in dataclasses.fields(exp)}


def _json_value(v):
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return _explanation_dict(v)
    if isinstance(v, (list, tuple)):
        return [_json_value(x) for x in v]
    return v if isinstance(v, (str, int, float, bool, type(None), dict)) else str(v)


def _cmd_report(args) -> int:
    from .report import write_report

    ckpt = _open(args.checkpoint, args)
    layouts = parse_target(args.target) if args.target else None
    from .checkpoint import find_file_problems
    from .tables import format_tables

    out = write_report(
        args.output,
        ckpt.metadata,
        layouts,
        checkpoint=args.checkpoint,
        target=args.target,
        damage=[p.message for p in ckpt.problems()],
        facts=ckpt.facts(),
        file_problems=find_file_problems(ckpt),
        format_tables=format_tables(ckpt),
        torch_version=_one_version(args.torch),
    )
    print(f"wrote {out}")
    return OK


def _cmd_capture(args) -> int:
    from .torch_bridge.capture import capture

    ranks = None
    if args.ranks:
        ranks = (
            "all"
            if args.ranks == "all"
            else list(parse_ints(args.ranks, "--ranks", error=PlanError, example="0,5"))
        )
    target = capture(
        args.build, args.world_size, ranks=ranks, time_limit=args.time_limit, progress=False
    )
    if args.save:
        doc, status = _save_side(target)
    else:
        doc, status = target_json(target), OK
    text = json.dumps(doc, indent=1 if args.save else None)
    if args.output in (None, "-"):
        print(text)
        return status
    Path(args.output).write_text(text + "\n")
    print(
        f"{target.describe()}; wrote {'the save side' if args.save else 'the target'} to "
        f"{args.output}"
    )
    return status


def _save_side(target) -> tuple[dict, int]:
    """What the captured program's ``dcp.save`` writes (`plan_save` on its layouts), as
    ``workbench inspect --json`` prints a checkpoint, plus the save's validation errors and
    problems; status 1 when torch's save would raise or lose data."""
    from .checkpoint import describe_checkpoint
    from .diagnosis import find_save_problems
    from .planning import plan_save

    save = plan_save(target)
    problems = find_save_problems(save)
    bad = bool(save.errors) or any(p.blocking for p in problems)
    doc = {
        "build": target.build,
        "world_size": target.world_size,
        "ok": not bad,
        **describe_checkpoint(save.metadata),
        "bytes_written": [int(b) for b in save.bytes_written],
        "validation_errors": list(save.errors),
        "problems": [_problem_dict(p) for p in problems],
    }
    return doc, FOUND_PROBLEMS if bad else OK


def _cmd_lab(args) -> int:
    tour = Path(__file__).resolve().parent.parent / "notebooks" / "00_tour.ipynb"
    if not tour.is_file():
        raise WorkbenchError(
            "<lab>",
            f"the tour notebook {str(tour)!r} is missing",
            "a source checkout with notebooks/",
            "Run from the repository.",
        )
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--ServerApp.ip=127.0.0.1",
        str(tour),
        *args.lab_args,
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # Jupyter refuses root without it (containers)
        cmd.insert(3, "--ServerApp.allow_root=True")
    return subprocess.call(cmd)


# ----------------------------------------------------------------------------- parser
class _ListPresets(argparse.Action):
    """``--list-presets``: print and exit, like ``--help`` (needs no checkpoint)."""

    def __init__(self, option_strings, dest, **kw):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        print(preset_listing())
        parser.exit()


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Wraps descriptions to the terminal but keeps the target syntax (epilogs) as written."""

    def _fill_text(self, text, width, indent):
        if "\n" in text:
            return super()._fill_text(text, width, indent)
        return textwrap.fill(text, min(width, 100), initial_indent=indent, subsequent_indent=indent)


def build_parser() -> argparse.ArgumentParser:
    fmt = _Formatter
    p = argparse.ArgumentParser(
        prog="workbench",
        formatter_class=fmt,
        description=f"See and debug how PyTorch Distributed Checkpoint (torch {_TORCH_RANGE}) "
        "reshards a checkpoint, for every rank at once, without a process group.",
        epilog="exit status: 0 ok, 1 `plan` / `check` found a blocking problem, 2 bad input\n\n"
        + TARGET_HELP,
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser(
        "inspect",
        formatter_class=fmt,
        help="what a checkpoint holds",
        description="Every entry of a checkpoint (plain DCP, Megatron-Core torch_dist or DCP's "
        "HuggingFace safetensors; the format is recognised): shape, dtype, chunks, the file "
        "and byte range of each chunk and its writer rank, and what the format records of "
        "itself. Reads only metadata (an allow-list unpickler, safetensors headers): safe on a "
        "stranger's checkpoint.",
    )
    s.add_argument(
        "checkpoint",
        help="checkpoint directory (.metadata + __<rank>_<n>.distcp, Megatron, or *.safetensors)",
    )
    s.add_argument("--chunks", action="store_true", help="also list every chunk")
    s.add_argument("--json", action="store_true", help="print JSON instead of tables")
    _add_storage_option(s)
    s.set_defaults(run=_cmd_inspect)

    s = sub.add_parser(
        "check",
        formatter_class=fmt,
        help="are the checkpoint's files all there",
        description="Check that every file the metadata names exists and holds every byte "
        "range it names; report a missing .metadata (an interrupted or asynchronous save), stray "
        "files, duplicate or overlapping chunks, and each format's own records (Megatron's "
        "metadata.json and common.pt, the HF index). --deep also reads every chunk's bytes and "
        "checks its element count and dtype (never unpickling beyond an allow-list), on N "
        "local readers (--jobs) or the workers of a Dask cluster (--dask). Exit status 1 when "
        "torch would fail or load wrong values.",
    )
    s.add_argument("checkpoint", help="checkpoint directory (any supported format)")
    s.add_argument("--deep", action="store_true", help="read and check every chunk's bytes")
    s.add_argument(
        "--jobs",
        "-j",
        type=int,
        default=1,
        metavar="N",
        help="with --deep, read N data files at once (default 1)",
    )
    s.add_argument(
        "--dask",
        metavar="ADDRESS",
        help="with --deep, read the data files on the workers of this running Dask cluster "
        "(tcp://host:8786; the [cluster] extra, the workbench installed on every worker, the "
        "checkpoint at the same path or URL for every worker), one task per file",
    )
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_storage_option(s)
    s.set_defaults(run=_cmd_check)

    s = sub.add_parser(
        "plan",
        formatter_class=fmt,
        help="problems and I/O of loading into a target",
        description="Plan every rank's reads for loading CHECKPOINT into TARGET, list "
        "the problems and the I/O. Exit status 1 when the load would "
        "raise or load wrong values (guard a training job with it), 0 "
        "otherwise, 2 on bad input.",
        epilog=TARGET_HELP,
    )
    s.add_argument("checkpoint", help="checkpoint directory")
    s.add_argument("--target", "-t", required=True, metavar="SPEC", help="the target (see below)")
    s.add_argument(
        "--allow-partial-load",
        action="store_true",
        help="as dcp.load(planner=DefaultLoadPlanner(allow_partial_load=True))",
    )
    s.add_argument(
        "--torch",
        metavar="X.Y[,X.Y...]",
        help=f"the torch version whose DCP semantics to use ({_TORCH_RANGE}; default: the "
        "installed torch if supported, else the newest); several compare the versions rank by rank",
    )
    s.add_argument("--json", action="store_true", help="print JSON instead of tables")
    s.add_argument("--list-presets", action=_ListPresets, help="list presets and recipes, exit")
    _add_storage_option(s)
    s.set_defaults(run=_cmd_plan)

    s = sub.add_parser(
        "explain",
        formatter_class=fmt,
        help="explain a torch DCP error string",
        description="Explain an error message from dcp.save / dcp.load (paste it "
        "quoted); with a checkpoint and a target, tie it to their data.",
    )
    s.add_argument("text", help="the error text, quoted")
    s.add_argument("--checkpoint", "-c", help="checkpoint directory the error came from")
    s.add_argument("--target", "-t", metavar="SPEC", help="the target being loaded into")
    s.add_argument("--torch", metavar="X.Y", help="the torch version that raised it")
    s.add_argument("--json", action="store_true", help="print JSON")
    _add_storage_option(s)
    s.set_defaults(run=_cmd_explain)

    s = sub.add_parser(
        "report",
        formatter_class=fmt,
        help="one self-contained HTML report",
        description="Write one HTML file (pictures embedded, no external links) with "
        "the checkpoint's contents and, given a target, the reshard's "
        "problems, reads and I/O. Attach it to a bug report.",
        epilog=TARGET_HELP,
    )
    s.add_argument("checkpoint", help="checkpoint directory")
    s.add_argument("--target", "-t", metavar="SPEC", help="optional target (see below)")
    s.add_argument("--output", "-o", default="report.html", help="output file (report.html)")
    s.add_argument("--torch", metavar="X.Y", help="the torch version whose semantics to use")
    _add_storage_option(s)
    s.set_defaults(run=_cmd_report)

    s = sub.add_parser(
        "capture",
        formatter_class=fmt,
        help="the target (or checkpoint) your own training code makes",
        description="Run your own build() (model + parallelize, optionally returning "
        "(model, optimizer)) as ranks of a WORLD_SIZE-rank job under torch's fake process "
        "group, on the CPU, and write the target it asks of a checkpoint as the JSON that "
        "`workbench plan --target` reads. With --save: the checkpoint it would write instead "
        "(every chunk's writer rank and file, as `workbench inspect --json` prints a "
        "checkpoint, plus torch's save validation and the save problems; exit 1 when that "
        "save would raise or lose data).",
    )
    s.add_argument("build", help="MODULE:FUNCTION, e.g. train:build (imported from the cwd)")
    s.add_argument("--world-size", "-n", type=int, required=True, help="ranks of the job")
    s.add_argument("--output", "-o", help="output file (default: print the JSON)")
    s.add_argument("--save", action="store_true", help="write the save side instead")
    s.add_argument("--ranks", help="more ranks to run and check, e.g. 0,5, or all")
    s.add_argument("--time-limit", type=float, default=120.0, help="seconds per rank (default 120)")
    s.set_defaults(run=_cmd_capture)

    s = sub.add_parser(
        "lab",
        help="JupyterLab on the tour notebook",
        usage="workbench lab [-h] [JUPYTERLAB-ARGUMENT ...]",
        description="Start JupyterLab (on 127.0.0.1) with notebooks/00_tour.ipynb; "
        "other arguments go to JupyterLab (e.g. --no-browser).",
    )
    s.set_defaults(run=_cmd_lab)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``workbench`` console script; returns the exit status."""
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra and args.command != "lab":  # only `lab` passes arguments on (to JupyterLab)
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as e:  # --help (0) and usage errors (2) without leaving the caller
        return int(e.code or 0)
    args.lab_args = extra
    try:
        return args.run(args)
    except (WorkbenchError, OSError) as e:  # bad input, unreadable or unwritable paths
        print(f"workbench {args.command}: error: {e}", file=sys.stderr)
        return BAD_INPUT
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
