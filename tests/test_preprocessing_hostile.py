"""Hostile input to ``calm_np.preprocessing``: never zeros or NaN without a word.

NaN, infinity, values whose squares overflow and channels-last batches are
refused by name; ZCA is one implementation that moves across namespaces and
clones.
"""

from __future__ import annotations

import numpy as np
import pytest

from calm_np import preprocessing

RNG = np.random.default_rng(0)


# -- layout: a channels-last batch is never read as channels-first --------------
CHANNELS_LAST = [
    (20, 32, 32, 3), (5, 28, 28, 1), (2, 64, 64, 4), (7, 10, 12, 3),
    (1, 96, 96, 3), (3, 8, 5, 1),
]  # fmt: skip


@pytest.mark.parametrize("shape", CHANNELS_LAST[:3])
def test_hostile_preprocessing_refuses_channels_last(shape):
    X = np.zeros(shape, dtype=np.float32)
    for call in (
        lambda: preprocessing.local_contrast(X, 3),
        lambda: preprocessing.zca_whiten_per_image(X),
    ):
        with pytest.raises(ValueError, match="channels-last"):
            call()


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
