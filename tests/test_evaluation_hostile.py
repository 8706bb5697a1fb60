"""Hostile input to ``calm_np.evaluation``: its parameter table, the presets.

Each bad argument is a ``TypeError`` or ``ValueError`` naming the parameter
and what to change; every preset runs on every bundled data set or is
refused up front with the reason.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import calm_np
from calm_np import evaluation

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
