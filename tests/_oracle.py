"""Slow, obviously-correct NumPy float64 references (loops and scipy.stats).

Nothing here shares code with calm_np: the tests compare the package with
these definitions written straight from docs/user_guide/model.rst §1.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp
from scipy.stats import multivariate_normal


def as4d(X):
    X = np.asarray(X, dtype=np.float64)
    return X[:, None] if X.ndim == 3 else X


def pad(X, padding):
    ph, pw = (padding, padding) if np.ndim(padding) == 0 else padding
    return np.pad(as4d(X), ((0, 0), (0, 0), (ph, ph), (pw, pw)))


def log_joint_loop(X, kernels, log_weights=None, padding=0):
    """A[n,k,u] = patch · kernel − ½‖kernel‖² + log π, by explicit loops."""
    Xp = pad(X, padding)
    M = as4d(kernels)
    n, c, Hp, Wp = Xp.shape
    k, _, kh, kw = M.shape
    if log_weights is None:
        log_weights = np.full(k, -np.log(k))
    Ho, Wo = Hp - kh + 1, Wp - kw + 1
    A = np.empty((n, k, Ho, Wo))
    for i in range(n):
        for j in range(k):
            for y in range(Ho):
                for x in range(Wo):
                    patch = Xp[i, :, y : y + kh, x : x + kw]
                    A[i, j, y, x] = (
                        np.sum(patch * M[j]) - 0.5 * np.sum(M[j] ** 2) + log_weights[j]
                    )
    return A


def brute_force(X, kernels, log_weights=None, padding=0):
    """log p(X_n) and γ from a mixture of full-image isotropic Gaussians.

    One component per (k, u): mean = zeros with μ_k pasted at u, covariance
    the identity over all P padded pixels, weight π_k / |U|.
    """
    Xp = pad(X, padding)
    M = as4d(kernels)
    n, c, Hp, Wp = Xp.shape
    k, _, kh, kw = M.shape
    if log_weights is None:
        log_weights = np.full(k, -np.log(k))
    Ho, Wo = Hp - kh + 1, Wp - kw + 1
    P = c * Hp * Wp
    log_comp = np.empty((n, k, Ho, Wo))
    for j in range(k):
        for y in range(Ho):
            for x in range(Wo):
                mean = np.zeros((c, Hp, Wp))
                mean[:, y : y + kh, x : x + kw] = M[j]
                mvn = multivariate_normal(mean.ravel(), np.eye(P))
                log_comp[:, j, y, x] = (
                    np.atleast_1d(mvn.logpdf(Xp.reshape(n, P)))
                    + log_weights[j]
                    - np.log(Ho * Wo)
                )
    log_px = logsumexp(log_comp, axis=(1, 2, 3))
    resp = np.exp(log_comp - log_px[:, None, None, None])
    return log_px, resp


def statistics_loop(X, kernels, log_weights=None, padding=0):
    """N_k, S_k and Σ log p(X_n) from the brute-force posterior, by loops."""
    Xp = pad(X, padding)
    M = as4d(kernels)
    log_px, resp = brute_force(X, kernels, log_weights, padding)
    n, k, Ho, Wo = resp.shape
    kh, kw = M.shape[2:]
    S = np.zeros_like(M)
    for i in range(n):
        for j in range(k):
            for y in range(Ho):
                for x in range(Wo):
                    S[j] += resp[i, j, y, x] * Xp[i, :, y : y + kh, x : x + kw]
    return resp.sum(axis=(0, 2, 3)), S, log_px.sum()


def patch_mixture(X, kernels, log_weights=None, padding=0):
    """latent="patch": each im2col patch under Σ_k π_k N(μ_k, I), by scipy.

    Returns the per-image pseudo-log-likelihood ``(n,)``, the per-position
    posterior ``(n, k, Ho, Wo)`` and the statistics (N_k, S_k, Σ).
    """
    Xp = pad(X, padding)
    M = as4d(kernels)
    n, c, Hp, Wp = Xp.shape
    k, _, kh, kw = M.shape
    if log_weights is None:
        log_weights = np.full(k, -np.log(k))
    Ho, Wo = Hp - kh + 1, Wp - kw + 1
    D = c * kh * kw
    patches = np.empty((n, Ho, Wo, D))
    for y in range(Ho):
        for x in range(Wo):
            patches[:, y, x] = Xp[:, :, y : y + kh, x : x + kw].reshape(n, D)
    flat = patches.reshape(-1, D)
    log_comp = np.stack(
        [
            np.atleast_1d(multivariate_normal(M[j].ravel(), np.eye(D)).logpdf(flat))
            + log_weights[j]
            for j in range(k)
        ],
        axis=1,
    ).reshape(n, Ho, Wo, k)
    log_px = logsumexp(log_comp, axis=3)  # (n, Ho, Wo)
    resp = np.exp(log_comp - log_px[..., None]).transpose(0, 3, 1, 2)
    counts = resp.sum(axis=(0, 2, 3))
    sums = np.einsum("nkyx,nyxd->kd", resp, patches).reshape(M.shape)
    return log_px.sum(axis=(1, 2)), resp, (counts, sums, log_px.sum())
