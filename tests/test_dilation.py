"""``benchmarks/dilation.py``'s polyphase identity: a ``d``-dilated kernel's
patches of a map (cropped to multiples of ``d``) are the ordinary patches of
its ``d²`` components, each once, component ``(a, b)``'s patch at ``(y, x)``
being the dilated patch at ``(d·y + a, d·x + b)``."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import load_benchmark
from hypothesis import given
from hypothesis import strategies as st


@pytest.fixture(scope="module")
def dilation():
    return load_benchmark("dilation")


def _dilated_patches(m, k, d):
    """Brute force: every k×k patch of ``m`` (C, H, W) read with step ``d``,
    by its top-left position."""
    c, h, w = m.shape
    out = {}
    for y in range(h - d * (k - 1)):
        for x in range(w - d * (k - 1)):
            out[(y, x)] = m[:, y : y + d * (k - 1) + 1 : d, x : x + d * (k - 1) + 1 : d]
    return out


@given(
    seed=st.integers(0, 2**31 - 1),
    d=st.integers(1, 3),
    k=st.integers(1, 3),
    extra=st.tuples(st.integers(0, 4), st.integers(0, 4)),
    n=st.integers(1, 3),
)
def test_components_hold_the_dilated_patches(dilation, seed, d, k, extra, n):
    rng = np.random.default_rng(seed)
    h, w = d * k + extra[0] * d, d * k + extra[1] * d  # multiples of d
    maps = rng.standard_normal((n, 2, h + rng.integers(d), w + rng.integers(d)))
    parts = dilation.components(maps, d)
    assert parts.shape == (n * d * d, 2, h // d, w // d)
    for i in range(n):
        want = _dilated_patches(maps[i, :, :h, :w], k, d)
        for a in range(d):
            for b in range(d):
                part = parts[i * d * d + a * d + b]
                for y in range(part.shape[1] - k + 1):
                    for x in range(part.shape[2] - k + 1):
                        got = part[:, y : y + k, x : x + k]
                        np.testing.assert_array_equal(got, want[(d * y + a, d * x + b)])
        # every dilated patch is some component's patch: the counts agree
        n_parts = d * d * (h // d - k + 1) * (w // d - k + 1)
        assert len(want) == n_parts
