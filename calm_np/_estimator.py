"""``ConvolutionalMixture``: the estimator, a thin driver over ``_em``.

``fit`` checks its parameters, wraps ``X`` in an ``ImageSource`` and runs
``_fit``, the EM loop of scikit-learn's ``BaseMixture.fit_predict`` on one
screen: initialise, then iterate ``_e_step`` (the statistics of a pass) →
``_m_step`` → objective → ``tol`` or a move (``_moves``); keep the best of
``n_init`` runs; warn.  ``warm_start`` skips initialisation once fitted,
``tol`` applies to the change of the mean per-image objective, and a fit
ends with the E-step of its final parameters (so ``lower_bound_`` is the
objective of ``kernels_``).

Where the rest lives: the math of a step (objective, M-step, online blend)
in ``_em``; the moves in ``_moves``; ``transform``'s features in
``_readouts``; ``save``/``load`` in ``_persist``; the parameter table in
``_checks``; initialisation in ``_init``.
"""

from __future__ import annotations

import functools
import math
import time

import numpy as np

from . import _checks, _persist, _readouts
from ._base import ParamsMixin, restore_on_error
from ._checks import FEATURES  # noqa: F401  (the CLI reads _estimator.FEATURES)
from ._dask import is_dask_array
from ._data import checked_source, progress_bar, report
from ._em import Options, initial_variance, log_likelihood
from ._image_checks import warn_scale
from ._init import check_random_state, kernels_for
from ._moves import Moves
from ._mstep import Params, objective
from ._online import online_step, running_from_model, running_statistics
from ._persist import FORMAT_VERSION  # noqa: F401  (kept importable from here)
from ._warnings import (
    ConvergenceWarning,
    DataScaleWarning,
    DeadKernelWarning,
    NotFittedError,
    warn_after_fit,
)
from ._xp import log_or_minus_inf, to_numpy

__all__ = [
    "ConvergenceWarning",
    "ConvolutionalMixture",
    "DataScaleWarning",
    "DeadKernelWarning",
    "NotFittedError",
]


# What a fit sets (and restores if it fails).
_FITTED = tuple(
    "kernels_ weights_ variance_ lower_bound_ lower_bounds_ n_iter_ converged_ "
    "n_channels_in_ kernel_size_ padding_ _online whitening_".split()
)


class ConvolutionalMixture(ParamsMixin):
    r"""Convolutional Gaussian mixture learned by EM (CALM).

    Each image is modelled as standard-normal noise plus one kernel-shaped
    mean patch :math:`\mu_k` at an unknown position :math:`u`; the E-step is
    a convolution followed by a softmax over (kernel, position), the M-step
    correlates the images with the posterior maps.

    :math:`\log p(X) = \operatorname{logsumexp}_{k,u}\big((X\star\mu_k)_u
    - \tfrac12\|\mu_k\|^2 + \log\pi_k\big) + c(X)`

    Parameters
    ----------
    n_kernels : int, default=64
        Number of kernels (mixture components) ``K``.
    kernel_size : int or (int, int), default=5
        Kernel height and width.
    padding : int or (int, int), default=0
        Zeros added on each side of every image, at most ``kernel_size - 1``
        (the full convolution; more would add windows of zeros only).
    reg_kernels : float, default=0.0
        Precision ``λ`` of an isotropic Gaussian prior on the kernels; the
        M-step is ``μ_k = S_k / (N_k + λ)`` (MAP).  A ``λ`` so large that the
        penalty ``½ λ Σ_k ‖μ_k‖²`` overflows is a ``ValueError``.
    learn_weights : bool, default=False
        Learn the mixture weights ``π_k = N_k / n``; otherwise uniform.
    learn_variance : bool, default=False
        Learn a shared pixel variance σ² (docs/user_guide/model.rst §2; ECM) instead
        of σ² = 1.
    init : {"kmeans++", "greedy_kmeans++", "random_patches", "random"} or array
        k-means++ (D²) sampling over patches of the data (default; greedy:
        the best of ``2 + log k`` draws each pick), uniform patches, noise
        scaled to the data, or kernels ``(n_kernels, n_channels, kh, kw)``.
    n_init : int, default=1
        Number of initialisations; the run with the best objective is kept.
    max_iter : int, default=100
        EM iterations (passes over the data) per run; 0 initialises only.
    tol : float, default=1e-4
        Stop when the mean per-image objective changes by less than ``tol``.
    batch_size : int or None, default=None
        Images per minibatch of a pass (and of ``transform`` and the scores);
        ``None``: maps of about 8 MB, at least 16 images.  Batching changes
        the result only by rounding: the statistics are exact sums.
    method : {"auto", "im2col", "fft"}, default="auto"
        Convolution engine; ``"auto"`` picks the cheaper one from the shapes.
    warm_start : bool, default=False
        Start ``fit`` from the fitted model (data and shapes must match it,
        else ``ValueError``); otherwise a fit starts over.
    random_state : int, RandomState, Generator or None, default=None
        Seeds initialisation and re-seeding.
    verbose : int, default=0
        1 prints one line per iteration; 2 adds a progress bar over
        minibatches when ``tqdm`` is installed.
    callback : callable or None, default=None
        ``callback(estimator)`` after every iteration, with the current
        ``kernels_``, ``weights_``, ``lower_bounds_`` and ``n_iter_``; a
        ``True`` return value (Python's or NumPy's bool) stops the fit (all
        of it when ``n_init > 1``: the best run so far is kept).
    features : str, default="log_joint"
        One of ``"log_joint"``, ``"log_posterior"``, ``"posterior"``,
        ``"sqrt_posterior"``, ``"triangle"``: what :meth:`transform` returns
        per kernel and pooling cell, in that order:
        ``logsumexp_u A[k, u]`` over the cell (the paper's image-wide
        ``log p(Z=k, X) − c(X)`` when ``pooling=1``), the log of the posterior
        mass in the cell (``log p(Z=k, U∈cell | X)``; with
        ``latent="patch"``, the log expected count of patches of kernel
        ``k`` in the cell), that mass itself, its square root (a soft count's
        variance-stabilising transform, as the Hellinger kernel of
        histograms; +0.15 points on real MNIST digits, docs/benchmarks.rst
        "Real MNIST digits"), or the "triangle" activation of
        Coates et al. (2011) summed over the cell: with the distance
        ``z[k, u] = ‖x_u − μ_k‖`` read off the log joint,
        ``max(0, mean_j z[j, u] − z[k, u])``.
    pooling : int, (int, int) or list of them, default=1
        Grid of cells over the positions, ``g × g`` or ``gh × gw``; any other
        list of grids, e.g. ``((2, 2), (3, 3))``, is a pyramid: their features
        side by side, from one E-step (``n_kernels · Σ gh·gw`` in all).
    latent : {"image", "patch"}, default="image"
        One (kernel, position) per image (the paper), or every patch drawn
        from the mixture (EM for an identity-covariance Gaussian mixture over
        all patches; the objective is the pseudo-log-likelihood).
    whiten : bool, default=False
        ``latent="patch"`` only: normalise each patch (mean 0, divided by
        ``sqrt(var + ε_n)``) and ZCA-whiten it by a map fitted at
        initialisation (``whitening_``); kernels, mixture and readouts are
        then in whitened patch space (Coates et al. 2011).  im2col only; a
        stalled fit re-seeds kernels but does not re-centre them.

    Attributes
    ----------
    kernels_ : array of shape (n_kernels, n_channels, kh, kw)
    weights_ : array of shape (n_kernels,)
        Mixture weights, summing to 1 (uniform unless ``learn_weights``).
    variance_ : float
        σ², exactly 1.0 unless ``learn_variance``; the scores and the
        log-joint and posterior features use it.
    lower_bound_ : float
        Objective of the fitted model, in nats per image: the mean of
        :meth:`score_samples` (log-likelihood, or pseudo-log-likelihood for
        ``latent="patch"``) minus ``reg_kernels / (2 n) Σ_k ‖μ_k‖²``.
        Always finite: a non-finite objective is a ``ValueError``.
    lower_bounds_ : list of float
        Objective after each iteration of the best run.
    n_iter_ : int
    converged_ : bool
    n_channels_in_ : int
    whitening_ : Whitening (mean, matrix, eps) or None
        ``z = matrix @ ((x − x̄) / sqrt(var(x) + eps) − mean)`` per patch ``x``.

    Notes
    -----
    Full-batch EM never decreases the objective (docs/user_guide/model.rst §2);
    ``partial_fit``
    (online EM) does not have that guarantee.  Tested on NumPy,
    array-api-strict and PyTorch (CPU); CuPy on a machine with a GPU.

    Examples
    --------
    >>> import numpy as np
    >>> import calm_np
    >>> X = np.random.default_rng(0).standard_normal((40, 1, 12, 12))
    >>> model = calm_np.ConvolutionalMixture(4, kernel_size=5, tol=1e-2, random_state=0)
    >>> model.fit(X).kernels_.shape
    (4, 1, 5, 5)
    >>> bool(np.all(np.diff(model.lower_bounds_) >= -1e-9))  # EM never goes down
    True
    >>> model.transform(X).shape  # log joint pooled over the whole image
    (40, 4)
    >>> model.set_params(features="posterior", pooling=2).transform(X).shape
    (40, 16)
    >>> isinstance(model.score(X), float)
    True
    >>> model.save("model.npz")
    >>> same = calm_np.ConvolutionalMixture.load("model.npz")
    >>> bool(np.array_equal(same.kernels_, model.kernels_))
    True
    """

    def __init__(
        self,
        n_kernels=64,
        *,
        kernel_size=5,
        padding=0,
        reg_kernels=0.0,
        learn_weights=False,
        learn_variance=False,
        init="kmeans++",
        n_init=1,
        max_iter=100,
        tol=1e-4,
        batch_size=None,
        method="auto",
        warm_start=False,
        random_state=None,
        verbose=0,
        callback=None,
        features="log_joint",
        pooling=1,
        latent="image",
        whiten=False,
    ):
        self.n_kernels = n_kernels
        self.kernel_size = kernel_size
        self.padding = padding
        self.reg_kernels = reg_kernels
        self.learn_weights = learn_weights
        self.learn_variance = learn_variance
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.batch_size = batch_size
        self.method = method
        self.warm_start = warm_start
        self.random_state = random_state
        self.verbose = verbose
        self.callback = callback
        self.features = features
        self.pooling = pooling
        self.latent = latent
        self.whiten = whiten

    # -- validation ----------------------------------------------------------
    def _check_params(self):
        """Every parameter checked and normalised (``_checks.PARAMS``), a dict."""
        return _checks.check_params(self.get_params())

    def _fitted_shapes(self):
        """What a continued fit keeps: ``n_kernels``, shapes, channels, ``whiten``."""
        return dict(
            n_kernels=int(self.kernels_.shape[0]),
            kernel_size=tuple(self.kernel_size_),
            padding=tuple(self.padding_),
            n_channels=self.n_channels_in_,
            whiten=getattr(self, "whitening_", None) is not None,
        )

    def _check_fitted(self):
        if not hasattr(self, "kernels_"):
            raise NotFittedError(
                "This ConvolutionalMixture instance is not fitted yet; call fit "
                "or partial_fit before using it"
            )

    # -- fitting ---------------------------------------------------------------
    def fit(self, X, y=None):
        """Learn the kernels by exact batch EM.

        Parameters
        ----------
        X : array of shape (n_samples, n_channels, height, width)
            Images of any supported namespace (``(n, H, W)`` means one
            channel), a NumPy memmap (read batch by batch), a re-iterable of
            such batches, or a Dask array.
        y : ignored

        Returns
        -------
        self
        """
        params = self._check_params()
        warm = params["warm_start"] and hasattr(self, "kernels_")
        source = checked_source(X, params, self._fitted_shapes() if warm else None)
        # the scale, once, before any work (a warm start was told already):
        # the one message of such a fit, whose slow or starved end it explains
        advice = None
        if not warm:
            advice = warn_scale(source, self.learn_variance, self.whiten)
        with restore_on_error(self, _FITTED):
            args = (params["kernel_size"], params["padding"], warm)
            self._fit(source, *args, warn=advice is None)
        return self

    def _fit(self, source, kernel_size, padding, warm, warn=True):
        """Best of ``n_init`` EM runs, each until ``tol`` or ``max_iter``.

        When EM stalls (change below ``tol``) a run tries a *move*
        (``_moves``): re-centre kernels on shifted patterns, re-seed starved
        or duplicate ones.  A move is kept only if the objective goes up, so
        ``lower_bounds_`` stays monotone; EM then continues from it.
        """
        rng = check_random_state(self.random_state)
        best, stopped = None, False
        for run in range(1 if warm else self.n_init):
            if stopped:  # the callback asked to stop the whole fit
                break
            params = self._start(source, kernel_size, padding, rng, warm)
            options = (self.reg_kernels, self.learn_weights, self.whitening_)
            moves = Moves(source, kernel_size, padding, rng, *options)
            bounds, converged, change = [], False, math.inf
            with progress_bar(self.verbose) as bar:
                e_step = functools.partial(
                    self._e_step, source=source, padding=padding, bar=bar
                )
                stats = e_step(params)
                lower_bound = objective(stats, params.kernels, self.reg_kernels)
                for n_iter in range(1, self.max_iter + 1):
                    t0 = time.perf_counter()
                    params = self._m_step(stats, params)
                    stats = e_step(params)
                    new = objective(stats, params.kernels, self.reg_kernels)
                    change, lower_bound = new - lower_bound, new
                    moved = None
                    if abs(change) < self.tol and n_iter < self.max_iter:
                        moved = moves.try_move(
                            e_step, stats, params, lower_bound, self.tol
                        )
                    if moved is not None:
                        params, stats, new = moved
                        change, lower_bound = change + (new - lower_bound), new
                    bounds.append(lower_bound)
                    report(self, n_iter, run, lower_bound, change, t0)
                    if self._callback_stops(params, bounds, source):
                        stopped = True
                        break
                    if abs(change) < self.tol and moved is None:
                        converged = True
                        break
            if best is None or lower_bound > best[0]:
                best = (lower_bound, params, bounds, stats, converged, change)
                best_whitening = self.whitening_
        self.whitening_ = best_whitening  # the kept run's
        self._set_fitted(best, source, kernel_size, padding)
        if warn:
            warn_after_fit(best, self.max_iter, self.tol)

    def _e_step(self, params, source, padding, bar, margin=0):
        """Statistics of one pass over ``source`` (window ones if ``margin``)."""
        progress = None
        if bar is not None:
            bar.reset(total=source.n_samples)
            progress = bar.update
        options = Options(
            padding, self.method, self.latent, params.variance, self.whitening_
        )
        args = (params.kernels, params.log_weights, options, margin, progress)
        return source.statistics(*args)

    def _m_step(self, stats, params):
        args = (self.reg_kernels, self.learn_weights, self.learn_variance)
        return params.m_step(stats, *args)

    def _start(self, source, size, padding, rng, warm):
        """Initial :class:`~calm_np._mstep.Params`: the fitted ones, or new ones;
        sets ``whitening_`` (kept, or fitted with the new kernels)."""
        xp, dtype, device = source.xp, source.work_dtype, source.device
        if warm:
            kernels = xp.asarray(self.kernels_, dtype=dtype, device=device)
            weights = xp.asarray(self.weights_, dtype=dtype, device=device)
            log_w = log_or_minus_inf(weights, xp)
        else:
            k, args = self.n_kernels, (self.init, self.n_kernels, size, padding, rng)
            kernels, self.whitening_ = kernels_for(source, *args, dtype, self.whiten)
            log_w = xp.full((k,), -math.log(k), dtype=dtype, device=device)
        variance = self._variance(source, kernels, padding, new=not warm)
        return Params(kernels, log_w, variance)

    def _variance(self, source, kernels, padding, new=False):
        """σ² to start from: 1 unless learned, the fitted one, or for ``new``
        kernels their hard-assignment residual (``_em.initial_variance``)."""
        if self.learn_variance and new:
            args = (padding, self.method, self.latent, self.whitening_)
            return initial_variance(source, kernels, *args)
        return float(getattr(self, "variance_", 1.0)) if self.learn_variance else 1.0

    def _callback_stops(self, params, bounds, source):
        """Show the current state to ``callback``; True if it asks to stop."""
        if self.callback is None:
            return False
        self._set_state(params, bounds, len(bounds), source)
        stop = self.callback(self)
        return isinstance(stop, (bool, np.bool_)) and bool(stop)

    def _set_state(self, params, bounds, n_iter, source):
        self.kernels_ = params.kernels
        self.weights_ = source.xp.exp(params.log_weights)
        self.variance_ = float(params.variance)
        self.lower_bounds_ = list(bounds)
        self.lower_bound_ = bounds[-1] if bounds else None
        self.n_iter_ = n_iter
        self.n_channels_in_ = source.n_channels

    def _set_fitted(self, best, source, kernel_size, padding):
        lower_bound, params, bounds, stats, converged, _ = best
        self._set_state(params, bounds, len(bounds), source)
        self.lower_bound_ = lower_bound  # also right when max_iter=0
        self.kernel_size_, self.padding_ = kernel_size, padding
        self.converged_ = converged
        # running per-image statistics for partial_fit after fit
        self._online = running_statistics(stats, t=len(bounds))

    # -- online EM ---------------------------------------------------------------
    def partial_fit(self, X, y=None):
        r"""One step of stepwise (online) EM on a minibatch.

        The running per-image statistics are blended with the batch's,
        :math:`\bar s \leftarrow (1-\eta_t)\,\bar s + \eta_t\, s_{batch}/n_{batch}`
        with :math:`\eta_t = (t+2)^{-0.6}`, then the M-step
        ``μ_k = S̄_k n / (N̄_k n + λ)`` with ``n`` the images seen so far.
        The first call initialises from its batch; calls after ``fit``
        continue from the fitted model.  A model from :meth:`load` has no
        running statistics: they are rebuilt from its kernels and weights
        (``N̄_k = π_k`` per latent draw, ``S̄_k = μ_k N̄_k``, the fixed point
        of the fit when ``reg_kernels=0``) and the step size continues from
        ``n_iter_``.  Unlike ``fit``, online EM is *not*
        monotone: the objective on a fixed set can go down between calls.

        Returns
        -------
        self
        """
        params = self._check_params()
        first = not hasattr(self, "kernels_")
        source = checked_source(X, params, None if first else self._fitted_shapes())
        if first:  # the scale, as fit checks it, on the batch that starts it
            warn_scale(source, self.learn_variance, self.whiten, online=True)
        with restore_on_error(self, _FITTED):
            self._partial_fit(source, params["kernel_size"], params["padding"])
        return self

    def _partial_fit(self, source, size, padding):
        xp, dtype, device = source.xp, source.work_dtype, source.device
        fitted = hasattr(self, "kernels_")
        if not fitted:
            rng, k = check_random_state(self.random_state), self.n_kernels
            args = (self.init, k, size, padding, rng, dtype, self.whiten)
            kernels, self.whitening_ = kernels_for(source, *args)
            weights = xp.full((k,), 1.0 / k, dtype=dtype, device=device)
            running = None
        else:
            kernels = xp.asarray(self.kernels_, dtype=dtype, device=device)
            weights = xp.asarray(self.weights_, dtype=dtype, device=device)
            # a loaded model has none: rebuilt below from the model
            running = getattr(self, "_online", None)
        variance = self._variance(source, kernels, padding, new=not fitted)
        params = Params(kernels, log_or_minus_inf(weights, xp), variance)
        stats = self._e_step(params, source, padding, None)
        if running is None and fitted:
            running = running_from_model(
                stats, kernels, weights, self.n_iter_, variance
            )
        self._online, blended = online_step(running, stats)
        params = self._m_step(blended, params)
        bounds = getattr(self, "lower_bounds_", [])
        bounds = [*bounds, objective(stats, params.kernels, self.reg_kernels)]
        self._set_state(params, bounds, getattr(self, "n_iter_", 0) + 1, source)
        self.kernel_size_, self.padding_, self.converged_ = size, padding, False

    # -- using the model -----------------------------------------------------------
    def _source(self, X):
        """``(source, params)`` for reading ``X`` out with the fitted model."""
        self._check_fitted()
        params, fitted = self._check_params(), self._fitted_shapes()
        readout = {**params, "init": None, **fitted}
        return checked_source(X, readout, fitted, readout=True), params

    def score_samples(self, X):
        """The fitted objective of each image, in nats, ``(n_samples,)``.

        ``latent="image"``: the exact log-likelihood ``log p(X_n)``.
        ``latent="patch"``: the pseudo-log-likelihood
        ``Σ_u log p(x_{n,u})``, every patch's log density under the mixture
        summed over the image's patches.  Either way the number whose mean
        (minus the prior penalty ``reg_kernels``) the fit maximised, and
        :func:`calm_np.log_likelihood` with the fitted parameters and
        ``latent``.  Lazily, as a Dask array, for Dask input.
        """
        source, _ = self._source(X)
        trusted = source.validated  # checked where they entered: no host reads
        score = _readouts.trusted_log_likelihood if trusted else log_likelihood
        func = _readouts.bind_model(score, self)
        return source.map(func, kind="score")

    def score(self, X, y=None):
        """Mean of :meth:`score_samples` (nats per image), a Python float.

        Computed for Dask input too.  Higher is better, so it ranks models in
        a grid search; it does not include the ``reg_kernels`` penalty.
        """
        values = self.score_samples(X)
        if is_dask_array(values):
            values = values.compute()
        return float(np.mean(to_numpy(values), dtype=np.float64))

    def transform(self, X):
        """Pooled posterior features, ``(n_samples, n_features)``.

        ``n_features = n_kernels · Σ gh·gw`` over the ``pooling`` grids; each
        is a logsumexp of the log joint ``A[k, u]`` over a cell of positions
        (``features="log_joint"``), the log posterior mass of the cell
        (``"log_posterior"``), that mass (``"posterior"``) or its square root
        (``"sqrt_posterior"``), or the sum of the
        triangle activations of the cell (``"triangle"``).  A kernel whose
        learned weight is 0 has ``-inf`` log features (their exact value) and
        posterior 0; its triangle features stay finite (they ignore the
        weights).  Computed batch by batch (``batch_size``).
        """
        source, params = self._source(X)
        options = dict(features=self.features, pooling=params["pooling"])
        trusted = source.validated  # checked where they entered: no host reads
        read = _readouts.trusted_features if trusted else _readouts.pooled_features
        func = _readouts.bind_model(read, self, **options)
        n_features = self.kernels_.shape[0] * _checks.n_cells(params["pooling"])
        return source.map(func, kind="transform", n_features=n_features)

    def fit_transform(self, X, y=None):
        return self.fit(X).transform(X)

    # -- persistence -------------------------------------------------------------------
    def save(self, path):
        """Write the fitted model to ``path`` (``.npz``, no pickles; see
        ``_persist``); :meth:`load` gives back the same arrays bit for bit."""
        self._check_fitted()
        _persist.save(self, path)

    @classmethod
    def load(cls, path, *, xp=None, device=None):
        """Read a model written by :meth:`save`: NumPy arrays (a model saved
        from CuPy loads without a GPU), or on ``xp`` and ``device`` if given."""
        return _persist.load(cls, path, xp=xp, device=device)
