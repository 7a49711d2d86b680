import logging
import os
import re
import socket
import sys
import warnings

os.environ.setdefault("MPLBACKEND", "Agg")
# the parsed-metadata cache (formats.metadata_cache) writes to a directory of this run, never
# to the user's ~/.cache (subprocesses of the tests inherit it)
if "XDG_CACHE_HOME" not in os.environ:
    import tempfile

    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="wb-test-cache-")

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# CI boxes have 2 cores: keep the default profile moderate; WB_HYPOTHESIS=thorough for more.
settings.register_profile("default", max_examples=150, deadline=None)
settings.register_profile("thorough", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("WB_HYPOTHESIS", "default"))


@pytest.fixture(autouse=True)
def _no_pyplot_leaks():
    yield
    if "matplotlib.pyplot" in sys.modules:
        import matplotlib.pyplot as plt

        leaked = plt.get_fignums()
        plt.close("all")
        assert leaked == [], f"test left pyplot figures open: {leaked}"


@pytest.fixture(autouse=True)
def _fresh_dtensor_caches():
    # DTensor's sharding-propagation caches key on specs, not on the process group's rank: a test
    # that ran a build as rank r under the fake group in this worker would hand its meshes to the
    # next test's rank 0 (seen under xdist). Cleared after every test that loaded DTensor.
    yield
    if "torch.distributed.tensor" in sys.modules:
        from workbench.torch_bridge.capture import fresh_dtensor_caches

        fresh_dtensor_caches()


# ----------------------------------------------------------------------------- real scenarios
@pytest.fixture(scope="session")
def scenario_runs(tmp_path_factory):
    """Every broken-checkpoint kind of `runs.SCENARIO_KINDS` saved by real gloo processes, and
    what a real dcp.load of each into its load layouts did: ``(scenarios, loads)``, made once per
    test session. Under xdist the workers share one copy (the first to take the lock makes it in
    the session's base directory; the others read its pickled results). Tests read the
    directories and never write into them (copy one to damage it)."""
    import pickle
    import shutil

    from filelock import FileLock

    from workbench.torch_bridge.runs import SCENARIO_KINDS, load_scenarios, make_checkpoints

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # this session's directory, above every worker's own
    root = base / "scenario_runs"
    with FileLock(str(base / "scenario_runs.lock")):
        made = base / "scenario_runs.pkl"
        if made.exists():
            return pickle.loads(made.read_bytes())
        shutil.rmtree(root, ignore_errors=True)  # left by a worker that failed half-way
        scenarios = make_checkpoints(SCENARIO_KINDS, root)
        out = (scenarios, load_scenarios(scenarios))
        made.write_bytes(pickle.dumps(out))
        return out


# ----------------------------------------------------------------------------- object storage
class _Requests(logging.Handler):
    """The S3 server's own request log (werkzeug logs one line per request it served)."""

    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())

    def gets(self) -> list[str]:
        """Paths of the objects fetched (GET of a key, not of a bucket listing)."""
        out = []
        for line in self.lines:
            m = re.search(r"GET (/[^ ?]+)[^ ]* HTTP", line)  # 206 lines are coloured
            if m and m.group(1).count("/") >= 2:
                out.append(m.group(1))
        return out


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on a free port, dummy credentials, a bucket ``bucket`` with a real
    checkpoint at ``s3://bucket/ckpt`` written by torch's FsspecWriter; yields the storage
    options and the request log."""
    # torch and moto load only where a test asks for the server
    import torch
    from moto.server import ThreadedMotoServer
    from torch.distributed.checkpoint import save
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter

    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    # moto keeps its buckets per process, not per server: another module's server in this
    # (xdist) process left its bucket behind
    import urllib.request

    reset = urllib.request.Request(f"http://127.0.0.1:{port}/moto-api/reset", method="POST")
    urllib.request.urlopen(reset, timeout=30).close()
    log = _Requests()
    werkzeug = logging.getLogger("werkzeug")
    werkzeug.addHandler(log)
    level = werkzeug.level
    werkzeug.setLevel(logging.INFO)
    try:
        options = {"client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}"}}
        import fsspec

        fs = fsspec.filesystem("s3", skip_instance_cache=True, **options)
        fs.mkdir("bucket")
        sd = {
            "w": torch.arange(32.0).reshape(8, 4),
            "b": torch.arange(4).to(torch.bfloat16),
            "step": 3,
        }
        with warnings.catch_warnings():  # "assuming the intent is to save in a single process"
            warnings.simplefilter("ignore", UserWarning)
            save(sd, storage_writer=FsspecWriter("s3://bucket/ckpt", **options), no_dist=True)
        yield {"options": options, "port": port, "log": log, "fs": fs}
    finally:
        werkzeug.removeHandler(log)
        werkzeug.setLevel(level)
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ----------------------------------------------------------------------------- xdist scheduling
def pytest_itemcollected(item):
    """Under ``--dist loadgroup`` (make test), the tests of a module that share a module-scoped
    fixture (a real gloo run, a server, a capture) form one group: one worker runs them, so the
    fixture is set up once, not once per worker that received some of them (xdist's plain load
    scheduling splits a module across workers). xdist sends the largest groups first, so these
    long units start early instead of ending the run on one worker. An explicit ``xdist_group``
    mark (the Dask cluster's) is kept. (Marked as each item is collected: xdist reads the marks
    into the node ids in its own ``pytest_collection_modifyitems``.)"""
    if item.get_closest_marker("xdist_group") is not None:
        return
    defs = item._fixtureinfo.name2fixturedefs
    if any(d[-1].scope == "module" for d in defs.values()):
        item.add_marker(pytest.mark.xdist_group(item.module.__name__))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
    # (in the xdist controller) loadgroup carries the group in the node id, "<id>@<group>";
    # pytest 9.2 drops it (pytest-xdist#1386; pyproject pins pytest < 9.2) and then schedules
    # every test alone, each module fixture set up on both workers: stop instead of running
    # silently over budget. The Dask cluster's module, marked in its source, is the witness.
    cluster = [i for i in ids if i.startswith("tests/test_cluster.py::")]
    if node.config.getvalue("dist") == "loadgroup" and cluster and "@" not in cluster[0]:
        raise pytest.UsageError(
            f"{cluster[0]}: xdist_group mark missing from the node id (--dist loadgroup would "
            "not group the tests). Install pytest < 9.2 (the dev extra's pin) until "
            "pytest-xdist#1386 is fixed."
        )
