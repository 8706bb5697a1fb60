"""Is ``method="auto"`` within 10 % of the faster engine, for both latents?
Is ``latent="patch"`` within 1.25x of ``latent="image"``?

    python benchmarks/engine_choice.py            # sweep, check, ~10 minutes
    python benchmarks/engine_choice.py --fit      # also refit the cost model
    python benchmarks/engine_choice.py --load results/engine_choice.json
    python benchmarks/engine_choice.py --fit --load A.json,B.json   # pooled
    python benchmarks/engine_choice.py --shapes 96/1/64/15 --budget 0.5

Timings move by 10-30 % between runs on a shared 2-core machine, so each
is a median of 7 interleaved rounds (``--repeats``), ~0.25 s each
(``--budget``); ``results/engine_choice.json`` is the sweep the cost model
was fitted to.

Sweeps a grid of shapes (image size, channels, number of kernels, kernel
size), times the EM statistics (``_em._statistics``: the fused NumPy pass
and the log-likelihood) of ``im2col`` and of ``fft`` (row transforms as DFT
GEMMs, sums over kernel rows as GEMMs) for ``latent="image"`` and
``"patch"``, interleaved, and prints per shape which engine is faster, what
``auto`` picks, whether the pick is within 10 % of the faster one, and the
patch/image ratio of the faster engines.  ``--fit`` fits the per-operation
speeds of the cost model (``calm_np._fused_timing._SPEED``) to these timings by
non-negative least squares on relative errors and prints the values to
paste.
"""

from __future__ import annotations

import argparse
import functools
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

    def run(method, latent):
        return _em._statistics(_em._Batch(X, M, None, 0, method, latent))

    fns = {
        f"{method}/{latent}": functools.partial(run, method, latent)
        for latent in LATENTS
        for method in ("im2col", "fft")
    }
    med, _ = _perf.interleaved(fns, repeats)  # round-robin: fair ratios
    return {key: value / n for key, value in med.items()}, n


LATENTS = ("image", "patch")


def features(kind, c, k, size, ks, latent):
    """Per-image operation counts of the fused paths (see _fused_timing._fused_cost)."""
    from calm_np import _fused_timing

    shapes = (1, c, size, size), (k, c, ks, ks)
    return _fused_timing._fused_features(kind, *shapes, latent)


def fit(rows):
    """Speeds for the cost model: non-negative least squares on relative
    errors over all timings, then a coordinate search (each speed scaled by
    a few factors in turn, kept when more (shape, latent) picks land within
    10 % of the faster engine, ties broken by the picks' total excess)."""
    from scipy.optimize import nnls

    from calm_np import _fused_timing

    names = list(_fused_timing._FEATURES)
    A, b = [], []
    for (size, c, k, ks), times in rows:
        for kind, engine in (("im2col", "im2col"), ("rowdft", "fft")):
            for latent in LATENTS:
                f = features(kind, c, k, size, ks, latent)
                t = times[f"{engine}/{latent}"]
                A.append([f.get(name, 0.0) / t for name in names])
                b.append(1.0)
    seconds, _ = nnls(np.asarray(A), np.asarray(b))
    speeds = {
        name: (1.0 / s if s > 0 else 1e30)
        for name, s in zip(names, seconds, strict=True)
    }
    # local searches from the fit and from the model's speeds, each restarted
    # from its result until a restart finds nothing better
    for start in (speeds, dict(_fused_timing._SPEED)):
        best = _search(rows, start)
        while _score(rows, again := _search(rows, best)) > _score(rows, best):
            best = again
        if _score(rows, best) > _score(rows, speeds):
            speeds = best
    return speeds


def _score(rows, speeds):
    """(picks within 10 %, −Σ log excess) of a speed table on ``rows``."""
    ok, excess = 0, 0.0
    for (size, c, k, ks), times in rows:
        for latent in LATENTS:
            cost = {
                engine: sum(
                    v / speeds[name]
                    for name, v in features(kind, c, k, size, ks, latent).items()
                )
                for kind, engine in (("im2col", "im2col"), ("rowdft", "fft"))
            }
            pick = min(cost, key=cost.get)
            t = {m: times[f"{m}/{latent}"] for m in ("im2col", "fft")}
            ratio = t[pick] / min(t.values())
            ok += ratio <= 1.10
            excess += float(np.log(ratio))
    return ok, -excess


def _search(rows, speeds, factors=(0.5, 0.7, 0.85, 1.2, 1.4, 2.0)):
    speeds, best = dict(speeds), _score(rows, speeds)
    improved = True
    while improved:
        improved = False
        for name in speeds:
            for f in factors:
                trial = dict(speeds, **{name: speeds[name] * f})
                score = _score(rows, trial)
                if score > best:
                    speeds, best, improved = trial, score, True
    return speeds


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--budget", type=float, default=0.25, help="seconds per timing")
    ap.add_argument("--threads", type=int, default=_perf.n_cpus())
    ap.add_argument("--fit", action="store_true")
    ap.add_argument("--save", help="write the timings to this JSON file")
    ap.add_argument(
        "--load",
        help="read timings from JSON instead of timing (comma-separated files: "
        "their rows pooled, e.g. to fit one model to several sweeps)",
    )
    ap.add_argument(
        "--shapes",
        help="only these shapes, e.g. 96/1/64/15,28/1/16/5 (size/channels/K/kernel)",
    )
    args = ap.parse_args(argv)
    only = None
    if args.shapes:
        only = {tuple(int(v) for v in s.split("/")) for s in args.shapes.split(",")}
    os.environ["CALM_NP_NUM_THREADS"] = str(args.threads)

    import array_api_compat.numpy as xp

    from calm_np import _engines

    print(_perf.machine_line(args.threads) + "; dtype float32, padding 0")
    print(
        f"{'H=W':>4} {'c':>2} {'K':>4} {'ks':>3} {'i2c/img':>8} {'fft/img':>8} "
        f"{'i2c/pat':>8} {'fft/pat':>8} {'auto img':>8} {'auto pat':>8} "
        f"{'pat/img':>7}"
    )
    rows, ok, ok_patch = [], 0, 0
    if args.load:
        grid = [
            (tuple(shape), times)
            for name in args.load.split(",")
            for shape, times in json.loads(Path(name).read_text())
            if only is None or tuple(shape) in only
        ]
    else:
        grid = [(shape, None) for shape in (shapes() if only is None else sorted(only))]
    for (size, c, k, ks), times in grid:
        if times is None:
            times, _ = measure(size, c, k, ks, args.repeats, args.budget)
        rows.append(((size, c, k, ks), times))
        line, best = "", {}
        for latent in LATENTS:
            t = {m: times[f"{m}/{latent}"] for m in ("im2col", "fft")}
            best[latent] = min(t.values())
            auto = _engines.choose_method(xp, c, k, (size, size), (ks, ks), latent)
            ratio = t[auto] / best[latent]
            ok += ratio <= 1.10
            line += f" {auto[:3]}{ratio:5.2f}" + ("*" if ratio > 1.10 else " ")
        patch = best["patch"] / best["image"]
        ok_patch += patch <= 1.25
        cells = " ".join(
            f"{1e3 * times[f'{m}/{lat}']:8.3f}"
            for lat in LATENTS
            for m in ("im2col", "fft")
        )
        print(
            f"{size:4d} {c:2d} {k:4d} {ks:3d} {cells}{line} {patch:7.2f}"
            + ("" if patch <= 1.25 else "  <-- patch above 1.25x")
        )
    n = len(rows)
    print(
        f"(ms per image, {args.threads} threads; 'auto' = the pick and its time "
        "over the faster engine's, * above 1.10; 'pat/img' = faster patch over "
        "faster image)\n"
        f"auto within 10 % of the faster engine: {ok}/{2 * n} (shape, latent) "
        f"-> {'met' if ok == 2 * n else 'NOT met'}\n"
        f"patch <= 1.25x image: {ok_patch}/{n} shapes "
        f"-> {'met' if ok_patch == n else 'NOT met'}"
    )
    if args.save:
        Path(args.save).write_text(json.dumps(rows))
    if args.fit:
        speeds = fit(rows)
        print("fitted speeds (paste into calm_np._fused_timing._SPEED):")
        print("    " + ", ".join(f'"{k}": {v:.3g}' for k, v in speeds.items()))
    return rows


if __name__ == "__main__":
    main()
