"""``whiten=True``: per-patch normalisation + ZCA whitening inside the patch model.

The model is the plain ``latent="patch"`` mixture over whitened patches
``z_u = W((x_u − x̄_u)/sqrt(var(x_u) + ε_n) − m)``.  The brute force here
builds every ``z_u`` with NumPy loops and computes the softmax, the
statistics and the objective directly; calm_np's generic engine, its fused
NumPy path and the other backends must all agree with it.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from _helpers import assert_close, make_data, problems
from hypothesis import given
from hypothesis import strategies as st

import calm_np
from calm_np import ConvolutionalMixture
from calm_np._readouts import pooled_features
from calm_np._whiten import (
    EPS_NORM_FRACTION,
    EPS_ZCA,
    Whitening,
    fit_whitening,
    whiten_patches,
)
from calm_np._xp import native_paths, to_numpy

LOG_2PI = math.log(2 * math.pi)


# -- brute force ---------------------------------------------------------------
def raw_patches(X, padding, kernel_shape):
    """Every patch ``(n, Ho, Wo, D)`` of the zero-padded images, by loops."""
    (ph, pw), (kh, kw) = padding, kernel_shape
    Xp = np.pad(X, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    n, c, Hp, Wp = Xp.shape
    Ho, Wo = Hp - kh + 1, Wp - kw + 1
    out = np.empty((n, Ho, Wo, c * kh * kw))
    for i in range(n):
        for y in range(Ho):
            for x in range(Wo):
                out[i, y, x] = Xp[i, :, y : y + kh, x : x + kw].ravel()
    return out


def whiten_by_hand(P, whitening):
    """``z = W((x − x̄)/sqrt(var(x) + ε) − m)`` of each row of ``P`` (…, D)."""
    mean, W = (np.asarray(to_numpy(a), dtype=np.float64) for a in whitening[:2])
    eps = whitening.eps
    centred = P - P.mean(axis=-1, keepdims=True)
    Y = centred / np.sqrt(centred.var(axis=-1, keepdims=True) + float(eps))
    return (Y - mean) @ W.T


def brute_force(X, kernels, log_w, padding, whitening):
    """``(A, N_k, S_k, objective per image)`` of the patch mixture over ``z_u``."""
    k = kernels.shape[0]
    Z = whiten_by_hand(raw_patches(X, padding, kernels.shape[2:]), whitening)
    M = kernels.reshape(k, -1)
    log_w = np.full(k, -math.log(k)) if log_w is None else log_w
    A = Z @ M.T - 0.5 * np.sum(M * M, axis=1) + log_w  # (n, Ho, Wo, k)
    mx = A.max(axis=-1, keepdims=True)
    log_norm = mx[..., 0] + np.log(np.exp(A - mx).sum(axis=-1))
    gamma = np.exp(A - log_norm[..., None])
    counts = gamma.sum(axis=(0, 1, 2))
    sums = np.einsum("nyxk,nyxd->kd", gamma, Z).reshape(kernels.shape)
    D = Z.shape[-1]
    per_patch = log_norm - 0.5 * np.sum(Z * Z, axis=-1) - 0.5 * D * LOG_2PI
    return np.moveaxis(A, -1, 1), counts, sums, per_patch.sum(axis=(1, 2)), Z


def triangle_by_hand(Z, kernels):
    """Triangle activations ``(n, k, Ho, Wo)`` of whitened patches ``Z``."""
    dist = np.linalg.norm(Z[..., None, :] - kernels.reshape(len(kernels), -1), axis=-1)
    return np.moveaxis(np.maximum(0, dist.mean(-1, keepdims=True) - dist), -1, 1)


def random_whitening(rng, D, scale=1.0):
    """Any (mean, symmetric matrix, ε): the algebra holds for all of them."""
    B = rng.standard_normal((D, D)) / math.sqrt(D)
    return Whitening(
        rng.standard_normal(D) * 0.3, scale * (B + B.T) / 2, float(rng.uniform(0.1, 2))
    )


def fitted_model(X, **kw):
    params = dict(
        n_kernels=4, kernel_size=3, latent="patch", whiten=True, max_iter=4, tol=0.0
    )
    params.update(random_state=0, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ConvolutionalMixture(**params).fit(X)


def images(seed=0, n=12, c=1, H=9, W=9):
    rng = np.random.default_rng(seed)
    # 0-255-like pixels: the whitening must make the model scale-free
    return 100 + 60 * rng.standard_normal((n, c, H, W))


# -- the whitening itself ----------------------------------------------------------
def test_fitted_whitening_is_the_zca_of_the_normalised_sample():
    rng = np.random.default_rng(1)
    P = rng.standard_normal((3000, 1, 3, 3)) @ np.diag([1, 2, 3.0]) * 40 + 120
    w = fit_whitening(P, np, np.float64, None)
    flat = P.reshape(len(P), -1)
    var = flat.var(axis=1)
    assert w.eps == pytest.approx(EPS_NORM_FRACTION * var.mean(), rel=1e-12)
    np.testing.assert_array_equal(w.matrix, w.matrix.T)
    Y = (flat - flat.mean(1, keepdims=True)) / np.sqrt(var[:, None] + w.eps)
    np.testing.assert_allclose(w.mean, Y.mean(0), atol=1e-12)
    # W C W = C (C + ε_z)^-1: whitened covariance has eigenvalues λ/(λ + ε_z)
    C = np.cov(Y, rowvar=False)
    lam = np.linalg.eigvalsh(C)
    Zc = np.cov(whiten_by_hand(flat, w), rowvar=False)
    np.testing.assert_allclose(
        np.sort(np.linalg.eigvalsh(Zc)), np.sort(lam / (lam + EPS_ZCA)), atol=1e-9
    )


@given(
    st.integers(0, 2**32 - 1),
    st.floats(1e-3, 1e3),
    st.floats(-1e3, 1e3),
)
def test_whitening_is_scale_and_brightness_free(seed, a, b):
    # fitted on a·x + b, the whitened patches are those of x
    rng = np.random.default_rng(seed)
    P = rng.standard_normal((500, 2, 2, 3))
    w1 = fit_whitening(P, np, np.float64, None)
    w2 = fit_whitening(a * P + b, np, np.float64, None)
    z1 = whiten_patches(P, w1, np)
    z2 = whiten_patches(a * P + b, w2, np)
    np.testing.assert_allclose(z2, z1, rtol=1e-7, atol=1e-7)


# -- the model equals the patch mixture on explicitly whitened patches -------------
@given(problems(max_n=3, max_c=2, max_k=3, max_hw=6, max_kernel=3))
def test_statistics_equal_the_brute_force_on_both_numpy_paths(p):
    X, M, log_w = make_data(p)
    rng = np.random.default_rng(p["seed"])
    D = p["c"] * p["kernel"][0] * p["kernel"][1]
    w = random_whitening(rng, D)
    A, counts, sums, objective, _ = brute_force(X, M, log_w, p["padding"], w)
    opts = dict(log_weights=log_w, padding=p["padding"], latent="patch", whitening=w)
    for native in (True, False):  # the fused NumPy pass, then the generic engine
        with native_paths(native):
            assert_close(calm_np.log_joint(X, M, **opts), A)
            stats = calm_np.sufficient_statistics(X, M, **opts)
            assert_close(stats.counts, counts)
            assert_close(stats.sums, sums)
            assert_close(stats.log_likelihood, objective.sum())
            assert_close(calm_np.log_likelihood(X, M, **opts), objective)


@pytest.mark.parametrize("features", calm_np._checks.FEATURES)
def test_readouts_equal_the_brute_force_on_both_numpy_paths(features):
    from scipy.special import logsumexp

    rng = np.random.default_rng(3)
    X = images(seed=3, n=5, c=2, H=8, W=7)
    M = rng.standard_normal((5, 2, 3, 3))
    sample = raw_patches(X, (1, 1), (3, 3)).reshape(-1, 2, 3, 3)
    w = fit_whitening(sample, np, np.float64, None)
    A, _, _, _, Z = brute_force(X, M, None, (1, 1), w)
    opts = dict(padding=1, latent="patch", whitening=w, features=features, pooling=2)
    out = {}
    for native in (True, False):
        with native_paths(native):
            out[native] = to_numpy(pooled_features(X, M, **opts))
    np.testing.assert_allclose(out[True], out[False], rtol=1e-10, atol=1e-10)
    # by hand, cell by cell (2x2 grid of the Ho x Wo positions)
    if features == "triangle":  # distances to the whitened patches
        maps, reduce = triangle_by_hand(Z, M), np.sum
    elif features == "log_joint":
        maps, reduce = A, logsumexp
    else:  # log of the posterior mass (softmax over kernels per position)
        maps, reduce = A - logsumexp(A, axis=1, keepdims=True), logsumexp
    Ho, Wo = maps.shape[2:]
    cells = [
        reduce(maps[:, :, y0:y1, x0:x1], axis=(2, 3))
        for y0, y1 in ((0, Ho // 2), (Ho // 2, Ho))
        for x0, x1 in ((0, Wo // 2), (Wo // 2, Wo))
    ]
    expected = np.stack(cells, axis=2).reshape(len(X), -1)
    if features == "posterior":
        expected = np.exp(expected)
    if features == "sqrt_posterior":
        expected = np.exp(expected / 2)
    np.testing.assert_allclose(out[True], expected, rtol=1e-8, atol=1e-8)


def test_patch_sq_norms_are_those_of_the_whitened_patches():
    from calm_np._em import Options, _Batch

    X = images(seed=4, n=3)
    M = np.random.default_rng(4).standard_normal((3, 1, 3, 3))
    w = random_whitening(np.random.default_rng(5), 9)
    *_, Z = brute_force(X, M, None, (0, 0), w)
    for native in (True, False):
        with native_paths(native):
            batch = _Batch(X, M, options=Options(latent="patch", whitening=w))
            assert_close(batch.patch_sq_norms(), np.sum(Z * Z, axis=-1))


# -- the estimator -------------------------------------------------------------------
@given(
    st.integers(0, 2**32 - 1),
    st.integers(1, 2),
    st.integers(2, 5),
    st.integers(0, 1),
    st.booleans(),
)
def test_em_with_whitening_never_decreases_the_objective(seed, c, k, pad, learn):
    X = images(seed=seed, n=10, c=c, H=8, W=8)
    m = fitted_model(X, n_kernels=k, padding=pad, max_iter=8, learn_weights=learn)
    bounds = np.asarray(m.lower_bounds_)
    assert np.all(np.diff(bounds) >= -1e-9 * np.abs(bounds[1:]))


def test_fit_equals_em_by_hand_on_whitened_patches():
    # one EM step of the estimator = the M-step of the brute-force statistics
    X = images(seed=7, n=10)
    m0 = fitted_model(X, max_iter=0)
    m1 = fitted_model(X, max_iter=1)
    K0 = to_numpy(m0.kernels_)
    _, counts, sums, objective, _ = brute_force(X, K0, None, (0, 0), m0.whitening_)
    assert m0.lower_bound_ == pytest.approx(objective.mean(), rel=1e-10)
    expected = sums / counts[:, None, None, None]
    np.testing.assert_allclose(to_numpy(m1.kernels_), expected, rtol=1e-8, atol=1e-10)
    for a, b in zip(m0.whitening_, m1.whitening_, strict=True):
        np.testing.assert_array_equal(a, b)


def test_initial_kernels_are_whitened_patches_of_the_data():
    X = images(seed=8, n=10)
    m = fitted_model(X, init="random_patches", max_iter=0, n_kernels=5)
    Z = whiten_by_hand(raw_patches(X, (0, 0), (3, 3)), m.whitening_).reshape(-1, 9)
    K = to_numpy(m.kernels_).reshape(5, -1)
    nearest = np.min(np.linalg.norm(K[:, None] - Z[None], axis=-1), axis=1)
    np.testing.assert_allclose(nearest, 0, atol=1e-10)
    # the whitening's ε_n follows the data's scale: same model on X / 255
    m2 = fitted_model(X / 255, init="random_patches", max_iter=0, n_kernels=5)
    assert m2.whitening_.eps == pytest.approx(m.whitening_.eps / 255**2, rel=1e-9)
    np.testing.assert_allclose(to_numpy(m2.kernels_), K.reshape(5, 1, 3, 3), atol=1e-7)


def test_batching_does_not_change_the_fit():
    X = images(seed=9, n=23)
    a = fitted_model(X, batch_size=None)
    b = fitted_model(X, batch_size=5)
    for u, v in zip(a.whitening_, b.whitening_, strict=True):
        np.testing.assert_array_equal(u, v)
    np.testing.assert_allclose(to_numpy(b.kernels_), to_numpy(a.kernels_), rtol=1e-9)
    np.testing.assert_allclose(b.lower_bounds_, a.lower_bounds_, rtol=1e-10)
    np.testing.assert_allclose(b.transform(X), a.transform(X), rtol=1e-9, atol=1e-9)


def test_warm_start_and_partial_fit_keep_the_whitening():
    X = images(seed=10, n=16)
    m = fitted_model(X)
    before = [np.copy(a) for a in m.whitening_[:2]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m.set_params(warm_start=True).fit(X)
        m.partial_fit(X[:5])
    for a, b in zip(m.whitening_[:2], before, strict=True):
        np.testing.assert_array_equal(a, b)
    p = ConvolutionalMixture(4, kernel_size=3, latent="patch", whiten=True)
    p.set_params(random_state=0).partial_fit(X[:8])
    first = [np.copy(a) for a in p.whitening_[:2]]
    p.partial_fit(X[8:])
    for a, b in zip(p.whitening_[:2], first, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_stalled_fit_reseeds_but_never_recentres():
    # every iteration "stalls" (tol huge): re-centring would need window
    # statistics, which whitened engines refuse; re-seeding may still run
    X = images(seed=11, n=12)
    m = fitted_model(X, tol=1e9, max_iter=5, n_kernels=6)
    assert np.isfinite(m.lower_bound_)
    assert np.all(np.diff(m.lower_bounds_) >= -1e-9 * abs(m.lower_bound_))


def test_save_and_load_are_bit_exact(tmp_path):
    X = images(seed=12, n=10).astype(np.float32)
    m = fitted_model(X)
    m.save(tmp_path / "m.npz")
    m2 = ConvolutionalMixture.load(tmp_path / "m.npz")
    for a, b in zip(m.whitening_, m2.whitening_, strict=True):
        np.testing.assert_array_equal(a, b)
        assert np.asarray(a).dtype == np.asarray(b).dtype
    np.testing.assert_array_equal(m2.transform(X), m.transform(X))
    np.testing.assert_array_equal(m2.score_samples(X), m.score_samples(X))


def _rewrite(path, edit_header=None, drop=(), add=None):
    """The model file at ``path`` with its header edited or members changed."""
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files if k not in drop}
    header = json.loads(bytes(arrays["header"]).decode())
    if edit_header is not None:
        edit_header(header)
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    arrays.update(add or {})
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def test_old_files_load_with_whitening_off(tmp_path):
    X = images(seed=13, n=8)
    m = fitted_model(X, whiten=False)
    path = tmp_path / "old.npz"
    m.save(path)
    _rewrite(path, lambda h: h["params"].pop("whiten"))
    old = ConvolutionalMixture.load(path)
    assert old.whiten is False and old.whitening_ is None
    np.testing.assert_array_equal(old.transform(X), m.transform(X))


@pytest.mark.parametrize(
    "edit, drop, add, match",
    [
        (None, ("whiten_matrix",), None, "no whitening arrays"),
        (lambda h: h.pop("whiten_eps"), (), None, "whiten_eps"),
        (lambda h: h.update(whiten_eps=-1.0), (), None, "whiten_eps"),
        (lambda h: h["params"].update(whiten=False), (), None, "whiten=False"),
        (None, (), dict(whiten_mean=np.full(9, np.nan)), "contain NaN"),
        (None, (), dict(whiten_matrix=np.eye(4)), "header declares"),
    ],
)
def test_bad_whitening_in_a_file_is_refused(tmp_path, edit, drop, add, match):
    X = images(seed=14, n=8)
    path = tmp_path / "m.npz"
    fitted_model(X).save(path)
    _rewrite(path, edit, drop, add)
    with pytest.raises(ValueError, match=match):
        ConvolutionalMixture.load(path)


def test_whiten_off_never_builds_a_whitening():
    m = fitted_model(images(seed=15, n=8), whiten=False)
    assert m.whitening_ is None


def test_dask_input_gives_the_same_fit_and_features():
    da = pytest.importorskip("dask.array")
    X = images(seed=16, n=20)
    a = fitted_model(X)
    b = fitted_model(da.from_array(X, chunks=(6, 1, 9, 9)))
    np.testing.assert_allclose(b.lower_bounds_, a.lower_bounds_, rtol=1e-10)
    F = b.transform(da.from_array(X, chunks=(6, 1, 9, 9))).compute()
    np.testing.assert_allclose(F, a.transform(X), rtol=1e-9, atol=1e-9)


def test_network_layer_reads_its_whitening(tmp_path):
    from calm_np import ConvolutionalMixtureNetwork

    X = images(seed=17, n=16, H=12, W=12)
    layers = [
        ConvolutionalMixture(
            4, kernel_size=3, latent="patch", whiten=True, max_iter=2, pooling=2
        ),
        ConvolutionalMixture(3, kernel_size=2, max_iter=2, pooling=1),
    ]
    for layer in layers:
        layer.set_params(random_state=0, features="triangle")
    net = ConvolutionalMixtureNetwork(layers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net.fit(X)
    F = net.transform(X)
    assert F.shape[0] == 16 and np.isfinite(F).all()
    # layer 1's part of the readout is its own (whitened) transform
    first = net.layers_[0]
    np.testing.assert_allclose(F[:, :16], first.transform(X), rtol=1e-6)
    # layer 2 sees layer 1's triangle maps of the *whitened* patches
    from calm_np._network import _activation_maps

    maps, _ = _activation_maps(X, first, "triangle")
    K = to_numpy(first.kernels_)
    *_, Z = brute_force(X, K, None, (0, 0), first.whitening_)
    np.testing.assert_allclose(to_numpy(maps), triangle_by_hand(Z, K), atol=1e-8)
    # a saved network keeps its layers' whitening
    net.save(tmp_path / "net.npz")
    again = ConvolutionalMixtureNetwork.load(tmp_path / "net.npz")
    np.testing.assert_array_equal(again.transform(X), F)


# -- backends --------------------------------------------------------------------------
def test_backends_agree_with_numpy(backend):
    X = images(seed=18, n=10)
    ref = fitted_model(X, features="triangle", pooling=2)
    m = fitted_model(backend.asarray(X), features="triangle", pooling=2)
    np.testing.assert_allclose(m.lower_bounds_, ref.lower_bounds_, rtol=1e-9)
    np.testing.assert_allclose(to_numpy(m.kernels_), ref.kernels_, rtol=1e-7, atol=1e-9)
    for a, b in zip(m.whitening_[:2], ref.whitening_[:2], strict=True):
        np.testing.assert_allclose(to_numpy(a), b, rtol=1e-10, atol=1e-12)
    F = to_numpy(m.transform(backend.asarray(X)))
    np.testing.assert_allclose(F, ref.transform(X), rtol=1e-7, atol=1e-7)


# -- refusals ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "params, match",
    [
        (dict(latent="image"), "whiten=True needs latent='patch'"),
        (dict(method="fft"), "whiten=True cannot run with method='fft'"),
    ],
)
def test_whiten_refuses_image_latent_and_fft(params, match):
    with pytest.raises(ValueError, match=match):
        fitted_model(images(n=4), **params)


def test_functions_refuse_a_whitening_of_the_wrong_size():
    X, M = images(n=2), np.ones((2, 1, 3, 3))
    M[1] = 0
    w = random_whitening(np.random.default_rng(0), 4)
    with pytest.raises(ValueError, match="D = c·kh·kw = 9"):
        calm_np.log_joint(X, M, latent="patch", whitening=w)
    with pytest.raises(TypeError, match="whitening must be None or a"):
        calm_np.log_joint(X, M, latent="patch", whitening="zca")


def test_an_init_array_is_taken_as_whitened_kernels():
    X = images(seed=19, n=8)
    init = np.random.default_rng(19).standard_normal((4, 1, 3, 3))
    m = fitted_model(X, init=init, max_iter=0)
    np.testing.assert_array_equal(m.kernels_, init)
    ref = fitted_model(X, init="random_patches", max_iter=0)
    for a, b in zip(m.whitening_, ref.whitening_, strict=True):
        np.testing.assert_array_equal(a, b)  # fitted on the same sample


@pytest.mark.parametrize("fitted_whiten", [True, False])
def test_a_continued_fit_keeps_whiten(fitted_whiten):
    X = images(seed=20, n=8)
    m = fitted_model(X, whiten=fitted_whiten)
    m.set_params(whiten=not fitted_whiten, warm_start=True)
    match = f"whiten={not fitted_whiten} differs from the fitted model's"
    with pytest.raises(ValueError, match=match):
        m.fit(X)
    with pytest.raises(ValueError, match=match):
        m.partial_fit(X)
