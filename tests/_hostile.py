"""Helpers shared by the hostile-input tests (``test_*_hostile.py``).

``X`` is the first draw of ``np.random.default_rng(0)`` (20 images 8×8), as
each hostile module draws it for itself; ``model``/``fitted`` build the
small estimator those tests attack, ``snapshot``/``assert_unchanged`` check
that a failed call left a fitted model as it was.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from calm_np import ConvolutionalMixture, ConvolutionalMixtureNetwork
from calm_np._xp import to_numpy

LIBS = ["numpy", "torch"]
X = np.random.default_rng(0).standard_normal((20, 1, 8, 8))


def lib_array(a, lib):
    """``a`` as an array of ``lib`` ("numpy" or "torch")."""
    if lib == "torch":
        torch = pytest.importorskip("torch")
        return torch.asarray(np.ascontiguousarray(a))
    return a


def model(**kw):
    """A small, fast estimator; ``kw`` overrides its parameters."""
    params = dict(n_kernels=3, kernel_size=3, max_iter=2, tol=0.0, random_state=0)
    params.update(kw)
    return ConvolutionalMixture(**params)


def small(**kw):
    """A small estimator with the library's default seed and tolerance."""
    return ConvolutionalMixture(
        **{"n_kernels": 3, "kernel_size": 3, "max_iter": 2, **kw}
    )


def quiet_fit(m, data):
    """``m.fit(data)`` with warnings (a two-iteration fit's) silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return m.fit(data)


def fitted(**kw):
    """:func:`model` fitted on :data:`X`."""
    return quiet_fit(model(**kw), X)


def snapshot(m):
    """What a failed call must leave unchanged in a fitted model."""
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


def fitted_network(seed=0):
    """A small fitted two-layer network and its 30 images 10x10 (two
    iterations per layer, warnings silenced): the hostile tests' network."""
    X = np.random.default_rng(seed).standard_normal((30, 1, 10, 10))
    layers = [
        ConvolutionalMixture(3, kernel_size=3, max_iter=2, pooling=2),
        ConvolutionalMixture(2, kernel_size=2, max_iter=2),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ConvolutionalMixtureNetwork(layers).fit(X), X
