"""A fit reads nothing back from the device per batch (issue: the portable path).

On a GPU every conversion of an array to a host value (``bool``, ``float``,
``int``, an index, a NumPy copy) waits for the device.  The images are
validated once where they enter; after that the EM loop trusts its inputs,
and only the per-iteration objective (and σ²'s step) cross to the host.
The check: array-api-strict's arrays with every such conversion counted,
and fits that differ only in their number of batches (or iterations).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import calm_np

strict = pytest.importorskip("array_api_strict")
pytestmark = pytest.mark.array_api_strict

CONVERSIONS = ("__bool__", "__float__", "__int__", "__index__", "__complex__",
               "__array__", "__dlpack__", "item", "tolist")  # fmt: skip


@pytest.fixture
def host_reads(monkeypatch):
    """A counter of conversions of array-api-strict arrays to host values."""
    Array = type(strict.asarray(0.0))
    count = {"n": 0}
    for name in CONVERSIONS:
        original = getattr(Array, name, None)
        if original is None:
            continue

        def counted(self, *args, _original=original, **kwargs):
            count["n"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(Array, name, counted)
    return count


def _reads_of_a_fit(host_reads, n_batches, max_iter, **params):
    rng = np.random.default_rng(0)
    X = strict.asarray(rng.standard_normal((48, 1, 12, 12)))
    model = calm_np.ConvolutionalMixture(
        n_kernels=4, kernel_size=3, max_iter=max_iter, tol=0.0, random_state=0,
        batch_size=48 // n_batches, **params,
    )  # fmt: skip
    before = host_reads["n"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(X)
    return host_reads["n"] - before


MODELS = {
    "paper": {},
    "fft": {"method": "fft"},
    "main job": {
        "latent": "patch",
        "whiten": True,
        "learn_variance": True,
        "init": "random",
    },  # fmt: skip
    "weights": {"learn_weights": True, "reg_kernels": 0.5, "padding": 1},
}


@pytest.mark.parametrize("params", MODELS.values(), ids=MODELS.keys())
def test_no_host_read_per_batch(host_reads, params):
    # 2 or 8 batches per pass, 3 passes: the same number of host reads
    few = _reads_of_a_fit(host_reads, 2, 3, **params)
    many = _reads_of_a_fit(host_reads, 8, 3, **params)
    assert many == few


@pytest.mark.parametrize("params", MODELS.values(), ids=MODELS.keys())
def test_a_few_host_reads_per_iteration(host_reads, params):
    # the objective (and σ²'s step) per iteration: at most 3 reads each
    short = _reads_of_a_fit(host_reads, 4, 2, **params)
    long = _reads_of_a_fit(host_reads, 4, 6, **params)
    assert 0 < long - short <= 3 * 4


def test_the_counter_counts(host_reads):
    # the instrument itself: a validated public call reads values
    X = strict.asarray(np.ones((2, 1, 5, 5)))
    K = strict.asarray(np.ones((1, 1, 3, 3)))
    calm_np.sufficient_statistics(X, K)
    assert host_reads["n"] > 0


@pytest.mark.parametrize("params", MODELS.values(), ids=MODELS.keys())
def test_readouts_read_nothing_back_per_batch(host_reads, params):
    # transform and score_samples of a fitted model: images validated once
    # where they enter, then the same number of reads for 2 or 8 batches
    rng = np.random.default_rng(1)
    X = strict.asarray(rng.standard_normal((48, 1, 12, 12)))
    model = calm_np.ConvolutionalMixture(
        n_kernels=4, kernel_size=3, max_iter=2, tol=0.0, random_state=0,
        pooling=((1, 1), (2, 2)), **params,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(X)
    counts = []
    for n_batches in (2, 8):
        model.set_params(batch_size=48 // n_batches)
        before = host_reads["n"]
        model.transform(X)
        model.score_samples(X)
        counts.append(host_reads["n"] - before)
    assert counts[0] == counts[1]
