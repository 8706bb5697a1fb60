"""The linear probe of :mod:`calm_np.evaluation`: a multinomial logistic
regression on standardized features, by L-BFGS over blocked, threaded passes.

:func:`linear_probe` is public as ``calm_np.evaluation.linear_probe``; the
rest is its machinery (standardization and the loss by blocks of rows).
SciPy (the solver) is imported inside the function that needs it.
"""

from __future__ import annotations

import math

import numpy as np

from ._pool import executor as _executor
from ._pool import n_threads as _n_threads
from ._xp import single_threaded_blas as _single_threaded_blas

PROBE = "standardized features, multinomial logistic regression (L-BFGS, float32)"
"""What :func:`linear_probe` fits, in words (``summary.json`` records it)."""


def linear_probe(F_train, y_train, F_test, y_test, *, C=1.0, tol=1e-4, max_iter=1000):
    """Test accuracy of a multinomial logistic regression on standardized features.

    The model and objective are scikit-learn's
    ``make_pipeline(StandardScaler(), LogisticRegression(C=C))``: features
    standardized with the training statistics, then the mean cross-entropy
    plus ``||W||^2 / (2 C n)`` (intercepts not penalized), minimized by
    SciPy's L-BFGS-B until the largest gradient entry is below ``tol`` (as
    scikit-learn's ``lbfgs``). Four choices make it fast, the first three
    measured side by side on the ``best`` preset's 1152 Fashion-MNIST
    features (10k training and 5k test images, 2 cores shared with other
    jobs), the last on the main job's 2304:

    - BLAS runs on one thread during the solve. An iteration is two thin
      GEMMs and a few vector operations, which threads only slow down on a
      busy machine: scikit-learn's probe took 227 s with its default threads,
      34 s on one (accuracy 0.8734 both);
    - the GEMMs run in float32 on the standardized features, and one pass
      gives the loss and the gradient: 501 iterations, 1.8x faster than
      scikit-learn on one thread (accuracy 0.8742);
    - L-BFGS keeps 100 correction pairs (``maxcor``; SciPy's default is
      10): 180 iterations instead of 501, at the same accuracy;
    - the pass runs over blocks of 256 rows (:func:`_softmax_loss`): each
      block gives ``A_b @ W``, the softmax and ``P_b.T @ A_b`` while it is
      in cache, so the features stream from memory once per iteration, not
      twice; the blocks run on the fused path's threads
      (``CALM_NP_NUM_THREADS``, the result does not depend on their
      number), BLAS on one thread in each. The standardization runs by
      blocks too, without float64 copies of the features.
      ``benchmarks/probe.py``, the main job's shape (60k training and 10k
      test images, 2304 features, C=0.1), 2 cores shared with other jobs
      (load 7-10): 94 s on 2 threads and 92 s on one against 174 s for the
      whole-matrix pass (1.9x), 215 evaluations against 219, accuracy
      0.9183 against 0.9180; on the first 20k and 40k images 1.5x and
      1.2x (159 against 185 and 209 against 190 evaluations: sums in
      another order move the path), accuracy within 0.0004. One evaluation
      costs 1.3-2x less, the standardization 10 s and 2.1 GB less.

    The first three together: 26 s against scikit-learn's 73 s on one thread, measured
    back to back (2.8x), accuracy 0.8742 against 0.8734; on all 60k/10k
    images (k-means 1152 features) 249 s against 705 s (2.8x), accuracy
    0.9103 against 0.9099. A warm start from
    a solution on a quarter of the images saved nothing; ``tol=1e-3`` is
    faster still but moves the accuracy by 0.003.

    Parameters
    ----------
    F_train, F_test : array of shape (n, n_features)
    y_train, y_test : array of shape (n,)
    C : float, default=1.0
        Inverse regularization strength, as scikit-learn's.
    tol : float, default=1e-4
        Stop when the largest gradient entry is below ``tol``.
    max_iter : int, default=1000

    Returns
    -------
    accuracy : float
        Fraction of the test images classified correctly.

    Examples
    --------
    >>> import numpy as np
    >>> from calm_np.evaluation import linear_probe
    >>> rng = np.random.default_rng(0)
    >>> y = np.arange(60) % 3
    >>> F = rng.standard_normal((60, 5)) + 3.0 * np.eye(5)[y]  # separable classes
    >>> linear_probe(F[:40], y[:40], F[40:], y[40:])
    1.0
    """
    _check_probe_inputs(F_train, y_train, F_test, y_test)
    A, (B,) = _standardized(F_train, F_test)
    if not (np.isfinite(A).all() and np.isfinite(B).all()):
        raise ValueError(
            "F_train and F_test must be finite; they hold NaN or inf values "
            "(check the features or the model that made them)"
        )
    classes, y_index = np.unique(np.asarray(y_train), return_inverse=True)
    W, b = _fit_probe(A, y_index, len(classes), C=C, tol=tol, max_iter=max_iter)
    predicted = classes[np.argmax(B @ W.astype(np.float32) + b, axis=1)]
    return float(np.mean(predicted == np.asarray(y_test)))


def _check_probe_inputs(F_train, y_train, F_test, y_test):
    """Shapes and labels of :func:`linear_probe`'s inputs, before any work."""
    shapes = [np.shape(F) for F in (F_train, F_test)]
    if any(len(shape) != 2 for shape in shapes):
        raise ValueError(
            f"F_train and F_test must be 2-D (n_samples, n_features), got shapes "
            f"{shapes[0]} and {shapes[1]}"
        )
    if shapes[0][1] != shapes[1][1]:
        raise ValueError(
            f"F_test has {shapes[1][1]} features but F_train has {shapes[0][1]}; "
            "give both the same features"
        )
    for name, F, y in (("train", F_train, y_train), ("test", F_test, y_test)):
        if len(F) == 0:
            raise ValueError(
                f"F_{name} holds no rows; the probe needs at least one {name} image"
            )
        if np.shape(y) != (len(F),):
            raise ValueError(
                f"y_{name} must hold one label per row of F_{name} ({len(F)}), "
                f"got shape {np.shape(y)}"
            )
    if len(np.unique(np.asarray(y_train))) < 2:
        raise ValueError("y_train must hold at least 2 classes to fit a classifier")
    for name, F in (("F_train", F_train), ("F_test", F_test)):
        F = np.asarray(F)
        if F.dtype.kind == "f" and F.dtype.itemsize <= 4:
            continue  # float32 values square without overflow in float64
        if F.dtype.kind not in "biuf":
            raise TypeError(f"{name} must hold real numbers, got dtype {F.dtype}")
        # the standardization sums squares in float64: beyond 1e150 they
        # overflow and the features would silently become 0
        big = max(abs(float(np.max(F))), abs(float(np.min(F)))) if F.size else 0.0
        if math.isfinite(big) and big > _MAX_FEATURE:
            raise ValueError(
                f"{name} holds values up to {big:.3g}, beyond {_MAX_FEATURE:g} "
                "whose squares overflow float64; rescale the features"
            )


_MAX_FEATURE = 1e150


def _fit_probe(A, y_index, k, *, C, tol, max_iter):
    """``(W, b)``, float64, of :func:`linear_probe`'s regression on standardized
    float32 features ``A`` and class indices ``y_index`` in ``range(k)``."""
    from scipy.optimize import minimize
    from threadpoolctl import threadpool_limits

    n, d = A.shape
    Y = np.zeros((n, k), dtype=np.float32)
    Y[np.arange(n), y_index] = 1.0
    # A fresh limit: it also reaches the BLAS that SciPy's L-BFGS-B calls,
    # which the package's shared controller may have been made without
    # (threaded, that BLAS made each L-BFGS-B step 20x slower).
    with threadpool_limits(limits=1, user_api="blas"), _single_threaded_blas():
        result = minimize(
            _softmax_loss(A, Y, 1.0 / (C * n)),
            np.zeros((d + 1) * k),
            jac=True,
            method="L-BFGS-B",
            options=dict(
                maxiter=max_iter, gtol=tol, ftol=64 * np.finfo(float).eps, maxcor=100
            ),
        )
    return result.x[: d * k].reshape(d, k), result.x[d * k :]


_ROWS = 256
"""Rows per block of the probe's passes: a block of 2304 float32 features
(2.4 MB) stays in cache between its two products (``benchmarks/probe.py``)."""

_SPAN = 8 * _ROWS
"""Rows per task of the probe's threads (each task adds into its own sums)."""


def _over_rows(n, work, size, rows=None):
    """Sum of ``work(start, stop, acc)`` over blocks of ``rows`` (default
    :data:`_ROWS`) of ``range(n)``.

    The blocks are grouped in spans of :data:`_SPAN` rows, the tasks of the
    fused path's threads (``CALM_NP_NUM_THREADS``; BLAS on one thread in
    each), taken by whichever thread is free. Each span adds into its own
    float64 ``acc`` of ``size`` zeros, and the spans' sums are added in
    order: the result depends neither on timing nor on the thread count.
    """
    rows = rows or _ROWS
    span = max(rows, _SPAN // rows * rows)

    def task(first):
        acc = np.zeros(size)
        for start in range(first, min(first + span, n), rows):
            work(start, min(start + rows, first + span, n), acc)
        return acc

    firsts = range(0, n, span)
    threads = min(_n_threads(), len(firsts))
    with _single_threaded_blas() as single:  # without threadpoolctl: no threads
        if threads == 1 or not single:
            sums = list(map(task, firsts))
        else:
            sums = list(_executor(threads).map(task, firsts))
    total = np.zeros(size)
    for acc in sums:
        total += acc
    return total


def _standardized(F_train, *others):
    """``F_train`` and ``others`` standardized with ``F_train``'s mean and
    standard deviation (float64, two passes), as float32 arrays.

    Works block by block, so no float64 copy of the whole features is made
    (the float32 blocks go into float64 sums and differences directly, the
    same values as through a float64 copy); a constant feature is divided
    by 1, not 0.
    """
    F_train = np.asarray(F_train)
    n, d = F_train.shape

    def add_rows(start, stop, acc):
        acc += F_train[start:stop].sum(0, dtype=np.float64)

    mean = _over_rows(n, add_rows, d) / n

    def add_squares(start, stop, acc):
        dev = np.subtract(F_train[start:stop], mean, dtype=np.float64)
        acc += np.square(dev, out=dev).sum(0)

    scale = np.sqrt(_over_rows(n, add_squares, d) / n)
    scale[scale == 0] = 1.0

    def standardize(F):
        F = np.asarray(F)
        out = np.empty(F.shape, dtype=np.float32)

        def work(start, stop, acc):
            dev = np.subtract(F[start:stop], mean, dtype=np.float64)
            np.divide(dev, scale, out=out[start:stop], casting="same_kind")

        _over_rows(len(F), work, 0)
        return out

    return standardize(F_train), [standardize(F) for F in others]


def _softmax_loss(A, Y, alpha, rows=None):
    """``w -> (loss, gradient)`` of the mean multinomial cross-entropy of
    ``softmax(A @ W + b)`` against one-hot ``Y``, plus ``alpha/2 ||W||^2``.

    ``w`` is ``W`` (n_features, n_classes) raveled, then ``b``. One pass
    over blocks of ``rows`` rows of ``A`` (:func:`_over_rows`): per block,
    float32 products ``Z = A_b @ W + b`` and ``(softmax(Z) - Y_b).T @ A_b``
    while ``A_b`` is in cache, added into float64 sums. (``P.T @ A_b``, the
    gradient's transpose, ran 8 % faster than ``A_b.T @ P``.)
    """
    n, d = A.shape
    k = Y.shape[1]

    def loss_grad(w):
        W = w[: d * k]
        W32 = W.reshape(d, k).astype(np.float32)
        b32 = w[d * k :].astype(np.float32)

        def work(start, stop, acc):  # acc: gradient of W.T, of b, then the loss
            A_b, Y_b = A[start:stop], Y[start:stop]
            Z = A_b @ W32
            Z += b32
            Z -= Z.max(axis=1, keepdims=True)
            P = np.exp(Z)
            total = P.sum(axis=1, keepdims=True)
            acc[-1] += np.log(total).sum(dtype=np.float64) - np.vdot(Z, Y_b)
            P /= total
            P -= Y_b  # the gradient of the cross-entropy with respect to Z
            acc[: d * k].reshape(k, d)[...] += P.T @ A_b
            acc[d * k : -1] += P.sum(axis=0, dtype=np.float64)

        total = _over_rows(n, work, (d + 1) * k + 1, rows) / n
        grad = np.concatenate(
            [total[: d * k].reshape(k, d).T.ravel(), total[d * k : -1]]
        )
        grad[: d * k] += alpha * W
        return total[-1] + 0.5 * alpha * (W @ W), grad

    return loss_grad
