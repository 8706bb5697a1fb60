"""Peak memory of ``fit`` depends on ``batch_size``, not on the number of images.

    python benchmarks/memory.py                 # 1 000 000 images, ~3 minutes
    python benchmarks/memory.py --n 200000 --keep

Writes MNIST-sized float32 images (28×28, strokes on noise, in [0, 1]) to a
memory-mapped ``.npy`` file (3 GB for a million), then fits
:class:`calm_np.ConvolutionalMixture` on it in a fresh subprocess per case,
sampling the resident set size (RSS) every 50 ms: before the fit, during it
(peak), and after.  Cases: a tenth of the memmap and all of it with the same
``batch_size``, and all of it with a 4× larger ``batch_size``.  The fit is
one EM iteration (two passes over every image) with small kernels, so the
run stays short; memory per batch is set by the model and the batch size,
whatever ``n``.

    python benchmarks/memory.py --fits numpy,torch --fit-n 5000

measures the peak resident memory (RSS, anonymous pages, sampled every
20 ms) a fit of the main job's model (the ``best`` preset's estimator:
256 kernels 7×7, patch latent, whitening, learned σ²; two EM iterations)
adds above the loaded images, in a fresh subprocess per (library, batch
size): ``batch_size`` automatic, 1000, and all the images at once.  The goal
(issue 20): every fit at most 3× NumPy's plain iteration at the automatic
batch, whatever ``batch_size``: the chunked plans hold a few images' maps,
not a batch's.

    python benchmarks/memory.py --calls 6000 60000

measures instead the peak of each call with the default ``batch_size=None``
(the automatic batch) on ``n`` in-memory float32 images 28×28 with 32
kernels 7×7: one plain EM iteration, an iteration with a move (margin
statistics, re-centring, patch pool), ``score`` and ``transform``.  Peaks
are ``tracemalloc``'s (every NumPy allocation, Python's too) above what was
allocated before the call, in a fresh subprocess per ``n``; the goal is no
call over 3× a plain iteration.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

import _perf  # noqa: E402


def make_memmap(path, n, seed=0, block=50_000):
    """``n`` float32 images 28×28 on disk, written a block at a time."""
    X = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, 28, 28))
    rng = np.random.default_rng(seed)
    strokes = (rng.random((8, 10, 10)) > 0.6).astype(np.uint8) * 200
    for s in range(0, n, block):
        m = min(block, n - s)
        part = rng.integers(0, 40, size=(m, 28, 28), dtype=np.uint8)
        which = rng.integers(8, size=m)
        ys, xs = rng.integers(18, size=m), rng.integers(18, size=m)
        for i in range(m):
            y, x = ys[i], xs[i]
            part[i, y : y + 10, x : x + 10] |= strokes[which[i]]
        X[s : s + m] = part / np.float32(255)
    X.flush()
    del X


def _sampled(run, every):
    """``(before, peak, seconds)`` of ``run()``: RSS parts (MB) before it and
    their peaks while it runs, sampled every ``every`` seconds; warnings
    (a short fit's ConvergenceWarning) silenced."""
    import warnings

    before = _perf.rss_parts_mb()
    peak = list(before)
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            now = _perf.rss_parts_mb()
            for i in range(3):
                peak[i] = max(peak[i], now[i])
            time.sleep(every)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run()
    seconds = time.perf_counter() - t0
    stop.set()
    t.join()
    return before, peak, seconds


def _child(path, n, batch_size, n_kernels, kernel_size):
    """Run in a subprocess: fit, print a JSON line with the RSS figures."""
    import calm_np

    X = np.load(path, mmap_mode="r")[:n]
    model = calm_np.ConvolutionalMixture(
        n_kernels,
        kernel_size=kernel_size,
        batch_size=batch_size,
        max_iter=1,
        tol=0.0,
        random_state=0,
    )
    before, peak, seconds = _sampled(lambda: model.fit(X), 0.05)
    after = _perf.rss_parts_mb()
    print(
        json.dumps(
            dict(
                n=n,
                batch_size=batch_size,
                before=before,
                peak=[max(p, a) for p, a in zip(peak, after, strict=True)],
                after=after,
                seconds=seconds,
                bound=float(model.lower_bound_),
            )
        )
    )


def _calls_child(n):
    """Run in a subprocess: tracemalloc peaks of each call on ``n`` images."""
    import tracemalloc
    import warnings

    import calm_np

    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, 1, 28, 28)).astype(np.float32)
    init = rng.standard_normal((32, 1, 7, 7)).astype(np.float32)
    common = dict(kernel_size=7, init=init, random_state=0)
    fitted = calm_np.ConvolutionalMixture(32, max_iter=1, **common)
    calls = {
        # one E-step for the start, one after the M-step
        "iteration": lambda: fitted.fit(X),
        # tol so large that EM "stalls" at once: a move is tried
        "move": lambda: calm_np.ConvolutionalMixture(
            32, max_iter=2, tol=1e9, **common
        ).fit(X),
        "score": lambda: fitted.score(X),
        "transform": lambda: fitted.transform(X),
    }
    out = {"n": n}
    tracemalloc.start()
    for name, call in calls.items():
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            call()
        out[name] = (tracemalloc.get_traced_memory()[1] - base) / 2**20
        out[name + "_s"] = time.perf_counter() - t0
    print(json.dumps(out))


def _fit_child(backend, n, batch_size):
    """Run in a subprocess: RSS growth of a fit of the main job's model."""
    import calm_np
    from calm_np import evaluation

    settings = evaluation.preset("best", "fashion-mnist")
    for key in ("preprocess", "C", "fit_limit"):
        settings.pop(key, None)
    settings.update(max_iter=2, tol=0.0, batch_size=batch_size or None)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, 1, 28, 28)).astype(np.float32)
    if backend == "torch":
        import torch

        X = torch.from_numpy(X)
        torch.zeros(1) + 1  # the library's own start-up memory, before
    model = calm_np.ConvolutionalMixture(**settings, random_state=0)
    before, peak, seconds = _sampled(lambda: model.fit(X), 0.02)
    growth = peak[1] - before[1]
    print(json.dumps(dict(backend=backend, n=n, batch_size=batch_size,
                          growth=growth, seconds=seconds)))  # fmt: skip


def fits_table(backends, n):
    """Peak anonymous RSS growth of fits per library and batch size."""
    print(_perf.machine_line(_perf.n_cpus()))
    print(
        f"main job's model (best preset), {n} float32 images 28x28, 2 EM "
        "iterations; peak anonymous RSS growth above the loaded images, MB"
    )
    rows = []
    for backend in backends:
        for bs in (0, 1000, n):
            cmd = [sys.executable, __file__, "--fit-child", backend, str(n), str(bs)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = next(
        r["growth"] for r in rows if r["backend"] == "numpy" and not r["batch_size"]
    )
    print(f"{'library':8} {'batch_size':>10} {'MB':>7} {'/numpy auto':>11} {'s':>6}")
    ok = True
    for r in rows:
        ratio = r["growth"] / max(base, 1.0)
        ok &= ratio <= 3
        bs = r["batch_size"] or "auto"
        print(f"{r['backend']:8} {bs!s:>10} {r['growth']:7.0f} {ratio:11.2f} "
              f"{r['seconds']:6.1f}")  # fmt: skip
    print(f"goal: every fit <= 3x NumPy's at the automatic batch: "
          f"{'met' if ok else 'NOT met'}")  # fmt: skip
    return rows


def calls_table(ns):
    """Print the peak of each call, and whether none is over 3× an iteration."""
    print(_perf.machine_line(_perf.n_cpus()))
    print(
        "tracemalloc peak above the start of each call, MB; float32 images 28x28, "
        "32 kernels 7x7, batch_size=None"
    )
    names = ("iteration", "move", "score", "transform")
    print(f"{'images':>7} " + " ".join(f"{n:>10}" for n in names) + "  worst/iter")
    rows = []
    for n in ns:
        cmd = [sys.executable, __file__, "--calls-child", str(n)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(r)
        worst = max(r[k] for k in names) / r["iteration"]
        print(
            f"{n:7d} "
            + " ".join(f"{r[k]:7.0f} MB" for k in names)
            + f"  {worst:.2f} ({'met' if worst <= 3 else 'NOT met'})"
        )
        print(f"{'seconds':>7} " + " ".join(f"{r[k + '_s']:10.1f}" for k in names))
    return rows


def _fmt(parts):
    total, anon, file = parts
    return f"{total:.0f}={anon:.0f}+{file:.0f}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--n-kernels", type=int, default=16)
    ap.add_argument("--kernel-size", type=int, default=5)
    ap.add_argument("--dir", default=None, help="where to write the memmap")
    ap.add_argument("--keep", action="store_true", help="keep the memmap file")
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    ap.add_argument(
        "--calls", type=int, nargs="+", help="peaks of fit/move/score/transform"
    )
    ap.add_argument("--calls-child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--fits", help="libraries: peak RSS of the main job's fit")
    ap.add_argument("--fit-n", type=int, default=5000)
    ap.add_argument("--fit-child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.fit_child:
        backend, n, bs = args.fit_child
        return _fit_child(backend, int(n), int(bs))
    if args.fits:
        return fits_table(args.fits.split(","), args.fit_n)
    if args.calls_child:
        return _calls_child(args.calls_child)
    if args.calls:
        return calls_table(args.calls)
    if args.child:
        path, n, bs, k, ks = args.child
        return _child(path, int(n), int(bs), int(k), int(ks))

    folder = Path(args.dir or tempfile.mkdtemp(prefix="calm_np_mem_"))
    path = folder / "images.npy"
    t0 = time.perf_counter()
    make_memmap(path, args.n)
    size_mb = path.stat().st_size / 2**20
    print(_perf.machine_line(_perf.n_cpus()))
    print(
        f"memmap: {args.n} float32 images 28x28 ({size_mb:.0f} MB on disk) written "
        f"in {time.perf_counter() - t0:.0f} s; model: {args.n_kernels} kernels "
        f"{args.kernel_size}x{args.kernel_size}, one EM iteration, float32"
    )
    cases = [
        (args.n // 10, args.batch_size),
        (args.n, args.batch_size),
        (args.n, 4 * args.batch_size),
    ]
    print(
        "RSS in MB, total = anonymous (allocated by the process) + file-backed "
        "(memmap pages read, page cache the kernel reclaims at will)"
    )
    print(
        f"{'images':>9} {'batch':>6} {'before':>14} {'peak':>14} {'after':>14} "
        f"{'anon growth':>11} {'fit s':>7}"
    )
    rows = []
    try:
        for n, bs in cases:
            cmd = [sys.executable, __file__, "--child", str(path), str(n), str(bs)]
            cmd += [str(args.n_kernels), str(args.kernel_size)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(r)
            print(
                f"{r['n']:9d} {r['batch_size']:6d} {_fmt(r['before']):>14} "
                f"{_fmt(r['peak']):>14} {_fmt(r['after']):>14} "
                f"{r['peak'][1] - r['before'][1]:11.0f} {r['seconds']:7.1f}"
            )
    finally:
        if not args.keep:
            path.unlink(missing_ok=True)
            try:
                folder.rmdir()
            except OSError:
                pass
    small, full, big = (r["peak"][1] - r["before"][1] for r in rows)
    # bounded by the batch: 10x the images may not cost more anonymous memory
    # (20 MB of slack for allocator noise)
    verdict = "met" if full <= 1.25 * small + 20 else "NOT met"
    print(
        f"goal 4: peak anonymous growth {full:.0f} MB for {args.n} images vs "
        f"{small:.0f} MB for {args.n // 10} (same batch): {verdict}; "
        f"{big:.0f} MB with a 4x batch"
    )
    return rows


if __name__ == "__main__":
    main()
