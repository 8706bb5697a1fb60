"""The linear probe: today's blocked, threaded pass against the whole-matrix one.

What: ``calm_np.evaluation.linear_probe`` (standardize, multinomial logistic
regression by L-BFGS-B, test accuracy) against the previous implementation,
kept below as ``old_standardized``/``old_softmax_loss`` for this comparison
only (``old_probe`` runs them in today's L-BFGS-B call): one float32 pass
``A @ W`` over the whole standardized training matrix, then ``A.T @ P`` (the
matrix streamed from memory twice per iteration), BLAS on one thread, the
standardization through float64 copies of the features.

Shapes: the main job's (``calm-np evaluate --dataset fashion-mnist``):
60 000 training and 10 000 test Fashion-MNIST images, the ``best`` preset's
2304 features (256 kernels 7×7, triangle, 3×3 pooling), 10 classes, C=0.1.
The kernels are fitted on the first 2000 training images only (features
fast to make, as realistic as the preset's); the features are cached as
float32 ``.npy`` files in ``--cache`` (made on the first run, ~2 minutes).

Three measurements, old and new side by side in one run (the machines are
shared: compare the ratio, never seconds across runs):

- ``standardization``: seconds and peak memory allocated (tracemalloc) by
  the old and new standardization of float64 features (what
  ``extract_features`` returns);
- ``pass``: one loss-and-gradient evaluation at a random point, median of
  ``--repeats`` round-robin repeats, and the largest difference of the two
  gradients;
- ``probe``: the whole probe, old then new (``--probe-repeats`` times),
  with its seconds, function evaluations and accuracy.

Rerun::

    PYTHONPATH=$PWD python benchmarks/probe.py [--n-train 60000] [--repeats 5]
        [--probe-repeats 1] [--cache /work/ref/probe] [--threads 2]
        [--probe-threads 1 2] [--rows 256 512] [--skip-probe]

``--threads`` sets ``CALM_NP_NUM_THREADS`` for the ``pass`` measurement,
``--probe-threads`` lists the thread counts of the new probe's runs (the
old one runs BLAS on one thread, as it did).  ``--rows`` lists block sizes
to time in the ``pass`` measurement.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

import _perf  # noqa: E402


def old_probe(F_train, y_train, F_test, y_test, C):
    """The previous ``linear_probe``: its standardization and loss in today's
    solver (the same L-BFGS-B call); ``(accuracy, evaluations)``."""
    from calm_np import _probe

    A, B = old_standardized(F_train, F_test)
    classes, y_index = np.unique(np.asarray(y_train), return_inverse=True)

    def run():
        W, b = _probe._fit_probe(A, y_index, len(classes), C=C, tol=1e-4, max_iter=1000)
        predicted = classes[np.argmax(B @ W.astype(np.float32) + b, axis=1)]
        return float(np.mean(predicted == np.asarray(y_test)))

    return _counting(old_softmax_loss, run)


def old_softmax_loss(A, Y, alpha):
    """The previous ``_softmax_loss``: two whole-matrix float32 products."""
    n, d = A.shape
    k = Y.shape[1]

    def loss_grad(w):
        W = w[: d * k]
        Z = A @ W.reshape(d, k).astype(np.float32)
        Z += w[d * k :].astype(np.float32)
        Z -= Z.max(axis=1, keepdims=True)
        P = np.exp(Z)
        total = P.sum(axis=1, keepdims=True)
        loss = (np.log(total).sum(dtype=np.float64) - np.vdot(Z, Y)) / n
        P /= total
        P -= Y
        grad_W = (A.T @ P).ravel().astype(np.float64) / n + alpha * W
        grad_b = P.sum(axis=0, dtype=np.float64) / n
        return loss + 0.5 * alpha * (W @ W), np.concatenate([grad_W, grad_b])

    return loss_grad


def new_probe(F_train, y_train, F_test, y_test, C):
    """Today's ``linear_probe``; ``(accuracy, evaluations)``."""
    from calm_np import _probe, evaluation

    def run():
        return evaluation.linear_probe(F_train, y_train, F_test, y_test, C=C)

    return _counting(_probe._softmax_loss, run)


def _counting(make_loss, run):
    """``(run(), evaluations)`` with the probe's loss replaced by ``make_loss``
    and its loss-and-gradient evaluations counted."""
    from calm_np import _probe

    original, calls = _probe._softmax_loss, [0]

    def counted(*args, **kwargs):
        loss_grad = make_loss(*args, **kwargs)

        def count(w):
            calls[0] += 1
            return loss_grad(w)

        return count

    _probe._softmax_loss = counted
    try:
        return run(), calls[0]
    finally:
        _probe._softmax_loss = original


def features(cache, n_train):
    """Cached float32 features of the ``best`` preset (made when missing)."""
    cache = Path(cache)
    names = ("F_train", "y_train", "F_test", "y_test")
    if not all((cache / f"{name}.npy").exists() for name in names):
        make_features(cache)
    F_train, y_train, F_test, y_test = (np.load(cache / f"{n}.npy") for n in names)
    return F_train[:n_train], y_train[:n_train], F_test, y_test


def make_features(cache, n_fit=2000):
    import calm_np
    from calm_np import evaluation

    settings = evaluation.preset("best", "fashion-mnist")
    for key in ("preprocess", "fit_limit", "C"):
        settings.pop(key)
    X_tr, y_tr, X_te, y_te = evaluation.load_dataset("fashion-mnist")
    X_tr, X_te = evaluation.preprocess("none", X_tr, X_te)
    X_tr, X_te = X_tr.astype(np.float32), X_te.astype(np.float32)
    model = calm_np.ConvolutionalMixture(**settings, random_state=0)
    model.fit(X_tr[:n_fit])
    cache.mkdir(parents=True, exist_ok=True)
    for name, X, y in (("test", X_te, y_te), ("train", X_tr, y_tr)):
        F = evaluation.extract_features(model, X).astype(np.float32)
        np.save(cache / f"F_{name}.npy", F)
        np.save(cache / f"y_{name}.npy", y)


def old_standardized(F_train, F_test):
    """The previous standardization (float64 copies of the features)."""
    F_train = np.asarray(F_train, dtype=np.float64)
    mean, scale = F_train.mean(axis=0), F_train.std(axis=0)
    scale[scale == 0] = 1.0
    A = ((F_train - mean) / scale).astype(np.float32)
    B = ((np.asarray(F_test, dtype=np.float64) - mean) / scale).astype(np.float32)
    return A, B


def standardize_memory(F_train, F_test):
    """Seconds and peak MB allocated (tracemalloc) by each standardization of
    float64 features (``extract_features`` returns float64), beyond them."""
    import tracemalloc

    from calm_np import _probe

    F_train, F_test = F_train.astype(np.float64), F_test.astype(np.float64)
    runs = dict(old=old_standardized, new=_probe._standardized)
    for name, standardize in runs.items():
        tracemalloc.start()
        start = time.perf_counter()
        out = standardize(F_train, F_test)
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        del out
        print(f"  {name}: {seconds:.2f} s, peak {peak:.0f} MB allocated")


def time_pass(F_train, y_train, rows_list, repeats, C):
    """Median seconds of one loss-and-gradient evaluation, old and new."""
    from calm_np import _probe
    from calm_np._xp import single_threaded_blas as _single_threaded_blas

    A, _ = _probe._standardized(F_train)
    n, d = A.shape
    Y = np.eye(10, dtype=np.float32)[y_train]
    alpha = 1.0 / (C * n)
    w = np.random.default_rng(0).standard_normal((d + 1) * 10) * 0.01
    fns = {"old": old_softmax_loss(A, Y, alpha)}
    for rows in rows_list:
        fns[f"new rows={rows}"] = _probe._softmax_loss(A, Y, alpha, rows=rows)
    reference = fns["old"](w)
    for name, f in fns.items():
        loss, grad = f(w)
        error = np.abs(grad - reference[1]).max() / np.abs(reference[1]).max()
        print(
            f"  {name:>16}: loss {loss:.8f}, relative gradient difference {error:.1e}"
        )
    with _single_threaded_blas():
        med, _ = _perf.interleaved(
            {k: lambda f=f: f(w) for k, f in fns.items()}, repeats
        )
    for name, seconds in med.items():
        print(f"  {name:>16}: {seconds:.3f} s, old/new {med['old'] / seconds:.2f}x")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default="/work/ref/probe")
    parser.add_argument("--n-train", type=int, default=60000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--probe-repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--probe-threads", type=int, nargs="*", default=[2])
    parser.add_argument("--rows", type=int, nargs="*", default=[256])
    parser.add_argument("--C", type=float, default=0.1)
    parser.add_argument("--skip-probe", action="store_true")
    args = parser.parse_args(argv)
    if args.threads is not None:
        os.environ["CALM_NP_NUM_THREADS"] = str(args.threads)
    from calm_np._pool import n_threads as _n_threads

    F_train, y_train, F_test, y_test = features(args.cache, args.n_train)
    print(_perf.machine_line(_n_threads()))
    print(
        f"dtype {F_train.dtype} (cached features), train {F_train.shape}, "
        f"test {F_test.shape}, {len(np.unique(y_train))} classes, C={args.C}"
    )
    print("standardization (float64 features in, float32 out):")
    standardize_memory(F_train, F_test)
    print("pass (one loss and gradient):")
    time_pass(F_train, y_train, args.rows, args.repeats, args.C)
    if args.skip_probe:
        return
    print("probe (standardize, L-BFGS-B, accuracy; cpu: all threads' seconds):")
    for _ in range(args.probe_repeats):
        seconds = {}
        runs = [("old", None)] + [(f"new {t} threads", t) for t in args.probe_threads]
        for name, threads in runs:
            if threads is not None:
                os.environ["CALM_NP_NUM_THREADS"] = str(threads)
            probe = old_probe if threads is None else new_probe
            start, cpu = time.perf_counter(), time.process_time()
            accuracy, nfev = probe(F_train, y_train, F_test, y_test, C=args.C)
            seconds[name] = time.perf_counter() - start
            ratio = seconds["old"] / seconds[name]
            print(
                f"  {name:>13}: {seconds[name]:6.1f} s (cpu "
                f"{time.process_time() - cpu:6.1f} s), {nfev} evaluations, "
                f"accuracy {accuracy:.4f}, old/new {ratio:.2f}x",
                flush=True,
            )


if __name__ == "__main__":
    main()
