"""Pooling pyramids and the chunked readouts.

A ``pooling`` pyramid (several grids) is the concatenation of its grids'
features, computed from one E-step; NumPy's fused readout (the chunk's maps
as views of the plan's buffer, sums by one GEMM, logsumexp by pieces) equals
the generic whole-batch path for every feature, latent and grid, and holds
only a few images' maps at a time.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from _helpers import assert_close, check_array_like
from hypothesis import given
from hypothesis import strategies as st

import calm_np
from calm_np import _checks, _readouts
from calm_np._xp import native_paths

FEATURES = ("log_joint", "log_posterior", "posterior", "sqrt_posterior", "triangle")
PYRAMID = ((2, 2), (3, 3))

grids = st.tuples(st.integers(1, 4), st.integers(1, 4))
poolings = st.one_of(
    st.integers(1, 4),
    grids,
    st.lists(grids, min_size=2, max_size=3, unique=True).map(tuple),
)


def model_for(kernels, weights, **params):
    """A fitted model without a fit: ``transform`` reads only these."""
    k, c, kh, kw = kernels.shape
    model = calm_np.ConvolutionalMixture(k, kernel_size=(kh, kw), padding=1, **params)
    model.kernels_, model.weights_ = kernels, weights
    model.n_channels_in_, model.kernel_size_, model.padding_ = c, (kh, kw), (1, 1)
    return model


def data(seed=0, n=7, k=4, dtype=np.float64):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 2, 10, 9)).astype(dtype)
    kernels = rng.standard_normal((k, 2, 3, 3)).astype(dtype)
    weights = rng.dirichlet(np.ones(k)).astype(dtype)
    return X, kernels, weights


def assert_same(a, b, rtol):
    assert a.shape == b.shape
    finite = np.isfinite(b)
    np.testing.assert_array_equal(np.isfinite(a), finite)
    scale = max(np.max(np.abs(b[finite]), initial=0.0), 1e-300)
    np.testing.assert_allclose(a[finite], b[finite], rtol=0, atol=rtol * scale)


@given(
    pooling=poolings,
    method=st.sampled_from(["im2col", "fft"]),
    latent=st.sampled_from(["image", "patch"]),
    features=st.sampled_from(FEATURES),
    seed=st.integers(0, 2**16),
    dead=st.booleans(),
)
def test_fused_readouts_equal_generic_for_every_pooling(
    pooling, method, latent, features, seed, dead
):
    X, kernels, weights = data(seed)
    if dead:
        weights[1] = 0.0  # a kernel of weight 0: -inf log features
        weights /= weights.sum()
    with np.errstate(divide="ignore"):
        kw = dict(log_weights=np.log(weights), padding=1, method=method)
    kw.update(latent=latent, features=features, pooling=pooling)
    fused = _readouts.pooled_features(X, kernels, **kw)
    with native_paths(False):
        generic = _readouts.pooled_features(X, kernels, **kw)
    n_cells = _checks.n_cells(_checks.check_pooling(pooling))
    assert fused.shape == (X.shape[0], kernels.shape[0] * n_cells)
    assert_same(fused, generic, 1e-10)


@pytest.mark.parametrize("method", ["im2col", "fft"])
@pytest.mark.parametrize("features", FEATURES)
def test_fused_float32_readouts_equal_generic(method, features):
    X, kernels, weights = data(1, n=40, k=8, dtype=np.float32)
    kw = dict(log_weights=np.log(weights), padding=1, method=method)
    kw.update(latent="patch", features=features, pooling=PYRAMID)
    fused = _readouts.pooled_features(X, kernels, **kw)
    with native_paths(False):
        generic = _readouts.pooled_features(X, kernels, **kw)
    assert fused.dtype == np.float32
    assert_same(fused, generic, 1e-5)


@pytest.mark.parametrize("features", FEATURES)
@pytest.mark.parametrize("latent", ["image", "patch"])
@pytest.mark.parametrize("pooling", [PYRAMID, [1, (3, 2)], (1, 2, 3)])
def test_pyramid_is_the_concatenation_of_its_grids(features, latent, pooling):
    X, kernels, weights = data(2)
    model = model_for(kernels, weights, features=features, latent=latent)
    model.set_params(pooling=pooling)
    pyramid = model.transform(X)
    parts = [model.set_params(pooling=g).transform(X) for g in pooling]
    # one E-step, pieces combined per cell: equal up to rounding
    assert_same(pyramid, np.concatenate(parts, axis=1), 1e-12)


def test_pool_of_a_pyramid_equals_its_grids_on_wide_maps():
    # cells far below the map's maximum (spread 300) stay finite
    rng = np.random.default_rng(4)
    A = 300 * rng.standard_normal((3, 4, 13, 11))
    A[:, 0] = -np.inf  # a dead kernel
    for reduce in ("logsumexp", "sum"):
        maps = np.where(np.isfinite(A), A, 0) if reduce == "sum" else A
        got = _readouts.pool(maps.copy(), [(2, 2), (3, 4), (13, 1)], np, reduce)
        want = [_readouts.pool(maps.copy(), g, np, reduce) for g in ((2, 2), (3, 4))]
        want.append(_readouts.pool(maps.copy(), (13, 1), np, reduce))
        assert_same(got, np.concatenate(want, axis=1), 1e-12)


def test_pyramid_on_backends(backend, dtype):
    X, kernels, weights = data(5)
    model = model_for(
        backend.asarray(kernels, dtype), backend.asarray(weights, dtype),
        features="log_posterior", pooling=PYRAMID, latent="patch",
    )  # fmt: skip
    Xb = backend.asarray(X, dtype)
    out = model.transform(Xb)
    check_array_like(out, backend, Xb, dtype)
    want = model_for(kernels, weights, features="log_posterior", latent="patch")
    want.set_params(pooling=PYRAMID)
    assert out.shape == (7, 4 * 13)
    assert_close(out, want.transform(X), dtype=dtype)


def pyramid_layer(max_iter):
    return calm_np.ConvolutionalMixture(
        3, kernel_size=3, max_iter=max_iter, tol=0, features="triangle",
        pooling=PYRAMID, random_state=0,
    )  # fmt: skip


def test_pyramid_params_clone_save_and_load(tmp_path):
    sklearn_base = pytest.importorskip("sklearn.base")
    X, _, _ = data(6, n=12)
    model = pyramid_layer(max_iter=2)
    with pytest.warns(calm_np.ConvergenceWarning):
        F = model.fit_transform(X)
    assert F.shape == (12, 3 * 13)
    assert sklearn_base.clone(model).get_params()["pooling"] == PYRAMID
    model.save(tmp_path / "m.npz")
    loaded = calm_np.ConvolutionalMixture.load(tmp_path / "m.npz")
    assert loaded.pooling == PYRAMID
    np.testing.assert_array_equal(loaded.transform(X), F)
    # back to one grid: today's features
    assert loaded.set_params(pooling=2).transform(X).shape == (12, 3 * 4)


def test_pyramid_layer_in_a_network_and_on_dask():
    da = pytest.importorskip("dask.array")
    X, _, _ = data(7, n=16)
    layer = pyramid_layer(max_iter=1)
    top = calm_np.ConvolutionalMixture(2, kernel_size=2, max_iter=1, tol=0)
    net = calm_np.ConvolutionalMixtureNetwork([layer, top], readout="concat")
    with pytest.warns(calm_np.ConvergenceWarning):
        F = net.fit_transform(X)
    assert F.shape == (16, net.n_features_) and net.n_features_ == 3 * 13 + 2
    model = net.layers_[0]
    lazy = model.transform(da.from_array(X, chunks=(5, -1, -1, -1)))
    assert lazy.shape == (16, 3 * 13)
    np.testing.assert_allclose(lazy.compute(), model.transform(X), rtol=1e-12)


@pytest.mark.parametrize("features", ["log_joint", "triangle"])
def test_fused_readout_memory_is_bounded_by_a_chunk(features, monkeypatch):
    # whole-batch maps would be n·k·Ho·Wo·8 = 164 MB; a chunk's are ~6 MB
    monkeypatch.setenv("CALM_NP_NUM_THREADS", "2")
    rng = np.random.default_rng(8)
    X = rng.standard_normal((2000, 1, 22, 22))
    kernels = rng.standard_normal((32, 1, 3, 3))
    opts = dict(method="im2col", features=features, pooling=PYRAMID)
    _readouts.pooled_features(X[:50], kernels, **opts)  # warm caches
    tracemalloc.start()
    try:
        out = _readouts.pooled_features(X, kernels, **opts)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    maps = X.shape[0] * kernels.shape[0] * 20 * 20 * 8
    assert out.shape == (2000, 32 * 13)
    assert peak < maps / 3, (peak / 2**20, maps / 2**20)


@pytest.mark.parametrize(
    ("value", "exc", "match"),
    [
        ((), ValueError, "pooling is an empty list of grids"),
        ([(2, 2), (2, 2)], ValueError, r"lists the grid \(2, 2\) more than once"),
        ([1, (1, 1)], ValueError, r"lists the grid \(1, 1\) more than once"),
        (tuple(range(1, 10)), ValueError, "more than the 8 a pyramid may have"),
        ([2, (0, 3)], ValueError, "pooling must be >= 1"),
        ([2, 2.5], TypeError, "pooling must be an int or a pair"),
        ([2, True], TypeError, "pooling must be an int or a pair"),
        ([(2, 2, 2)], TypeError, "a list of such grids"),
        ([[(2, 2)]], TypeError, "pooling must be an int or a pair"),
        ("2+3", TypeError, "pooling must be an int or a pair"),
        ({2: 2}, TypeError, "pooling must be an int or a pair"),
    ],
)
def test_bad_pooling_is_refused_before_any_work(value, exc, match):
    X, _, _ = data(9, n=5)
    with pytest.raises(exc, match=match):
        calm_np.ConvolutionalMixture(2, kernel_size=3, pooling=value).fit(X)
    with pytest.raises(exc, match=match):
        _readouts.pooled_features(X, np.ones((2, 2, 3, 3)), pooling=value)


def test_a_pyramid_grid_finer_than_the_maps_is_named():
    X, _, _ = data(9, n=5)  # 8x7 maps
    model = calm_np.ConvolutionalMixture(2, kernel_size=3, pooling=[(2, 2), (3, 40)])
    with pytest.raises(ValueError, match=r"\(grid 3x40\) asks for more cells"):
        model.fit(X)


def test_pooling_forms_normalise_to_grids():
    check = _checks.check_pooling
    assert check(3) == ((3, 3),)
    assert check((2, 3)) == ((2, 3),)  # a pair of ints is one grid
    assert check(np.int16(2)) == ((2, 2),)
    assert check([2, 3, 4]) == ((2, 2), (3, 3), (4, 4))
    assert check([[2, 2], [3, 3]]) == PYRAMID  # as JSON stores it
    assert check((2, (3, 1))) == ((2, 2), (3, 1))
