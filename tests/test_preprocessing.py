"""calm_np.preprocessing and calm_np.evaluation: the math claims, on every backend."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from _helpers import check_array_like
from hypothesis import given
from hypothesis import strategies as st

import calm_np
from calm_np import evaluation, preprocessing
from calm_np._xp import to_numpy


def _images(seed, shape, spread=True):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal(shape)
    if spread:  # each plane its own brightness and contrast
        X = X * rng.uniform(0.2, 20, shape[:-2] + (1, 1))
        X = X + rng.uniform(-5, 5, shape[:-2] + (1, 1))
    return X


# ---------------------------------------------------------------------------
# Standardize
# ---------------------------------------------------------------------------


def test_standardize_on_backends_agrees_with_numpy(backend, dtype):
    X = _images(0, (6, 2, 5, 4))
    ref = preprocessing.Standardize().fit(X)
    Xb = backend.asarray(X, dtype)
    std = preprocessing.Standardize().fit(Xb)
    out = std.transform(Xb)
    check_array_like(out, backend, Xb, dtype)
    tol = 1e-5 if dtype == "float32" else 1e-12
    assert std.mean_ == pytest.approx(ref.mean_, rel=tol, abs=tol)
    assert std.scale_ == pytest.approx(ref.scale_, rel=tol)
    np.testing.assert_allclose(to_numpy(out), ref.transform(X), rtol=tol, atol=tol)
    back = std.inverse_transform(out)
    np.testing.assert_allclose(to_numpy(back), X, rtol=10 * tol, atol=10 * tol)


@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 6))
def test_standardize_gives_zero_mean_unit_variance(seed, n):
    X = _images(seed, (n, 1, 4, 3))
    out = preprocessing.Standardize().fit_transform(X)
    assert out.mean() == pytest.approx(0.0, abs=1e-12)
    assert out.std() == pytest.approx(1.0, rel=1e-12)


def test_standardize_constant_data_and_errors():
    out = preprocessing.Standardize().fit_transform(np.full((3, 4), 2.0))
    np.testing.assert_array_equal(out, 0.0)  # scale 1, never NaN
    with pytest.raises(RuntimeError, match="not fitted"):
        preprocessing.Standardize().transform(np.ones((2, 2)))
    with pytest.raises(ValueError, match="at least one"):
        preprocessing.Standardize().fit(np.ones((0, 3)))


# ---------------------------------------------------------------------------
# Per image and channel
# ---------------------------------------------------------------------------


def test_per_image_standardize_is_zca_whiten_per_image(backend):
    Xb = backend.asarray(_images(1, (3, 2, 5, 5)), "float64")
    step = preprocessing.PerImageStandardize(eps=1e-3)
    out = step.fit_transform(Xb)
    expected = preprocessing.zca_whiten_per_image(Xb, eps=1e-3)
    np.testing.assert_array_equal(to_numpy(out), to_numpy(expected))
    assert step.get_params() == {"eps": 1e-3}
    assert step.set_params(eps=0.5).eps == 0.5
    with pytest.raises(ValueError, match="invalid parameter 'window'"):
        step.set_params(window=3)


# ---------------------------------------------------------------------------
# Local contrast normalization
# ---------------------------------------------------------------------------


@given(
    seed=st.integers(0, 2**32 - 1),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    wh=st.integers(1, 12),
    ww=st.integers(1, 12),
)
def test_local_contrast_generic_box_filter_matches_scipy(seed, h, w, wh, ww):
    # windows of any size, even ones and ones larger than the image: the
    # shifted-slice sums of other namespaces equal SciPy's mirror filter
    from scipy.ndimage import uniform_filter

    X = _images(seed, (2, 1, h, w))
    box = preprocessing._box_mean(X, (wh, ww), np, None)
    expected = uniform_filter(X, (1, 1, wh, ww), mode="mirror")
    np.testing.assert_allclose(box, expected, rtol=1e-10, atol=1e-10)


def test_local_contrast_on_backends_agrees_with_numpy(backend, dtype):
    X = _images(2, (3, 2, 9, 8))
    expected = preprocessing.local_contrast(X, (5, 4))
    Xb = backend.asarray(X, dtype)
    out = preprocessing.LocalContrastNormalization((5, 4)).fit_transform(Xb)
    check_array_like(out, backend, Xb, dtype)
    tol = 1e-4 if dtype == "float32" else 1e-9
    np.testing.assert_allclose(to_numpy(out), expected, rtol=tol, atol=tol)


@given(
    seed=st.integers(0, 2**32 - 1),
    scale=st.floats(0.01, 100),
    shift=st.floats(-50, 50),
    window=st.integers(2, 6),
)
def test_local_contrast_ignores_brightness_and_contrast(seed, scale, shift, window):
    X = _images(seed, (2, 1, 8, 8), spread=False)
    a = preprocessing.local_contrast(X, window, eps=0.0)
    b = preprocessing.local_contrast(X * scale + shift, window, eps=0.0)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


@given(seed=st.integers(0, 2**32 - 1), window=st.sampled_from([3, 5, 7]))
def test_local_contrast_centres_each_window(seed, window):
    # an interior pixel is its own window's z-score: centred on the box mean,
    # scaled by the box's root mean square of the centred values
    X = _images(seed, (1, 1, 15, 15), spread=False)
    out = preprocessing.local_contrast(X, window, eps=0.0)
    r = window // 2
    box = lambda A: preprocessing._box_mean(A, (window, window), np, None)  # noqa: E731
    centred = X - box(X)
    y = x = 7
    z = centred[0, 0, y, x] / np.sqrt(box(centred**2)[0, 0, y, x])
    assert out[0, 0, y, x] == pytest.approx(z, rel=1e-9)
    patch = X[0, 0, y - r : y + r + 1, x - r : x + r + 1]
    assert centred[0, 0, y, x] == pytest.approx(X[0, 0, y, x] - patch.mean())


def test_local_contrast_errors():
    with pytest.raises(ValueError, match="window"):
        preprocessing.local_contrast(np.ones((1, 4, 4)), (0, 3))
    with pytest.raises(TypeError, match="window"):
        preprocessing.local_contrast(np.ones((1, 4, 4)), None)
    with pytest.raises(ValueError, match="eps"):
        preprocessing.local_contrast(np.ones((1, 4, 4)), 3, eps=-1.0)
    with pytest.raises(ValueError, match="2 dimensions"):
        preprocessing.local_contrast(np.ones(4), 3)


# ---------------------------------------------------------------------------
# ZCA
# ---------------------------------------------------------------------------


@given(n_features=st.integers(1, 6), seed=st.integers(0, 2**32 - 1))
def test_zca_whitens_and_inverts_on_backends(backend, n_features, seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((30 * n_features, n_features))
    X = X @ rng.standard_normal((n_features, n_features)) + rng.uniform(-3, 3)
    Xb = backend.asarray(X, "float64")
    eps = 1e-12
    zca = preprocessing.ZCAWhitening(eps=eps).fit(Xb)
    white = to_numpy(zca.transform(Xb))
    cov = np.cov(white, rowvar=False, bias=True).reshape(n_features, n_features)
    # the whitened covariance is V diag(λ / (λ + eps)) Vᵀ, the identity up to
    # eps/λ: exactly C (C + eps I)^-1 for the data's covariance C (a random
    # mixing matrix can make some λ small, where λ/(λ + eps) is visibly < 1)
    C = np.cov(X, rowvar=False, bias=True).reshape(n_features, n_features)
    expected = np.linalg.solve(C + eps * np.eye(n_features), C)
    np.testing.assert_allclose(cov, expected, atol=1e-6)
    back = to_numpy(zca.inverse_transform(zca.transform(Xb)))
    np.testing.assert_allclose(back, X, rtol=1e-6, atol=1e-6)


def test_zca_is_a_transformer():
    zca = preprocessing.ZCAWhitening(eps=0.5)
    assert zca.get_params() == {"eps": 0.5}
    assert zca.set_params(eps=0.2) is zca and zca.eps == 0.2
    assert repr(zca) == "ZCAWhitening(eps=0.2)"


# ---------------------------------------------------------------------------
# By name
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", preprocessing.PREPROCESSORS)
def test_make_preprocessor_fits_on_training_images_only(name):
    train, test = _images(3, (12, 1, 6, 6)), _images(4, (5, 1, 6, 6))
    step = preprocessing.make_preprocessor(name, window=3)
    a = step.fit_transform(train)
    b = step.transform(test)
    assert a.shape == train.shape and b.shape == test.shape
    # transforming the test images again gives the same: nothing refits
    np.testing.assert_array_equal(step.transform(test), b)
    if name == "none":
        np.testing.assert_array_equal(b, test)
    if name in ("standardize", "zca"):  # statistics of the training images
        again = preprocessing.make_preprocessor(name, window=3).fit(test)
        assert not np.allclose(again.transform(test), b)


def test_make_preprocessor_unknown_name():
    with pytest.raises(ValueError, match="preprocessing must be one of"):
        preprocessing.make_preprocessor("whiten")


def test_to_unit_float():
    X = np.array([[[0, 255], [51, 102]]], dtype=np.uint8)
    out = preprocessing.to_unit_float(X)
    assert out.shape == (1, 1, 2, 2) and out.dtype == np.float64
    np.testing.assert_allclose(out.ravel(), [0, 1, 0.2, 0.4])
    np.testing.assert_array_equal(preprocessing.to_unit_float(out * 3), out * 3)


def test_uint8_pixels_scaled_in_float32_equal_those_through_float64():
    """Every uint8 value: x / 255 rounded once in float32 or twice via float64."""
    X = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    wide = preprocessing.to_unit_float(X).astype(np.float32)
    narrow = preprocessing.to_unit_float(X, np.float32)
    assert narrow.dtype == np.float32
    np.testing.assert_array_equal(narrow, wide)


@pytest.mark.parametrize("name", ["none", "standardize", "local"])
def test_preprocess_into_float32_equals_the_float64_result_cast(name):
    from calm_np import evaluation

    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (6, 12, 12)).astype(np.uint8)
    test = rng.integers(0, 256, (3, 12, 12)).astype(np.uint8)
    wide = evaluation.preprocess(name, train, test, window=5)
    narrow = evaluation.preprocess(name, train, test, window=5, dtype="float32")
    for a, b in zip(wide, narrow, strict=True):
        assert a.dtype == np.float64 and b.dtype == np.float32
        np.testing.assert_array_equal(b, a.astype(np.float32))


# ---------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------


def test_presets_are_valid_and_copied():
    for name, table in evaluation.PRESETS.items():
        for family in table:
            dataset = {"natural": "sample-images", "mnist": "fashion-mnist"}.get(
                family, family
            )
            settings = evaluation.preset(name, dataset)
            assert settings["preprocess"] in preprocessing.PREPROCESSORS
            params = {
                k: v
                for k, v in settings.items()
                if k not in ("preprocess", "fit_limit", "C")
            }
            calm_np.ConvolutionalMixture(**params)._check_params()
            settings["n_kernels"] = -1  # a copy: the table is unchanged
            assert evaluation.PRESETS[name][family]["n_kernels"] > 0
    with pytest.raises(ValueError, match="preset"):
        evaluation.preset("fast", "digits")
    with pytest.raises(ValueError, match="dataset"):
        evaluation.preset("best", "cifar")


@pytest.mark.filterwarnings("ignore::calm_np.ConvergenceWarning")
def test_extract_features_of_an_array_and_of_batches():
    X = _images(5, (7, 1, 6, 6), spread=False)  # unit scale: no DataScaleWarning
    model = calm_np.ConvolutionalMixture(
        n_kernels=2, kernel_size=3, max_iter=2, random_state=0
    ).fit(X)
    whole = evaluation.extract_features(model, X, batch_size=3)
    expected = np.asarray(model.transform(X))
    assert whole.dtype == expected.dtype and whole.shape[0] == 7
    np.testing.assert_allclose(whole, expected, rtol=1e-12)
    batches = [X[:4], X[4:]]
    np.testing.assert_allclose(evaluation.extract_features(model, batches), whole)
    single = evaluation.extract_features(model, X.astype(np.float32), batch_size=3)
    assert single.dtype == np.float32  # not doubled to float64


def test_linear_probe_accuracy():
    pytest.importorskip("sklearn")
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 50)
    F = rng.standard_normal((100, 3)) + 4.0 * y[:, None]
    assert evaluation.linear_probe(F[::2], y[::2], F[1::2], y[1::2]) == 1.0
    noise = rng.standard_normal((100, 3))
    assert evaluation.linear_probe(noise[::2], y[::2], noise[1::2], y[1::2]) < 0.8


def test_linear_probe_needs_no_sklearn(monkeypatch):
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1, 2], 20)
    F = rng.standard_normal((60, 4)) + 3.0 * np.eye(3, 4)[y]
    expected = evaluation.linear_probe(F[::2], y[::2], F[1::2], y[1::2])
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.linear_model", None)
    assert evaluation.linear_probe(F[::2], y[::2], F[1::2], y[1::2]) == expected
    assert expected > 0.8


def test_linear_probe_matches_sklearn_logistic_regression():
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = load_digits(return_X_y=True)
    X[:, 5] = 0.0  # a constant feature: standardized to 0, not NaN
    labels = np.array(list("abcdefghij"))[y]  # any labels, not only 0..k-1
    split = 1000
    for C in (1.0, 0.01):
        theirs = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=1000))
        theirs.fit(X[:split], labels[:split])
        expected = theirs.score(X[split:], labels[split:])
        ours = evaluation.linear_probe(
            X[:split], labels[:split], X[split:], labels[split:], C=C
        )
        # the same objective to the same tolerance: at most 2 of 797 images differ
        assert abs(ours - expected) <= 2 / (len(X) - split)


def test_softmax_loss_gradient_matches_finite_differences():
    from scipy.optimize import approx_fprime

    from calm_np._probe import _softmax_loss

    rng = np.random.default_rng(0)
    A = rng.standard_normal((30, 4)).astype(np.float32)
    Y = np.eye(3, dtype=np.float32)[rng.integers(3, size=30)]
    loss_grad = _softmax_loss(A, Y, 0.1)
    w = rng.standard_normal(5 * 3)
    loss, grad = loss_grad(w)
    numeric = approx_fprime(w, lambda v: loss_grad(v)[0], 1e-3)
    np.testing.assert_allclose(grad, numeric, atol=2e-3)
    # the value: mean cross-entropy plus the penalty, by hand
    W, b = w[:12].reshape(4, 3), w[12:]
    Z = A.astype(np.float64) @ W + b
    logp = Z - np.log(np.exp(Z).sum(axis=1, keepdims=True))
    expected = -(logp * Y).sum() / 30 + 0.05 * (W * W).sum()
    assert loss == pytest.approx(expected, rel=1e-5)


def test_array_mover_numpy_and_errors():
    move, device = evaluation.array_mover("numpy", dtype="float64")
    out = move(np.arange(3))
    assert device == "cpu" and out.dtype == np.float64
    with pytest.raises(ValueError, match="CPU"):
        evaluation.array_mover("numpy", device="cuda")
    with pytest.raises(ValueError, match="backend must be"):
        evaluation.array_mover("jax")


def test_new_modules_import_no_optional_dependency():
    code = (
        "import sys, calm_np.evaluation, calm_np.preprocessing, calm_np.plots, "
        "calm_np.datasets; bad = [m for m in ('sklearn', 'torch', 'cupy', 'dask', "
        "'matplotlib') if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
