"""Figures of a fitted model: a grid of its kernels and its objective per iteration.

Used by the command line and the examples: :func:`kernel_grid`,
:func:`objective_curve`, and :func:`model_figures` for both at once.

matplotlib is imported when a figure is drawn, never at ``import calm_np``; the
figures are drawn on an Agg canvas directly (no ``pyplot``), so nothing here
touches the caller's global matplotlib state or needs a display.
"""

from __future__ import annotations

import math

import numpy as np

from ._xp import to_numpy

__all__ = ["kernel_grid", "model_figures", "objective_curve"]


def _figure(width, height):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(
            "drawing figures needs matplotlib; install it with "
            '`pip install "calm_np[examples]"` or `pip install matplotlib`'
        ) from exc
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _tiles(kernels):
    """Kernels ``(k, c, h, w)`` as displayable tiles ``(k, h, w[, 3])`` in [0, 1].

    Each kernel is scaled on its own (the kernels of one model can differ in
    norm by orders of magnitude, and the figure is about their shapes). One
    channel is shown in grey, three as RGB; any other count shows the mean
    over channels.
    """
    K = np.asarray(to_numpy(kernels), dtype=np.float64)
    if K.ndim == 3:
        K = K[:, None]
    lo = K.min(axis=(1, 2, 3), keepdims=True)
    hi = K.max(axis=(1, 2, 3), keepdims=True)
    span = np.where(hi > lo, hi - lo, 1.0)
    K = (K - lo) / span
    if K.shape[1] == 3:
        return np.moveaxis(K, 1, -1)
    return K.mean(axis=1)


def _mosaic(tiles, rows, cols):
    """Tiles ``(k, h, w[, 3])`` in [0, 1] as one RGBA image of ``rows × cols``
    tiles, each followed by a transparent gap of one pixel."""
    k, h, w = tiles.shape[:3]
    rgb = tiles if tiles.ndim == 4 else np.repeat(tiles[..., None], 3, axis=-1)
    image = np.zeros((rows * (h + 1), cols * (w + 1), 4))
    for i in range(k):
        y, x = (i // cols) * (h + 1), (i % cols) * (w + 1)
        image[y : y + h, x : x + w, :3] = rgb[i]
        image[y : y + h, x : x + w, 3] = 1.0
    return image[:-1, :-1]


def kernel_grid(kernels, path, *, title=None, order=None):
    """Save the kernels as a near-square grid of tiles in a PNG file.

    Parameters
    ----------
    kernels : array of shape (n_kernels, n_channels, kh, kw)
        Any namespace; copied to the host.
    path : str or path-like
        Where to write the PNG.
    title : str or None, default=None
        Figure title.
    order : sequence of int or None, default=None
        Order of the tiles, e.g. kernels sorted by weight or posterior mass.

    Returns
    -------
    path : str or path-like
        The ``path`` given.

    Examples
    --------
    >>> import numpy as np
    >>> import calm_np
    >>> X = np.random.default_rng(0).standard_normal((20, 1, 8, 8))
    >>> model = calm_np.ConvolutionalMixture(4, kernel_size=3, tol=1e-2, random_state=0)
    >>> model = model.fit(X)
    >>> from calm_np.plots import kernel_grid
    >>> kernel_grid(model.kernels_, "kernels.png", title="4 kernels 3x3")
    'kernels.png'
    """
    tiles = _tiles(kernels)
    if order is not None:
        tiles = tiles[np.asarray(order, dtype=np.int64)]
    k = tiles.shape[0]
    cols = max(1, math.ceil(math.sqrt(k)))
    rows = max(1, math.ceil(k / cols))
    side = min(0.6 * cols, 12.0) / cols  # inches per tile, at most 12 in wide
    fig = _figure(side * cols + 0.4, side * rows + (0.8 if title else 0.4))
    width, height = fig.get_figwidth(), fig.get_figheight()
    ax = fig.add_axes(
        (0.2 / width, 0.2 / height, side * cols / width, side * rows / height)
    )
    ax.set_axis_off()
    # one image of every tile (one imshow: a subplot per kernel took ~3 s
    # for 256 kernels), tiles apart by a transparent one-pixel gap
    ax.imshow(_mosaic(tiles, rows, cols), interpolation="nearest")
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=100)
    return path


def objective_curve(lower_bounds, path, *, title=None, ylabel=None):
    """Save the objective after each EM iteration as a line plot (PNG).

    Parameters
    ----------
    lower_bounds : sequence of float
        ``ConvolutionalMixture.lower_bounds_``: the mean per-image objective
        after iterations 1, 2, ...
    path : str or path-like
    title, ylabel : str or None

    Returns
    -------
    path : str or path-like

    Examples
    --------
    >>> import numpy as np
    >>> import calm_np
    >>> X = np.random.default_rng(0).standard_normal((20, 1, 8, 8))
    >>> model = calm_np.ConvolutionalMixture(4, kernel_size=3, tol=1e-2, random_state=0)
    >>> model = model.fit(X)
    >>> from calm_np.plots import objective_curve
    >>> objective_curve(model.lower_bounds_, "curve.png")
    'curve.png'
    """
    values = np.asarray(list(lower_bounds), dtype=np.float64)
    fig = _figure(5.0, 3.5)
    ax = fig.add_subplot(1, 1, 1)
    iters = np.arange(1, values.size + 1)
    ax.plot(iters, values, marker="o", markersize=3)
    ax.set_xlabel("EM iteration")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel or "mean log-likelihood per image (nats)")
    if values.size:
        ax.set_xlim(0.5, values.size + 0.5)
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def _objective_label(model):
    if getattr(model, "latent", "image") == "patch":
        return "pseudo-log-likelihood per image (nats)"
    if model.reg_kernels:
        return "penalised log-likelihood per image (nats)"
    return "mean log-likelihood per image (nats)"


def model_figures(model, kernels_path, curve_path, *, data="", n_fit=None):
    """Both figures of a fitted ConvolutionalMixture, as PNG files.

    The kernel grid (sorted by weight when the weights are learned) and the
    objective after each EM iteration, labelled with what the model's
    objective is (log-likelihood, penalised, or pseudo-log-likelihood).

    Parameters
    ----------
    model : fitted ConvolutionalMixture
    kernels_path, curve_path : str or path-like
        Where to write the two PNG files.
    data : str, default=""
        Name of the data, for the titles.
    n_fit : int or None, default=None
        Number of images fitted on, for the curve's title.

    Examples
    --------
    >>> import numpy as np
    >>> import calm_np
    >>> X = np.random.default_rng(0).standard_normal((20, 1, 8, 8))
    >>> model = calm_np.ConvolutionalMixture(4, kernel_size=3, tol=1e-2, random_state=0)
    >>> model = model.fit(X)
    >>> from pathlib import Path
    >>> from calm_np.plots import model_figures
    >>> model_figures(model, "kernels.png", "curve.png", data="noise")
    >>> Path("kernels.png").stat().st_size > 0, Path("curve.png").stat().st_size > 0
    (True, True)
    """
    k, c, kh, kw = model.kernels_.shape
    order = np.argsort(-np.asarray(to_numpy(model.weights_)), kind="stable")
    kernel_grid(
        model.kernels_,
        kernels_path,
        title=f"{k} kernels {kh}x{kw}" + (f", {data}" if data else ""),
        order=order if model.learn_weights else None,
    )
    images = "" if n_fit is None else f" ({n_fit} images)"
    objective_curve(
        model.lower_bounds_,
        curve_path,
        title=f"EM on {data}{images}" if data else None,
        ylabel=_objective_label(model),
    )
