"""The benchmarks' PyTorch transcription of the reference EM equals calm_np.

``benchmarks/reference_torch.py`` is the anchor every speed-up is measured
against, so it must compute the same statistics: ``N_k``, ``S_k`` and the
unnormalized log-likelihood ``Σ_n logsumexp A_n`` (calm_np's normalized value
minus ``Σ_n c(X_n)``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from _helpers import load_benchmark

import calm_np

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def reference():
    return load_benchmark("reference_torch")


def _log_const(X, padding, kernel_shape):
    n, c, H, W = X.shape
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    Hp, Wp = H + 2 * ph, W + 2 * pw
    n_pos = (Hp - kernel_shape[0] + 1) * (Wp - kernel_shape[1] + 1)
    const = -0.5 * c * Hp * Wp * math.log(2 * math.pi) - math.log(n_pos)
    return float(np.sum(-0.5 * np.sum(X * X, axis=(1, 2, 3)) + const))


@pytest.mark.parametrize(
    "n, c, H, W, k, kernel, padding, weighted",
    [
        (3, 1, 9, 8, 4, (4, 3), 2, False),
        (2, 3, 10, 10, 5, (5, 5), 0, True),
        (4, 2, 7, 9, 3, (2, 4), (1, 0), True),
    ],
)
def test_reference_statistics_match_calm_np(
    reference, n, c, H, W, k, kernel, padding, weighted
):
    rng = np.random.default_rng(n * 100 + k)
    X = rng.standard_normal((n, c, H, W))
    M = rng.standard_normal((k, c, *kernel))
    log_w = np.log(rng.dirichlet(np.ones(k))) if weighted else None
    lw_t = None if log_w is None else torch.from_numpy(log_w)
    counts, sums, ll = reference.batch_statistics(
        torch.from_numpy(X), torch.from_numpy(M), lw_t, padding
    )
    s = calm_np.sufficient_statistics(X, M, log_weights=log_w, padding=padding)
    np.testing.assert_allclose(counts.numpy(), s.counts, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(sums.numpy(), s.sums, rtol=1e-10, atol=1e-12)
    expected = float(s.log_likelihood) - _log_const(X, padding, kernel)
    assert math.isclose(float(ll), expected, rel_tol=1e-10)


def test_reference_epoch_is_one_m_step_over_all_batches(reference):
    rng = np.random.default_rng(7)
    X = rng.standard_normal((7, 1, 8, 8))
    M = rng.standard_normal((3, 1, 3, 3))
    new, ll = reference.epoch(torch.from_numpy(X), torch.from_numpy(M), 3, None, 1)
    s = calm_np.sufficient_statistics(X, M, padding=1)
    mu, ok = s.m_step()
    assert bool(np.all(ok))
    np.testing.assert_allclose(new.numpy(), mu, rtol=1e-10, atol=1e-12)
    assert math.isclose(float(ll), float(s.log_likelihood) - _log_const(X, 1, (3, 3)))
