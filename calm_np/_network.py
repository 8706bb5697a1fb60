"""``ConvolutionalMixtureNetwork``: ConvolutionalMixture layers stacked greedily.

Layer 1 is fitted on the images; layer ``l+1`` on the *activation maps* of
layer ``l`` — one channel per kernel of layer ``l`` — average-pooled over
``pool_size × pool_size`` cells and standardised per channel.  Each layer is
an ordinary ``ConvolutionalMixture`` fitted by its own EM, so each layer's
``lower_bounds_`` never decreases; there is no joint likelihood of the stack
(docs/user_guide/model.rst §2, Stacking).

How the data flows without a cache (``cache=None``: memory bounded by one
batch of images, layer 1's maps recomputed on every pass of layer 2's EM):

    X ──ImageSource──▶ layer 1 .fit(X)
    X ──_Maps(depth=1): batch → layer 1 maps → pool → standardise──▶ layer 2 .fit
    ...

``_Maps`` is the lazy input of layer ``l+1``: an array-like read by slices
(or, for an iterable ``X``, a re-iterable of batches) whose rows are computed
from the rows of ``X`` when the layer's ``ImageSource`` reads them.

With a cache (``cache="memory"``, ``"disk"`` or ``"auto"``) the input of
layer ``l+1`` is computed once, in one pass over layer ``l``'s input (one
E-step of layer ``l`` per image), into an array of the input's namespace
or a NumPy memmap in a temporary folder (:class:`_Cache`); the
standardisation's statistics are gathered in that same pass and applied
in place, and layer ``l+1`` fits on the cached array.  The cache of
layer ``l`` is dropped once layer ``l+1``'s is built, and every cache when
``fit`` returns.
:func:`_activation_maps` is the one place that reads ``_readouts``.

Choices, as measured (Fashion-MNIST linear probe; the research report of
issue 12 and docs/benchmarks.rst, "Stacked layers"): triangle activations
(posteriors 4 points worse as features), 2×2 *average* pooling (+1.1
points over max pooling), per-channel standardisation of each layer's input
(the mixture assumes unit-variance noise; statistics from the first
``NORM_SAMPLES`` images; measured equal to none within noise), and a readout
that concatenates every layer's own pooled ``transform`` (the top layer
alone is 1.4 points below).  At full scale (issue 23, docs/benchmarks.rst
"Stacked layers") the best stack measured, ``preset("stack")``, is 0.25 to
0.48 points above one layer: not enough to be the default.
"""

from __future__ import annotations

import functools

import numpy as np

from . import _persist, _readouts
from ._base import ParamsMixin, restore_on_error
from ._checks import _integer, check_images, check_params
from ._data import ImageSource
from ._em import Options, _Batch
from ._estimator import ConvolutionalMixture, NotFittedError
from ._network_inputs import (
    _Cache,
    _ChannelStats,
    _Maps,
)
from ._xp import get_namespace, logsumexp

__all__ = ["ConvolutionalMixtureNetwork"]

ACTIVATIONS = ("triangle", "posterior")
NORMALIZE = ("standardize", "whiten", None)
READOUTS = ("concat", "top")
CACHES = (None, "auto", "memory", "disk")
# cache="auto": in memory up to this many bytes of maps, on disk above
CACHE_MEMORY_BYTES = 2 * 2**30
# images whose maps give each layer's per-channel mean and scale
NORM_SAMPLES = 1000
_FITTED = ("layers_", "norms_")


class ConvolutionalMixtureNetwork(ParamsMixin):
    """A stack of ``ConvolutionalMixture`` layers, learned greedily by EM.

    Parameters
    ----------
    layers : list of ConvolutionalMixture
        Unfitted layers, bottom first; each is cloned (``get_params``) at
        ``fit``.  Layer ``l+1`` sees ``layers[l].n_kernels`` channels.
    pool_size : int, default=2
        Side of the average-pooling cells between layers (stride equal to
        the side; a remainder row or column is dropped).  1 is no pooling.
    activation : {"triangle", "posterior"}, default="triangle"
        Map of each kernel at each position passed to the next layer: the
        triangle activation ``max(0, mean_j z_j − z_k)`` of the distances
        ``z_k = ‖x_u − μ_k‖`` (Coates et al. 2011), or the posterior of
        kernel ``k`` given the patch at ``u`` (softmax over kernels).
    normalize : {"standardize", "whiten", None}, default="standardize"
        Standardise each channel of a layer's input with the mean and
        standard deviation over the positions of the first ``NORM_SAMPLES``
        (1000) training images' maps; or whiten the channels at each
        position: centre them, then project them on the ``n_components``
        leading principal axes of their correlation matrix over those maps,
        each divided by ``sqrt(eigenvalue + 0.1)`` (PCA whitening, a 1×1
        convolution; the layer above then has ``n_components`` channels).
    n_components : int or None, default=None
        ``normalize="whiten"`` only: the principal axes kept (at most the
        number of kernels below; ``None`` keeps them all).
    readout : {"concat", "top"}, default="concat"
        What :meth:`transform` returns: the top layer's ``transform`` of its
        input, or every layer's, concatenated bottom first.
    batch_size : int or None, default=None
        Images per batch for every layer (set on the clones); ``None`` keeps
        each layer's own ``batch_size``.  Layer ``l+1`` reads ``X`` in its
        batches and computes the maps of one batch at a time.
    cache : {None, "auto", "memory", "disk"}, default=None
        Where the input of each layer above the first is kept during ``fit``.
        ``None``: nowhere; it is recomputed from ``X`` one batch at a time on
        every EM pass of the layer (memory bounded by the batch, the cost of
        every layer below paid on every pass).  ``"memory"``: computed once,
        in one pass (one E-step of the layer below per image), into an array
        of ``X``'s namespace and device (``n · K · h · w`` numbers for
        ``K`` kernels below and ``h × w`` pooled maps).  ``"disk"``: the same
        in a NumPy memmap in a temporary folder (``TMPDIR``), read batch by
        batch and moved to ``X``'s namespace and device as it is read;
        deleted when ``fit`` returns.  ``"auto"``: memory up to
        ``CACHE_MEMORY_BYTES`` (2 GiB) of maps, disk above.  The fitted
        network is the same with any cache, up to rounding.

    Attributes
    ----------
    layers_ : list of ConvolutionalMixture
        The fitted layers.
    norms_ : list of (mean, scale) pairs of NumPy arrays
        Per-channel statistics applied to the input of layers 2, 3, ...
        (``(0, 1)`` when ``normalize=None``); for ``normalize="whiten"``
        ``scale`` is the projection, of shape ``(n_components, K)``.
    n_features_ : int
        Columns of :meth:`transform`.

    Examples
    --------
    >>> import numpy as np
    >>> import calm_np
    >>> X = np.random.default_rng(0).standard_normal((30, 1, 12, 12))
    >>> layers = [
    ...     calm_np.ConvolutionalMixture(4, kernel_size=3, latent="patch", max_iter=3,
    ...                                  tol=10.0, features="triangle", random_state=0),
    ...     calm_np.ConvolutionalMixture(3, kernel_size=2, latent="patch", max_iter=3,
    ...                                  tol=10.0, features="triangle", random_state=0),
    ... ]
    >>> net = calm_np.ConvolutionalMixtureNetwork(layers, pool_size=2).fit(X)
    >>> net.layers_[1].kernels_.shape  # layer 1's 4 kernels are layer 2's channels
    (3, 4, 2, 2)
    >>> net.transform(X).shape  # both layers' readouts, concatenated
    (30, 7)
    """

    def __init__(
        self,
        layers,
        *,
        pool_size=2,
        activation="triangle",
        normalize="standardize",
        readout="concat",
        batch_size=None,
        cache=None,
        n_components=None,
    ):
        self.layers, self.pool_size = layers, pool_size
        self.activation, self.normalize = activation, normalize
        self.readout, self.batch_size = readout, batch_size
        self.cache, self.n_components = cache, n_components

    # -- validation ----------------------------------------------------------
    def _check_params(self):
        """Validate the parameters; fresh clones of the layers."""
        layers = self.layers
        if not isinstance(layers, (list, tuple)):
            raise TypeError(
                "layers must be a list of ConvolutionalMixture estimators, got "
                f"{type(layers).__name__}"
            )
        if not layers:
            raise ValueError("layers must hold at least one ConvolutionalMixture")
        _integer("pool_size", self.pool_size, 1)
        if self.batch_size is not None:
            _integer("batch_size", self.batch_size, 1)
        if self.n_components is not None:
            _integer("n_components", self.n_components, 1)
            if self.normalize != "whiten":
                raise ValueError(
                    "n_components is for normalize='whiten' (the principal axes "
                    f"kept); with normalize={self.normalize!r} drop it"
                )
        for name, value, choices in (
            ("activation", self.activation, ACTIVATIONS),
            ("normalize", self.normalize, NORMALIZE),
            ("readout", self.readout, READOUTS),
            ("cache", self.cache, CACHES),
        ):
            if not any(value is c or value == c for c in choices):
                raise ValueError(f"{name} must be one of {choices}, got {value!r}")
        clones = []
        for i, layer in enumerate(layers):
            if not isinstance(layer, ConvolutionalMixture):
                raise TypeError(
                    f"layers[{i}] must be a ConvolutionalMixture, got "
                    f"{type(layer).__name__}"
                )
            clone = type(layer)(**layer.get_params())
            if self.batch_size is not None:
                clone.set_params(batch_size=self.batch_size)
            try:
                clone._check_params()
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"layers[{i}]: {exc}") from exc
            clones.append(clone)
        return clones

    def _check_fitted(self):
        if hasattr(self, "layers_"):
            return
        message = f"This {type(self).__name__} instance is not fitted yet"
        raise NotFittedError(message + "; call fit before using it")

    # -- fitting -------------------------------------------------------------
    def fit(self, X, y=None):
        """Fit the layers bottom first, each by EM on the maps below it.

        ``X`` is what ``ConvolutionalMixture.fit`` accepts (arrays of any
        namespace, memmaps, re-iterables of batches, Dask arrays).  Every
        layer's shapes are checked against the image size before any work.

        Returns
        -------
        self
        """
        layers = self._check_params()
        source = ImageSource(X, layers[0].batch_size)
        check_stack(layers, source.image_shape, self.pool_size)
        check_inits(layers, source.n_channels)
        with (
            restore_on_error(self, _FITTED),
            _Cache(self.cache, CACHE_MEMORY_BYTES) as cache,
        ):
            fitted, norms = [], []
            data = X
            for depth, layer in enumerate(layers):
                if depth and self.cache is None:
                    encode = self._encoder(fitted, norms, depth)
                    step = layer.batch_size or NORM_SAMPLES
                    head = functools.partial(_Maps(source, encode).head, step=step)
                    norms.append(self._statistics(head))
                    data = _Maps(source, self._encoder(fitted, norms, depth))
                elif depth:
                    below = layers[depth - 1].batch_size
                    data, norm = self._cached_input(data, fitted[-1], cache, below)
                    norms.append(norm)
                layer.fit(data)
                fitted.append(layer)
            self.layers_, self.norms_ = fitted, norms
        return self

    def _cached_input(self, data, layer, cache, batch_size):
        """The input of the layer above ``layer`` (fitted on ``data``), computed
        in one pass over ``data`` into ``cache``: ``(cached input, norm)``.

        The statistics of the first ``NORM_SAMPLES`` images are gathered as
        their maps go by, then the cached maps are standardised in place, one
        batch at a time.  ``data``'s own cache, if any, is released after.
        """
        source = ImageSource(data, batch_size)
        K = int(layer.kernels_.shape[0])  # batch_size None: maps of about 8 MB
        source.check(layer.kernel_size_, layer.padding_, n_kernels=K)
        whiten = self.normalize == "whiten"
        stats = _ChannelStats() if self.normalize == "standardize" else None
        norm = None
        if whiten:  # fewer channels out: the statistics first, from the head
            norm = self._statistics(functools.partial(_head, source, layer, self))
        out, start = None, 0
        for batch in _batches(source):
            maps, _ = _step(batch, layer, norm, self.activation, self.pool_size)
            if out is None:
                out = cache.allocate((source.n_samples, *maps.shape[1:]), maps)
            if stats is not None and start < NORM_SAMPLES:
                stats.add(maps[: min(NORM_SAMPLES - start, maps.shape[0]), ...])
            cache.write(out, start, maps)
            start += maps.shape[0]
        if stats is not None:
            norm = stats.result()
            cache.standardize(out, norm, source.batch_size or NORM_SAMPLES)
        elif norm is None:
            norm = (np.zeros(1), np.ones(1))
        cache.release(data)
        return cache.reader(out), norm

    @property
    def n_features_(self):
        """Columns of :meth:`transform`, derived from the fitted layers and
        the current ``readout`` and layer ``features``/``pooling`` (never
        stored: a ``set_params`` after ``fit`` cannot leave it stale)."""
        self._check_fitted()
        return sum(_n_features(layer) for layer in self._readers())

    def _encoder(self, layers, norms, depth):
        """``batch of X → input of layer depth`` (a picklable function)."""
        return functools.partial(
            encode,
            layers=tuple(layers[:depth]),
            norms=tuple(norms) + (None,) * (depth - len(norms)),
            activation=self.activation,
            pool_size=self.pool_size,
        )

    def _statistics(self, head):
        """Per-channel ``(mean, scale)`` of the first NORM_SAMPLES images' maps
        (``head(n_max)`` yields them in batches), or ``(mean, projection)``."""
        if self.normalize is None:
            return np.zeros(1), np.ones(1)
        whiten = self.normalize == "whiten"
        stats = _ChannelStats(second=whiten)
        for batch in head(NORM_SAMPLES):
            stats.add(batch)
        return stats.whitening(self.n_components) if whiten else stats.result()

    def _readers(self):
        return self.layers_ if self.readout == "concat" else self.layers_[-1:]

    # -- using the network ---------------------------------------------------
    def transform(self, X):
        """Features ``(n_samples, n_features_)``.

        Each layer's ``transform`` of its own input (its ``features`` and
        ``pooling``): the top layer's only (``readout="top"``), or all of
        them side by side, bottom first (``"concat"``).  For Dask input the
        result is a lazy Dask array.
        """
        self._check_fitted()
        layers = self.layers_
        # layer 1's channel count is the layout check here (and says so)
        batch_size = self.batch_size or layers[0].batch_size
        source = ImageSource(X, batch_size, layout=False)
        source.check(
            layers[0].kernel_size_, layers[0].padding_, layers[0].n_channels_in_
        )
        check_stack(layers, source.image_shape, self.pool_size)
        func = functools.partial(
            _features,
            layers=tuple(layers),
            norms=tuple(self.norms_),
            activation=self.activation,
            pool_size=self.pool_size,
            readout=self.readout,
        )
        return source.map(func, kind="transform", n_features=self.n_features_)

    def fit_transform(self, X, y=None):
        return self.fit(X).transform(X)

    # -- persistence ---------------------------------------------------------
    def save(self, path):
        """Write the fitted network to one ``.npz`` file (no pickles).

        Each layer is stored as the estimator's own file format, checked the
        same way on reading; the network's parameters and per-channel
        statistics sit beside them, described by a JSON header.
        """
        self._check_fitted()
        _persist.save_network(self, path)

    @classmethod
    def load(cls, path, *, xp=None, device=None):
        """Read a network written by :meth:`save` (NumPy arrays unless ``xp``)."""
        return _persist.load_network(
            cls, ConvolutionalMixture, path, xp=xp, device=device
        )


# -- the pieces (module level: picklable for Dask) ------------------------------
def check_stack(layers, image_shape, pool_size):
    """Refuse a stack whose layer ``l+1`` does not fit on layer ``l``'s pooled maps."""
    H, W = image_shape
    for i, layer in enumerate(layers):
        (kh, kw), (ph, pw) = _geometry(layer)
        below = (
            "the images"
            if i == 0
            else f"layers[{i - 1}]'s maps pooled {pool_size}x{pool_size}"
        )
        if kh > H + 2 * ph or kw > W + 2 * pw:
            raise ValueError(
                f"layers[{i}]: kernel size ({kh}, {kw}) is larger than its padded "
                f"input ({H + 2 * ph}, {W + 2 * pw}) ({below} are {H}x{W}); use "
                "smaller kernels, more padding or a smaller pool_size"
            )
        Ho, Wo = H + 2 * ph - kh + 1, W + 2 * pw - kw + 1
        for gh, gw in check_params(layer.get_params())["pooling"]:
            if gh > Ho or gw > Wo:
                raise ValueError(
                    f"layers[{i}]: pooling grid ({gh}, {gw}) has more cells than "
                    f"its {Ho}x{Wo} map positions ({below} are {H}x{W}); use a "
                    "coarser pooling, smaller kernels or a smaller pool_size"
                )
        H, W = Ho // pool_size, Wo // pool_size
        if i + 1 < len(layers) and min(H, W) < 1:
            raise ValueError(
                f"layers[{i}]'s maps are smaller than one {pool_size}x{pool_size} "
                "pooling cell; use a smaller pool_size or larger images"
            )


def check_inits(layers, n_channels):
    """Refuse a layer's ``init`` array whose shape does not fit the stack
    (layer ``l+1`` has one channel per kernel of layer ``l``), before any
    layer is fitted; the error names the layer."""
    for i, layer in enumerate(layers):
        init = layer.init
        if not isinstance(init, str):
            shape = tuple(int(d) for d in init.shape)
            if len(shape) == 3:  # one channel
                shape = (shape[0], 1, *shape[1:])
            kernel_size = check_params(layer.get_params())["kernel_size"]
            expected = (layer.n_kernels, n_channels, *kernel_size)
            if shape != expected:
                why = (
                    f"the images have {n_channels} channel(s)"
                    if i == 0
                    else f"its input has {n_channels} channel(s), one per kernel "
                    f"of layers[{i - 1}]"
                )
                raise ValueError(
                    f"layers[{i}]: init has shape {tuple(init.shape)} but must be "
                    f"(n_kernels, n_channels, kh, kw) = {expected}: {why}"
                )
        n_channels = layer.n_kernels


def _geometry(layer):
    if hasattr(layer, "kernel_size_"):
        return layer.kernel_size_, layer.padding_
    params = layer._check_params()
    return params["kernel_size"], params["padding"]


def _n_features(layer):
    grids = check_params(layer.get_params())["pooling"]
    return int(layer.kernels_.shape[0]) * sum(gh * gw for gh, gw in grids)


def _activation_maps(batch, layer, activation, pool_size=1, readout=False):
    """``(maps, features)``: ``layer``'s activation at each position,
    average-pooled ``pool_size × pool_size`` (``(n, K, h, w)``) and, with
    ``readout``, its ``transform`` of ``batch`` (else None).

    The adapter: the only function here that depends on ``_readouts``.  The
    readout is the layer's own ``transform`` (its chunked fast path), so a
    network's features equal its layers' features exactly.  Where both are
    triangles (the layer's ``features`` and ``activation``) they come from one
    pass of distances, each chunk's triangle read out both ways, as
    ``transform`` would read it.
    """
    options = dict(padding=layer.padding_, method=layer.method, activation=activation)
    options["variance"] = float(getattr(layer, "variance_", 1.0))
    if getattr(layer, "whitening_", None) is not None:
        options.update(latent=layer.latent, whitening=layer.whitening_)
    xp = get_namespace(batch)[0]
    (kh, kw), (ph, pw) = layer.kernel_size_, layer.padding_
    h = (batch.shape[2] + 2 * ph - kh + 1) // pool_size
    w = (batch.shape[3] + 2 * pw - kw + 1) // pool_size
    options["pool_size"] = pool_size
    if readout and activation == "triangle" and layer.features == "triangle":
        options["grids"] = check_params(layer.get_params())["pooling"]
        both = _readouts.bind(_maps_of, layer.kernels_, layer.weights_, **options)
        both = both(batch)
        n_out = _n_features(layer)
        maps = xp.reshape(both[:, n_out:], (batch.shape[0], -1, h, w))
        return maps, both[:, :n_out]
    maps = _readouts.bind(_maps_of, layer.kernels_, layer.weights_, **options)(batch)
    if activation == "triangle":  # pooled chunk by chunk
        maps = xp.reshape(maps, (batch.shape[0], -1, h, w))
    return maps, (layer.transform(batch) if readout else None)


def _maps_of(
    X, kernels, *, log_weights, padding, method, activation, pool_size, grids=None,
    **options,
):  # fmt: skip
    """Pooled activation maps of ``X``; triangles are pooled chunk by chunk
    (flat, ``(n, K·h·w)``), and with ``grids`` the readout comes first."""
    if activation == "triangle":
        options["variance"] = 1.0  # distances do not depend on σ²
    batch = _Batch(X, kernels, log_weights, Options(padding, method, **options))
    xp = batch.xp
    if activation == "posterior":
        A = batch.log_joint()
        return average_pool(
            xp.exp(A - logsumexp(A, axis=1, keepdims=True)), pool_size, xp
        )

    def read(act):  # the pooled maps (a copy), then the readout (which overwrites)
        maps = average_pool(act, pool_size, xp)
        maps = xp.reshape(xp.asarray(maps, copy=True), (act.shape[0], -1))
        if grids is None:
            return maps
        return xp.concat([_readouts.pool(act, grids, xp, reduce="sum"), maps], axis=1)

    return _readouts.triangle_maps(batch, read)


def average_pool(maps, size, xp):
    """Mean over ``size × size`` cells at stride ``size``; a remainder is dropped."""
    if size == 1:
        return maps
    n, k, H, W = maps.shape
    h, w = H // size, W // size
    cells = xp.reshape(maps[:, :, : h * size, : w * size], (n, k, h, size, w, size))
    return xp.mean(cells, axis=(3, 5))


def _step(data, layer, norm, activation, pool_size, readout=False):
    """One layer up: ``(the next layer's input, this layer's readout or None)``."""
    xp, device = get_namespace(data)
    maps, features = _activation_maps(data, layer, activation, pool_size, readout)
    if norm is not None:
        mean, scale = (xp.asarray(a, dtype=maps.dtype, device=device) for a in norm)
        maps = maps - xp.reshape(mean, (1, -1, 1, 1))
        if scale.ndim == 1:
            maps = maps / xp.reshape(scale, (1, -1, 1, 1))
        else:  # whitening: a 1x1 convolution by the projection (C, K)
            moved = xp.permute_dims(maps, (0, 2, 3, 1)) @ xp.permute_dims(scale, (1, 0))
            maps = xp.permute_dims(moved, (0, 3, 1, 2))
    return maps, features


def _batches(source):
    """The batches of an ImageSource, computed (Dask) and checked."""
    for batch in source.batches():
        if source.kind == "dask":
            batch = batch.compute()
        yield check_images(batch, "each batch of X")


def _head(source, layer, network, n_max):
    """``layer``'s pooled maps of the first ``n_max`` images of ``source``."""
    seen = 0
    for batch in _batches(source):
        batch = batch[: min(n_max - seen, batch.shape[0]), ...]
        maps, _ = _step(batch, layer, None, network.activation, network.pool_size)
        yield maps
        seen += batch.shape[0]
        if seen >= n_max:
            return


def encode(batch, *, layers, norms, activation, pool_size):
    """A batch of images → the input of the layer above ``layers``."""
    batch = check_images(batch, "each batch of X", layout=False)
    for layer, norm in zip(layers, norms, strict=True):
        batch, _ = _step(batch, layer, norm, activation, pool_size)
    return batch


def _features(batch, *, layers, norms, activation, pool_size, readout):
    """Features of one batch of images: the layers' readouts, bottom first."""
    data = check_images(batch, "each batch of X", layout=False)
    outs = []
    for layer, norm in zip(layers[:-1], norms, strict=True):
        concat = readout == "concat"
        data, features = _step(data, layer, norm, activation, pool_size, concat)
        if concat:
            outs.append(features)
    outs.append(layers[-1].transform(data))
    xp = get_namespace(outs[0])[0]
    return xp.concat(outs, axis=1) if len(outs) > 1 else outs[0]
