import os
import sys

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
