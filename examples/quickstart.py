"""Learn convolution kernels from scikit-learn's bundled handwritten digits.

Runs in seconds on a laptop, with no download: the 1 797 8×8 digit images ship
inside scikit-learn.  Shows the public functions (the identity: a conv layer's
output is a log posterior) and the estimator (EM learns the kernels), then a
linear probe on the pooled posterior features.

    python examples/quickstart.py
"""

from __future__ import annotations

import time

import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import calm_np


def main():
    digits = load_digits()
    # pixels are 0..16; scale so the background noise is about unit variance
    X = digits.images[:, None, :, :] / 4.0
    y = digits.target
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.3, random_state=0, stratify=y
    )

    start = time.perf_counter()
    model = calm_np.ConvolutionalMixture(
        n_kernels=16, kernel_size=5, padding=1, max_iter=200, random_state=0
    )
    model.fit(X_train)
    seconds = time.perf_counter() - start
    print(
        f"fitted {model.n_kernels} kernels of 5x5 on {len(X_train)} digits in "
        f"{seconds:.1f} s, {model.n_iter_} EM iterations, converged={model.converged_}"
    )
    print(
        f"mean log-likelihood per image: train {model.score(X_train):.3f}, "
        f"test {model.score(X_test):.3f} nats"
    )
    bounds = np.array(model.lower_bounds_)
    print("objective never went down:", bool(np.all(np.diff(bounds) >= -1e-9)))

    # the identity: the posterior is a softmax of the conv feature map
    gamma = calm_np.posterior(X_test[:2], model.kernels_, padding=1)
    print("posterior of test image 0 sums to", float(gamma[0].sum()))

    # transform pools the posterior maps over a 2x2 grid: 16 * 4 features
    model.set_params(pooling=2)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    probe.fit(model.transform(X_train), y_train)
    accuracy = probe.score(model.transform(X_test), y_test)
    print(f"linear probe on 2x2-pooled posterior features: {accuracy:.3f} accuracy")


if __name__ == "__main__":
    main()
