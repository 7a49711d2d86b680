"""Deep checks spread over a Dask cluster (``check --deep --dask ADDRESS``): a real local cluster
(a scheduler and 2 worker processes on 127.0.0.1, started and closed here) reads the data files
of a checkpoint written by torch's own ``dcp.save``, one task per file, and finds exactly what the
local readers find, in the same order; in object storage too (the workers open the S3 objects
themselves). Each failure is one clear error: an unreachable scheduler, a cluster without
workers, a worker that cannot read a file, a worker without the package, no ``distributed``."""

from __future__ import annotations

import json
import socket
import sys
import warnings

import distributed
import pytest
import torch
from support import house_form

from workbench.checkpoint import find_file_problems, open_checkpoint
from workbench.cli import main
from workbench.errors import MissingExtraError, WorkbenchError

# one xdist worker runs the module (make test: --dist loadgroup): the cluster starts once
pytestmark = pytest.mark.xdist_group("dask-cluster")


@pytest.fixture(scope="module")
def cluster():
    """A scheduler and 2 single-threaded worker processes on 127.0.0.1 (free ports, its HTTP
    server's too: a fixed 8787 would clash with another xdist worker's cluster); closed, with
    its processes, when the module's tests are done."""
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        silence_logs=40,  # logging.ERROR: the workers' start-up lines are noise here
    ) as c:
        yield c


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    """A checkpoint of 6 data files (one per item) written by dcp.save, the elements of the 4th
    overwritten with zeros (its archive's CRC no longer matches); the path and that file."""
    local = tmp_path_factory.mktemp("cluster") / "many"
    sd = {f"layer{i}.w": torch.randn(16, 16) for i in range(6)}
    from torch.distributed.checkpoint import FileSystemWriter, save

    with warnings.catch_warnings():  # "assuming the intent is to save in a single process"
        warnings.simplefilter("ignore", UserWarning)
        save(sd, storage_writer=FileSystemWriter(str(local), single_file_per_rank=False))
    data = sorted(local.glob("*.distcp"))
    assert len(data) == 6
    blob = bytearray(data[3].read_bytes())
    blob[len(blob) // 2 : len(blob) // 2 + 64] = bytes(64)  # inside the stored elements
    data[3].write_bytes(bytes(blob))
    return local, data[3].name


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_cluster_finds_what_local_readers_find(cluster, damaged):
    local, bad = damaged
    one = find_file_problems(local, deep=True)
    assert [p.kind for p in one] == ["bad_item"] and bad in one[0].message, one
    assert find_file_problems(local, deep=True, jobs=3) == one
    # by address (connected and closed here) and with the user's own Client (left open)
    assert find_file_problems(local, deep=True, dask=cluster.scheduler_address) == one
    with distributed.Client(cluster, set_as_default=False) as client:
        assert find_file_problems(open_checkpoint(local), deep=True, dask=client) == one
        assert client.status == "running"


def test_cli_check_deep_dask(cluster, damaged, capsys):
    local, bad = damaged
    address = cluster.scheduler_address
    rc, out, err = run(capsys, "check", local, "--deep", "--json")
    rc_dask, out_dask, err_dask = run(capsys, "check", local, "--deep", "--json", "--dask", address)
    assert rc == rc_dask == 1, err_dask
    assert json.loads(out_dask) == json.loads(out)
    assert [p["kind"] for p in json.loads(out)["problems"]] == ["bad_item"]
    rc, out, err = run(capsys, "check", local, "--deep", "--dask", address)
    assert rc == 1 and bad in out, (out, err)
    assert "6/6" in err  # one bar over every chunk, advanced as the workers finish files
    rc, out, err = run(capsys, "check", local, "--dask", address)
    assert rc == 2 and "dask: a Dask cluster with deep=False" in err, err
    rc, out, err = run(capsys, "check", local, "--deep", "--jobs", "2", "--dask", address)
    assert rc == 2 and "--deep --dask ADDRESS without --jobs" in err, err


def test_an_unreachable_scheduler_is_one_clear_error(damaged, capsys):
    import dask

    local, _ = damaged
    address = f"tcp://127.0.0.1:{_free_port()}"  # nobody listens there
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        with pytest.raises(WorkbenchError) as e:
            find_file_problems(local, deep=True, dask=address)
        msg = house_form(e.value, address)
        assert "cannot reach the Dask scheduler" in msg and e.value.address == address, msg
        rc, out, err = run(capsys, "check", local, "--deep", "--dask", address)
    assert rc == 2 and f"workbench check: error: {address}: cannot reach" in err, err
    assert "Traceback" not in err
    with pytest.raises(WorkbenchError) as e:
        find_file_problems(local, deep=True, dask=8786)
    house_form(e.value, "dask")


def test_a_file_a_worker_cannot_read_is_named(cluster, damaged, tmp_path):
    """The workers open the files themselves: one gone since the checkpoint was opened (as on a
    worker that does not mount the checkpoint's filesystem) is named with the cluster."""
    local, _ = damaged
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in local.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    ck = open_checkpoint(copy)
    gone = sorted(ck.file_sizes)[1]
    (copy / gone).unlink()
    with pytest.raises(WorkbenchError) as e:
        find_file_problems(ck, deep=True, dask=cluster.scheduler_address)
    msg = house_form(e.value, f"{copy}: {gone}")
    assert "a Dask worker failed on it: FileNotFoundError" in msg, msg
    assert e.value.address == cluster.scheduler_address


def test_a_worker_without_the_package_is_one_clear_error(cluster, damaged):
    """As if the workbench were not installed on the workers (their import of it fails, as a
    missing package's does); found before any task is sent, so nothing hangs."""
    local, _ = damaged
    hide = "import sys; sys.modules['wb-hidden'] = sys.modules.get('workbench'); " + (
        "sys.modules['workbench'] = None"
    )
    show = (
        "import sys; w = sys.modules.pop('wb-hidden'); "
        "sys.modules.pop('workbench') if w is None else sys.modules.__setitem__('workbench', w)"
    )
    with distributed.Client(cluster, set_as_default=False) as client:
        client.run(exec, hide)
        try:
            with pytest.raises(WorkbenchError) as e:
                find_file_problems(local, deep=True, dask=client)
        finally:
            client.run(exec, show)
        msg = house_form(e.value, cluster.scheduler_address)
        assert "cannot import workbench: ModuleNotFoundError" in msg, msg
        assert e.value.worker in client.scheduler_info()["workers"]
        assert find_file_problems(local, deep=True, dask=client)  # the workers are whole again


def test_a_cluster_without_workers_is_one_clear_error(damaged):
    local, _ = damaged
    with distributed.LocalCluster(
        n_workers=0,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        silence_logs=40,
    ) as empty:
        with pytest.raises(WorkbenchError) as e:
            find_file_problems(local, deep=True, dask=empty.scheduler_address)
    msg = house_form(e.value, empty.scheduler_address)
    assert "has no workers" in msg, msg


def test_without_distributed_dask_names_the_cluster_extra(damaged, monkeypatch):
    local, _ = damaged
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if it were not installed
    with pytest.raises(MissingExtraError) as e:
        find_file_problems(local, deep=True, dask="tcp://127.0.0.1:8786")
    assert "pip install 'dcp-reshard-workbench[cluster]'" in str(e.value), str(e.value)
    house_form(e.value, "--dask")


def test_the_workers_read_object_storage_themselves(cluster, damaged, s3):
    """The checkpoint in S3: each worker opens the objects through its own copy of the fsspec
    filesystem (the storage options travel with it), and finds what the local readers find."""
    local, _ = damaged
    for f in local.iterdir():
        s3["fs"].pipe_file(f"bucket/dask/{f.name}", f.read_bytes())
    # credentials as storage options: the worker processes may predate the fixture's environment
    options = {**s3["options"], "key": "testing", "secret": "testing"}
    one = find_file_problems(local, deep=True)
    s3["log"].lines.clear()
    got = find_file_problems(
        "s3://bucket/dask", deep=True, storage_options=options, dask=cluster.scheduler_address
    )
    assert got == one
    fetched = [p for p in s3["log"].gets() if p.endswith(".distcp")]
    assert len(set(fetched)) == 6, s3["log"].lines
