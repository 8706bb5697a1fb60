"""``transform(features="triangle")``: Coates et al.'s activation from the log joint."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import assert_close, check_array_like
from _oracle import as4d, pad

import calm_np


def triangle_oracle(X, kernels, padding, grid):
    """Loops over patches: distances, triangle activation, sums over cells."""
    X = pad(as4d(np.asarray(X, dtype=np.float64)), padding)
    K = np.asarray(kernels, dtype=np.float64)
    n, c, Hp, Wp = X.shape
    k, _, kh, kw = K.shape
    Ho, Wo = Hp - kh + 1, Wp - kw + 1
    act = np.zeros((n, k, Ho, Wo))
    for i in range(n):
        for y in range(Ho):
            for x in range(Wo):
                patch = X[i, :, y : y + kh, x : x + kw]
                z = np.sqrt(((patch[None] - K) ** 2).sum(axis=(1, 2, 3)))
                act[i, :, y, x] = np.maximum(z.mean() - z, 0.0)
    gh, gw = grid
    ys = [(a * Ho // gh, max((a + 1) * Ho // gh, a * Ho // gh + 1)) for a in range(gh)]
    xs = [(b * Wo // gw, max((b + 1) * Wo // gw, b * Wo // gw + 1)) for b in range(gw)]
    cells = [act[:, :, y0:y1, x0:x1].sum(axis=(2, 3)) for y0, y1 in ys for x0, x1 in xs]
    return np.stack(cells, axis=2).reshape(n, k * gh * gw)


def fitted(kernels, padding, weights=None, **params):
    model = calm_np.ConvolutionalMixture(
        n_kernels=kernels.shape[0],
        kernel_size=kernels.shape[2:],
        padding=padding,
        features="triangle",
        **params,
    )
    # a fitted model without a fit: the transform depends on these only
    model.kernels_ = kernels
    k = kernels.shape[0]
    model.weights_ = np.full(k, 1.0 / k) if weights is None else weights
    model.n_channels_in_ = kernels.shape[1]
    model.kernel_size_ = tuple(kernels.shape[2:])
    model.padding_ = (padding, padding)
    return model


@pytest.mark.parametrize(
    ("c", "padding", "grid", "learned"),
    [(1, 0, (2, 2), False), (2, 1, (3, 2), True), (3, 0, (1, 1), False)],
)
def test_triangle_matches_patch_loop(c, padding, grid, learned):
    rng = np.random.default_rng(c + padding)
    X = rng.standard_normal((3, c, 9, 8))
    kernels = rng.standard_normal((4, c, 3, 3))
    # the distances must not depend on the mixture weights in A
    weights = rng.dirichlet(np.ones(4)) if learned else None
    model = fitted(kernels, padding, weights, pooling=grid)
    out = model.transform(X)
    np.testing.assert_allclose(
        out, triangle_oracle(X, kernels, padding, grid), rtol=1e-9, atol=1e-9
    )


def test_triangle_is_sparse_and_non_negative():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((5, 1, 10, 10))
    kernels = rng.standard_normal((6, 1, 4, 4))
    # a 7x7 grid over the 7x7 positions: one position per cell
    out = fitted(kernels, 0, pooling=7).transform(X).reshape(5, 6, 49)
    assert np.all(out >= 0)
    # the farthest kernel at a position is never active, the nearest always is
    assert np.all(out.min(axis=1) == 0)
    assert np.all(out.max(axis=1) > 0)


def test_triangle_of_integer_images_does_not_overflow():
    rng = np.random.default_rng(1)
    X = rng.integers(0, 256, size=(2, 1, 6, 6)).astype(np.uint8)
    kernels = rng.standard_normal((3, 1, 3, 3)) * 100
    out = fitted(kernels, 0, pooling=2).transform(X)
    np.testing.assert_allclose(
        out, triangle_oracle(X.astype(np.float64), kernels, 0, (2, 2)), rtol=1e-9
    )


def test_triangle_on_backends(backend, dtype):
    rng = np.random.default_rng(2)
    X = rng.standard_normal((3, 2, 8, 8))
    kernels = rng.standard_normal((4, 2, 3, 3))
    model = fitted(backend.asarray(kernels, dtype), 1, pooling=2)
    model.weights_ = backend.asarray(np.full(4, 0.25), dtype)
    Xb = backend.asarray(X, dtype)
    out = model.transform(Xb)
    check_array_like(out, backend, Xb, dtype)
    # float32: distances are square roots of differences of O(100) terms
    assert_close(out, triangle_oracle(X, kernels, 1, (2, 2)), dtype=dtype)


def test_triangle_features_after_a_fit():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((20, 1, 10, 10))
    model = calm_np.ConvolutionalMixture(
        4, kernel_size=3, max_iter=2, tol=0, features="triangle", pooling=2,
        random_state=0, latent="patch",
    )  # fmt: skip
    with pytest.warns(calm_np.ConvergenceWarning):
        F = model.fit_transform(X)
    assert F.shape == (20, 16)
    np.testing.assert_allclose(
        F, triangle_oracle(X, model.kernels_, 0, (2, 2)), rtol=1e-8, atol=1e-8
    )


@pytest.mark.parametrize(
    "features", ["log_joint", "log_posterior", "posterior", "triangle"]
)
@pytest.mark.parametrize("latent", ["image", "patch"])
def test_readouts_pooled_features_without_an_estimator_equal_transform(
    features, latent
):
    from calm_np._readouts import pooled_features

    rng = np.random.default_rng(3)
    X = rng.standard_normal((6, 2, 9, 8))
    kernels = rng.standard_normal((3, 2, 3, 3))
    weights = np.array([0.5, 0.3, 0.2])
    model = fitted(kernels, 1, weights, latent=latent, pooling=(2, 3))
    model.set_params(features=features)
    direct = pooled_features(
        X,
        kernels,
        log_weights=np.log(weights),
        padding=1,
        latent=latent,
        features=features,
        pooling=(2, 3),
    )
    assert direct.shape == (6, 3 * 2 * 3)
    assert_close(direct, model.transform(X), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("latent", ["image", "patch"])
def test_sqrt_posterior_is_the_square_root_of_the_posterior_mass(latent):
    rng = np.random.default_rng(7)
    X = rng.standard_normal((6, 2, 9, 8))
    kernels = rng.standard_normal((4, 2, 3, 3))
    opts = dict(latent=latent, pooling=((1, 1), (2, 3)), padding=1)
    from calm_np._readouts import pooled_features

    mass = pooled_features(X, kernels, features="posterior", **opts)
    root = pooled_features(X, kernels, features="sqrt_posterior", **opts)
    np.testing.assert_allclose(root**2, mass, rtol=1e-12, atol=1e-15)
    assert (root >= 0).all()
