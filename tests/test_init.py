"""k-means++ seeding (``_init.d2_sample``) against a brute-force replay."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from calm_np._init import d2_sample


def replay(flat, n_new, seed, trials):
    """Greedy k-means++ written out with the same random draws."""
    rng = np.random.RandomState(seed)
    p = flat.shape[0]
    chosen = [int(rng.randint(p))]
    d2 = ((flat - flat[chosen[0]]) ** 2).sum(axis=1)
    while len(chosen) < n_new:
        cum = np.cumsum(d2)
        us = [rng.uniform() * cum[-1] for _ in range(trials)]
        draws = [min(int(np.sum(cum < u)), p - 1) for u in us]
        options = [np.minimum(d2, ((flat - flat[i]) ** 2).sum(axis=1)) for i in draws]
        best = int(np.argmin([o.sum() for o in options]))
        chosen.append(draws[best])
        d2 = options[best]
    return chosen


@given(
    seed=st.integers(0, 2**31 - 1),
    n_new=st.integers(1, 6),
    trials=st.integers(1, 4),
)
def test_d2_sample_picks_the_best_of_its_draws(seed, n_new, trials):
    flat = np.random.default_rng(seed).standard_normal((40, 1, 2, 3))
    got = d2_sample(flat, n_new, np.random.RandomState(seed), np, trials=trials)
    expected = replay(flat.reshape(40, -1), n_new, seed, trials)
    np.testing.assert_array_equal(got, flat[expected])


def test_greedy_seeding_covers_planted_clusters_better_on_average():
    # 8 tight, well separated clusters of unequal size; plain D² sampling
    # often puts two seeds in one big cluster, greedy picks rarely do
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((8, 6)) * 10
    sizes = [400, 200, 100, 50, 25, 12, 6, 3]
    parts = zip(centers, sizes, strict=True)
    X = np.concatenate([c + rng.standard_normal((n, 6)) * 0.1 for c, n in parts])

    def covered(trials):
        hits = []
        for seed in range(30):
            picks = d2_sample(X, 8, np.random.RandomState(seed), np, trials=trials)
            nearest = np.argmin(((picks[:, None] - centers[None]) ** 2).sum(-1), axis=1)
            hits.append(len(set(nearest.tolist())))
        return np.mean(hits)

    assert covered(4) >= covered(1)
    assert covered(4) > 7.5


@pytest.mark.parametrize("trials", [1, 3])
def test_d2_sample_with_existing_centers_keeps_away_from_them(trials):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((100, 4))
    X[50:] += 20
    centers = X[:1]
    rs = np.random.RandomState(0)
    picks = d2_sample(X, 1, rs, np, centers=centers, trials=trials)
    assert picks[0, 0] > 10  # from the other cluster


def test_greedy_init_is_an_estimator_option():
    from calm_np import ConvolutionalMixture

    X = np.random.default_rng(0).standard_normal((20, 1, 10, 10))
    options = dict(kernel_size=3, max_iter=0, random_state=0)
    fits = {
        init: ConvolutionalMixture(6, init=init, **options).fit(X).kernels_
        for init in ("kmeans++", "greedy_kmeans++")
    }
    assert fits["kmeans++"].shape == fits["greedy_kmeans++"].shape == (6, 1, 3, 3)
    assert not np.array_equal(fits["kmeans++"], fits["greedy_kmeans++"])
