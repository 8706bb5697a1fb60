"""Tiny files in the real data formats (IDX, STL-10 binary) for CLI/example tests."""

from __future__ import annotations

import numpy as np

from calm_np.datasets import save_idx


def blob_images(rng, labels, size):
    """Images whose class is the position of a bright square: learnable."""
    n = len(labels)
    images = rng.integers(0, 40, size=(n, size, size)).astype(np.float64)
    corners = [(y, x) for y in (2, size // 2) for x in (2, size // 2)]
    side = max(3, size // 4)
    for i, label in enumerate(labels):
        y, x = corners[int(label) % len(corners)]
        images[i, y : y + side, x : x + side] += 200
    return np.clip(images, 0, 255).astype(np.uint8)


def write_mnist(folder, n_train=40, n_test=20, seed=0, compress=True, n_classes=4):
    """Four MNIST-layout files of 28x28 images; returns the labels written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    written = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % n_classes
        images = blob_images(rng, labels, 28)
        # gzipped where the name ends with .gz (save_idx's rule)
        save_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
        labels_file = folder / f"{prefix}-labels-idx1-ubyte{suffix}"
        save_idx(labels_file, labels.astype(np.uint8))
        written[prefix] = labels
    return written


def write_stl10(folder, n_train=12, n_test=8, n_unlabeled=10, seed=0, folds=2):
    """STL-10 binary files (column-major 3x96x96 uint8, labels 1..10) and folds."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test), ("unlabeled", n_unlabeled)):
        labels = np.arange(n) % 4
        gray = blob_images(rng, labels, 96)
        images = np.repeat(gray[:, None], 3, axis=1)
        images[:, 1] //= 2  # channels differ
        # the official layout stores each channel column by column
        data = np.ascontiguousarray(np.swapaxes(images, 2, 3)).tobytes()
        (folder / f"{split}_X.bin").write_bytes(data)
        if split != "unlabeled":
            (folder / f"{split}_y.bin").write_bytes(
                (labels + 1).astype(np.uint8).tobytes()
            )
    lines = []
    for f in range(folds):
        idx = [i for i in range(n_train) if i % folds == f]
        lines.append(" ".join(str(i) for i in idx))
    (folder / "fold_indices.txt").write_text("\n".join(lines) + "\n")
    return folder
