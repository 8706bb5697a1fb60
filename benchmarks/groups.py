"""Issue 23: layer 2 on small groups of similar channels (Coates & Ng 2011).

A fully connected layer 2 reads 3×3×256 = 2304-value patches of layer 1's
maps: too many dimensions to whiten, and its kernels pay little (the
``stack`` rows of docs/benchmarks.rst).  Coates & Ng ("Selecting receptive
fields in deep networks", NIPS 2011) instead give each upper unit a small
group of *similar* lower channels: similarity is the correlation of the
channels' squared (standardised) responses over positions and images; each
group is a random seed channel and its ``g − 1`` most similar channels
(groups may overlap).  Here every group gets its own layer 2, an ordinary
``ConvolutionalMixture`` on the group's channels, whitened as layer 1 is
(3×3×g patches), noise start, learned σ², patch latent, 10 iterations,
triangle readout on 3×3 cells.

Layer 1 and the maps between the layers are ``stack_k128``'s: ``best``
fitted on the first 10 000 training images, triangle maps averaged over 3×3
cells (7×7), standardised per channel.  Probed as the main job (60 000 /
10 000 images, C=0.1): ``best`` alone, both layers, and the groups' layer
2 alone, in one run.

    python benchmarks/groups.py | tee benchmarks/results/groups_seed0.txt
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
from calm_np import evaluation  # noqa: E402


def similar_groups(maps, n_groups, size, rng):
    """``n_groups`` lists of ``size`` channels of ``maps`` (n, C, h, w): a
    random seed channel (distinct seeds) and its most similar channels by the
    correlation of squared responses."""
    flat = np.moveaxis(maps, 1, -1).reshape(-1, maps.shape[1]).astype(np.float64)
    similarity = np.corrcoef(flat * flat, rowvar=False)
    seeds = rng.choice(maps.shape[1], size=n_groups, replace=False)
    return [np.argsort(-similarity[s], kind="stable")[:size] for s in seeds]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--groups", type=int, default=32)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--kernels", type=int, default=16, help="per group")
    ap.add_argument("--grid", type=int, default=3, help="layer 2's readout cells")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--C", type=float, default=0.1)
    ap.add_argument("--limit", type=int)
    ap.add_argument("--test-limit", type=int)
    args = ap.parse_args(argv)

    base = F.CustomStack(3, args.seed, args.limit, args.test_limit)
    rng = np.random.default_rng(args.seed)
    groups = similar_groups(base.maps, args.groups, args.group_size, rng)
    best = evaluation.preset("best", "fashion-mnist")
    uppers = []
    for g in groups:
        upper = calm_np.ConvolutionalMixture(
            n_kernels=args.kernels,
            kernel_size=3,
            latent="patch",
            whiten=True,
            learn_variance=True,
            init="random",
            max_iter=10,
            tol=best["tol"],
            pooling=args.grid,
            features="triangle",
            random_state=args.seed,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", calm_np.ConvergenceWarning)
            upper.fit(np.ascontiguousarray(base.maps[:, g]))
        uppers.append(upper)
    del base.maps
    print(
        f"{args.groups} groups of {args.group_size} channels, {args.kernels} "
        f"kernels each; layers fitted in {time.perf_counter() - base.start:.1f} s",
        flush=True,
    )

    def top(maps):
        parts = zip(uppers, groups, strict=True)
        return np.hstack(
            [u.transform(np.ascontiguousarray(maps[:, g])) for u, g in parts]
        )

    base.probe(*base.features(top), "grouped stack", args.C)


if __name__ == "__main__":
    main()
