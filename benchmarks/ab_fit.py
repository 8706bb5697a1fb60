"""The main job's EM iterations: this checkout's calm_np against an earlier commit's.

When the machine's speed drifts between runs, a slower main job says nothing
about the code; this script times both codes side by side in one process, so
their ratio is what changed.  The earlier commit's package is unpacked with
``git archive`` into a temporary folder as ``calm_np_ref`` (the package
imports itself relatively, so the copy is self-contained), and both fit the
``best`` preset on the first ``--n`` Fashion-MNIST training images (its
preprocessing, float32), ``--iterations`` EM iterations each, alternating
``--repeats`` times.  It prints each run's seconds per iteration after the
first, and the medians.

    python benchmarks/ab_fit.py --rev 0b8bf94 [--n 10000] [--iterations 4] [--repeats 2]

Run it from the repository root, with ``PYTHONPATH=$PWD`` when another
calm_np is installed.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import _perf  # noqa: E402


def reference_package(rev, folder):
    """Unpack ``rev``'s ``calm_np`` into ``folder`` as ``calm_np_ref``."""
    archive = subprocess.run(
        ["git", "archive", rev, "calm_np"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
    (Path(folder) / "calm_np").rename(Path(folder) / "calm_np_ref")
    sys.path.insert(0, folder)
    import calm_np_ref

    return calm_np_ref


def seconds_per_iteration(module, X, settings, iterations):
    """Seconds of each EM iteration after the first (which adds the start)."""
    stamps = []
    model = module.ConvolutionalMixture(
        **dict(settings, max_iter=iterations, tol=0.0),
        random_state=0,
        callback=lambda est: stamps.append(time.perf_counter()),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(X)
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rev", required=True, help="the earlier commit")
    ap.add_argument("--n", type=int, default=10000, help="training images fitted")
    ap.add_argument("--iterations", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)

    import calm_np
    from calm_np import evaluation

    settings = evaluation.preset("best", "fashion-mnist")
    preprocess = settings.pop("preprocess")
    for key in ("C", "fit_limit"):
        settings.pop(key, None)
    X_train = evaluation.load_dataset("fashion-mnist", limit=args.n, test=False)[0]
    X = evaluation.preprocess(preprocess, X_train, dtype="float32")[0]
    print(_perf.machine_line(_perf.n_cpus()))
    print(f"best preset, {len(X)} Fashion-MNIST images {X.shape[1:]}, float32")
    with tempfile.TemporaryDirectory() as folder:
        codes = {args.rev: reference_package(args.rev, folder), "this": calm_np}
        times = {name: [] for name in codes}
        for repeat in range(args.repeats):
            for name, module in codes.items():
                its = seconds_per_iteration(module, X, settings, args.iterations)
                times[name] += its
                print(f"{name:>10} run {repeat}: " + " ".join(f"{t:.2f}" for t in its))
    medians = {name: statistics.median(t) for name, t in times.items()}
    print(
        "median s/iteration: "
        + ", ".join(f"{name} {m:.3f}" for name, m in medians.items())
        + f"; this / {args.rev} = {medians['this'] / medians[args.rev]:.3f}"
    )


if __name__ == "__main__":
    main()
