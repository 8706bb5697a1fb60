"""Hostile input at the estimator's door (``_checks``, ``_data``): what ``fit``,
``partial_fit`` and ``transform`` accept.

Images of every kind (arrays of NumPy and PyTorch, lists, memmaps, lazy
arrays, iterables of batches, Dask), their layout (channels-last refused)
and scale (one ``DataScaleWarning`` at the start), and every parameter of
the table ``_checks.PARAMS`` (padding within ``kernel_size - 1`` included).
Each case asserts the exception type and a message that names the parameter
and says what to change; where a fitted model is involved, that it is
unchanged after the failure.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from _helpers import problems, readonly_memmap
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
from hypothesis import example, given, settings
from hypothesis import strategies as st

import calm_np
from calm_np import ConvolutionalMixture, _checks, _image_checks
from calm_np._xp import to_numpy

RNG = np.random.default_rng(0)
X = RNG.standard_normal((20, 1, 8, 8))


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


def test_num_threads_variable_is_named(monkeypatch):
    monkeypatch.setenv("CALM_NP_NUM_THREADS", "abc")
    with pytest.raises(ValueError, match="CALM_NP_NUM_THREADS='abc' is not an int"):
        quiet_fit(model(), X)


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


# ten images and three kernels, for the cases below
X10 = RNG.standard_normal((10, 1, 8, 8))
K = RNG.standard_normal((3, 1, 3, 3))


def fit(model, data=X10):
    return quiet_fit(model, data)


# -- batching does not change what is refused --------------------------------------


def test_a_list_of_batches_refuses_more_kernels_than_patches_as_an_array_does():
    too_many = dict(n_kernels=100, kernel_size=3, max_iter=1, random_state=0)
    for data in (X10[:2], [X10[:1], X10[1:2]]):
        with pytest.raises(ValueError, match="n_kernels=100 is more than the 72"):
            fit(ConvolutionalMixture(**too_many), data)


def test_init_random_may_have_more_kernels_than_patches():
    """Noise kernels are not drawn from the patches."""
    m = fit(
        ConvolutionalMixture(100, kernel_size=3, init="random", max_iter=1), X10[:2]
    )
    assert m.kernels_.shape[0] == 100


def test_a_list_of_empty_batches_is_refused_clearly():
    with pytest.raises(ValueError, match="X contains no images"):
        fit(small(), [X10[:0], X10[:0]])
    # an empty batch before real ones is skipped
    m = fit(small(random_state=0), [X10[:0], X10])
    ref = fit(small(random_state=0), X10)
    np.testing.assert_allclose(m.kernels_, ref.kernels_, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["kernel_size", "pooling"])
def test_negative_sizes_are_value_errors(name):
    with pytest.raises(ValueError, match=f"{name} must be >= 1, got -2"):
        fit(small(**{name: -2}))


@pytest.mark.parametrize("dtype", [np.complex128, np.bool_])
def test_complex_or_bool_init_is_refused(dtype):
    init = (RNG.standard_normal((3, 1, 3, 3)) > 0).astype(dtype)
    with pytest.raises(TypeError, match="init has"):
        fit(small(init=init))


def test_absurd_padding_is_refused_before_allocating():
    with pytest.raises(ValueError, match="GiB of maps per image"):
        calm_np.log_joint(X10, K, padding=10**6)


@pytest.mark.parametrize("order", ["torch_first", "numpy_first", "empty_numpy_first"])
def test_a_list_mixing_array_libraries_is_refused_clearly(order):
    torch = pytest.importorskip("torch")
    batches = {
        "torch_first": ([torch.asarray(X10[:5]), X10[5:]], "numpy batch among torch"),
        "numpy_first": ([X10[:5], torch.asarray(X10[5:])], "torch batch among numpy"),
        "empty_numpy_first": ([X10[:0], torch.asarray(X10)], "numpy batch among torch"),
    }
    data, message = batches[order]
    with pytest.raises(TypeError, match=f"one array library; got a {message}"):
        fit(small(), data)


def test_a_lazy_array_like_of_the_wrong_rank_is_reported_with_its_own_shape():
    class Lazy:  # sliceable, with a shape, no array namespace
        shape = (60000, 28)

        def __getitem__(self, key):
            return np.zeros((60000, 28), np.float32)[key]

    with pytest.raises(ValueError, match=r"of shape \(60000, 28\)"):
        fit(small(), Lazy())


# -- layout: a channels-last batch is never read as channels-first --------------
CHANNELS_LAST = [
    (20, 32, 32, 3), (5, 28, 28, 1), (2, 64, 64, 4), (7, 10, 12, 3),
    (1, 96, 96, 3), (3, 8, 5, 1),
]  # fmt: skip


CHANNELS_FIRST = [
    (20, 3, 32, 32), (5, 1, 28, 28), (2, 4, 64, 64), (8, 32, 4, 4),
    (8, 64, 11, 11), (3, 3, 9, 3), (4, 1, 8, 3), (2, 16, 3, 3),
    (3, 2, 9, 3), (12, 2, 7, 1), (4, 4, 9, 4), (6, 5, 4, 3), (2, 8, 9, 5),
]  # fmt: skip


@pytest.mark.parametrize("shape", CHANNELS_LAST)
def test_hostile_channels_last_is_refused_with_the_transpose(shape):
    with pytest.raises(ValueError, match=r"channels-last.*np.moveaxis\(X, -1, 1\)"):
        _image_checks.check_channels_first(shape)


@pytest.mark.parametrize("shape", CHANNELS_FIRST)
def test_channels_first_batches_pass(shape):
    _image_checks.check_channels_first(shape)


# one image (H, W, C) is not H gray images W tall and C wide
ONE_IMAGE_LAST = [(32, 32, 3), (28, 28, 1), (64, 48, 4), (5, 5, 3)]
GRAY_BATCHES = [(20, 28, 28), (5, 8, 5), (3, 4, 3), (10, 28, 2), (6, 3, 4), (4, 9, 6)]


@pytest.mark.parametrize("shape", ONE_IMAGE_LAST)
def test_hostile_one_channels_last_image_is_refused_with_the_transpose(shape):
    match = r"one channels-last image.*np.moveaxis\(X, -1, 0\)\[None\]"
    with pytest.raises(ValueError, match=match):
        _image_checks.check_channels_first(shape)
    with pytest.raises(ValueError, match=match):
        _checks.check_images(np.zeros(shape))


@pytest.mark.parametrize("shape", GRAY_BATCHES)
def test_gray_batches_pass(shape):
    _image_checks.check_channels_first(shape)
    assert _checks.check_images(np.zeros(shape)).shape == (shape[0], 1, *shape[1:])


def test_estimator_refuses_channels_last():
    X = RNG.standard_normal((20, 32, 32, 3))
    with pytest.raises(ValueError, match="channels-last"):
        calm_np.ConvolutionalMixture(2, kernel_size=3, max_iter=1).fit(X)


class _Sliced:
    """An array-like read by slices (no array namespace): the lazy door."""

    def __init__(self, X):
        self.X, self.shape, self.dtype = X, X.shape, X.dtype

    def __getitem__(self, key):
        return self.X[key]


class _Doors:
    """Every form a fit accepts, holding the images ``X``: ``doors[name]``
    makes that one (the torch door skips the test where torch is missing;
    the README's test command runs without it)."""

    def __init__(self, X, tmp_path):
        self.X, self.tmp_path = X, tmp_path

    def __getitem__(self, door):
        X = self.X
        if door == "torch":
            return pytest.importorskip("torch").asarray(X)
        if door == "dask":
            return pytest.importorskip("dask.array").from_array(
                X, chunks=(10, *X.shape[1:])
            )
        return dict(
            numpy=lambda: X,
            uint8=lambda: X.astype(np.uint8),
            nested_list=lambda: X.tolist(),
            list_of_batches=lambda: [X[:10], X[10:]],
            memmap=lambda: readonly_memmap(X, self.tmp_path / "x.dat"),
            sliced=lambda: _Sliced(X),
        )[door]()


DOORS = [
    "numpy", "uint8", "torch", "nested_list", "list_of_batches", "memmap",
    "sliced", "dask",
]  # fmt: skip


@pytest.mark.parametrize("door", DOORS)
def test_hostile_every_door_of_fit_refuses_one_channels_last_image(door, tmp_path):
    X = np.abs(RNG.standard_normal((12, 10, 3)))
    model = calm_np.ConvolutionalMixture(2, kernel_size=3, max_iter=1)
    with pytest.raises(ValueError, match=r"one channels-last image.*np.moveaxis"):
        model.fit(_Doors(X, tmp_path)[door])
    assert not hasattr(model, "kernels_")


@pytest.mark.parametrize("door", DOORS)
def test_hostile_every_door_of_fit_refuses_channels_last(door, tmp_path):
    X = np.abs(RNG.standard_normal((20, 12, 10, 3)))
    model = calm_np.ConvolutionalMixture(2, kernel_size=3, max_iter=1)
    with pytest.raises(ValueError, match=r"channels-last.*np.moveaxis"):
        model.fit(_Doors(X, tmp_path)[door])
    assert not hasattr(model, "kernels_")


def test_hostile_partial_fit_and_network_refuse_channels_last():
    X = RNG.standard_normal((20, 16, 16, 3))
    with pytest.raises(ValueError, match="channels-last"):
        calm_np.ConvolutionalMixture(2, kernel_size=3).partial_fit(X)
    net = calm_np.ConvolutionalMixtureNetwork(
        [calm_np.ConvolutionalMixture(2, kernel_size=3, max_iter=1)]
    )
    with pytest.raises(ValueError, match="channels-last"):
        net.fit(X)


def test_hostile_fitted_gray_model_refuses_one_channels_last_image(tmp_path):
    model = calm_np.ConvolutionalMixture(2, kernel_size=3, max_iter=2, tol=1.0)
    model.fit(RNG.standard_normal((20, 16, 16)))
    image = RNG.standard_normal((16, 16, 3))  # read as 16 gray images of 16x3
    net = calm_np.ConvolutionalMixtureNetwork([model], cache=None)
    net.fit(RNG.standard_normal((20, 16, 16)))
    calls = (model.transform, model.score_samples, model.partial_fit, net.transform)
    for call in calls:
        for door in ("numpy", "sliced", "list_of_batches"):
            with pytest.raises(ValueError, match="one channels-last image"):
                call(_Doors(image, tmp_path)[door])


def test_hostile_fitted_model_names_the_transpose_for_channels_last():
    X = RNG.standard_normal((20, 3, 16, 16))
    model = calm_np.ConvolutionalMixture(2, kernel_size=3, max_iter=2, tol=1.0)
    model.fit(X)
    last = np.moveaxis(X, 1, -1)
    for call in (model.transform, model.score_samples, model.partial_fit):
        with pytest.raises(ValueError, match=r"fitted on 3.*np.moveaxis\(X, -1, 1\)"):
            call(last)


@settings(max_examples=200)
@given(p=problems(max_n=6, max_c=4, max_hw=12, max_kernel=5))
def test_property_drawn_channels_first_batches_are_never_refused(p):
    # the generators of the property tests draw up to 4 channels: gray, RGB
    # and RGBA laid out channels-first always pass, whatever their size
    shape = (p["n"], p["c"], p["H"], p["W"])
    _image_checks.check_channels_first(shape)
    _checks.check_images(np.zeros(shape))


@example(n=3, H=2, W=9, C=3)  # a drawn (n, 2, 9, 3) is 2 channels of 9x3
@given(
    n=st.integers(1, 4),
    H=st.integers(1, 12),
    W=st.integers(1, 12),
    C=st.sampled_from(_image_checks.CHANNELS_LAST_SIZES),
)
def test_property_refused_shapes_are_channels_last_images_of_5x5_or_more(n, H, W, C):
    try:
        _image_checks.check_channels_first((n, H, W, C))
    except ValueError:
        refused = True
    else:
        refused = False
    assert refused == (H >= 5 and W >= 5)


# -- scale: one message saying what to do -----------------------------------------
SCALES = [
    (16.0, True),
    (255.0, True),
    (1.0, False),
    (1 / 16, False),
    (6.0, True),
    (3.0, False),
]  # fmt: skip  (uniform * scale * 3.5: standard deviation about scale)


@pytest.mark.parametrize("scale, advised", SCALES)
def test_scale_advice_for_the_unit_variance_model(scale, advised):
    sample = RNG.random((16, 1, 8, 8)) * scale * 3.5
    message = _image_checks.scale_advice(sample, learn_variance=False, whiten=False)
    assert (message is not None) == advised
    if advised:
        assert "Standardize" in message and "learn_variance=True" in message
    assert _image_checks.scale_advice(sample, learn_variance=True, whiten=False) is None
    assert _image_checks.scale_advice(sample, learn_variance=False, whiten=True) is None


def _digits(scale):
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits

    X = load_digits().images[:400, None]  # 0..16
    return X if scale == 16 else np.round(X * 255 / 16).astype(np.uint8)


def _caught(fit):
    """``fit()``'s warnings, and those already raised at its first iteration."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = fit()
    return model, [w.category for w in caught]


@pytest.mark.parametrize("scale", [16, 255])
@pytest.mark.parametrize("n_kernels", [16, 64])
def test_hostile_raw_pixels_get_one_message_at_the_start(scale, n_kernels):
    # raw 0..16 with 16 kernels ran 100 iterations and ended with a
    # ConvergenceWarning; 0..255 with 64 a DeadKernelWarning
    X, at_first = _digits(scale), []

    def first(model):
        if model.n_iter_ == 1:
            at_first.extend(w.category for w in caught)

    model = calm_np.ConvolutionalMixture(n_kernels, random_state=0, callback=first)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(X)
    assert [w.category for w in caught] == [calm_np.DataScaleWarning]
    assert at_first == [calm_np.DataScaleWarning]  # before the first iteration
    message = str(caught[0].message)
    assert f"range 0..{scale}" in message and "Standardize" in message
    assert "learn_variance=True" in message


@pytest.mark.parametrize("scale", [16, 255])
def test_scaled_pixels_fit_without_a_word(scale):
    X = _digits(scale) / scale
    model, caught = _caught(
        lambda: calm_np.ConvolutionalMixture(16, random_state=0).fit(X)
    )
    assert caught == [] and model.converged_


@pytest.mark.parametrize(
    "params",
    [dict(learn_variance=True), dict(latent="patch", whiten=True, method="im2col")],
)
def test_scale_free_models_get_no_scale_warning(params):
    X = _digits(255)
    fit = calm_np.ConvolutionalMixture(4, max_iter=3, tol=1e9, random_state=0, **params)
    assert _caught(lambda: fit.fit(X))[1] == []


def test_warm_start_is_not_warned_twice():
    X = _digits(16)
    model = calm_np.ConvolutionalMixture(4, max_iter=2, warm_start=True, random_state=0)
    assert calm_np.DataScaleWarning in _caught(lambda: model.fit(X))[1]
    assert calm_np.DataScaleWarning not in _caught(lambda: model.fit(X))[1]


@pytest.mark.parametrize("scale", [16, 255])
def test_hostile_partial_fit_checks_the_scale_on_its_first_batch(scale):
    X = _digits(scale)
    model = calm_np.ConvolutionalMixture(8, random_state=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.partial_fit(X[:100])
    assert [w.category for w in caught] == [calm_np.DataScaleWarning]
    message = str(caught[0].message)
    assert f"range 0..{scale}" in message and "Online EM goes on" in message
    # later calls, and a scaled start, say nothing
    assert _caught(lambda: model.partial_fit(X[100:200]))[1] == []
    scaled = calm_np.ConvolutionalMixture(8, random_state=0)
    assert _caught(lambda: scaled.partial_fit(X[:100] / scale))[1] == []


@pytest.mark.parametrize("door", DOORS)
def test_hostile_every_door_of_fit_checks_the_scale(door, tmp_path):
    X = np.round(np.abs(RNG.standard_normal((20, 1, 10, 10))) * 80)
    model = calm_np.ConvolutionalMixture(2, kernel_size=3, max_iter=2, batch_size=5)
    fitted, caught = _caught(lambda: model.fit(_Doors(X, tmp_path)[door]))
    assert caught == [calm_np.DataScaleWarning]  # and no ConvergenceWarning
    assert not fitted.converged_


def test_scale_sample_of_batches_stops_after_the_first_images():
    from calm_np._data import ImageSource

    X = RNG.standard_normal((200, 1, 6, 6))
    served = []

    class Batches:
        def __iter__(self):
            for start in range(0, 200, 10):
                served.append(start)
                yield X[start : start + 10]

    source = ImageSource(Batches())
    assert source.n_samples == 200  # one counting pass, as a fit makes anyway
    served.clear()
    sample = source.sample(_image_checks.SCALE_SAMPLES)
    assert sample.shape == (64, 1, 6, 6) and served == list(range(0, 70, 10))
    np.testing.assert_array_equal(sample, X[:64])


def test_scale_sample_reads_at_most_a_batch_at_a_time():
    from calm_np._data import ImageSource

    X = RNG.standard_normal((200, 1, 6, 6))
    sizes = []

    class Counted(_Sliced):
        def __getitem__(self, key):
            rows = self.X[key]
            sizes.append(len(rows))
            return rows

    sample = ImageSource(Counted(X), batch_size=7).sample(_image_checks.SCALE_SAMPLES)
    assert sample.shape == (64, 1, 6, 6) and max(sizes[1:]) <= 7
    np.testing.assert_array_equal(sample[[0, -1]], X[[0, -1]])  # first to last


# -- padding beyond kernel_size - 1 --------------------------------------------------
PADDINGS = [
    (5, 5, "padding=5 is more than kernel_size - 1 = 4"),
    (5, 100, "padding=100 is more than kernel_size - 1 = 4"),
    (5, 10**6, "padding=1000000 is more than"),
    (1, 1, "padding=1 is more than kernel_size - 1 = 0"),
    (3, (0, 3), r"padding=\(0, 3\) is more than kernel_size - 1 = 2"),
    (3, (3, 0), r"padding=\(3, 0\)"),
    ((3, 5), (2, 5), r"padding=\(2, 5\) is more than kernel_size - 1 = \(2, 4\)"),
    ((1, 7), (1, 0), r"padding=\(1, 0\) is more than kernel_size - 1 = \(0, 6\)"),
]


@pytest.mark.parametrize("kernel_size, padding, match", PADDINGS)
def test_hostile_padding_beyond_the_kernel_is_refused_before_any_work(
    kernel_size, padding, match
):
    X = RNG.standard_normal((10, 1, 8, 8))
    model = calm_np.ConvolutionalMixture(2, kernel_size=kernel_size, padding=padding)
    for call in (model.fit, model.partial_fit):
        with pytest.raises(ValueError, match=match + ".*windows at the edges"):
            call(X)
    assert not hasattr(model, "kernels_")
    net = calm_np.ConvolutionalMixtureNetwork(
        [calm_np.ConvolutionalMixture(2, kernel_size=3), model]
    )
    with pytest.raises(ValueError, match=r"layers\[1\]: " + match):
        net.fit(X)


@pytest.mark.parametrize(
    "kernel_size, padding", [(5, 4), (1, 0), ((3, 5), (2, 4)), (2, (1, 0))]
)
def test_padding_up_to_the_full_convolution_fits(kernel_size, padding):
    X = RNG.standard_normal((10, 1, 6, 6))
    model = calm_np.ConvolutionalMixture(
        2, kernel_size=kernel_size, padding=padding, max_iter=2, tol=1e9
    )
    assert model.fit(X).padding_ == _checks.check_padding(padding)
