"""The worker threads of NumPy's chunked passes: a leaf (imports only ``_xp``).

NumPy releases the GIL inside its kernels but runs each on one core, so the
engines (``_engines``) and the probe (``_probe``) spread chunks of work over
threads here.  PyTorch on the CPU does the same: its own intra-op threads
meet at a barrier after every operation, which costs little on an idle
machine and a great deal on a busy one (a thread that waits for a
descheduled sibling), so each worker runs its chunks on one torch thread.
A GPU (CuPy, PyTorch on CUDA) parallelises inside each operation and runs
the chunks in order.
"""

from __future__ import annotations

import contextlib
import os
import threading

from ._xp import single_threaded_blas

__all__ = ["executor", "n_threads", "parallel_chunks"]


def n_threads():
    """Worker threads: ``CALM_NP_NUM_THREADS`` or the CPUs this process may use.

    The one check of that variable (the command line calls this up front).
    """
    env = os.environ.get("CALM_NP_NUM_THREADS", "").strip()
    if env:
        if not (env.isdigit() and int(env) >= 1):
            raise ValueError(
                f"CALM_NP_NUM_THREADS={env!r} is not an integer >= 1 (a positive "
                "integer number of worker threads); set it to e.g. 2 or unset it"
            )
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


_POOL = {"lock": threading.Lock(), "executor": None, "size": 0}


def executor(size):
    """A shared thread pool of at least ``size`` workers.

    A larger request replaces the shared pool but never shuts the old one
    down: a caller that already holds it (another thread's pass) keeps
    submitting to it, and its idle workers exit once nobody refers to it.
    """
    from concurrent.futures import ThreadPoolExecutor

    with _POOL["lock"]:
        if _POOL["executor"] is None or _POOL["size"] < size:
            _POOL["executor"] = ThreadPoolExecutor(size, "calm_np")
            _POOL["size"] = size
        return _POOL["executor"]


@contextlib.contextmanager
def _torch_one_thread():
    """This thread's PyTorch operations on one thread (its OpenMP and MKL
    settings are per thread), restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def parallel_chunks(n, chunk, work, make_acc, threads="numpy"):
    """Run ``work(start, stop, acc)`` over chunks of ``range(n)``.

    With ``threads`` (``"numpy"`` or ``"torch"``: whose operations run on
    one thread inside each worker), thread ``t`` of ``T`` takes chunks ``t,
    t + T, t + 2T, …`` (a static assignment) and adds into its own
    accumulator (``make_acc()``); the accumulators come back in thread
    order.  Which chunk lands in which sum never depends on timing,
    so a pass is bit-for-bit reproducible.  Without ``threads`` the chunks
    run in order into one accumulator, BLAS as configured.
    """
    starts = list(range(0, n, chunk))

    def serial(acc):
        for s in starts:
            work(s, min(s + chunk, n), acc)
        return [acc]

    if not threads:
        return serial(make_acc())
    count = min(n_threads(), len(starts))
    inner = _torch_one_thread if threads == "torch" else contextlib.nullcontext
    with single_threaded_blas() as single:
        if count == 1 or not single:  # (without threadpoolctl: no threads)
            return serial(make_acc())

        def run(t):
            acc = make_acc()
            with inner():
                for s in starts[t::count]:
                    work(s, min(s + chunk, n), acc)
            return acc

        pool = executor(count)
        futures = [pool.submit(run, t) for t in range(count)]
        return [f.result() for f in futures]
