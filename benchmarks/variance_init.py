"""Where a fit with ``learn_variance=True`` should start σ²: measured.

    python benchmarks/variance_init.py

Two starts from the same initial kernels (a ``max_iter=0`` fit, then a warm
start): σ² from the hard-assignment residual of those kernels (what
``fit`` does) or σ² = 1.  Data: planted kernels (five 5×5 patterns of
amplitude 3 in 12×12 unit-noise images, 300 images; the fitted σ² should be
1) and scikit-learn's digits divided by 16 (8 kernels 5×5, padding 2).
Printed: per seed the fitted σ² (planted) or the final objective in nats
per image (digits), and their mean.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _helpers import planted_images  # noqa: E402

from calm_np import ConvolutionalMixture  # noqa: E402


def fit(X, start, seed, **kw):
    m = ConvolutionalMixture(
        kernel_size=5, learn_variance=True, random_state=seed, max_iter=0, **kw
    ).fit(X)
    if start == "one":
        m.variance_ = 1.0
    return m.set_params(warm_start=True, max_iter=200, tol=1e-6).fit(X)


def main():
    warnings.simplefilter("ignore")
    from sklearn.datasets import load_digits

    digits = load_digits().images[:600, None] / 16.0
    for start in ("residual", "one"):
        sigma2 = []
        for seed in range(6):
            kernels = 3 * np.random.default_rng(seed).standard_normal((5, 1, 5, 5))
            X, _ = planted_images(seed + 10, 300, 1, 12, 12, kernels)
            sigma2.append(fit(X, start, seed, n_kernels=5).variance_)
        print(f"planted  start={start:8s} σ² {np.round(sigma2, 3)}")
        for latent in ("image", "patch"):
            kw = dict(n_kernels=8, padding=2, latent=latent)
            bounds = [fit(digits, start, s, **kw).lower_bound_ for s in range(4)]
            print(
                f"digits/16 {latent:5s} start={start:8s} objective "
                f"{np.round(bounds, 3)} mean {np.mean(bounds):.3f}"
            )


if __name__ == "__main__":
    main()
