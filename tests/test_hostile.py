"""Hostile input: every bad input is a clear error, and a fitted model survives it.

Each case asserts the exact exception type, a message that names the
parameter (or file) and says what to change, and, where a fitted model is
involved, that its ``kernels_``, ``weights_`` and ``lower_bounds_`` are
unchanged after the failure.  NumPy and PyTorch inputs where it applies, and
a few Dask cases.
"""

from __future__ import annotations

import io
import json
import math
import warnings
import zipfile

import numpy as np
import pytest

import calm_np
from calm_np import ConvolutionalMixture, NotFittedError
from calm_np._xp import to_numpy

LIBS = ["numpy", "torch"]
RNG = np.random.default_rng(0)
X = RNG.standard_normal((20, 1, 8, 8))


def lib_array(a, lib):
    if lib == "torch":
        torch = pytest.importorskip("torch")
        return torch.asarray(np.ascontiguousarray(a))
    return a


def model(**kw):
    params = dict(n_kernels=3, kernel_size=3, max_iter=2, tol=0.0, random_state=0)
    params.update(kw)
    return ConvolutionalMixture(**params)


def fitted(**kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model(**kw).fit(X)


def snapshot(m):
    return (
        to_numpy(m.kernels_).copy(),
        to_numpy(m.weights_).copy(),
        list(m.lower_bounds_),
        m.n_iter_,
        tuple(m.kernel_size_),
        m.n_channels_in_,
    )


def assert_unchanged(m, before):
    after = snapshot(m)
    np.testing.assert_array_equal(after[0], before[0])
    np.testing.assert_array_equal(after[1], before[1])
    assert after[2:] == before[2:]


def quiet_fit(m, data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return m.fit(data)


# -- X ------------------------------------------
def _bad_x(kind, lib):
    if kind == "2d":
        return lib_array(X[0, 0], lib)
    if kind == "5d":
        return lib_array(X[:, :, None], lib)
    if kind == "empty":
        return lib_array(X[:0], lib)
    if kind == "zero_channels":
        return lib_array(np.zeros((4, 0, 8, 8)), lib)
    if kind == "zero_width":
        return lib_array(np.zeros((4, 1, 8, 0)), lib)
    if kind == "complex":
        return lib_array(X.astype(np.complex128), lib)
    if kind == "bool":
        return lib_array(X > 0, lib)
    if kind == "nan":
        bad = X.copy()
        bad[3, 0, 2, 2] = np.nan
        return lib_array(bad, lib)
    if kind == "inf":
        bad = X.copy()
        bad[0, 0, 0, 0] = -np.inf
        return lib_array(bad, lib)
    if kind == "overflow32":
        return lib_array((X * 1e19).astype(np.float32), lib)
    if kind == "too_small":
        return lib_array(X[:, :, :2, :2], lib)
    raise AssertionError(kind)


X_CASES = [
    ("2d", ValueError, r"X must have shape \(n_samples, n_channels"),
    ("5d", ValueError, r"X must have shape \(n_samples, n_channels"),
    ("empty", ValueError, "X contains no images; pass at least one"),
    ("zero_channels", ValueError, "X has shape .*at least one channel"),
    ("zero_width", ValueError, "X has shape .*at least 1 element"),
    ("complex", TypeError, "X has complex dtype.*pass the real part"),
    ("bool", TypeError, "X has dtype .*bool.*pass real numbers"),
    ("nan", ValueError, "X contains NaN or infinity; remove or impute"),
    ("inf", ValueError, "X contains NaN or infinity; remove or impute"),
    ("overflow32", ValueError, "X has values up to .*overflow.*rescale"),
    ("too_small", ValueError, r"kernel size \(3, 3\) is larger than the padded"),
]


@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("kind, exc, match", X_CASES)
def test_bad_x_refused_by_fit(lib, kind, exc, match):
    with pytest.raises(exc, match=match):
        quiet_fit(model(), _bad_x(kind, lib))


@pytest.mark.parametrize("method", ["transform", "score_samples", "score", "fit"])
@pytest.mark.parametrize(
    "kind, exc, match",
    [c for c in X_CASES if c[0] in ("2d", "complex", "nan", "overflow32")],
)
def test_bad_x_leaves_fitted_model_unchanged(method, kind, exc, match):
    m = fitted(warm_start=True)
    before = snapshot(m)
    with pytest.raises(exc, match=match):
        getattr(m, method)(_bad_x(kind, "numpy"))
    assert_unchanged(m, before)


@pytest.mark.parametrize(
    "bad, exc, match",
    [
        ("images", TypeError, "X must be an array of images"),
        (None, TypeError, "X must be an array of images"),
        (3.5, TypeError, "X must be an array of images"),
        ({"a": 1}, TypeError, "X must be an array of images"),
        (b"bytes", TypeError, "X must be an array of images"),
        (iter([X]), TypeError, "X is a one-shot iterator.*re-iterable"),
        (np.full((3, 4, 4), None, dtype=object), TypeError, "X has dtype object"),
    ],
)
def test_x_of_the_wrong_kind(bad, exc, match):
    with pytest.raises(exc, match=match):
        quiet_fit(model(), bad)


def test_batches_of_different_image_sizes_are_named():
    batches = [X[:10], RNG.standard_normal((10, 1, 9, 9))]
    with pytest.raises(ValueError, match="every batch of X must have the same image"):
        quiet_fit(model(), batches)


def test_batches_of_different_channels_are_named():
    batches = [X[:10], RNG.standard_normal((10, 2, 8, 8))]
    with pytest.raises(ValueError, match="every batch of X must have the same image"):
        quiet_fit(model(), batches)


@pytest.mark.parametrize("lib", LIBS)
def test_other_channel_count_on_a_fitted_model(lib):
    m = fitted()
    before = snapshot(m)
    X2 = lib_array(RNG.standard_normal((4, 2, 8, 8)), lib)
    for method in ("transform", "score_samples", "partial_fit"):
        with pytest.raises(ValueError, match=r"X has 2 channel\(s\) but the model"):
            getattr(m, method)(X2)
    assert_unchanged(m, before)


# -- parameters ------------------------------------------
PARAM_CASES = [
    ("n_kernels", 0, ValueError, "n_kernels must be >= 1"),
    ("n_kernels", -3, ValueError, "n_kernels must be >= 1"),
    ("n_kernels", 2.5, TypeError, "n_kernels must be an int"),
    ("n_kernels", "3", TypeError, "n_kernels must be an int"),
    ("n_kernels", True, TypeError, "n_kernels must be an int"),
    ("n_kernels", None, TypeError, "n_kernels must be an int"),
    ("n_kernels", 10**9, ValueError, "n_kernels=1000000000 is more than the"),
    ("kernel_size", 0, ValueError, "kernel_size must be >= 1"),
    ("kernel_size", (3,), TypeError, "kernel_size must be an int or a pair"),
    ("kernel_size", (3, 3, 3), TypeError, "kernel_size must be an int or a pair"),
    ("kernel_size", "3", TypeError, "kernel_size must be an int or a pair"),
    ("kernel_size", 2.0, TypeError, "kernel_size must be an int or a pair"),
    ("padding", -1, ValueError, "padding must be non-negative"),
    ("padding", (1,), TypeError, "padding must be an int or a pair"),
    ("padding", "1", TypeError, "padding must be an int or a pair"),
    ("padding", True, TypeError, "padding must be an int or a pair"),
    ("reg_kernels", -1.0, ValueError, "reg_kernels must be a finite number >= 0"),
    ("reg_kernels", math.nan, ValueError, "reg_kernels must be a finite number"),
    ("reg_kernels", math.inf, ValueError, "reg_kernels must be a finite number"),
    ("reg_kernels", "0", TypeError, "reg_kernels must be a real number"),
    ("learn_weights", "no", TypeError, "learn_weights must be True or False"),
    ("learn_weights", 1, TypeError, "learn_weights must be True or False"),
    ("learn_weights", None, TypeError, "learn_weights must be True or False"),
    ("learn_variance", "no", TypeError, "learn_variance must be True or False"),
    ("learn_variance", 1, TypeError, "learn_variance must be True or False"),
    ("learn_variance", None, TypeError, "learn_variance must be True or False"),
    ("warm_start", "no", TypeError, "warm_start must be True or False"),
    ("warm_start", 0, TypeError, "warm_start must be True or False"),
    ("init", "bogus", ValueError, "init must be one of"),
    ("init", 3, TypeError, "init must be one of"),
    ("init", np.zeros((2, 1, 3, 3)), ValueError, r"init has shape \(2, 1, 3, 3\)"),
    ("init", np.full((3, 1, 3, 3), np.nan), ValueError, "init contains NaN"),
    ("init", np.ones((3, 1, 3, 3)), ValueError, "init kernels are all identical"),
    ("n_init", 0, ValueError, "n_init must be >= 1"),
    ("n_init", 1.5, TypeError, "n_init must be an int"),
    ("max_iter", -1, ValueError, "max_iter must be >= 0"),
    ("max_iter", "10", TypeError, "max_iter must be an int"),
    ("tol", -1e-3, ValueError, "tol must be a finite number >= 0"),
    ("tol", math.nan, ValueError, "tol must be a finite number >= 0"),
    ("batch_size", 0, ValueError, "batch_size must be >= 1"),
    ("batch_size", 2.5, TypeError, "batch_size must be an int"),
    ("method", "magic", ValueError, "method must be one of"),
    ("method", None, ValueError, "method must be one of"),
    ("method", ["fft"], ValueError, "method must be one of"),
    ("random_state", -1, ValueError, r"random_state must be an int in \[0, 2\*\*32\)"),
    ("random_state", 2**40, ValueError, r"random_state must be an int in \[0"),
    ("random_state", "seed", TypeError, "random_state must be None, an int"),
    ("random_state", 1.5, TypeError, "random_state must be None, an int"),
    ("verbose", -1, ValueError, "verbose must be >= 0"),
    ("verbose", "loud", TypeError, "verbose must be an int"),
    ("callback", 3, TypeError, "callback must be callable or None"),
    ("features", "bogus", ValueError, "features must be one of"),
    ("features", None, ValueError, "features must be one of"),
    ("pooling", 0, ValueError, "pooling must be >= 1"),
    ("pooling", "2", TypeError, "pooling must be an int or a pair"),
    ("pooling", 10**6, ValueError, r"pooling=\(1000000, 1000000\) asks for more"),
    ("pooling", (1, 7), ValueError, r"use pooling <= \(6, 6\)"),
    ("latent", "pixel", ValueError, "latent must be one of"),
    ("latent", None, ValueError, "latent must be one of"),
    ("whiten", "yes", TypeError, "whiten must be True or False"),
    ("whiten", 1, TypeError, "whiten must be True or False"),
    ("whiten", True, ValueError, "whiten=True needs latent='patch'"),
]


@pytest.mark.parametrize("name, value, exc, match", PARAM_CASES)
def test_bad_parameter_refused_before_any_work(name, value, exc, match):
    with pytest.raises(exc, match=match):
        quiet_fit(model(**{name: value}), X)


@pytest.mark.parametrize(
    "name, value, exc, match",
    [c for c in PARAM_CASES if c[0] not in ("init", "warm_start", "n_kernels")],
)
def test_bad_parameter_leaves_fitted_model_unchanged(name, value, exc, match):
    m = fitted()
    before = snapshot(m)
    m.set_params(**{name: value})
    with pytest.raises(exc, match=match):
        m.fit(X)
    assert_unchanged(m, before)


def test_huge_n_kernels_is_refused_by_memory_when_patches_allow():
    # init as an array skips the patch count, the map size still bounds it
    m = model(n_kernels=3, kernel_size=1)
    m.set_params(n_kernels=2**27, init=np.zeros((1, 1, 1, 1)))
    with pytest.raises(ValueError, match="n_kernels=134217728 needs .* GiB of maps"):
        m.fit(X)


def test_random_patches_with_more_kernels_than_patches():
    with pytest.raises(ValueError, match="n_kernels=10 is more than the 2 patches"):
        quiet_fit(model(n_kernels=10, kernel_size=8, init="random_patches"), X[:2])


def test_random_patches_with_many_kernels_draws_distinct_candidates():
    m = quiet_fit(model(n_kernels=30, init="random_patches", max_iter=0), X[:2])
    assert m.kernels_.shape == (30, 1, 3, 3)


@pytest.mark.parametrize(
    "name, value",
    [
        ("n_kernels", np.int64(3)),
        ("kernel_size", np.int32(3)),
        ("kernel_size", (np.int64(3), np.int64(2))),
        ("max_iter", np.int64(2)),
        ("tol", np.float32(1e-3)),
        ("reg_kernels", np.float64(0.5)),
        ("learn_weights", np.bool_(True)),
        ("learn_variance", np.bool_(True)),
        ("random_state", np.int64(7)),
        ("batch_size", np.uint8(5)),
        ("pooling", np.int16(2)),
    ],
)
def test_numpy_scalar_parameters_fit_and_save(tmp_path, name, value):
    m = quiet_fit(model(**{name: value}), X)
    m.save(tmp_path / "m.npz")
    back = ConvolutionalMixture.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(back.kernels_, to_numpy(m.kernels_))
    assert back.get_params()[name] == pytest.approx(
        value if np.ndim(value) == 0 else tuple(int(v) for v in value)
    )


def test_grid_search_best_estimator_saves(tmp_path):
    pytest.importorskip("sklearn")
    from sklearn.model_selection import GridSearchCV

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        search = GridSearchCV(model(), {"n_kernels": np.arange(2, 4)}, cv=2).fit(X)
    search.best_estimator_.save(tmp_path / "best.npz")
    assert ConvolutionalMixture.load(tmp_path / "best.npz").n_kernels in (2, 3)


def test_num_threads_variable_is_named(monkeypatch):
    monkeypatch.setenv("CALM_NP_NUM_THREADS", "abc")
    with pytest.raises(ValueError, match="CALM_NP_NUM_THREADS='abc' is not an int"):
        quiet_fit(model(), X)


# -- the public functions ------------------------------------------
FUNCS = ["log_joint", "posterior", "log_likelihood", "sufficient_statistics"]
KERNELS = RNG.standard_normal((3, 1, 3, 3))


def _nan(a):
    a = a.copy()
    a.flat[0] = np.nan
    return a


FUNC_CASES = [
    (dict(X=X[0, 0]), ValueError, "X must have shape"),
    (dict(X=_nan(X)), ValueError, "X contains NaN"),
    (dict(X=X.astype(np.complex64)), TypeError, "X has complex dtype"),
    (
        dict(X=(X * 1e19).astype(np.float32), kernels=KERNELS.astype(np.float32)),
        ValueError,
        "X has values up to",
    ),
    (dict(kernels=KERNELS[0, 0]), ValueError, "kernels must have shape"),
    (dict(kernels=np.ones((3, 2, 3, 3))), ValueError, r"kernels have 2 channel"),
    (dict(kernels=_nan(KERNELS)), ValueError, "kernels contains NaN"),
    (dict(kernels=np.ones((3, 1, 9, 9))), ValueError, "kernel size .* larger"),
    (dict(log_weights=np.zeros(2)), ValueError, r"log_weights must have shape"),
    (dict(log_weights=np.zeros(3)), ValueError, "log_weights must be log-prob"),
    (dict(log_weights=np.full(3, np.nan)), ValueError, "log_weights contains NaN"),
    (dict(log_weights=np.zeros(3, complex)), TypeError, "log_weights must be real"),
    (dict(padding=-1), ValueError, "padding must be non-negative"),
    (dict(padding="same"), TypeError, "padding must be an int or a pair"),
    (dict(method="magic"), ValueError, "method must be one of"),
    (dict(latent="pixel"), ValueError, "latent must be one of"),
    (dict(variance=0.0), ValueError, "variance must be a finite number > 0"),
    (dict(variance=-1.0), ValueError, "variance must be a finite number > 0"),
    (dict(variance=math.nan), ValueError, "variance must be a finite number > 0"),
    (dict(variance=math.inf), ValueError, "variance must be a finite number > 0"),
    (dict(variance="1"), TypeError, "variance must be a real number"),
    (dict(variance=True), TypeError, "variance must be a real number"),
    (dict(variance=None), TypeError, "variance must be a real number"),
    (dict(whitening=(np.zeros(9), np.eye(9), 1.0)), ValueError, "whitening needs"),
    (
        dict(latent="patch", method="fft", whitening=(np.zeros(9), np.eye(9), 1.0)),
        ValueError,
        "whitening cannot run with method='fft'",
    ),
    (dict(latent="patch", whitening=(np.zeros(9), np.eye(9), 0.0)), ValueError, "eps"),
    (
        dict(latent="patch", whitening=(np.zeros(9), np.full((9, 9), np.nan), 1.0)),
        ValueError,
        "whitening contains NaN",
    ),
]


@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("func", FUNCS)
@pytest.mark.parametrize("case, exc, match", FUNC_CASES)
def test_functions_refuse_bad_input(lib, func, case, exc, match):
    args = dict(X=X[:4], kernels=KERNELS, log_weights=None)
    args.update(case)
    if lib == "torch" and any(
        np.asarray(v).dtype.kind == "c" for v in case.values() if hasattr(v, "dtype")
    ):
        pytest.skip("the complex case is covered on NumPy")
    Xa = lib_array(args.pop("X"), lib)
    Ka = lib_array(args.pop("kernels"), lib)
    if args["log_weights"] is not None:
        args["log_weights"] = lib_array(args["log_weights"], lib)
    with pytest.raises(exc, match=match):
        getattr(calm_np, func)(Xa, Ka, **args)


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
    from calm_np._em import m_step
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


def test_fit_never_ends_with_a_non_finite_objective():
    # just below the scale limit: the fit ends finite
    m = quiet_fit(model(), (X * 1e17).astype(np.float32))
    assert math.isfinite(m.lower_bound_)
    assert all(math.isfinite(b) for b in m.lower_bounds_)
    # and a non-finite objective is an error, whatever produced it
    from calm_np._em import SufficientStatistics, objective

    stats = SufficientStatistics(np.ones(3), np.ones((3, 1, 3, 3)), -np.inf, 4)
    with pytest.raises(ValueError, match="objective is -inf .*rescale X"):
        objective(stats, KERNELS)


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


@pytest.mark.parametrize(
    "kind, exc, match",
    [
        ("nan", ValueError, "X contains NaN"),
        ("complex", TypeError, "X has complex dtype"),
        ("overflow32", ValueError, "X has values up to"),
    ],
)
def test_dask_bad_x(kind, exc, match):
    da = pytest.importorskip("dask.array")
    m = fitted(warm_start=True)
    before = snapshot(m)
    bad = da.from_array(_bad_x(kind, "numpy"), chunks=(5, 1, 8, 8))
    with pytest.raises(exc, match=match):
        m.fit(bad)
    assert_unchanged(m, before)


def test_dask_split_channels_are_refused():
    da = pytest.importorskip("dask.array")
    bad = da.from_array(RNG.standard_normal((6, 2, 8, 8)), chunks=(3, 1, 8, 8))
    with pytest.raises(ValueError, match="chunked along the image axis"):
        quiet_fit(model(), bad)


# -- model files ------------------------------------------
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "m.npz"
    fitted().save(path)
    with np.load(path) as f:
        arrays = dict(f)
    header = json.loads(bytes(arrays.pop("header")).decode())
    return header, arrays


def _write(path, header, arrays):
    blob = np.frombuffer(json.dumps(header).encode(), np.uint8)
    np.savez(path, header=blob, **arrays)
    return path


def _edited(saved, tmp_path, header=None, **arrays):
    h, a = json.loads(json.dumps(saved[0])), dict(saved[1])
    if header is not None:
        header(h)
    a.update(arrays)
    a = {k: v for k, v in a.items() if v is not None}
    return _write(tmp_path / "bad.npz", h, a)


def _set(key, value):
    def edit(h):
        h[key] = value

    return edit


def _param(key, value):
    def edit(h):
        h["params"][key] = value

    return edit


def _drop(key):
    def edit(h):
        del h[key]

    return edit


FILE_CASES = [
    (dict(header=_set("format_version", 2)), "format version 2, newer than"),
    (dict(header=_set("format_version", "1")), "no valid format version"),
    (dict(header=_set("format", "other")), "is not a calm_np model file"),
    (dict(header=_param("bogus", 1)), r"unknown parameters \['bogus'\]"),
    (dict(header=_param("n_kernels", "three")), "bad parameter: n_kernels must"),
    (dict(header=_param("learn_weights", "no")), "bad parameter: learn_weights"),
    (dict(header=_param("learn_variance", 1)), "bad parameter: learn_variance"),
    (dict(header=_set("variance", 0.0)), "corrupt: its variance must be a finite"),
    (dict(header=_set("variance", -2.0)), "corrupt: its variance must be a finite"),
    (dict(header=_set("variance", math.inf)), "corrupt: its variance must be a fin"),
    (dict(header=_set("variance", math.nan)), "corrupt: its variance must be a fin"),
    (dict(header=_set("variance", "1.0")), "corrupt: its variance must be a real"),
    (dict(header=_set("variance", True)), "corrupt: its variance must be a real"),
    (dict(header=_set("variance", None)), "corrupt: its variance must be a real"),
    (dict(header=_param("tol", -1)), "bad parameter: tol must be"),
    (dict(header=_set("kernels_shape", [3, 1, 3])), "header's shapes do not agree"),
    (dict(header=_set("kernels_shape", [3, 1, 3, -3])), "shapes do not agree"),
    (dict(header=_set("kernels_shape", [3, 2, 3, 3])), "shapes do not agree"),
    (dict(header=_set("kernel_size", [5, 5])), "shapes do not agree"),
    (dict(header=_set("padding", [-1, 0])), "shapes do not agree"),
    (dict(header=_set("dtype", "complex128")), "shapes do not agree"),
    (dict(header=_set("dtype", "object")), "shapes do not agree"),
    (dict(header=_set("lower_bound", "NaN")), "header key 'lower_bound'"),
    (dict(header=_set("n_iter", -1)), "shapes do not agree"),
    (dict(header=_set("n_iter", True)), "header key 'n_iter'"),
    (dict(header=_set("converged", "yes")), "header key 'converged'"),
    (dict(header=_set("params", [])), "header key 'params'"),
    (dict(header=_set("kernels_shape", [2**27, 1, 3, 3])), "declares kernels of"),
    (dict(weights=np.array([0.5, 0.5])), "weights array has shape"),
    (dict(weights=np.array([1.5, -0.25, -0.25])), "weights must be non-negative"),
    (dict(weights=np.array([0.5, 0.5, 0.5])), "sum to 1"),
    (dict(weights=np.array([1, 0, 0])), "weights array has shape .* dtype int64"),
    (dict(kernels=np.full((3, 1, 3, 3), np.nan)), "kernels contain NaN"),
    (dict(kernels=np.zeros((3, 1, 3, 3), complex)), "dtype complex128"),
    (dict(kernels=np.zeros((3, 1, 3, 3), np.float32)), "dtype float32"),
    (dict(kernels=np.zeros((3, 1, 5, 5))), r"kernels array has shape \(3, 1, 5, 5\)"),
    (dict(kernels=np.array([None, 1], dtype=object)), "object arrays"),
    (dict(kernels=None), "missing arrays"),
    (dict(weights=None), "missing arrays"),
    (dict(lower_bounds=np.array([np.nan, 1.0])), "lower_bounds contain NaN"),
    (dict(lower_bounds=np.zeros(5)), "lower_bounds array has shape"),
    (dict(extra=np.zeros(3)), "unexpected member 'extra.npy'"),
]
FILE_CASES += [
    (dict(header=_drop(key)), f"header key '{key}' is missing")
    for key in (
        "params",
        "dtype",
        "kernels_shape",
        "n_channels_in",
        "kernel_size",
        "padding",
        "n_iter",
        "converged",
        "lower_bound",
    )
]


@pytest.mark.parametrize("edit, match", FILE_CASES)
def test_bad_model_file_is_named(saved, tmp_path, edit, match):
    path = _edited(saved, tmp_path, **edit)
    with pytest.raises(ValueError, match=match) as info:
        ConvolutionalMixture.load(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "blob, match",
    [
        (b"[1, 2, 3]", "is not a calm_np model file"),
        (b'"a string"', "is not a calm_np model file"),
        (b"{not json", "header is not JSON"),
        (b"\xff\xfe", "header is not JSON"),
        (b"null", "is not a calm_np model file"),
    ],
)
def test_header_that_is_not_a_dict(saved, tmp_path, blob, match):
    path = tmp_path / "bad.npz"
    np.savez(path, header=np.frombuffer(blob, np.uint8), **saved[1])
    with pytest.raises(ValueError, match=match):
        ConvolutionalMixture.load(path)


def test_header_as_a_2d_array(saved, tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, header=np.zeros((2, 2), np.uint8), **saved[1])
    with pytest.raises(ValueError, match="header array has shape"):
        ConvolutionalMixture.load(path)


def test_zip_bomb_is_refused_before_decompression(saved, tmp_path):
    """A kernels member of 64 MB zeros (deflated to ~64 kB) behind a 3x1x3x3 header."""
    path = _edited(saved, tmp_path)
    bomb = io.BytesIO()
    np.save(bomb, np.zeros(8 * 2**20))
    with (
        warnings.catch_warnings(),
        zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as zf,
    ):
        warnings.simplefilter("ignore")  # the duplicate name is the point
        zf.writestr("kernels.npy", bomb.getvalue())  # a second, huge member
    assert path.stat().st_size < 2**20
    with pytest.raises(ValueError, match="'kernels.npy' is compressed"):
        ConvolutionalMixture.load(path)


def test_oversized_stored_member_is_refused_before_reading(saved, tmp_path):
    """Stored (as np.savez writes), a member larger than its header declares."""
    path = _write(
        tmp_path / "big.npz", saved[0], dict(saved[1], kernels=np.zeros(2**20))
    )
    with pytest.raises(ValueError, match="kernels array takes .* more than the"):
        ConvolutionalMixture.load(path)


def test_header_bomb_is_refused(saved, tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, header=np.zeros(4 * 2**20, np.uint8), **saved[1])
    with pytest.raises(ValueError, match="its header takes"):
        ConvolutionalMixture.load(path)


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", "truncated or not an .npz file"),
        (b"PK\x03\x04garbage", "truncated or not an .npz file"),
        (b"\x93NUMPY", "truncated or not an .npz file"),
    ],
)
def test_not_a_zip(tmp_path, content, match):
    path = tmp_path / "bad.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        ConvolutionalMixture.load(path)


def test_good_file_still_loads(saved, tmp_path):
    path = _edited(saved, tmp_path)
    m = ConvolutionalMixture.load(path)
    assert m.kernels_.shape == (3, 1, 3, 3)
    assert np.all(np.isfinite(m.transform(X[:2])))


# -- memory: the automatic batch ------------------------------------------------------
def test_automatic_batch_is_bounded_by_the_maps(monkeypatch):
    from calm_np import _checks
    from calm_np._data import ImageSource

    source = ImageSource(X, None)
    source.check((3, 3), (0, 0), None, n_kernels=3)
    per_image = 3 * 6 * 6 * 8
    assert source.batch_size == max(
        _checks.AUTO_BATCH_MIN, _checks.AUTO_BATCH_BYTES // per_image
    )
    monkeypatch.setattr(_checks, "AUTO_BATCH_BYTES", 1)
    source = ImageSource(X, None)
    source.check((3, 3), (0, 0), None, n_kernels=3)
    sizes = [b.shape[0] for b in source.batches()]
    assert sizes == [_checks.AUTO_BATCH_MIN, X.shape[0] - _checks.AUTO_BATCH_MIN]
    m = fitted()
    np.testing.assert_allclose(
        m.score_samples(X), m.set_params(batch_size=X.shape[0]).score_samples(X)
    )
