"""The top-down refinement's two-level mixture (``benchmarks/topdown.py``).

Issue 23 measured a stack with a joint objective (docs/user_guide/model.rst,
"A top-down refinement"): blocks of layer 1's patches draw a context ``j``,
the context draws each patch's kernel.  Its claims, each checked here:

- the objective equals a brute-force sum over blocks, contexts and kernels
  of Gaussian densities;
- with one context it is layer 1's own patch objective (``score_samples``
  of a ``latent="patch"`` model; the whitened patches are the model's);
- EM never lowers it, learning the contexts alone or layer 1 too;
- the chunking of the images does not change the statistics.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from _helpers import load_benchmark
from hypothesis import given
from hypothesis import strategies as st

import calm_np


@pytest.fixture(scope="module")
def topdown():
    return load_benchmark("topdown")


def _problem(seed, n, shape, D, K, J, block, topdown):
    rng = np.random.default_rng(seed)
    U = shape[0] * shape[1]
    Z = rng.standard_normal((n, U, D))
    mu = rng.standard_normal((K, D))
    pi = rng.dirichlet(np.ones(K), size=J)
    rho = rng.dirichlet(np.ones(J))
    p = topdown.Params(mu, rng.uniform(0.5, 2.0), pi, rho)
    B, _ = topdown.block_matrix(shape, block)
    return Z, p, B


def _brute_objective(Z, p, B):
    """``Σ_n Σ_v log Σ_j ρ_j Π_{u∈v} Σ_k π_{k|j} N(z_u; μ_k, σ² I)`` by loops."""
    D = Z.shape[2]
    total = 0.0
    for z in Z:
        for v in range(B.shape[1]):
            members = np.flatnonzero(B[:, v])
            mix = 0.0
            for j in range(len(p.rho)):
                prod = p.rho[j]
                for u in members:
                    dens = 0.0
                    for k in range(len(p.mu)):
                        d2 = float(np.sum((z[u] - p.mu[k]) ** 2))
                        norm = (2 * math.pi * p.sigma2) ** (-D / 2)
                        dens += p.pi[j, k] * norm * math.exp(-0.5 * d2 / p.sigma2)
                    prod *= dens
                mix += prod
            total += math.log(mix)
    return total


settings_small = dict(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 3),
    shape=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    D=st.integers(1, 3),
    K=st.integers(1, 4),
    J=st.integers(1, 3),
    block=st.integers(1, 3),
)


@given(**settings_small)
def test_objective_is_the_brute_force_mixture(topdown, seed, n, shape, D, K, J, block):
    Z, p, B = _problem(seed, n, shape, D, K, J, block, topdown)
    F, q, _ = topdown.e_step(Z, p, B)
    assert F == pytest.approx(_brute_objective(Z, p, B), rel=1e-9, abs=1e-9)
    np.testing.assert_allclose(q.sum(axis=2), 1.0, rtol=1e-12)


@given(**settings_small, layer1=st.booleans())
def test_em_never_lowers_the_objective(topdown, seed, n, shape, D, K, J, block, layer1):
    Z, p, B = _problem(seed, n, shape, D, K, J, block, topdown)
    objectives, _ = topdown.fit(Z, p, B, 4, layer1=layer1, log=lambda s: None)
    drops = np.diff(objectives)
    assert np.all(drops >= -1e-9 * np.abs(objectives[:-1]).max())


@given(**settings_small, chunk=st.integers(1, 3))
def test_chunking_does_not_change_the_fit(
    topdown, seed, n, shape, D, K, J, block, chunk
):
    Z, p, B = _problem(seed, n, shape, D, K, J, block, topdown)
    whole = topdown.fit(Z, p, B, 2, chunk=n, log=lambda s: None)
    parts = topdown.fit(Z, p, B, 2, chunk=chunk, log=lambda s: None)
    np.testing.assert_allclose(parts[0], whole[0], rtol=1e-10)
    np.testing.assert_allclose(parts[1].mu, whole[1].mu, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(parts[1].pi, whole[1].pi, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("whiten", [False, True])
def test_one_context_is_layer_ones_objective(topdown, whiten):
    rng = np.random.default_rng(3)
    X = rng.random((12, 1, 9, 8)).astype(np.float32)
    model = calm_np.ConvolutionalMixture(
        n_kernels=5,
        kernel_size=3,
        latent="patch",
        whiten=whiten,
        learn_variance=True,
        learn_weights=True,
        max_iter=3,
        tol=0.0,
        random_state=0,
    )
    with pytest.warns(calm_np.ConvergenceWarning):
        model.fit(X)
    Z, shape = topdown.whitened_patches(model, X)
    B, _ = topdown.block_matrix(shape, 2)
    K = model.n_kernels
    one = topdown.Params(
        np.asarray(model.kernels_, np.float64).reshape(K, -1),
        model.variance_,
        np.asarray(model.weights_, np.float64)[None, :],
        np.ones(1),
    )
    F, _, _ = topdown.e_step(Z, one, B)
    expected = float(np.sum(model.score_samples(X).astype(np.float64)))
    assert F == pytest.approx(expected, rel=1e-5)
