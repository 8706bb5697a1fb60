"""Issue 23's top-down refinement: layer 1 re-estimated under a second layer.

A greedy stack (``ConvolutionalMixtureNetwork``) has no joint likelihood:
layer 2 is fitted on layer 1's maps and never changes layer 1.  This script
measures the one stack in calm_np's reach that *does* have one, a two-level
patch mixture whose EM re-estimates layer 1's kernels under layer 2's
posterior (docs/user_guide/model.rst, "A top-down refinement"):

- layer 1's positions ``u`` (whitened patches ``z_u`` of dimension ``D``)
  are cut into blocks ``v`` of ``block × block`` positions;
- each block draws a *context* ``j`` of ``J`` with probability ``ρ_j``;
- each patch of the block draws a kernel ``k`` with probability
  ``π_{k|j}`` and is ``N(μ_k, σ² I)``.

The objective, which every EM iteration below never lowers, is

    F = Σ_n Σ_v log Σ_j ρ_j Π_{u∈v} Σ_k π_{k|j} N(z_u; μ_k, σ² I),

with ``J = 1`` exactly layer 1's patch objective (``score_samples`` of a
``latent="patch"`` model with weights ``π``).  The E-step gives each block
its context posterior ``q(j|v)`` and each patch the joint posterior
``r_{jk}(u) = q(j|v) π_{k|j} N_k(u) / Σ_k' π_{k'|j} N_k'(u)``; layer 1's
responsibilities ``γ_k(u) = Σ_j r_{jk}(u)`` thus carry layer 2's context
(top-down), and the M-step is layer 1's (``μ_k``, ``σ²`` from ``γ``) plus
``π_{k|j} ∝ Σ r_{jk}``, ``ρ_j ∝ Σ q(j|v)``.

Rows (all fitted on the first 10 000 training images, probed as the main
job: 60 000 / 10 000 images, C=0.1): ``best`` (layer 1 alone), ``best +
contexts`` (layer 1 kept fixed, ``J`` contexts learned on its patches,
their posteriors ``q(j|v)`` summed over 3×3 cells of blocks as extra
features), and ``refined`` / ``refined + contexts`` (the same with μ and σ²
re-estimated too: the top-down refinement).

    python benchmarks/topdown.py | tee benchmarks/results/topdown_seed0.txt
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

import calm_np  # noqa: E402
from calm_np import datasets, evaluation  # noqa: E402
from calm_np._whiten import whiten_patches  # noqa: E402

TINY = 1e-30


# ---------------------------------------------------------------------------
# the two-level model
# ---------------------------------------------------------------------------


def whitened_patches(model, X):
    """Layer 1's whitened patches of ``X`` (n, c, H, W): (n, Ho*Wo, D) float64,
    and the map's (Ho, Wo); rows in the order of ``model.kernels_.reshape(K, D)``."""
    from numpy.lib.stride_tricks import sliding_window_view

    kh, kw = model.kernels_.shape[-2:]
    n, c = X.shape[:2]
    view = sliding_window_view(np.asarray(X, np.float64), (kh, kw), axis=(2, 3))
    ho, wo = view.shape[2:4]
    P = view.transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, c, kh, kw)
    W = model.whitening_
    if W is not None:
        P = whiten_patches(
            P, type(W)(*(np.asarray(a, np.float64) for a in W[:2]), W.eps), np
        )
    return P.reshape(n, ho * wo, -1), (ho, wo)


def block_matrix(shape, block):
    """(U, V) one-hot: position ``u`` of a ``shape`` map in block ``v``
    (blocks of ``block × block`` positions; the last row and column of
    blocks may be smaller), and the blocks' (rows, cols)."""
    ho, wo = shape
    rows, cols = math.ceil(ho / block), math.ceil(wo / block)
    y, x = np.divmod(np.arange(ho * wo), wo)
    v = (y // block) * cols + x // block
    B = np.zeros((ho * wo, rows * cols))
    B[np.arange(ho * wo), v] = 1.0
    return B, (rows, cols)


class Params:
    """``mu`` (K, D), ``sigma2``, ``pi`` (J, K) rows ``π_{·|j}``, ``rho`` (J,)."""

    def __init__(self, mu, sigma2, pi, rho):
        self.mu, self.sigma2 = np.asarray(mu, np.float64), float(sigma2)
        self.pi, self.rho = np.asarray(pi, np.float64), np.asarray(rho, np.float64)


def e_step(Z, p, B):
    """Objective, block posteriors and sufficient statistics of a chunk.

    ``Z`` (n, U, D) whitened patches, ``B`` (U, V) the blocks.  Returns
    ``(F, q, stats)``: ``F`` the chunk's objective, ``q`` (n, V, J) the
    contexts' posteriors, ``stats`` the M-step's sums (``N`` (K,), ``S``
    (K, D), ``T`` the patches' squared norms, ``C`` (J, K), ``R`` (J,),
    ``U`` the patch count).
    """
    n, U, D = Z.shape
    zz = np.einsum("nud,nud->nu", Z, Z)
    mm = np.einsum("kd,kd->k", p.mu, p.mu)
    d2 = zz[:, :, None] - 2.0 * (Z @ p.mu.T) + mm
    ell = -0.5 * d2 / p.sigma2 - 0.5 * D * math.log(2 * math.pi * p.sigma2)
    m = ell.max(axis=2, keepdims=True)
    E = np.exp(ell - m)  # (n, U, K)
    A = np.maximum(E @ p.pi.T, TINY)  # (n, U, J): Σ_k π_{k|j} N_k(u) / e^m
    a = np.log(A) + m  # log Σ_k π_{k|j} N_k(u)
    L = np.log(np.maximum(p.rho, TINY)) + (B.T @ a)
    Lmax = L.max(axis=2, keepdims=True)
    F = float(np.sum(Lmax[..., 0] + np.log(np.exp(L - Lmax).sum(axis=2))))
    q = np.exp(L - Lmax)
    q /= q.sum(axis=2, keepdims=True)  # (n, V, J)
    w = (B @ q) / A  # q(j|v(u)) / A_j(u)
    gamma = E * (w @ p.pi)  # (n, U, K), sums to 1 over k
    flat = lambda a: a.reshape(n * U, -1)  # noqa: E731
    stats = dict(
        N=gamma.sum(axis=(0, 1)),
        S=flat(gamma).T @ flat(Z),
        T=float(zz.sum()),
        C=p.pi * (flat(w).T @ flat(E)),
        R=q.sum(axis=(0, 1)),
        U=n * U,
    )
    return F, q, stats


def m_step(p, s, *, layer1=True):
    """New parameters from the summed statistics ``s`` (``layer1=False``
    keeps ``mu`` and ``sigma2``: only the contexts are learned)."""
    mu, sigma2 = p.mu, p.sigma2
    if layer1:
        alive = s["N"] > TINY
        mu = p.mu.copy()
        mu[alive] = s["S"][alive] / s["N"][alive, None]
        D = mu.shape[1]
        resid = s["T"] - np.sum(s["S"][alive] ** 2 / s["N"][alive, None])
        sigma2 = max(resid / (s["U"] * D), 1e-6)
    pi = s["C"] / np.maximum(s["C"].sum(axis=1, keepdims=True), TINY)
    return Params(mu, sigma2, pi, s["R"] / s["R"].sum())


def _sum(acc, stats):
    if acc is None:
        return dict(stats)
    return {k: acc[k] + v for k, v in stats.items()}


def fit(Z, p, B, n_iter, *, layer1=True, chunk=250, log=None):
    """``n_iter`` EM iterations over ``Z`` (n, U, D); the objectives
    (nats per image), the first for ``p`` itself, and the last parameters."""
    log = log or (lambda line: print(line, flush=True))
    objectives = []
    for it in range(n_iter + 1):
        start = time.perf_counter()
        F, acc = 0.0, None
        for i in range(0, len(Z), chunk):
            f, _, stats = e_step(Z[i : i + chunk], p, B)
            F, acc = F + f, _sum(acc, stats)
        objectives.append(F / len(Z))
        seconds = time.perf_counter() - start  # the E-step pass
        log(
            f"  iteration {it}: objective {objectives[-1]:.4f} nats per image "
            f"({seconds:.1f} s)"
        )
        if it < n_iter:
            p = m_step(p, acc, layer1=layer1)
    return objectives, p


def initial(model, Z, B, n_contexts, rng):
    """Layer 1's fitted μ, σ², and ``π_{·|j}`` half uniform, half the kernel
    histogram of a random block of ``Z`` under layer 1's posterior."""
    K = model.n_kernels
    mu = np.asarray(model.kernels_, np.float64).reshape(K, -1)
    w = np.asarray(model.weights_, np.float64)
    one = Params(mu, model.variance_, w[None, :], np.ones(1))
    n_blocks = B.shape[1]
    picks = rng.choice(len(Z) * n_blocks, size=n_contexts, replace=False)
    images, blocks = np.divmod(picks, n_blocks)
    hist = []
    for i, v in zip(images, blocks, strict=True):
        Zi = Z[i : i + 1][:, B[:, v] > 0]
        _, _, s = e_step(Zi, one, np.ones((Zi.shape[1], 1)))
        hist.append(s["N"] / s["N"].sum())
    pi = 0.5 * np.asarray(hist) + 0.5 * w
    return Params(mu, model.variance_, pi, np.full(n_contexts, 1.0 / n_contexts))


def context_features(model, X, p, B, blocks_shape, grid=3, chunk=250):
    """``q(j|v)`` summed over ``grid × grid`` cells of blocks: (n, grid² J)."""
    rows, cols = blocks_shape
    ys = [i * rows // grid for i in range(grid + 1)]
    xs = [i * cols // grid for i in range(grid + 1)]
    out = []
    for i in range(0, len(X), chunk):
        Z, _ = whitened_patches(model, X[i : i + chunk])
        _, q, _ = e_step(Z, p, B)
        q = q.reshape(len(Z), rows, cols, -1)
        cells = [
            q[:, ys[a] : ys[a + 1], xs[b] : xs[b + 1]].sum(axis=(1, 2))
            for a in range(grid)
            for b in range(grid)
        ]
        out.append(np.concatenate(cells, axis=1))
    return np.concatenate(out).astype(np.float32)


# ---------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--contexts", type=int, default=64, help="J (default 64)")
    ap.add_argument("--block", type=int, default=4, help="block side (default 4)")
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--fit-limit", type=int, default=10000)
    ap.add_argument("--limit", type=int, help="first N training images (probe)")
    ap.add_argument("--test-limit", type=int)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--C", type=float, default=0.1)
    ap.add_argument("--json", type=Path, help="also write rows and objectives here")
    args = ap.parse_args(argv)

    Xtr, ytr = datasets.load_fashion_mnist(limit=args.limit)
    Xte, yte = datasets.load_fashion_mnist(kind="test", limit=args.test_limit)
    setting = evaluation.preset("best", "fashion-mnist")
    A, Bt = evaluation.preprocess(setting["preprocess"], Xtr, Xte, window=7)
    A, Bt = A.astype(np.float32), Bt.astype(np.float32)
    params = {
        k: v for k, v in setting.items() if k not in ("preprocess", "fit_limit", "C")
    }
    model = calm_np.ConvolutionalMixture(**params, random_state=args.seed)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", calm_np.ConvergenceWarning)
        model.fit(A[: args.fit_limit])
    print(f"layer 1 fitted in {time.perf_counter() - start:.1f} s", flush=True)

    Z, shape = whitened_patches(model, A[: args.fit_limit])
    Bm, blocks_shape = block_matrix(shape, args.block)
    # J = 1 with layer 1's parameters is layer 1's own objective
    one = Params(
        np.asarray(model.kernels_, np.float64).reshape(model.n_kernels, -1),
        model.variance_,
        np.asarray(model.weights_, np.float64)[None, :],
        np.ones(1),
    )
    check = fit(Z[:500], one, Bm, 0, log=lambda s: None)[0][0]
    own = float(np.mean(model.score_samples(A[:500])))
    print(f"J=1 objective {check:.4f} against layer 1's score {own:.4f}", flush=True)

    rng = np.random.default_rng(args.seed)
    p0 = initial(model, Z, Bm, args.contexts, rng)
    results, rows = dict(j1_objective=check, layer1_score=own), []

    def probe(name, F_train, F_test, seconds):
        t = time.perf_counter()
        acc = evaluation.linear_probe(F_train, ytr, F_test, yte, C=args.C)
        rows.append(
            dict(
                row=name,
                accuracy=round(acc, 4),
                n_features=int(F_train.shape[1]),
                fit_seconds=round(seconds, 1),
                probe_seconds=round(time.perf_counter() - t, 1),
            )
        )
        print(f"{name:22s} {acc:.4f}  {F_train.shape[1]} features", flush=True)

    base_tr = evaluation.extract_features(model, A)
    base_te = evaluation.extract_features(model, Bt)
    probe("best", base_tr, base_te, 0.0)

    for name, layer1 in (("contexts", False), ("refined", True)):
        print(f"{name}: EM ({'μ, σ², ' if layer1 else ''}π, ρ)", flush=True)
        t = time.perf_counter()
        objectives, p = fit(Z, p0, Bm, args.iterations, layer1=layer1)
        seconds = time.perf_counter() - t
        drops = [b - a for a, b in zip(objectives, objectives[1:], strict=False)]
        results[f"{name}_em"] = dict(objectives=objectives, min_change=min(drops))
        layer = model
        if layer1:
            layer = copy.deepcopy(model)
            layer.kernels_ = p.mu.reshape(model.kernels_.shape).astype(np.float32)
            layer.variance_ = p.sigma2
            F_tr = evaluation.extract_features(layer, A)
            F_te = evaluation.extract_features(layer, Bt)
            probe("refined", F_tr, F_te, seconds)
        else:
            F_tr, F_te = base_tr, base_te
        C_tr = context_features(layer, A, p, Bm, blocks_shape)
        C_te = context_features(layer, Bt, p, Bm, blocks_shape)
        label = "best + contexts" if not layer1 else "refined + contexts"
        probe(label, np.hstack([F_tr, C_tr]), np.hstack([F_te, C_te]), seconds)

    if args.json:
        args.json.write_text(
            json.dumps(
                dict(
                    command=sys.argv,
                    n_contexts=args.contexts,
                    block=args.block,
                    iterations=args.iterations,
                    load_1min=round(os.getloadavg()[0], 2),
                    rows=rows,
                    **results,
                ),
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
