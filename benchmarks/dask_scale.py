"""Batch EM on a Dask cluster over a memory-mapped set of MNIST-sized images.

Writes ``--n-images`` (default 200 000) float32 images of 28×28 with planted
patterns plus unit noise to a ``.npy`` file (reused when it exists), wraps the
file as a Dask array whose chunks are read by the workers themselves (the
graph holds the path, never the data), starts a ``LocalCluster`` of 2 worker
processes with one thread each on loopback, and runs EM iterations as
``ConvolutionalMixture.fit`` does for a Dask array: the statistics of each
chunk on its worker (``calm_np._dask.statistics``), the M-step on the client.

Reported per iteration: wall time, bytes moved between processes (the
workers' own transfer logs: what each worker sent, to the other worker or to
the scheduler, by key prefix and on the wire), and at the end each worker's
peak resident memory (which counts the pages of the mapped file it touched
as well as the engine's buffers; ``--chunk`` trades this for more, smaller
statistics messages).  Images never appear in the transfer log; the numbers
are the chunks' statistics and one copy of the kernels per worker.

    python benchmarks/dask_scale.py     # ~70 s per iteration on 2 busy cores
    python benchmarks/dask_scale.py --n-kernels 64 --kernel-size 20 --padding 2

dask[array] and distributed are the ``calm_np[dask]`` extra.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

import calm_np
from calm_np import _dask
from calm_np._engines import choose_method
from calm_np._xp import get_namespace

sys.path.insert(0, str(Path(__file__).parent))

import _perf  # noqa: E402


class MemmapImages:
    """An ``.npy`` file seen as an array; pickles as its path, not its data.

    ``dask.array.from_array`` slices it chunk by chunk on the workers, so
    each worker maps the file and reads only its own chunks.
    """

    def __init__(self, path):
        self.path = str(path)
        mm = np.load(self.path, mmap_mode="r")
        self.shape, self.dtype, self.ndim = mm.shape, mm.dtype, mm.ndim
        self._mm = mm

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.__init__(state["path"])

    def __getitem__(self, index):
        return np.asarray(self._mm[index])  # a view of the mapped pages


def make_images(path, n_images, seed=0, n_patterns=10, size=7, block=10_000):
    """Planted 7×7 patterns (amplitude 3) at random places, plus N(0, 1)."""
    meta = {"n_images": n_images, "seed": seed, "n_patterns": n_patterns}
    meta_path = Path(str(path) + ".json")
    if path.exists() and meta_path.exists():
        if json.loads(meta_path.read_text()) == meta:
            return
    rng = np.random.default_rng(seed)
    patterns = 3.0 * rng.standard_normal((n_patterns, size, size))
    out = np.lib.format.open_memmap(
        path, mode="w+", dtype=np.float32, shape=(n_images, 1, 28, 28)
    )
    for start in range(0, n_images, block):
        n = min(block, n_images - start)
        X = rng.standard_normal((n, 28, 28), dtype=np.float32)
        which = rng.integers(n_patterns, size=n)
        rows = rng.integers(28 - size + 1, size=n)
        cols = rng.integers(28 - size + 1, size=n)
        for i in range(n):
            r, c = rows[i], cols[i]
            X[i, r : r + size, c : c + size] += patterns[which[i]]
        out[start : start + n, 0] = X
    out.flush()
    del out
    meta_path.write_text(json.dumps(meta))


def machine():
    return (
        f"{platform.node()} | {_perf.cpu_model()} | {os.cpu_count()} logical CPUs | "
        f"load average {os.getloadavg()[0]:.1f} at start | Python "
        f"{platform.python_version()}"
    )


def _transfer_state(dask_worker):
    """What this worker has sent so far: totals and a per-prefix breakdown."""
    from dask.utils import key_split

    by_prefix = {}
    wire = 0
    for entry in dask_worker.transfer_outgoing_log:
        wire += int(entry.get("compressed") or 0)
        for key, nbytes in entry["keys"].items():
            prefix = key_split(key)
            by_prefix[prefix] = by_prefix.get(prefix, 0) + int(nbytes)
    return {
        "bytes": dask_worker.transfer_outgoing_bytes_total,
        "wire": wire,
        "messages": len(dask_worker.transfer_outgoing_log),
        "by_prefix": by_prefix,
    }


def _clear_transfer_log(dask_worker):
    dask_worker.transfer_outgoing_log.clear()  # diagnostics only


def _peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_mib():
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _diff(after, before):
    out = {"bytes": 0, "wire": 0, "messages": 0, "by_prefix": {}}
    for worker, state in after.items():
        # the counter is cumulative; the log was cleared before the pass
        out["bytes"] += state["bytes"] - before.get(worker, {"bytes": 0})["bytes"]
        out["wire"] += state["wire"]
        out["messages"] += state["messages"]
        for prefix, nbytes in state["by_prefix"].items():
            out["by_prefix"][prefix] = out["by_prefix"].get(prefix, 0) + nbytes
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=200_000)
    parser.add_argument("--chunk", type=int, default=2_000, help="images per chunk")
    parser.add_argument("--n-kernels", type=int, default=32)
    parser.add_argument("--kernel-size", type=int, default=7)
    parser.add_argument("--padding", type=int, default=0)
    parser.add_argument("--method", default="auto")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory-limit", default="3GiB")
    parser.add_argument(
        "--data", type=Path, default=Path("/tmp/calm_np_dask_scale/images.npy")
    )
    args = parser.parse_args(argv)

    import dask
    import dask.array as da
    import distributed

    args.data.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    make_images(args.data, args.n_images)
    print(f"data: {args.data} ready in {time.perf_counter() - t0:.1f} s")

    source = MemmapImages(args.data)
    X = da.from_array(
        source,
        chunks=(args.chunk, 1, 28, 28),
        meta=np.empty((0, 0, 0, 0), dtype=source.dtype),
        name="mnist-sized-images",
    )
    K, ks, pad = args.n_kernels, args.kernel_size, args.padding
    Hp = 28 + 2 * pad
    method = args.method
    if method == "auto":
        xp = get_namespace(np.zeros(1))[0]
        method = choose_method(xp, 1, K, (Hp, Hp), (ks, ks))
    print(f"machine: {machine()}")
    print(
        f"versions: numpy {np.__version__}, dask {dask.__version__}, "
        f"distributed {distributed.__version__}, calm_np {calm_np.__version__}"
    )
    print(
        f"images: {X.shape} {X.dtype} ({X.nbytes / 2**20:.0f} MiB on disk), "
        f"{X.numblocks[0]} chunks of {args.chunk}; kernels: ({K}, 1, {ks}, {ks}) "
        f"padding {pad}, method {method}; {args.workers} worker processes x 1 "
        f"thread, memory limit {args.memory_limit} each"
    )

    rng = np.random.default_rng(1)
    sample = np.asarray(source[:: max(1, args.n_images // 1000)])
    r = rng.integers(Hp - ks + 1, size=K) if Hp > ks else np.zeros(K, int)
    c = rng.integers(Hp - ks + 1, size=K) if Hp > ks else np.zeros(K, int)
    padded = np.pad(sample, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    picks = rng.choice(len(sample), size=K, replace=False)
    kernels = np.stack(
        [
            padded[i, :, a : a + ks, b : b + ks]
            for i, a, b in zip(picks, r, c, strict=True)
        ]
    ).astype(np.float32)  # random patches of the data, like init="random_patches"

    cluster = distributed.LocalCluster(
        n_workers=args.workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",  # loopback, any free port (not 8787)
        memory_limit=args.memory_limit,
        silence_logs=logging.ERROR,
    )
    try:
        with distributed.Client(cluster, timeout=120) as client:
            client.wait_for_workers(args.workers, timeout=120)
            start_rss = client.run(_rss_mib)
            # warm-up: imports on the workers, page cache, FFT plans
            t = time.perf_counter()
            stats = _dask.statistics(X, kernels, padding=pad, method=method)
            print(f"warm-up pass: {time.perf_counter() - t:.1f} s")
            stats_bytes = stats.counts.nbytes + stats.sums.nbytes + 8
            rows = []
            for it in range(1, args.iterations + 1):
                new, ok = stats.m_step()
                kernels = np.where(ok[:, None, None, None], new, kernels).astype(
                    np.float32
                )
                client.run(_clear_transfer_log)
                before = client.run(_transfer_state)
                t = time.perf_counter()
                stats = _dask.statistics(X, kernels, padding=pad, method=method)
                seconds = time.perf_counter() - t
                moved = _diff(client.run(_transfer_state), before)
                mean_ll = float(stats.log_likelihood) / stats.n_samples
                rows.append((seconds, moved))
                print(
                    f"iter {it}: {seconds:6.1f} s, {stats.n_samples} images, mean "
                    f"log p(x) {mean_ll:.4f}; moved {moved['bytes'] / 2**20:.2f} "
                    f"MiB ({moved['wire'] / 2**20:.2f} MiB on the wire, "
                    f"{moved['messages']} messages) by key: "
                    + ", ".join(
                        f"{p} {b / 2**10:.0f} KiB"
                        for p, b in sorted(moved["by_prefix"].items())
                    )
                )
            peak = client.run(_peak_rss_mib)
    finally:
        cluster.close(timeout=60)

    times = [s for s, _ in rows]
    moved = [m["bytes"] for _, m in rows]
    wire = [m["wire"] for _, m in rows]
    n_chunks = X.numblocks[0]
    print("\nsummary")
    print(
        f"  time per iteration: median {np.median(times):.1f} s "
        f"(min {min(times):.1f}, max {max(times):.1f}); "
        f"{args.n_images / np.median(times):,.0f} images/s"
    )
    print(
        f"  bytes moved per iteration: {np.median(moved) / 2**20:.2f} MiB by the "
        f"workers' accounting, {np.median(wire) / 2**20:.2f} MiB on the wire; "
        f"images {X.nbytes / 2**20:.0f} MiB (never moved); one chunk's "
        f"statistics {stats_bytes / 2**10:.0f} KiB x {n_chunks} chunks = "
        f"{n_chunks * stats_bytes / 2**20:.2f} MiB upper bound before the tree; "
        f"kernels {kernels.nbytes / 2**10:.0f} KiB"
    )
    for worker in sorted(peak):
        print(
            f"  peak RSS {worker}: {peak[worker]:.0f} MiB "
            f"(after start-up {start_rss[worker]:.0f} MiB; chunk of images "
            f"{args.chunk * 28 * 28 * 4 / 2**20:.1f} MiB)"
        )


if __name__ == "__main__":
    main()
