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
