"""The convolution–posterior identity and the EM statistics
(docs/user_guide/model.rst §1–3)."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import assert_close, check_array_like, make_data, problems
from _oracle import brute_force, log_joint_loop, patch_mixture, statistics_loop
from hypothesis import given
from hypothesis import strategies as st

import calm_np
from calm_np._xp import native_paths, to_numpy

FUNCS = ["log_joint", "posterior", "log_likelihood"]


def _methods(backend):
    return ["im2col"] if backend.name == "strict_nofft" else ["im2col", "fft"]


def _call(name, backend, X, M, log_w, padding, method, dtype="float64"):
    args = [backend.asarray(X, dtype), backend.asarray(M, dtype)]
    lw = None if log_w is None else backend.asarray(log_w, dtype)
    return getattr(calm_np, name)(*args, log_weights=lw, padding=padding, method=method)


# 1. the identity -----------------------------------------------------------


@given(p=problems(max_hw=5, max_kernel=3))
def test_identity_log_likelihood_and_posterior_match_brute_force(backend, p):
    X, M, log_w = make_data(p)
    log_px, resp = brute_force(X, M, log_w, p["padding"])
    for method in _methods(backend):
        ll = _call("log_likelihood", backend, X, M, log_w, p["padding"], method)
        assert_close(ll, log_px)
        post = _call("posterior", backend, X, M, log_w, p["padding"], method)
        assert_close(post, resp)


@pytest.mark.parametrize("padding", [0, 2, (1, 0)])
@pytest.mark.parametrize("c", [1, 3])
def test_identity_single_and_multichannel_padded(backend, padding, c):
    rng = np.random.default_rng(5)
    X = rng.standard_normal((2, c, 5, 6))
    M = 2 * rng.standard_normal((3, c, 3, 2))
    log_w = np.log([0.5, 0.3, 0.2])
    log_px, resp = brute_force(X, M, log_w, padding)
    for method in _methods(backend):
        assert_close(
            _call("log_likelihood", backend, X, M, log_w, padding, method), log_px
        )
        assert_close(_call("posterior", backend, X, M, log_w, padding, method), resp)


# 2. log_joint is the direct loop ------------------------------------------


@given(p=problems())
def test_log_joint_matches_loop(backend, p):
    X, M, log_w = make_data(p)
    expected = log_joint_loop(X, M, log_w, p["padding"])
    for method in _methods(backend):
        A = _call("log_joint", backend, X, M, log_w, p["padding"], method)
        assert_close(A, expected)


def test_log_joint_three_dim_input_means_one_channel(backend):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((2, 6, 5))
    M = rng.standard_normal((3, 2, 4))
    A = _call("log_joint", backend, X, M, None, 1, "auto")
    assert_close(A, log_joint_loop(X, M, None, 1))


# 3. the engines agree ------------------------------------------------------


@given(p=problems(max_hw=9, max_kernel=5, max_k=4))
def test_engines_agree_float64(fft_backend, p):
    X, M, log_w = make_data(p)
    b = fft_backend
    A = [_call("log_joint", b, X, M, log_w, p["padding"], m) for m in ("im2col", "fft")]
    assert_close(A[0], to_numpy(A[1]))
    s = [
        calm_np.sufficient_statistics(
            b.asarray(X),
            b.asarray(M),
            padding=p["padding"],
            method=m,
            log_weights=None if log_w is None else b.asarray(log_w),
        )
        for m in ("im2col", "fft")
    ]
    assert_close(s[0].counts, to_numpy(s[1].counts))
    assert_close(s[0].sums, to_numpy(s[1].sums))
    assert_close(s[0].log_likelihood, to_numpy(s[1].log_likelihood))


@given(p=problems(max_hw=9, max_kernel=5, max_k=4))
def test_engines_agree_float32_within_rounding(fft_backend, p):
    # float32 tolerance: both engines are within ~1e-4 of the float64 value
    # (see _helpers.TOL), so they are within twice that of each other.
    X, M, log_w = make_data(p)
    b = fft_backend
    ref = log_joint_loop(X, M, log_w, p["padding"])
    for m in ("im2col", "fft"):
        A = _call("log_joint", b, X, M, log_w, p["padding"], m, dtype="float32")
        assert A.dtype == b.xp.float32
        assert_close(A, ref, dtype="float32")
        s = calm_np.sufficient_statistics(
            b.asarray(X, "float32"),
            b.asarray(M, "float32"),
            padding=p["padding"],
            method=m,
        )
        counts, sums, ll = statistics_loop(X, M, None, p["padding"])
        assert_close(s.counts, counts, dtype="float32")
        assert_close(s.sums, sums, dtype="float32")
        assert_close(s.log_likelihood, ll, dtype="float32", rtol=1e-5)


@pytest.mark.parametrize(
    "name", ["numpy", pytest.param("torch", marks=pytest.mark.torch)]
)
def test_native_fast_paths_match_generic(name):
    from conftest import _make_backend

    fft_backend = _make_backend(name)
    rng = np.random.default_rng(3)
    X = fft_backend.asarray(rng.standard_normal((3, 2, 11, 9)))
    M = fft_backend.asarray(rng.standard_normal((4, 2, 4, 3)))
    for m in ("im2col", "fft"):
        fast = calm_np.sufficient_statistics(X, M, padding=1, method=m)
        with native_paths(False):
            slow = calm_np.sufficient_statistics(X, M, padding=1, method=m)
        assert_close(fast.sums, to_numpy(slow.sums))
        assert_close(fast.counts, to_numpy(slow.counts))


# statistics ------------------------------------------------------------------


@given(p=problems(max_hw=5, max_kernel=3))
def test_sufficient_statistics_match_brute_force(backend, p):
    X, M, log_w = make_data(p)
    counts, sums, ll = statistics_loop(X, M, log_w, p["padding"])
    for method in _methods(backend):
        s = calm_np.sufficient_statistics(
            backend.asarray(X),
            backend.asarray(M),
            padding=p["padding"],
            log_weights=None if log_w is None else backend.asarray(log_w),
            method=method,
        )
        assert_close(s.counts, counts)
        assert_close(s.sums, sums)
        assert_close(s.log_likelihood, ll)
        assert s.n_samples == p["n"]
        assert float(backend.xp.sum(s.counts)) == pytest.approx(p["n"], rel=1e-12)


# 4. statistics add up over any split ----------------------------------------


@given(p=problems(max_n=6), data=st.data())
def test_statistics_are_additive_over_any_split(backend, p, data):
    X, M, _ = make_data(p)
    cut = data.draw(st.integers(0, p["n"]), label="cut")
    whole = calm_np.sufficient_statistics(
        backend.asarray(X), backend.asarray(M), padding=p["padding"]
    )
    parts = [
        calm_np.sufficient_statistics(
            backend.asarray(X[s]), backend.asarray(M), padding=p["padding"]
        )
        for s in (slice(0, cut), slice(cut, None))
    ]
    total = parts[0] + parts[1]
    assert total.n_samples == whole.n_samples
    assert_close(total.counts, to_numpy(whole.counts))
    assert_close(total.sums, to_numpy(whole.sums))
    assert_close(total.log_likelihood, to_numpy(whole.log_likelihood))


# 5. equivariances ----------------------------------------------------------------


@given(p=problems(), perm_seed=st.integers(0, 1000))
def test_permuting_kernels_permutes_outputs(backend, p, perm_seed):
    X, M, log_w = make_data(p)
    perm = np.random.default_rng(perm_seed).permutation(p["k"])
    lw_perm = None if log_w is None else log_w[perm]
    for method in _methods(backend):
        post = to_numpy(_call("posterior", backend, X, M, log_w, p["padding"], method))
        post_p = _call("posterior", backend, X, M[perm], lw_perm, p["padding"], method)
        assert_close(post_p, post[:, perm])
        ll = to_numpy(
            _call("log_likelihood", backend, X, M, log_w, p["padding"], method)
        )
        assert_close(
            _call("log_likelihood", backend, X, M[perm], lw_perm, p["padding"], method),
            ll,
        )


@given(
    shift=st.tuples(st.integers(-2, 2), st.integers(-2, 2)),
    seed=st.integers(0, 2**32 - 1),
)
def test_shifting_content_in_zero_border_shifts_posterior(backend, shift, seed):
    rng = np.random.default_rng(seed)
    content = rng.standard_normal((2, 5, 4))
    M = rng.standard_normal((3, 2, 2, 3))
    H, W, b = 11, 10, 3  # content sits at (b, b) in a zero image
    X = np.zeros((1, 2, H, W))
    X[0, :, b : b + 5, b : b + 4] = content
    dy, dx = shift
    Xs = np.roll(X, (dy, dx), axis=(2, 3))  # content stays inside the border
    for method in _methods(backend):
        A = to_numpy(_call("log_joint", backend, X, M, None, 0, method))
        As = to_numpy(_call("log_joint", backend, Xs, M, None, 0, method))
        Ho, Wo = A.shape[2:]
        ys = slice(max(0, -dy), Ho - max(0, dy))
        xs = slice(max(0, -dx), Wo - max(0, dx))
        ys2 = slice(max(0, dy), Ho - max(0, -dy))
        xs2 = slice(max(0, dx), Wo - max(0, -dx))
        np.testing.assert_allclose(
            As[:, :, ys2, xs2], A[:, :, ys, xs], rtol=1e-10, atol=1e-10
        )


# posterior properties --------------------------------------------------------


@given(p=problems())
def test_posterior_sums_to_one(backend, p):
    X, M, log_w = make_data(p, scale=3.0)
    for method in _methods(backend):
        post = to_numpy(_call("posterior", backend, X, M, log_w, p["padding"], method))
        np.testing.assert_allclose(post.sum(axis=(1, 2, 3)), 1.0, rtol=1e-12)
        assert np.all(post >= 0)


@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 4))
def test_one_hot_posterior_gives_back_that_patch(backend, seed, k):
    # A huge kernel equal to the image's patch at u dominates every other
    # (k, u); then N_k = 1 for it and S_k is exactly that patch.
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((1, 2, 7, 6))
    y, x = rng.integers(4), rng.integers(3)
    X[0, :, y : y + 4, x : x + 4] *= 30.0
    M = 0.01 * rng.standard_normal((k, 2, 4, 4))
    j = rng.integers(k)
    M[j] = X[0, :, y : y + 4, x : x + 4]
    for method in _methods(backend):
        s = calm_np.sufficient_statistics(
            backend.asarray(X), backend.asarray(M), method=method
        )
        expected_counts = np.zeros(k)
        expected_counts[j] = 1.0
        assert_close(s.counts, expected_counts, atol=1e-9)
        assert_close(s.sums[j, ...], M[j], rtol=1e-8, atol=1e-8)


def test_minus_inf_log_weight_gives_zero_posterior(backend):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((2, 1, 6, 6))
    M = rng.standard_normal((3, 1, 3, 3))
    log_w = (
        np.log([0.5, 0.0, 0.5])
        if False
        else np.array([np.log(0.5), -np.inf, np.log(0.5)])
    )
    log_px, resp = brute_force(X, M[[0, 2]], np.log([0.5, 0.5]))
    for method in _methods(backend):
        post = to_numpy(_call("posterior", backend, X, M, log_w, 0, method))
        assert np.all(post[:, 1] == 0)
        assert np.all(np.isfinite(post))
        np.testing.assert_allclose(post[:, [0, 2]], resp, rtol=1e-10, atol=1e-12)
        assert_close(_call("log_likelihood", backend, X, M, log_w, 0, method), log_px)
        s = calm_np.sufficient_statistics(
            backend.asarray(X),
            backend.asarray(M),
            log_weights=backend.asarray(log_w),
            method=method,
        )
        assert float(s.counts[1, ...]) == 0.0
        assert np.all(np.isfinite(to_numpy(s.sums)))


def test_large_values_stay_finite(backend):
    rng = np.random.default_rng(2)
    X = 1e3 * rng.standard_normal((2, 1, 8, 8))
    M = 1e3 * rng.standard_normal((2, 1, 3, 3))
    for method in _methods(backend):
        post = to_numpy(_call("posterior", backend, X, M, None, 0, method))
        assert np.all(np.isfinite(post))
        np.testing.assert_allclose(post.sum(axis=(1, 2, 3)), 1.0)


# 6. namespace, dtype, device; read-only and non-contiguous input ----------------


@pytest.mark.parametrize("name", FUNCS)
def test_outputs_keep_namespace_dtype_device(backend, dtype, name):
    rng = np.random.default_rng(0)
    X = backend.asarray(rng.standard_normal((2, 2, 6, 5)), dtype)
    M = backend.asarray(rng.standard_normal((3, 2, 3, 3)), dtype)
    for method in _methods(backend):
        out = getattr(calm_np, name)(X, M, padding=1, method=method)
        check_array_like(out, backend, X, dtype)
        expected_shape = {"log_likelihood": (2,)}.get(name, (2, 3, 6, 5))
        assert tuple(out.shape) == expected_shape
    s = calm_np.sufficient_statistics(X, M, padding=1)
    # statistics accumulate in float64 (the device has it here)
    check_array_like(s.counts, backend, X, "float64")
    check_array_like(s.sums, backend, X, "float64")
    assert tuple(s.sums.shape) == (3, 2, 3, 3)


def test_device_is_kept_on_strict_second_device():
    strict = pytest.importorskip("array_api_strict")
    dev = strict.Device("device1")
    rng = np.random.default_rng(0)
    X = strict.asarray(rng.standard_normal((2, 1, 6, 5)), device=dev)
    M = strict.asarray(rng.standard_normal((3, 1, 3, 3)), device=dev)
    for method in ("im2col", "fft"):
        for name in FUNCS:
            out = getattr(calm_np, name)(
                X, M, padding=(1, 2), method=method, log_weights=None
            )
            assert out.device == dev
        s = calm_np.sufficient_statistics(X, M, method=method)
        assert s.counts.device == dev and s.sums.device == dev


def test_integer_images_become_default_float(backend):
    rng = np.random.default_rng(0)
    X = rng.integers(0, 5, size=(2, 1, 5, 5))
    M = rng.standard_normal((2, 1, 2, 2))
    out = calm_np.log_likelihood(backend.asarray(X), backend.asarray(M, "float32"))
    assert out.dtype == backend.xp.float32
    out = calm_np.log_joint(backend.asarray(X), backend.asarray(X[:, 0, :2, :2]))
    info = backend.xp.__array_namespace_info__()
    assert out.dtype == info.default_dtypes()["real floating"]


def test_read_only_and_non_contiguous_inputs_work():
    rng = np.random.default_rng(0)
    big = rng.standard_normal((4, 2, 12, 10))
    X = big[::2, :, ::2, 1::2]  # non-contiguous view
    M = np.asfortranarray(rng.standard_normal((3, 2, 3, 2)))
    X.flags.writeable = False
    M.flags.writeable = False
    ref = log_joint_loop(X, M, None, 1)
    for method in ("im2col", "fft"):
        assert_close(calm_np.log_joint(X, M, padding=1, method=method), ref)
        calm_np.sufficient_statistics(X, M, padding=1, method=method)


def test_empty_batch_gives_zero_statistics(backend):
    M = backend.asarray(np.ones((2, 1, 2, 2)))
    X = backend.asarray(np.zeros((0, 1, 4, 4)))
    for method in _methods(backend):
        s = calm_np.sufficient_statistics(X, M, method=method)
        assert s.n_samples == 0
        assert float(backend.xp.sum(s.counts)) == 0.0
        assert tuple(calm_np.log_likelihood(X, M, method=method).shape) == (0,)


def test_auto_picks_fft_for_large_kernels_and_im2col_for_small():
    import array_api_compat.numpy as xp

    from calm_np._engines import choose_method

    assert choose_method(xp, 3, 200, (96, 96), (15, 15)) == "fft"
    assert choose_method(xp, 1, 16, (28, 28), (3, 3)) == "im2col"


# 7. bad input ----------------------------------------------------------------------


def _good():
    rng = np.random.default_rng(0)
    return rng.standard_normal((2, 1, 6, 6)), rng.standard_normal((3, 1, 3, 3))


@pytest.mark.parametrize("name", FUNCS + ["sufficient_statistics"])
@pytest.mark.parametrize(
    "change, exc, match",
    [
        (
            lambda X, M: (np.where(X > 1, np.nan, X), M, {}),
            ValueError,
            "X contains NaN or infinity",
        ),
        (
            lambda X, M: (X, np.where(M > 1, np.inf, M), {}),
            ValueError,
            "kernels contains NaN or infinity",
        ),
        (
            lambda X, M: (X, M[:, :, :3, :3] * np.ones((1, 1, 3, 3)), {"padding": 0}),
            None,
            None,
        ),
        (
            lambda X, M: (X, np.ones((3, 1, 9, 2)), {}),
            ValueError,
            r"kernel size \(9, 2\) is larger than the padded image \(6, 6\); use "
            "smaller kernels or more padding",
        ),
        (
            lambda X, M: (X, np.ones((3, 2, 3, 3)), {}),
            ValueError,
            r"kernels have 2 channel\(s\) but X has 1",
        ),
        (
            lambda X, M: (X[0, 0], M, {}),
            ValueError,
            "X must have shape .n_samples, n_channels, height, width.",
        ),
        (lambda X, M: (X[None], M, {}), ValueError, "5 dimension"),
        (lambda X, M: (X, M[0, 0], {}), ValueError, "kernels must have shape"),
        (lambda X, M: (X, M[None], {}), ValueError, "kernels must have shape"),
        (
            lambda X, M: (X, M, {"padding": -1}),
            ValueError,
            "padding must be non-negative",
        ),
        (
            lambda X, M: (X, M, {"padding": (1, 2, 3)}),
            TypeError,
            "padding must be an int or a pair",
        ),
        (
            lambda X, M: (X, M, {"padding": 1.5}),
            TypeError,
            "padding must be an int or a pair",
        ),
        (lambda X, M: (X + 1j, M, {}), TypeError, "X has complex dtype"),
        (
            lambda X, M: (X, M.astype(complex), {}),
            TypeError,
            "kernels has complex dtype",
        ),
        (lambda X, M: (X.astype(object), M, {}), TypeError, "X has dtype object"),
        (lambda X, M: (X > 0, M, {}), TypeError, "X has dtype bool"),
        (
            lambda X, M: (X, M, {"method": "direct"}),
            ValueError,
            "method must be one of .'auto', 'im2col', 'fft'., got 'direct'",
        ),
        (
            lambda X, M: (X, M, {"log_weights": np.zeros(2)}),
            ValueError,
            r"log_weights must have shape \(n_kernels,\) = \(3,\)",
        ),
        (
            lambda X, M: (X, M, {"log_weights": np.zeros(3)}),
            ValueError,
            "log_weights must be log-probabilities",
        ),
        (
            lambda X, M: (X, M, {"log_weights": np.array([0, np.nan, 0])}),
            ValueError,
            "log_weights contains NaN",
        ),
    ],
)
def test_bad_input_raises_clear_error(name, change, exc, match):
    X, M = _good()
    X, M, kw = change(X, M)
    func = getattr(calm_np, name)
    if exc is None:
        func(X, M, **kw)  # the control case: this one is fine
        return
    with pytest.raises(exc, match=match):
        func(X, M, **kw)


def test_mixed_namespaces_are_refused():
    torch = pytest.importorskip("torch")
    X, M = _good()
    with pytest.raises(TypeError, match="all arrays must come from one array library"):
        calm_np.log_joint(torch.asarray(X), M)


def test_fft_without_fft_extension_is_refused():
    strict = pytest.importorskip("array_api_strict")
    X, M = _good()
    with strict.ArrayAPIStrictFlags(enabled_extensions=("linalg",)):
        Xs, Ms = strict.asarray(X), strict.asarray(M)
        _check_fft_refused(X, M, Xs, Ms)


def _check_fft_refused(X, M, Xs, Ms):
    with pytest.raises(ValueError, match="method='fft' needs an array namespace"):
        calm_np.log_joint(Xs, Ms, method="fft")
    # auto falls back to im2col
    assert_close(calm_np.log_joint(Xs, Ms), log_joint_loop(X, M))


# latent="patch": every patch an independent draw from the mixture ----------------


@given(p=problems(max_hw=6, max_kernel=3))
def test_patch_latent_matches_brute_force_patch_mixture(backend, p):
    X, M, log_w = make_data(p)
    pseudo_ll, resp, (counts, sums, total) = patch_mixture(X, M, log_w, p["padding"])
    lw = None if log_w is None else backend.asarray(log_w)
    for method in _methods(backend):
        kw = dict(log_weights=lw, padding=p["padding"], method=method, latent="patch")
        Xb, Mb = backend.asarray(X), backend.asarray(M)
        assert_close(calm_np.log_likelihood(Xb, Mb, **kw), pseudo_ll)
        post = calm_np.posterior(Xb, Mb, **kw)
        assert_close(post, resp)
        np.testing.assert_allclose(to_numpy(post).sum(axis=1), 1.0, rtol=1e-12)
        s = calm_np.sufficient_statistics(Xb, Mb, **kw)
        assert_close(s.counts, counts)
        assert_close(s.sums, sums)
        assert_close(s.log_likelihood, total)


@given(p=problems(max_hw=9, max_kernel=5))
def test_patch_latent_engines_agree_in_float32(fft_backend, p):
    X, M, _ = make_data(p)
    _, _, (counts, sums, total) = patch_mixture(X, M, None, p["padding"])
    for method in ("im2col", "fft"):
        s = calm_np.sufficient_statistics(
            fft_backend.asarray(X, "float32"),
            fft_backend.asarray(M, "float32"),
            padding=p["padding"],
            method=method,
            latent="patch",
        )
        assert_close(s.counts, counts, dtype="float32")
        assert_close(s.sums, sums, dtype="float32")
        assert_close(s.log_likelihood, total, dtype="float32", rtol=1e-5)


def test_unknown_latent_is_refused():
    X, M = _good()
    with pytest.raises(ValueError, match="latent must be one of .'image', 'patch'."):
        calm_np.posterior(X, M, latent="pixel")
