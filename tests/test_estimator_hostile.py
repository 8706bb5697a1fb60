"""Hostile use of a fitted ``ConvolutionalMixture`` (``_estimator``, ``_moves``,
``_readouts``): warm starts and ``partial_fit`` on other shapes, callbacks,
failed refits, scores, autograd and Dask input.

A failure leaves the fitted model as it was; every number a fit returns is
finite.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from _hostile import (
    LIBS,
    assert_unchanged,
    fitted,
    lib_array,
    model,
    quiet_fit,
    small,
    snapshot,
)

import calm_np
from calm_np import ConvolutionalMixture, NotFittedError
from calm_np._warnings import DeadKernelWarning
from calm_np._xp import to_numpy

RNG = np.random.default_rng(0)
X = RNG.standard_normal((20, 1, 8, 8))


def test_grid_search_best_estimator_saves(tmp_path):
    pytest.importorskip("sklearn")
    from sklearn.model_selection import GridSearchCV

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        search = GridSearchCV(model(), {"n_kernels": np.arange(2, 4)}, cv=2).fit(X)
    search.best_estimator_.save(tmp_path / "best.npz")
    assert ConvolutionalMixture.load(tmp_path / "best.npz").n_kernels in (2, 3)


def _nan(a):
    a = a.copy()
    a.flat[0] = np.nan
    return a


# -- fitted state ------------------------------------------
@pytest.mark.parametrize(
    "change, match",
    [
        (dict(kernel_size=5), r"kernel_size=\(5, 5\) differs from the fitted model's"),
        (dict(n_kernels=5), "n_kernels=5 differs from the fitted model's 3"),
        (dict(padding=1), r"padding=\(1, 1\) differs from the fitted model's \(0, 0\)"),
        (dict(kernel_size=5, n_kernels=5), "differs from the fitted model's"),
    ],
)
@pytest.mark.parametrize("how", ["warm_fit", "partial_fit"])
def test_continuing_with_another_shape_is_refused(change, match, how):
    m = fitted()
    before = snapshot(m)
    if how == "warm_fit":
        m.set_params(warm_start=True, **change)
        call = m.fit
    else:
        m.set_params(**change)
        call = m.partial_fit
    with pytest.raises(ValueError, match=match):
        call(X)
    assert_unchanged(m, before)


def test_warm_start_with_other_channels_is_refused():
    m = fitted(warm_start=True)
    before = snapshot(m)
    with pytest.raises(ValueError, match=r"X has 3 channel\(s\) but the model was"):
        m.fit(RNG.standard_normal((10, 3, 8, 8)))
    assert_unchanged(m, before)


def test_fresh_fit_starts_over_with_new_shapes():
    m = fitted()
    m.set_params(kernel_size=5, n_kernels=4)
    quiet_fit(m, RNG.standard_normal((12, 2, 9, 9)))
    assert m.kernels_.shape == (4, 2, 5, 5)
    assert m.kernel_size_ == (5, 5) and m.n_channels_in_ == 2


def test_not_fitted_is_named():
    for method in ("transform", "score", "score_samples"):
        with pytest.raises(NotFittedError, match="call fit or partial_fit"):
            getattr(model(), method)(X)
    with pytest.raises(NotFittedError, match="not fitted yet"):
        model().save("never.npz")


def test_partial_fit_on_a_loaded_model(tmp_path):
    m = fitted()
    m.save(tmp_path / "m.npz")
    back = ConvolutionalMixture.load(tmp_path / "m.npz")
    back.partial_fit(X[:5])
    assert back.n_iter_ == m.n_iter_ + 1
    assert len(back.lower_bounds_) == len(m.lower_bounds_) + 1
    assert np.all(np.isfinite(back.kernels_))


def test_loaded_running_statistics_give_the_model_back():
    """With reg_kernels=0 the rebuilt state's M-step is the loaded model."""
    from calm_np._mstep import m_step
    from calm_np._online import online_step, running_from_model

    m = fitted()
    stats = calm_np.sufficient_statistics(X, m.kernels_, log_weights=np.log(m.weights_))
    running = running_from_model(stats, m.kernels_, m.weights_, m.n_iter_)
    zero = stats.__class__(0 * stats.counts, 0 * stats.sums, 0.0, 1)
    running["t"] = 10**12  # η → 0: the blend keeps the running state
    _, blended = online_step(running, zero)
    new, _ = m_step(blended, m.kernels_, np.log(m.weights_))
    np.testing.assert_allclose(new, m.kernels_, rtol=1e-6)


def test_callback_true_stops_every_run():
    calls = []
    m = quiet_fit(
        model(n_init=3, max_iter=5, callback=lambda e: calls.append(1) or 1 == 1), X
    )
    assert len(calls) == 1 and m.n_iter_ == 1


def test_failed_refit_keeps_the_model():
    m = fitted()
    before = snapshot(m)
    with pytest.raises(ValueError, match="X contains NaN"):
        m.fit(_nan(X))
    assert_unchanged(m, before)


@pytest.mark.parametrize("lib", LIBS)
def test_transform_with_pooling_too_fine_for_small_images(lib):
    m = fitted(pooling=4)
    with pytest.raises(ValueError, match=r"use pooling <= \(2, 2\)"):
        m.transform(lib_array(X[:2, :, :4, :4], lib))


# -- numbers that must stay finite ------------------------------------------
@pytest.mark.parametrize("lib", LIBS)
def test_triangle_with_a_zero_weight_is_finite(lib):
    m = fitted(features="triangle", pooling=2)
    m.weights_ = np.array([0.5, 0.5, 0.0])
    out = to_numpy(m.transform(lib_array(X[:4], lib)))
    assert np.all(np.isfinite(out))
    m.weights_ = np.array([1 / 3] * 3)
    same = to_numpy(m.transform(lib_array(X[:4], lib)))
    np.testing.assert_allclose(out, same, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("latent", ["image", "patch"])
def test_score_is_the_fitted_objective(latent):
    m = fitted(latent=latent)
    assert m.score(X) == pytest.approx(m.lower_bound_, rel=1e-12)
    per_image = calm_np.log_likelihood(
        X, m.kernels_, log_weights=np.log(m.weights_), latent=latent
    )
    np.testing.assert_allclose(m.score_samples(X), per_image, rtol=1e-12)


def test_patch_score_differs_from_image_score():
    m = fitted(latent="patch")
    image = calm_np.log_likelihood(X, m.kernels_, log_weights=np.log(m.weights_))
    assert not np.allclose(m.score_samples(X), image)


# -- torch autograd ------------------------------------------
def test_requires_grad_input_leaves_no_history():
    torch = pytest.importorskip("torch")
    Xt = torch.asarray(X).requires_grad_(True)
    m = quiet_fit(model(), Xt)
    assert not m.kernels_.requires_grad and m.kernels_.grad_fn is None
    assert not m.weights_.requires_grad
    m.partial_fit(Xt)
    assert m.kernels_.grad_fn is None
    assert m.transform(Xt).grad_fn is None


# -- Dask ------------------------------------------
def test_dask_score_is_a_float():
    da = pytest.importorskip("dask.array")
    m = fitted()
    value = m.score(da.from_array(X, chunks=(7, 1, 8, 8)))
    assert isinstance(value, float)
    assert value == pytest.approx(m.score(X), rel=1e-12)


# ten images and three kernels, for the cases below
X10 = RNG.standard_normal((10, 1, 8, 8))
K = RNG.standard_normal((3, 1, 3, 3))


def fit(model, data=X10):
    return quiet_fit(model, data)


def test_score_averages_in_float64():
    """float32 scores near the dtype's limit: their float32 mean overflowed."""
    X32 = (np.tile(X10, (4, 1, 1, 1)) / np.abs(X10).max() * 2.2e18).astype(np.float32)
    m = fit(small(max_iter=1), X32)
    values = to_numpy(m.score_samples(X32))
    assert np.isfinite(values).all()
    assert m.score(X32) == pytest.approx(float(np.mean(values, dtype=np.float64)))
    assert np.isfinite(m.score(X32))


# -- no data is lost ----------------------------------------------------------------


def test_fitted_kernels_never_alias_the_init_array():
    init = RNG.standard_normal((3, 1, 3, 3))
    m = fit(small(init=init, max_iter=0))
    assert not np.shares_memory(m.kernels_, init)
    kept = init.copy()
    init[:] = 0  # the caller edits its array: the model keeps its kernels
    np.testing.assert_array_equal(m.kernels_, kept)
    m.kernels_[:] = 1  # and the other way round: init is untouched
    np.testing.assert_array_equal(init, 0)


def test_a_numpy_bool_from_the_callback_stops_the_fit():
    m = fit(small(max_iter=10, tol=0.0, callback=lambda est: np.True_))
    assert m.n_iter_ == 1


def test_a_dead_kernel_under_learned_weights_raises_no_warning():
    """Weight exactly 0: log 0 = -inf, without NumPy's divide-by-zero warning."""
    init = np.concatenate([K, 50 + K[:1]])  # kernel 3 far from every patch
    m = small(n_kernels=4, init=init, learn_weights=True, max_iter=3, tol=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # NumPy's divide by zero
        warnings.simplefilter("ignore", calm_np.ConvergenceWarning)
        warnings.simplefilter("ignore", DeadKernelWarning)  # calm_np's own
        m.fit(X10)
        assert float(m.weights_[3]) == 0.0
        m.set_params(warm_start=True).fit(X10)
        m.partial_fit(X10)
