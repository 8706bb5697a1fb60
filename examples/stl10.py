"""The CALM paper's STL-10 experiment: 200 colour kernels of 15x15 from 105 000 images.

The setup: every image is ZCA-whitened per image and channel; 200 kernels of
15x15x3 (no padding) are learned by batch EM in minibatches of 200 on the
5 000 labelled training images plus the 100 000 unlabeled ones (streamed from
the memory-mapped files, never loaded whole); the standard protocol then
trains a multinomial logistic regression on each of the ten predefined folds
of 1 000 training images and reports the mean test accuracy over the folds.

Needs the binary files of https://cs.stanford.edu/~acoates/stl10/
(``stl10_binary.tar.gz``, extracted)::

    python examples/stl10.py --data-dir ~/data/stl10_binary
    python examples/stl10.py --data-dir ... --backend torch     # on a GPU
    python examples/stl10.py --data-dir ... --no-unlabeled      # does it help?
    python examples/stl10.py --data-dir ... --limit 500 --epochs 2  # a quick look

A full run is heavy on a CPU (each epoch correlates 105 000 images of 96x96x3
with 200 kernels); use ``--backend torch`` or ``cupy`` on a GPU, or ``--limit``.
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
    p.add_argument("--data-dir", type=Path, required=True, help="stl10_binary folder")
    p.add_argument(
        "--limit", type=int, help="first N images of each split (a quick look)"
    )
    p.add_argument("--no-unlabeled", action="store_true", help="train on train only")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--n-kernels", type=int, default=200)
    p.add_argument("--kernel-size", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=200)
    p.add_argument("--pooling", type=int, default=1, help="pooling grid G (GxG)")
    p.add_argument(
        "--features",
        default="log_posterior",
        choices=("log_joint", "log_posterior", "posterior"),
    )
    p.add_argument("--folds", type=int, default=10, help="use the first N folds")
    p.add_argument("--backend", choices=("numpy", "torch", "cupy"), default="numpy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("stl10-output"))
    return p.parse_args(argv)


class Whitened:
    """Re-iterable minibatches of several STL-10 splits, whitened per image.

    EM reads its data once per epoch, so this is iterated once per epoch;
    each pass streams the memory-mapped files batch by batch.
    """

    def __init__(self, parts, batch_size, move):
        self.parts, self.batch_size, self.move = parts, batch_size, move

    def __len__(self):
        return sum(-(-n // self.batch_size) for _, n in self.parts)

    def __iter__(self):
        for images, n in self.parts:
            white = images.batches(
                self.batch_size, stop=n, transform=preprocessing.zca_whiten_per_image
            )
            for batch in white:
                yield self.move(np.asarray(batch, dtype=np.float32))


def features(model, images, n, batch_size, move):
    """Pooled features of the first ``n`` images, as a host array."""
    batches = Whitened([(images, n)], batch_size, move)
    return evaluation.extract_features(model, batches)


def main(argv=None):
    args = parse_args(argv)
    move, _ = evaluation.array_mover(args.backend, dtype="float32")
    train, y_train = datasets.load_stl10(args.data_dir, "train")
    test, y_test = datasets.load_stl10(args.data_dir, "test")
    folds = datasets.stl10_folds(args.data_dir)[: args.folds]
    n_train = len(train) if args.limit is None else min(args.limit, len(train))
    n_test = len(test) if args.limit is None else min(args.limit, len(test))
    parts = [(train, n_train)]
    if not args.no_unlabeled:
        unlabeled, _ = datasets.load_stl10(args.data_dir, "unlabeled")
        n_unl = (
            len(unlabeled) if args.limit is None else min(args.limit, len(unlabeled))
        )
        parts.append((unlabeled, n_unl))
    n_fit = sum(n for _, n in parts)
    print(
        f"STL-10: fitting on {n_fit} images, {n_test} test images, {len(folds)} folds"
    )

    model = calm_np.ConvolutionalMixture(
        n_kernels=args.n_kernels,
        kernel_size=args.kernel_size,
        padding=0,
        max_iter=args.epochs,
        features=args.features,
        pooling=args.pooling,
        random_state=args.seed,
        verbose=1,
    )
    start = time.perf_counter()
    with warnings.catch_warnings():
        # the paper's fixed number of epochs: stopping at --epochs is the
        # plan, not a failure to converge
        warnings.simplefilter("ignore", calm_np.ConvergenceWarning)
        model.fit(Whitened(parts, args.batch_size, move))
    print(f"{model.n_iter_} epochs in {time.perf_counter() - start:.0f} s")

    start = time.perf_counter()
    F_train = features(model, train, n_train, args.batch_size, move)
    F_test = features(model, test, n_test, args.batch_size, move)
    y_tr, y_te = y_train[:n_train], y_test[:n_test]
    accuracies = []
    for fold in folds:
        fold = fold[fold < n_train]
        accuracies.append(
            evaluation.linear_probe(F_train[fold], y_tr[fold], F_test, y_te)
        )
    mean, std = float(np.mean(accuracies)), float(np.std(accuracies))
    print(
        f"{F_train.shape[1]} features, fold protocol: test accuracy {mean:.4f} "
        f"± {std:.4f} over {len(folds)} folds ({time.perf_counter() - start:.0f} s)"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    plots.kernel_grid(
        model.kernels_,
        args.out / "kernels.png",
        title=f"STL-10: {args.n_kernels} kernels "
        f"{args.kernel_size}x{args.kernel_size}x3",
    )
    print(f"kernels in {args.out}/kernels.png")
    return mean


if __name__ == "__main__":
    main()
