"""Shared helpers of the performance benchmarks (machine, peak, data, timing).

Every timing here is a median over interleaved repeats after a warm-up: the
machines these run on are shared, so calm_np and the reference are always
measured side by side in the same loop and compared by their ratio.
"""

from __future__ import annotations

import gzip
import os
import platform
import resource
import statistics
import time
from pathlib import Path

import numpy as np

FASHION = Path("/usr/share/datasets/fashion-mnist")

# The two setups of the issue.
SETUPS = {
    "mnist": dict(
        image=(1, 28, 28), n_kernels=64, kernel=(20, 20), padding=2, batch=1000
    ),
    "stl10": dict(
        image=(3, 96, 96), n_kernels=200, kernel=(15, 15), padding=0, batch=200
    ),
}


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover - not Linux
        pass
    return platform.processor() or platform.machine()


def n_cpus():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1


def rss_mb():
    """Current resident set size in MB (Linux), else the peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:  # pragma: no cover
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_parts_mb():
    """``(total, anonymous, file-backed)`` resident MB (Linux; else total only).

    File-backed pages of a memmap that was read stay mapped (and counted in
    the RSS) until the kernel needs them: they are page cache, not memory
    the process allocated.  The anonymous part is what the computation uses.
    """
    fields = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key = line.split(":", 1)[0]
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                fields[key] = int(line.split()[1]) / 1024
    except OSError:  # pragma: no cover
        total = rss_mb()
        return total, total, 0.0
    total = fields.get("VmRSS", rss_mb())
    return total, fields.get("RssAnon", total), fields.get("RssFile", 0.0)


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sgemm_peak(threads=None, size=2048, repeats=7):
    """Measured NumPy float32 GEMM speed (GFLOP/s), median of ``repeats``."""
    a = np.random.default_rng(0).random((size, size), dtype=np.float32)
    b = a.copy()
    out = np.empty_like(a)
    ctx = _blas_threads(threads)
    with ctx:
        np.matmul(a, b, out=out)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            np.matmul(a, b, out=out)
            times.append(time.perf_counter() - t)
    return 2 * size**3 / statistics.median(times) / 1e9


def _blas_threads(threads):
    import contextlib

    if threads is None:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(threads, user_api="blas")


def machine_line(threads):
    import scipy

    return (
        f"machine: {cpu_model()}, {n_cpus()} CPUs, {threads} threads; "
        f"numpy {np.__version__}, scipy {scipy.__version__}"
    )


def dense_flops(image, n_kernels, kernel, padding):
    """Flops per image of the dense E-step plus M-step (2·K·D·L each)."""
    c, H, W = image
    kh, kw = kernel
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    L = (H + 2 * ph - kh + 1) * (W + 2 * pw - kw + 1)
    return 2 * (2 * n_kernels * c * kh * kw * L)


def load_images(setup, n, seed=0):
    """``n`` float32 images for a setup.

    MNIST: Fashion-MNIST training images scaled to [0, 1] (random images of
    the same shape when the files are missing).  STL-10: standard-normal
    images (per-image ZCA-whitened STL-10 images have this scale; timings do
    not depend on the content).
    """
    c, H, W = SETUPS[setup]["image"]
    rng = np.random.default_rng(seed)
    if setup == "mnist":
        path = FASHION / "train-images-idx3-ubyte.gz"
        if path.exists():
            with gzip.open(path) as f:
                raw = np.frombuffer(f.read(), np.uint8, offset=16)
            X = raw.reshape(-1, 1, 28, 28)[:n].astype(np.float32) / 255
            if X.shape[0] == n:
                return X, "Fashion-MNIST train images / 255"
        return rng.random((n, c, H, W), dtype=np.float32), "uniform random"
    return rng.standard_normal((n, c, H, W)).astype(np.float32), "standard normal"


def init_kernels(X, n_kernels, kernel, padding, seed=0):
    """Kernels = random patches of the (padded) images, as an init would pick."""
    rng = np.random.default_rng(seed)
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    Xp = np.pad(X, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    kh, kw = kernel
    n, _, Hp, Wp = Xp.shape
    idx = rng.integers(n, size=n_kernels)
    ys = rng.integers(Hp - kh + 1, size=n_kernels)
    xs = rng.integers(Wp - kw + 1, size=n_kernels)
    M = np.stack(
        [Xp[i, :, y : y + kh, x : x + kw] for i, y, x in zip(idx, ys, xs, strict=True)]
    )
    return np.ascontiguousarray(M, dtype=X.dtype)


def interleaved(fns, repeats, warmup=1):
    """Median seconds of each callable, run round-robin ``repeats`` times.

    Each round starts one callable later than the last, so every callable
    follows each other one equally often: a callable right after torch's
    reference otherwise pays for its OpenMP threads still spinning (the
    first row after the reference ran up to 20 % slower than the same
    engine a row later)."""
    for f in fns.values():
        for _ in range(warmup):
            f()
    keys = list(fns)
    times = {k: [] for k in keys}
    for r in range(repeats):
        shift = r % len(keys)
        for k in keys[shift:] + keys[:shift]:
            t = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}, times


class Backend:
    """Where calm_np's arrays live for a benchmark row.

    ``name`` is ``numpy``, ``torch`` or ``cupy``; ``device`` is ``cpu`` or a
    CUDA device (CuPy: always CUDA); ``label`` says both (``torch:cuda``);
    ``put(ndarray)`` moves a host float32 array there; ``sync()`` waits for
    the device (a no-op on the CPU); ``ref_device`` is the torch device the
    reference runs on beside it (CUDA for the GPU rows, else the CPU);
    ``xp`` is the array-API namespace calm_np sees; ``torch_device`` the
    torch device of the arrays (``None`` for NumPy and CuPy).
    """

    def __init__(self, name, device="cpu"):
        from calm_np import evaluation

        if name not in ("numpy", "torch", "cupy"):
            raise ValueError(f"backend must be numpy, torch or cupy, got {name!r}")
        device = "cpu" if device in (None, "") else device
        if name == "numpy" and device != "cpu":
            device = "cpu"  # NumPy rows run on the CPU whatever --device says
        if name == "cupy":
            device = "cuda"
        move, _ = evaluation.array_mover(
            name, None if name == "cupy" else device, "float32"
        )
        self.name, self.device, self.put = name, device, move
        self.on_gpu = device != "cpu"
        self.label = name if name == "numpy" else f"{name}:{device}"
        self.ref_device = "cuda" if self.on_gpu else "cpu"
        if name == "numpy":
            import array_api_compat.numpy as xp
        elif name == "torch":
            import array_api_compat.torch as xp
        else:
            import array_api_compat.cupy as xp
        self.xp = xp
        self.torch_device = None
        if name == "torch":
            import torch

            self.torch_device = torch.device(device)

    def sync(self):
        if not self.on_gpu:
            return
        if self.name == "cupy":
            import cupy

            cupy.cuda.Device().synchronize()
        else:
            import torch

            torch.cuda.synchronize()

    def choose(self, c, k, padded_shape, kernel_shape, latent="image"):
        """What ``method="auto"`` runs for these shapes on this backend."""
        from calm_np._engines import choose_method

        args = (c, k, tuple(padded_shape), tuple(kernel_shape), latent)
        return choose_method(self.xp, *args, device=self.torch_device)

    def __repr__(self):
        return f"Backend({self.label})"


def backends(names, device="cpu"):
    """:class:`Backend` for each comma-separated name, in order."""
    return [Backend(name.strip(), device) for name in names.split(",") if name.strip()]


def torch_sync(device):
    """Wait for torch's work on ``device`` (a no-op on the CPU)."""
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def calm_epoch(X, kernels, batch, padding, method, sync=None):
    """One exact batch-EM epoch with calm_np on any namespace.

    What the EM loop runs: the statistics of every batch (trusted: images
    and kernels are the benchmark's own, checked nowhere per batch, as the
    estimator's loop), summed, then one M-step, then one host read of the
    objective, so that a GPU has finished before the clock stops (and
    ``sync()``, e.g. ``torch.cuda.synchronize``).  Returns the new kernels,
    the mask of updated ones and the summed log-likelihood (a float).
    """
    from calm_np import _em

    options = _em.Options(padding=padding, method=method)
    total = None
    for s in range(0, X.shape[0], batch):
        stats = _em.batch_statistics(
            X[s : s + batch], kernels, None, options, trusted=True
        )
        total = stats if total is None else total + stats
    new, ok = total.m_step()
    ll = float(total.log_likelihood)
    if sync is not None:
        sync()
    return new, ok, ll


def reference_epoch(Xt, Mt, batch, padding):
    """The reference's epoch (``reference_torch.epoch``), finished: its
    summed log-likelihood read to the host (and CUDA synchronized)."""
    import reference_torch

    new, total = reference_torch.epoch(Xt, Mt, batch_size=batch, padding=padding)
    ll = float(total)
    torch_sync(Xt.device)
    return new, ll
