"""Feature quality on Fashion-MNIST: linear-probe accuracy of one CALM layer.

Every row turns each image into a feature vector, standardizes the features
(statistics of the training set) and fits the same multinomial logistic
regression (``calm_np.evaluation.linear_probe``: scikit-learn's objective,
L-BFGS to tol 1e-4; ``--C``, default 0.1 as ``calm-np evaluate`` on
Fashion-MNIST) on the training images; the number is its accuracy on the test
images.  Every row of one run uses the same probe.  ``--with-init`` adds, for
every CALM row, the same row without EM (``max_iter=0``: the initial kernels,
and the whitening where the row whitens), named ``ROW@init``.

Rows:

    raw        the 784 pixels
    kmeans256  Coates, Lee & Ng (2011): 64 k-means centroids of normalized,
               ZCA-whitened 7x7 patches, "triangle" activation at every
               position, summed over 2x2 cells (256 features)
    kmeans252  the same with 28 centroids and 3x3 cells (best256's shape)
    kmeans1152 the same with 128 centroids and 3x3 cells (1152)
    paper      the CALM paper's MNIST setup: 64 kernels 20x20, padding 2,
               batch 1000, 15 epochs, pixels in [0, 1], image-wide pooled
               log p(Z=k | X) (64 features)
    paper0     the same kernels before EM (the k-means++ initialisation)
    joint      the paper's model and readout family at their best: 128 kernels
               7x7, image latent, log joint pooled over a 3x3 grid
    best       `calm-np evaluate --dataset fashion-mnist`'s defaults: 256
               kernels 7x7 started from Gaussian noise (init="random"),
               latent="patch", every patch normalized and
               ZCA-whitened inside the model (whiten=True), learned shared
               variance, pixels in [0, 1], triangle activation summed over
               3x3 cells (2304 features)
    best256    the best setting within 256 features: the same with 28
               kernels (252 features)
    issue 12's levers (--rows whiten), each one change from white1152:
    white1152  best1152: best with 128 kernels, greedy k-means++ seeding
               (1152 features, kmeans1152's shape)
    white1152_sigma1 / _weights / _posterior  sigma^2 = 1 fixed (the
               paper's) / learned mixture weights / posterior readout
    white256   best with 64 kernels on 2x2 cells (kmeans256's shape)
    local1152  the previous default: no whitening, sigma^2 = 1, local
               contrast normalization, 128 kernels 3x3 cells
    local1152_sigma  the same with a learned sigma^2
    the default's start and neighbours (--rows starts), each one change
    from best: best_random_patches / best_greedy (init="random_patches" /
    "greedy_kmeans++" instead of noise), best_weights (learned mixture
    weights), best_pyramid_patches (2x2 + 3x3 pyramid, random patches),
    white1152_pyramid / white1152_pyramid_patches (128 kernels on the
    pyramid, greedy / random-patch start); best_fit20k / best_fit20k_it5
    (best fitted on 20 000 images, 10 or 5 iterations)
    plus the older levers (--rows levers), each one change to local256
    (local1152 with 64 kernels on 2x2 cells): readout,
    latent, preprocessing, kernel size and count, pooling grid, no EM,
    and the two-layer network rows (--rows networks; docs/benchmarks.rst):
    network         `--preset network`: layer 1 = 64 kernels 7x7 as local256
                    but pooled 3x3, layer 2 = 128 kernels 3x3 on layer 1's
                    triangle maps average-pooled 2x2 and standardized per
                    channel; both layers' readouts (1728 features)
    network_top     the same network, layer 2's readout only (1152)
    network_nonorm  the network without the per-channel standardization
    network_layer1  its layer 1 alone (64 kernels, 3x3 grid: 576)
    network_single128  one layer of 128 kernels (best's 1152 features)
    network_white, network_white_layer1, network_white_single128
                    the same three on best's layer (whitened patches, noise
                    start, learned sigma^2; layer 2 whitened too)
    each fitted on the first 1000 training images, 5 EM iterations per layer
    issue 23's stacks at full scale (--rows stacks; docs/benchmarks.rst,
    "Stacked layers"), each best's layer 1 (fitted on its 10 000 images)
    plus a layer 2 fitted on the same images, both readouts concatenated:
    best512    one layer of 512 kernels (the stacks' 4608 features)
    stack      layer 2: 256 kernels 3x3 on layer 1's triangle maps averaged
               over 3x3 cells (7x7 maps), standardized per channel, patch
               latent, learned sigma^2, not whitened, k-means++ start,
               10 iterations, triangle on 3x3 cells (2304 more features)
    stack_top / _posterior / _sigma1 / _k128 / _pool2_it5 / _grid2  one
               change each: top layer's readout only / posterior maps /
               sigma^2 = 1 in layer 2 / 128 kernels in layer 2 / 2x2
               averaging, 5 iterations / layer 2 read out on 2x2 cells
    stack_k64 / stack_k128_grid2  64 kernels in layer 2 / 128 on 2x2 cells
    stack_whitemaps  the maps PCA-whitened per position (normalize="whiten")
    stack_white64    ... cut to 64 principal channels, layer 2 whitening its
               3x3x64 patches, noise start (as best's layer 1)
    stack_white64_pool2 / _white128 / _white32 / _k512 / _sigma1 /
               _posterior / _kernel2  one change each to stack_white64 (not
               measured yet: stack_white64 lost a point)
    stack_k128_pool2 / _pad1 / _it20 / _kernel2  one change each to
               stack_k128: 2x2 averaging between the layers / layer 2
               padded by 1 (7x7 positions) / 20 layer-2 iterations /
               layer-2 kernels 2x2
    best_fit30k / stack_k128_fit30k  best / stack_k128 fitted on the first
               30 000 training images
    (the top-down refinement, a stack with a joint objective, is
    benchmarks/topdown.py; dilated layer-2 kernels benchmarks/dilation.py)
    (--top also probes each stack's top layer alone, ROW@top)

    python benchmarks/features.py                            # main rows, 60k/10k
    python benchmarks/features.py --rows best,starts --with-init [--seed 1]
    python benchmarks/features.py --rows whiten --with-init --limit 10000
    python benchmarks/features.py --rows levers --limit 10000 --test-limit 2000
    python benchmarks/features.py --rows raw,kmeans256 --limit 5000
    python benchmarks/features.py --rows networks --limit 5000 --test-limit 2000
    python benchmarks/features.py --rows best,stack,stack_white64,best512 --top

Prints one line per row (accuracy, features, seconds split into fit, features
and probe) and the machine; ``--json PATH`` writes the rows too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

import calm_np
from calm_np import datasets, evaluation, preprocessing

sys.path.insert(0, str(Path(__file__).parent))

import _perf  # noqa: E402

PATCH = 7  # k-means patch side


# ---------------------------------------------------------------------------
# settings
# ---------------------------------------------------------------------------

BEST = evaluation.preset("best", "fashion-mnist")
BEST256 = evaluation.preset("best256", "fashion-mnist")
# the levers' base, best1152 (greedy k-means++ seeding, as they were measured)
BEST1152 = evaluation.preset("best1152", "fashion-mnist")
# before whitening: local contrast normalization, sigma^2 = 1, 128 kernels
# 3x3 / 64 kernels 2x2 (the levers below are changes to LOCAL256)
LOCAL1152 = dict(BEST1152, whiten=False, learn_variance=False)
LOCAL1152["preprocess"] = "local"
LOCAL256 = dict(LOCAL1152, n_kernels=64, pooling=2)
# whitened, learned sigma^2, at the k-means rows' shapes
WHITE1152 = dict(BEST1152)
WHITE256 = dict(BEST1152, n_kernels=64, pooling=2)
PAPER = evaluation.preset("paper", "fashion-mnist")
# the best setting with the paper's model and readout family: image latent,
# log-joint pooled over a grid, pixels standardized, the default tol
JOINT = dict(
    BEST, latent="image", max_iter=15, features="log_joint", preprocess="standardize"
)
JOINT["init"] = "greedy_kmeans++"  # as measured, before best started from noise
del JOINT["tol"]


def calm(base=None, **changes):
    """A CALM row: estimator parameters plus ``preprocess`` and ``fit_limit``."""
    return {**(base or LOCAL256), **changes}


# the k-means rows: (centroids, pooling grid), as the CALM rows they face
KMEANS = {"kmeans256": (64, 2), "kmeans252": (28, 3), "kmeans1152": (128, 3)}

MAIN_ROWS = ("raw", *KMEANS, "paper", "paper0", "joint", "best256", "best")
# issue 12's levers, one change at a time from white1152 (and the shapes of
# the k-means rows); run with --with-init for each row's initialisation
WHITE_ROWS = {
    "local1152": calm(LOCAL1152),
    "local1152_sigma": calm(LOCAL1152, learn_variance=True),
    "white1152": calm(WHITE1152),
    "white1152_sigma1": calm(WHITE1152, learn_variance=False),
    "white1152_weights": calm(WHITE1152, learn_weights=True),
    "white1152_posterior": calm(WHITE1152, features="posterior"),
    "white256": calm(WHITE256),
}
# the default's start and neighbours, each one change from best (which
# starts from Gaussian noise, init="random"); run with --with-init
START_ROWS = {
    "best_random_patches": calm(BEST, init="random_patches"),
    "best_greedy": calm(BEST, init="greedy_kmeans++"),
    "best_weights": calm(BEST, learn_weights=True),
    "best_pyramid_patches": calm(BEST, pooling="2+3", init="random_patches"),
    "white1152_pyramid": calm(WHITE1152, pooling="2+3"),
    "white1152_pyramid_patches": calm(WHITE1152, pooling="2+3", init="random_patches"),
}

ROWS = {
    "paper": calm(PAPER),
    "paper0": calm(PAPER, max_iter=0),
    "joint": calm(JOINT),
    "joint64": calm(JOINT, n_kernels=64),
    "best": calm(BEST),
    # the default fitted on twice the images (10 iterations, or 5: its time)
    "best_fit20k": calm(BEST, fit_limit=20000),
    "best_fit20k_it5": calm(BEST, fit_limit=20000, max_iter=5),
    "best256": calm(BEST256),
    # levers: each one change to best256
    "log_joint": calm(features="log_joint"),
    "log_posterior": calm(features="log_posterior"),
    "posterior": calm(features="posterior"),
    "image_latent": calm(latent="image"),
    "standardize": calm(preprocess="standardize"),
    "per_image": calm(preprocess="per-image"),
    "zca": calm(preprocess="zca"),
    "kernel5": calm(kernel_size=5),
    "kernel9": calm(kernel_size=9),
    "pool1": calm(pooling=1),
    "pool3": calm(pooling=3),
    "pool4": calm(pooling=4),
    "pyramid": calm(pooling="1+2+3"),
    "k32": calm(n_kernels=32),
    "k28_pool3": calm(n_kernels=28, pooling=3),
    "k16_pool4": calm(n_kernels=16, pooling=4),
    "untrained": calm(max_iter=0),
}
LEVERS = tuple(k for k in ROWS if k not in MAIN_ROWS)
ROWS["local256"] = calm(LOCAL256)

# two stacked layers: layer 1's settings, and the network's in "network";
# fitted on 1000 images, 5 EM iterations per layer (a stack's cost on 2 cores)
QUICK = dict(evaluation.preset("network", "fashion-mnist"), fit_limit=1000, max_iter=5)
NETWORK = dict(QUICK, network=dict(evaluation.NETWORK_PRESETS["network"]))
NETWORK_ROWS = {
    "network": NETWORK,
    "network_top": dict(NETWORK, network=dict(NETWORK["network"], readout="top")),
    "network_nonorm": dict(NETWORK, network=dict(NETWORK["network"], normalize=None)),
    "network_layer1": QUICK,
    "network_single128": dict(QUICK, n_kernels=128),
}
# the same stack on best's layer (whitened, noise start, learned sigma^2);
# layer 2 copies layer 1's settings (whitened 3x3x64 patches of the maps)
QUICK_WHITE = dict(
    evaluation.preset("best", "fashion-mnist"), n_kernels=64, fit_limit=1000, max_iter=5
)
NETWORK_ROWS.update(
    network_white=dict(QUICK_WHITE, network=NETWORK["network"]),
    network_white_layer1=QUICK_WHITE,
    network_white_single128=dict(QUICK_WHITE, n_kernels=128),
)
ROWS.update(NETWORK_ROWS)

# issue 23: two layers at full scale on best's layer 1 (256 whitened kernels
# 7x7 fitted on best's 10 000 images, 10 iterations, triangle on 3x3 cells).
# Layer 2: 256 kernels 3x3 on layer 1's triangle maps averaged over 3x3 cells
# (7x7 maps, 5x5 positions) and standardised per channel, latent="patch",
# learned sigma^2, NOT whitened (its patches have 3*3*256 = 2304 values: a
# 2304^2 whitening per patch would cost 4.5x its EM), plain k-means++ seeding,
# 10 iterations (tol 1e-4 is not reached), triangle on 3x3 cells; both
# layers' readouts (4608 features); layer 1's maps cached once (cache="auto")
# (the "stack" preset, calm-np evaluate --preset stack, with 256 kernels)
STACK = dict(evaluation.NETWORK_PRESETS["stack"], layer2_kernels=256)


def stacked(**changes):
    """best with a second layer: STACK with ``changes`` (``layer2`` merged)."""
    net = dict(STACK, **changes)
    net["layer2"] = dict(STACK["layer2"], **changes.get("layer2", {}))
    return calm(BEST, network=net)


STACK_ROWS = {
    # one layer with the stack's feature count (a comparable budget)
    "best512": calm(BEST, n_kernels=512),
    "stack": stacked(),
    # what the probe reads: layer 2's readout only
    "stack_top": stacked(readout="top"),
    # what layer 2 reads: posteriors instead of triangle maps
    "stack_posterior": stacked(activation="posterior"),
    # sigma^2 per layer: layer 2's fixed at 1
    "stack_sigma1": stacked(layer2=dict(learn_variance=False)),
    # width: 128 kernels in layer 2
    "stack_k128": stacked(layer2_kernels=128),
    # receptive field: 2x2 averaging between the layers (11x11 maps, 9x9
    # positions: 3.2x the EM cost, so 5 iterations)
    "stack_pool2_it5": stacked(pool_size=2, layer2=dict(max_iter=5)),
    # width: 64 kernels; 128 read out on 2x2 cells (576 / 512 more features)
    "stack_k64": stacked(layer2_kernels=64),
    "stack_k128_grid2": stacked(layer2_kernels=128, layer2=dict(pooling=2)),
    # the readout: layer 2's triangle summed over 2x2 cells of its 5x5
    # positions (1024 features instead of 2304)
    "stack_grid2": stacked(layer2=dict(pooling=2)),
    # what layer 2 reads: whitened maps, 1x1 PCA whitening of layer 1's 256
    # channels (normalize="whiten") kept whole, layer 2 as above
    "stack_whitemaps": stacked(normalize="whiten"),
    # ... or cut to 64 principal channels, and layer 2 whitening its
    # 3x3x64 = 576-value patches as layer 1 does, started from noise (best's)
    "stack_white64": stacked(
        normalize="whiten", n_components=64, layer2=dict(whiten=True, init="random")
    ),
}
# the same levers on stack_white64 (whitened maps, 64 channels, layer 2
# whitening its patches)
WHITE64 = dict(normalize="whiten", n_components=64)
WHITE64_L2 = dict(whiten=True, init="random")
STACK_ROWS.update(
    stack_white64_pool2=stacked(**WHITE64, pool_size=2, layer2=WHITE64_L2),
    stack_white128=stacked(normalize="whiten", n_components=128, layer2=WHITE64_L2),
    stack_white32=stacked(normalize="whiten", n_components=32, layer2=WHITE64_L2),
    stack_white64_k512=stacked(**WHITE64, layer2_kernels=512, layer2=WHITE64_L2),
    stack_white64_sigma1=stacked(
        **WHITE64, layer2=dict(WHITE64_L2, learn_variance=False)
    ),
    stack_white64_posterior=stacked(
        **WHITE64, activation="posterior", layer2=WHITE64_L2
    ),
    stack_white64_kernel2=stacked(**WHITE64, layer2_kernel_size=2, layer2=WHITE64_L2),
)
# issue 23, second round: one change each to stack_k128
K128 = dict(layer2_kernels=128)
STACK_ROWS.update(
    stack_k128_pool2=stacked(**K128, pool_size=2),
    stack_k128_pad1=stacked(**K128, layer2=dict(padding=1)),
    stack_k128_it20=stacked(**K128, layer2=dict(max_iter=20)),
    stack_k128_kernel2=stacked(**K128, layer2_kernel_size=2),
)
# data: both layers fitted on the first 30 000 training images (layer 2's
# 128 x 2304 means see 250 000 patches from 10 000 images), and best alike
STACK_ROWS.update(
    best_fit30k=calm(BEST, fit_limit=30000),
    stack_k128_fit30k=dict(stacked(**K128), fit_limit=30000),
)
ROWS.update(STACK_ROWS)
ROWS.update(WHITE_ROWS)
ROWS.update(START_ROWS)


# ---------------------------------------------------------------------------
# the probe and the baselines
# ---------------------------------------------------------------------------


PROBE_C = {"C": 0.1, "tol": 1e-4}  # set from --C and --probe-tol by main()


def probe(F_train, y_train, F_test, y_test):
    """Standardize, multinomial logistic regression; test accuracy."""
    return evaluation.linear_probe(
        F_train, y_train, F_test, y_test, C=PROBE_C["C"], tol=PROBE_C["tol"]
    )


def raw_features(X_train, X_test):
    flat = lambda X: X.reshape(len(X), -1).astype(np.float64) / 255  # noqa: E731
    return flat(X_train), flat(X_test), 0.0


class CoatesKMeans:
    """Coates, Lee & Ng (2011): the single-layer k-means network.

    Patches of ``patch x patch`` pixels (0..255) are normalized one by one
    (mean removed, divided by ``sqrt(var + 10)``), ZCA-whitened (eps 0.1),
    and clustered by k-means (k-means++ start) on ``n_patches`` random
    patches. An image's features are the "triangle" activations
    ``max(0, mean_k d_k - d_k)`` (``d_k`` the distance of a whitened patch to
    centroid ``k``) at every position, summed over a ``grid x grid`` grid of
    cells: ``grid**2 * n_centroids`` features.
    """

    def __init__(self, n_centroids=64, grid=2, patch=7, n_patches=100_000, seed=0):
        self.n_centroids, self.grid, self.patch = n_centroids, grid, patch
        self.n_patches, self.seed = n_patches, seed

    def fit(self, images):
        from sklearn.cluster import KMeans

        rng = np.random.default_rng(self.seed)
        n, H, W = images.shape
        s = self.patch
        at = [rng.integers(m, size=self.n_patches) for m in (n, H - s + 1, W - s + 1)]
        offsets = np.arange(s)
        rows = (at[1][:, None] + offsets)[:, :, None]
        cols = (at[2][:, None] + offsets)[:, None, :]
        P = images[at[0][:, None, None], rows, cols].reshape(self.n_patches, s * s)
        P = _normalize(P.astype(np.float32))
        self.zca_ = preprocessing.ZCAWhitening(eps=0.1).fit(P)
        km = KMeans(self.n_centroids, n_init=1, max_iter=100, random_state=self.seed)
        self.centroids_ = km.fit(self.zca_.transform(P)).cluster_centers_
        self.centroids_ = self.centroids_.astype(np.float32)
        return self

    def transform(self, images, batch=500):
        C = self.centroids_
        c_sq = (C * C).sum(axis=1)
        out = []
        for i in range(0, len(images), batch):
            chunk = images[i : i + batch].astype(np.float32)
            P = _normalize(_patches(chunk, self.patch))
            b, ho, wo, d = P.shape
            Z = self.zca_.transform(P.reshape(-1, d))
            dist = (Z * Z).sum(axis=1, keepdims=True) - 2 * (Z @ C.T) + c_sq
            dist = np.sqrt(np.maximum(dist, 0.0, out=dist), out=dist)
            act = np.maximum(dist.mean(axis=1, keepdims=True) - dist, 0.0, out=dist)
            out.append(_grid_sums(act.reshape(b, ho, wo, -1), self.grid))
        return np.concatenate(out).astype(np.float64)


def _patches(images, size):
    """All ``size x size`` patches at stride 1: (n, Ho, Wo, size*size)."""
    from numpy.lib.stride_tricks import sliding_window_view

    view = sliding_window_view(images, (size, size), axis=(1, 2))
    n, ho, wo = view.shape[:3]
    return view.reshape(n, ho, wo, size * size)


def _normalize(P):
    # Coates et al.: per-patch brightness and contrast normalization, with
    # 10 added to the variance of 0..255 pixels
    P = P - P.mean(axis=-1, keepdims=True)
    return P / np.sqrt(P.var(axis=-1, keepdims=True) + 10.0)


def _grid_sums(act, grid):
    """(n, Ho, Wo, K) -> (n, grid*grid*K): sums over a grid of near-equal cells."""
    _, ho, wo, _ = act.shape
    ys = [i * ho // grid for i in range(grid + 1)]
    xs = [i * wo // grid for i in range(grid + 1)]
    cells = [
        act[:, ys[i] : ys[i + 1], xs[j] : xs[j + 1]].sum(axis=(1, 2))
        for i in range(grid)
        for j in range(grid)
    ]
    return np.concatenate(cells, axis=1)


def kmeans_features(name, X_train, X_test, seed=0):
    n_centroids, grid = KMEANS[name]
    start = time.perf_counter()
    coates = CoatesKMeans(n_centroids, grid, patch=PATCH, seed=seed).fit(X_train)
    fit_seconds = time.perf_counter() - start
    return coates.transform(X_train), coates.transform(X_test), fit_seconds


def calm_features(setting, X_train, X_test, seed=0):
    """Fit a ConvolutionalMixture as ``setting`` says; pooled features."""
    setting = dict(setting)
    preprocess = setting.pop("preprocess")
    fit_limit = setting.pop("fit_limit", None)
    setting.pop("C", None)  # a preset's probe C: every row here uses --C
    names = set(calm_np.ConvolutionalMixture().get_params())
    if "latent" in setting and "latent" not in names:
        raise SystemExit("this calm_np has no latent= option")
    A, B = evaluation.preprocess(preprocess, X_train, X_test, window=7)
    A, B = A.astype(np.float32), B.astype(np.float32)
    # "1+2+3": a pyramid, the features of each grid side by side
    grids = [int(g) for g in str(setting.pop("pooling", 1)).split("+")]
    network = setting.pop("network", None)
    model = calm_np.ConvolutionalMixture(**setting, random_state=seed)
    if network is not None:  # what calm-np evaluate builds (layers 2.. as layer 1)
        params = dict(setting, pooling=grids[0], random_state=seed)
        model = evaluation.build_model(params, network)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", calm_np.ConvergenceWarning)
        model.fit(A if fit_limit is None else A[:fit_limit])
    fit_seconds = time.perf_counter() - start
    batch = model.batch_size or 1000
    F_train, F_test = [], []
    for grid in grids:
        if network is None:  # a network's layers keep their grids
            model.set_params(pooling=grid)
        F_train.append(evaluation.extract_features(model, A, batch))
        F_test.append(evaluation.extract_features(model, B, batch))
    return np.hstack(F_train), np.hstack(F_test), fit_seconds, model


class CustomStack:
    """What benchmarks/dilation.py and benchmarks/groups.py share: the
    stacks' layer 1 and the maps between the layers, for a layer 2 built by
    hand, and the probe of both layers and of each alone.

    ``CustomStack(pool_size, seed)`` loads Fashion-MNIST (``limit`` /
    ``test_limit``), fits ``best``'s layer 1 on its 10 000 images as the
    ``stack`` rows do, with the network's per-channel standardisation of
    its triangle maps averaged over ``pool_size`` cells; ``maps`` are those
    of the fitted images, ``encode(batch)`` any batch's, ``layer2_params``
    the ``stack`` rows' layer 2 (10 iterations).
    """

    def __init__(self, pool_size, seed=0, limit=None, test_limit=None):
        self.start = time.perf_counter()
        X_train, self.y_train = datasets.load_fashion_mnist(limit=limit)
        X_test, self.y_test = datasets.load_fashion_mnist(kind="test", limit=test_limit)
        # layer 2 is only initialised: the network fits layer 1 and the norms
        row = stacked(layer2_kernels=8, pool_size=pool_size, layer2=dict(max_iter=0))
        A, B = evaluation.preprocess(row["preprocess"], X_train, X_test, window=7)
        self.A, self.B = A.astype(np.float32), B.astype(np.float32)
        settings = {k: v for k, v in row.items() if k not in ("preprocess", "C")}
        fit_limit = min(settings.pop("fit_limit"), len(A))
        network = settings.pop("network")
        net = evaluation.build_model(dict(settings, random_state=seed), network)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", calm_np.ConvergenceWarning)
            net.fit(self.A[:fit_limit])
        self.layer1 = net.layers_[0]
        # the stacks' layer 2 (kernels 3x3, patch latent, learned sigma^2, not
        # whitened, k-means++ start), for a script to change and fit
        self.layer2_params = dict(net.layers_[1].get_params(), max_iter=10)
        self.encode = net._encoder(net.layers_, net.norms_, 1)
        self.maps = np.concatenate(
            [self.encode(self.A[i : i + 1000]) for i in range(0, fit_limit, 1000)]
        )

    def features(self, top):
        """Layer 1's readout beside ``top(maps of a batch)``, train and test."""

        def of(X):
            out = []
            for i in range(0, len(X), 1000):
                batch = X[i : i + 1000]
                upper = top(self.encode(batch))
                out.append(np.hstack([self.layer1.transform(batch), upper]))
            return np.concatenate(out)

        return of(self.A), of(self.B)

    def probe(self, F_train, F_test, name, C):
        """Print the probe of layer 1 alone, both layers (``name``), layer 2
        alone, and the seconds since the start."""
        n1 = self.layer1.transform(self.A[:1]).shape[1]
        for label, cols in (
            ("best (layer 1 alone)", slice(0, n1)),
            (f"{name} (both layers)", slice(None)),
            ("its layer 2 alone", slice(n1, None)),
        ):
            A, B = F_train[:, cols], F_test[:, cols]
            acc = evaluation.linear_probe(A, self.y_train, B, self.y_test, C=C)
            print(f"{label:40s} {acc:.4f}  {A.shape[1]} features", flush=True)
        print(f"total {time.perf_counter() - self.start:.1f} s", flush=True)


# ---------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------


def machine():
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return dict(
        cpu=_perf.cpu_model(),
        cores=os.cpu_count(),
        platform=platform.platform(),
        numpy=np.__version__,
        calm_np=calm_np.__version__,
        load_1min=round(load, 2),
    )


def describe(name, setting):
    if name == "raw":
        return "784 pixels / 255"
    if name in KMEANS:
        k, g = KMEANS[name]
        return f"k-means {k}x{PATCH}x{PATCH}, whitened, triangle, sum {g}x{g}"
    s = setting
    ks = s.get("kernel_size")
    parts = [
        f"K={s['n_kernels']} {ks}x{ks}",
        f"pad {s.get('padding', 0)}",
        f"pool {s.get('pooling', 1)}",
        s.get("features", "log_joint"),
        f"latent {s.get('latent', 'image')}",
        f"prep {s['preprocess']}",
        f"{s.get('max_iter')} it",
    ]
    parts += [p for p in ("whiten", "learn_variance", "learn_weights") if s.get(p)]
    if s.get("fit_limit"):
        parts.append(f"fit on {s['fit_limit']}")
    if s.get("network"):
        net = s["network"]
        upper = "".join(f", {k}={v}" for k, v in (net.get("layer2") or {}).items())
        parts.append(
            f"+ {net['layers'] - 1} layer(s) K={net['layer2_kernels']} "
            f"{net['layer2_kernel_size']}x{net['layer2_kernel_size']}{upper} on "
            f"{net['pool_size']}x{net['pool_size']}-averaged "
            f"{net.get('activation', 'triangle')} maps, readout "
            f"{net.get('readout', 'concat')}, normalize "
            f"{net.get('normalize', 'standardize')}"
            + (f" to {net['n_components']}" if net.get("n_components") else "")
            + f", cache {net.get('cache')}"
        )
    return ", ".join(parts)


def run_row(name, X_train, y_train, X_test, y_test, seed, also_top=False):
    start = time.perf_counter()
    info, extra = {}, []
    if name == "raw":
        F_train, F_test, fit_s = raw_features(X_train, X_test)
    elif name in KMEANS:
        F_train, F_test, fit_s = kmeans_features(name, X_train, X_test, seed)
    else:
        F_train, F_test, fit_s, model = calm_features(ROWS[name], X_train, X_test, seed)
        if hasattr(model, "layers_"):  # a network: per layer, bottom first
            info = dict(
                n_iter=[int(m.n_iter_) for m in model.layers_],
                objective=[m.lower_bound_ for m in model.layers_],
            )
            if also_top and model.readout == "concat":
                # the top layer's readout alone: the last columns of the same
                # features (the same fitted network as readout="top")
                n_top = calm_np._network._n_features(model.layers_[-1])
                t0 = time.perf_counter()
                acc = probe(F_train[:, -n_top:], y_train, F_test[:, -n_top:], y_test)
                extra.append(
                    dict(
                        row=f"{name}@top",
                        setting="the top layer's columns of " + name,
                        accuracy=round(acc, 4),
                        n_features=n_top,
                        probe_seconds=round(time.perf_counter() - t0, 1),
                    )
                )
        else:
            info = dict(n_iter=int(model.n_iter_), objective=model.lower_bound_)
    features_done = time.perf_counter()
    accuracy = probe(F_train, y_train, F_test, y_test)
    end = time.perf_counter()
    extra_s = sum(e["probe_seconds"] for e in extra)  # not this row's cost
    row = dict(
        row=name,
        setting=describe(name, ROWS.get(name)),
        accuracy=round(accuracy, 4),
        n_features=int(F_train.shape[1]),
        fit_seconds=round(fit_s, 1),
        feature_seconds=round(features_done - start - fit_s - extra_s, 1),
        probe_seconds=round(end - features_done, 1),
        total_seconds=round(end - start - extra_s, 1),
        **info,
    )
    return [row, *extra]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--rows",
        default=",".join(MAIN_ROWS),
        help="comma-separated rows, or 'levers' or 'networks' (default: "
        f"{','.join(MAIN_ROWS)})",
    )
    ap.add_argument("--data-dir", help="Fashion-MNIST folder (default: Debian's)")
    ap.add_argument("--limit", type=int, help="first N training images")
    ap.add_argument("--test-limit", type=int, help="first N test images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--C", type=float, default=0.1, help="the probe's C (all rows)")
    ap.add_argument(
        "--probe-tol",
        type=float,
        default=1e-4,
        help="the probe's stopping gradient (1e-4, as calm-np evaluate; smaller "
        "is nearer the optimum and slower)",
    )
    ap.add_argument(
        "--with-init", action="store_true", help="also every CALM row at max_iter=0"
    )
    ap.add_argument(
        "--top",
        action="store_true",
        help="also probe each concatenating network's top layer alone (its last "
        "columns, ROW@top; the probe's seconds are not in ROW's)",
    )
    args = ap.parse_args(argv)
    PROBE_C.update(C=args.C, tol=args.probe_tol)
    rows = []
    for name in args.rows.split(","):
        groups = {
            "levers": LEVERS,
            "networks": tuple(NETWORK_ROWS),
            "whiten": tuple(WHITE_ROWS),
            "starts": tuple(START_ROWS),
            "stacks": ("best", *STACK_ROWS),
        }
        rows.extend(groups.get(name, [name]))
    baselines = ("raw", *KMEANS)
    unknown = [r for r in rows if r not in ROWS and r not in baselines]
    if unknown:
        ap.error(f"unknown rows {unknown}; known: {', '.join(baselines + tuple(ROWS))}")
    if args.with_init:
        inits = [f"{r}@init" for r in rows if r in ROWS and "network" not in ROWS[r]]
        ROWS.update({r: dict(ROWS[r[: -len("@init")]], max_iter=0) for r in inits})
        rows = [x for r in rows for x in (r, f"{r}@init") if x in ROWS or x == r]

    X_train, y_train = datasets.load_fashion_mnist(args.data_dir, limit=args.limit)
    X_test, y_test = datasets.load_fashion_mnist(
        args.data_dir, "test", limit=args.test_limit
    )
    info = machine()
    print(
        f"Fashion-MNIST {len(X_train)} train / {len(X_test)} test; {info['cpu']}, "
        f"{info['cores']} cores, load {info['load_1min']}; numpy {info['numpy']}; "
        f"probe C={args.C}, tol={args.probe_tol}",
        flush=True,
    )
    results = []

    def write():  # after every row: a run cut short keeps what it measured
        if args.json:
            args.json.write_text(
                json.dumps(
                    dict(
                        machine=info,
                        n_train=len(X_train),
                        n_test=len(X_test),
                        command=sys.argv,
                        probe_C=args.C,
                        probe_tol=args.probe_tol,
                        rows=results,
                    ),
                    indent=2,
                )
                + "\n"
            )

    for name in rows:
        for r in run_row(name, X_train, y_train, X_test, y_test, args.seed, args.top):
            results.append(r)
            if "total_seconds" not in r:  # a second probe of a row's features
                print(
                    f"{r['row']:14s} {r['accuracy']:.4f}  {r['n_features']:5d} "
                    f"features  probe {r['probe_seconds']} s  {r['setting']}",
                    flush=True,
                )
                continue
            print(
                f"{r['row']:14s} {r['accuracy']:.4f}  {r['n_features']:5d} features  "
                f"{r['total_seconds']:7.1f} s (fit {r['fit_seconds']}, features "
                f"{r['feature_seconds']}, probe {r['probe_seconds']})  "
                f"{r['setting']}",
                flush=True,
            )
        write()
    info["load_1min_end"] = round(os.getloadavg()[0], 2)
    write()
    return results


if __name__ == "__main__":
    main()
