"""The CALM paper's MNIST experiment: 64 kernels of 20x20, then a linear probe.

The reference setup: 64 kernels of 20x20 learned by batch EM with padding 2,
minibatches of 1 000 images, 15 epochs; each image becomes its 64 image-wide
pooled log posteriors ``log p(Z=k | X)``; a multinomial logistic regression on
those features classifies the digits. Runs on MNIST when you point at its IDX
files, and otherwise on Fashion-MNIST from the Debian package
``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``)::

    python examples/mnist.py                          # Fashion-MNIST
    python examples/mnist.py --data-dir ~/data/mnist  # real MNIST
    python examples/mnist.py --limit 2000 --epochs 3  # a quick look

It writes ``kernels.png`` (the kernel grid, the paper's figure) and
``log_likelihood.png`` (the likelihood per epoch: the paper reports
convergence after about two epochs) into ``--out``. The pixels are scaled to
[0, 1], as in the reference script.

The paper's setting is kept here as it was; ``calm-np evaluate --dataset
fashion-mnist`` runs the setting that gives better features (docs/benchmarks.rst).
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np

import calm_np
from calm_np import datasets, evaluation, plots, preprocessing


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data-dir",
        type=Path,
        help="folder with the four MNIST IDX files; default: Fashion-MNIST from "
        f"{datasets.FASHION_MNIST_DIR}",
    )
    p.add_argument("--fashion-dir", type=Path, help="Fashion-MNIST folder")
    p.add_argument("--limit", type=int, help="first N training and N test images")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--n-kernels", type=int, default=64)
    p.add_argument("--kernel-size", type=int, default=20)
    p.add_argument("--padding", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("mnist-output"))
    return p.parse_args(argv)


def load(args):
    if args.data_dir is not None:
        name = "MNIST"
        train = datasets.load_mnist(args.data_dir, "train", limit=args.limit)
        test = datasets.load_mnist(args.data_dir, "test", limit=args.limit)
    else:
        name = "Fashion-MNIST"
        train = datasets.load_fashion_mnist(args.fashion_dir, "train", limit=args.limit)
        test = datasets.load_fashion_mnist(args.fashion_dir, "test", limit=args.limit)
    (X_train, y_train), (X_test, y_test) = train, test
    # (n, 28, 28) uint8 -> (n, 1, 28, 28) in [0, 1], as the reference script
    scale = lambda X: preprocessing.to_unit_float(X).astype(np.float32)  # noqa: E731
    return name, scale(X_train), y_train, scale(X_test), y_test


def save_figures(model, out, name):
    """The kernel grid (the paper's figure) and the likelihood per epoch."""
    out.mkdir(parents=True, exist_ok=True)
    plots.model_figures(
        model, out / "kernels.png", out / "log_likelihood.png", data=name
    )


def main(argv=None):
    args = parse_args(argv)
    name, X_train, y_train, X_test, y_test = load(args)
    print(f"{name}: {len(X_train)} training and {len(X_test)} test images")

    model = calm_np.ConvolutionalMixture(
        n_kernels=args.n_kernels,
        kernel_size=args.kernel_size,
        padding=args.padding,
        batch_size=args.batch_size,
        max_iter=args.epochs,
        features="log_posterior",  # image-wide log p(Z=k | X)
        pooling=1,
        random_state=args.seed,
        verbose=1,
    )
    start = time.perf_counter()
    with warnings.catch_warnings():
        # the reference runs a fixed number of epochs, converged or not
        warnings.simplefilter("ignore", calm_np.ConvergenceWarning)
        model.fit(X_train)
    fit_seconds = time.perf_counter() - start
    print(
        f"{model.n_iter_} epochs in {fit_seconds:.0f} s; mean log-likelihood per "
        f"image {model.lower_bounds_[0]:.2f} after the first, "
        f"{model.lower_bound_:.2f} after the last"
    )

    start = time.perf_counter()
    F_train = evaluation.extract_features(model, X_train, args.batch_size)
    F_test = evaluation.extract_features(model, X_test, args.batch_size)
    accuracy = evaluation.linear_probe(F_train, y_train, F_test, y_test)
    print(
        f"softmax regression on {F_train.shape[1]} pooled log posteriors: test "
        f"accuracy {accuracy:.4f} ({time.perf_counter() - start:.0f} s)"
    )
    save_figures(model, args.out, name)
    print(f"figures in {args.out}/kernels.png and {args.out}/log_likelihood.png")
    return accuracy


if __name__ == "__main__":
    main()
