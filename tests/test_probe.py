"""The linear probe's blocked, threaded pass (``_probe._softmax_loss``,
``_standardized``, ``_fit_probe``) against plain float64 formulas and
scikit-learn's LogisticRegression."""

from __future__ import annotations

import numpy as np
import pytest

from calm_np import _probe, evaluation


def _reference(A, Y, alpha, w):
    """Loss and gradient of the probe's objective, float64, whole matrix."""
    n, d = A.shape
    k = Y.shape[1]
    W, b = w[: d * k].reshape(d, k), w[d * k :]
    Z = A.astype(np.float64) @ W + b
    Z -= Z.max(axis=1, keepdims=True)
    log_total = np.log(np.exp(Z).sum(axis=1, keepdims=True))
    P = np.exp(Z - log_total) - Y
    loss = (log_total.sum() - (Z * Y).sum()) / n + 0.5 * alpha * (W * W).sum()
    grad = np.concatenate([(A.T @ P / n + alpha * W).ravel(), P.sum(axis=0) / n])
    return loss, grad


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 7 rows in spans of 14, on two threads: most blocks and
    spans end inside the data, and the threads share the spans."""
    monkeypatch.setattr(_probe, "_ROWS", 7)
    monkeypatch.setattr(_probe, "_SPAN", 14)
    monkeypatch.setenv("CALM_NP_NUM_THREADS", "2")


def test_blocked_pass_equals_whole_matrix(small_blocks, monkeypatch):
    rng = np.random.default_rng(0)
    n, d, k = 61, 5, 4  # 61 rows: 8 blocks of 7, the last of 5; 5 spans
    A = rng.standard_normal((n, d)).astype(np.float32)
    Y = np.eye(k, dtype=np.float32)[rng.integers(k, size=n)]
    w = rng.standard_normal((d + 1) * k)
    expected_loss, expected_grad = _reference(A, Y, 0.1, w)
    loss, grad = _probe._softmax_loss(A, Y, 0.1)(w)
    assert loss == pytest.approx(expected_loss, rel=1e-6)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-6)
    # a block or a span dropped, or counted twice, moves the sums far more
    for rows in (1, 3, 61, 100):
        again = _probe._softmax_loss(A, Y, 0.1, rows=rows)(w)
        assert again[0] == pytest.approx(expected_loss, rel=1e-6)
        np.testing.assert_allclose(again[1], expected_grad, rtol=1e-5, atol=1e-6)
    # the spans' sums are added in order: one thread gives the same bits
    monkeypatch.setenv("CALM_NP_NUM_THREADS", "1")
    same_loss, same_grad = _probe._softmax_loss(A, Y, 0.1)(w)
    assert same_loss == loss
    np.testing.assert_array_equal(same_grad, grad)


def test_standardized_by_blocks(small_blocks):
    rng = np.random.default_rng(1)
    F = rng.standard_normal((47, 6)) * [1, 2, 3, 4, 5, 6] + [0, 1, 2, 3, 4, 5]
    F[:, 2] = 7.0  # a constant feature: divided by 1, not 0
    G = rng.standard_normal((9, 6))
    A, (B,) = _probe._standardized(F, G)
    scale = F.std(axis=0)
    scale[2] = 1.0
    assert A.dtype == B.dtype == np.float32
    np.testing.assert_allclose(A, (F - F.mean(axis=0)) / scale, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(B, (G - F.mean(axis=0)) / scale, rtol=1e-6, atol=1e-6)
    assert not A[:, 2].any()


def test_probe_coefficients_match_sklearn(small_blocks):
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    X, y = load_digits(return_X_y=True)
    X, y = X[:503], y[:503]  # 503 rows: 71 blocks of 7 and one of 6
    A, _ = _probe._standardized(X)
    C = 0.05
    W, b = _probe._fit_probe(A, y, 10, C=C, tol=1e-7, max_iter=5000)
    theirs = LogisticRegression(C=C, tol=1e-10, max_iter=5000)
    theirs.fit(A.astype(np.float64), y)
    np.testing.assert_allclose(W, theirs.coef_.T, atol=2e-3)
    # intercepts are not penalized: both are defined up to a common shift
    np.testing.assert_allclose(
        b - b.mean(), theirs.intercept_ - theirs.intercept_.mean(), atol=2e-3
    )
    ours = np.argmax(A @ W + b, axis=1)
    assert np.mean(ours == theirs.predict(A.astype(np.float64))) >= 0.998


def test_probe_accuracy_matches_sklearn_with_small_blocks(small_blocks):
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = load_digits(return_X_y=True)
    split = 899  # not a multiple of the blocks or the spans
    theirs = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=1000))
    expected = theirs.fit(X[:split], y[:split]).score(X[split:], y[split:])
    ours = evaluation.linear_probe(X[:split], y[:split], X[split:], y[split:], C=0.1)
    assert abs(ours - expected) <= 2 / (len(X) - split)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda F, y, G, z: (F.ravel(), y, G, z), "2-D"),
        (lambda F, y, G, z: (F, y, G[:, :-1], z), "features"),
        (lambda F, y, G, z: (F, y[:-1], G, z), "y_train"),
        (lambda F, y, G, z: (F, y, G, z[:-1]), "y_test"),
        (lambda F, y, G, z: (F, np.zeros_like(y), G, z), "2 classes"),
        (lambda F, y, G, z: (_with(F, np.nan), y, G, z), "finite"),
        (lambda F, y, G, z: (F, y, _with(G, np.inf), z), "finite"),
    ],
)
def test_probe_refuses_bad_input(change, match):
    rng = np.random.default_rng(0)
    F = rng.normal(size=(40, 5)).astype(np.float32)
    y = np.arange(40) % 3
    with pytest.raises(ValueError, match=match):
        evaluation.linear_probe(*change(F, y, F.copy(), y.copy()))


def _with(F, value):
    F = F.copy()
    F[1, 2] = value
    return F
