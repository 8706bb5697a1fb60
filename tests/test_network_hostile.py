"""Hostile stacks of layers (``_network``): shapes checked before any layer is
fitted, ``n_features_`` derived from the layers, maps never mistaken for a
channels-last batch.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from _hostile import fitted_network

import calm_np

RNG = np.random.default_rng(0)


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


# -- networks: n_features_ derived, init arrays checked against the stack ----------
@pytest.fixture(scope="module")
def network():
    return fitted_network()


def test_network_n_features_follows_set_params(network):
    net, X = network
    assert net.n_features_ == net.transform(X).shape[1] == 3 * 4 + 2
    net.set_params(readout="top")
    try:
        assert net.n_features_ == net.transform(X).shape[1] == 2
    finally:
        net.set_params(readout="concat")


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
