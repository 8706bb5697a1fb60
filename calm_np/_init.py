"""Initial kernels and the re-seeding of starved or duplicate kernels.

Randomness always comes from a host NumPy generator (``check_random_state``),
so a seed gives the same kernels on every backend; the arrays it indexes stay
on the caller's namespace and device.
"""

from __future__ import annotations

import math

import numpy as np

from . import _checks, _whiten
from ._checks import INITS  # noqa: F401  (the CLI reads _init.INITS)
from ._engines import Im2col
from ._xp import device_of, get_namespace, pad_zeros, single_threaded_blas, to_numpy


def check_random_state(seed):
    """A ``numpy.random.RandomState`` from ``None``, an int or a generator."""
    seed = _checks.PARAMS["random_state"]("random_state", seed)
    if seed is None:
        return np.random.RandomState()
    if isinstance(seed, int):
        return np.random.RandomState(seed)
    if isinstance(seed, np.random.RandomState):
        return seed
    return np.random.RandomState(seed.integers(2**32))


def sample_images(source, n_images, rng):
    """Up to ``n_images`` images at random global positions (batching-free)."""
    n = source.n_samples
    m = min(n, n_images)
    idx = np.sort(rng.choice(n, size=m, replace=False))
    return source.take(idx)


def sample_patches(images, padding, kernel_shape, n_patches, rng, xp, dtype):
    """``n_patches`` random patches ``(p, c, kh, kw)`` of the padded images."""
    images = xp.astype(images, dtype)
    Xp = pad_zeros(images, padding, xp)
    m, c, Hp, Wp = Xp.shape
    kh, kw = kernel_shape
    which = rng.randint(m, size=n_patches)
    ys = rng.randint(Hp - kh + 1, size=n_patches)
    xs = rng.randint(Wp - kw + 1, size=n_patches)
    patches = [
        Xp[int(i), :, int(y) : int(y) + kh, int(x) : int(x) + kw]
        for i, y, x in zip(which, ys, xs, strict=True)
    ]
    return xp.stack(patches, axis=0)


def d2_sample(patches, n_new, rng, xp, centers=None, trials=1):
    """k-means++ seeding: pick ``n_new`` patches by D² sampling.

    Distances are to ``centers`` (existing kernels, may be None) and to the
    patches already picked.  With ``trials > 1`` each pick is the best of
    ``trials`` D² draws, the one that lowers the summed distance most
    (greedy k-means++, as scikit-learn's ``kmeans_plusplus``).  The
    cumulative sum and the search run on the device; a few scalars per pick
    cross to the host.
    """
    p = patches.shape[0]
    flat = xp.reshape(patches, (p, -1))
    sq = xp.sum(flat * flat, axis=1)

    def dist2(center):
        d = sq - 2.0 * (flat @ center) + xp.sum(center * center)
        return xp.maximum(d, xp.zeros_like(d))

    if centers is not None and centers.shape[0] > 0:
        cflat = xp.reshape(centers, (centers.shape[0], -1))
        d2 = xp.min(
            sq[:, None]
            - 2.0 * (flat @ xp.matrix_transpose(cflat))
            + xp.sum(cflat * cflat, axis=1)[None, :],
            axis=1,
        )
        d2 = xp.maximum(d2, xp.zeros_like(d2))
        first = None
    else:
        first = int(rng.randint(p))
        d2 = dist2(flat[first, ...])
    chosen = [] if first is None else [first]
    while len(chosen) < n_new:
        cum = xp.cumulative_sum(d2)
        total = float(cum[-1])
        if not total > 0.0:  # every patch already a center: pick uniformly
            draws = [int(rng.randint(p))]
        else:
            us = [rng.uniform() * total for _ in range(trials)]
            draws = [min(int(xp.sum(xp.astype(cum < u, xp.int64))), p - 1) for u in us]
        options = [xp.minimum(d2, dist2(flat[i, ...])) for i in draws]
        best = 0
        if len(draws) > 1:
            best = min(range(len(draws)), key=lambda j: float(xp.sum(options[j])))
        chosen.append(draws[best])
        d2 = options[best]
    return xp.stack([patches[i, ...] for i in chosen], axis=0)


def initial_kernels(
    init, images, n_kernels, padding, kernel_shape, rng, xp, dtype, whitening=None
):
    """Kernels ``(k, c, kh, kw)`` by ``init`` from a sample of images.

    With ``whitening`` (a pair ``(whitening, whitened patches)`` from
    :func:`whitened_sample`) the kernels are drawn in whitened patch space,
    from those patches.
    """
    # at least n_kernels candidates, so random_patches can draw distinct ones
    n_cand = max(min(max(20 * n_kernels, 1000), 10000), n_kernels)
    if init == "random":
        sample = xp.astype(images, dtype) if whitening is None else whitening[1]
        scale = float(xp.std(sample))
        scale = scale if scale > 0 else 1.0
        c = images.shape[1]
        host = rng.standard_normal((n_kernels, c, *kernel_shape)) * scale
        return xp.asarray(host, dtype=dtype, device=device_of(images))
    if whitening is None:
        patches = sample_patches(images, padding, kernel_shape, n_cand, rng, xp, dtype)
    else:
        patches = whitening[1]
    if init == "random_patches":
        idx = rng.choice(patches.shape[0], size=n_kernels, replace=False)
        return xp.stack([patches[int(i), ...] for i in idx], axis=0)
    # greedy: the best of scikit-learn's number of draws per pick
    trials = 2 + int(math.log(n_kernels)) if init == "greedy_kmeans++" else 1
    return d2_sample(patches, n_kernels, rng, xp, trials=trials)


def whitened_sample(images, padding, kernel_shape, rng, xp, dtype):
    """``(whitening, patches)``: a whitening fitted on random patches of
    ``images`` (``_whiten.sample_size`` of them) and those patches whitened."""
    D = images.shape[1] * kernel_shape[0] * kernel_shape[1]
    n = _whiten.sample_size(D)
    raw = sample_patches(images, padding, kernel_shape, n, rng, xp, dtype)
    whitening = _whiten.fit_whitening(raw, xp, dtype, device_of(images))
    return whitening, _whiten.whiten_patches(raw, whitening, xp)


def similarity(kernels, max_shift, xp):
    """Largest normalised correlation of each pair over small shifts.

    ``sim[i, j] = max_{|s| <= max_shift} <μ_i, shift_s μ_j> / (‖μ_i‖ ‖μ_j‖)``
    with the diagonal set to 0.  Two kernels on one pattern, or on shifted
    copies of it, score near 1.
    """
    k = kernels.shape[0]
    kh, kw = kernels.shape[2:]
    sh, sw = min(max_shift, kh - 1), min(max_shift, kw - 1)
    engine = Im2col(pad_zeros(kernels, (sh, sw), xp), (kh, kw), xp)
    corr = xp.max(xp.reshape(engine.correlate(kernels), (k, k, -1)), axis=2)
    norms = xp.sqrt(xp.sum(kernels * kernels, axis=(1, 2, 3)))
    denom = norms[:, None] * norms[None, :]
    tiny = xp.finfo(kernels.dtype).smallest_normal
    sim = corr / xp.where(denom > tiny, denom, xp.ones_like(denom))
    eye = xp.eye(k, dtype=xp.bool, device=device_of(kernels))
    return xp.where(eye, xp.zeros_like(sim), sim)


def check_init_array(init, n_kernels, n_channels, kernel_size, xp, dtype, device):
    """An ``init`` array as ``(n_kernels, n_channels, kh, kw)`` in ``dtype``."""
    init = _checks.detached(_checks.as_array(init, "init"))
    own, own_device = get_namespace(init)
    _checks.float_dtype(own, [(init, "init")], own_device)  # refuses complex, bool
    if init.ndim == 3:
        init = init[:, None, ...]
    expected = (n_kernels, n_channels, *kernel_size)
    if tuple(init.shape) != expected:
        raise ValueError(
            f"init has shape {tuple(init.shape)} but must be (n_kernels, "
            f"n_channels, kh, kw) = {expected}"
        )
    # a copy: the fitted kernels never share memory with the caller's init
    init = xp.asarray(to_numpy(init), dtype=dtype, device=device, copy=True)
    _checks.check_finite(init, "init", xp)
    if n_kernels > 1 and bool(xp.all(init == init[:1, ...])):
        raise ValueError(
            "init kernels are all identical, so EM would keep them identical; "
            "pass distinct kernels or a string init"
        )
    return init


def kernels_for(
    source, init, n_kernels, kernel_size, padding, rng, dtype, whiten=False
):
    """The estimator's initial ``(kernels, whitening)``: ``init`` checked, or
    sampled from ``source``; ``whitening`` is fitted on patches of ``source``
    when ``whiten`` (and the kernels drawn among the whitened patches), else
    None."""
    xp = source.xp
    given = not isinstance(init, str)
    if given:
        kernels = check_init_array(
            init, n_kernels, source.n_channels, kernel_size, xp, dtype, source.device
        )
        if not whiten:
            return kernels, None
    images = sample_images(source, max(1000, 4 * n_kernels), rng)
    if not given:  # the data's patches, where ImageSource could not count them
        Hp, Wp = (s + 2 * p for s, p in zip(images.shape[2:], padding, strict=True))
        positions = (Hp - kernel_size[0] + 1) * (Wp - kernel_size[1] + 1)
        _checks.check_patch_count(init, n_kernels, images.shape[0] * positions)
    # the sample is checked like every batch: same message, no warnings
    _checks.check_finite(xp.astype(images, dtype), "X", xp)
    args = (images, n_kernels, padding, kernel_size, rng, xp, dtype)
    if not whiten:
        return initial_kernels(init, *args), None
    # D² sampling over the (large) whitened sample is a series of skinny
    # matrix-vector products: far faster on one BLAS thread
    with single_threaded_blas():
        sample = whitened_sample(images, padding, kernel_size, rng, xp, dtype)
        if not given:
            kernels = initial_kernels(init, *args, sample)
    return kernels, sample[0]
