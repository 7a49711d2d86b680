"""Checkpoints in object storage: a real S3-compatible server (moto's, started here on
127.0.0.1) holds a checkpoint written by torch's own ``FsspecWriter``; the workbench reads it
through fsspec (s3fs) by URL, in Python and on the command line, fetching only the listing and
the ``.metadata`` (the server's request log proves no data file was read), and turns each remote
fault into one clear error naming the URL."""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import warnings

import pytest
import torch
from support import SMALL_JSON_TARGET, house_form

from workbench.checkpoint import find_file_problems, open_checkpoint
from workbench.cli import main
from workbench.errors import MetadataError, MissingExtraError, WorkbenchError
from workbench.formats import load_metadata
from workbench.formats.location import storage_options_from
from workbench.torch_bridge.convert import from_torch


def _torch_metadata(options):
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader

    return FsspecReader("s3://bucket/ckpt", **options).read_metadata()


def test_load_metadata_equals_torchs_fsspec_reader(s3):
    ours = load_metadata("s3://bucket/ckpt", storage_options=s3["options"])
    theirs = from_torch(_torch_metadata(s3["options"]))
    assert ours.state_dict_metadata == theirs.state_dict_metadata
    assert dict(ours.storage_data) == dict(theirs.storage_data)
    assert ours.version == theirs.version


def test_open_checkpoint_sizes_from_the_listing_reading_only_the_metadata(s3):
    fs, log = s3["fs"], s3["log"]
    listing = {e["name"].rsplit("/", 1)[-1]: e["size"] for e in fs.ls("bucket/ckpt", detail=True)}
    data = sorted(f for f in listing if f.endswith(".distcp"))
    assert data and ".metadata" in listing
    log.lines.clear()
    ck = open_checkpoint("s3://bucket/ckpt", storage_options=s3["options"])
    assert ck.path == "s3://bucket/ckpt" and ck.format == "dcp"
    assert ck.file_sizes == {f: listing[f] for f in data}
    assert {c.fqn for c in ck.chunks} == {"w", "b", "step"}
    assert not ck.damaged_chunks
    # the server served the .metadata and nothing else: not one byte of tensor data
    assert log.gets() == ["/bucket/ckpt/.metadata"], log.lines
    assert not find_file_problems(ck)
    assert log.gets() == ["/bucket/ckpt/.metadata"], log.lines


def test_deep_check_reads_the_data_and_finds_a_truncated_file(s3):
    fs, log, options = s3["fs"], s3["log"], s3["options"]
    log.lines.clear()
    assert not find_file_problems("s3://bucket/ckpt", deep=True, storage_options=options)
    assert any(p.endswith(".distcp") for p in log.gets()), log.lines
    # a copy whose data file lost its tail: found from the listing's size alone
    for name in fs.ls("bucket/ckpt"):
        blob = fs.cat_file(name)
        if name.endswith(".distcp"):
            blob = blob[: len(blob) // 2]
        fs.pipe_file(name.replace("/ckpt/", "/short/"), blob)
    log.lines.clear()
    problems = find_file_problems("s3://bucket/short", storage_options=options)
    assert [p.kind for p in problems] == ["truncated_file"], problems
    assert problems[0].fqn == "__0_0.distcp" and problems[0].severity == "error"
    assert log.gets() == ["/bucket/short/.metadata"], log.lines


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _same_but_the_path(remote: str, local: str, url: str, path) -> None:
    assert remote == local.replace(str(path), url), (remote, local)


def test_cli_inspect_plan_check_with_storage_options(s3, capsys, tmp_path):
    """Each command over s3:// prints what it prints for a local copy of the same files."""
    endpoint = s3["options"]["client_kwargs"]["endpoint_url"]
    opt = ["--storage-option", f"client_kwargs.endpoint_url={endpoint}"]
    url, local = "s3://bucket/ckpt", tmp_path / "ckpt"
    s3["fs"].get("bucket/ckpt/", str(local), recursive=True)
    target = tmp_path / "target.json"
    target.write_text(json.dumps(SMALL_JSON_TARGET))
    for argv in (
        ["inspect", "--json", "--chunks"],
        ["plan", "--json", "--target", target],
        ["check", "--json"],
    ):
        rc, out, err = run(capsys, argv[0], url, *argv[1:], *opt)
        rc_local, out_local, _ = run(capsys, argv[0], local, *argv[1:])
        assert rc == rc_local == 0, (argv, err)
        _same_but_the_path(out, out_local, url, local)
    # the tables (their widths follow the path's length)
    rc, out, err = run(capsys, "inspect", url, *opt)
    assert rc == 0 and "__0_0.distcp" in out and "bfloat16" in out, err
    rc, out, err = run(capsys, "plan", url, "--target", target, *opt)
    assert rc == 0 and "OK" in out, err
    rc, out, err = run(capsys, "check", url, "--deep", *opt)
    assert rc == 0 and "every file is there" in out, err
    rc, out, err = run(capsys, "inspect", url, "--storage-option", "novalue")
    assert rc == 2 and "--storage-option: 'novalue' is not KEY=VALUE" in err, err


def test_cli_report_with_storage_options(s3, capsys, tmp_path):
    """``report`` over s3:// writes the report of a local copy of the same files; a fault is
    the one-line error."""
    endpoint = s3["options"]["client_kwargs"]["endpoint_url"]
    url, local = "s3://bucket/ckpt", tmp_path / "ckpt"
    s3["fs"].get("bucket/ckpt/", str(local), recursive=True)
    pages = []
    for where, opt in (
        (url, ["--storage-option", f"client_kwargs.endpoint_url={endpoint}"]),
        (local, []),
    ):
        out = tmp_path / f"{len(pages)}.html"
        rc, _, err = run(capsys, "report", where, "-o", out, *opt)
        assert rc == 0, err
        # pandas' Styler names each table's CSS with a random id
        pages.append(re.sub(r"T_[0-9a-f]{5}", "T_", out.read_text()))
    assert "__0_0.distcp" in pages[0] and "s3://bucket/ckpt" in pages[0]
    _same_but_the_path(pages[0], pages[1], url, local)
    dead = [
        f"client_kwargs.endpoint_url=http://127.0.0.1:{_closed_port()}",
        'config_kwargs={"retries": {"max_attempts": 1}, "connect_timeout": 1}',
    ]
    argv = ["report", url, "-o", tmp_path / "x.html"]
    rc, _, err = run(capsys, *argv, *(x for o in dead for x in ("--storage-option", o)))
    assert rc == 2 and "cannot reach the storage endpoint" in err and "Traceback" not in err, err


def test_storage_option_syntax():
    assert storage_options_from(
        ["client_kwargs.endpoint_url=http://h:1", "anon=true", 'config_kwargs.retries={"a": 1}']
    ) == {
        "client_kwargs": {"endpoint_url": "http://h:1"},
        "anon": True,
        "config_kwargs": {"retries": {"a": 1}},
    }
    assert storage_options_from(["k=not json", "n=3"]) == {"k": "not json", "n": 3}
    for bad in ("x", "=1", "a..b=1"):
        with pytest.raises(MetadataError) as e:
            storage_options_from([bad])
        house_form(e.value, "--storage-option")
    with pytest.raises(MetadataError, match="already a value"):
        storage_options_from(["a=1", "a.b=2"])


@pytest.mark.parametrize(
    "url,words,reason",
    [
        ("s3://no-such-bucket/ckpt", "no such bucket", "no_bucket"),
        ("s3://bucket/no-such-key", "no such object", "not_found"),
    ],
)
def test_missing_bucket_or_key_is_one_clear_error(s3, url, words, reason):
    with pytest.raises(MetadataError) as e:
        open_checkpoint(url, storage_options=s3["options"])
    msg = house_form(e.value, url)
    assert words in msg and e.value.reason == reason, msg


def test_a_missing_metadata_beside_data_files_is_an_interrupted_save(s3):
    fs = s3["fs"]
    for name in fs.ls("bucket/ckpt"):
        if name.endswith(".distcp"):
            fs.pipe_file(name.replace("/ckpt/", "/torn/"), fs.cat_file(name))
    problems = find_file_problems("s3://bucket/torn", storage_options=s3["options"])
    assert [p.kind for p in problems] == ["no_metadata"]
    assert "but no .metadata" in problems[0].message


def test_unreachable_endpoint_is_one_clear_error():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    options = {
        "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}"},
        "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1},
    }
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    with pytest.raises(MetadataError) as e:
        load_metadata("s3://bucket/ckpt", storage_options=options)
    msg = house_form(e.value, "s3://bucket/ckpt")
    assert "cannot reach the storage endpoint" in msg and e.value.reason == "unreachable", msg


def test_without_fsspec_a_url_names_the_remote_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "fsspec", None)  # as if fsspec were not installed
    monkeypatch.setitem(sys.modules, "fsspec.core", None)
    with pytest.raises(MissingExtraError) as e:
        load_metadata("s3://bucket/ckpt")
    assert "[remote]" in str(e.value) and "fsspec" in str(e.value)


@pytest.mark.parametrize(
    "code,message,reason",
    [
        ("AccessDenied", "Access Denied", "denied"),
        ("SlowDown", "Please reduce your request rate.", "throttled"),
        ("ThrottlingException", "Rate exceeded", "throttled"),
        ("RequestTimeout", "Your socket connection to the server was not read from", "timeout"),
        ("NoSuchBucket", "The specified bucket does not exist", "no_bucket"),
        ("NoSuchKey", "The specified key does not exist.", "not_found"),
    ],
)
def test_each_s3_fault_is_named(code, message, reason):
    """What S3 answers, as s3fs raises it (its own translation of botocore's ClientError)."""
    from botocore.exceptions import ClientError
    from s3fs.errors import translate_boto_error

    from workbench.formats.location import remote_error

    raised = translate_boto_error(
        ClientError({"Error": {"Code": code, "Message": message}}, "GetObject")
    )
    err = remote_error("s3://bucket/ckpt/.metadata", raised)
    house_form(err, "s3://bucket/ckpt/.metadata")
    assert err.reason == reason, (str(err), type(raised))


def test_a_read_timeout_is_named():
    from botocore.exceptions import ReadTimeoutError

    from workbench.formats.location import remote_error

    err = remote_error("s3://b/c", ReadTimeoutError(endpoint_url="http://127.0.0.1:1/b/c"))
    assert err.reason == "timeout" and "the request timed out" in str(err)


def test_safetensors_in_s3_read_by_header_ranges(s3, tmp_path, monkeypatch):
    """torch's HuggingFaceStorageWriter writes locally (it takes no fsspec URL in 2.13); the
    files go to the bucket as they are. Reading them there fetches each file's 8-byte length
    and its header, nothing else, and gives what the local read gives."""
    import fsspec
    from torch.distributed.checkpoint import save
    from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageWriter

    local = tmp_path / "hf"
    sd = {"w": torch.randn(256, 256), "b": torch.arange(1000.0)}  # ~260 KB of tensor data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        save(sd, storage_writer=HuggingFaceStorageWriter(str(local)), no_dist=True)
    files = sorted(p.name for p in local.iterdir() if p.is_file())
    assert any(f.endswith(".safetensors") for f in files), files
    fs = s3["fs"]
    for name in files:
        fs.pipe_file(f"bucket/hf/{name}", (local / name).read_bytes())
    # count the bytes the workbench's filesystem object returns (fsspec's instance cache hands
    # the same S3FileSystem to the reader)
    reader_fs = fsspec.filesystem("s3", **s3["options"])
    fetched: dict[str, int] = {}
    real_cat = reader_fs.cat_file

    def counting_cat(path, start=None, end=None, **kw):
        blob = real_cat(path, start=start, end=end, **kw)
        fetched[path] = fetched.get(path, 0) + len(blob)
        return blob

    monkeypatch.setattr(reader_fs, "cat_file", counting_cat)
    url = "s3://bucket/hf"
    ck = open_checkpoint(url, storage_options=s3["options"])
    want = open_checkpoint(local)
    assert ck.format == want.format == "hf"
    assert ck.metadata.state_dict_metadata == want.metadata.state_dict_metadata
    assert dict(ck.metadata.storage_data) == dict(want.metadata.storage_data)
    assert ck.file_sizes == want.file_sizes
    headers = {h.file: 8 + h.header_length for h in want.format_info.headers}
    sizes = {f"bucket/hf/{f}": n for f, n in headers.items()}
    index = {f"bucket/hf/{f}": (local / f).stat().st_size for f in files if f.endswith(".json")}
    assert fetched == {**sizes, **index}, (fetched, sizes)
    assert sum(sizes.values()) < 2000 < sum(want.file_sizes.values())
    # the deep check reads the tensors' bytes (and finds them whole)
    fetched.clear()
    assert not find_file_problems(ck, deep=True)
    assert sum(fetched.values()) >= sum(s for s in want.file_sizes.values()) - sum(headers.values())


# ----------------------------------------------------------------------------- deep checks in parallel
def test_deep_check_in_parallel_finds_what_one_reader_finds(s3, tmp_path, capsys):
    """``jobs`` readers (local files and S3 objects) find exactly what one reader finds, in the
    same order: here the one chunk whose bytes were overwritten."""
    from torch.distributed.checkpoint import FileSystemWriter, save

    local = tmp_path / "many"
    sd = {f"layer{i}.w": torch.randn(16, 16) for i in range(6)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        save(sd, storage_writer=FileSystemWriter(str(local), single_file_per_rank=False))
    data = sorted(local.glob("*.distcp"))
    assert len(data) == 6  # one file per item
    blob = bytearray(data[3].read_bytes())
    blob[len(blob) // 2 : len(blob) // 2 + 64] = bytes(64)  # inside the stored elements
    data[3].write_bytes(bytes(blob))
    one = find_file_problems(local, deep=True, jobs=1)
    assert [p.kind for p in one] == ["bad_item"] and data[3].name in one[0].message, one
    assert find_file_problems(local, deep=True, jobs=4) == one
    for f in local.iterdir():
        s3["fs"].pipe_file(f"bucket/many/{f.name}", f.read_bytes())
    remote = find_file_problems(
        "s3://bucket/many", deep=True, jobs=3, storage_options=s3["options"]
    )
    assert remote == one
    rc, out, err = run(capsys, "check", local, "--deep", "--jobs", "3")
    assert rc == 1 and data[3].name in out, (out, err)
    with pytest.raises(WorkbenchError) as e:
        find_file_problems(local, deep=True, jobs=0)
    house_form(e.value, "jobs")


def test_file_url_reads_as_the_local_path(tmp_path):
    from torch.distributed.checkpoint import save

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        save({"w": torch.arange(12.0).reshape(3, 4)}, checkpoint_id=str(tmp_path / "c"))
    url = (tmp_path / "c").as_uri()
    ck, local = open_checkpoint(url), open_checkpoint(tmp_path / "c")
    assert ck.path == url and ck.location is not None
    assert ck.metadata.state_dict_metadata == local.metadata.state_dict_metadata
    assert ck.file_sizes == local.file_sizes
    assert find_file_problems(url, deep=True) == find_file_problems(local, deep=True) == []
    assert load_metadata(url) == load_metadata(tmp_path / "c")


@pytest.mark.parametrize("name", ["megatron", "megatron_flat", "hf_consolidated"])
def test_other_formats_in_s3_read_as_their_local_copy(s3, name, capsys):
    """megatron-core's and torch's HF writer's files (tests/data/checkpoints) in the bucket:
    the same records, facts and problems as read from the local directory, without one byte of
    tensor data fetched."""
    from pathlib import Path

    local = Path(__file__).parent / "data" / "checkpoints" / name
    fs, log = s3["fs"], s3["log"]
    for f in local.rglob("*"):  # hf_consolidated has its sharded/ directory
        if f.is_file():
            fs.pipe_file(f"bucket/{name}/{f.relative_to(local).as_posix()}", f.read_bytes())
    log.lines.clear()
    url = f"s3://bucket/{name}"
    ck, want = open_checkpoint(url, storage_options=s3["options"]), open_checkpoint(local)
    assert ck.format == want.format
    assert ck.metadata.state_dict_metadata == want.metadata.state_dict_metadata
    assert dict(ck.metadata.storage_data) == dict(want.metadata.storage_data)
    assert ck.file_sizes == want.file_sizes and ck.facts() == want.facts()
    assert ck.format_rows() == want.format_rows()
    fetched = {p.rsplit("/", 1)[-1] for p in log.gets()}
    assert not any(f.endswith(".distcp") for f in fetched), log.lines
    got = [(p.kind, p.fqn) for p in find_file_problems(ck)]
    assert got == [(p.kind, p.fqn) for p in find_file_problems(want)]
    # the command line too: Megatron's .metadata read with its records allowed (writer versions)
    endpoint = s3["options"]["client_kwargs"]["endpoint_url"]
    for where in (url, local.as_uri()):
        opt = ["--storage-option", f"client_kwargs.endpoint_url={endpoint}"]
        rc, out, err = run(capsys, "inspect", where, "--json", *(opt if where == url else ()))
        rc_local, out_local, _ = run(capsys, "inspect", local, "--json")
        assert rc == rc_local == 0, err
        _same_but_the_path(out, out_local, where, local)


# ----------------------------------------------------------------------------- the explorer
def test_checkpoint_explorer_opens_a_url_with_storage_options(s3, tmp_path):
    """`CheckpointExplorer` on s3:// (and file://) shows what it shows for a local copy of the
    same files, its target changes re-plan the URL with the same options, and a fault is the
    one clear error."""
    from workbench.widgets.checkpoint import CheckpointExplorer

    url, local = "s3://bucket/ckpt", tmp_path / "ckpt"
    s3["fs"].get("bucket/ckpt/", str(local), recursive=True)
    target = tmp_path / "target.json"
    target.write_text(json.dumps(SMALL_JSON_TARGET))
    for where, options in ((url, s3["options"]), (local.as_uri(), None)):
        ex = CheckpointExplorer(where, str(target), rank=3, storage_options=options)
        want = CheckpointExplorer(local, str(target), rank=3)
        assert ex.plan.metadata.state_dict_metadata == want.plan.metadata.state_dict_metadata
        assert ex.plan.facts == want.plan.facts and ex.plan.problems == want.plan.problems
        assert ex.tensor.options == want.tensor.options and ex.rank.value == 3
        ex.tensor.value = want.tensor.value = "w"
        assert ex.result.reads.equals(want.result.reads) and len(ex.result.reads)
        assert ex.header.value == want.header.value.replace(str(local), where)
        s3["log"].lines.clear()
        ex.set_target("llama-tiny:fsdp:dp=2")  # re-planned from the URL, options kept
        assert ex.message.value == "" and ex.plan.load.world_size == 2
        assert ex.plan.problems  # llama-tiny's keys are not this checkpoint's
        # the URL's metadata fetched again (with the options: without them no server answers)
        assert s3["log"].gets() == (["/bucket/ckpt/.metadata"] if options else []), options
    with pytest.raises(MetadataError) as e:  # without the endpoint: the fault, named
        CheckpointExplorer(
            "s3://bucket/ckpt",
            storage_options={
                "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{_closed_port()}"},
                "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1},
            },
        )
    assert e.value.reason == "unreachable", str(e.value)


def _closed_port() -> int:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
