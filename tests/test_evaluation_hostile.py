"""Hostile input to the modules around the estimator (issue 21's pass).

``evaluation``, ``preprocessing``, the layout and scale checks, networks,
saves and the command line's ``--out``: each bad input is a ``TypeError``
or ``ValueError`` naming the parameter (or file) and what to change; no
function returns zeros or NaN silently.
"""

from __future__ import annotations

import io
import json
import warnings
import zipfile

import numpy as np
import pytest
from _helpers import problems, readonly_memmap
from hypothesis import example, given, settings
from hypothesis import strategies as st

import calm_np
from calm_np import _checks, evaluation, preprocessing
from calm_np._cli import main

RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, (12, 1, 8, 8)).astype(np.uint8)
F = RNG.standard_normal((20, 5))
Y = np.arange(20) % 2


# -- the parameter table: every function refuses bad values by name -------------
def _calls():
    model = calm_np.ConvolutionalMixture(2, kernel_size=3)
    return dict(
        load_dataset=lambda **kw: evaluation.load_dataset("digits", **kw),
        preprocess=lambda **kw: evaluation.preprocess("none", IMAGES, **kw),
        extract_features=lambda **kw: evaluation.extract_features(model, F, **kw),
        linear_probe=lambda **kw: evaluation.linear_probe(F, Y, F, Y, **kw),
        array_mover=lambda **kw: evaluation.array_mover(**kw),
    )


BAD = [
    ("load_dataset", dict(limit=-5), ValueError, "limit must be >= 1"),
    ("load_dataset", dict(limit=0), ValueError, "limit must be >= 1"),
    ("load_dataset", dict(limit=2.5), TypeError, "limit must be an int"),
    ("load_dataset", dict(limit="10"), TypeError, "limit must be an int"),
    ("load_dataset", dict(limit=True), TypeError, "limit must be an int"),
    ("load_dataset", dict(seed=-1), ValueError, "seed must be >= 0"),
    ("load_dataset", dict(seed=1.5), TypeError, "seed must be an int"),
    ("load_dataset", dict(test="yes"), TypeError, "test must be True or False"),
    ("load_dataset", dict(test=1), TypeError, "test must be True or False"),
    ("load_dataset", dict(data_dir=3), TypeError, "data_dir must be a folder"),
    ("load_dataset", dict(data_dir=""), ValueError, "data_dir is an empty path"),
    ("load_dataset", dict(data_dir="/tmp"), ValueError, "digits is bundled"),
    ("load_dataset", dict(size=8), ValueError, "size and mode resize"),
    ("load_dataset", dict(mode="L"), ValueError, "size and mode resize"),
    ("preprocess", dict(window=0), ValueError, "window must be a positive"),
    ("preprocess", dict(window=(3,)), ValueError, "window must be a positive"),
    ("preprocess", dict(window="3"), ValueError, "window must be a positive"),
    ("preprocess", dict(window=None), TypeError, "window must be an int"),
    ("preprocess", dict(dtype="int8"), ValueError, "dtype must be 'float32'"),
    ("preprocess", dict(dtype="bogus"), ValueError, "dtype must be 'float32'"),
    ("preprocess", dict(dtype=None), ValueError, "dtype must be 'float32'"),
    ("extract_features", dict(batch_size=0), ValueError, "batch_size must be >= 1"),
    ("extract_features", dict(batch_size=-1), ValueError, "batch_size must be >="),
    ("extract_features", dict(batch_size=2.0), TypeError, "batch_size must be an"),
    ("extract_features", dict(batch_size=None), TypeError, "batch_size must be an"),
    ("extract_features", dict(progress="no"), TypeError, "progress must be True"),
    ("linear_probe", dict(C=-1), ValueError, "C must be a finite number > 0"),
    ("linear_probe", dict(C=0), ValueError, "C must be a finite number > 0"),
    ("linear_probe", dict(C=float("nan")), ValueError, "C must be a finite"),
    ("linear_probe", dict(C=float("inf")), ValueError, "C must be a finite"),
    ("linear_probe", dict(C="1"), TypeError, "C must be a real number"),
    ("linear_probe", dict(C=True), TypeError, "C must be a real number"),
    ("linear_probe", dict(max_iter=-1), ValueError, "max_iter must be >= 1"),
    ("linear_probe", dict(max_iter=0), ValueError, "max_iter must be >= 1"),
    ("linear_probe", dict(max_iter=10.5), TypeError, "max_iter must be an int"),
    ("linear_probe", dict(tol=0), ValueError, "tol must be a finite number > 0"),
    ("linear_probe", dict(tol=-1e-4), ValueError, "tol must be a finite"),
    ("linear_probe", dict(tol=float("nan")), ValueError, "tol must be a finite"),
    ("array_mover", dict(dtype="bogus"), ValueError, "dtype must be 'float32'"),
    ("array_mover", dict(dtype="int32"), ValueError, "dtype must be 'float32'"),
    ("array_mover", dict(backend="jax"), ValueError, "backend must be one of"),
    ("array_mover", dict(backend=None), TypeError, "backend must be a string"),
    ("array_mover", dict(backend="torch", dtype="bogus"), ValueError, "dtype must"),
]


@pytest.mark.parametrize("func, kwargs, exc, match", BAD)
def test_hostile_evaluation_arguments_are_named(func, kwargs, exc, match):
    with pytest.raises(exc, match=match) as info:
        _calls()[func](**kwargs)
    assert func in str(info.value)  # which function refused it


NAMES = [
    (lambda: evaluation.preset(["best"], "digits"), TypeError, "name must be a"),
    (lambda: evaluation.preset("best", ["digits"]), TypeError, "dataset must be"),
    (lambda: evaluation.preset("fast", "digits"), ValueError, "name must be one of"),
    (lambda: evaluation.preset("best", "cifar"), ValueError, "dataset must be one"),
    (lambda: evaluation.get_preset(None, "digits"), TypeError, "name must be a"),
    (lambda: evaluation.make_estimator("best", 3), TypeError, "dataset must be"),
    (lambda: evaluation.load_dataset("cifar"), ValueError, "name must be one of"),
    (lambda: evaluation.load_dataset(None), TypeError, "name must be a string"),
    (lambda: evaluation.load_dataset("mnist"), ValueError, "mnist needs data_dir"),
    (lambda: evaluation.load_dataset("stl10"), ValueError, "stl10 needs data_dir"),
    (lambda: evaluation.load_dataset("folder"), ValueError, "folder needs data_dir"),
    (
        lambda: evaluation.load_dataset("sample-images", "/tmp"),
        ValueError,
        "sample-images is bundled",
    ),
    (lambda: evaluation.preprocess("fancy", IMAGES), ValueError, "name must be one"),
    (lambda: evaluation.preprocess(3, IMAGES), TypeError, "name must be a string"),
    (
        lambda: evaluation.preprocess("none", IMAGES[:0]),
        ValueError,
        "X_train holds no images",
    ),
    (
        lambda: evaluation.preprocess("none", np.zeros((4, 4))),
        ValueError,
        "X_train must be images",
    ),
    (
        lambda: evaluation.preprocess("zca", np.zeros((2, 3, 96, 96), np.uint8)),
        ValueError,
        "'zca' whitens whole images.*27648 values.*GiB",
    ),
    (
        lambda: evaluation.linear_probe(F, Y, F[:0], Y[:0]),
        ValueError,
        "F_test holds no rows",
    ),
    (
        lambda: evaluation.linear_probe(F[:0], Y[:0], F, Y),
        ValueError,
        "F_train holds no rows",
    ),
    (
        lambda: evaluation.linear_probe(F * 1e300, Y, F, Y),
        ValueError,
        "F_train holds values up to .*rescale",
    ),
    (
        lambda: evaluation.linear_probe(F, Y, F * 1e300, Y),
        ValueError,
        "F_test holds values up to .*rescale",
    ),
]


@pytest.mark.parametrize("call, exc, match", NAMES)
def test_hostile_evaluation_names_and_sets(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_extract_features_on_dask_computes_chunks():
    da = pytest.importorskip("dask.array")
    X = RNG.standard_normal((10, 1, 8, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = calm_np.ConvolutionalMixture(2, kernel_size=3, max_iter=2).fit(X)
    F_np = evaluation.extract_features(model, X, batch_size=4)
    F_da = evaluation.extract_features(model, da.from_array(X, chunks=(5, 1, 8, 8)), 4)
    np.testing.assert_allclose(F_da, F_np, rtol=1e-12)


# -- presets: copyable, and every one runs on every bundled data set -------------
@pytest.mark.parametrize("name", sorted(evaluation.PRESETS))
@pytest.mark.parametrize("dataset", sorted(evaluation.IMAGE_SHAPES))
def test_every_preset_fits_every_bundled_dataset(name, dataset):
    p = evaluation.get_preset(name, dataset)
    p.check(evaluation.IMAGE_SHAPES[dataset])  # raises with the reason otherwise
    flat = evaluation.preset(name, dataset)
    assert {k: flat[k] for k in p.estimator if k in flat} == {
        k: v for k, v in p.estimator.items() if k in flat
    }
    assert p.preprocess == flat["preprocess"] and p.C == flat.get("C", 1.0)
    assert name in p.summary() or p.summary()


def test_make_estimator_is_what_the_cli_fits():
    from calm_np import _cli_network, _cli_options

    for dataset in ("digits", "fashion-mnist", "mnist"):
        for name in evaluation.PRESETS:
            args = _cli_options.build_parser().parse_args(
                ["evaluate", "--dataset", dataset, "--preset", name]
            )
            params, extras = _cli_options._resolve_settings(args)
            cli = _cli_network.build(params, extras["network"])
            python = evaluation.make_estimator(name, dataset)
            assert repr(cli) == repr(python), (name, dataset)


def test_preset_refuses_what_cannot_run_with_the_reason():
    p = evaluation.get_preset("best", "fashion-mnist")
    with pytest.raises(ValueError, match="kernel size .*larger than the padded"):
        p.check((1, 5, 5))
    with pytest.raises(ValueError, match="pooling=.*more cells"):
        p.check((1, 8, 8))


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
        _checks.check_channels_first(shape)


@pytest.mark.parametrize("shape", CHANNELS_FIRST)
def test_channels_first_batches_pass(shape):
    _checks.check_channels_first(shape)


@pytest.mark.parametrize("shape", CHANNELS_LAST[:3])
def test_hostile_preprocessing_refuses_channels_last(shape):
    X = np.zeros(shape, dtype=np.float32)
    for call in (
        lambda: preprocessing.local_contrast(X, 3),
        lambda: preprocessing.zca_whiten_per_image(X),
    ):
        with pytest.raises(ValueError, match="channels-last"):
            call()


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


def _doors(X, tmp_path):
    """Every form a fit accepts, holding the images ``X``."""
    import dask.array as da
    import torch

    return dict(
        numpy=X,
        uint8=X.astype(np.uint8),
        torch=torch.asarray(X),
        nested_list=X.tolist(),
        list_of_batches=[X[:10], X[10:]],
        memmap=readonly_memmap(X, tmp_path / "x.dat"),
        sliced=_Sliced(X),
        dask=da.from_array(X, chunks=(10, *X.shape[1:])),
    )


DOORS = [
    "numpy", "uint8", "torch", "nested_list", "list_of_batches", "memmap",
    "sliced", "dask",
]  # fmt: skip


@pytest.mark.parametrize("door", DOORS)
def test_hostile_every_door_of_fit_refuses_channels_last(door, tmp_path):
    X = np.abs(RNG.standard_normal((20, 12, 10, 3)))
    model = calm_np.ConvolutionalMixture(2, kernel_size=3, max_iter=1)
    with pytest.raises(ValueError, match=r"channels-last.*np.moveaxis"):
        model.fit(_doors(X, tmp_path)[door])
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


def test_hostile_fitted_model_names_the_transpose_for_channels_last():
    X = RNG.standard_normal((20, 3, 16, 16))
    model = calm_np.ConvolutionalMixture(2, kernel_size=3, max_iter=2, tol=1.0)
    model.fit(X)
    last = np.moveaxis(X, 1, -1)
    for call in (model.transform, model.score_samples, model.partial_fit):
        with pytest.raises(ValueError, match=r"fitted on 3.*np.moveaxis\(X, -1, 1\)"):
            call(last)


def test_network_maps_that_look_channels_last_still_fit():
    # layer 1's 6 maps of 20x12 images are 16x8, pooled 8x4: (n, 6, 8, 4),
    # a shape the rule refuses from a user, but maps are channels-first
    X = RNG.standard_normal((24, 1, 20, 12))
    layers = [
        calm_np.ConvolutionalMixture(
            6, kernel_size=5, latent="patch", max_iter=2, tol=1e9, random_state=0
        ),
        calm_np.ConvolutionalMixture(
            2, kernel_size=3, latent="patch", max_iter=2, tol=1e9, random_state=0
        ),
    ]
    net = calm_np.ConvolutionalMixtureNetwork(layers, pool_size=2).fit(X)
    assert net.layers_[1].n_channels_in_ == 6
    assert net.transform(X).shape == (24, net.n_features_)


@settings(max_examples=200)
@given(p=problems(max_n=6, max_c=4, max_hw=12, max_kernel=5))
def test_property_drawn_channels_first_batches_are_never_refused(p):
    # the generators of the property tests draw up to 4 channels: gray, RGB
    # and RGBA laid out channels-first always pass, whatever their size
    shape = (p["n"], p["c"], p["H"], p["W"])
    _checks.check_channels_first(shape)
    _checks.check_images(np.zeros(shape))


@example(n=3, H=2, W=9, C=3)  # a drawn (n, 2, 9, 3) is 2 channels of 9x3
@given(
    n=st.integers(1, 4),
    H=st.integers(1, 12),
    W=st.integers(1, 12),
    C=st.sampled_from(_checks.CHANNELS_LAST_SIZES),
)
def test_property_refused_shapes_are_channels_last_images_of_5x5_or_more(n, H, W, C):
    try:
        _checks.check_channels_first((n, H, W, C))
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
    message = _checks.scale_advice(sample, learn_variance=False, whiten=False)
    assert (message is not None) == advised
    if advised:
        assert "Standardize" in message and "learn_variance=True" in message
    assert _checks.scale_advice(sample, learn_variance=True, whiten=False) is None
    assert _checks.scale_advice(sample, learn_variance=False, whiten=True) is None


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


@pytest.mark.parametrize("door", DOORS)
def test_hostile_every_door_of_fit_checks_the_scale(door, tmp_path):
    X = np.round(np.abs(RNG.standard_normal((20, 1, 10, 10))) * 80)
    model = calm_np.ConvolutionalMixture(2, kernel_size=3, max_iter=2, batch_size=5)
    fitted, caught = _caught(lambda: model.fit(_doors(X, tmp_path)[door]))
    assert caught == [calm_np.DataScaleWarning]  # and no ConvergenceWarning
    assert not fitted.converged_


def test_scale_sample_reads_at_most_a_batch_at_a_time():
    from calm_np._data import ImageSource

    X = RNG.standard_normal((200, 1, 6, 6))
    sizes = []

    class Counted(_Sliced):
        def __getitem__(self, key):
            rows = self.X[key]
            sizes.append(len(rows))
            return rows

    sample = ImageSource(Counted(X), batch_size=7).sample(_checks.SCALE_SAMPLES)
    assert sample.shape == (64, 1, 6, 6) and max(sizes[1:]) <= 7
    np.testing.assert_array_equal(sample[[0, -1]], X[[0, -1]])  # first to last


# -- preprocessing: never zeros or NaN without a word -----------------------------
def _transformers():
    return dict(
        standardize=preprocessing.Standardize(),
        per_image=preprocessing.PerImageStandardize(),
        local=preprocessing.LocalContrastNormalization(3),
        zca=preprocessing.ZCAWhitening(),
        zca_chain=preprocessing.make_preprocessor("zca"),
    )


def _bad_pixels(kind):
    X = RNG.standard_normal((6, 1, 6, 6))
    if kind == "nan":
        X[2, 0, 3, 3] = np.nan
    elif kind == "inf":
        X[0, 0, 0, 0] = np.inf
    elif kind == "huge":
        X = X * 1e300
    elif kind == "huge32":
        X = (X * 1e30).astype(np.float32)
    return X


PIXEL_CASES = [
    ("nan", "contains NaN or infinity"),
    ("inf", "contains NaN or infinity"),
    ("huge", "whose squares overflow"),
    ("huge32", "whose squares overflow"),
]


@pytest.mark.parametrize("name", sorted(_transformers()))
@pytest.mark.parametrize("kind, match", PIXEL_CASES)
def test_hostile_preprocessing_refuses_bad_pixels(name, kind, match):
    step = _transformers()[name]
    with pytest.raises(ValueError, match=match):
        step.fit_transform(_bad_pixels(kind))


def test_local_contrast_eps_zero_flat_regions_are_zero_not_nan():
    X = np.zeros((1, 1, 8, 8))
    X[0, 0, :, 4:] = RNG.standard_normal((8, 4))
    out = preprocessing.local_contrast(X, 3, eps=0.0)
    assert np.isfinite(out).all() and np.all(out[0, 0, :, :2] == 0)


def test_zca_fitted_on_numpy_transforms_torch_and_back():
    torch = pytest.importorskip("torch")
    X = RNG.standard_normal((50, 6))
    zca = preprocessing.ZCAWhitening().fit(X)
    out = zca.transform(torch.asarray(X))
    assert isinstance(out, torch.Tensor)
    np.testing.assert_allclose(out.numpy(), zca.transform(X), rtol=1e-10)
    back = preprocessing.ZCAWhitening().fit(torch.asarray(X))
    np.testing.assert_allclose(back.transform(X), zca.transform(X), rtol=1e-8)


def test_zca_preprocessor_clones():
    base = pytest.importorskip("sklearn.base")
    step = preprocessing.make_preprocessor("zca")
    copy = base.clone(step)
    X = RNG.standard_normal((20, 1, 4, 4))
    np.testing.assert_allclose(copy.fit_transform(X), step.fit_transform(X))


def test_zca_on_dask_is_a_clear_error():
    da = pytest.importorskip("dask.array")
    with pytest.raises(TypeError, match=r"Dask array.*\.compute\(\)"):
        preprocessing.ZCAWhitening().fit(da.zeros((10, 4)))


def test_one_zca_one_protocol():
    from calm_np import _base, _whiten

    assert issubclass(preprocessing.ZCAWhitening, _base.ParamsMixin)
    cov = np.cov(RNG.standard_normal((5, 200)))
    lam, V, W = _whiten.zca(cov, 0.1, np)
    np.testing.assert_allclose(W @ (cov + 0.1 * np.eye(5)) @ W, np.eye(5), atol=1e-10)


# -- networks: n_features_ derived, headers checked -------------------------------
@pytest.fixture(scope="module")
def network():
    X = RNG.standard_normal((30, 1, 10, 10))
    layers = [
        calm_np.ConvolutionalMixture(3, kernel_size=3, max_iter=2, pooling=2),
        calm_np.ConvolutionalMixture(2, kernel_size=2, max_iter=2),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return calm_np.ConvolutionalMixtureNetwork(layers).fit(X), X


def test_network_n_features_follows_set_params(network):
    net, X = network
    assert net.n_features_ == net.transform(X).shape[1] == 3 * 4 + 2
    net.set_params(readout="top")
    try:
        assert net.n_features_ == net.transform(X).shape[1] == 2
    finally:
        net.set_params(readout="concat")


def _rewrite_header(path, out, **changes):
    with zipfile.ZipFile(path) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    header = np.load(io.BytesIO(members["header.npy"]))
    data = json.loads(bytes(header).decode())
    data.update(changes)
    blob = np.frombuffer(json.dumps(data).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.save(buffer, blob)
    members["header.npy"] = buffer.getvalue()
    with zipfile.ZipFile(out, "w") as zf:
        for name, raw in members.items():
            zf.writestr(name, raw)


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(format_version=-1), "no valid format version"),
        (dict(format_version=0), "no valid format version"),
        (dict(format_version=99), "upgrade calm_np"),
        (dict(n_features=12345), "header says 12345 features"),
        (dict(n_features=0), "header says 0 features"),
    ],
)
def test_hostile_network_header(network, tmp_path, changes, match):
    net, _ = network
    net.save(tmp_path / "net.npz")
    _rewrite_header(tmp_path / "net.npz", tmp_path / "bad.npz", **changes)
    with pytest.raises(ValueError, match=match):
        calm_np.ConvolutionalMixtureNetwork.load(tmp_path / "bad.npz")


def _stack_with_init(depth, shape):
    """Two layers (3 then 2 kernels); layer ``depth``'s init has ``shape``."""
    sizes = [(3, 3), (2, 2)]
    layers = []
    for i, (k, size) in enumerate(sizes):
        init = "kmeans++"
        if i == depth:
            init = np.random.default_rng(i).standard_normal(shape)
        layers.append(
            calm_np.ConvolutionalMixture(k, kernel_size=size, init=init, max_iter=2)
        )
    return calm_np.ConvolutionalMixtureNetwork(layers)


INIT_SHAPES = [
    (1, (2, 5, 2, 2), r"layers\[1\]: init has shape \(2, 5, 2, 2\).*\(2, 3, 2, 2\)"),
    (1, (2, 1, 2, 2), r"layers\[1\].*one per kernel of layers\[0\]"),
    (1, (2, 2, 2), r"layers\[1\].*3 channel"),  # 3-D: one channel
    (1, (2, 3, 3, 3), r"layers\[1\].*\(2, 3, 2, 2\)"),  # wrong kernel size
    (1, (4, 3, 2, 2), r"layers\[1\].*\(2, 3, 2, 2\)"),  # wrong kernel count
    (0, (3, 2, 3, 3), r"layers\[0\].*the images have 1 channel"),
    (0, (3, 1, 2, 2), r"layers\[0\].*\(3, 1, 3, 3\)"),
]


@pytest.mark.parametrize("depth, shape, match", INIT_SHAPES)
def test_hostile_network_init_of_the_wrong_shape_refused_before_any_fit(
    depth, shape, match, monkeypatch
):
    fits = []
    real = calm_np.ConvolutionalMixture.fit
    monkeypatch.setattr(
        calm_np.ConvolutionalMixture,
        "fit",
        lambda self, X, y=None: fits.append(1) or real(self, X, y),
    )
    with pytest.raises(ValueError, match=match):
        _stack_with_init(depth, shape).fit(RNG.standard_normal((20, 1, 10, 10)))
    assert fits == []  # layer 1 was not fitted first


@pytest.mark.parametrize("shape", [(2, 3, 2, 2)])
def test_network_init_of_the_right_shape_is_used(shape):
    net = _stack_with_init(1, shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", calm_np.ConvergenceWarning)
        net.fit(RNG.standard_normal((20, 1, 10, 10)))
    assert net.layers_[1].kernels_.shape == shape


def _no_temporary_folder(monkeypatch, tmp_path):
    """Every way of making a temporary file or folder fails, as with a full
    or read-only /tmp and TMPDIR pointing nowhere."""
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(13, "no writable temporary folder")

    for name in ("mkdtemp", "mkstemp", "TemporaryDirectory", "NamedTemporaryFile"):
        monkeypatch.setattr(tempfile, name, refuse)
    monkeypatch.setattr(tempfile, "tempdir", None)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "nowhere"))


def test_hostile_network_loads_without_a_temporary_folder(
    network, tmp_path, monkeypatch
):
    net, X = network
    net.save(tmp_path / "net.npz")
    _no_temporary_folder(monkeypatch, tmp_path)
    loaded = calm_np.ConvolutionalMixtureNetwork.load(tmp_path / "net.npz")
    np.testing.assert_array_equal(loaded.transform(X), net.transform(X))


def test_hostile_network_layer_errors_name_the_member_not_a_temporary_file(
    network, tmp_path, monkeypatch
):
    net, _ = network
    net.save(tmp_path / "net.npz")
    with zipfile.ZipFile(tmp_path / "net.npz") as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    layer = np.load(io.BytesIO(members["layer1.npy"]))
    buffer = io.BytesIO()
    np.save(buffer, layer[: len(layer) // 2])  # layer 1's file cut in half
    members["layer1.npy"] = buffer.getvalue()
    with zipfile.ZipFile(tmp_path / "bad.npz", "w") as zf:
        for name, raw in members.items():
            zf.writestr(name, raw)
    _no_temporary_folder(monkeypatch, tmp_path)
    with pytest.raises(ValueError, match="layer 1 is not valid: layer1.npy is") as info:
        calm_np.ConvolutionalMixtureNetwork.load(tmp_path / "bad.npz")
    assert str(tmp_path / "bad.npz") in str(info.value)
    assert "tmp" not in str(info.value).replace(str(tmp_path), "")


def test_network_saves_without_a_temporary_folder_beside_its_target(
    network, tmp_path, monkeypatch
):
    # the layers' files are made in memory; only the target's own temporary
    # name (beside it, for an atomic rename) is written
    import tempfile

    net, X = network
    real = tempfile.mkstemp
    made = []

    def spy(*args, dir=None, **kwargs):
        made.append(dir)
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", spy)
    monkeypatch.setattr(tempfile, "TemporaryDirectory", None)
    net.save(tmp_path / "net.npz")
    assert all(d is not None and str(d).startswith(str(tmp_path)) for d in made)
    loaded = calm_np.ConvolutionalMixtureNetwork.load(tmp_path / "net.npz")
    np.testing.assert_array_equal(loaded.transform(X), net.transform(X))


# -- padding beyond kernel_size - 1; a prior penalty that overflows ------------------
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


@pytest.mark.parametrize("args, fragment", [
    (["--padding", "100"], "--padding: padding=100 is more than kernel_size - 1"),
    (["--padding", "3", "--kernel-size", "3"], "--padding: padding=3"),
    (["--kernel-size", "2"], "--padding (--preset's): padding=2"),
    (["--padding", "9", "--layers", "2"], "layers[0]: padding=9"),
])  # fmt: skip
def test_hostile_cli_padding_refused_before_the_data_is_read(
    tmp_path, capsys, monkeypatch, args, fragment
):
    from calm_np import _cli

    monkeypatch.setattr(_cli, "_load_data", lambda *a: pytest.fail("data read"))
    status = main(["fit", "--quiet", "--out", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err
    assert status == 1 and fragment in err, err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("reg", [1e308, 1.7976931348623157e308, 5e307])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_hostile_huge_reg_kernels_is_named_not_blamed_on_the_data(reg, dtype):
    X = RNG.standard_normal((20, 1, 8, 8)).astype(dtype)
    init = np.stack([np.full((1, 3, 3), 1.0), np.full((1, 3, 3), -1.0)])
    model = calm_np.ConvolutionalMixture(2, kernel_size=3, reg_kernels=reg, init=init)
    with pytest.raises(ValueError, match=r"reg_kernels=.*overflow.*smaller") as info:
        model.fit(X)
    assert "scale" not in str(info.value)


def test_hostile_cli_huge_reg_kernels_is_named(tmp_path, capsys):
    args = ["fit", "--quiet", "--limit", "30", "--reg-kernels", "1e308"]
    status = main([*args, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert status == 1 and "reg_kernels=1e+308" in err and "scale" not in err, err


def test_large_but_finite_reg_kernels_fits():
    X = RNG.standard_normal((20, 1, 8, 8))
    model = calm_np.ConvolutionalMixture(2, kernel_size=3, reg_kernels=1e300)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", calm_np.DeadKernelWarning)
        model.fit(X)
    assert np.isfinite(model.lower_bound_)


# -- saves name their target; --out is probed before the fit ----------------------
def test_save_to_a_full_device_names_it(network):
    net, _ = network
    import os

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    for model in (net, net.layers_[0]):
        with pytest.raises(OSError, match="/dev/full"):
            model.save("/dev/full")


OUT_CASES = [
    ("", "--out is empty"),
    ("/proc/calm-np-out", "--out"),
    ("/sys/calm-np-out", "--out"),
]


@pytest.mark.parametrize("out, fragment", OUT_CASES)
def test_hostile_cli_out_refused_before_the_fit(tmp_path, capsys, monkeypatch, out,
                                                fragment):  # fmt: skip
    import os

    if out and not os.path.isdir(out.rsplit("/", 1)[0]):
        pytest.skip(f"no {out.rsplit('/', 1)[0]} here")
    monkeypatch.chdir(tmp_path)
    fitted = []
    monkeypatch.setattr(
        calm_np.ConvolutionalMixture, "fit", lambda self, X: fitted.append(1)
    )
    status = main(["fit", "--quiet", "--limit", "20", "--out", out])
    err = capsys.readouterr().err
    assert status == 1 and fragment in err and not fitted, err
    assert list(tmp_path.iterdir()) == []  # nothing written in the current folder


def test_cli_interrupted_write_keeps_the_old_set(tmp_path, capsys, monkeypatch):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    from calm_np import plots

    out = tmp_path / "out"
    tiny = ["--n-kernels", "2", "--kernel-size", "3", "--max-iter", "1", "--quiet"]
    assert main(["fit", *tiny, "--limit", "30", "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(plots, "model_figures", interrupted)
    assert main(["fit", *tiny, "--limit", "40", "--out", str(out)]) == 130
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after == before  # the old set, whole; no staging folder left


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--n-kernels", "5"], "--n-kernels would be ignored"),
        (["--kernel-size", "4"], "--kernel-size would be ignored"),
        (["--max-iter", "7"], "--max-iter would be ignored"),
        (["--fit-limit", "7"], "--fit-limit would be ignored"),
        (["--layers", "2"], "--layers would be ignored"),
    ],
)
def test_hostile_cli_evaluate_model_refuses_fit_options(tmp_path, capsys, args,
                                                        fragment):  # fmt: skip
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    tiny = ["--n-kernels", "2", "--kernel-size", "3", "--max-iter", "1", "--quiet"]
    assert main(["fit", *tiny, "--limit", "30", "--out", str(tmp_path / "m")]) == 0
    model = str(tmp_path / "m" / "model.npz")
    status = main(["evaluate", "--model", model, *args, "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert status == 1 and fragment in err, err


def test_cli_network_preset_runs_on_digits(tmp_path, capsys):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    status = main(
        ["evaluate", "--preset", "network", "--limit", "60", "--max-iter", "1",
         "--n-kernels", "4", "--layer2-kernels", "3", "--quiet",
         "--out", str(tmp_path)]
    )  # fmt: skip
    assert status == 0, capsys.readouterr().err


def _option_help(text, flag):
    """The help of ``flag`` in ``--help``'s text, on one line."""
    lines = text.split("\noptions:", 1)[1].splitlines()  # not the usage
    for i, line in enumerate(lines):
        words = line.split()
        if line.startswith("  -") and words and words[0].rstrip(",") == flag:
            block = [line]
            for more in lines[i + 1 :]:
                if more.startswith("  -") or not more.startswith("   "):
                    break
                block.append(more)
            return " ".join(" ".join(block).split())
    raise AssertionError(f"{flag} not in the help")


@pytest.mark.parametrize("command", ["fit", "evaluate"])
def test_hostile_cli_help_shows_every_estimator_default(capsys, command):
    from calm_np import _cli_options

    with pytest.raises(SystemExit):
        _cli_options.build_parser().parse_args([command, "--help"])
    text = capsys.readouterr().out
    defaults = calm_np.ConvolutionalMixture().get_params()
    by_preset = _cli_options._preset_keys()
    skipped = {"warm_start", "init", "callback", "verbose"}
    for name in sorted(set(defaults) - skipped):
        help_text = _option_help(text, "--" + name.replace("_", "-"))
        own = _cli_options._shown(name, defaults[name])
        if name in by_preset:
            assert f"default: the --preset's, else {own}" in help_text, name
        else:
            assert f"default: {own} (no preset sets it)" in help_text, name
    assert "default: 1 (no preset sets it)" in _option_help(text, "--n-init")
    assert "default: auto (no preset sets it)" in _option_help(text, "--method")
    assert "else kmeans++" in _option_help(text, "--init")
    for flag, value in (("--backend", "numpy"), ("--dtype", "float32")):
        assert f"default: {value}" in _option_help(text, flag)


def test_cli_help_states_defaults_and_presets():
    import subprocess
    import sys

    text = subprocess.run(
        [sys.executable, "-m", "calm_np", "evaluate", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in evaluation.PRESETS:
        for dataset in ("digits", "fashion-mnist", "mnist", "stl10", "folder"):
            line = f"  {name} / {dataset}: "
            assert line + evaluation.get_preset(name, dataset).summary() in text
