"""The reference CALM batch EM, transcribed to PyTorch: the benchmarks' anchor.

This is our own transcription of the algorithm as the reference code runs it
(not calm_np code, and it shares none): for each minibatch

    E-step  A = conv2d(X, μ, bias = −½‖μ_k‖² + log π_k, padding)    (n, k, Ho, Wo)
            log p = logsumexp of A over (k, Ho, Wo), one per image
            log γ = A − log p
    M-step  the posterior maps of image n are that image's filters: a grouped
            conv3d (groups = n) of the padded images, seen as volumes of depth
            c, with the kernels exp(log γ[n]) of shape (1, Ho, Wo), gives
            S[n, k] = Σ_u γ[n, k, u] · x_{n,u}; N_k = Σ_{n,u} γ[n, k, u]

and one parameter update ``μ_k = S_k / N_k`` per epoch.  Run as a script it
times one epoch on random data; ``benchmarks/epoch.py`` is the real table.

torch is a benchmark-only dependency (``pip install torch``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _pair(p):
    return (p, p) if isinstance(p, int) else tuple(p)


def e_step(X, kernels, log_weights=None, padding=0):
    """``(A, log_norm)``: the conv feature map with its bias, and its logsumexp."""
    bias = -0.5 * (kernels * kernels).sum(dim=(1, 2, 3))
    if log_weights is None:  # uniform π
        bias = bias - math.log(kernels.shape[0])
    else:
        bias = bias + log_weights
    A = F.conv2d(X, kernels, bias=bias, padding=_pair(padding))
    log_norm = torch.logsumexp(A.flatten(1), dim=1)  # over (k, Ho, Wo)
    return A, log_norm


def m_step_statistics(X, log_resp, padding=0):
    """``(N_k, S_k)`` of one minibatch by a grouped conv3d, groups = n.

    The padded images ``(n, c, Hp, Wp)`` become one input of ``n`` channels of
    depth ``c``; image ``n``'s ``k`` posterior maps are ``k`` filters of shape
    ``(1, 1, Ho, Wo)`` that see only channel ``n``.  The output
    ``(1, n·k, c, kh, kw)`` holds ``Σ_u γ[n,k,u] x_{n,u}`` for every pair.
    """
    n, c, _, _ = X.shape
    k = log_resp.shape[1]
    ph, pw = _pair(padding)
    Xp = F.pad(X, (pw, pw, ph, ph))
    resp = torch.exp(log_resp)  # (n, k, Ho, Wo)
    counts = resp.sum(dim=(0, 2, 3))
    volume = Xp.reshape(1, n, c, Xp.shape[2], Xp.shape[3])
    filters = resp.reshape(n * k, 1, 1, resp.shape[2], resp.shape[3])
    S = F.conv3d(volume, filters, groups=n)  # (1, n·k, c, kh, kw)
    S = S.reshape(n, k, c, S.shape[-2], S.shape[-1]).sum(dim=0)
    return counts, S


def batch_statistics(X, kernels, log_weights=None, padding=0):
    """``(N_k, S_k, Σ_n logsumexp A_n)`` of one minibatch (reference order)."""
    A, log_norm = e_step(X, kernels, log_weights, padding)
    log_resp = A - log_norm[:, None, None, None]
    counts, sums = m_step_statistics(X, log_resp, padding)
    return counts, sums, log_norm.sum()


def epoch(X, kernels, batch_size=1000, log_weights=None, padding=0):
    """One batch-EM epoch: statistics over all minibatches, then one update.

    Returns the new kernels and the summed unnormalized log-likelihood
    (``Σ_n logsumexp A_n``, the figure the reference reports).
    """
    like = {"dtype": kernels.dtype, "device": kernels.device}
    counts = torch.zeros(kernels.shape[0], **like)
    sums = torch.zeros_like(kernels)
    total = torch.zeros((), **like)
    with torch.no_grad():
        for start in range(0, X.shape[0], batch_size):
            Xb = X[start : start + batch_size]
            n_k, s_k, ll = batch_statistics(Xb, kernels, log_weights, padding)
            counts += n_k
            sums += s_k
            total += ll
        safe = counts.clamp_min(torch.finfo(counts.dtype).tiny)[:, None, None, None]
        # an unused kernel keeps its value (the reference would divide by 0)
        new = torch.where(safe > torch.finfo(counts.dtype).tiny, sums / safe, kernels)
    return new, total


def _main():  # pragma: no cover - manual timing
    import argparse
    import time

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    X = torch.randn(args.n, 1, 28, 28, generator=g)
    M = torch.randn(64, 1, 20, 20, generator=g) * 0.1
    epoch(X[:1000], M, padding=2)  # warm-up
    t = time.perf_counter()
    epoch(X, M, padding=2)
    dt = time.perf_counter() - t
    print(f"reference epoch, {args.n} images 28x28, K=64 20x20, pad 2: {dt:.3f} s")


if __name__ == "__main__":
    _main()
