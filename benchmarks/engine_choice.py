"""Is ``method="auto"`` within 10 % of the faster engine, for both latents?
Is ``latent="patch"`` within 1.25x of ``latent="image"``?

    python benchmarks/engine_choice.py            # sweep, check, ~10 minutes
    python benchmarks/engine_choice.py --fit      # also refit the cost model
    python benchmarks/engine_choice.py --backend torch --quick --fit   # ~4 min
    python benchmarks/engine_choice.py --backend cupy --fit      # on a GPU
    python benchmarks/engine_choice.py --backend torch --device cuda --fit
    python benchmarks/engine_choice.py --load results/engine_choice.json
    python benchmarks/engine_choice.py --fit --load A.json,B.json   # pooled
    python benchmarks/engine_choice.py --shapes 96/1/64/15 --budget 0.5

Timings move by 10-30 % between runs on a shared 2-core machine, so each
is a median of 7 interleaved rounds (``--repeats``), ~0.25 s each
(``--budget``); ``results/engine_choice.json`` is the sweep NumPy's speeds
were fitted to.  ``--quick`` sweeps a reduced grid (26 shapes across the
same ranges, the paper's two among them) with 3 repeats: about 4 minutes
on 2 cores for torch, for calibrating here; ``--max-seconds`` (``--quick``: 220)
stops timing new shapes (what was timed is still checked, fitted, saved).

Sweeps a grid of shapes (image size, channels, number of kernels, kernel
size), times the EM statistics of a batch (``_em.batch_statistics``, as
the EM loop calls it: the chunked plan and the log-likelihood, one host
read at the end) of ``im2col`` and of ``fft`` (row transforms as DFT GEMMs,
sums over kernel rows as GEMMs) for ``latent="image"`` and ``"patch"``, on
``--backend``'s arrays (NumPy; torch tensors on ``--device``; CuPy),
interleaved, and prints per shape which engine is faster, what ``auto``
picks on that backend (``_engines.choose_method``: the cost model of its
profile, ``_cost.profile``), whether the pick is within 10 % of the faster
one, and the patch/image ratio of the faster engines.  ``--fit`` fits the
per-operation speeds of the cost model (``calm_np._engines._cost.SPEEDS``,
the backend's profile: ``"numpy"``, ``"torch-cpu"`` or ``"gpu"``) to these
timings by non-negative least squares on relative errors, then a search
for the most picks within 10 %, and prints the entry to paste.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

import _perf  # noqa: E402

GRID = dict(size=(16, 28, 48, 96), channels=(1, 3), kernels=(16, 64, 200))
KERNEL_SIZES = (3, 5, 9, 15, 20)
# --quick: 26 (size, channels, K, kernel) across the grid's ranges, the
# paper's two (MNIST padded to 32, STL-10) and the crossover between the
# engines (mid-size kernels on 28-48 pixel images) among them
QUICK = (
    (16, 1, 16, 3), (16, 3, 64, 5), (16, 1, 200, 9), (16, 3, 16, 13),
    (28, 1, 16, 5), (28, 1, 64, 9), (28, 3, 64, 15), (28, 1, 200, 3),
    (28, 1, 64, 20), (28, 3, 200, 5), (32, 1, 64, 20),
    (48, 1, 16, 3), (48, 3, 16, 20), (48, 1, 64, 5), (48, 3, 64, 9),
    (48, 1, 200, 15), (48, 3, 200, 3),
    (64, 1, 64, 9), (64, 3, 16, 15),
    (96, 1, 16, 15), (96, 3, 16, 9), (96, 1, 64, 5), (96, 3, 64, 20),
    (96, 1, 200, 9), (96, 3, 200, 15), (96, 1, 200, 20),
)  # fmt: skip


def shapes():
    for size, c, k, ks in itertools.product(
        GRID["size"], GRID["channels"], GRID["kernels"], KERNEL_SIZES
    ):
        if ks >= size - 2:
            continue
        if size == 96 and k == 16 and ks in (3, 20):
            continue  # keep the sweep short; neighbours cover these
        yield size, c, k, ks


def measure(size, c, k, ks, repeats, budget, backend):
    """Seconds per image of each engine/latent for one shape on ``backend``
    (a ``_perf.Backend``): medians of ``repeats`` interleaved rounds."""
    from calm_np import _em

    rng = np.random.default_rng(size * 1000 + c * 100 + k + ks)
    # enough images for ~budget seconds with the dense estimate at a nominal
    # rate (50 GFLOP/s on a CPU, 2 TFLOP/s on a GPU); fewer where a pilot on
    # a few images says a call would take over twice the budget
    rate, cap = (2e12, 10000) if backend.on_gpu else (50e9, 2000)
    flops = _perf.dense_flops((c, size, size), k, (ks, ks), 0)
    n = int(np.clip(budget * rate / flops, 2, cap))
    X = rng.standard_normal((n, c, size, size)).astype(np.float32)
    M = (0.3 * rng.standard_normal((k, c, ks, ks))).astype(np.float32)
    Mb = backend.put(M)

    def run(Xb, method, latent):
        options = _em.Options(padding=0, method=method, latent=latent)
        stats = _em.batch_statistics(Xb, Mb, None, options, trusted=True)
        float(stats.log_likelihood)  # one host read: the device has finished
        backend.sync()

    pilot = max(2, n // 8)  # enough images that a call's overhead is shared
    Xb = backend.put(X[:pilot])
    slowest = 0.0
    # on a GPU the first round warms up (kernels compiled, FFT plans made)
    for _ in range(2 if backend.on_gpu else 1):
        slowest = 0.0
        for latent in LATENTS:
            for method in ("im2col", "fft"):
                t = time.perf_counter()
                run(Xb, method, latent)
                slowest = max(slowest, time.perf_counter() - t)
    fitting = max(2, int(budget * pilot / max(slowest, 1e-9)))
    if n > 2 * fitting:
        n = fitting
    Xb = backend.put(X[:n])
    fns = {
        f"{method}/{latent}": functools.partial(run, Xb, method, latent)
        for latent in LATENTS
        for method in ("im2col", "fft")
    }
    med, _ = _perf.interleaved(fns, repeats)  # round-robin: fair ratios
    return {key: value / n for key, value in med.items()}, n


LATENTS = ("image", "patch")


def features(kind, c, k, size, ks, latent):
    """Per-image operation counts of the plans (see _cost._fused_cost)."""
    from calm_np._engines import _cost

    shapes = (1, c, size, size), (k, c, ks, ks)
    return _cost._fused_features(kind, *shapes, latent)


def fit(rows, profile="numpy"):
    """Speeds for the cost model: non-negative least squares on relative
    errors over all timings, then a coordinate search (each speed scaled by
    a few factors in turn, kept when more (shape, latent) picks land within
    10 % of the faster engine, ties broken by the picks' total excess)."""
    from scipy.optimize import nnls

    from calm_np._engines import _cost

    names = list(_cost._FEATURES)
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
    for start in (speeds, dict(_cost.SPEEDS[profile])):
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
    ap.add_argument("--backend", default="numpy", choices=("numpy", "torch", "cupy"))
    ap.add_argument("--device", default="cpu", help="torch's device: cpu or cuda")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="26 shapes, 3 repeats, at most ~220 s of timing",
    )
    ap.add_argument("--repeats", type=int, default=None, help="7 (--quick: 3)")
    ap.add_argument("--budget", type=float, default=0.25, help="seconds per timing")
    ap.add_argument("--threads", type=int, default=_perf.n_cpus())
    ap.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="stop timing new shapes after this long (the rest is skipped)",
    )
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
    repeats = args.repeats or (3 if args.quick else 7)
    budget = args.budget
    if args.quick and args.max_seconds is None:
        args.max_seconds = 220.0
    only = None
    if args.shapes:
        only = {tuple(int(v) for v in s.split("/")) for s in args.shapes.split(",")}
    os.environ["CALM_NP_NUM_THREADS"] = str(args.threads)

    from calm_np._engines import _cost

    backend = _perf.Backend(args.backend, args.device)
    profile = _cost.profile(backend.xp, backend.torch_device or backend.device)
    line = _perf.machine_line(args.threads)
    if args.backend != "numpy":
        import torch

        torch.set_num_threads(args.threads)
        line += f"; torch {torch.__version__}"
        if backend.on_gpu:
            torch.backends.cuda.matmul.allow_tf32 = False  # full float32
            line += f"; GPU {torch.cuda.get_device_name(0)}"
    print(line)
    print(
        f"backend {backend.label} (cost profile {profile!r}); dtype float32, "
        f"padding 0; medians of {repeats} interleaved rounds"
    )
    print(
        f"{'H=W':>4} {'c':>2} {'K':>4} {'ks':>3} {'i2c/img':>8} {'fft/img':>8} "
        f"{'i2c/pat':>8} {'fft/pat':>8} {'auto img':>8} {'auto pat':>8} "
        f"{'pat/img':>7}",
        flush=True,
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
        if only is not None:
            todo = sorted(only)
        else:
            todo = list(QUICK if args.quick else shapes())
        grid = [(shape, None) for shape in todo]
    started, skipped = time.perf_counter(), 0
    for (size, c, k, ks), times in grid:
        if times is None:
            spent = time.perf_counter() - started
            if args.max_seconds is not None and spent > args.max_seconds:
                skipped += 1
                continue
            times, _ = measure(size, c, k, ks, repeats, budget, backend)
        rows.append(((size, c, k, ks), times))
        line, best = "", {}
        for latent in LATENTS:
            t = {m: times[f"{m}/{latent}"] for m in ("im2col", "fft")}
            best[latent] = min(t.values())
            auto = backend.choose(c, k, (size, size), (ks, ks), latent)
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
            + ("" if patch <= 1.25 else "  <-- patch above 1.25x"),
            flush=True,
        )
    n = len(rows)
    if skipped:
        print(f"({skipped} shapes skipped: --max-seconds {args.max_seconds:g} spent)")
    print(
        f"(ms per image, {args.threads} threads; 'auto' = the pick and its time "
        "over the faster engine's, * above 1.10; 'pat/img' = faster patch over "
        "faster image; "
        f"{time.perf_counter() - started:.0f} s)\n"
        f"auto within 10 % of the faster engine: {ok}/{2 * n} (shape, latent) "
        f"-> {'met' if ok == 2 * n else 'NOT met'}\n"
        f"patch <= 1.25x image: {ok_patch}/{n} shapes "
        f"-> {'met' if ok_patch == n else 'NOT met'}"
    )
    if args.save:
        Path(args.save).write_text(json.dumps(rows))
    if args.fit and rows:
        speeds = fit(rows, profile)
        score, _ = _score(rows, speeds)
        print(
            f"fitted speeds: {score}/{2 * n} picks within 10 % (the current "
            f"{profile!r} speeds: {_score(rows, _cost.SPEEDS[profile])[0]}); "
            f"paste into calm_np/_engines/_cost.py:"
        )
        print(f'SPEEDS["{profile}"] = {{')
        for name, value in speeds.items():
            print(f'    "{name}": {value:.3g},')
        print("}")
    return rows


if __name__ == "__main__":
    main()
