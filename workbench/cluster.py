"""Spreading independent tasks over an existing Dask cluster (``check --deep --dask ADDRESS``):
connect to the user's scheduler, map a top-level function over small task records with
``client.map``, and hand the results back in task order as they complete (``as_completed``).
No scheduling of our own: Dask's scheduler places the tasks.

Tasks carry where to read (a path or an fsspec location), never file contents: the workers open
the files themselves. Every failure is one `WorkbenchError`: an unreachable scheduler (naming
the address), a cluster without workers, a worker without the package (the task's function
cannot be unpickled there), a task that raised (naming the item it was given).

Imports errors; ``distributed`` only lazily (the ``cluster`` extra), when a cluster is used.
Never torch.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from .errors import WorkbenchError, missing_extra

__all__ = ["cluster_client", "map_on_cluster"]

_WORDS = 300  # characters of a library's own message kept in ours


def _distributed():
    try:
        import distributed  # the cluster extra: only when a Dask cluster is used
    except ImportError as e:
        raise missing_extra(e, "cluster", "--dask") from None
    return distributed


@contextmanager
def cluster_client(dask, function: Callable) -> Iterator[Any]:
    """A ``distributed.Client`` for ``dask`` ready to run ``function``: a scheduler address
    (``tcp://host:8786``; connected here within Dask's ``distributed.comm.timeouts.connect`` and
    closed on exit) or a ``distributed.Client`` the caller already holds (used as it is, left
    open). The cluster has workers and every one of them can import ``function`` (asked before
    any task is sent: a task a worker cannot unpickle leaves it unable to talk to the
    scheduler, and the task waits forever)."""
    distributed = _distributed()
    if isinstance(dask, distributed.Client):
        _check_workers(dask, function)
        yield dask
        return
    if not isinstance(dask, str) or not dask.strip():
        raise WorkbenchError(
            "dask",
            f"{dask!r} ({type(dask).__name__})",
            "a Dask scheduler address such as tcp://10.0.0.5:8786, or a distributed.Client",
            "Pass the address the scheduler printed, or Client(address).",
        )
    try:
        client = distributed.Client(dask, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as e:  # refused, timed out, a malformed address
        raise WorkbenchError(
            dask,
            f"cannot reach the Dask scheduler: {type(e).__name__}: {e}"[:_WORDS],
            "a running scheduler at this address, as distributed.Client(address) connects",
            "Start the cluster (dask scheduler, dask worker) or fix the address; a slow "
            "network may need a longer DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT.",
            address=dask,
        ) from None
    try:
        _check_workers(client, function)
        yield client
    finally:
        client.close()


def map_on_cluster(
    client,
    function: Callable,
    tasks: Sequence,
    names: Sequence[str],
    done: Callable[[int], None] | None = None,
) -> list:
    """``[function(task) for task in tasks]`` computed by the cluster's workers (one Dask task
    each, ``pure=False``), in task order; ``done(i)`` is called as task ``i`` completes (a
    progress bar). ``function`` must be a top-level function of an installed module (the workers
    import it; ``client`` from `cluster_client`); ``names[i]`` names task ``i`` in errors. The
    first failure cancels the rest."""
    distributed = _distributed()
    address = client.scheduler.address
    if not tasks:
        return []
    futures = client.map(function, tasks, pure=False)
    index = {f.key: i for i, f in enumerate(futures)}
    results: list = [None] * len(tasks)
    try:
        for future in distributed.as_completed(futures, loop=client.loop, raise_errors=False):
            i = index[future.key]
            if future.status == "error":
                raise _task_error(future.exception(), names[i], address)
            results[i] = future.result()
            if done is not None:
                done(i)
    finally:
        client.cancel(futures)
    return results


def _check_workers(client, function: Callable) -> None:
    """The cluster has workers and every one can import ``function`` (the same package and
    version as here)."""
    address = client.scheduler.address
    if not client.scheduler_info().get("workers"):
        raise WorkbenchError(
            str(address),
            "the Dask scheduler has no workers",
            "at least one worker connected to the scheduler",
            "Start workers (dask worker ADDRESS) and retry.",
            address=address,
        )
    module, qualname = function.__module__, function.__qualname__
    by_name = pickle.dumps(function)  # a reference (module and name), as the tasks carry it

    def probe() -> str | None:
        # pickled by value (a nested function): it runs on a worker without the package
        import pickle

        try:
            pickle.loads(by_name)  # imports the module as unpickling the tasks will
        except Exception as e:  # report, never raise: the worker stays up
            return f"{type(e).__name__}: {e}"
        return None

    package = module.split(".")[0]
    for worker, fault in sorted(client.run(probe).items()):
        if fault is None:
            continue
        missing = fault.startswith(("ModuleNotFoundError", "ImportError"))
        raise WorkbenchError(
            str(address),
            (
                f"the Dask worker {worker} cannot "
                + (f"import {package}" if missing else f"find {module}.{qualname}")
                + f": {fault}"
            )[:_WORDS],
            f"the same {package} installed on every worker as here",
            "Install this version of dcp-reshard-workbench into the workers' environment, "
            "then restart them.",
            address=address,
            worker=worker,
        )


def _task_error(e: BaseException, name: str, address) -> WorkbenchError:
    """One error for a task that raised on a worker: what it raised, naming its item."""
    if isinstance(e, WorkbenchError):  # already names what it read (a remote fault's URL...)
        return e
    if type(e).__name__ == "KilledWorker":  # Dask gave up after the workers running it died
        return WorkbenchError(
            name,
            f"the Dask workers running its task died: {e}"[:_WORDS],
            f"workers of {address} that stay up while they run one task",
            "Check the workers' logs (a memory limit?), then retry.",
            address=address,
        )
    return WorkbenchError(
        name,
        f"a Dask worker failed on it: {type(e).__name__}: {e}"[:_WORDS],
        f"every worker of {address} reads it at the same path or URL as here",
        "Put the checkpoint where every worker sees it (a shared filesystem, or object storage "
        "by fsspec URL), then retry.",
        address=address,
    )
