"""A learned shared variance σ² (docs/user_guide/model.rst §2): identity, ECM,
recovery, persistence.

The identity with σ² is checked against a brute-force mixture of
multivariate normals (scipy), the M-step's σ² against the expected residual
computed from the posterior directly, and the fit on data generated with a
known σ².
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from _helpers import assert_close, make_data, planted_images, problems
from hypothesis import given
from hypothesis import strategies as st

import calm_np
from calm_np import ConvolutionalMixture
from calm_np._mstep import VARIANCE_FLOOR, Params
from calm_np._online import online_step, running_from_model
from calm_np._xp import to_numpy

LATENTS = ["image", "patch"]
variances = st.floats(0.05, 20.0)


def _fit(X, **kw):
    kw = {"n_kernels": 3, "kernel_size": 3, "random_state": 0, **kw}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ConvolutionalMixture(**kw).fit(X)


def _mean_at(mu, shape, y, x):
    """``μ`` placed at ``(y, x)`` of a zero image of ``shape`` (c, Hp, Wp)."""
    m = np.zeros(shape)
    m[:, y : y + mu.shape[1], x : x + mu.shape[2]] = mu
    return m


def brute_force_log_likelihood(X, M, log_w, padding, variance, latent):
    """``log p(X_n)`` (image) or ``Σ_u log p(x_u)`` (patch) with scipy's MVN."""
    from scipy.special import logsumexp
    from scipy.stats import multivariate_normal

    ph, pw = padding
    Xp = np.pad(X, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    k, _, kh, kw = M.shape
    Ho, Wo = Xp.shape[2] - kh + 1, Xp.shape[3] - kw + 1
    out = []
    for img in Xp:
        if latent == "image":
            terms = [
                log_w[j]
                - math.log(Ho * Wo)
                + multivariate_normal.logpdf(
                    img.ravel(), _mean_at(M[j], img.shape, y, x).ravel(), variance
                )
                for j in range(k)
                for y in range(Ho)
                for x in range(Wo)
            ]
            out.append(logsumexp(terms))
        else:
            total = 0.0
            for y in range(Ho):
                for x in range(Wo):
                    patch = img[:, y : y + kh, x : x + kw].ravel()
                    total += logsumexp(
                        [
                            log_w[j]
                            + multivariate_normal.logpdf(patch, M[j].ravel(), variance)
                            for j in range(k)
                        ]
                    )
            out.append(total)
    return np.array(out)


@given(p=problems(max_n=2, max_c=2, max_hw=5, max_kernel=3), variance=variances)
@pytest.mark.parametrize("latent", LATENTS)
def test_identity_with_variance_is_the_mvn_mixture(latent, p, variance):
    X, M, log_w = make_data(p)
    expected = brute_force_log_likelihood(
        X,
        M,
        np.full(p["k"], -math.log(p["k"])) if log_w is None else log_w,
        p["padding"],
        variance,
        latent,
    )
    kw = dict(log_weights=log_w, padding=p["padding"], latent=latent)
    for method in ("im2col", "fft"):
        ll = calm_np.log_likelihood(X, M, method=method, variance=variance, **kw)
        assert_close(ll, expected, rtol=1e-9, atol=1e-9)
        stats = calm_np.sufficient_statistics(X, M, variance=variance, **kw)
        assert_close(stats.log_likelihood, expected.sum(), rtol=1e-9, atol=1e-9)


def _expected_residual(X, M, gamma, padding, latent):
    """``Σ_n Σ_{k,u} γ ‖x − μ_k at u‖²`` and the number of values, brute force."""
    ph, pw = padding
    Xp = np.pad(X, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    k, _, kh, kw = M.shape
    Q = 0.0
    for n, img in enumerate(Xp):
        for j in range(k):
            for y in range(gamma.shape[2]):
                for x in range(gamma.shape[3]):
                    if latent == "image":
                        r = img - _mean_at(M[j], img.shape, y, x)
                    else:
                        r = img[:, y : y + kh, x : x + kw] - M[j]
                    Q += gamma[n, j, y, x] * float(np.sum(r * r))
    n_pos = gamma.shape[2] * gamma.shape[3]
    per_image = Xp[0].size if latent == "image" else n_pos * M[0].size
    return Q, X.shape[0] * per_image


@given(p=problems(max_n=3, max_c=2, max_hw=6, max_kernel=3), variance=variances)
@pytest.mark.parametrize("latent", LATENTS)
def test_variance_m_step_is_the_expected_residual(latent, p, variance):
    """ECM: σ² = E[Σ‖x − μ‖²] / values with the new kernels (no prior),
    at least ``VARIANCE_FLOOR`` of the mean square."""
    X, M, log_w = make_data(p)
    kw = dict(log_weights=log_w, padding=p["padding"], latent=latent)
    gamma = to_numpy(calm_np.posterior(X, M, variance=variance, **kw))
    stats = calm_np.sufficient_statistics(X, M, variance=variance, **kw)
    lw = np.full(p["k"], -math.log(p["k"])) if log_w is None else log_w
    new = Params(M, lw, variance).m_step(stats, 0.0, False, True)
    Q, n_values = _expected_residual(X, new.kernels, gamma, p["padding"], latent)
    assert stats.n_values == n_values
    assert isinstance(new.variance, float)
    floor = VARIANCE_FLOOR * float(np.sum(stats.sq_norm))
    assert math.isclose(new.variance, max(Q, floor) / n_values, rel_tol=1e-8)


@given(
    latent=st.sampled_from(LATENTS),
    reg=st.sampled_from([0.0, 0.5, 5.0]),
    batch_size=st.sampled_from([None, 1, 4, 7]),
    learn_weights=st.booleans(),
    scale=st.sampled_from([0.1, 1.0, 7.0]),
    seed=st.integers(0, 2**16),
)
def test_em_with_learned_variance_never_decreases_the_objective(
    latent, reg, batch_size, learn_weights, scale, seed
):
    rng = np.random.default_rng(seed)
    X = scale * rng.standard_normal((9, 1, 7, 7))
    m = _fit(
        X,
        latent=latent,
        reg_kernels=reg,
        batch_size=batch_size,
        learn_weights=learn_weights,
        learn_variance=True,
        max_iter=12,
        tol=0.0,
        random_state=seed,
    )
    bounds = np.array(m.lower_bounds_)
    assert np.all(np.diff(bounds) >= -1e-9 * np.maximum(1.0, np.abs(bounds[1:])))
    assert isinstance(m.variance_, float) and m.variance_ > 0
    # lower_bound_ is the objective of the fitted (kernels, weights, σ²)
    penalty = 0.5 * reg * float(np.sum(m.kernels_**2)) / X.shape[0]
    assert math.isclose(m.score(X) - penalty, m.lower_bound_, rel_tol=1e-9)


def test_moves_with_learned_variance_keep_the_objective_monotone():
    kernels = 3 * np.random.default_rng(1).standard_normal((3, 1, 5, 5))
    X, _ = planted_images(2, 80, 1, 12, 12, kernels, noise=0.5)
    m = _fit(X, kernel_size=5, learn_variance=True, max_iter=40, init="random")
    assert np.all(np.diff(m.lower_bounds_) >= -1e-9 * np.abs(m.lower_bounds_[1:]))


@pytest.mark.parametrize("latent", LATENTS)
def test_batching_does_not_change_the_variance(latent):
    X = np.random.default_rng(3).standard_normal((23, 1, 8, 8)) * 2.5
    kw = dict(latent=latent, learn_variance=True, max_iter=6, tol=0.0)
    whole, parts = _fit(X, **kw), _fit(X, batch_size=5, **kw)
    assert math.isclose(whole.variance_, parts.variance_, rel_tol=1e-10)
    assert_close(whole.kernels_, parts.kernels_, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("sigma", [0.05, 1.0, 4.0])
def test_fitted_variance_recovers_the_generating_one_image_latent(sigma):
    """Planted kernels (SNR fixed: amplitude 3σ) plus σ·noise.

    The σ² MLE from ``n·P`` values has a relative standard deviation of
    ``sqrt(2 / (n·P))`` = 0.6 % here (n = 400, P = 144); a well-separated
    fit adds little, so 3 % is about five standard deviations.  EM finds
    local optima (here a single k-means++ start merges two patterns and
    σ² absorbs the misfit, +18 %): the best of three starts is kept.
    """
    kernels = 3 * sigma * np.random.default_rng(5).standard_normal((3, 1, 5, 5))
    X, _ = planted_images(6, 400, 1, 12, 12, kernels, noise=sigma)
    kw = dict(kernel_size=5, learn_variance=True, max_iter=100, tol=1e-8, n_init=3)
    m = _fit(X, **kw)
    assert abs(m.variance_ / sigma**2 - 1) < 0.03


def test_fitted_variance_recovers_the_generating_one_patch_latent():
    """1×1 kernels: every pixel an independent draw from the mixture, exactly
    the patch model.  ``n·|U|·D`` = 38 400 values: sd 0.7 %, tolerance 3 %."""
    rng = np.random.default_rng(7)
    sigma, means = 0.3, 3 * rng.standard_normal((3, 3))  # (k, c)
    z = rng.integers(3, size=(200, 8, 8))
    X = np.moveaxis(means[z], -1, 1) + sigma * rng.standard_normal((200, 3, 8, 8))
    m = _fit(X, kernel_size=1, latent="patch", learn_variance=True, max_iter=100)
    assert abs(m.variance_ / sigma**2 - 1) < 0.03


@pytest.mark.parametrize("latent", LATENTS)
def test_learned_variance_makes_the_fit_scale_equivariant(latent):
    """Scaling X by 4 (exact in binary) scales kernels by 4 and σ² by 16."""
    X = np.random.default_rng(8).standard_normal((20, 1, 8, 8))
    kw = dict(latent=latent, learn_variance=True, max_iter=8, tol=0.0)
    a, b = _fit(X, **kw), _fit(4.0 * X, **kw)
    assert math.isclose(b.variance_, 16 * a.variance_, rel_tol=1e-9)
    assert_close(b.kernels_, 4 * a.kernels_, rtol=1e-8, atol=1e-10)


def test_learn_variance_false_is_the_papers_model():
    X = np.random.default_rng(9).standard_normal((12, 1, 7, 7))
    m = _fit(X, max_iter=4)
    assert m.variance_ == 1.0 and type(m.variance_) is float
    default = _fit(X, max_iter=4, learn_variance=False)
    np.testing.assert_array_equal(m.kernels_, default.kernels_)
    M = m.kernels_
    for func in ("log_joint", "posterior", "log_likelihood"):
        np.testing.assert_array_equal(
            getattr(calm_np, func)(X, M), getattr(calm_np, func)(X, M, variance=1.0)
        )
    s0, s1 = (
        calm_np.sufficient_statistics(X, M),
        calm_np.sufficient_statistics(X, M, variance=1),
    )
    np.testing.assert_array_equal(s0.sums, s1.sums)
    assert float(s0.log_likelihood) == float(s1.log_likelihood)


def test_variance_is_the_maps_temperature():
    """``A_σ = (A_1 − log π)/σ² + log π``; the statistics sum unscaled patches."""
    X, M, log_w = make_data(
        dict(
            n=3,
            c=2,
            k=3,
            H=7,
            W=6,
            padding=(1, 0),
            kernel=(3, 2),
            seed=4,
            weighted=True,
        )
    )
    A1 = calm_np.log_joint(X, M, log_weights=log_w, padding=(1, 0))
    A = calm_np.log_joint(X, M, log_weights=log_w, padding=(1, 0), variance=0.25)
    lw = log_w[None, :, None, None]
    assert_close(A, (A1 - lw) / 0.25 + lw)
    gamma = to_numpy(
        calm_np.posterior(X, M, log_weights=log_w, padding=(1, 0), variance=0.25)
    )
    stats = calm_np.sufficient_statistics(
        X, M, log_weights=log_w, padding=(1, 0), variance=0.25
    )
    assert_close(stats.counts, gamma.sum(axis=(0, 2, 3)))
    assert_close(stats.sq_norm, np.sum(X * X))


@pytest.mark.parametrize("latent", LATENTS)
def test_across_backends(backend, latent):
    X = np.random.default_rng(10).standard_normal((10, 1, 7, 7)) * 3
    kw = dict(latent=latent, learn_variance=True, max_iter=5, tol=0.0)
    ref = _fit(X, **kw)
    m = _fit(backend.asarray(X, "float64"), **kw)
    assert isinstance(m.variance_, float)
    assert math.isclose(m.variance_, ref.variance_, rel_tol=1e-8)
    assert_close(m.kernels_, ref.kernels_, rtol=1e-7, atol=1e-9)
    score = to_numpy(m.score_samples(backend.asarray(X, "float64")))
    assert_close(score, to_numpy(ref.score_samples(X)), rtol=1e-8)
    M = backend.asarray(ref.kernels_, "float32")
    ll = calm_np.log_likelihood(
        backend.asarray(X, "float32"), M, variance=2.5, latent=latent
    )
    expected = calm_np.log_likelihood(X, ref.kernels_, variance=2.5, latent=latent)
    assert_close(ll, to_numpy(expected), dtype="float32", rtol=1e-4)


def test_partial_fit_learns_the_variance_and_a_loaded_model_continues(tmp_path):
    X = np.random.default_rng(11).standard_normal((30, 1, 8, 8)) * 0.2
    m = ConvolutionalMixture(3, kernel_size=3, learn_variance=True, random_state=0)
    for start in range(0, 30, 10):
        m.partial_fit(X[start : start + 10])
    assert 0 < m.variance_ < 0.2
    stats = calm_np.sufficient_statistics(
        X, m.kernels_, log_weights=np.log(m.weights_), variance=m.variance_
    )
    args = (m.kernels_, m.weights_, m.n_iter_, m.variance_)
    running = running_from_model(stats, *args)
    running["t"] = 10**12  # η → 0: the blend keeps the running state
    zero = stats.__class__(0 * stats.counts, 0 * stats.sums, 0.0, 1)
    _, blended = online_step(running, zero)
    back = Params(m.kernels_, np.log(m.weights_), m.variance_).m_step(
        blended, 0.0, False, True
    )
    assert math.isclose(back.variance, m.variance_, rel_tol=1e-9)
    assert_close(back.kernels, m.kernels_, rtol=1e-9)


def test_save_load_keeps_the_variance_bit_exact(tmp_path):
    X = np.random.default_rng(12).standard_normal((15, 1, 8, 8)) * 0.37
    m = _fit(X, learn_variance=True, max_iter=5)
    m.save(tmp_path / "m.npz")
    back = ConvolutionalMixture.load(tmp_path / "m.npz")
    assert back.variance_ == m.variance_ and back.learn_variance
    np.testing.assert_array_equal(back.score_samples(X), m.score_samples(X))
    np.testing.assert_array_equal(back.transform(X), m.transform(X))


def test_files_without_a_variance_load_with_variance_one(tmp_path):
    X = np.random.default_rng(13).standard_normal((15, 1, 8, 8))
    m = _fit(X, max_iter=3)
    m.save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz") as f:
        arrays = dict(f)
    header = json.loads(bytes(arrays.pop("header")).decode())
    del header["variance"], header["params"]["learn_variance"]  # an older file
    blob = np.frombuffer(json.dumps(header).encode(), np.uint8)
    np.savez(tmp_path / "old.npz", header=blob, **arrays)
    old = ConvolutionalMixture.load(tmp_path / "old.npz")
    assert old.variance_ == 1.0 and not old.learn_variance
    np.testing.assert_array_equal(old.score_samples(X), m.score_samples(X))


@pytest.mark.parametrize("latent", LATENTS)
def test_features_use_the_variance_but_the_triangle_does_not(latent):
    X = np.random.default_rng(14).standard_normal((12, 1, 8, 8)) * 0.3
    m = _fit(X, learn_variance=True, max_iter=5, latent=latent, pooling=2)
    lj = m.transform(X)
    A = to_numpy(
        calm_np.log_joint(
            X, m.kernels_, log_weights=np.log(m.weights_), variance=m.variance_
        )
    )
    from scipy.special import logsumexp

    cell = logsumexp(A[:, :, :3, :3], axis=(2, 3))  # Ho = Wo = 6: cells of 3
    assert_close(lj.reshape(12, 3, 2, 2)[:, :, 0, 0], cell)
    tri = m.set_params(features="triangle").transform(X)
    unit = ConvolutionalMixture(**m.get_params())
    unit.__dict__.update({k: v for k, v in m.__dict__.items() if k.endswith("_")})
    unit.variance_ = 1.0
    np.testing.assert_array_equal(tri, unit.transform(X))


@pytest.mark.parametrize("latent", LATENTS)
def test_dask_statistics_equal_numpy(latent):
    da = pytest.importorskip("dask.array")
    import dask

    X = np.random.default_rng(15).standard_normal((17, 2, 7, 7))
    M = np.random.default_rng(16).standard_normal((3, 2, 3, 3))
    kw = dict(padding=1, latent=latent, variance=0.7)
    ref = calm_np.sufficient_statistics(X, M, **kw)
    with dask.config.set(scheduler="synchronous"):
        from calm_np._dask import statistics

        got = statistics(da.from_array(X, chunks=(5, 2, 7, 7)), M, **kw)
        fitted = _fit(
            da.from_array(X, chunks=(4, 2, 7, 7)),
            learn_variance=True,
            max_iter=4,
            tol=0.0,
            latent=latent,
        )
    for name in ("counts", "sums", "log_likelihood", "sq_norm"):
        assert_close(getattr(got, name), getattr(ref, name), rtol=1e-12)
    assert got.n_values == ref.n_values and got.n_samples == ref.n_samples
    local = _fit(X, learn_variance=True, max_iter=4, tol=0.0, latent=latent)
    assert math.isclose(fitted.variance_, local.variance_, rel_tol=1e-9)


def test_a_fit_that_copies_the_data_stops_at_the_floor():
    """One kernel the size of the only image fits it exactly: Q = 0, and σ²
    stops at ``VARIANCE_FLOOR`` times the mean square instead of 0."""
    X = np.random.default_rng(17).standard_normal((1, 1, 3, 3))
    m = _fit(X, n_kernels=1, learn_variance=True, max_iter=3, tol=0.0)
    floor = VARIANCE_FLOOR * float(np.mean(X * X))
    assert math.isclose(m.variance_, floor, rel_tol=1e-9)
    assert np.all(np.isfinite(m.lower_bounds_))
    assert np.all(np.diff(m.lower_bounds_) >= 0)


def test_warm_start_continues_from_the_fitted_variance():
    X = np.random.default_rng(18).standard_normal((20, 1, 8, 8)) * 0.4
    kw = dict(learn_variance=True, tol=0.0)
    once = _fit(X, max_iter=6, **kw)
    twice = _fit(X, max_iter=3, **kw)
    twice = twice.set_params(warm_start=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        twice.fit(X)
    assert math.isclose(twice.variance_, once.variance_, rel_tol=1e-9)
    assert twice.lower_bounds_[0] >= once.lower_bounds_[2] - 1e-9
