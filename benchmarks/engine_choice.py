"""Is ``method="auto"`` within 10 % of the faster engine?  (goal 3)

    python benchmarks/engine_choice.py            # sweep, check, ~3 minutes
    python benchmarks/engine_choice.py --fit      # also refit the cost model

Sweeps a grid of shapes (image size, channels, number of kernels, kernel
size), times the fused NumPy statistics of ``im2col`` and of ``fft`` (row
transforms as DFT GEMMs, sums over kernel rows as GEMMs), and prints per
shape which is faster, what ``auto`` picks, and whether the pick is within
10 % of the faster one.  ``--fit`` fits the per-operation speeds of the cost
model (``calm_np._fused._SPEED``) to these timings by non-negative least
squares on relative errors and prints the values to paste.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

import _perf  # noqa: E402

GRID = dict(size=(16, 28, 48, 96), channels=(1, 3), kernels=(16, 64, 200))
KERNEL_SIZES = (3, 5, 9, 15, 20)


def shapes():
    for size, c, k, ks in itertools.product(
        GRID["size"], GRID["channels"], GRID["kernels"], KERNEL_SIZES
    ):
        if ks >= size - 2:
            continue
        if size == 96 and k == 16 and ks in (3, 20):
            continue  # keep the sweep short; neighbours cover these
        yield size, c, k, ks


def measure(size, c, k, ks, repeats, budget):
    from calm_np import _em

    rng = np.random.default_rng(size * 1000 + c * 100 + k + ks)
    # enough images for ~budget seconds with the dense estimate at 50 GFLOP/s
    flops = _perf.dense_flops((c, size, size), k, (ks, ks), 0)
    n = int(np.clip(budget * 50e9 / flops, 2, 2000))
    X = rng.standard_normal((n, c, size, size)).astype(np.float32)
    M = (0.3 * rng.standard_normal((k, c, ks, ks))).astype(np.float32)

    def run(method):
        batch = _em._Batch(X, M, None, 0, method)
        return batch.engine.statistics(batch.kernels, batch.log_weights, np.float64)

    fns = {"im2col": lambda: run("im2col"), "fft": lambda: run("fft")}
    med, _ = _perf.interleaved(fns, repeats)  # round-robin: fair ratios
    return {key: value / n for key, value in med.items()}, n


def features(kind, c, k, size, ks):
    """Per-image operation counts of the fused paths (see _fused._fused_cost)."""
    from calm_np import _fused

    return _fused._fused_features(kind, (1, c, size, size), (k, c, ks, ks))


def fit(rows):
    """Non-negative speeds minimising relative error over all timings."""
    from scipy.optimize import nnls

    from calm_np import _fused

    names = list(_fused._FEATURES)
    A, b = [], []
    for (size, c, k, ks), times in rows:
        for kind, engine in (("im2col", "im2col"), ("rowdft", "fft")):
            f = features(kind, c, k, size, ks)
            t = times[engine]
            A.append([f.get(name, 0.0) / t for name in names])
            b.append(1.0)
    seconds, _ = nnls(np.asarray(A), np.asarray(b))
    return {
        name: (1.0 / s if s > 0 else float("inf"))
        for name, s in zip(names, seconds, strict=True)
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--budget", type=float, default=0.1, help="seconds per timing")
    ap.add_argument("--threads", type=int, default=_perf.n_cpus())
    ap.add_argument("--fit", action="store_true")
    ap.add_argument("--save", help="write the timings to this JSON file")
    ap.add_argument("--load", help="read timings from JSON instead of timing")
    args = ap.parse_args(argv)
    os.environ["CALM_NP_NUM_THREADS"] = str(args.threads)

    import array_api_compat.numpy as xp

    from calm_np import _engines, _fused

    print(_perf.machine_line(args.threads) + "; dtype float32, padding 0")
    print(
        f"{'H=W':>4} {'c':>2} {'K':>4} {'ks':>3} {'im2col':>9} {'fft':>9} "
        f"{'model i/f':>10} {'faster':>7} {'auto':>7} {'auto/best':>9}"
    )
    rows, ok = [], 0
    loaded = None
    if args.load:
        loaded = {tuple(r[0]): r[1] for r in json.loads(Path(args.load).read_text())}
    for size, c, k, ks in shapes():
        if loaded is not None:
            times = loaded[(size, c, k, ks)]
        else:
            times, _ = measure(size, c, k, ks, args.repeats, args.budget)
        rows.append(((size, c, k, ks), times))
        best = min(times, key=times.get)
        auto = _engines.choose_method(xp, c, k, (size, size), (ks, ks))
        ratio = times[auto] / times[best]
        image, kernels = (1, c, size, size), (k, c, ks, ks)
        model = _fused._fused_cost("im2col", image, kernels) / _fused._fused_cost(
            "rowdft", image, kernels
        )
        ok += ratio <= 1.10
        print(
            f"{size:4d} {c:2d} {k:4d} {ks:3d} {1e3 * times['im2col']:9.3f} "
            f"{1e3 * times['fft']:9.3f} {model:10.2f} {best:>7} {auto:>7} "
            f"{ratio:9.2f}" + ("" if ratio <= 1.10 else "  <-- more than 10 % slower")
        )
    print(
        "(ms per image, 2 threads; 'model i/f' = modelled im2col/fft time)\n"
        f"goal 3: auto within 10 % of the faster engine on {ok}/{len(rows)} shapes"
        f" -> {'met' if ok == len(rows) else 'NOT met'}"
    )
    if args.save:
        Path(args.save).write_text(json.dumps(rows))
    if args.fit:
        speeds = fit(rows)
        print("fitted speeds (paste into calm_np._fused._SPEED):")
        print("    " + ", ".join(f'"{k}": {v:.3g}' for k, v in speeds.items()))
    return rows


if __name__ == "__main__":
    main()
