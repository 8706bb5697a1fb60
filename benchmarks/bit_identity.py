"""Fixed-seed fits, transforms and scores on NumPy, saved or compared bit for bit.

A refactor that must not change results is checked by saving at the old
commit and comparing at the new one (run from the repository root, so that
its calm_np is the one imported)::

    git checkout OLD && PYTHONPATH=$PWD python benchmarks/bit_identity.py save out.npz
    git checkout NEW && PYTHONPATH=$PWD python benchmarks/bit_identity.py check out.npz

``check`` prints ``bit-identical`` or the outputs that differ with their
largest relative difference (exit status 1).  Configurations: both engines
and ``auto``, the per-patch latent, learned weights with a prior, float32
RGB batches, moves (planted patterns, ``n_init=2`` and random init), online
``partial_fit``, and all four readouts.
"""

import sys
import warnings

import numpy as np

from calm_np import ConvolutionalMixture

rng = np.random.default_rng(0)
X = rng.standard_normal((60, 1, 14, 14)).astype(np.float64)
X3 = rng.standard_normal((20, 3, 12, 12)).astype(np.float32)
# planted patterns so moves happen
P = rng.standard_normal((3, 1, 5, 5)) * 3
Xp = rng.standard_normal((80, 1, 12, 12))
for n in range(80):
    k = rng.integers(3)
    i, j = rng.integers(0, 8, 2)
    Xp[n, :, i : i + 5, j : j + 5] += P[k]
configs = {
    "image_auto": (
        X,
        dict(n_kernels=6, kernel_size=5, padding=1, max_iter=8, random_state=1),
    ),
    "image_fft": (
        X,
        dict(
            n_kernels=6,
            kernel_size=5,
            padding=1,
            max_iter=8,
            random_state=1,
            method="fft",
        ),
    ),
    "image_im2col": (
        X,
        dict(
            n_kernels=6,
            kernel_size=5,
            padding=1,
            max_iter=8,
            random_state=1,
            method="im2col",
        ),
    ),
    "patch": (
        X,
        dict(n_kernels=6, kernel_size=5, max_iter=8, random_state=2, latent="patch"),
    ),
    "weights_reg": (
        X,
        dict(
            n_kernels=4,
            kernel_size=3,
            max_iter=8,
            random_state=3,
            learn_weights=True,
            reg_kernels=0.5,
        ),
    ),
    "rgb32": (
        X3,
        dict(n_kernels=5, kernel_size=4, max_iter=6, random_state=4, batch_size=7),
    ),
    "moves": (
        Xp,
        dict(n_kernels=3, kernel_size=5, max_iter=60, random_state=0, n_init=2),
    ),
    "moves_random": (
        Xp,
        dict(n_kernels=3, kernel_size=5, max_iter=60, random_state=5, init="random"),
    ),
}
out = {}
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    for name, (data, params) in configs.items():
        m = ConvolutionalMixture(**params).fit(data)
        out[name + "_kernels"] = m.kernels_
        out[name + "_lb"] = np.asarray(m.lower_bounds_)
        out[name + "_w"] = (
            np.asarray(m.weights_) if hasattr(m, "weights_") else np.zeros(0)
        )
        out[name + "_T"] = np.asarray(m.transform(data[:5]))
        out[name + "_S"] = np.asarray(m.score_samples(data[:5]))
    m = ConvolutionalMixture(n_kernels=4, kernel_size=3, random_state=0)
    for b in range(3):
        m.partial_fit(X[b * 20 : (b + 1) * 20])
    out["online_kernels"] = m.kernels_
    m = ConvolutionalMixture(
        n_kernels=4,
        kernel_size=3,
        random_state=0,
        latent="patch",
        features="triangle",
        pooling=2,
    ).fit(X)
    out["tri_T"] = np.asarray(m.transform(X[:5]))
    m.set_params(features="posterior")
    out["post_T"] = np.asarray(m.transform(X[:5]))
    m.set_params(features="log_posterior")
    out["lpost_T"] = np.asarray(m.transform(X[:5]))
if sys.argv[1] == "save":
    np.savez(sys.argv[2], **out)
    print("saved", len(out), "arrays to", sys.argv[2])
else:
    ref = np.load(sys.argv[2])
    bad = {}
    for k in ref.files:
        a, b = ref[k], out[k]
        if a.shape != b.shape:
            bad[k] = "shape"
        elif not np.array_equal(a, b):
            bad[k] = float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-300))
    print("bit-identical" if not bad else f"DIFFER: {bad}")
    sys.exit(1 if bad else 0)
