"""Issue 23's dilation lever: layer 2 with dilated 3×3 kernels, by polyphase.

A ``d``-dilated kernel on a map reads every ``d``-th position; its patches
are exactly the ordinary patches of the map's ``d²`` polyphase components
``M[:, :, a::d, b::d]``.  With ``latent="patch"`` the objective is a sum over
patches, so a layer 2 of dilated kernels is an ordinary
``ConvolutionalMixture`` fitted on those components as images (``d²`` per
image): no engine skips positions.

The stack measured: ``stack_k128``'s layer 1 (``best``, fitted on the first
10 000 training images), its triangle maps averaged 2×2 (11×11, cropped to
10×10) and standardised per channel as the network does; layer 2: 128
kernels 3×3 dilated by 2 (a 5×5 reach on the 10×10 map, 6×6 positions), the
rest as ``stack_k128``'s (patch latent, learned σ², not whitened,
k-means++ start, 10 iterations); its triangle readout summed over 3×3 cells
of its 6×6 positions.  A cell of 2×2 positions holds one position of each
component, so the cell sums are the components' own 3×3-grid readouts
added up.  Both layers' readouts concatenated, probed as the main job
(60 000 / 10 000 images, C=0.1), beside ``best`` alone in the same run.

    python benchmarks/dilation.py | tee benchmarks/results/dilation_seed0.txt
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

import features as F  # noqa: E402

import calm_np  # noqa: E402


def components(maps, d):
    """The ``d²`` polyphase components of ``maps`` (n, C, H, W), cropped to
    multiples of ``d``, as images: (n·d², C, H // d, W // d), image-major."""
    n, c, h, w = maps.shape
    h, w = h - h % d, w - w % d
    parts = [maps[:, :, a:h:d, b:w:d] for a in range(d) for b in range(d)]
    return np.stack(parts, axis=1).reshape(n * d * d, c, h // d, w // d)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dilation", type=int, default=2)
    ap.add_argument("--pool-size", type=int, default=2)
    ap.add_argument("--kernels", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--C", type=float, default=0.1)
    ap.add_argument("--limit", type=int)
    ap.add_argument("--test-limit", type=int)
    args = ap.parse_args(argv)
    d = args.dilation

    base = F.CustomStack(args.pool_size, args.seed, args.limit, args.test_limit)
    layer2 = calm_np.ConvolutionalMixture(
        **dict(base.layer2_params, n_kernels=args.kernels, pooling=3)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", calm_np.ConvergenceWarning)
        layer2.fit(components(base.maps, d))
    del base.maps
    print(
        f"layer 2 on {d}x{d} components of {args.pool_size}x{args.pool_size}-"
        f"averaged maps; fitted in {time.perf_counter() - base.start:.1f} s, "
        f"{layer2.n_iter_} iterations",
        flush=True,
    )

    def top(maps):  # a cell of d x d dilated positions: one of each component
        out = layer2.transform(components(maps, d))
        return out.reshape(len(maps), d * d, -1).sum(axis=1)

    base.probe(*base.features(top), f"dilated stack, dilation {d}", args.C)


if __name__ == "__main__":
    main()
