"""Whitened patch model (``whiten=True``) against today's ``best`` preset.

Fashion-MNIST, the first 10 000 training and 5 000 test images; K=128 7×7
kernels, ``latent="patch"``, 10 EM iterations (``tol=0``), triangle features
on a 3×3 grid, ``evaluation.linear_probe`` with C=0.1.  Rows:

* ``whiten``       raw 0–255 pixels, ``whiten=True``, trained;
* ``whiten init``  the same with ``max_iter=0`` (its initialisation);
* ``local``        ``preprocess="local"`` (the preset's), ``whiten=False``.

Prints accuracy, fit seconds and transform seconds (train + test) per row,
and writes them as JSON to ``benchmarks/results/whiten.json``.

    python benchmarks/whiten.py [--n-train 10000] [--n-test 5000]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time
import warnings

import numpy as np

from calm_np import ConvolutionalMixture, evaluation


def run(name, X_tr, y_tr, X_te, y_te, **params):
    settings = dict(
        n_kernels=128,
        kernel_size=7,
        latent="patch",
        max_iter=10,
        tol=0.0,
        batch_size=1000,
        features="triangle",
        pooling=3,
        random_state=0,
    )
    settings.update(params)
    model = ConvolutionalMixture(**settings)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(X_tr)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    F_tr = evaluation.extract_features(model, X_tr)
    F_te = evaluation.extract_features(model, X_te)
    transform_s = time.perf_counter() - t0
    acc = evaluation.linear_probe(F_tr, y_tr, F_te, y_te, C=0.1)
    row = dict(
        name=name,
        accuracy=round(float(acc), 4),
        fit_s=round(fit_s, 1),
        transform_s=round(transform_s, 1),
        n_iter=model.n_iter_,
    )
    print(json.dumps(row), flush=True)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=10000)
    parser.add_argument("--n-test", type=int, default=5000)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    X_tr, y_tr, X_te, y_te = evaluation.load_dataset(
        "fashion-mnist", args.data_dir, limit=max(args.n_train, args.n_test)
    )
    X_tr, y_tr = X_tr[: args.n_train], y_tr[: args.n_train]
    X_te, y_te = X_te[: args.n_test], y_te[: args.n_test]
    raw = [np.asarray(a, dtype=np.float32) for a in (X_tr, X_te)]
    rows = [
        run("whiten", raw[0], y_tr, raw[1], y_te, whiten=True),
        run("whiten init", raw[0], y_tr, raw[1], y_te, whiten=True, max_iter=0),
    ]
    local = [a.astype(np.float32) for a in evaluation.preprocess("local", X_tr, X_te)]
    rows.append(run("local", local[0], y_tr, local[1], y_te))
    out = pathlib.Path(__file__).parent / "results" / "whiten.json"
    out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
