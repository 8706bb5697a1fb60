"""Input validation shared by the functions and the estimator.

Every error names the argument and says what to change.  Checks run once per
call on the caller's namespace; the finiteness check is the only one that
reads data (one reduction, one host sync).  The vocabularies (``METHODS``,
``LATENTS``, ``INITS``, ``FEATURES``) live here, and so does the estimator's
parameter table ``PARAMS`` (one check per ``ConvolutionalMixture`` argument,
run by ``check_params`` at the start of ``fit``).
"""

from __future__ import annotations

import math
import numbers
import operator

from ._image_checks import check_channels_first
from ._xp import default_float, is_array_api_obj, logsumexp

METHODS = ("auto", "im2col", "fft")
LATENTS = ("image", "patch")
INITS = ("kmeans++", "greedy_kmeans++", "random_patches", "random")
FEATURES = ("log_joint", "log_posterior", "posterior", "sqrt_posterior", "triangle")


def as_array(a, name):
    """Accept array-API arrays as they are and anything else through NumPy."""
    if is_array_api_obj(a):
        return a
    import numpy as np

    try:
        return np.asarray(a)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"{name} must be an array (NumPy, CuPy, PyTorch or another "
            f"array-API library), got {type(a).__name__}"
        ) from exc


def detached(a):
    """``a`` without autograd history (a PyTorch tensor that requires grad)."""
    if getattr(a, "requires_grad", False) and hasattr(a, "detach"):
        return a.detach()
    return a


def _kind(xp, dtype):
    for kind in ("bool", "complex floating", "real floating", "integral"):
        try:
            if xp.isdtype(dtype, kind):
                return kind
        except (TypeError, ValueError):
            continue
    return None


def float_dtype(xp, arrays_and_names, device):
    """Common real floating dtype of the inputs; integers become float,
    floats narrower than 32 bits (float16, torch's bfloat16) become float32,
    and wider than 64 bits (NumPy's longdouble) float64, which every backend
    computes in and a model file holds.

    Half precision cannot hold EM's sums (11 significant bits) and its
    ``tiny / eps`` is 0.06, so its probabilities could not be kept apart
    from subnormals; it is computed in float32, as NumPy's own float16
    reductions accumulate.  Complex, boolean and object data are refused
    with a ``TypeError``.
    """
    floats = []
    for a, name in arrays_and_names:
        kind = _kind(xp, a.dtype)
        if kind == "real floating":
            floats.append(a.dtype)
        elif kind == "integral":
            continue
        elif kind == "complex floating":
            raise TypeError(
                f"{name} has complex dtype {a.dtype}; calm_np models real images, "
                "pass the real part (or magnitude) instead"
            )
        else:
            raise TypeError(
                f"{name} has dtype {a.dtype}; pass real numbers (an integer or "
                "floating array)"
            )
    if not floats:
        dtype = default_float(xp, device)
    else:
        dtype = floats[0] if len(floats) == 1 else xp.result_type(*floats)
    bits = xp.finfo(dtype).bits
    return xp.float32 if bits < 32 else xp.float64 if bits > 64 else dtype


def check_finite(a, name, xp):
    if not bool(xp.all(xp.isfinite(a))):
        raise ValueError(
            f"{name} contains NaN or infinity; remove or impute those values "
            "before calling calm_np"
        )


def check_images_finite(X, name, xp, step=None, dtype=None):
    """Refuse NaN/inf, and values whose squares overflow ``dtype`` (default
    ``X``'s; ``X`` is cast to it).

    One reduction (``max |X|``, which NaN propagates through; over ``step``
    images at a time when given, so the temporaries stay small), one host
    read.  The bound ``sqrt(max_float / pixels per image)`` keeps ``‖X‖²``
    and the correlations finite; beyond it the objective would be ``-inf``.
    Returns ``max |X|`` (0 for no images).
    """
    n = X.shape[0]
    if n == 0:
        return 0.0
    dtype = X.dtype if dtype is None else dtype
    step = n if step is None else step
    peaks = [
        xp.max(xp.abs(xp.astype(X[s : min(s + step, n), ...], dtype, copy=False)))
        for s in range(0, n, step)
    ]
    peak = float(peaks[0] if len(peaks) == 1 else xp.max(xp.stack(peaks)))
    if not math.isfinite(peak):
        check_finite(X, name, xp)  # the usual message
    pixels = math.prod(X.shape[1:])
    limit = math.sqrt(float(xp.finfo(dtype).max) / max(pixels, 1))
    if peak > limit:
        raise ValueError(
            f"{name} has values up to {peak:.3g}, whose squares overflow "
            f"{dtype} (largest usable magnitude {limit:.3g} for images of "
            f"{pixels} pixels); rescale the images (calm_np assumes unit noise "
            "variance) or pass float64"
        )
    return peak


def check_log_joint_range(kernels, variance, patch_norm, xp):
    """Refuse kernels and a variance σ² whose log joint could be NaN.

    The log joint ``(x_u·μ_k − ½‖μ_k‖²)/σ²`` is computed from two terms: the
    correlation, at most ``‖x_u‖ ‖μ_k‖/σ²`` in magnitude, and the bias
    ``½‖μ_k‖²/σ²``; their difference is at most ``½‖x_u‖²/σ²``.  While these
    three are finite the log joint is finite or ``-inf`` (a probability of
    0), never ``+inf`` or ``inf − inf``.  ``patch_norm`` bounds ``‖x_u‖`` (0
    where unknown, for whitened patches).  One reduction over the kernels,
    in float64.
    """
    try:
        wide = xp.astype(kernels, xp.float64)
    except (TypeError, RuntimeError):  # a device without float64
        wide = kernels
    top = float(xp.max(xp.abs(wide)))  # squares taken after scaling by it:
    unit = wide / top if top > 0 else wide  # no overflow (nor its warning)
    sq = top * top * float(xp.max(xp.sum(unit * unit, axis=(1, 2, 3))))
    terms = (patch_norm * math.sqrt(sq), 0.5 * sq, 0.5 * patch_norm * patch_norm)
    bound = max(terms) / variance
    largest = float(xp.finfo(kernels.dtype).max)
    if not bound < largest:  # also NaN and inf
        raise ValueError(
            f"kernels (largest squared norm {sq:.3g}) and variance "
            f"{variance:.3g} give log-joint terms up to {bound:.3g}, beyond "
            f"{kernels.dtype}'s range ({largest:.3g}); rescale the kernels, "
            "use a larger variance, or pass float64"
        )


def check_padding(padding):
    """``padding`` as a pair of non-negative ints."""
    message = f"padding must be an int or a pair of ints (ph, pw), got {padding!r}"
    if isinstance(padding, bool):
        raise TypeError(message)
    try:
        pair = (operator.index(padding),) * 2
    except TypeError:
        pair = None
    if pair is None:
        try:
            pair = tuple(operator.index(p) for p in padding)
        except TypeError as exc:
            raise TypeError(message) from exc
        if len(pair) != 2 or any(isinstance(p, bool) for p in padding):
            raise TypeError(message)
    if min(pair) < 0:
        raise ValueError(
            f"padding must be non-negative (zeros added on each side), got {padding!r}"
        )
    return pair


def check_method(method, xp=None):
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "fft" and xp is not None and not hasattr(xp, "fft"):
        raise ValueError(
            "method='fft' needs an array namespace with the fft extension; "
            "this one has none, use method='im2col' or 'auto'"
        )
    return method


def check_whiten(whiten, latent, method, name="whiten=True"):
    """Whitening (``name``) needs ``latent="patch"`` and an engine that whitens."""
    off = "whiten=False" if name == "whiten=True" else "whitening=None"
    if whiten and latent != "patch":
        raise ValueError(
            f"{name} needs latent='patch' (the mixture is over whitened "
            f"patches), got latent={latent!r}; set latent='patch' or {off}"
        )
    if whiten and method == "fft":
        raise ValueError(
            f"{name} cannot run with method='fft' (the Fourier engines see "
            f"no patches to whiten); use method='im2col' or 'auto', or {off}"
        )


def check_whitening(whitening, n_dims, latent, method):
    """A fitted whitening (``_whiten.Whitening``) checked against the patches."""
    if whitening is None:
        return None
    check_whiten(True, latent, method, "whitening")
    try:
        mean, matrix, eps = whitening
        shapes = tuple(mean.shape), tuple(matrix.shape)
    except (TypeError, ValueError, AttributeError) as exc:
        raise TypeError(
            "whitening must be None or a (mean, matrix, eps) Whitening, as in a "
            "fitted model's whitening_"
        ) from exc
    if shapes != ((n_dims,), (n_dims, n_dims)):
        raise ValueError(
            f"whitening has mean {shapes[0]} and matrix {shapes[1]}, but the "
            f"patches have D = c·kh·kw = {n_dims} values; pass the whitening "
            "fitted with these kernels"
        )
    if not (isinstance(eps, numbers.Real) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"whitening's eps must be a finite number > 0, got {eps!r}")
    return whitening


def check_latent(latent):
    if not isinstance(latent, str) or latent not in LATENTS:
        raise ValueError(f"latent must be one of {LATENTS}, got {latent!r}")
    return latent


def check_variance(variance, name="variance"):
    """The shared pixel variance σ² (docs/user_guide/model.rst §2): a finite real number
    > 0, as a float."""
    if not isinstance(variance, numbers.Real) or _is_bool(variance):
        raise TypeError(f"{name} must be a real number, got {variance!r}")
    if not (math.isfinite(variance) and variance > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {variance!r}")
    return float(variance)


def _four_d(a, name, message):
    """``a`` as 4-D, a channel axis of 1 added to 3-D; ``message(a)`` otherwise."""
    a = as_array(a, name)
    if a.ndim == 3:
        a = a[:, None, ...]
    elif a.ndim != 4:
        raise ValueError(message(a))
    if min(a.shape[1:]) < 1:
        raise ValueError(
            f"{name} has shape {tuple(a.shape)}: every channel, row and column "
            "axis needs at least 1 element; pass images with at least one "
            "channel, row and column"
        )
    return a


def check_images(X, name="X", *, layout=True):
    """Return ``X`` as 4-D ``(n, c, H, W)`` (3-D input means ``c = 1``).

    ``layout=True`` also refuses a channels-last batch
    (:func:`check_channels_first`).  Callers pass ``False`` where the channel
    count is checked against something else (kernels, a fitted model) or
    the array was checked before (a batch of a checked source, a network's
    maps, which are channels-first by construction).  A 3-D ``X`` that
    looks like one channels-last image ``(H, W, C)`` is refused either way:
    read as gray images, no channel count can tell it apart.
    """
    given = tuple(getattr(X, "shape", ()))
    X = _four_d(
        X,
        name,
        lambda X: (
            f"{name} must have shape (n_samples, n_channels, height, width) or "
            f"(n_samples, height, width), got an array with {X.ndim} dimension(s) "
            f"of shape {tuple(X.shape)}; add a leading axis for a single image"
        ),
    )
    if len(given) == 3:  # always: one (H, W, C) image matches any gray model
        check_channels_first(given, name)
    elif layout:
        check_channels_first(tuple(X.shape), name)
    return X


def check_kernels(kernels, n_channels, name="kernels"):
    """Return kernels as 4-D ``(k, c, kh, kw)``; 3-D means one channel."""
    kernels = _four_d(
        kernels,
        name,
        lambda k: (
            f"{name} must have shape (n_kernels, n_channels, kh, kw) or "
            f"(n_kernels, kh, kw), got shape {tuple(k.shape)}"
        ),
    )
    if kernels.shape[0] < 1 or kernels.shape[2] < 1 or kernels.shape[3] < 1:
        raise ValueError(
            f"{name} must hold at least one kernel of size at least 1x1, got "
            f"shape {tuple(kernels.shape)}"
        )
    if kernels.shape[1] != n_channels:
        raise ValueError(
            f"{name} have {kernels.shape[1]} channel(s) but X has {n_channels}; "
            "kernels and images must have the same number of channels"
        )
    return kernels


def check_log_weights(log_weights, n_kernels, xp, dtype, device):
    """Log mixture weights, ``(k,)``; ``None`` means uniform."""
    import math

    if log_weights is None:
        return xp.full((n_kernels,), -math.log(n_kernels), dtype=dtype, device=device)
    log_weights = as_array(log_weights, "log_weights")
    if tuple(log_weights.shape) != (n_kernels,):
        raise ValueError(
            f"log_weights must have shape (n_kernels,) = ({n_kernels},), got "
            f"{tuple(log_weights.shape)}"
        )
    kind = _kind(xp, log_weights.dtype)
    if kind not in ("real floating", "integral"):
        raise TypeError(f"log_weights must be real numbers, got {log_weights.dtype}")
    log_weights = xp.astype(log_weights, dtype)
    if bool(xp.any(xp.isnan(log_weights))) or bool(xp.any(log_weights == xp.inf)):
        raise ValueError("log_weights contains NaN or +inf; use finite values or -inf")
    total = float(logsumexp(log_weights, xp=xp))
    if not abs(total) <= 1e-3:
        raise ValueError(
            "log_weights must be log-probabilities (logsumexp(log_weights) == 0), "
            f"got logsumexp = {total:.6g}; pass log_weights - "
            "logsumexp(log_weights)"
        )
    return log_weights


def check_sizes(image_shape, kernel_shape, padding):
    (H, W), (kh, kw), (ph, pw) = image_shape, kernel_shape, padding
    Hp, Wp = H + 2 * ph, W + 2 * pw
    if kh > Hp or kw > Wp:
        raise ValueError(
            f"kernel size ({kh}, {kw}) is larger than the padded image "
            f"({Hp}, {Wp}); use smaller kernels or more padding"
        )
    return Hp, Wp


# -- the estimator's parameter table ------------------------------------------
def _is_bool(value):
    import numpy as np

    return isinstance(value, (bool, np.bool_))


def _integer(name, value, low):
    if not isinstance(value, numbers.Integral) or _is_bool(value):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)


def _boolean(name, value):
    if not _is_bool(value):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _seed(name, value):
    """``random_state``: None, an int in [0, 2**32), or a NumPy generator."""
    import numpy as np

    if value is None or isinstance(value, (np.random.RandomState, np.random.Generator)):
        return value
    if not isinstance(value, numbers.Integral) or _is_bool(value):
        raise TypeError(
            "random_state must be None, an int, a numpy RandomState or Generator, "
            f"got {type(value).__name__}"
        )
    if not 0 <= value < 2**32:
        raise ValueError(
            f"random_state must be an int in [0, 2**32), got {value}; pass "
            "a smaller seed"
        )
    return int(value)


def _pair(name, value):
    """An int or a pair of ints, each >= 1 (``kernel_size``, ``pooling``)."""
    try:
        pair = check_padding(value)
    except TypeError as exc:
        raise TypeError(
            f"{name} must be an int or a pair of ints, got {value!r}"
        ) from exc
    except ValueError:  # ints, but negative
        pair = (-1,)
    if min(pair) < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return pair


# Most grids a pooling pyramid may list (each one adds n_kernels·gh·gw features).
MAX_GRIDS = 8


def check_pooling(value, name="pooling"):
    """``pooling`` as a tuple of grids ``((gh, gw), ...)``, each cell count >= 1.

    An int ``g`` is one ``g × g`` grid and a pair of ints ``(gh, gw)`` one
    ``gh × gw`` grid, as always; any other list or tuple is a pyramid, whose
    entries are grids (ints or pairs): ``((2, 2), (3, 3))``, ``[2, (3, 3)]``
    or ``(1, 2, 3)``.  Its features are each grid's, concatenated in order.
    """
    message = (
        f"{name} must be an int or a pair of ints (gh, gw), or a list of such "
        f"grids (a pyramid, e.g. ((2, 2), (3, 3))), got {value!r}"
    )
    if isinstance(value, (str, bytes)):
        raise TypeError(message)
    try:  # an int or a pair: one grid
        grids = (_pair(name, value),)
    except TypeError:
        grids = None
    if grids is None:
        if not isinstance(value, (list, tuple)):
            raise TypeError(message)
        entries = list(value)
        if not entries:
            raise ValueError(f"{name} is an empty list of grids; give at least one")
        if len(entries) > MAX_GRIDS:
            raise ValueError(
                f"{name} lists {len(entries)} grids, more than the {MAX_GRIDS} "
                "a pyramid may have"
            )
        try:
            grids = tuple(_pair(name, g) for g in entries)
        except TypeError as exc:
            raise TypeError(message) from exc
        repeated = sorted({g for g in grids if grids.count(g) > 1})
        if repeated:
            raise ValueError(
                f"{name} lists the grid {repeated[0]} more than once, got {value!r}"
            )
    return grids


def n_cells(grids):
    """Cells of all grids of a checked ``pooling`` (features per kernel)."""
    return sum(gh * gw for gh, gw in grids)


def _non_negative(name, value):
    if not isinstance(value, numbers.Real) or _is_bool(value):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _choice(name, value, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _init(name, value):
    if isinstance(value, str):
        if value not in INITS:
            raise ValueError(
                f"init must be one of {INITS} or an array of kernels, got {value!r}"
            )
    elif not hasattr(value, "shape"):
        raise TypeError(
            f"init must be one of {INITS} or an array of kernels, got "
            f"{type(value).__name__}"
        )
    return value


def _callback(name, value):
    if value is not None and not callable(value):
        raise TypeError("callback must be callable or None")
    return value


# ConvolutionalMixture's parameters, checked in this order (the first bad one
# raises); each check returns the normalised value.
PARAMS = {
    "n_kernels": lambda n, v: _integer(n, v, 1),
    "n_init": lambda n, v: _integer(n, v, 1),
    "max_iter": lambda n, v: _integer(n, v, 0),
    "verbose": lambda n, v: _integer(n, v, 0),
    "kernel_size": _pair,
    "padding": lambda n, v: check_padding(v),
    "reg_kernels": _non_negative,
    "tol": _non_negative,
    "batch_size": lambda n, v: v if v is None else _integer(n, v, 1),
    "method": lambda n, v: check_method(v),
    "latent": lambda n, v: check_latent(v),
    "init": _init,
    "callback": _callback,
    "features": lambda n, v: _choice(n, v, FEATURES),
    "pooling": lambda n, v: check_pooling(v, n),
    "learn_weights": _boolean,
    "learn_variance": _boolean,
    "warm_start": _boolean,
    "random_state": _seed,
    "whiten": _boolean,
}


def check_params(params):
    """Check the estimator's ``params`` (a dict); the normalised values.

    NumPy scalars come back as Python ``int``/``float``/``bool`` (what a
    model file stores), pairs as tuples, ``pooling`` as a tuple of grids.
    """
    checked = {name: check(name, params[name]) for name, check in PARAMS.items()}
    check_whiten(checked["whiten"], checked["latent"], checked["method"])
    check_padding_fits(checked["padding"], checked["kernel_size"], params["padding"])
    return checked


def check_padding_fits(padding, kernel_size, given=None):
    """Refuse padding beyond ``kernel_size - 1`` on an axis.

    With ``p`` zeros on each side and kernels ``k`` wide, the windows at the
    first and last ``p - k + 1`` positions (when ``p >= k``) hold no pixel
    of the image, only zeros: they cost work (a padding of 100 makes maps
    of 200x200 positions on 8x8 images) and carry no information.
    ``padding = kernel_size - 1`` is the "full" convolution, every window
    overlapping the image.
    """
    given = padding if given is None else given
    limit = tuple(k - 1 for k in kernel_size)
    if any(p > m for p, m in zip(padding, limit, strict=True)):
        shown = limit[0] if limit[0] == limit[1] else limit
        raise ValueError(
            f"padding={given!r} is more than kernel_size - 1 = {shown}: the "
            "windows at the edges would hold only the zeros added, no pixel of "
            "the image (work with no information); use "
            f"padding <= {shown} (the full convolution) or larger kernels"
        )


# Largest log-joint maps of one image (n_kernels × Ho × Wo × 8 bytes) a model
# may need; the maps an automatic batch (batch_size=None) aims at (a score
# or transform holds about five such arrays, a move's window statistics
# more), and its floor in images (the fused pass threads over images).
MAX_MAP_BYTES = 2**30
AUTO_BATCH_BYTES = 8 * 2**20
AUTO_BATCH_MIN = 16


def check_model_size(params, map_shape, n_patches):
    """Refuse models the data cannot support, before any work.

    ``map_shape`` is ``(Ho, Wo)`` (positions per image), ``n_patches`` the
    number of patches in the data (``n_samples · Ho · Wo``): a string
    ``init`` draws kernels from them, a pooling grid splits the positions.
    """
    k, (Ho, Wo) = params["n_kernels"], map_shape
    for ph, pw in params["pooling"]:
        if ph > Ho or pw > Wo:
            grid = params["pooling"]
            shown = f"({ph}, {pw})" if len(grid) == 1 else f"{grid} (grid {ph}x{pw})"
            raise ValueError(
                f"pooling={shown} asks for more cells than the {Ho}x{Wo} "
                f"positions of the feature map; use pooling <= ({Ho}, {Wo})"
            )
    if isinstance(params["init"], str) and n_patches is not None:
        check_patch_count(params["init"], k, n_patches)
    check_map_size(k, map_shape)


def check_map_size(n_kernels, map_shape):
    """Refuse maps of more than ``MAX_MAP_BYTES`` per image (before any work)."""
    (Ho, Wo), k = map_shape, n_kernels
    map_bytes = k * Ho * Wo * 8
    if map_bytes > MAX_MAP_BYTES:
        raise ValueError(
            f"n_kernels={k} needs {map_bytes / 2**30:.3g} GiB of maps per image "
            f"({Ho}x{Wo} positions), more than the {MAX_MAP_BYTES / 2**30:g} GiB "
            "calm_np allows; use fewer kernels, less padding or smaller images"
        )


def check_patch_count(init, n_kernels, n_patches):
    """Refuse more kernels than the patches a string ``init`` draws them from
    (``"random"`` draws noise, not patches)."""
    if init != "random" and n_kernels > n_patches:
        raise ValueError(
            f"n_kernels={n_kernels} is more than the {n_patches} patches of X that "
            f"init={init!r} draws kernels from; use fewer n_kernels, more images "
            "or init='random'"
        )


def auto_batch_size(n_kernels, map_shape):
    """Images per batch so that one batch's maps take about ``AUTO_BATCH_BYTES``
    (at least ``AUTO_BATCH_MIN`` images)."""
    per_image = n_kernels * map_shape[0] * map_shape[1] * 8
    return max(AUTO_BATCH_MIN, AUTO_BATCH_BYTES // max(per_image, 1))
